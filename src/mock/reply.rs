use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

/// One scripted answer of the [`MockServer`](super::MockServer): what it
/// answers one request (one attempt) with.
///
/// Generated replies ([`text`](Reply::text), [`tool_call`](Reply::tool_call),
/// [`api_error`](Reply::api_error)) are rendered in the wire format of the
/// request that receives them — OpenAI Chat Completions for a path ending in
/// `/v1/chat/completions`, Anthropic Messages for one ending in `/messages`,
/// Gemini for `…:generateContent` and `…:streamGenerateContent` — and
/// streamed or not as its `stream` field (Gemini: its path) says. Raw replies
/// ([`sse`](Reply::sse), [`body`](Reply::body)) are sent as they are.
///
/// Faults are placed by a count of *deltas* for generated streams (the events
/// before the first delta, `message_start` and the like, are always sent;
/// after the last delta, a fault falls before the events that end the
/// answer) and of *events* for raw SSE replies. A non-streaming body cut by
/// a fault is cut in its middle.
///
/// ```
/// use llm_tower::mock::Reply;
/// use std::time::Duration;
///
/// // Three deltas, then the connection is reset.
/// let r = Reply::text(["a", "b", "c", "d"]).reset_after(3);
/// // A 429 asking for a 2 s wait.
/// let r = Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "2");
/// // A slow stream.
/// let r = Reply::text(["slow", "ly"]).delay(Duration::from_millis(50));
/// # let _ = r;
/// ```
#[derive(Debug, Clone)]
pub struct Reply {
    pub(crate) kind: Kind,
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) fault: Option<(usize, Fault)>,
    pub(crate) delay: Duration,
    pub(crate) chunk_size: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Text(Vec<String>),
    ToolCall {
        /// Text deltas said before the call.
        text: Vec<String>,
        id: String,
        name: String,
        arguments: Vec<String>,
    },
    ApiError {
        error_type: String,
        message: String,
    },
    Sse(Vec<String>),
    Body {
        content_type: String,
        body: Bytes,
    },
    ResetBeforeHeaders,
}

#[derive(Debug, Clone)]
pub(crate) enum Fault {
    Reset,
    Stall,
    End,
    ErrorEvent { error_type: String, message: String },
    Malformed,
    InvalidUtf8,
    Oversized(usize),
}

impl Reply {
    fn new(kind: Kind, status: StatusCode) -> Self {
        Reply {
            kind,
            status,
            headers: Vec::new(),
            fault: None,
            delay: Duration::ZERO,
            chunk_size: None,
        }
    }

    /// A successful answer made of these text deltas.
    pub fn text<I, S>(deltas: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::new(
            Kind::Text(deltas.into_iter().map(Into::into).collect()),
            StatusCode::OK,
        )
    }

    /// A successful answer that calls tool `name` (call id `id`; Gemini's
    /// API sends no call ids, nor does the mock to Gemini), its JSON
    /// arguments streamed in these fragments.
    pub fn tool_call<I, S>(id: impl Into<String>, name: impl Into<String>, arguments: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::text_then_tool_call(Vec::<String>::new(), id, name, arguments)
    }

    /// A successful answer that says these text deltas, then calls tool
    /// `name` (call id `id`), its JSON arguments streamed in these
    /// fragments: as models often do ("Let me check the tides.").
    ///
    /// Encoded as each provider does: OpenAI `content` beside `tool_calls`
    /// in one message (content deltas, then tool call deltas, when
    /// streamed); Anthropic a `text` block, then a `tool_use` block; Gemini
    /// a `text` part, then a `functionCall` part (a chunk per text delta,
    /// then one with the call, when streamed). Faults count the text deltas
    /// first, then the argument fragments. With no text deltas, this is
    /// [`tool_call`](Reply::tool_call).
    ///
    /// ```
    /// use llm_tower::mock::Reply;
    ///
    /// let r = Reply::text_then_tool_call(
    ///     ["Let me check", " the tides."],
    ///     "call_1",
    ///     "tide",
    ///     [r#"{"port":"#, r#""Brest"}"#],
    /// );
    /// # let _ = r;
    /// ```
    pub fn text_then_tool_call<T, U, I, S>(
        text: T,
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: I,
    ) -> Self
    where
        T: IntoIterator<Item = U>,
        U: Into<String>,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::new(
            Kind::ToolCall {
                text: text.into_iter().map(Into::into).collect(),
                id: id.into(),
                name: name.into(),
                arguments: arguments.into_iter().map(Into::into).collect(),
            },
            StatusCode::OK,
        )
    }

    /// An error answer with `status` and a body in the provider's error shape
    /// (`error_type` is OpenAI's `code` and `type`, Anthropic's `error.type`;
    /// Gemini gets its `status` name for it, `RESOURCE_EXHAUSTED` for
    /// `rate_limit_error` and so on, or `error_type` itself).
    ///
    /// # Panics
    ///
    /// If `status` is not a valid HTTP status (100–999): a bug in the test.
    pub fn api_error(
        status: u16,
        error_type: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Reply::new(
            Kind::ApiError {
                error_type: error_type.into(),
                message: message.into(),
            },
            status_code(status),
        )
    }

    /// A 200 `text/event-stream` body made of these events, each written as
    /// given (end each with a blank line).
    pub fn sse<I, S>(events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::new(
            Kind::Sse(events.into_iter().map(Into::into).collect()),
            StatusCode::OK,
        )
    }

    /// Any body, as it is.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid HTTP status (100–999): a bug in the test.
    pub fn body(status: u16, content_type: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Reply::new(
            Kind::Body {
                content_type: content_type.into(),
                body: body.into(),
            },
            status_code(status),
        )
    }

    /// The connection is reset before any response head.
    pub fn reset() -> Self {
        Reply::new(Kind::ResetBeforeHeaders, StatusCode::OK)
    }

    /// Adds a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Resets the connection after `n` deltas (or events).
    pub fn reset_after(mut self, n: usize) -> Self {
        self.fault = Some((n, Fault::Reset));
        self
    }

    /// Stops sending, with the connection left open, after `n` deltas (or
    /// events).
    pub fn stall_after(mut self, n: usize) -> Self {
        self.fault = Some((n, Fault::Stall));
        self
    }

    /// Ends the body cleanly after `n` deltas (or events): a stream without
    /// its terminator.
    pub fn truncate_after(mut self, n: usize) -> Self {
        self.fault = Some((n, Fault::End));
        self
    }

    /// Sends a provider error event after `n` deltas (or events) and ends
    /// the stream: Anthropic `event: error`, an OpenAI chunk carrying `error`.
    pub fn error_event_after(
        mut self,
        n: usize,
        error_type: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        self.fault = Some((
            n,
            Fault::ErrorEvent {
                error_type: error_type.into(),
                message: message.into(),
            },
        ));
        self
    }

    /// Sends an event whose data is cut-off JSON after `n` deltas (or
    /// events), and ends the stream. A non-streaming body is cut in its
    /// middle.
    pub fn malformed_after(mut self, n: usize) -> Self {
        self.fault = Some((n, Fault::Malformed));
        self
    }

    /// Sends one more text delta after `n` deltas (or events), whose text is
    /// the first two bytes of the three-byte `€` — not UTF-8 — then goes on
    /// as scripted. A non-streaming text answer has that byte pair after its
    /// first `n` deltas' text; other bodies, in their middle.
    pub fn invalid_utf8_after(mut self, n: usize) -> Self {
        self.fault = Some((n, Fault::InvalidUtf8));
        self
    }

    /// Sends one more text delta after `n` deltas (or events), of `bytes`
    /// bytes of text on one line, then goes on as scripted. A non-streaming
    /// body gets `bytes` of trailing whitespace: still JSON, but that large.
    pub fn oversized_after(mut self, n: usize, bytes: usize) -> Self {
        self.fault = Some((n, Fault::Oversized(bytes)));
        self
    }

    /// Waits this long before each event (or body piece).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Writes the body in pieces of at most `n` bytes, each its own write, to
    /// put chunk boundaries anywhere (inside a line, inside a UTF-8
    /// character).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n.max(1));
        self
    }
}

fn status_code(status: u16) -> StatusCode {
    // Documented panic: a test passing an impossible status is a bug in it.
    StatusCode::from_u16(status).expect("an HTTP status between 100 and 999")
}

/// Which wire format a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
    /// A path none of the providers' APIs has: a wire of the caller's own
    /// (see [`MockServer::respond_with`](super::MockServer::respond_with)).
    /// Replies that are bytes as given ([`Reply::sse`], [`Reply::body`],
    /// [`Reply::reset`]) play as usual; errors take OpenAI's shape; text
    /// made up for a dialect is a 404.
    Other,
}

/// What the request asked for, as far as rendering cares.
#[derive(Debug)]
pub(crate) struct Asked {
    pub(crate) dialect: Dialect,
    pub(crate) stream: bool,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
}

/// What to write, step by step.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    Reset,
    Stall,
}

/// A rendered reply: head and body steps.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Cow<'static, str>,
    pub(crate) steps: Vec<Step>,
}

/// One event of a generated stream; `counted` events are the deltas faults
/// are placed by.
struct Frame {
    text: String,
    counted: bool,
}

impl Reply {
    /// Whether this reply's content is made up in the request's dialect
    /// (text, a tool call) rather than given as bytes.
    pub(crate) fn is_generated(&self) -> bool {
        matches!(self.kind, Kind::Text(_) | Kind::ToolCall { .. })
    }

    pub(crate) fn render(&self, asked: &Asked) -> Option<Rendered> {
        let (content_type, frames, whole): (&'static str, Vec<Frame>, Option<String>) =
            match &self.kind {
                Kind::ResetBeforeHeaders => return None,
                Kind::Text(deltas) => match &self.fault {
                    // A whole body gets the bad bytes in its text too: mark
                    // the place, replaced once rendered.
                    Some((n, Fault::InvalidUtf8)) if !asked.stream => {
                        let mut marked = deltas.clone();
                        marked.insert((*n).min(deltas.len()), MARK.to_owned());
                        generated(asked, &Content::Text(&marked))
                    }
                    _ => generated(asked, &Content::Text(deltas)),
                },
                Kind::ToolCall {
                    text,
                    id,
                    name,
                    arguments,
                } => generated(
                    asked,
                    &Content::Tool {
                        text,
                        id,
                        name,
                        arguments,
                    },
                ),
                Kind::ApiError {
                    error_type,
                    message,
                } => {
                    let body = error_body(asked.dialect, self.status, error_type, message);
                    ("application/json", Vec::new(), Some(body.to_string()))
                }
                Kind::Sse(events) => (
                    "text/event-stream",
                    events
                        .iter()
                        .map(|e| Frame {
                            text: e.clone(),
                            counted: true,
                        })
                        .collect(),
                    None,
                ),
                Kind::Body { content_type, body } => {
                    return Some(Rendered {
                        status: self.status,
                        content_type: Cow::Owned(content_type.clone()),
                        steps: self.whole_body(body.clone()),
                    });
                }
            };
        let steps = match whole {
            Some(body) => self.whole_body(Bytes::from(body)),
            None => self.stream_steps(asked.dialect, frames),
        };
        Some(Rendered {
            status: self.status,
            content_type: Cow::Borrowed(content_type),
            steps,
        })
    }

    fn pieces(&self, body: Bytes) -> Vec<Step> {
        match self.chunk_size {
            Some(n) => (0..body.len())
                .step_by(n)
                .map(|i| Step::Data(body.slice(i..body.len().min(i + n))))
                .collect(),
            None => vec![Step::Data(body)],
        }
    }

    /// A body sent whole; a fault cuts it in the middle.
    fn whole_body(&self, body: Bytes) -> Vec<Step> {
        let Some((_, fault)) = &self.fault else {
            return self.pieces(body);
        };
        let middle = body.len() / 2;
        let mut out = match fault {
            Fault::InvalidUtf8 => {
                let at = memchr::memmem::find(&body, MARK.as_bytes());
                let (at, skip) = at.map_or((middle, 0), |at| (at, MARK.len()));
                let mut bytes = body[..at].to_vec();
                bytes.extend_from_slice(&NOT_UTF8);
                bytes.extend_from_slice(&body[at + skip..]);
                return self.pieces(Bytes::from(bytes));
            }
            Fault::Oversized(n) => {
                let mut bytes = body.to_vec();
                bytes.resize(body.len() + n, b' ');
                return self.pieces(Bytes::from(bytes));
            }
            _ => self.pieces(body.slice(..middle)),
        };
        match fault {
            Fault::Reset => out.push(Step::Reset),
            Fault::Stall => out.push(Step::Stall),
            _ => {}
        }
        out
    }

    fn stream_steps(&self, dialect: Dialect, frames: Vec<Frame>) -> Vec<Step> {
        let mut out = Vec::new();
        let mut counted = 0;
        let push = |out: &mut Vec<Step>, bytes: Bytes| {
            out.extend(self.pieces(bytes));
        };
        let mut fault = self.fault.as_ref();
        // A fault after the last delta falls before the frame that follows
        // it (the finish chunk, `content_block_stop`): the answer is cut
        // with all its output and without its end.
        let total = frames.iter().filter(|f| f.counted).count();
        for frame in frames {
            if let Some((n, f)) = fault
                && counted == *n
                && (frame.counted || counted == total)
            {
                fault = None;
                match f {
                    Fault::Reset => out.push(Step::Reset),
                    Fault::Stall => out.push(Step::Stall),
                    Fault::End => {}
                    Fault::ErrorEvent {
                        error_type,
                        message,
                    } => {
                        let status = gemini_status_code(gemini_status(error_type));
                        let body = error_body(dialect, status, error_type, message);
                        let text = match dialect {
                            Dialect::Anthropic => format!("event: error\ndata: {body}\n\n"),
                            Dialect::OpenAi | Dialect::Gemini | Dialect::Other => {
                                format!("data: {body}\n\n")
                            }
                        };
                        push(&mut out, Bytes::from(text));
                    }
                    Fault::Malformed => {
                        let whole = text_delta(dialect, b"cut");
                        // Cut inside the JSON; keep the blank line that ends
                        // the event.
                        let mut cut = whole[..whole.len() / 2].to_vec();
                        cut.extend_from_slice(b"\n\n");
                        push(&mut out, Bytes::from(cut));
                    }
                    Fault::InvalidUtf8 => {
                        push(&mut out, text_delta(dialect, &NOT_UTF8));
                        counted += usize::from(frame.counted);
                        push(&mut out, Bytes::from(frame.text));
                        continue;
                    }
                    Fault::Oversized(n) => {
                        push(&mut out, text_delta(dialect, &vec![b'x'; *n]));
                        counted += usize::from(frame.counted);
                        push(&mut out, Bytes::from(frame.text));
                        continue;
                    }
                }
                return out;
            }
            counted += usize::from(frame.counted);
            push(&mut out, Bytes::from(frame.text));
        }
        out
    }
}

/// The first two bytes of `€` (E2 82 AC): not UTF-8 on their own.
const NOT_UTF8: [u8; 2] = [0xE2, 0x82];

/// Where in a rendered whole body [`NOT_UTF8`] goes: a noncharacter no
/// scripted text has.
const MARK: &str = "\u{10FFFF}";

/// A text delta event whose text is `text`, as raw bytes (which need not be
/// UTF-8, and are not escaped).
fn text_delta(dialect: Dialect, text: &[u8]) -> Bytes {
    let (before, after): (&[u8], &[u8]) = match dialect {
        Dialect::OpenAi => (
            b"data: {\"id\":\"msg_mock_0001\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
            b"\"},\"finish_reason\":null}]}\n\n",
        ),
        Dialect::Anthropic => (
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"",
            b"\"}}\n\n",
        ),
        Dialect::Gemini => (
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"",
            b"\"}],\"role\":\"model\"},\"index\":0}]}\n\n",
        ),
        // The text itself, as the data of an event.
        Dialect::Other => (b"data: ", b"\n\n"),
    };
    let mut out = Vec::with_capacity(before.len() + text.len() + after.len());
    out.extend_from_slice(before);
    out.extend_from_slice(text);
    out.extend_from_slice(after);
    Bytes::from(out)
}

enum Content<'a> {
    Text(&'a [String]),
    Tool {
        /// Text deltas before the call.
        text: &'a [String],
        id: &'a str,
        name: &'a str,
        arguments: &'a [String],
    },
}

/// Gemini's status name for an error type given in OpenAI's or Anthropic's
/// words; a name in Gemini's own words is kept.
fn gemini_status(error_type: &str) -> &str {
    match error_type {
        "rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota" => "RESOURCE_EXHAUSTED",
        "overloaded_error" => "UNAVAILABLE",
        "authentication_error" | "invalid_api_key" => "UNAUTHENTICATED",
        "permission_error" => "PERMISSION_DENIED",
        "server_error" | "api_error" => "INTERNAL",
        "invalid_request_error" => "INVALID_ARGUMENT",
        "not_found_error" => "NOT_FOUND",
        other => other,
    }
}

/// The HTTP status Gemini pairs with a status name.
fn gemini_status_code(status: &str) -> StatusCode {
    match status {
        "RESOURCE_EXHAUSTED" => StatusCode::TOO_MANY_REQUESTS,
        "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "PERMISSION_DENIED" => StatusCode::FORBIDDEN,
        "INVALID_ARGUMENT" => StatusCode::BAD_REQUEST,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_body(dialect: Dialect, status: StatusCode, error_type: &str, message: &str) -> Value {
    match dialect {
        Dialect::Gemini => json!({"error": {
            "code": status.as_u16(), "message": message, "status": gemini_status(error_type),
        }}),
        Dialect::OpenAi | Dialect::Other => {
            json!({"error": {"message": message, "type": error_type, "param": null, "code": error_type}})
        }
        Dialect::Anthropic => json!({
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": "req_mock",
        }),
    }
}

const MESSAGE_ID: &str = "msg_mock_0001";

/// Renders generated content in the request's dialect: SSE frames when it
/// streams, one JSON body when it does not.
fn generated(asked: &Asked, content: &Content<'_>) -> (&'static str, Vec<Frame>, Option<String>) {
    let output_tokens = match content {
        Content::Text(d) => d.len(),
        Content::Tool {
            text, arguments, ..
        } => text.len() + arguments.len() + 1,
    } as u64;
    let input_tokens = 12u64;
    match (asked.dialect, asked.stream) {
        (Dialect::OpenAi, true) => (
            "text/event-stream",
            openai_frames(asked, content, input_tokens, output_tokens),
            None,
        ),
        (Dialect::Anthropic, true) => (
            "text/event-stream",
            anthropic_frames(asked, content, input_tokens, output_tokens),
            None,
        ),
        (Dialect::Gemini, true) => (
            "text/event-stream",
            gemini_frames(asked, content, input_tokens),
            None,
        ),
        (Dialect::Gemini, false) => {
            let parts = match content {
                Content::Text(d) => vec![json!({"text": d.concat()})],
                Content::Tool {
                    text,
                    id: _,
                    name,
                    arguments,
                } => {
                    // Gemini's calls carry no id.
                    let call = json!({"functionCall": {
                        "name": name, "args": tool_args(arguments),
                    }});
                    if text.is_empty() {
                        vec![call]
                    } else {
                        vec![json!({"text": text.concat()}), call]
                    }
                }
            };
            let body = gemini_response_parts(
                asked,
                parts,
                Some("STOP"),
                gemini_usage(input_tokens, output_tokens),
            );
            ("application/json", Vec::new(), Some(body.to_string()))
        }
        (Dialect::OpenAi, false) => {
            let mut message = json!({"role": "assistant", "content": null, "refusal": null});
            let finish = match content {
                Content::Text(d) => {
                    message["content"] = d.concat().into();
                    "stop"
                }
                Content::Tool {
                    text,
                    id,
                    name,
                    arguments,
                } => {
                    if !text.is_empty() {
                        message["content"] = text.concat().into();
                    }
                    message["tool_calls"] = json!([{
                        "id": id, "type": "function",
                        "function": {"name": name, "arguments": arguments.concat()},
                    }]);
                    "tool_calls"
                }
            };
            let body = json!({
                "id": MESSAGE_ID, "object": "chat.completion", "created": 1_700_000_000, "model": asked.model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                          "total_tokens": input_tokens + output_tokens},
            });
            ("application/json", Vec::new(), Some(body.to_string()))
        }
        // Not played: the server answers 404 for made-up content on a path
        // no provider has (see `Dialect::Other`); OpenAI's shape otherwise.
        (Dialect::Other, true) => (
            "text/event-stream",
            openai_frames(asked, content, input_tokens, output_tokens),
            None,
        ),
        (Dialect::Other, false) => ("application/json", Vec::new(), Some("{}".to_owned())),
        (Dialect::Anthropic, false) => {
            let (blocks, stop) = match content {
                Content::Text(d) => (
                    vec![json!({"type": "text", "text": d.concat()})],
                    "end_turn",
                ),
                Content::Tool {
                    text,
                    id,
                    name,
                    arguments,
                } => {
                    let call = json!({"type": "tool_use", "id": id, "name": name, "input": tool_args(arguments)});
                    let blocks = if text.is_empty() {
                        vec![call]
                    } else {
                        vec![json!({"type": "text", "text": text.concat()}), call]
                    };
                    (blocks, "tool_use")
                }
            };
            let body = json!({
                "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": asked.model,
                "content": blocks, "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": output_tokens},
            });
            ("application/json", Vec::new(), Some(body.to_string()))
        }
    }
}

/// A tool call's streamed argument fragments, as one JSON value.
fn tool_args(arguments: &[String]) -> Value {
    serde_json::from_str(&arguments.concat()).unwrap_or_else(|_| json!({}))
}

fn gemini_usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({"promptTokenCount": input_tokens, "candidatesTokenCount": output_tokens,
           "totalTokenCount": input_tokens + output_tokens})
}

/// One `GenerateContentResponse` with one part.
fn gemini_response(asked: &Asked, part: Value, finish: Option<&str>, usage: Value) -> Value {
    gemini_response_parts(asked, vec![part], finish, usage)
}

/// One `GenerateContentResponse` with these parts.
fn gemini_response_parts(
    asked: &Asked,
    parts: Vec<Value>,
    finish: Option<&str>,
    usage: Value,
) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(finish) = finish {
        candidate["finishReason"] = finish.into();
    }
    json!({"candidates": [candidate], "usageMetadata": usage,
           "modelVersion": asked.model, "responseId": MESSAGE_ID})
}

/// Gemini streams: one chunk per delta (a function call comes whole, in one
/// chunk), then one with the finish reason; no terminator after it.
fn gemini_frames(asked: &Asked, content: &Content<'_>, input_tokens: u64) -> Vec<Frame> {
    let chunk = |v: Value, counted: bool| Frame {
        text: format!("data: {v}\n\n"),
        counted,
    };
    let mut frames = Vec::new();
    let mut output = 0;
    let (deltas, tool) = match content {
        Content::Text(deltas) => (*deltas, None),
        Content::Tool {
            text,
            id: _,
            name,
            arguments,
        } => (*text, Some((name, arguments))),
    };
    for d in deltas {
        output += 1;
        let usage = gemini_usage(input_tokens, output);
        frames.push(chunk(
            gemini_response(asked, json!({"text": d}), None, usage),
            true,
        ));
    }
    if let Some((name, arguments)) = tool {
        output += arguments.len() as u64 + 1;
        let part = json!({"functionCall": {"name": name, "args": tool_args(arguments)}});
        let usage = gemini_usage(input_tokens, output);
        frames.push(chunk(gemini_response(asked, part, None, usage), true));
    }
    let usage = gemini_usage(input_tokens, output);
    frames.push(chunk(
        gemini_response(asked, json!({"text": ""}), Some("STOP"), usage),
        false,
    ));
    frames
}

fn openai_frames(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Vec<Frame> {
    let chunk = |delta: Value, finish: Value| {
        let v = json!({
            "id": MESSAGE_ID, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": asked.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null,
        });
        format!("data: {v}\n\n")
    };
    let mut frames = Vec::new();
    let finish = match content {
        Content::Text(deltas) => {
            frames.push(Frame {
                text: chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                counted: false,
            });
            for d in deltas.iter() {
                frames.push(Frame {
                    text: chunk(json!({"content": d}), Value::Null),
                    counted: true,
                });
            }
            "stop"
        }
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => {
            let call = json!([{
                "index": 0, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""},
            }]);
            if text.is_empty() {
                frames.push(Frame {
                    text: chunk(
                        json!({"role": "assistant", "content": null, "tool_calls": call}),
                        Value::Null,
                    ),
                    counted: false,
                });
            } else {
                // Text first, then the call opens in a chunk of its own.
                frames.push(Frame {
                    text: chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                    counted: false,
                });
                for d in text.iter() {
                    frames.push(Frame {
                        text: chunk(json!({"content": d}), Value::Null),
                        counted: true,
                    });
                }
                frames.push(Frame {
                    text: chunk(json!({"tool_calls": call}), Value::Null),
                    counted: false,
                });
            }
            for a in arguments.iter() {
                frames.push(Frame {
                    text: chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
                        Value::Null,
                    ),
                    counted: true,
                });
            }
            "tool_calls"
        }
    };
    frames.push(Frame {
        text: chunk(json!({}), finish.into()),
        counted: false,
    });
    if asked.include_usage {
        let v = json!({
            "id": MESSAGE_ID, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": asked.model, "choices": [],
            "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens},
        });
        frames.push(Frame {
            text: format!("data: {v}\n\n"),
            counted: false,
        });
    }
    frames.push(Frame {
        text: "data: [DONE]\n\n".into(),
        counted: false,
    });
    frames
}

fn anthropic_frames(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Vec<Frame> {
    let event = |name: &str, data: Value| Frame {
        text: format!("event: {name}\ndata: {data}\n\n"),
        counted: false,
    };
    let mut frames = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": asked.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1},
            }}),
        ),
        // The API sends pings to keep the connection alive; one comes early.
        event("ping", json!({"type": "ping"})),
    ];
    let mut last_block = 0;
    let stop = match content {
        Content::Text(deltas) => {
            frames.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for d in deltas.iter() {
                let mut f = event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
                );
                f.counted = true;
                frames.push(f);
            }
            "end_turn"
        }
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => {
            // The text, if any, is block 0 and the call the next.
            let mut index = 0;
            if !text.is_empty() {
                frames.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                for d in text.iter() {
                    let mut f = event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
                    );
                    f.counted = true;
                    frames.push(f);
                }
                frames.push(event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                index = 1;
            }
            frames.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            for a in arguments.iter() {
                let mut f = event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": a}}),
                );
                f.counted = true;
                frames.push(f);
            }
            last_block = index;
            "tool_use"
        }
    };
    frames.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": last_block}),
    ));
    frames.push(event(
        "message_delta",
        // The usage is cumulative, input included, as the API now sends it.
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0, "output_tokens": output_tokens}}),
    ));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    frames
}
