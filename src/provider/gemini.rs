//! Google Gemini, through the Generative Language API.

use std::borrow::Cow;

use http::Uri;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::vertex::Vertex;
use super::{
    Client, CommonBuilder, Decode, Decoded, Wire, common_builder_methods, default_transport,
    provider_service,
};
use crate::auth::secret_header;
use crate::chat::{
    ChatRequest, ContentPart, Effort, Image, ResponseFormat, Role, StopReason, StreamEvent,
    ToolChoice, Usage,
};
use crate::error::Error;
use crate::sse::Event;
use crate::transport::ReqwestTransport;

const NAME: &str = "gemini";

/// The header Gemini reads its API key from.
const API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Tool-call ids this crate made up for calls Gemini sent without one: not
/// sent back, since Gemini never issued them.
const MADE_UP_ID: &str = "gemini-call-";

/// Google Gemini (`POST {base}/{version}/models/{model}:generateContent`, and
/// `:streamGenerateContent?alt=sse` for streams) as a
/// `Service<ChatRequest, Response = ChatStream, Error = Error>`.
///
/// Authenticates with an API key sent as `x-goog-api-key` (never in the URL,
/// where logs and error messages would show it). System messages become
/// `systemInstruction`; thought summaries (ask for them with
/// `extra["generationConfig"]`, or [`include_thoughts`](GeminiBuilder::include_thoughts))
/// arrive as [`StreamEvent::ThinkingDelta`] and thought signatures as
/// [`StreamEvent::ThinkingSignature`]; a function call arrives whole, as a
/// `ToolCallStart` and one `ToolCallDelta`. Gemini sends no end-of-stream
/// marker: a stream is complete when it ends after a `finishReason`. Only the
/// first candidate is decoded. [`endpoint`](Gemini::endpoint) is the root the
/// model's path goes under (`…/v1beta/`).
pub struct Gemini<S = ReqwestTransport> {
    client: Client<GeminiWire, S>,
}

provider_service!(Gemini);

impl Gemini {
    /// Configures a service.
    pub fn builder() -> GeminiBuilder {
        GeminiBuilder {
            common: CommonBuilder::new("https://generativelanguage.googleapis.com"),
            api_key: None,
            version: "v1beta".into(),
            include_thoughts: false,
            vertex: None,
        }
    }

    /// Configures a service for Gemini on Vertex AI, in Google Cloud
    /// `project` at `location` (`us-central1`, `europe-west4`, `global`…):
    /// requests go to `https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:streamGenerateContent?alt=sse`
    /// (`:generateContent` when not streaming). Vertex AI takes OAuth
    /// access tokens: give them with a [`RefreshLayer`](crate::RefreshLayer)
    /// as [`Credential::bearer`](crate::Credential::bearer)s — from
    /// [`CommandSource`](crate::refresh::CommandSource) running `gcloud
    /// auth print-access-token`, say.
    ///
    /// ```
    /// use llm_tower::Gemini;
    ///
    /// let svc = Gemini::vertex("my-project", "us-central1")
    ///     .model("gemini-2.5-flash")
    ///     .build()?;
    /// assert_eq!(
    ///     svc.endpoint(),
    ///     "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations/us-central1/publishers/google/"
    /// );
    /// # Ok::<(), llm_tower::Error>(())
    /// ```
    pub fn vertex(project: impl Into<String>, location: impl Into<String>) -> GeminiBuilder {
        let location = location.into();
        let mut builder = Gemini::builder().base_url(Vertex::base_url(&location));
        builder.vertex = Some(Vertex {
            project: project.into(),
            location,
        });
        builder
    }
}

/// Builds a [`Gemini`] service.
#[derive(Clone)]
pub struct GeminiBuilder {
    common: CommonBuilder,
    api_key: Option<String>,
    version: String,
    include_thoughts: bool,
    vertex: Option<Vertex>,
}

impl std::fmt::Debug for GeminiBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiBuilder")
            .field("common", &self.common)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("version", &self.version)
            .field("include_thoughts", &self.include_thoughts)
            .field("vertex", &self.vertex)
            .finish()
    }
}

impl GeminiBuilder {
    common_builder_methods!();

    /// The API key, sent as `x-goog-api-key`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.api_key = (!key.is_empty()).then_some(key);
        self
    }

    /// The API version in the path (default `v1beta`, where thinking and
    /// the newest models are). Not used on Vertex AI, whose path names its
    /// own.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Asks thinking models for thought summaries
    /// (`generationConfig.thinkingConfig.includeThoughts`), which arrive as
    /// [`StreamEvent::ThinkingDelta`]. Off by default.
    pub fn include_thoughts(mut self, on: bool) -> Self {
        self.include_thoughts = on;
        self
    }

    /// Builds the service over the default reqwest transport.
    pub fn build(self) -> Result<Gemini, Error> {
        let transport = default_transport(&self.common)?;
        self.build_with(transport)
    }

    /// Builds the service over `transport`, any
    /// `Service<http::Request<RequestBody>>`. The timeouts set here apply to
    /// the default transport only.
    pub fn build_with<S>(self, transport: S) -> Result<Gemini<S>, Error> {
        let mut auth = Vec::new();
        if let Some(key) = &self.api_key {
            auth.push((API_KEY, secret_header(NAME, key)?));
        }
        let path = match &self.vertex {
            Some(vertex) => vertex.publisher_path(NAME, "google")?,
            None => format!("/{}/", self.version.trim_matches('/')),
        };
        let common = self.common.common(NAME, &path, auth)?;
        // The default model's two URIs, built once rather than per call.
        let default_uris = if common.model.is_empty() {
            None
        } else {
            Some([
                model_uri(&common.endpoint, &common.model, false)?,
                model_uri(&common.endpoint, &common.model, true)?,
            ])
        };
        Ok(Gemini {
            client: Client {
                wire: std::sync::Arc::new(GeminiWire {
                    include_thoughts: self.include_thoughts,
                    default_model: common.model.clone(),
                    default_uris,
                }),
                common: std::sync::Arc::new(common),
                transport,
            },
        })
    }
}

#[derive(Debug)]
pub(crate) struct GeminiWire {
    include_thoughts: bool,
    default_model: String,
    /// The default model's URIs: not streaming, streaming.
    default_uris: Option<[Uri; 2]>,
}

/// Where a call to `model` goes: the model and the mode are in the path.
fn model_uri(endpoint: &Uri, model: &str, stream: bool) -> Result<Uri, Error> {
    // `models/x` and `tunedModels/x` name their collection; a bare id is a
    // model.
    let collection = if model.contains('/') { "" } else { "models/" };
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    if model.contains(['?', '#', ':', ' ']) {
        return Err(Error::config(format!(
            "gemini: invalid model name {model:?}"
        )));
    }
    format!("{endpoint}{collection}{model}:{method}")
        .parse()
        .map_err(|e| Error::config(format!("gemini: invalid model name {model:?}: {e}")))
}

impl Wire for GeminiWire {
    const NAME: &'static str = NAME;

    type Decoder = GeminiDecoder;

    fn uri(&self, endpoint: &Uri, model: &str, stream: bool) -> Result<Uri, Error> {
        match &self.default_uris {
            Some(uris) if model == self.default_model => Ok(uris[usize::from(stream)].clone()),
            _ => model_uri(endpoint, model, stream),
        }
    }

    fn api_key_header(&self, value: &HeaderValue) -> (HeaderName, HeaderValue) {
        (API_KEY, value.clone())
    }

    fn encode(&self, req: &ChatRequest, _model: &str) -> Result<Map<String, Value>, Error> {
        super::encode::no_previous_response(NAME, req)?;
        let mut body = Map::new();
        let mut system = Vec::new();
        let mut contents = Vec::with_capacity(req.messages.len());
        for m in req.messages.iter() {
            let mut parts: Vec<Value> = m
                .content
                .iter()
                .filter_map(|p| encode_part(p, req))
                .collect();
            if m.role == Role::Assistant {
                place_signature(&m.content, &mut parts);
            }
            if parts.is_empty() {
                continue;
            }
            match m.role {
                Role::System => system.extend(parts),
                Role::User => contents.push(json!({"role": "user", "parts": parts})),
                Role::Assistant => contents.push(json!({"role": "model", "parts": parts})),
            }
        }
        if !system.is_empty() {
            body.insert("systemInstruction".into(), json!({"parts": system}));
        }
        body.insert("contents".into(), Value::Array(contents));
        let mut config = Map::new();
        if let Some(n) = req.max_tokens {
            config.insert("maxOutputTokens".into(), n.into());
        }
        if let Some(t) = req.temperature {
            config.insert("temperature".into(), super::decimal(t));
        }
        if let Some(p) = req.top_p {
            config.insert("topP".into(), super::decimal(p));
        }
        if !req.stop.is_empty() {
            config.insert("stopSequences".into(), req.stop.clone().into());
        }
        let mut thinking = Map::new();
        if self.include_thoughts {
            thinking.insert("includeThoughts".into(), true.into());
        }
        if let Some(r) = &req.reasoning {
            if r.effort.is_some() && r.budget_tokens.is_some() {
                return Err(Error::config(format!(
                    "{NAME}: takes a reasoning effort (thinkingLevel) or a token budget \
                     (thinkingBudget), not both"
                )));
            }
            if let Some(effort) = r.effort {
                if matches!(effort, Effort::XHigh | Effort::Max) {
                    return Err(Error::config(format!(
                        "{NAME}: has no reasoning effort {:?}; its levels are minimal, low, \
                         medium and high",
                        effort.as_str()
                    )));
                }
                thinking.insert("thinkingLevel".into(), effort.as_str().into());
            }
            if let Some(n) = r.budget_tokens {
                thinking.insert("thinkingBudget".into(), n.into());
            }
            if r.summary {
                thinking.insert("includeThoughts".into(), true.into());
            }
        }
        if !thinking.is_empty() {
            config.insert("thinkingConfig".into(), Value::Object(thinking));
        }
        match &req.response_format {
            None => {}
            Some(ResponseFormat::Json) => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some(ResponseFormat::JsonSchema { schema, .. }) => {
                config.insert("responseMimeType".into(), "application/json".into());
                config.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        if !config.is_empty() {
            body.insert("generationConfig".into(), Value::Object(config));
        }
        if !req.tools.is_empty() {
            let declarations: Vec<Value> = req
                .tools
                .iter()
                .map(|t| {
                    let mut f = Map::new();
                    f.insert("name".into(), t.name.clone().into());
                    if let Some(d) = &t.description {
                        f.insert("description".into(), d.clone().into());
                    }
                    f.insert("parameters".into(), t.parameters.clone());
                    Value::Object(f)
                })
                .collect();
            body.insert(
                "tools".into(),
                json!([{"functionDeclarations": declarations}]),
            );
        }
        if let Some(choice) = &req.tool_choice {
            let config = match choice {
                ToolChoice::Auto => json!({"mode": "AUTO"}),
                ToolChoice::None => json!({"mode": "NONE"}),
                ToolChoice::Required => json!({"mode": "ANY"}),
                ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            };
            body.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
        Ok(body)
    }

    fn decoder(&self) -> GeminiDecoder {
        GeminiDecoder::default()
    }
}

fn encode_part(p: &ContentPart, req: &ChatRequest) -> Option<Value> {
    Some(match p {
        ContentPart::Text(t) => json!({"text": t}),
        ContentPart::Image(Image::Base64 { media_type, data }) => {
            json!({"inlineData": {"mimeType": media_type, "data": data}})
        }
        ContentPart::Image(Image::Url(url)) => json!({"fileData": {"fileUri": url}}),
        ContentPart::ToolUse {
            id,
            name,
            arguments,
        } => {
            let mut call = Map::new();
            call.insert("name".into(), name.clone().into());
            call.insert("args".into(), arguments.clone());
            if !id.starts_with(MADE_UP_ID) {
                call.insert("id".into(), id.clone().into());
            }
            json!({"functionCall": call})
        }
        ContentPart::ToolResult {
            tool_call_id,
            content,
            is_error,
        } => {
            // Gemini matches a response to its call by name: find it.
            let name = req
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .find_map(|p| match p {
                    ContentPart::ToolUse { id, name, .. } if id == tool_call_id => Some(name),
                    _ => None,
                })
                .unwrap_or(tool_call_id);
            let key = if *is_error { "error" } else { "result" };
            let mut response = Map::new();
            response.insert("name".into(), name.clone().into());
            response.insert("response".into(), json!({ key: content }));
            if !tool_call_id.starts_with(MADE_UP_ID) {
                response.insert("id".into(), tool_call_id.clone().into());
            }
            json!({"functionResponse": response})
        }
        // The signature goes where Gemini wants it (`place_signature`).
        ContentPart::Thinking { text, .. } if !text.is_empty() => {
            json!({"text": text, "thought": true})
        }
        ContentPart::Thinking { .. }
        | ContentPart::RedactedThinking { .. }
        | ContentPart::CacheBreakpoint { .. } => return None,
    })
}

/// Puts a model turn's thought signature back where Gemini reads it: on the
/// first function call (which Gemini 3 requires), else on the last part that
/// is not a thought, else on the thought itself.
fn place_signature(content: &[ContentPart], parts: &mut [Value]) {
    let Some(signature) = content.iter().find_map(|p| match p {
        ContentPart::Thinking {
            signature: Some(s), ..
        } if !s.is_empty() => Some(s),
        _ => None,
    }) else {
        return;
    };
    let at = parts
        .iter()
        .position(|p| p.get("functionCall").is_some())
        .or_else(|| parts.iter().rposition(|p| p.get("thought").is_none()))
        .or_else(|| parts.len().checked_sub(1));
    if let Some(part) = at.and_then(|i| parts.get_mut(i)) {
        part["thoughtSignature"] = signature.clone().into();
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(borrow, default)]
    model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: bool,
    #[serde(borrow, default)]
    thought_signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: u
                .prompt_token_count
                .saturating_add(u.tool_use_prompt_token_count.unwrap_or(0)),
            // Our output count includes reasoning; Gemini's does not.
            output_tokens: u
                .candidates_token_count
                .saturating_add(u.thoughts_token_count.unwrap_or(0)),
            cache_read_input_tokens: u.cached_content_token_count,
            cache_creation_input_tokens: None,
            reasoning_tokens: u.thoughts_token_count,
        }
    }
}

/// Decodes one Gemini response: SSE chunks, or one JSON body, each a
/// `GenerateContentResponse`.
#[derive(Debug, Default)]
pub(crate) struct GeminiDecoder {
    /// Usage is cumulative in every chunk: the last is sent before `Done`.
    usage: Option<Usage>,
    tool_calls: usize,
}

impl GeminiDecoder {
    fn chunk(&mut self, data: &str, context: &str, out: &mut Decoded) {
        let Some(chunk) = out.json::<Chunk<'_>>(data, context) else {
            return;
        };
        if chunk.error.is_some() {
            out.error_event(data, "error");
            return;
        }
        out.start(
            chunk.response_id.map(Cow::into_owned),
            chunk.model_version.map(Cow::into_owned),
        );
        if let Some(u) = chunk.usage_metadata {
            self.usage = Some(u.into());
        }
        for candidate in chunk.candidates {
            // Only the first candidate: `candidateCount > 1` is not supported.
            if candidate.index != 0 {
                continue;
            }
            for part in candidate.content.into_iter().flat_map(|c| c.parts) {
                self.part(part, out);
            }
            if let Some(reason) = candidate.finish_reason {
                out.stop_reason(self.stop_reason(&reason));
            }
        }
        // A prompt refused outright has no candidate at all.
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason)
            && !out.has_stop_reason()
        {
            out.stop_reason(match reason.as_ref() {
                "SAFETY" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "IMAGE_SAFETY" => {
                    StopReason::ContentFilter
                }
                other => StopReason::Other(other.to_owned()),
            });
        }
    }

    fn part(&mut self, part: Part<'_>, out: &mut Decoded) {
        if let Some(text) = part.text.filter(|t| !t.is_empty()) {
            let text = text.into_owned();
            out.push(if part.thought {
                StreamEvent::ThinkingDelta { text }
            } else {
                StreamEvent::TextDelta { text }
            });
        }
        if let Some(call) = part.function_call {
            let index = self.tool_calls;
            self.tool_calls += 1;
            out.push(StreamEvent::ToolCallStart {
                index,
                id: call
                    .id
                    .map_or_else(|| format!("{MADE_UP_ID}{index}"), Cow::into_owned),
                name: call.name.into_owned(),
            });
            out.push(StreamEvent::ToolCallDelta {
                index,
                arguments: call.args.map_or("{}", RawValue::get).to_owned(),
            });
        }
        if let Some(signature) = part.thought_signature.filter(|s| !s.is_empty()) {
            out.push(StreamEvent::ThinkingSignature {
                signature: signature.into_owned(),
            });
        }
    }

    fn stop_reason(&self, reason: &str) -> StopReason {
        match reason {
            // Gemini says STOP after a function call too.
            "STOP" if self.tool_calls > 0 => StopReason::ToolUse,
            "STOP" => StopReason::EndTurn,
            "MAX_TOKENS" => StopReason::MaxTokens,
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
            | "IMAGE_SAFETY" => StopReason::ContentFilter,
            other => StopReason::Other(other.to_owned()),
        }
    }

    /// The last usage seen, then `Done`.
    fn end(&mut self, out: &mut Decoded) {
        if let Some(u) = self.usage.take() {
            out.push(StreamEvent::Usage(u));
        }
        out.end();
    }
}

/// Gemini sends no terminator: a stream ends with its body, whole once a
/// finish reason was seen.
impl Decode for GeminiDecoder {
    fn event(&mut self, event: Event<'_>, out: &mut Decoded) {
        let data = event.data.trim();
        if !data.is_empty() {
            self.chunk(data, event.event, out);
        }
    }

    fn body(&mut self, text: &str, out: &mut Decoded) {
        // A body is one response, or (from a server that streams without
        // SSE) a JSON array of them.
        if text.starts_with('[') {
            let Some(items) = out.json::<Vec<&RawValue>>(text, "body") else {
                return;
            };
            for item in items {
                self.chunk(item.get(), "body", out);
                if out.has_failed() {
                    return;
                }
            }
        } else {
            self.chunk(text, "body", out);
        }
        if !out.has_failed() {
            self.end(out);
        }
    }

    fn finish(&mut self, out: &mut Decoded) {
        if out.has_stop_reason() {
            self.end(out);
        }
    }
}
