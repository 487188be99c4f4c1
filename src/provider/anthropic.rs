//! Anthropic Messages.

use std::borrow::Cow;

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::vertex::{Vertex, check_model};
use super::{
    Client, CommonBuilder, Decode, Decoded, Wire, common_builder_methods, default_transport,
    provider_service,
};
use crate::auth::secret_header;
use crate::chat::{
    CacheTtl, ChatRequest, ContentPart, DenseIndex, Effort, Image, ResponseFormat, Role,
    StopReason, StreamEvent, ToolChoice, Usage,
};
use crate::error::Error;
use crate::sse::Event;
use crate::transport::ReqwestTransport;

const NAME: &str = "anthropic";

/// Anthropic Messages (`POST {base}/v1/messages`) as a
/// `Service<ChatRequest, Response = ChatStream, Error = Error>`.
///
/// Authenticates with an API key (`x-api-key`) or an OAuth bearer token.
/// System messages are collected into the top-level `system` field; a request
/// without `max_tokens` gets the service's default (4096 unless set).
/// Thinking, its signatures and redacted thinking come through as their own
/// events; an `event: error` inside the stream ends it with the classified
/// error.
pub struct Anthropic<S = ReqwestTransport> {
    client: Client<AnthropicWire, S>,
}

provider_service!(Anthropic);

impl Anthropic {
    /// Configures a service.
    pub fn builder() -> AnthropicBuilder {
        AnthropicBuilder {
            common: CommonBuilder::new("https://api.anthropic.com"),
            auth: Auth::None,
            version: "2023-06-01".into(),
            default_max_tokens: 4096,
            vertex: None,
        }
    }

    /// Configures a service for Claude on Vertex AI, in Google Cloud
    /// `project` at `location` (`us-east5`, `europe-west1`, `global`…):
    /// requests go to `https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:streamRawPredict`
    /// (`:rawPredict` when not streaming), with the model in the path and
    /// `anthropic_version: "vertex-2023-10-16"` in the body instead. Vertex
    /// AI takes OAuth access tokens: give them with a
    /// [`RefreshLayer`](crate::RefreshLayer) as
    /// [`Credential::bearer`](crate::Credential::bearer)s (a token given to
    /// [`api_key`](AnthropicBuilder::api_key) or
    /// [`oauth_token`](AnthropicBuilder::oauth_token) is sent as a bearer
    /// token too).
    ///
    /// ```
    /// use llm_tower::Anthropic;
    ///
    /// let svc = Anthropic::vertex("my-project", "us-east5")
    ///     .model("claude-sonnet-4-5@20250929")
    ///     .build()?;
    /// assert_eq!(
    ///     svc.endpoint(),
    ///     "https://us-east5-aiplatform.googleapis.com/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/"
    /// );
    /// # Ok::<(), llm_tower::Error>(())
    /// ```
    pub fn vertex(project: impl Into<String>, location: impl Into<String>) -> AnthropicBuilder {
        let location = location.into();
        let mut builder = Anthropic::builder().base_url(Vertex::base_url(&location));
        builder.vertex = Some(Vertex {
            project: project.into(),
            location,
        });
        builder
    }
}

#[derive(Clone)]
enum Auth {
    None,
    ApiKey(String),
    Bearer(String),
}

/// Builds an [`Anthropic`] service.
#[derive(Clone)]
pub struct AnthropicBuilder {
    common: CommonBuilder,
    auth: Auth,
    version: String,
    default_max_tokens: u32,
    vertex: Option<Vertex>,
}

impl std::fmt::Debug for AnthropicBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::ApiKey(_) => "api key <redacted>",
            Auth::Bearer(_) => "bearer <redacted>",
        };
        f.debug_struct("AnthropicBuilder")
            .field("common", &self.common)
            .field("auth", &auth)
            .field("version", &self.version)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("vertex", &self.vertex)
            .finish()
    }
}

impl AnthropicBuilder {
    common_builder_methods!();

    /// An API key, sent as `x-api-key`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.auth = Auth::ApiKey(key.into());
        self
    }

    /// An OAuth access token, sent as `Authorization: Bearer …` instead of an
    /// API key.
    pub fn oauth_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Bearer(token.into());
        self
    }

    /// The `anthropic-version` header (default `2023-06-01`). Not used on
    /// Vertex AI, which takes `anthropic_version: "vertex-2023-10-16"` in
    /// the body.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// `max_tokens` for requests that set none (default 4096).
    pub fn default_max_tokens(mut self, n: u32) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// Builds the service over the default reqwest transport.
    pub fn build(self) -> Result<Anthropic, Error> {
        let transport = default_transport(&self.common)?;
        self.build_with(transport)
    }

    /// Builds the service over `transport`, any
    /// `Service<http::Request<RequestBody>>`. The timeouts set here apply to
    /// the default transport only.
    pub fn build_with<S>(self, transport: S) -> Result<Anthropic<S>, Error> {
        let bearer = |token: &str| -> Result<(HeaderName, HeaderValue), Error> {
            Ok((
                AUTHORIZATION,
                secret_header(NAME, &format!("Bearer {token}"))?,
            ))
        };
        let mut auth = Vec::new();
        let path = match &self.vertex {
            // Vertex AI takes OAuth tokens only, and its version in the body.
            Some(vertex) => {
                if let Auth::ApiKey(token) | Auth::Bearer(token) = &self.auth {
                    auth.push(bearer(token)?);
                }
                format!("{}models/", vertex.publisher_path(NAME, "anthropic")?)
            }
            None => {
                let version = HeaderValue::from_str(&self.version)
                    .map_err(|_| Error::config("anthropic: invalid anthropic-version value"))?;
                auth.push((HeaderName::from_static("anthropic-version"), version));
                match &self.auth {
                    Auth::None => {}
                    Auth::ApiKey(key) => auth.push((
                        HeaderName::from_static("x-api-key"),
                        secret_header(NAME, key)?,
                    )),
                    Auth::Bearer(token) => auth.push(bearer(token)?),
                }
                "/v1/messages".to_owned()
            }
        };
        let common = self.common.common(NAME, &path, auth)?;
        Ok(Anthropic {
            client: Client {
                wire: std::sync::Arc::new(AnthropicWire {
                    default_max_tokens: self.default_max_tokens,
                    vertex: self.vertex.is_some(),
                }),
                common: std::sync::Arc::new(common),
                transport,
            },
        })
    }
}

#[derive(Debug)]
pub(crate) struct AnthropicWire {
    default_max_tokens: u32,
    /// On Vertex AI: the model in the path, the version in the body, keys
    /// as bearer tokens.
    vertex: bool,
}

/// The `anthropic_version` Vertex AI takes in the body.
const VERTEX_VERSION: &str = "vertex-2023-10-16";

impl Wire for AnthropicWire {
    const NAME: &'static str = NAME;

    type Decoder = AnthropicDecoder;

    fn encode(&self, req: &ChatRequest, model: &str) -> Result<Map<String, Value>, Error> {
        super::encode::no_previous_response(NAME, req)?;
        let mut body = Map::new();
        if self.vertex {
            body.insert("anthropic_version".into(), VERTEX_VERSION.into());
        } else {
            body.insert("model".into(), model.into());
        }
        let mut breakpoints = 0usize;
        let mut system = Vec::new();
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in req.messages.iter() {
            let role = match m.role {
                Role::System => {
                    let texts = m.content.iter().filter_map(|p| match p {
                        ContentPart::Text(t) => Some(json!({"type": "text", "text": t})),
                        ContentPart::CacheBreakpoint { ttl } => Some(cache_mark(*ttl)),
                        _ => None,
                    });
                    system.extend(texts);
                    continue;
                }
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let mut content: Vec<Value> = m
                .content
                .iter()
                .filter(|p| !foreign_reasoning(p))
                .map(encode_part)
                .collect();
            breakpoints += apply_cache_marks(&mut content)?;
            messages.push(json!({"role": role, "content": content}));
        }
        if !system.is_empty() {
            let marked = system.iter().any(is_cache_mark);
            if marked {
                // Blocks, so that the marked one can carry its mark.
                breakpoints += apply_cache_marks(&mut system)?;
                body.insert("system".into(), Value::Array(system));
            } else {
                let texts: Vec<&str> = system
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect();
                body.insert("system".into(), texts.join("\n\n").into());
            }
        }
        let mut max_tokens = req.max_tokens;
        let mut output_config = Map::new();
        if let Some(r) = &req.reasoning {
            if let Some(budget) = r.budget_tokens {
                // The answer's tokens include the thinking's.
                match max_tokens {
                    Some(n) if n <= budget => {
                        return Err(Error::config(format!(
                            "{NAME}: max_tokens ({n}) must be above the thinking budget ({budget})"
                        )));
                    }
                    Some(_) => {}
                    None => max_tokens = Some(budget.saturating_add(self.default_max_tokens)),
                }
                body.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": budget}),
                );
            }
            if let Some(effort) = r.effort {
                if effort == Effort::Minimal {
                    return Err(Error::config(format!(
                        "{NAME}: has no reasoning effort \"minimal\"; its lowest is low"
                    )));
                }
                output_config.insert("effort".into(), effort.as_str().into());
                if r.budget_tokens.is_none() {
                    body.insert("thinking".into(), json!({"type": "adaptive"}));
                }
            }
        }
        match &req.response_format {
            None => {}
            Some(ResponseFormat::Json) => {
                return Err(Error::config(format!(
                    "{NAME}: has no plain JSON mode; ask for JSON that matches a schema \
                     (ResponseFormat::JsonSchema)"
                )));
            }
            Some(ResponseFormat::JsonSchema { schema, .. }) => {
                output_config.insert(
                    "format".into(),
                    json!({"type": "json_schema", "schema": schema}),
                );
            }
        }
        if !output_config.is_empty() {
            body.insert("output_config".into(), Value::Object(output_config));
        }
        body.insert(
            "max_tokens".into(),
            max_tokens.unwrap_or(self.default_max_tokens).into(),
        );
        body.insert("messages".into(), Value::Array(messages));
        body.insert("stream".into(), req.stream.into());
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), super::decimal(t));
        }
        if let Some(p) = req.top_p {
            body.insert("top_p".into(), super::decimal(p));
        }
        if !req.stop.is_empty() {
            body.insert("stop_sequences".into(), req.stop.clone().into());
        }
        if !req.tools.is_empty() {
            let mut tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| {
                    let mut v = Map::new();
                    v.insert("name".into(), t.name.clone().into());
                    if let Some(d) = &t.description {
                        v.insert("description".into(), d.clone().into());
                    }
                    v.insert("input_schema".into(), t.parameters.clone());
                    Value::Object(v)
                })
                .collect();
            if let (Some(ttl), Some(last)) = (req.cache_tools, tools.last_mut()) {
                last["cache_control"] = cache_control(ttl);
                breakpoints += 1;
            }
            body.insert("tools".into(), Value::Array(tools));
        }
        if breakpoints > MAX_BREAKPOINTS {
            return Err(Error::config(format!(
                "{NAME}: at most {MAX_BREAKPOINTS} cache breakpoints per request, not {breakpoints}"
            )));
        }
        if let Some(choice) = &req.tool_choice {
            let v = match choice {
                ToolChoice::Auto => json!({"type": "auto"}),
                ToolChoice::None => json!({"type": "none"}),
                ToolChoice::Required => json!({"type": "any"}),
                ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
            };
            body.insert("tool_choice".into(), v);
        }
        Ok(body)
    }

    fn decoder(&self) -> AnthropicDecoder {
        AnthropicDecoder::default()
    }

    fn api_key_header(&self, value: &HeaderValue) -> (HeaderName, HeaderValue) {
        if self.vertex {
            return super::wire::bearer(value);
        }
        (HeaderName::from_static("x-api-key"), value.clone())
    }

    fn uri(&self, endpoint: &http::Uri, model: &str, stream: bool) -> Result<http::Uri, Error> {
        if !self.vertex {
            return Ok(endpoint.clone());
        }
        check_model(NAME, model)?;
        let method = if stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        format!("{endpoint}{model}:{method}")
            .parse()
            .map_err(|e| Error::config(format!("{NAME}: invalid model name {model:?}: {e}")))
    }
}

/// Reasoning Anthropic could not have written, so cannot take back:
/// thinking without a signature (another provider's, or a summary), and the
/// Responses API's reasoning items (`rs_…`). Sent, either fails the call.
fn foreign_reasoning(part: &ContentPart) -> bool {
    match part {
        ContentPart::Thinking { signature, .. } => signature.as_deref().is_none_or(str::is_empty),
        ContentPart::RedactedThinking { data } => data.starts_with("rs_"),
        _ => false,
    }
}

/// The most cache breakpoints Anthropic takes in one request.
const MAX_BREAKPOINTS: usize = 4;

/// A breakpoint's place among the blocks being built, until
/// [`apply_cache_marks`] moves it onto the block before it.
fn cache_mark(ttl: CacheTtl) -> Value {
    json!({"cache_mark": cache_control(ttl)})
}

fn is_cache_mark(block: &Value) -> bool {
    block.get("cache_mark").is_some()
}

/// `cache_control` for `ttl`.
fn cache_control(ttl: CacheTtl) -> Value {
    match ttl {
        CacheTtl::Short => json!({"type": "ephemeral"}),
        CacheTtl::Hour => json!({"type": "ephemeral", "ttl": "1h"}),
    }
}

/// Replaces each breakpoint in `blocks` by a `cache_control` on the block
/// before it; how many there were. A breakpoint with no block before it in
/// its message is an error.
fn apply_cache_marks(blocks: &mut Vec<Value>) -> Result<usize, Error> {
    let mut marks = 0;
    let mut out: Vec<Value> = Vec::with_capacity(blocks.len());
    for mut block in blocks.drain(..) {
        match block.get_mut("cache_mark").map(Value::take) {
            Some(control) => {
                let Some(before) = out.last_mut() else {
                    return Err(Error::config(format!(
                        "{NAME}: a cache breakpoint must follow a part of its message"
                    )));
                };
                let kind = before.get("type").and_then(Value::as_str);
                if matches!(kind, Some("thinking" | "redacted_thinking")) {
                    return Err(Error::config(format!(
                        "{NAME}: thinking cannot carry a cache breakpoint; put it after \
                         another part"
                    )));
                }
                // Two in a row mark one part: the later one's TTL counts.
                if before.get("cache_control").is_none() {
                    marks += 1;
                }
                before["cache_control"] = control;
            }
            None => out.push(block),
        }
    }
    *blocks = out;
    Ok(marks)
}

fn encode_part(p: &ContentPart) -> Value {
    match p {
        ContentPart::Text(t) => json!({"type": "text", "text": t}),
        ContentPart::Image(Image::Url(url)) => {
            json!({"type": "image", "source": {"type": "url", "url": url}})
        }
        ContentPart::Image(Image::Base64 { media_type, data }) => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }),
        ContentPart::ToolUse {
            id,
            name,
            arguments,
        } => {
            json!({"type": "tool_use", "id": id, "name": name, "input": arguments})
        }
        ContentPart::ToolResult {
            tool_call_id,
            content,
            is_error,
        } => json!({
            "type": "tool_result",
            "tool_use_id": tool_call_id,
            "content": content,
            "is_error": is_error,
        }),
        ContentPart::Thinking { text, signature } => {
            json!({"type": "thinking", "thinking": text, "signature": signature.as_deref().unwrap_or_default()})
        }
        ContentPart::RedactedThinking { data } => {
            json!({"type": "redacted_thinking", "data": data})
        }
        ContentPart::CacheBreakpoint { ttl } => cache_mark(*ttl),
    }
}

#[derive(Deserialize)]
struct MessageStartEvent<'a> {
    #[serde(borrow)]
    message: MessageHead<'a>,
}

#[derive(Deserialize)]
struct MessageHead<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct BlockStartEvent<'a> {
    index: u64,
    #[serde(borrow)]
    content_block: Block<'a>,
}

/// A content block, in a `content_block_start` event or a non-streaming body.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
struct BlockDeltaEvent<'a> {
    index: u64,
    #[serde(borrow)]
    delta: BlockDelta<'a>,
}

#[derive(Deserialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageDeltaEvent<'a> {
    #[serde(borrow, default)]
    delta: Option<MessageDelta<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct MessageDelta<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FullMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<Block<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// Anthropic counts input tokens without the cached ones; every field is
/// optional because `message_delta` repeats only what changed.
#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum BlockKind {
    /// A client tool call: the caller runs it.
    Tool(usize),
    /// Text, thinking: blocks whose arguments deltas would be a protocol
    /// error.
    Other,
    /// A block this crate does not model (a server tool's call and result,
    /// a newer type): its deltas are skipped, as an unknown event is.
    Unmodeled,
}

/// Decodes one Messages response.
#[derive(Debug, Default)]
pub(crate) struct AnthropicDecoder {
    /// The wire indices of the content blocks started so far, and the
    /// kind of each, by position.
    block_index: DenseIndex,
    blocks: Vec<BlockKind>,
    tool_calls: usize,
    /// Raw counters, merged across `message_start` and `message_delta`.
    input: u64,
    output: u64,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
}

impl AnthropicDecoder {
    fn merge_usage(&mut self, u: WireUsage) -> StreamEvent {
        if let Some(n) = u.input_tokens {
            self.input = n;
        }
        if let Some(n) = u.output_tokens {
            self.output = n;
        }
        if u.cache_read_input_tokens.is_some() {
            self.cache_read = u.cache_read_input_tokens;
        }
        if u.cache_creation_input_tokens.is_some() {
            self.cache_creation = u.cache_creation_input_tokens;
        }
        StreamEvent::Usage(Usage {
            input_tokens: self
                .input
                .saturating_add(self.cache_read.unwrap_or(0))
                .saturating_add(self.cache_creation.unwrap_or(0)),
            output_tokens: self.output,
            cache_read_input_tokens: self.cache_read,
            cache_creation_input_tokens: self.cache_creation,
            reasoning_tokens: None,
        })
    }

    fn block(&mut self, index: u64, block: Block<'_>, out: &mut Decoded) {
        let Ok((position, new)) = self.block_index.insert(index, super::MAX_PARTS) else {
            out.too_many("content blocks");
            return;
        };
        let kind = match &*block.kind {
            "tool_use" => {
                if self.tool_calls >= super::MAX_PARTS {
                    out.too_many("tool calls");
                    return;
                }
                let ordinal = self.tool_calls;
                self.tool_calls += 1;
                out.push(StreamEvent::ToolCallStart {
                    index: ordinal,
                    id: block.id.map(Cow::into_owned).unwrap_or_default(),
                    name: block.name.map(Cow::into_owned).unwrap_or_default(),
                });
                // A streamed block starts with `input: {}` and sends its
                // arguments as deltas; a whole message has them here.
                if let Some(input) = block.input.filter(|i| !is_empty_object(i.get())) {
                    out.push(StreamEvent::ToolCallDelta {
                        index: ordinal,
                        arguments: input.get().to_owned(),
                    });
                }
                BlockKind::Tool(ordinal)
            }
            "redacted_thinking" => {
                if let Some(data) = block.data {
                    out.push(StreamEvent::RedactedThinking {
                        data: data.into_owned(),
                    });
                }
                BlockKind::Other
            }
            "thinking" => {
                push_text(out, block.thinking, |text| StreamEvent::ThinkingDelta {
                    text,
                });
                if let Some(sig) = block.signature.filter(|s| !s.is_empty()) {
                    out.push(StreamEvent::ThinkingSignature {
                        signature: sig.into_owned(),
                    });
                }
                BlockKind::Other
            }
            "text" => {
                push_text(out, block.text, |text| StreamEvent::TextDelta { text });
                BlockKind::Other
            }
            // Server tools (`server_tool_use`, whose input streams as
            // `input_json_delta` like a client tool's, and their results)
            // run at the provider: nothing for the caller to do.
            _ => BlockKind::Unmodeled,
        };
        if new {
            self.blocks.push(kind);
        } else if let Some(slot) = self.blocks.get_mut(position) {
            *slot = kind;
        }
    }

    fn delta(&mut self, ev: BlockDeltaEvent<'_>, out: &mut Decoded) {
        let d = ev.delta;
        match &*d.kind {
            "text_delta" => push_text(out, d.text, |text| StreamEvent::TextDelta { text }),
            "thinking_delta" => {
                push_text(out, d.thinking, |text| StreamEvent::ThinkingDelta { text })
            }
            "signature_delta" => push_text(out, d.signature, |signature| {
                StreamEvent::ThinkingSignature { signature }
            }),
            "input_json_delta" => match self
                .block_index
                .get(ev.index)
                .and_then(|p| self.blocks.get(p))
            {
                Some(BlockKind::Tool(ordinal)) => {
                    let index = *ordinal;
                    push_text(out, d.partial_json, |arguments| {
                        StreamEvent::ToolCallDelta { index, arguments }
                    });
                }
                Some(BlockKind::Unmodeled) => {}
                _ => out.fail(Error::decode(
                    NAME,
                    crate::DecodeError::Protocol(format!(
                        "input_json_delta for block {} which is not a tool_use block",
                        ev.index
                    )),
                )),
            },
            _ => {}
        }
    }
}

fn is_empty_object(raw: &str) -> bool {
    let inner = raw.trim();
    inner.starts_with('{') && inner.ends_with('}') && inner[1..inner.len() - 1].trim().is_empty()
}

fn push_text(
    out: &mut Decoded,
    text: Option<Cow<'_, str>>,
    make: impl FnOnce(String) -> StreamEvent,
) {
    if let Some(t) = text.filter(|t| !t.is_empty()) {
        out.push(make(t.into_owned()));
    }
}

impl Decode for AnthropicDecoder {
    fn event(&mut self, event: Event<'_>, out: &mut Decoded) {
        // The SSE event name says which struct to parse (serde's internally
        // tagged enums would buffer every object); streams whose proxy
        // dropped the names fall back to the data's `type`.
        let name: Cow<'_, str> = if event.event == "message" {
            match out.json::<Typed<'_>>(event.data, "message") {
                Some(t) => Cow::Owned(t.kind.into_owned()),
                None => return,
            }
        } else {
            Cow::Borrowed(event.event)
        };
        let data = event.data;
        match &*name {
            "content_block_delta" => {
                if let Some(ev) = out.json::<BlockDeltaEvent<'_>>(data, &name) {
                    self.delta(ev, out);
                }
            }
            "content_block_start" => {
                if let Some(ev) = out.json::<BlockStartEvent<'_>>(data, &name) {
                    self.block(ev.index, ev.content_block, out);
                }
            }
            "message_start" => {
                if let Some(ev) = out.json::<MessageStartEvent<'_>>(data, &name) {
                    out.start(
                        ev.message.id.map(Cow::into_owned),
                        ev.message.model.map(Cow::into_owned),
                    );
                    if let Some(u) = ev.message.usage {
                        let usage = self.merge_usage(u);
                        out.push(usage);
                    }
                }
            }
            "message_delta" => {
                if let Some(ev) = out.json::<MessageDeltaEvent<'_>>(data, &name) {
                    if let Some(reason) = ev.delta.and_then(|d| d.stop_reason) {
                        out.stop_reason(stop_reason(&reason));
                    }
                    if let Some(u) = ev.usage {
                        let usage = self.merge_usage(u);
                        out.push(usage);
                    }
                }
            }
            "message_stop" => out.end(),
            "error" => out.error_event(data, "error"),
            // ping, content_block_stop, and events added after this crate.
            _ => {}
        }
    }

    fn body(&mut self, text: &str, out: &mut Decoded) {
        let Some(kind) = out.json::<Typed<'_>>(text, "body") else {
            return;
        };
        if kind.kind == "error" {
            out.error_event(text, "body");
            return;
        }
        let Some(msg) = out.json::<FullMessage<'_>>(text, "body") else {
            return;
        };
        out.start(msg.id.map(Cow::into_owned), msg.model.map(Cow::into_owned));
        for (index, block) in (0..).zip(msg.content) {
            self.block(index, block, out);
            if out.has_failed() {
                return;
            }
        }
        if let Some(u) = msg.usage {
            let usage = self.merge_usage(u);
            out.push(usage);
        }
        if let Some(reason) = msg.stop_reason {
            out.stop_reason(stop_reason(&reason));
        }
        out.end();
    }

    // A body cut after `message_delta` said why generation stopped misses
    // only `message_stop`: the shared ending counts the answer whole.
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "end_turn" => StopReason::EndTurn,
        "max_tokens" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "pause_turn" => StopReason::PauseTurn,
        "refusal" => StopReason::Refusal,
        other => StopReason::Other(other.to_owned()),
    }
}
