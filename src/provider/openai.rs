//! OpenAI Chat Completions, and every server that speaks it.

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::azure::{self, Azure};
use super::{
    Client, CommonBuilder, Decode, Decoded, Wire, common_builder_methods, default_transport,
    provider_service,
};
use crate::chat::{
    ChatRequest, ContentPart, DenseIndex, Effort, Image, ResponseFormat, Role, StopReason,
    StreamEvent, ToolChoice, Usage,
};
use crate::error::Error;
use crate::sse::Event;
use crate::transport::ReqwestTransport;

const NAME: &str = "openai";

/// OpenAI Chat Completions (`POST {base}/chat/completions`) as a
/// `Service<ChatRequest, Response = ChatStream, Error = Error>`.
///
/// Also the client for OpenAI-compatible servers (vLLM, Ollama, llama.cpp,
/// gateways): set [`base_url`](OpenAiBuilder::base_url). Streams ask for usage
/// (`stream_options.include_usage`) unless told not to; reasoning sent as
/// `reasoning_content` or `reasoning` arrives as
/// [`StreamEvent::ThinkingDelta`]; only the first choice is decoded (`n > 1`
/// is not supported).
pub struct OpenAi<S = ReqwestTransport> {
    client: Client<OpenAiWire, S>,
}

provider_service!(OpenAi);

impl OpenAi {
    /// Configures a service.
    pub fn builder() -> OpenAiBuilder {
        OpenAiBuilder {
            common: CommonBuilder::new("https://api.openai.com/v1"),
            api_key: None,
            include_usage: true,
            max_tokens_field: "max_tokens",
            azure: None,
        }
    }

    /// Configures a service for Azure OpenAI's v1 API at `endpoint`, the
    /// resource's URL (`https://{resource}.openai.azure.com`; a trailing
    /// `/openai/v1` is fine too): requests go to
    /// `{endpoint}/openai/v1/chat/completions`, the model named in the body
    /// is the deployment's name, and the key — from `AZURE_OPENAI_API_KEY`
    /// when set, or [`api_key`](OpenAiBuilder::api_key) — travels in the
    /// `api-key` header. An Entra ID token comes from a
    /// [`RefreshLayer`](crate::RefreshLayer) as a
    /// [`Credential::bearer`](crate::Credential::bearer), and replaces the
    /// key. For a deployment's own path and an `api-version`, add
    /// [`azure_deployment`](OpenAiBuilder::azure_deployment).
    ///
    /// ```
    /// use llm_tower::OpenAi;
    ///
    /// let v1 = OpenAi::azure("https://contoso.openai.azure.com")
    ///     .model("gpt-4o-prod")
    ///     .build()?;
    /// assert_eq!(v1.endpoint(), "https://contoso.openai.azure.com/openai/v1/chat/completions");
    ///
    /// let deployment = OpenAi::azure("https://contoso.openai.azure.com")
    ///     .azure_deployment("gpt-4o-prod", "2024-10-21")
    ///     .build()?;
    /// assert_eq!(
    ///     deployment.endpoint(),
    ///     "https://contoso.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    /// );
    /// # Ok::<(), llm_tower::Error>(())
    /// ```
    pub fn azure(endpoint: impl Into<String>) -> OpenAiBuilder {
        let mut builder = OpenAi::builder().base_url(endpoint);
        builder.azure = Some(Azure::default());
        if let Ok(key) = std::env::var(azure::KEY_ENV) {
            builder = builder.api_key(key);
        }
        builder
    }

    /// Configures a service for an OpenAI-compatible server: its base URL,
    /// its key from the environment variable its documentation names (when
    /// set and not empty), and what it accepts. Every setting can still be
    /// changed on the builder; a key given with
    /// [`api_key`](OpenAiBuilder::api_key) replaces the one from the
    /// environment.
    ///
    /// ```
    /// use llm_tower::{OpenAi, Preset};
    ///
    /// let groq = OpenAi::preset(Preset::Groq).model("llama-3.3-70b-versatile").build()?;
    /// assert_eq!(groq.endpoint(), "https://api.groq.com/openai/v1/chat/completions");
    ///
    /// // A local server elsewhere than its default port.
    /// let local = OpenAi::preset(Preset::Ollama)
    ///     .base_url("http://gpu-box:11434/v1")
    ///     .model("qwen3")
    ///     .build()?;
    /// # Ok::<(), llm_tower::Error>(())
    /// ```
    pub fn preset(preset: Preset) -> OpenAiBuilder {
        let mut builder = OpenAi::builder()
            .base_url(preset.base_url())
            .include_usage(preset.accepts_stream_options());
        if let Some(key) = preset
            .api_key_env()
            .and_then(|name| std::env::var(name).ok())
        {
            builder = builder.api_key(key);
        }
        builder
    }
}

/// An OpenAI-compatible server [`OpenAi::preset`] knows: where it listens by
/// default, where its key comes from, and what it accepts.
///
/// | preset | base URL | key from |
/// |---|---|---|
/// | `XAi` | `https://api.x.ai/v1` | `XAI_API_KEY` |
/// | `Groq` | `https://api.groq.com/openai/v1` | `GROQ_API_KEY` |
/// | `Together` | `https://api.together.xyz/v1` | `TOGETHER_API_KEY` |
/// | `OpenRouter` | `https://openrouter.ai/api/v1` | `OPENROUTER_API_KEY` |
/// | `DeepSeek` | `https://api.deepseek.com` | `DEEPSEEK_API_KEY` |
/// | `Mistral` | `https://api.mistral.ai/v1` | `MISTRAL_API_KEY` |
/// | `Ollama` | `http://localhost:11434/v1` | none |
/// | `Vllm` | `http://localhost:8000/v1` | `VLLM_API_KEY`, if the server has one |
/// | `LlamaCpp` (llama.cpp's `llama-server`) | `http://localhost:8080/v1` | `LLAMA_API_KEY`, if the server has one |
///
/// Mistral refuses `stream_options` (and sends usage anyway), so its preset
/// does not ask for usage that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Preset {
    /// xAI (Grok).
    XAi,
    /// Groq.
    Groq,
    /// Together AI.
    Together,
    /// OpenRouter.
    OpenRouter,
    /// DeepSeek.
    DeepSeek,
    /// Mistral AI.
    Mistral,
    /// Ollama, on this machine.
    Ollama,
    /// vLLM's OpenAI-compatible server, on this machine.
    Vllm,
    /// llama.cpp's `llama-server`, on this machine.
    LlamaCpp,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 9] = [
        Preset::XAi,
        Preset::Groq,
        Preset::Together,
        Preset::OpenRouter,
        Preset::DeepSeek,
        Preset::Mistral,
        Preset::Ollama,
        Preset::Vllm,
        Preset::LlamaCpp,
    ];

    /// A short lowercase name: `xai`, `groq`, `together`, `openrouter`,
    /// `deepseek`, `mistral`, `ollama`, `vllm`, `llamacpp`.
    pub const fn name(self) -> &'static str {
        match self {
            Preset::XAi => "xai",
            Preset::Groq => "groq",
            Preset::Together => "together",
            Preset::OpenRouter => "openrouter",
            Preset::DeepSeek => "deepseek",
            Preset::Mistral => "mistral",
            Preset::Ollama => "ollama",
            Preset::Vllm => "vllm",
            Preset::LlamaCpp => "llamacpp",
        }
    }

    /// The preset of that [name](Preset::name), in any case; `llama.cpp`
    /// and `llama-cpp` are `LlamaCpp` too.
    pub fn from_name(name: &str) -> Option<Preset> {
        let name = name.to_ascii_lowercase().replace(['.', '-', '_'], "");
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The API root requests go under (`{base}/chat/completions`).
    pub const fn base_url(self) -> &'static str {
        match self {
            Preset::XAi => "https://api.x.ai/v1",
            Preset::Groq => "https://api.groq.com/openai/v1",
            Preset::Together => "https://api.together.xyz/v1",
            Preset::OpenRouter => "https://openrouter.ai/api/v1",
            Preset::DeepSeek => "https://api.deepseek.com",
            Preset::Mistral => "https://api.mistral.ai/v1",
            Preset::Ollama => "http://localhost:11434/v1",
            Preset::Vllm => "http://localhost:8000/v1",
            Preset::LlamaCpp => "http://localhost:8080/v1",
        }
    }

    /// The environment variable the server's documentation keeps its key
    /// in; `None` for a server that takes no key.
    pub const fn api_key_env(self) -> Option<&'static str> {
        match self {
            Preset::XAi => Some("XAI_API_KEY"),
            Preset::Groq => Some("GROQ_API_KEY"),
            Preset::Together => Some("TOGETHER_API_KEY"),
            Preset::OpenRouter => Some("OPENROUTER_API_KEY"),
            Preset::DeepSeek => Some("DEEPSEEK_API_KEY"),
            Preset::Mistral => Some("MISTRAL_API_KEY"),
            Preset::Ollama => None,
            Preset::Vllm => Some("VLLM_API_KEY"),
            Preset::LlamaCpp => Some("LLAMA_API_KEY"),
        }
    }

    /// Whether the server accepts `stream_options.include_usage`.
    const fn accepts_stream_options(self) -> bool {
        !matches!(self, Preset::Mistral)
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds an [`OpenAi`] service.
#[derive(Clone)]
pub struct OpenAiBuilder {
    common: CommonBuilder,
    api_key: Option<String>,
    include_usage: bool,
    max_tokens_field: &'static str,
    azure: Option<Azure>,
}

impl std::fmt::Debug for OpenAiBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBuilder")
            .field("common", &self.common)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("include_usage", &self.include_usage)
            .field("azure", &self.azure)
            .finish()
    }
}

impl OpenAiBuilder {
    common_builder_methods!();

    /// The API key, sent as `Authorization: Bearer …` (on Azure, in
    /// `api-key`). Local servers often need none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.api_key = (!key.is_empty()).then_some(key);
        self
    }

    /// Whether streams ask for a final usage chunk
    /// (`stream_options.include_usage`, default on). Turn it off for servers
    /// that reject the field.
    pub fn include_usage(mut self, on: bool) -> Self {
        self.include_usage = on;
        self
    }

    /// Whether [`ChatRequest::max_tokens`] is sent as
    /// `max_completion_tokens` (what OpenAI's reasoning models require)
    /// rather than `max_tokens` (what most compatible servers take; default
    /// off).
    pub fn max_completion_tokens(mut self, on: bool) -> Self {
        self.max_tokens_field = if on {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        self
    }

    /// Azure OpenAI's deployment style, after [`OpenAi::azure`]: requests
    /// go to
    /// `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`,
    /// with the key in `api-key`; the deployment is the default model. (On
    /// a builder not made by [`OpenAi::azure`], the base URL is taken as the
    /// resource's endpoint, and `AZURE_OPENAI_API_KEY` is not read.) The names may hold
    /// letters, digits, `-`, `_` and `.`; anything else fails the build.
    pub fn azure_deployment(
        mut self,
        deployment: impl Into<String>,
        api_version: impl Into<String>,
    ) -> Self {
        self.azure = Some(Azure {
            deployment: Some((deployment.into(), api_version.into())),
        });
        self
    }

    /// Builds the service over the default reqwest transport.
    pub fn build(self) -> Result<OpenAi, Error> {
        let transport = default_transport(&self.common)?;
        self.build_with(transport)
    }

    /// Builds the service over `transport`, any
    /// `Service<http::Request<RequestBody>>` (a stack of `tower-http` layers,
    /// a test double). The timeouts set here apply to the default transport
    /// only.
    pub fn build_with<S>(self, transport: S) -> Result<OpenAi<S>, Error> {
        let common = azure::openai_common(
            NAME,
            self.common,
            self.azure.as_ref(),
            "/chat/completions",
            self.api_key.as_deref(),
        )?;
        let azure = self.azure.is_some();
        Ok(OpenAi {
            client: Client {
                wire: std::sync::Arc::new(OpenAiWire {
                    include_usage: self.include_usage,
                    max_tokens_field: self.max_tokens_field,
                    azure,
                }),
                common: std::sync::Arc::new(common),
                transport,
            },
        })
    }
}

#[derive(Debug)]
pub(crate) struct OpenAiWire {
    include_usage: bool,
    max_tokens_field: &'static str,
    /// Keys go in Azure's `api-key` header.
    azure: bool,
}

impl Wire for OpenAiWire {
    const NAME: &'static str = NAME;

    type Decoder = OpenAiDecoder;

    fn encode(&self, req: &ChatRequest, model: &str) -> Result<Map<String, Value>, Error> {
        super::encode::no_previous_response(NAME, req)?;
        let mut body = Map::new();
        body.insert("model".into(), model.into());
        body.insert("messages".into(), Value::Array(encode_messages(req)));
        body.insert("stream".into(), req.stream.into());
        if req.stream && self.include_usage {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if let Some(n) = req.max_tokens {
            body.insert(self.max_tokens_field.into(), n.into());
        }
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), super::decimal(t));
        }
        if let Some(p) = req.top_p {
            body.insert("top_p".into(), super::decimal(p));
        }
        if !req.stop.is_empty() {
            body.insert("stop".into(), req.stop.clone().into());
        }
        if !req.tools.is_empty() {
            let tools = req
                .tools
                .iter()
                .map(|t| {
                    let mut f = Map::new();
                    f.insert("name".into(), t.name.clone().into());
                    if let Some(d) = &t.description {
                        f.insert("description".into(), d.clone().into());
                    }
                    f.insert("parameters".into(), t.parameters.clone());
                    json!({"type": "function", "function": f})
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(choice) = &req.tool_choice {
            let v = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            };
            body.insert("tool_choice".into(), v);
        }
        match &req.response_format {
            None => {}
            Some(ResponseFormat::Json) => {
                body.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some(ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            }) => {
                body.insert(
                    "response_format".into(),
                    json!({"type": "json_schema",
                           "json_schema": {"name": name, "schema": schema, "strict": strict}}),
                );
            }
        }
        if let Some(r) = &req.reasoning {
            if r.budget_tokens.is_some() {
                return Err(Error::config(format!(
                    "{NAME}: Chat Completions takes a reasoning effort, not a token budget"
                )));
            }
            if r.summary {
                return Err(Error::config(format!(
                    "{NAME}: Chat Completions returns no reasoning summary; OpenAiResponses does"
                )));
            }
            if let Some(effort) = r.effort {
                body.insert(
                    "reasoning_effort".into(),
                    openai_effort(NAME, effort)?.into(),
                );
            }
        }
        if let Some(key) = &req.prompt_cache_key {
            body.insert("prompt_cache_key".into(), key.clone().into());
        }
        Ok(body)
    }

    fn api_key_header(&self, key: &HeaderValue) -> (HeaderName, HeaderValue) {
        azure::key_header(self.azure, key)
    }

    fn decoder(&self) -> OpenAiDecoder {
        OpenAiDecoder::default()
    }
}

fn encode_messages(req: &ChatRequest) -> Vec<Value> {
    let mut out = Vec::with_capacity(req.messages.len());
    for m in req.messages.iter() {
        match m.role {
            Role::System => {
                let text = joined_text(&m.content);
                out.push(json!({"role": "system", "content": text}));
            }
            Role::User => {
                let mut parts = Vec::new();
                for p in &m.content {
                    match p {
                        ContentPart::ToolResult {
                            tool_call_id,
                            content,
                            ..
                        } => out.push(json!({"role": "tool", "tool_call_id": tool_call_id, "content": content})),
                        ContentPart::Text(t) => parts.push(json!({"type": "text", "text": t})),
                        ContentPart::Image(img) => {
                            parts.push(json!({"type": "image_url", "image_url": {"url": image_url(img)}}));
                        }
                        _ => {}
                    }
                }
                match parts.as_slice() {
                    [] => {}
                    [one] if one["type"] == "text" => {
                        out.push(json!({"role": "user", "content": one["text"]}));
                    }
                    _ => out.push(json!({"role": "user", "content": parts})),
                }
            }
            Role::Assistant => {
                let text = joined_text(&m.content);
                let calls: Vec<Value> = m
                    .content
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::ToolUse {
                            id,
                            name,
                            arguments,
                        } => Some(json!({
                            "id": id,
                            "type": "function",
                            "function": {"name": name, "arguments": arguments.to_string()},
                        })),
                        _ => None,
                    })
                    .collect();
                let mut msg = Map::new();
                msg.insert("role".into(), "assistant".into());
                msg.insert(
                    "content".into(),
                    if text.is_empty() && !calls.is_empty() {
                        Value::Null
                    } else {
                        text.into()
                    },
                );
                if !calls.is_empty() {
                    msg.insert("tool_calls".into(), Value::Array(calls));
                }
                out.push(Value::Object(msg));
            }
        }
    }
    out
}

/// An image as OpenAI's APIs take it: its URL, or its bytes as a `data:` URL.
pub(super) fn image_url(img: &Image) -> String {
    match img {
        Image::Url(u) => u.clone(),
        Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

/// `effort` as OpenAI spells it: every level but [`Effort::Max`].
pub(super) fn openai_effort(provider: &str, effort: Effort) -> Result<&'static str, Error> {
    if effort == Effort::Max {
        return Err(Error::config(format!(
            "{provider}: has no reasoning effort \"max\"; its highest is xhigh"
        )));
    }
    Ok(effort.as_str())
}

fn joined_text(parts: &[ContentPart]) -> String {
    let mut text = String::new();
    for p in parts {
        if let ContentPart::Text(t) = p {
            text.push_str(t);
        }
    }
    text
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    /// Streaming.
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    /// Non-streaming.
    #[serde(borrow, default)]
    message: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            cache_read_input_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
            cache_creation_input_tokens: None,
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
        }
    }
}

/// Decodes one Chat Completions response.
#[derive(Debug, Default)]
pub(crate) struct OpenAiDecoder {
    /// The wire indices of the tool calls started so far.
    tools: DenseIndex,
}

impl OpenAiDecoder {
    fn chunk(&mut self, data: &str, context: &str, out: &mut Decoded) {
        let Some(chunk) = out.json::<Chunk<'_>>(data, context) else {
            return;
        };
        if chunk.error.is_some() {
            out.error_event(data, "error");
            return;
        }
        out.start(
            chunk.id.map(Cow::into_owned),
            chunk.model.map(Cow::into_owned),
        );
        for choice in chunk.choices {
            // Only the first choice: `n > 1` is not supported.
            if choice.index != 0 {
                continue;
            }
            if let Some(delta) = choice.delta.or(choice.message)
                && self.delta(delta, out).is_err()
            {
                return;
            }
            if let Some(reason) = choice.finish_reason {
                out.stop_reason(stop_reason(&reason));
            }
        }
        if let Some(u) = chunk.usage {
            out.push(StreamEvent::Usage(u.into()));
        }
    }

    /// `Err` once the answer failed: nothing may follow.
    fn delta(&mut self, delta: Delta<'_>, out: &mut Decoded) -> Result<(), ()> {
        let text_event = |text: Option<Cow<'_, str>>, make: fn(String) -> StreamEvent| {
            text.filter(|t| !t.is_empty()).map(|t| make(t.into_owned()))
        };
        if let Some(e) = text_event(delta.reasoning_content.or(delta.reasoning), |text| {
            StreamEvent::ThinkingDelta { text }
        }) {
            out.push(e);
        }
        if let Some(e) = text_event(delta.content, |text| StreamEvent::TextDelta { text }) {
            out.push(e);
        }
        if let Some(e) = text_event(delta.refusal, |text| StreamEvent::RefusalDelta { text }) {
            out.push(e);
        }
        for (position, call) in delta.tool_calls.into_iter().flatten().enumerate() {
            let wire = call.index.unwrap_or(position as u64);
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments),
                None => (None, None),
            };
            let Ok((index, new)) = self.tools.insert(wire, super::MAX_PARTS) else {
                out.too_many("tool calls");
                return Err(());
            };
            if new {
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: call
                        .id
                        .map_or_else(|| format!("call_{index}"), Cow::into_owned),
                    name: name.map(Cow::into_owned).unwrap_or_default(),
                });
            }
            if let Some(arguments) = arguments.filter(|a| !a.is_empty()) {
                out.push(StreamEvent::ToolCallDelta {
                    index,
                    arguments: arguments.into_owned(),
                });
            }
        }
        Ok(())
    }
}

/// A stream cut after the model said why it stopped lost at most the usage
/// chunk: the answer is whole (the shared ending does that).
impl Decode for OpenAiDecoder {
    fn event(&mut self, event: Event<'_>, out: &mut Decoded) {
        if event.event == "error" {
            out.error_event(event.data, "error");
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            out.end();
        } else if !data.is_empty() {
            self.chunk(data, event.event, out);
        }
    }

    fn body(&mut self, body: &str, out: &mut Decoded) {
        self.chunk(body, "body", out);
        if !out.has_failed() {
            out.end();
        }
    }
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "stop" => StopReason::EndTurn,
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}
