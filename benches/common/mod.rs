//! What the benchmarks share: deterministic transcripts and an in-process
//! transport. Not a benchmark target itself (cargo only builds
//! `benches/*.rs`).

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;
use llm_tower::transport::RequestBody;

pub const EVENTS: usize = 10_000;

/// A small deterministic generator (xorshift), so every run sees the same input.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
}

const WORDS: [&str; 8] = [
    " tide", " moon", " harbour", " été", " Brest", " 06:12", " wave", " 🌊",
];

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.range(0, WORDS.len() - 1)])
        .collect()
}

/// The text deltas of the OpenAI transcripts: 1–8 words each.
fn openai_texts() -> Vec<String> {
    let mut rng = Rng(0x5eed);
    (0..EVENTS)
        .map(|_| {
            let n = rng.range(1, 8);
            words(&mut rng, n)
        })
        .collect()
}

/// OpenAI chunks of 150–300 bytes, usage null on each, ending in `[DONE]`.
pub fn openai_transcript() -> Vec<u8> {
    let mut out = String::new();
    for (i, text) in openai_texts().into_iter().enumerate() {
        let chunk = serde_json::json!({
            "id": "chatcmpl-BENCH0001", "object": "chat.completion.chunk", "created": 1763000000,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null,
                         "finish_reason": if i + 1 == EVENTS { serde_json::json!("stop") } else { serde_json::Value::Null }}],
            "usage": null,
        });
        out.push_str(&format!("data: {chunk}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// The same text as [`openai_transcript`] from OpenAI's Responses API: the
/// response's opening events, a `response.output_text.delta` per piece (with
/// the `obfuscation` padding OpenAI adds to each), and its closing events.
pub fn responses_transcript() -> Vec<u8> {
    use serde_json::json;

    let mut rng = Rng(0x0bf5);
    let mut seq = 0;
    let mut out = String::new();
    let mut event = |out: &mut String, kind: &str, mut data: serde_json::Value| {
        data["type"] = kind.into();
        data["sequence_number"] = seq.into();
        seq += 1;
        out.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    };
    let response = |status: &str| {
        json!({"id": "resp_bench", "object": "response", "created_at": 1763000000,
               "status": status, "model": "gpt-5-mini-2025-08-07", "output": [], "usage": null})
    };
    let ids = json!({"item_id": "msg_bench", "output_index": 0, "content_index": 0});
    event(
        &mut out,
        "response.created",
        json!({"response": response("in_progress")}),
    );
    event(
        &mut out,
        "response.in_progress",
        json!({"response": response("in_progress")}),
    );
    event(
        &mut out,
        "response.output_item.added",
        json!({"output_index": 0, "item": {"id": "msg_bench", "type": "message",
               "status": "in_progress", "role": "assistant", "content": []}}),
    );
    let texts = openai_texts();
    for text in &texts {
        let pad: String = (0..rng.range(2, 14))
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        let mut data = ids.clone();
        data["delta"] = text.as_str().into();
        data["logprobs"] = json!([]);
        data["obfuscation"] = pad.into();
        event(&mut out, "response.output_text.delta", data);
    }
    let mut done = ids.clone();
    done["text"] = texts.concat().into();
    event(&mut out, "response.output_text.done", done);
    let mut completed = response("completed");
    completed["usage"] = json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 9000, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 9010});
    event(
        &mut out,
        "response.completed",
        json!({"response": completed}),
    );
    out.into_bytes()
}

/// Anthropic `content_block_delta` events of the same size, with the
/// surrounding protocol events.
pub fn anthropic_transcript() -> Vec<u8> {
    let mut rng = Rng(0xfeed);
    let mut out = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for _ in 0..EVENTS - 4 {
        let n = rng.range(4, 14);
        let text = words(&mut rng, n);
        let delta = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
        out.push_str(&format!("event: content_block_delta\ndata: {delta}\n\n"));
    }
    out.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9000}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    out.into_bytes()
}

pub fn fixed_chunks(body: &[u8], size: usize) -> Vec<Bytes> {
    body.chunks(size).map(Bytes::copy_from_slice).collect()
}

pub fn random_chunks(body: &[u8]) -> Vec<Bytes> {
    let mut rng = Rng(0xc0ffee);
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let n = rng.range(1, 4096).min(body.len() - i);
        out.push(Bytes::copy_from_slice(&body[i..i + n]));
        i += n;
    }
    out
}

/// Serves canned chunks in-process: the provider's whole decode path, no
/// socket. Each call gets the same body.
#[derive(Clone)]
pub struct Canned {
    chunks: Arc<[Bytes]>,
    content_type: &'static str,
    /// Whether the head and each chunk are first `Pending`, as from a
    /// socket: every layer's future and stream is then polled again.
    waits: bool,
}

impl Canned {
    /// An SSE body in these chunks.
    pub fn sse(chunks: Vec<Bytes>) -> Canned {
        Canned {
            chunks: chunks.into(),
            content_type: "text/event-stream",
            waits: false,
        }
    }

    /// A JSON body.
    pub fn json(body: &str) -> Canned {
        Canned {
            chunks: vec![Bytes::copy_from_slice(body.as_bytes())].into(),
            content_type: "application/json",
            waits: false,
        }
    }

    /// The head, each chunk and the end come after one `Pending` each (the
    /// task woken at once), as a network read would make them: what the
    /// layers cost when they are polled once per wait.
    pub fn waiting(mut self) -> Canned {
        self.waits = true;
        self
    }
}

/// `inner`, each item after one `Pending` when `waits`.
pub struct Waits<S> {
    inner: S,
    waits: bool,
    waited: bool,
}

impl<S: futures_core::Stream + Unpin> futures_core::Stream for Waits<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        if self.waits && !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.waited = false;
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// A head that comes after one `Pending` when `waits`.
pub struct Head<T> {
    value: Option<T>,
    waited: bool,
}

impl<T: Unpin> std::future::Future for Head<T> {
    type Output = T;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.value.take().expect("polled after completion"))
    }
}

pub type CannedBody = StreamBody<
    Waits<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

impl tower::Service<http::Request<RequestBody>> for Canned {
    type Response = http::Response<CannedBody>;
    type Error = Infallible;
    type Future = Head<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<RequestBody>) -> Self::Future {
        let frames: Vec<_> = self
            .chunks
            .iter()
            .cloned()
            .map(|b| Ok(Frame::data(b)))
            .collect();
        let mut resp = http::Response::new(StreamBody::new(Waits {
            inner: futures_util::stream::iter(frames),
            waits: self.waits,
            waited: false,
        }));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static(self.content_type),
        );
        Head {
            value: Some(Ok(resp)),
            waited: !self.waits,
        }
    }
}

/// Every call and stream type the benchmarks compare, boxed alike so the
/// comparison sees the layers and nothing else.
pub type Boxed =
    tower::util::BoxCloneService<llm_tower::ChatRequest, llm_tower::ChatStream, llm_tower::Error>;

/// An LLM-level service the benchmarks can box.
pub trait Llm:
    tower::Service<
        llm_tower::ChatRequest,
        Response = llm_tower::ChatStream,
        Error = llm_tower::Error,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Llm for S where
    S: tower::Service<
            llm_tower::ChatRequest,
            Response = llm_tower::ChatStream,
            Error = llm_tower::Error,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The README stack's layers with its settings, for the whole stack and for
/// each layer alone. The rate limit's budgets are set (so every call is
/// booked, as in the README) but far above what a benchmark sends, so that
/// no call waits: what is measured is the bookkeeping, not the pacing.
mod settings {
    use std::time::Duration;

    use llm_tower::{Credential, RateLimitLayer, RefreshLayer, StreamTimeoutLayer};

    async fn token() -> Result<Credential, std::io::Error> {
        Ok(Credential::bearer("sk-bench"))
    }

    pub fn total_timeout() -> StreamTimeoutLayer {
        StreamTimeoutLayer::new().total(Duration::from_secs(120))
    }

    pub fn first_and_idle_timeouts() -> StreamTimeoutLayer {
        StreamTimeoutLayer::new()
            .first_event(Duration::from_secs(30))
            .idle(Duration::from_secs(20))
    }

    pub fn refresh() -> RefreshLayer {
        RefreshLayer::new(token).initial(Credential::bearer("sk-bench"))
    }

    pub fn rate_limit() -> RateLimitLayer {
        RateLimitLayer::new()
            .requests_per_minute(1 << 40)
            .tokens_per_minute(1 << 50)
    }
}

/// The README's recommended stack, layer for layer: tracing, the
/// `map_request` default, a total timeout, the fallback (to a clone of the
/// provider), refresh, transport retry, the rate limit, first-event and idle
/// timeouts, the stream-aware concurrency limit.
pub fn full_stack<S: Llm>(provider: S, max_streams: usize) -> Boxed {
    use llm_tower::{
        ChatRequest, Error, FallbackLayer, GenAiTraceLayer, RetryPolicy,
        StreamConcurrencyLimitLayer, TransportRetryLayer,
    };

    let backup = provider.clone();
    let stack = tower::ServiceBuilder::new()
        .layer(GenAiTraceLayer::new())
        .map_request(|mut req: ChatRequest| {
            req.max_tokens.get_or_insert(1024);
            req
        })
        .layer(settings::total_timeout())
        .layer(FallbackLayer::new(backup).when(|e| matches!(e, Error::Overloaded { .. })))
        .layer(settings::refresh())
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(settings::rate_limit())
        .layer(settings::first_and_idle_timeouts())
        .layer(StreamConcurrencyLimitLayer::new(max_streams))
        .service(provider);
    tower::util::BoxCloneService::new(stack)
}

/// Each layer of the README's stack alone over `provider`, with the stack's
/// settings: where the stack's costs come from.
pub fn each_layer<S: Llm>(provider: S) -> Vec<(&'static str, Boxed)> {
    use llm_tower::{
        FallbackLayer, GenAiTraceLayer, RetryPolicy, StreamConcurrencyLimitLayer,
        TransportRetryLayer,
    };
    use tower::Layer;

    let p = || provider.clone();
    vec![
        ("trace", Boxed::new(GenAiTraceLayer::new().layer(p()))),
        (
            "total timeout",
            Boxed::new(settings::total_timeout().layer(p())),
        ),
        ("fallback", Boxed::new(FallbackLayer::new(p()).layer(p()))),
        ("refresh", Boxed::new(settings::refresh().layer(p()))),
        (
            "transport retry",
            Boxed::new(TransportRetryLayer::new(RetryPolicy::default()).layer(p())),
        ),
        ("rate limit", Boxed::new(settings::rate_limit().layer(p()))),
        (
            "first-event and idle timeouts",
            Boxed::new(settings::first_and_idle_timeouts().layer(p())),
        ),
        (
            "stream concurrency limit",
            Boxed::new(StreamConcurrencyLimitLayer::new(64).layer(p())),
        ),
    ]
}

/// A `tracing` subscriber as an application installs one: `fmt` at the
/// default `INFO` level, writing to nowhere, so that its filtering and
/// formatting cost is measured, not a terminal's.
pub fn subscriber() -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish()
}

/// Reads a stream to its end; returns how many events it had.
pub async fn count_events(stream: Result<llm_tower::ChatStream, llm_tower::Error>) -> usize {
    use futures_util::StreamExt;

    let mut stream = stream.expect("call failed");
    let mut n = 0;
    while let Some(e) = stream.next().await {
        e.expect("stream failed");
        n += 1;
    }
    n
}

/// Where each provider's delta event keeps its text.
pub const OPENAI_TEXT: &str = "/choices/0/delta/content";
/// See [`OPENAI_TEXT`].
pub const ANTHROPIC_TEXT: &str = "/delta/text";

/// What a careful user writes per event: typed structs that borrow the
/// text from the event where they can, with only the fields needed to
/// find it.
pub fn baseline_text_typed(data: &str, pointer: &str) -> Option<String> {
    use std::borrow::Cow;

    #[derive(serde::Deserialize)]
    struct OpenAiChunk<'a> {
        #[serde(borrow, default)]
        choices: Vec<OpenAiChoice<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct OpenAiChoice<'a> {
        #[serde(borrow)]
        delta: OpenAiDelta<'a>,
    }
    #[derive(serde::Deserialize)]
    struct OpenAiDelta<'a> {
        #[serde(borrow, default)]
        content: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct AnthropicEvent<'a> {
        #[serde(borrow, default)]
        delta: Option<AnthropicDelta<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct AnthropicDelta<'a> {
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }

    if data == "[DONE]" {
        return None;
    }
    if pointer == OPENAI_TEXT {
        let chunk: OpenAiChunk<'_> = serde_json::from_str(data).expect("valid JSON");
        chunk
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.delta.content)
            .map(Cow::into_owned)
    } else {
        let event: AnthropicEvent<'_> = serde_json::from_str(data).expect("valid JSON");
        event.delta.and_then(|d| d.text).map(Cow::into_owned)
    }
}

/// What a `reqwest-eventsource` user writes per event: parse the data as a
/// `serde_json::Value` and take the text out (`None` for `[DONE]` and for
/// events without text).
pub fn baseline_text(data: &str, pointer: &str) -> Option<String> {
    if data == "[DONE]" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(data).expect("valid JSON");
    v.pointer(pointer)
        .and_then(|t| t.as_str())
        .map(str::to_owned)
}

/// An in-memory service: every call answered at once with `meta` and the
/// events a short answer has — its start, `deltas` text deltas ("Hello
/// there." when one), its usage, its end.
pub fn from_memory(meta: llm_tower::ResponseMeta, deltas: usize) -> Boxed {
    use llm_tower::{ChatStream, StopReason, StreamEvent, Usage};
    use tower::ServiceExt;
    tower::util::BoxCloneService::new(tower::service_fn(move |_req: llm_tower::ChatRequest| {
        let mut events = Vec::with_capacity(deltas + 3);
        events.push(Ok(StreamEvent::MessageStart {
            id: Some("chatcmpl-1".into()),
            model: Some("gpt-4o-mini".into()),
        }));
        for _ in 0..deltas {
            let text = if deltas == 1 {
                "Hello there."
            } else {
                "token "
            };
            events.push(Ok(StreamEvent::TextDelta { text: text.into() }));
        }
        events.push(Ok(StreamEvent::Usage(Usage {
            input_tokens: 9,
            output_tokens: deltas.max(3) as u64,
            ..Usage::default()
        })));
        events.push(Ok(StreamEvent::Done {
            stop_reason: Some(StopReason::EndTurn),
        }));
        let stream = ChatStream::from_events(meta.clone(), events);
        async move { Ok::<_, Infallible>(stream) }
    }))
    .map_err(|e: Infallible| match e {})
    .boxed_clone()
}

/// The short request the in-memory benchmarks send.
pub fn short_request() -> llm_tower::ChatRequest {
    use llm_tower::{ChatRequest, Message};
    ChatRequest::new("gpt-4o-mini")
        .message(Message::system("You are terse."))
        .message(Message::user("Say hello."))
        .max_tokens(64)
}

/// Sends `request` through a clone of `svc` and counts the answer's events.
pub async fn drain<S>(svc: &S, request: llm_tower::ChatRequest) -> usize
where
    S: tower::Service<
            llm_tower::ChatRequest,
            Response = llm_tower::ChatStream,
            Error = llm_tower::Error,
        > + Clone,
{
    use tower::ServiceExt;
    let stream = svc.clone().oneshot(request).await.expect("answer");
    futures_util::StreamExt::count(stream).await
}
