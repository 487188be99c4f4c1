//! LLM provider APIs as [`tower::Service`]s, and the middleware that makes
//! calls to them survive the real world — without ever showing the caller
//! the same output twice.
//!
//! Every service in this crate is a `Service<ChatRequest, Response =
//! ChatStream, Error = llm_tower::Error>`: a provider ([`OpenAi`],
//! [`Anthropic`]) at the bottom, layers over it, and tower's own layers
//! (`timeout`, `concurrency_limit`, `buffer`, …) anywhere in between.
//!
//! ```
//! use llm_tower::mock::{MockServer, Reply};
//! use llm_tower::{ChatRequest, Message, OpenAi};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let server = MockServer::start().await;
//! server.push(Reply::text(["Hello", ", world"]));
//!
//! let openai = OpenAi::builder()
//!     .base_url(server.openai_url())
//!     .api_key("sk-test")
//!     .model("gpt-4o-mini")
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .concurrency_limit(8)
//!     .service(openai);
//!
//! let answer = service
//!     .oneshot(ChatRequest::new("").message(Message::user("Hi")))
//!     .await?
//!     .completion()
//!     .await?;
//! assert_eq!(answer.text, "Hello, world");
//! # Ok(())
//! # }
//! ```
//!
//! # Map of the crate
//!
//! Three floors, and the arrows go down only: a module imports from its own
//! floor or below, never above (`tests/layering.rs` checks it).
//!
//! - **Layers**, the middleware: [`engine`], the attempt engine that waits
//!   before a call when its policy says so and retries while, and only
//!   while, the caller has seen no output, with [`retry`]
//!   ([`TransportRetryLayer`]) and [`refresh`] ([`RefreshLayer`], credentials
//!   fetched before and renewed on 401) built on it; [`timeout`] (first-event, idle and total
//!   deadlines over the stream); [`limit`] (a concurrency limit held for the
//!   life of the stream); [`rate_limit`] (pacing by the provider's headers and
//!   a budget of requests and tokens); [`fallback`] (a second service for
//!   failures before output); [`trace`] (one span per call with
//!   OpenTelemetry GenAI attributes); [`pool`] ([`Pool`], one service over
//!   several deployments, with cooldowns and hedging). The README's
//!   "Stacking layers" gives their order.
//! - **Providers** and their transport: [`provider`] ([`OpenAi`] and every
//!   OpenAI-compatible server through [`Preset`]s, [`OpenAiResponses`],
//!   [`Anthropic`], [`Gemini`], with Azure OpenAI and Vertex AI through
//!   their constructors),
//!   generic over the HTTP service under them; [`transport`], the default
//!   reqwest one. `mock` (feature `mock`) is a scriptable server on loopback
//!   speaking the providers' wire formats, for tests and demos.
//! - **The ground** every floor stands on: the call's vocabulary
//!   ([`ChatRequest`], whose copies share its parts; the [`ChatStream`] of
//!   [`StreamEvent`]s, which carries the deadlines the timeout layers put
//!   on it and what the layers watch it with, in place of a stream wrapped
//!   around it per layer; the folded [`Completion`]) and [`Error`] (one
//!   error type whose variants are classes a policy can act on); what
//!   travels with a call in its request — its [`Deadline`], its
//!   [`Attempts`], the credential a layer supplies, in one context every
//!   copy of the request shares — and [`Credential`] itself; what the response headers
//!   say ([`RateLimitInfo`], [`parse_retry_after`]); [`sse`], the incremental
//!   server-sent-events decoder; and `redis` (feature `redis`), the state
//!   several processes share — the rate limit's books, the pool's
//!   cooldowns, the credential — which the layers above are handed.
//!
//! So a layer reads what a provider wrote into the request or the stream
//! through the ground floor's types, not through the provider, and a
//! provider never names a layer.
//!
//! # Where names live
//!
//! Each name is reachable one way. The crate root holds what a user names
//! in everyday code: the call's vocabulary (requests, the stream, its
//! events, the folded completion, [`Error`] and its parts), credentials
//! and what a call carries, the providers, and every layer with its
//! settings (`…Layer`, [`RetryPolicy`]). A module holds the rest of its
//! middleware — the service its layer makes, its response future, its
//! policy's state (as tower keeps `Retry` beside `RetryLayer`) — and what
//! extends the crate: [`engine`], [`provider`] (builders, [`provider::Wire`],
//! [`provider::Provider`]), [`sse`], [`transport`], `mock`.
//!
//! Every middleware has one shape: `XLayer` (built with methods, the
//! settings) and `X<S>` with `X::new(inner, settings)` — the layer, or for
//! [`limit::StreamConcurrencyLimit`] the number, as tower's
//! `ConcurrencyLimit` takes it — and `get_ref`, `get_mut`, `into_inner`.
//!
//! # Extending
//!
//! - **A layer of one's own that sees the stream**:
//!   [`ChatStream::map_events`] puts a stream between the answer's events and
//!   the caller (to watch, change, hold back or cut them), and
//!   [`ChatStream::hold`] ties a value — a permit, a guard — to the life of
//!   the answer. `examples/redact_layer.rs` removes a pattern from text
//!   deltas, also across delta boundaries.
//! - **A provider of one's own**: a [`provider::Wire`] says how a request is
//!   encoded and gives a [`provider::Decode`]r for the answer;
//!   [`provider::Provider`] runs it over the client the built-in providers
//!   share, so credentials, error classification, SSE limits, secret
//!   masking and every layer work the same. `examples/custom_provider.rs`
//!   speaks an invented wire format, served by the mock server.

#![deny(missing_docs, unreachable_pub)]
#![warn(missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod auth;
mod call;
mod chat;
pub mod engine;
mod error;
pub mod fallback;
mod headers;
pub mod limit;
#[cfg(feature = "mock")]
pub mod mock;
pub mod pool;
pub mod provider;
pub mod rate_limit;
mod redact;
#[cfg(feature = "redis")]
pub mod redis;
pub mod refresh;
pub mod retry;
pub mod sse;
pub mod timeout;
pub mod trace;
pub mod transport;

/// Locks `m`, poisoned or not. Every mutex in this crate guards plain data
/// left consistent after each statement, so a panic elsewhere while holding
/// one leaves nothing half-written: keep going rather than spread the panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `now + d`, or `None` when that is past what an `Instant` can hold: a
/// limit of `Duration::MAX` means "never".
pub(crate) fn later(
    now: tokio::time::Instant,
    d: std::time::Duration,
) -> Option<tokio::time::Instant> {
    now.checked_add(d)
}

/// `now + d`, saturating about thirty years ahead (as tokio does for its
/// own far-future timers), for a deadline that must be a time.
pub(crate) fn later_or_far(
    now: tokio::time::Instant,
    d: std::time::Duration,
) -> tokio::time::Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// The nearer of two optional limits: either one when the other is unset.
pub(crate) fn nearer<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use auth::{AuthScheme, Credential};
pub use call::{Attempts, Deadline};
pub use chat::event::{StopReason, StreamEvent, Usage};
pub use chat::features::{CacheTtl, Effort, Reasoning, ResponseFormat};
pub use chat::request::{ChatRequest, ContentPart, Image, Message, Role, Tool, ToolChoice};
pub use chat::stream::{ChatStream, Completion, CompletionBuilder, Events, ResponseMeta, ToolCall};
pub use error::{ApiError, BoxError, DecodeError, Error, TimeoutPhase, TransportPhase};
pub use fallback::layer::FallbackLayer;
pub use headers::{RateLimitInfo, parse_retry_after};
pub use limit::layer::StreamConcurrencyLimitLayer;
pub use pool::Pool;
pub use provider::anthropic::Anthropic;
pub use provider::gemini::Gemini;
pub use provider::openai::{OpenAi, Preset};
pub use provider::responses::OpenAiResponses;
pub use rate_limit::layer::RateLimitLayer;
pub use refresh::layer::RefreshLayer;
pub use retry::layer::TransportRetryLayer;
pub use retry::policy::RetryPolicy;
pub use timeout::layer::StreamTimeoutLayer;
pub use trace::layer::GenAiTraceLayer;
