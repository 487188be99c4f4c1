use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::SuppliedCredential;
use crate::call::CallContext;
use crate::chat::features::{CacheTtl, Reasoning, ResponseFormat};

/// One call to a model: the conversation so far and how to answer it.
///
/// Provider-neutral; each provider service encodes it into its own wire
/// format. Anything a provider offers that has no field here goes into
/// [`extra`](ChatRequest::extra), a JSON map merged into the encoded body
/// last, as a JSON merge patch (RFC 7386): objects merge key by key, so
/// `extra("generationConfig", json!({"responseMimeType": …}))` keeps the
/// `maxOutputTokens` the encoder wrote there; any other value replaces what
/// was there, and `null` removes it.
///
/// `ChatRequest` is `Clone`, so retrying layers can send it again, and
/// cheaply: the model name and what can be large — the conversation, the
/// tools, `extra` — are shared between clones behind an [`Arc`] until one
/// of them changes it ([`Arc::make_mut`] copies then). It carries [`http::Extensions`] for
/// values a caller sends along with one call (a credential, a deadline).
///
/// ```
/// use llm_tower::{ChatRequest, Message};
///
/// let req = ChatRequest::new("gpt-4o-mini")
///     .message(Message::system("Answer in one word."))
///     .message(Message::user("Capital of France?"))
///     .max_tokens(16)
///     .extra("seed", 7);
/// assert!(req.stream);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The model; empty means the provider service's default model. Shared
    /// by the request's clones.
    pub model: Arc<str>,
    /// The conversation, oldest first. System messages may appear anywhere;
    /// providers that take the system prompt separately collect them.
    /// Shared by the request's clones: change it with [`Arc::make_mut`].
    pub messages: Arc<Vec<Message>>,
    /// Tools the model may call, shared by the request's clones.
    pub tools: Arc<Vec<Tool>>,
    /// Whether and which tool the model must call.
    pub tool_choice: Option<ToolChoice>,
    /// The most tokens to generate. Anthropic requires one: its service fills
    /// in its configured default when this is `None`.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Sequences that end generation.
    pub stop: Vec<String>,
    /// The shape the answer's text must have: JSON, or JSON that matches a
    /// schema.
    pub response_format: Option<ResponseFormat>,
    /// How much the model reasons, and whether it returns its reasoning.
    pub reasoning: Option<Reasoning>,
    /// A key that routes requests sharing a long prefix to the same cache
    /// (OpenAI's `prompt_cache_key`; left out where there is none).
    pub prompt_cache_key: Option<String>,
    /// Marks the tool definitions as a cacheable prefix (Anthropic's
    /// `cache_control` on the last tool; left out where caching is
    /// automatic).
    pub cache_tools: Option<CacheTtl>,
    /// Continues a response the provider stored (the Responses API's
    /// `previous_response_id`, with [`store`](crate::provider::OpenAiResponsesBuilder::store)
    /// on): the conversation then holds only what is new. Refused by the
    /// providers that keep no responses.
    pub previous_response_id: Option<String>,
    /// Stream the answer as server-sent events (the default) or fetch it as
    /// one JSON body. Both produce the same [`StreamEvent`](crate::StreamEvent)s.
    pub stream: bool,
    /// Provider-specific fields merged into the request body, last, as a
    /// JSON merge patch (objects key by key; `null` removes). Shared by the
    /// request's clones.
    pub extra: Arc<Map<String, Value>>,
    /// Values a caller sends along with this call: a
    /// [`Credential`](crate::Credential), a [`Deadline`](crate::Deadline),
    /// an [`Attempts`](crate::Attempts) counter.
    pub extensions: http::Extensions,
    /// What the layers share about this call (its deadline, attempt count):
    /// one value for every copy of the request.
    pub(crate) call: CallContext,
    /// The credential a layer supplies to this attempt.
    pub(crate) credential: Option<SuppliedCredential>,
}

impl std::fmt::Debug for ChatRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The layers' shared state is theirs to show.
        f.debug_struct("ChatRequest")
            .field("model", &self.model)
            .field("messages", &self.messages)
            .field("tools", &self.tools)
            .field("tool_choice", &self.tool_choice)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("top_p", &self.top_p)
            .field("stop", &self.stop)
            .field("response_format", &self.response_format)
            .field("reasoning", &self.reasoning)
            .field("prompt_cache_key", &self.prompt_cache_key)
            .field("cache_tools", &self.cache_tools)
            .field("previous_response_id", &self.previous_response_id)
            .field("stream", &self.stream)
            .field("extra", &self.extra)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl ChatRequest {
    /// A streaming request for `model` (empty for the service's default) with
    /// no messages yet.
    pub fn new(model: impl Into<Arc<str>>) -> Self {
        ChatRequest {
            model: model.into(),
            stream: true,
            ..ChatRequest::default()
        }
    }

    /// Appends a message.
    pub fn message(mut self, message: Message) -> Self {
        Arc::make_mut(&mut self.messages).push(message);
        self
    }

    /// Appends a tool definition.
    pub fn tool(mut self, tool: Tool) -> Self {
        Arc::make_mut(&mut self.tools).push(tool);
        self
    }

    /// Sets the tool choice.
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Sets the most tokens to generate.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets the sampling temperature.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Streams (`true`, the default) or fetches the answer as one body.
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Merges `key: value` into the provider's request body: an object is
    /// merged key by key into what the encoder wrote (and into an earlier
    /// `extra` of the same key), anything else replaces it, `null` removes
    /// it.
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let mut patch = Map::new();
        patch.insert(key.into(), value.into());
        // Two patches of one key compose as one: objects merge, so a later
        // `null` still removes what the encoder wrote.
        compose_patch(Arc::make_mut(&mut self.extra), patch);
        self
    }

    /// Replaces the conversation.
    pub fn messages(mut self, messages: impl IntoIterator<Item = Message>) -> Self {
        self.messages = Arc::new(messages.into_iter().collect());
        self
    }

    /// Replaces the tool definitions.
    pub fn tools(mut self, tools: impl IntoIterator<Item = Tool>) -> Self {
        self.tools = Arc::new(tools.into_iter().collect());
        self
    }

    /// Sets nucleus sampling.
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Appends a stop sequence.
    pub fn stop(mut self, sequence: impl Into<String>) -> Self {
        self.stop.push(sequence.into());
        self
    }

    /// Asks for the answer in this shape.
    pub fn response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// Sets how much the model reasons.
    pub fn reasoning(mut self, reasoning: Reasoning) -> Self {
        self.reasoning = Some(reasoning);
        self
    }

    /// Sets the prompt cache key.
    pub fn prompt_cache_key(mut self, key: impl Into<String>) -> Self {
        self.prompt_cache_key = Some(key.into());
        self
    }

    /// Marks the tool definitions as a cacheable prefix, kept for `ttl`.
    pub fn cache_tools(mut self, ttl: CacheTtl) -> Self {
        self.cache_tools = Some(ttl);
        self
    }

    /// Continues the stored response `id` (the Responses API only).
    pub fn previous_response_id(mut self, id: impl Into<String>) -> Self {
        self.previous_response_id = Some(id.into());
        self
    }

    /// Sets the model.
    pub fn model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.model = model.into();
        self
    }

    /// Puts a value in the request's [`extensions`](ChatRequest::extensions)
    /// (a [`Credential`](crate::Credential) for this call, a
    /// [`Deadline`](crate::Deadline)), replacing one of its type.
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }
}

/// Composes merge patch `next` onto `patch` so that applying the result
/// equals applying both in turn: objects merge (a `null` inside survives,
/// to remove what the encoder wrote), anything else replaces.
fn compose_patch(patch: &mut Map<String, Value>, next: Map<String, Value>) {
    for (k, v) in next {
        match (patch.get_mut(&k), v) {
            (Some(Value::Object(p)), Value::Object(n)) => compose_patch(p, n),
            (_, v) => {
                patch.insert(k, v);
            }
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user, including tool results sent back to the model.
    User,
    /// The model.
    Assistant,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it holds, in order.
    pub content: Vec<ContentPart>,
}

impl Message {
    /// A message of `role` holding `parts`.
    pub fn new(role: Role, content: Vec<ContentPart>) -> Self {
        Message { role, content }
    }

    /// System instructions.
    pub fn system(text: impl Into<String>) -> Self {
        Message::new(Role::System, vec![ContentPart::Text(text.into())])
    }

    /// A user's text.
    pub fn user(text: impl Into<String>) -> Self {
        Message::new(Role::User, vec![ContentPart::Text(text.into())])
    }

    /// A model's text, e.g. an earlier answer replayed as history.
    pub fn assistant(text: impl Into<String>) -> Self {
        Message::new(Role::Assistant, vec![ContentPart::Text(text.into())])
    }

    /// Marks the prompt up to the end of this message as a cacheable
    /// prefix, kept for `ttl`: appends a
    /// [`ContentPart::CacheBreakpoint`].
    pub fn cache(mut self, ttl: CacheTtl) -> Self {
        self.content.push(ContentPart::CacheBreakpoint { ttl });
        self
    }

    /// The result of a tool call that failed, sent back to the model as a
    /// user turn: `content` says what went wrong.
    pub fn tool_error(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message::new(
            Role::User,
            vec![ContentPart::ToolResult {
                tool_call_id: tool_call_id.into(),
                content: content.into(),
                is_error: true,
            }],
        )
    }

    /// The result of a tool call, sent back to the model as a user turn.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message::new(
            Role::User,
            vec![ContentPart::ToolResult {
                tool_call_id: tool_call_id.into(),
                content: content.into(),
                is_error: false,
            }],
        )
    }
}

/// A piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContentPart {
    /// Text.
    Text(String),
    /// An image.
    Image(Image),
    /// A tool call the model made (in an assistant message).
    ToolUse {
        /// The provider's id for the call.
        id: String,
        /// The tool's name.
        name: String,
        /// The arguments as JSON.
        arguments: Value,
    },
    /// The result of a tool call (in a user message).
    ToolResult {
        /// The id of the call this answers.
        tool_call_id: String,
        /// The result, as text.
        content: String,
        /// Whether the tool failed.
        is_error: bool,
    },
    /// The model's reasoning, replayed as history. Providers that require
    /// signed thinking in multi-turn tool use (Anthropic) need the signature;
    /// others drop this part.
    Thinking {
        /// The reasoning text.
        text: String,
        /// The provider's signature over it.
        signature: Option<String>,
    },
    /// Reasoning the provider returned encrypted, replayed as history.
    RedactedThinking {
        /// The opaque data.
        data: String,
    },
    /// Not content: the end of a cacheable prompt prefix (Anthropic's
    /// `cache_control` on the part before it, which must be in the same
    /// message; at most four per request). Left out by providers that cache
    /// on their own.
    CacheBreakpoint {
        /// How long the prefix is kept.
        ttl: CacheTtl,
    },
}

/// An image in a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Image {
    /// An image the provider fetches.
    Url(String),
    /// Inline bytes, base64-encoded.
    Base64 {
        /// The MIME type, e.g. `image/png`.
        media_type: String,
        /// The base64 data.
        data: String,
    },
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

impl Tool {
    /// A tool named `name` taking arguments that match the JSON Schema
    /// `parameters`.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Tool {
            name: name.into(),
            description: Some(description.into()),
            parameters,
        }
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call, of any tool.
    Required,
    /// A call of this tool.
    Tool(String),
}
