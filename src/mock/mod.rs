//! A scriptable mock of the providers' HTTP APIs on loopback (feature
//! `mock`).
//!
//! A real HTTP/1.1 server on `127.0.0.1` that answers OpenAI Chat Completions
//! (`…/v1/chat/completions`; without the `/v1`, OpenAI's 404), OpenAI's
//! Responses API (`…/v1/responses`, which refuses, as the real one does, a
//! reasoning item it cannot find and a function call output that answers no
//! call), Anthropic Messages (`…/messages`), Gemini
//! (`…/models/{model}:generateContent`, `:streamGenerateContent`, on Vertex
//! AI's paths too), Claude on Vertex AI (`…/models/{model}:rawPredict`,
//! `:streamRawPredict`, which refuses a body without its
//! `anthropic_version`) and Azure OpenAI (`/openai/v1/…`,
//! `/openai/deployments/{deployment}/chat/completions?api-version=…`, keys
//! in `api-key`) requests from
//! a queue of scripted [`Reply`]s — one per request, that is per attempt —
//! or, once the queue is empty, from a default reply or a function of the
//! request ([`respond_with`](MockServer::respond_with)), and records every
//! request it receives. Any other path is a wire of the caller's own: it is
//! answered with replies given as bytes ([`Reply::sse`], [`Reply::body`])
//! and with errors in OpenAI's shape, while made-up text gets a 404. Faults are real: a reset is a TCP RST, a stall keeps
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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod dialect;
mod limiter;
mod player;
mod render;
mod reply;
mod server;
mod socket;

use crate::lock;

use limiter::RequestLimit;
#[cfg(test)]
pub(crate) use limiter::go_duration;
pub use reply::Reply;
use server::accept_loop;

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

    /// The base URL for [`OpenAi`](crate::OpenAi) and
    /// [`OpenAiResponses`](crate::OpenAiResponses): `http://127.0.0.1:PORT/v1`.
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
    /// - OpenAI (`…/v1/chat/completions`, `…/v1/responses`):
    ///   `Authorization: Bearer <key>` only.
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
        *lock(&self.shared.rate_limit) = Some(RequestLimit::new(per_minute));
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
