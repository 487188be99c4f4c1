//! A scriptable mock of the providers' HTTP APIs on loopback (feature
//! `mock`).
//!
//! A real HTTP/1.1 server on `127.0.0.1` that answers OpenAI Chat Completions
//! (`…/v1/chat/completions`; without the `/v1`, OpenAI's 404), Anthropic
//! Messages (`…/messages`) and Gemini (`…/models/{model}:generateContent`,
//! `:streamGenerateContent`) requests from
//! a queue of scripted [`Reply`]s — one per request, that is per attempt —
//! or, once the queue is empty, from a default reply or a function of the
//! request ([`respond_with`](MockServer::respond_with)), and records every
//! request it receives. Faults are real: a reset is a TCP RST, a stall keeps
//! the connection open and silent, a bad byte is a bad byte on the wire.
//!
//! ```
//! use llm_tower::mock::{MockServer, Reply};
//! use llm_tower::{Anthropic, ChatRequest, Message};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let server = MockServer::start().await;
//! server.push(Reply::api_error(529, "overloaded_error", "Overloaded"));
//!
//! let anthropic = Anthropic::builder()
//!     .base_url(server.anthropic_url())
//!     .api_key("sk-ant-test")
//!     .model("claude-sonnet-4-5")
//!     .build()?;
//! let err = anthropic
//!     .oneshot(ChatRequest::new("").message(Message::user("Hi")))
//!     .await
//!     .unwrap_err();
//! assert!(matches!(err, llm_tower::Error::Overloaded { .. }));
//! assert_eq!(server.requests().len(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

mod reply;

use crate::lock;

pub use reply::Reply;
use reply::{Asked, Dialect, Step};

/// A mock provider server on `127.0.0.1`. Stops when dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    /// When set, requests without one of these keys get a 401.
    accepted_keys: Mutex<Option<Vec<String>>>,
    default_reply: Mutex<DefaultReply>,
    requests: Mutex<Vec<RecordedRequest>>,
    live_connections: AtomicUsize,
    open_responses: AtomicUsize,
    peak_open_responses: AtomicUsize,
    rate_limit: Mutex<Option<RequestLimit>>,
    rate_limited: AtomicUsize,
}

/// A provider's request limit, played by the server.
struct RequestLimit {
    per_minute: usize,
    /// When the requests in the last minute were accepted.
    accepted: VecDeque<tokio::time::Instant>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl RequestLimit {
    /// Counts a request arriving at `now`: the limit's state, and how long
    /// to wait when it is refused.
    fn admit(&mut self, now: tokio::time::Instant) -> (LimitState, Option<Duration>) {
        while self.accepted.front().is_some_and(|&t| t + MINUTE <= now) {
            self.accepted.pop_front();
        }
        let refused = self.accepted.len() >= self.per_minute;
        let retry_after = refused.then(|| {
            self.accepted
                .front()
                .map_or(MINUTE, |&t| (t + MINUTE).saturating_duration_since(now))
        });
        if !refused {
            self.accepted.push_back(now);
        }
        let state = LimitState {
            limit: self.per_minute,
            remaining: self.per_minute.saturating_sub(self.accepted.len()),
            // Full again once the newest request leaves the window.
            reset: self.accepted.back().map_or(Duration::ZERO, |&t| {
                (t + MINUTE).saturating_duration_since(now)
            }),
        };
        (state, retry_after)
    }
}

/// The request limit's state, as a provider reports it.
#[derive(Debug, Clone, Copy)]
struct LimitState {
    limit: usize,
    remaining: usize,
    reset: Duration,
}

impl LimitState {
    fn headers(self, dialect: Dialect, reply: Reply) -> Reply {
        let (limit, remaining) = (self.limit.to_string(), self.remaining.to_string());
        match dialect {
            Dialect::OpenAi => reply
                .header("x-ratelimit-limit-requests", limit)
                .header("x-ratelimit-remaining-requests", remaining)
                .header("x-ratelimit-reset-requests", go_duration(self.reset)),
            Dialect::Anthropic => reply
                .header("anthropic-ratelimit-requests-limit", limit)
                .header("anthropic-ratelimit-requests-remaining", remaining)
                .header(
                    "anthropic-ratelimit-requests-reset",
                    humantime::format_rfc3339_millis(std::time::SystemTime::now() + self.reset)
                        .to_string(),
                ),
            Dialect::Gemini | Dialect::Other => reply,
        }
    }
}

/// A duration as Go prints it, to the millisecond, as OpenAI sends them:
/// `20ms`, `1.5s`, `6m0s`, `1h0m0s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        let frac = format!("{frac:03}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// What answers a request when the queue is empty.
#[derive(Clone)]
enum DefaultReply {
    Reply(Reply),
    With(Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>),
}

/// A request the mock server received.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// When it arrived, on tokio's clock (so a paused test clock applies).
    pub received_at: tokio::time::Instant,
}

impl RecordedRequest {
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

impl MockServer {
    /// Starts a server on an ephemeral port of `127.0.0.1`.
    ///
    /// Requests beyond the scripted replies get the default reply, a short
    /// text answer (see [`set_default`](MockServer::set_default)).
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, or outside a tokio runtime.
    pub async fn start() -> MockServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a port on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            replies: Mutex::new(VecDeque::new()),
            accepted_keys: Mutex::new(None),
            default_reply: Mutex::new(DefaultReply::Reply(Reply::text([
                "Hello", " from", " the", " mock", " server.",
            ]))),
            requests: Mutex::new(Vec::new()),
            live_connections: AtomicUsize::new(0),
            open_responses: AtomicUsize::new(0),
            peak_open_responses: AtomicUsize::new(0),
            rate_limit: Mutex::new(None),
            rate_limited: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        MockServer { addr, shared, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL for [`OpenAi`](crate::OpenAi): `http://127.0.0.1:PORT/v1`.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The base URL for [`Anthropic`](crate::Anthropic):
    /// `http://127.0.0.1:PORT`.
    pub fn anthropic_url(&self) -> String {
        self.url()
    }

    /// The base URL for [`Gemini`](crate::Gemini): `http://127.0.0.1:PORT`.
    pub fn gemini_url(&self) -> String {
        self.url()
    }

    /// Queues a reply for the next request that has none yet.
    pub fn push(&self, reply: Reply) -> &Self {
        lock(&self.shared.replies).push_back(reply);
        self
    }

    /// Queues several replies, in order.
    pub fn push_all(&self, replies: impl IntoIterator<Item = Reply>) -> &Self {
        lock(&self.shared.replies).extend(replies);
        self
    }

    /// The reply for requests when the queue is empty.
    pub fn set_default(&self, reply: Reply) -> &Self {
        *lock(&self.shared.default_reply) = DefaultReply::Reply(reply);
        self
    }

    /// Answers requests, when the queue is empty, with what `respond`
    /// returns for each: a script that decides by the request (its path,
    /// model, messages, headers) rather than by order of arrival, which
    /// concurrent callers make unpredictable. Replaces the default reply;
    /// [`set_default`](MockServer::set_default) replaces the function.
    ///
    /// `respond` runs on the server's task for every such request, after the
    /// [key check](MockServer::accept_keys): keep it quick.
    ///
    /// ```
    /// use llm_tower::mock::{MockServer, Reply};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = MockServer::start().await;
    /// // Overloaded for one model, fine for the rest.
    /// server.respond_with(|req| match req.json()["model"].as_str() {
    ///     Some("big") => Reply::api_error(529, "overloaded_error", "busy"),
    ///     _ => Reply::text(["ok"]),
    /// });
    /// # }
    /// ```
    pub fn respond_with<F>(&self, respond: F) -> &Self
    where
        F: Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    {
        *lock(&self.shared.default_reply) = DefaultReply::With(Arc::new(respond));
        self
    }

    /// Accepts only requests carrying one of `keys` in a header the
    /// provider's real API reads it from; others get a 401 in the provider's
    /// error shape, without using a scripted reply. Call again to rotate
    /// keys.
    ///
    /// The headers, by the request's dialect:
    ///
    /// - OpenAI (`…/v1/chat/completions`): `Authorization: Bearer <key>`
    ///   only.
    /// - Anthropic (`…/messages`): `x-api-key: <key>` (API keys, and
    ///   [`Credential::api_key`](crate::Credential::api_key)), or
    ///   `Authorization: Bearer <key>` (OAuth tokens).
    /// - Gemini (`…:generateContent`, `…:streamGenerateContent`):
    ///   `x-goog-api-key: <key>` (API keys), or `Authorization: Bearer <key>`
    ///   (OAuth access tokens, which Google's APIs and Vertex AI take).
    ///
    /// A key in any other header — `x-api-key` to OpenAI, say — counts as
    /// none. A path none of these APIs has (a wire of one's own) is not
    /// checked: its key header is for [`respond_with`](Self::respond_with)
    /// to read. The 401's message echoes the key presented, in full, as some
    /// real servers do (OpenAI's `Incorrect API key provided: sk-…`, masked
    /// there): a test can check that the client never shows it.
    ///
    /// ```
    /// use llm_tower::mock::MockServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = MockServer::start().await;
    /// server.accept_keys(["sk-good"]);
    /// # }
    /// ```
    pub fn accept_keys<I, S>(&self, keys: I) -> &Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        *lock(&self.shared.accepted_keys) = Some(keys.into_iter().map(Into::into).collect());
        self
    }

    /// Stops checking keys (the default).
    pub fn accept_any_key(&self) -> &Self {
        *lock(&self.shared.accepted_keys) = None;
        self
    }

    /// Limits requests as a provider does: at most `per_minute` in any 60
    /// seconds of tokio's clock (so a paused test clock applies), counted
    /// over every model. Accepted answers carry the request limit's headers
    /// in the provider's form (OpenAI's `x-ratelimit-*-requests`, with the
    /// reset as a duration such as `59.5s`; Anthropic's
    /// `anthropic-ratelimit-requests-*`, with an RFC 3339 reset; none for
    /// Gemini). A request over the limit gets a 429 in the provider's shape
    /// with `retry-after` and the same headers, and is counted in
    /// [`rate_limited_count`](MockServer::rate_limited_count) — without
    /// using a scripted reply.
    ///
    /// ```
    /// use llm_tower::mock::MockServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = MockServer::start().await;
    /// server.limit_requests(10);
    /// # }
    /// ```
    pub fn limit_requests(&self, per_minute: usize) -> &Self {
        *lock(&self.shared.rate_limit) = Some(RequestLimit {
            per_minute,
            accepted: VecDeque::new(),
        });
        self
    }

    /// Lifts the [request limit](MockServer::limit_requests).
    pub fn unlimit_requests(&self) -> &Self {
        *lock(&self.shared.rate_limit) = None;
        self
    }

    /// How many requests the [request limit](MockServer::limit_requests)
    /// refused with a 429.
    pub fn rate_limited_count(&self) -> usize {
        self.shared.rate_limited.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Scripted replies not used yet.
    pub fn pending_replies(&self) -> usize {
        lock(&self.shared.replies).len()
    }

    /// Responses being sent right now (head sent, body not finished).
    pub fn open_responses(&self) -> usize {
        self.shared.open_responses.load(Ordering::SeqCst)
    }

    /// The most responses that were ever being sent at once.
    pub fn peak_open_responses(&self) -> usize {
        self.shared.peak_open_responses.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn live_connections(&self) -> usize {
        self.shared.live_connections.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops the set of connection tasks, which
        // aborts them: stalled streams end too.
        self.task.abort();
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => {
                backoff = ACCEPT_BACKOFF_MIN;
                s
            }
            Err(e) => {
                // Out of file descriptors, say: retrying at once would spin
                // a core until the condition passes.
                tracing::debug!(error = %e, backoff_ms = backoff.as_millis() as u64, "mock server: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(serve_connection(stream, shared));
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    shared.live_connections.fetch_add(1, Ordering::SeqCst);
    let _live = LiveGuard(shared.clone());
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream {
        stream: Some(stream),
        reset: reset.clone(),
    });
    let service = hyper::service::service_fn(move |req| handle(req, shared.clone(), reset.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the connection ends without a response.
#[derive(Debug)]
struct ResetBeforeHeaders;

impl fmt::Display for ResetBeforeHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scripted reset before headers")
    }
}

impl std::error::Error for ResetBeforeHeaders {}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
) -> Result<Response<MockBody>, ResetBeforeHeaders> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers,
        body,
        received_at: tokio::time::Instant::now(),
    };
    let path = recorded.uri_path().to_owned();
    let json = recorded.json();

    // Gemini names the model and the mode in the path.
    let gemini = path.rsplit_once(':').and_then(|(resource, method)| {
        let stream = match method {
            "generateContent" => false,
            "streamGenerateContent" => true,
            _ => return None,
        };
        let model = resource.rsplit('/').next().unwrap_or("mock-model");
        Some((stream, model.to_owned()))
    });
    let dialect = if path.ends_with("/v1/chat/completions") {
        Dialect::OpenAi
    } else if path.ends_with("/chat/completions") {
        // OpenAI's API lives under `/v1`: without it, its 404.
        let method = recorded.method.clone();
        lock(&shared.requests).push(recorded);
        return Ok(openai_invalid_url(&method, &path));
    } else if path.ends_with("/messages") {
        Dialect::Anthropic
    } else if gemini.is_some() {
        Dialect::Gemini
    } else {
        Dialect::Other
    };
    let (stream, model) = gemini.unwrap_or_else(|| {
        (
            json.get("stream").and_then(Value::as_bool).unwrap_or(false),
            json.get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock-model")
                .to_owned(),
        )
    });
    let asked = Asked {
        dialect,
        stream,
        model,
        include_usage: json
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let refused = lock(&shared.accepted_keys)
        .as_ref()
        .and_then(|keys| key_refusal(dialect, &recorded, keys));
    let limited = if refused.is_some() {
        None
    } else {
        lock(&shared.rate_limit)
            .as_mut()
            .map(|limit| limit.admit(recorded.received_at))
    };
    let reply = if let Some(message) = refused {
        Reply::api_error(401, "authentication_error", message)
    } else if let Some((_, Some(retry_after))) = limited {
        shared.rate_limited.fetch_add(1, Ordering::SeqCst);
        Reply::api_error(429, "rate_limit_error", "Rate limit reached for requests")
            .header("retry-after", retry_after.as_secs_f64().ceil().to_string())
    } else {
        let next = lock(&shared.replies).pop_front();
        match next {
            Some(reply) => reply,
            // Cloned out so that `respond` runs without the lock.
            None => match lock(&shared.default_reply).clone() {
                DefaultReply::Reply(reply) => reply,
                DefaultReply::With(respond) => respond(&recorded),
            },
        }
    };
    lock(&shared.requests).push(recorded);
    // Made-up text has no shape on a path no provider has: the server
    // does not know it, as a real one would not.
    let reply = if dialect == Dialect::Other && reply.is_generated() {
        let body = serde_json::json!({"error": {"message": format!("no route for {path}"), "type": "not_found"}});
        Reply::body(404, "application/json", body.to_string())
    } else {
        reply
    };
    let reply = match limited {
        Some((state, _)) => state.headers(dialect, reply),
        None => reply,
    };
    let Some(rendered) = reply.render(&asked) else {
        reset.store(true, Ordering::SeqCst);
        return Err(ResetBeforeHeaders);
    };
    let mut response = Response::new(MockBody {
        steps: rendered.steps.into(),
        delay: reply.delay,
        sleep: None,
        reset,
        _open: Some(OpenResponse::new(&shared)),
    });
    *response.status_mut() = rendered.status;
    let content_type = rendered.content_type;
    let headers = response.headers_mut();
    if !content_type.is_empty()
        && let Ok(v) = HeaderValue::from_str(&content_type)
    {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert("x-request-id", HeaderValue::from_static("req_mock"));
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    Ok(response)
}

/// Where a request may carry its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
    /// `x-goog-api-key: <key>` (Gemini).
    XGoogApiKey,
}

impl KeyHeader {
    const ALL: [KeyHeader; 3] = [
        KeyHeader::Bearer,
        KeyHeader::XApiKey,
        KeyHeader::XGoogApiKey,
    ];

    /// The headers a dialect's real API reads a key from, in order of
    /// preference.
    fn accepted(dialect: Dialect) -> &'static [KeyHeader] {
        match dialect {
            Dialect::OpenAi => &[KeyHeader::Bearer],
            // OAuth tokens come as bearer tokens.
            Dialect::Anthropic => &[KeyHeader::XApiKey, KeyHeader::Bearer],
            // Google's APIs (and Vertex AI) take OAuth access tokens as
            // bearer tokens.
            Dialect::Gemini => &[KeyHeader::XGoogApiKey, KeyHeader::Bearer],
            // A wire of the caller's own: its key header is its own to
            // check (in `respond_with`).
            Dialect::Other => &[],
        }
    }

    /// The key the request carries here, if any.
    fn key(self, request: &RecordedRequest) -> Option<&str> {
        match self {
            KeyHeader::Bearer => request
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer ")),
            KeyHeader::XApiKey => request.header("x-api-key"),
            KeyHeader::XGoogApiKey => request.header("x-goog-api-key"),
        }
    }
}

impl fmt::Display for KeyHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyHeader::Bearer => "Authorization: Bearer",
            KeyHeader::XApiKey => "x-api-key",
            KeyHeader::XGoogApiKey => "x-goog-api-key",
        })
    }
}

/// Why `request` is refused, when it carries none of `keys` where `dialect`
/// reads keys from: a 401's message, which echoes the key presented in full.
fn key_refusal(dialect: Dialect, request: &RecordedRequest, keys: &[String]) -> Option<String> {
    let accepted = KeyHeader::accepted(dialect);
    if accepted.is_empty() {
        return None;
    }
    let presented = |h: &KeyHeader| h.key(request).map(|key| (*h, key));
    if accepted
        .iter()
        .filter_map(presented)
        .any(|(_, key)| keys.iter().any(|k| k == key))
    {
        return None;
    }
    let expected = accepted
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    Some(match accepted.iter().find_map(presented) {
        Some((_, key)) => format!("invalid api key: Incorrect API key provided: {key}"),
        None => match KeyHeader::ALL.iter().find_map(presented) {
            Some((header, key)) => format!(
                "invalid api key: Incorrect API key provided: {key} (sent as {header}; \
                 expected {expected})"
            ),
            None => format!("invalid api key: no API key provided (expected {expected})"),
        },
    })
}

/// OpenAI's answer to a path it does not serve.
fn openai_invalid_url(method: &Method, path: &str) -> Response<MockBody> {
    let body = serde_json::json!({"error": {
        "message": format!("Invalid URL ({method} {path})"),
        "type": "invalid_request_error", "param": null, "code": null,
    }});
    simple(StatusCode::NOT_FOUND, "application/json", body.to_string())
}

impl RecordedRequest {
    fn uri_path(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

fn simple(status: StatusCode, content_type: &'static str, body: String) -> Response<MockBody> {
    let mut r = Response::new(MockBody {
        steps: VecDeque::from([Step::Data(Bytes::from(body))]),
        delay: std::time::Duration::ZERO,
        sleep: None,
        reset: Arc::new(AtomicBool::new(false)),
        _open: None,
    });
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

/// How long a body waits, before a scripted reset, for its data to be sent.
const FLUSH_BEFORE_RESET: std::time::Duration = std::time::Duration::from_millis(5);

/// A response body that plays its steps, waiting `delay` before each piece.
struct MockBody {
    steps: VecDeque<Step>,
    delay: std::time::Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    reset: Arc<AtomicBool>,
    _open: Option<OpenResponse>,
}

/// Counts a response as open while its body lives.
struct OpenResponse(Arc<Shared>);

impl OpenResponse {
    fn new(shared: &Arc<Shared>) -> Self {
        let open = shared.open_responses.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_open_responses.fetch_max(open, Ordering::SeqCst);
        OpenResponse(shared.clone())
    }
}

impl Drop for OpenResponse {
    fn drop(&mut self) {
        self.0.open_responses.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ends the connection abortively.
#[derive(Debug)]
struct ScriptedReset;

impl fmt::Display for ScriptedReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scripted reset")
    }
}

impl std::error::Error for ScriptedReset {}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = ScriptedReset;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ScriptedReset>>> {
        let this = &mut *self;
        loop {
            match this.steps.front() {
                None => return Poll::Ready(None),
                Some(Step::Stall) => return Poll::Pending,
                Some(Step::Reset) => {
                    // Pause first: hyper flushes what it buffered when the body
                    // is pending, so the client receives every event written
                    // before the reset (an RST discards unsent data).
                    let flush = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_BEFORE_RESET)));
                    if flush.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sleep = None;
                    this.reset.store(true, Ordering::SeqCst);
                    this.steps.clear();
                    return Poll::Ready(Some(Err(ScriptedReset)));
                }
                Some(Step::Data(_)) => {}
            }
            if !this.delay.is_zero() {
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.delay)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            if let Some(Step::Data(d)) = this.steps.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
        }
    }
}

/// The connection's socket; closed with an RST (zero linger) when the script
/// asked for a reset.
struct ResettableStream {
    stream: Option<TcpStream>,
    reset: Arc<AtomicBool>,
}

impl ResettableStream {
    fn stream(&mut self) -> Pin<&mut TcpStream> {
        // `stream` is only taken in `drop`.
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is present until drop"),
        )
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst)
            && let Some(s) = self.stream.take()
        {
            let _ = s.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // A graceful shutdown would send FIN before the RST.
            return Poll::Ready(Ok(()));
        }
        self.stream().poll_shutdown(cx)
    }
}
