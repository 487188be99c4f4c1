//! OpenAI's Responses API, and the servers that speak it.

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
    ChatRequest, ContentPart, DenseIndex, ResponseFormat, Role, StopReason, StreamEvent,
    ToolChoice, Usage,
};
use crate::error::Error;
use crate::sse::Event;
use crate::transport::ReqwestTransport;

const NAME: &str = "openai-responses";

/// What a reasoning item's [`ContentPart::RedactedThinking`] data starts
/// with: OpenAI's prefix for reasoning item ids.
const REASONING_ID_PREFIX: &str = "rs_";

/// OpenAI's Responses API (`POST {base}/responses`) as a
/// `Service<ChatRequest, Response = ChatStream, Error = Error>`.
///
/// A provider of its own rather than a mode of [`OpenAi`](crate::OpenAi):
/// the request, the stream's events, the end of an answer and the way
/// errors arrive mid-stream all differ from Chat Completions, and so do
/// its defaults.
///
/// - **Stateless by default**: `store: false`, and the model's reasoning
///   comes back encrypted (`include: ["reasoning.encrypted_content"]`) so
///   that the next turn can send it back. Each reasoning item arrives as
///   [`StreamEvent::RedactedThinking`] whose data is the item's id, a `:`,
///   and its encrypted content (the id alone when there is none); its
///   summary arrives as [`StreamEvent::ThinkingDelta`]. Sent back in an
///   assistant message, such parts (and only such parts: their data starts
///   with `rs_`) become reasoning items again; [`ContentPart::Thinking`]
///   is not sent, as the summary is not what the model reasons from.
/// - System messages become `instructions`; the other messages become
///   `input` items: text and images, function calls and their outputs.
/// - Function tools are sent with `strict: false`, as Chat Completions
///   treats them (the Responses API would otherwise make them strict).
/// - [`ChatRequest::stop`] has no counterpart here: a request with stop
///   sequences fails with [`Error::Config`] before it is sent.
/// - The answer ends at `response.completed` or `response.incomplete`
///   (there is no `[DONE]`); `incomplete_details.reason` is the stop reason.
///   `response.failed` and `error` events fail the answer, classified as a
///   status error would be (`rate_limit_exceeded`, `server_error`, …).
///   Events it does not know are skipped.
///
/// ```no_run
/// use llm_tower::{ChatRequest, Message, OpenAiResponses};
/// use tower::ServiceExt;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), llm_tower::Error> {
/// let openai = OpenAiResponses::builder()
///     .api_key(std::env::var("OPENAI_API_KEY").unwrap_or_default())
///     .model("gpt-5-mini")
///     .build()?;
/// let answer = openai
///     .oneshot(ChatRequest::new("").message(Message::user("Say hi")))
///     .await?
///     .completion()
///     .await?;
/// println!("{}", answer.text);
/// # Ok(())
/// # }
/// ```
pub struct OpenAiResponses<S = ReqwestTransport> {
    client: Client<ResponsesWire, S>,
}

provider_service!(OpenAiResponses);

impl OpenAiResponses {
    /// Configures a service.
    pub fn builder() -> OpenAiResponsesBuilder {
        OpenAiResponsesBuilder {
            common: CommonBuilder::new("https://api.openai.com/v1"),
            api_key: None,
            store: false,
            encrypted_reasoning: true,
            azure: false,
        }
    }

    /// Configures a service for the Responses API of an Azure OpenAI
    /// resource at `endpoint` (`https://{resource}.openai.azure.com`):
    /// requests go to `{endpoint}/openai/v1/responses`, the model is the
    /// deployment's name, and the key — from `AZURE_OPENAI_API_KEY` when
    /// set, or [`api_key`](OpenAiResponsesBuilder::api_key) — travels in the
    /// `api-key` header; an Entra ID token from a
    /// [`RefreshLayer`](crate::RefreshLayer) replaces it, as for
    /// [`OpenAi::azure`](crate::OpenAi::azure).
    ///
    /// ```
    /// use llm_tower::OpenAiResponses;
    ///
    /// let svc = OpenAiResponses::azure("https://contoso.openai.azure.com/")
    ///     .model("gpt-5-mini-prod")
    ///     .build()?;
    /// assert_eq!(svc.endpoint(), "https://contoso.openai.azure.com/openai/v1/responses");
    /// # Ok::<(), llm_tower::Error>(())
    /// ```
    pub fn azure(endpoint: impl Into<String>) -> OpenAiResponsesBuilder {
        let mut builder = OpenAiResponses::builder().base_url(endpoint);
        builder.azure = true;
        if let Ok(key) = std::env::var(azure::KEY_ENV) {
            builder = builder.api_key(key);
        }
        builder
    }
}

/// Builds an [`OpenAiResponses`] service.
#[derive(Clone)]
pub struct OpenAiResponsesBuilder {
    common: CommonBuilder,
    api_key: Option<String>,
    store: bool,
    encrypted_reasoning: bool,
    azure: bool,
}

impl std::fmt::Debug for OpenAiResponsesBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiResponsesBuilder")
            .field("common", &self.common)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("store", &self.store)
            .field("encrypted_reasoning", &self.encrypted_reasoning)
            .field("azure", &self.azure)
            .finish()
    }
}

impl OpenAiResponsesBuilder {
    common_builder_methods!();

    /// The API key, sent as `Authorization: Bearer …` (on Azure, in
    /// `api-key`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.api_key = (!key.is_empty()).then_some(key);
        self
    }

    /// Whether the provider keeps each response (`store`, default off).
    /// Off, every request carries the whole conversation, and reasoning
    /// travels encrypted in it; on, the provider keeps the responses, and a
    /// reasoning item sent back may be its id alone.
    pub fn store(mut self, on: bool) -> Self {
        self.store = on;
        self
    }

    /// Whether to ask for the model's reasoning encrypted
    /// (`include: ["reasoning.encrypted_content"]`, default on) so that it
    /// can be sent back on the next turn. Models that do not reason may
    /// refuse the field: turn it off for them.
    pub fn encrypted_reasoning(mut self, on: bool) -> Self {
        self.encrypted_reasoning = on;
        self
    }

    /// Builds the service over the default reqwest transport.
    pub fn build(self) -> Result<OpenAiResponses, Error> {
        let transport = default_transport(&self.common)?;
        self.build_with(transport)
    }

    /// Builds the service over `transport`, any
    /// `Service<http::Request<RequestBody>>`. The timeouts set here apply to
    /// the default transport only.
    pub fn build_with<S>(self, transport: S) -> Result<OpenAiResponses<S>, Error> {
        let common = azure::openai_common(
            NAME,
            self.common,
            self.azure.then(Azure::default).as_ref(),
            "/responses",
            self.api_key.as_deref(),
        )?;
        Ok(OpenAiResponses {
            client: Client {
                wire: std::sync::Arc::new(ResponsesWire {
                    store: self.store,
                    encrypted_reasoning: self.encrypted_reasoning,
                    azure: self.azure,
                }),
                common: std::sync::Arc::new(common),
                transport,
            },
        })
    }
}

#[derive(Debug)]
pub(crate) struct ResponsesWire {
    store: bool,
    encrypted_reasoning: bool,
    /// Keys go in Azure's `api-key` header.
    azure: bool,
}

impl Wire for ResponsesWire {
    const NAME: &'static str = NAME;

    type Decoder = ResponsesDecoder;

    fn encode(&self, req: &ChatRequest, model: &str) -> Result<Map<String, Value>, Error> {
        if !req.stop.is_empty() {
            return Err(Error::config(format!(
                "{NAME}: the Responses API has no stop sequences; remove `stop` from the request"
            )));
        }
        let mut body = Map::new();
        body.insert("model".into(), model.into());
        let instructions = instructions(req);
        if !instructions.is_empty() {
            body.insert("instructions".into(), instructions.into());
        }
        body.insert("input".into(), Value::Array(self.input(req)));
        body.insert("stream".into(), req.stream.into());
        body.insert("store".into(), self.store.into());
        if self.encrypted_reasoning && !self.store {
            body.insert("include".into(), json!(["reasoning.encrypted_content"]));
        }
        if let Some(n) = req.max_tokens {
            body.insert("max_output_tokens".into(), n.into());
        }
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), super::decimal(t));
        }
        if let Some(p) = req.top_p {
            body.insert("top_p".into(), super::decimal(p));
        }
        if !req.tools.is_empty() {
            let tools = req
                .tools
                .iter()
                .map(|t| {
                    let mut f = Map::new();
                    f.insert("type".into(), "function".into());
                    f.insert("name".into(), t.name.clone().into());
                    if let Some(d) = &t.description {
                        f.insert("description".into(), d.clone().into());
                    }
                    f.insert("parameters".into(), t.parameters.clone());
                    f.insert("strict".into(), false.into());
                    Value::Object(f)
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(choice) = &req.tool_choice {
            let v = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(name) => json!({"type": "function", "name": name}),
            };
            body.insert("tool_choice".into(), v);
        }
        match &req.response_format {
            None => {}
            Some(ResponseFormat::Json) => {
                body.insert("text".into(), json!({"format": {"type": "json_object"}}));
            }
            Some(ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            }) => {
                body.insert(
                    "text".into(),
                    json!({"format": {"type": "json_schema", "name": name, "schema": schema,
                                      "strict": strict}}),
                );
            }
        }
        if let Some(r) = &req.reasoning {
            if r.budget_tokens.is_some() {
                return Err(Error::config(format!(
                    "{NAME}: takes a reasoning effort, not a token budget"
                )));
            }
            let mut reasoning = Map::new();
            if let Some(effort) = r.effort {
                reasoning.insert(
                    "effort".into(),
                    super::openai::openai_effort(NAME, effort)?.into(),
                );
            }
            if r.summary {
                reasoning.insert("summary".into(), "auto".into());
            }
            if !reasoning.is_empty() {
                body.insert("reasoning".into(), Value::Object(reasoning));
            }
        }
        if let Some(key) = &req.prompt_cache_key {
            body.insert("prompt_cache_key".into(), key.clone().into());
        }
        if let Some(id) = &req.previous_response_id {
            body.insert("previous_response_id".into(), id.clone().into());
        }
        Ok(body)
    }

    fn api_key_header(&self, key: &HeaderValue) -> (HeaderName, HeaderValue) {
        azure::key_header(self.azure, key)
    }

    fn decoder(&self) -> ResponsesDecoder {
        ResponsesDecoder::default()
    }
}

/// The system messages' text, joined by blank lines.
fn instructions(req: &ChatRequest) -> String {
    let mut out = String::new();
    for m in req.messages.iter().filter(|m| m.role == Role::System) {
        for p in &m.content {
            if let ContentPart::Text(t) = p {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(t);
            }
        }
    }
    out
}

impl ResponsesWire {
    /// The conversation as `input` items, in order.
    fn input(&self, req: &ChatRequest) -> Vec<Value> {
        let mut out = Vec::with_capacity(req.messages.len());
        for m in req.messages.iter() {
            match m.role {
                Role::System => {}
                Role::User => {
                    let mut parts = Vec::new();
                    for p in &m.content {
                        match p {
                            ContentPart::Text(t) => {
                                parts.push(json!({"type": "input_text", "text": t}));
                            }
                            ContentPart::Image(img) => {
                                let url = super::openai::image_url(img);
                                parts.push(json!({"type": "input_image", "image_url": url}));
                            }
                            ContentPart::ToolResult {
                                tool_call_id,
                                content,
                                ..
                            } => {
                                flush_message(&mut out, "user", &mut parts);
                                out.push(json!({
                                    "type": "function_call_output",
                                    "call_id": tool_call_id,
                                    "output": content,
                                }));
                            }
                            _ => {}
                        }
                    }
                    flush_message(&mut out, "user", &mut parts);
                }
                Role::Assistant => {
                    let mut parts = Vec::new();
                    for p in &m.content {
                        match p {
                            ContentPart::Text(t) if !t.is_empty() => {
                                parts.push(json!({"type": "output_text", "text": t}));
                            }
                            ContentPart::RedactedThinking { data }
                                if data.starts_with(REASONING_ID_PREFIX) =>
                            {
                                let (id, encrypted) = match data.split_once(':') {
                                    Some((id, e)) => (id, Some(e)),
                                    None => (data.as_str(), None),
                                };
                                // Not stored, an item the provider cannot
                                // decrypt is one it cannot find: a 404.
                                if encrypted.is_none() && !self.store {
                                    continue;
                                }
                                flush_message(&mut out, "assistant", &mut parts);
                                let mut item =
                                    json!({"type": "reasoning", "id": id, "summary": []});
                                if let Some(e) = encrypted {
                                    item["encrypted_content"] = e.into();
                                }
                                out.push(item);
                            }
                            ContentPart::ToolUse {
                                id,
                                name,
                                arguments,
                            } => {
                                flush_message(&mut out, "assistant", &mut parts);
                                out.push(json!({
                                    "type": "function_call",
                                    "call_id": id,
                                    "name": name,
                                    "arguments": arguments.to_string(),
                                }));
                            }
                            _ => {}
                        }
                    }
                    flush_message(&mut out, "assistant", &mut parts);
                }
            }
        }
        out
    }
}

/// Ends a message being gathered, if it has parts.
fn flush_message(out: &mut Vec<Value>, role: &str, parts: &mut Vec<Value>) {
    if !parts.is_empty() {
        out.push(json!({"type": "message", "role": role, "content": std::mem::take(parts)}));
    }
}

/// The fields of a stream event this decoder reads; the rest is skipped.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(default)]
    summary_index: Option<u64>,
    #[serde(default)]
    content_index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    item: Option<Item<'a>>,
    #[serde(borrow, default)]
    response: Option<Ending<'a>>,
}

/// A response object as the `response.*` lifecycle events carry it: its
/// output (which the stream's events gave already) is not read.
#[derive(Deserialize)]
struct Ending<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(default)]
    error: Option<Value>,
}

/// The whole body of a non-streaming answer: the same, with its output.
#[derive(Deserialize)]
struct Whole<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    output: Option<Vec<Item<'a>>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(default)]
    error: Option<Value>,
}

impl<'a> Whole<'a> {
    fn split(self) -> (Vec<Item<'a>>, Ending<'a>) {
        let ending = Ending {
            id: self.id,
            model: self.model,
            status: self.status,
            usage: self.usage,
            incomplete_details: self.incomplete_details,
            error: self.error,
        };
        (self.output.unwrap_or_default(), ending)
    }
}

#[derive(Deserialize)]
struct IncompleteDetails<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// An output item.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    /// A function call's id, which its output names.
    #[serde(borrow, default)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    encrypted_content: Option<Cow<'a, str>>,
    /// A message's parts, or a reasoning item's raw text (`null` is none).
    #[serde(borrow, default)]
    content: Option<Vec<Part<'a>>>,
    #[serde(borrow, default)]
    summary: Option<Vec<Part<'a>>>,
}

/// A part of a message (`output_text`, `refusal`) or of a reasoning item
/// (`summary_text`, `reasoning_text`).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_input_tokens: u.input_tokens_details.and_then(|d| d.cached_tokens),
            cache_creation_input_tokens: None,
            reasoning_tokens: u.output_tokens_details.and_then(|d| d.reasoning_tokens),
        }
    }
}

/// Decodes one Responses answer.
#[derive(Debug, Default)]
pub(crate) struct ResponsesDecoder {
    /// The output indices of the function calls started so far: a call's
    /// position among them is its tool call index.
    tools: DenseIndex,
    /// Per tool call (by position): whether argument deltas came, so that
    /// `.done` does not repeat them.
    tool_deltas: Vec<bool>,
    /// The output index of the message whose text or refusal deltas came
    /// last, so that its `.done` events do not repeat them and a message
    /// sent whole (no deltas) is not lost.
    delivered: Option<u64>,
    /// The last reasoning part seen, as (output index, part kind, part
    /// index): a new one is set off from the one before by a blank line.
    reasoning_part: Option<(u64, bool, u64)>,
    /// Whether any function call was part of the answer.
    called: bool,
}

impl ResponsesDecoder {
    fn stream_event(&mut self, name: &str, data: &str, out: &mut Decoded) {
        let Some(ev) = out.json::<WireEvent<'_>>(data, name) else {
            return;
        };
        // The name is in the data too; a server that leaves out `event:`
        // lines still decodes.
        let kind = if name.is_empty() || name == "message" {
            ev.kind.as_deref().unwrap_or("")
        } else {
            name
        };
        let output = ev.output_index.unwrap_or(0);
        match kind {
            "response.created" | "response.in_progress" => {
                if let Some(r) = ev.response {
                    out.start(r.id.map(Cow::into_owned), r.model.map(Cow::into_owned));
                }
            }
            "response.output_item.added" => {
                out.start(None, None);
                if let Some(item) = ev.item
                    && item.kind.as_deref() == Some("function_call")
                {
                    // A failure is in `out`: nothing is decoded after it.
                    let _ = self.tool_start(output, &item, out);
                }
            }
            "response.output_text.delta" => {
                self.delivered = Some(output);
                push_text(out, ev.delta, |text| StreamEvent::TextDelta { text });
            }
            "response.refusal.delta" => {
                self.delivered = Some(output);
                push_text(out, ev.delta, |text| StreamEvent::RefusalDelta { text });
            }
            // Deltas came, or the whole message comes at its item's end.
            "response.output_text.done" | "response.refusal.done" => {}
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                let summary = kind == "response.reasoning_summary_text.delta";
                let index = if summary {
                    ev.summary_index
                } else {
                    ev.content_index
                };
                let part = (output, summary, index.unwrap_or(0));
                if self.reasoning_part.is_some_and(|p| p != part) {
                    out.push(StreamEvent::ThinkingDelta {
                        text: "\n\n".into(),
                    });
                }
                self.reasoning_part = Some(part);
                push_text(out, ev.delta, |text| StreamEvent::ThinkingDelta { text });
            }
            "response.function_call_arguments.delta" => {
                if let Some(index) = self.tools.get(output) {
                    if let Some(seen) = self.tool_deltas.get_mut(index) {
                        *seen = true;
                    }
                    push_text(out, ev.delta, |arguments| StreamEvent::ToolCallDelta {
                        index,
                        arguments,
                    });
                }
            }
            "response.function_call_arguments.done" => {
                if let Some(index) = self.tools.get(output)
                    && !self.tool_deltas.get(index).copied().unwrap_or(true)
                {
                    push_text(out, ev.arguments, |arguments| StreamEvent::ToolCallDelta {
                        index,
                        arguments,
                    });
                }
            }
            "response.output_item.done" => {
                if let Some(item) = ev.item {
                    match item.kind.as_deref() {
                        Some("reasoning") => reasoning_item(&item, out),
                        // A message no deltas gave (a server that sends
                        // items whole): its parts now.
                        Some("message") if self.delivered != Some(output) => {
                            message_parts(&item, out);
                        }
                        // A call the stream never opened (a server that
                        // sends items whole): opened and filled now.
                        Some("function_call") if self.tools.get(output).is_none() => {
                            if self.tool_start(output, &item, out).is_err() {
                                return;
                            }
                            if let Some(index) = self.tools.get(output) {
                                push_text(out, item.arguments, |arguments| {
                                    StreamEvent::ToolCallDelta { index, arguments }
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
            "response.completed" | "response.incomplete" => {
                if let Some(r) = ev.response {
                    self.finish_response(r, out);
                }
            }
            "response.failed" => {
                let error = ev
                    .response
                    .and_then(|r| r.error)
                    .unwrap_or_else(|| json!({"message": "response.failed"}));
                out.fail(Error::from_event(
                    out.provider(),
                    &json!({ "error": error }),
                ));
            }
            "error" => error_event(data, out),
            // `response.content_part.*`, `*.done` whose deltas came, and
            // events this decoder does not know.
            _ => {}
        }
    }

    /// Opens the function call at `output`; `Err` once the answer failed.
    fn tool_start(&mut self, output: u64, item: &Item<'_>, out: &mut Decoded) -> Result<(), ()> {
        let Ok((index, new)) = self.tools.insert(output, super::MAX_PARTS) else {
            out.too_many("tool calls");
            return Err(());
        };
        if new {
            self.called = true;
            self.tool_deltas.push(false);
            out.push(StreamEvent::ToolCallStart {
                index,
                id: item
                    .call_id
                    .as_deref()
                    .or(item.id.as_deref())
                    .map_or_else(|| format!("call_{index}"), str::to_owned),
                name: item.name.as_deref().unwrap_or_default().to_owned(),
            });
        }
        Ok(())
    }

    /// The end of an answer: its usage and why it stopped — or its failure.
    fn finish_response(&mut self, r: Ending<'_>, out: &mut Decoded) {
        out.start(r.id.map(Cow::into_owned), r.model.map(Cow::into_owned));
        let status = r.status.as_deref();
        let failed = r
            .error
            .as_ref()
            .filter(|e| !e.is_null())
            .cloned()
            .or_else(|| {
                // Not an ending this client asked for: background responses
                // (`queued`, `in_progress`) and cancelled ones have no answer.
                (!matches!(status, None | Some("completed" | "incomplete"))).then(|| {
                json!({"code": status, "message": format!("response {}", status.unwrap_or(""))})
            })
            });
        if let Some(error) = failed {
            out.fail(Error::from_event(
                out.provider(),
                &json!({ "error": error }),
            ));
            return;
        }
        if let Some(u) = r.usage {
            out.push(StreamEvent::Usage(u.into()));
        }
        let reason = match status {
            Some("incomplete") => match r.incomplete_details.and_then(|d| d.reason).as_deref() {
                Some("max_output_tokens") => StopReason::MaxTokens,
                Some("content_filter") => StopReason::ContentFilter,
                Some(other) => StopReason::Other(other.to_owned()),
                None => StopReason::Other("incomplete".into()),
            },
            _ if self.called => StopReason::ToolUse,
            _ => StopReason::EndTurn,
        };
        out.stop_reason(reason);
        out.end();
    }

    /// A whole response object: its items in order, then its end.
    fn whole(&mut self, r: Whole<'_>, out: &mut Decoded) {
        out.start(
            r.id.as_deref().map(str::to_owned),
            r.model.as_deref().map(str::to_owned),
        );
        let (items, ending) = r.split();
        for (output, item) in items.into_iter().enumerate() {
            match item.kind.as_deref() {
                Some("reasoning") => {
                    let parts = item
                        .summary
                        .iter()
                        .flatten()
                        .chain(item.content.iter().flatten());
                    for (i, p) in parts.enumerate() {
                        if i > 0 {
                            out.push(StreamEvent::ThinkingDelta {
                                text: "\n\n".into(),
                            });
                        }
                        push_text(out, p.text.clone(), |text| StreamEvent::ThinkingDelta {
                            text,
                        });
                    }
                    reasoning_item(&item, out);
                }
                Some("message") => message_parts(&item, out),
                Some("function_call") => {
                    if self.tool_start(output as u64, &item, out).is_err() {
                        return;
                    }
                    if let Some(index) = self.tools.get(output as u64) {
                        push_text(out, item.arguments.clone(), |arguments| {
                            StreamEvent::ToolCallDelta { index, arguments }
                        });
                    }
                }
                _ => {}
            }
        }
        self.finish_response(ending, out);
    }
}

/// A message item's text and refusal parts.
fn message_parts(item: &Item<'_>, out: &mut Decoded) {
    for p in item.content.iter().flatten() {
        match p.kind.as_deref() {
            Some("refusal") => {
                push_text(out, p.refusal.clone(), |text| StreamEvent::RefusalDelta {
                    text,
                });
            }
            _ => push_text(out, p.text.clone(), |text| StreamEvent::TextDelta { text }),
        }
    }
}

/// A finished reasoning item: its id and encrypted content, to be sent back.
fn reasoning_item(item: &Item<'_>, out: &mut Decoded) {
    let Some(id) = item.id.as_deref().filter(|id| !id.is_empty()) else {
        return;
    };
    let data = match item.encrypted_content.as_deref() {
        Some(e) if !e.is_empty() => format!("{id}:{e}"),
        _ => id.to_owned(),
    };
    out.push(StreamEvent::RedactedThinking { data });
}

/// An `error` event: `{"type": "error", "code", "message", "param"}`, the
/// error's fields at the top level (some servers nest them in `error`).
fn error_event(data: &str, out: &mut Decoded) {
    match serde_json::from_str::<Value>(data) {
        Ok(v) if v.get("error").is_some_and(Value::is_object) => {
            out.fail(Error::from_event(out.provider(), &v));
        }
        Ok(v) => {
            let mut error = Map::new();
            for field in ["code", "message", "param"] {
                if let Some(x) = v.get(field) {
                    error.insert(field.into(), x.clone());
                }
            }
            out.fail(Error::from_event(
                out.provider(),
                &json!({ "error": Value::Object(error) }),
            ));
        }
        Err(_) => out.error_event(data, "error"),
    }
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

impl Decode for ResponsesDecoder {
    fn event(&mut self, event: Event<'_>, out: &mut Decoded) {
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        self.stream_event(event.event, data, out);
    }

    fn body(&mut self, body: &str, out: &mut Decoded) {
        // An error object in a 200 body is an error like any other.
        let Some(r) = out.json::<Whole<'_>>(body, "body") else {
            return;
        };
        self.whole(r, out);
    }
}
