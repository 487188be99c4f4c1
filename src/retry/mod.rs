//! Retry what is transient — never after output.
//!
//! [`TransportRetryLayer`](crate::TransportRetryLayer) is the [attempt engine](crate::engine) with a
//! [`RetryPolicy`] that follows the official SDKs' conventions: connection
//! failures, resets, truncated or undecodable bodies, timeouts, 408, 409,
//! 429 and 5xx are retried (an `x-should-retry` header overrides the status
//! rule; a 429 with `insufficient_quota` is not retried, nor an answer over
//! a size limit), at most
//! `max_retries` times (default 2), after an exponential backoff with
//! jitter (0.5 s doubling to 8 s, minus up to 25 %) or the server's
//! `retry-after-ms` / `retry-after` when it gave one (up to 60 s; longer, and
//! the error is returned instead of waiting).
//!
//! Unlike the SDKs, which stop retrying once a response head has arrived,
//! failures *inside the stream* are retried too — as long as no output event
//! has reached the caller.
//!
//! ```
//! use llm_tower::mock::{MockServer, Reply};
//! use llm_tower::{ChatRequest, Message, OpenAi, RetryPolicy, TransportRetryLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let server = MockServer::start().await;
//! server.push(Reply::api_error(503, "overloaded_error", "busy"));
//! server.push(Reply::text(["Hi"]).reset_after(0)); // a reset before output
//! server.push(Reply::text(["Hello"]));
//!
//! let openai = OpenAi::builder().base_url(server.openai_url()).model("m").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(TransportRetryLayer::new(RetryPolicy::default().max_retries(3)))
//!     .service(openai);
//!
//! let stream = service.oneshot(ChatRequest::new("").message(Message::user("hi"))).await?;
//! assert_eq!(stream.meta().attempts, 3);
//! assert_eq!(stream.completion().await?.text, "Hello");
//! # Ok(())
//! # }
//! ```

pub(crate) mod layer;
pub(crate) mod policy;

pub use layer::TransportRetry;
use policy::RetryPolicy;
pub use policy::{CallState, Delay};
