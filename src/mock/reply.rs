//! The replies a test scripts: what the mock server answers one request
//! with, and the fault it plays.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

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
