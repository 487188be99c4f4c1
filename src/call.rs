//! What travels with one call in its request's extensions, read by the
//! providers and written by the layers: the call's [`Deadline`], its
//! [`Attempts`] counter, and which provider it reached ([`Called`]).
//!
//! It sits at the bottom of the crate: providers and layers import from
//! here, never the other way round.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ChatRequest;

/// When a call must be over, carried in [`ChatRequest::extensions`].
///
/// Layers that wait respect it: a retry whose wait would end after the
/// deadline is not attempted; the failure is returned at once.
///
/// ```
/// use llm_tower::{ChatRequest, Deadline};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut req = ChatRequest::new("m");
/// req.extensions.insert(Deadline::after(Duration::from_secs(30)));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub tokio::time::Instant);

impl Deadline {
    /// The deadline `timeout` from now; a timeout too long for the clock
    /// (`Duration::MAX`) is decades away.
    pub fn after(timeout: std::time::Duration) -> Self {
        Deadline(crate::later_or_far(tokio::time::Instant::now(), timeout))
    }

    /// The time left, zero once passed.
    pub fn remaining(&self) -> std::time::Duration {
        self.0
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// Which provider a call went to, filled in by the provider when it sends:
/// what a layer above needs to name it before any answer came (a timeout
/// before the head).
#[derive(Debug, Clone, Default)]
pub(crate) struct Called(Arc<std::sync::OnceLock<&'static str>>);

impl Called {
    /// The call's slot, installed if the request has none yet.
    pub(crate) fn of(request: &mut ChatRequest) -> Called {
        request.extensions.get_or_insert_default::<Called>().clone()
    }

    pub(crate) fn set(&self, provider: &'static str) {
        let _ = self.0.set(provider);
    }

    /// The provider, or `"unknown"` when none was reached yet.
    pub(crate) fn name(&self) -> &'static str {
        self.0.get().copied().unwrap_or("unknown")
    }
}

/// Counts the HTTP requests one logical call sent, across every layer
/// (retries, a credential refresh, a fallback), carried in
/// [`ChatRequest::extensions`]: each provider counts the request it sends.
///
/// A successful call reports the count as
/// [`ResponseMeta::attempts`](crate::ResponseMeta::attempts). To know it
/// whatever the outcome — a call that failed after its retries, say — put
/// one in the request before the call and read it after: clones share the
/// count. Use a fresh one per call.
///
/// ```
/// use llm_tower::mock::{MockServer, Reply};
/// use llm_tower::{RetryPolicy, TransportRetryLayer};
/// use llm_tower::{Attempts, ChatRequest, Message, OpenAi};
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let server = MockServer::start().await;
/// server.set_default(Reply::api_error(500, "server_error", "down"));
/// let provider = OpenAi::builder().base_url(server.openai_url()).build().unwrap();
/// let svc = TransportRetryLayer::new(RetryPolicy::default().max_retries(2)).layer(provider);
///
/// let attempts = Attempts::new();
/// let mut req = ChatRequest::new("gpt-4o-mini").message(Message::user("hi"));
/// req.extensions.insert(attempts.clone());
/// let err = svc.oneshot(req).await.unwrap_err();
/// eprintln!("{err} (after {} attempts)", attempts.get());
/// assert_eq!(attempts.get(), 3);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Attempts(Arc<AtomicU32>);

impl Attempts {
    /// A counter at zero.
    pub fn new() -> Self {
        Attempts::default()
    }

    /// The requests sent so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// The call's counter, installed if the request has none yet.
    pub(crate) fn of(request: &mut ChatRequest) -> Attempts {
        request
            .extensions
            .get_or_insert_default::<Attempts>()
            .clone()
    }

    /// Counts one more attempt; returns the count including it.
    pub(crate) fn bump(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }
}
