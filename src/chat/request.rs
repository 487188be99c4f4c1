use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One call to a model: the conversation so far and how to answer it.
///
/// Provider-neutral; each provider service encodes it into its own wire
/// format. Anything a provider offers that has no field here goes into
/// [`extra`](ChatRequest::extra), a JSON map merged into the request body last
/// (so it also overrides what the encoder wrote).
///
/// `ChatRequest` is `Clone`, so retrying layers can send it again, and carries
/// [`http::Extensions`] for values that travel with one call through the
/// layers (a credential, a deadline).
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
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The model; empty means the provider service's default model.
    pub model: String,
    /// The conversation, oldest first. System messages may appear anywhere;
    /// providers that take the system prompt separately collect them.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<Tool>,
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
    /// Stream the answer as server-sent events (the default) or fetch it as
    /// one JSON body. Both produce the same [`StreamEvent`](crate::StreamEvent)s.
    pub stream: bool,
    /// Provider-specific fields merged into the request body, last.
    pub extra: Map<String, Value>,
    /// Values that travel with this call through the layers.
    pub extensions: http::Extensions,
}

impl ChatRequest {
    /// A streaming request for `model` (empty for the service's default) with
    /// no messages yet.
    pub fn new(model: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            stream: true,
            ..ChatRequest::default()
        }
    }

    /// Appends a message.
    pub fn message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }

    /// Appends a tool definition.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
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

    /// Merges `key: value` into the provider's request body.
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
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
