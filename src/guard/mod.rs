//! The stream guard: retry a call while, and only while, its caller has seen
//! no output.
//!
//! [`Guard`] wraps an LLM-level service. For one logical call it sends
//! attempt 1 through the inner service, then reads the answer's events
//! *inside its response future*, holding metadata (`MessageStart`, `Usage`)
//! back, until the first output event arrives (see
//! [`StreamEvent::is_output`](crate::StreamEvent::is_output)). A failure before that point — from the
//! response future or from the stream — goes to the [`GuardPolicy`], which
//! may wait and let the guard send the call again (through the inner service,
//! driven ready with `poll_ready` first). The caller sees one coherent
//! stream, as if the failed attempts never happened.
//!
//! Once the first output event has arrived, the response future resolves to
//! a [`ChatStream`] that replays the held events and continues with the
//! committed attempt. From then on nothing is retried: an error is passed on,
//! and [`ChatStream::completion`] turns it into
//! [`Error::Interrupted`] carrying everything delivered so far.
//!
//! What is held back is bounded: past 1 MiB of metadata before the first
//! output event, the attempt fails with
//! [`DecodeError::PreludeTooLarge`](crate::DecodeError::PreludeTooLarge),
//! which is not retried. A real prelude is a few events.
//!
//! So the response future resolves at *commit*: its time covers connection,
//! retries and time to first output. Dropping it cancels the in-flight
//! attempt and any pending wait; dropping the resolved stream cancels the
//! call. No task is spawned.
//!
//! [`TransportRetryLayer`](crate::retry::TransportRetryLayer) is this guard
//! with a backoff policy; custom policies implement [`GuardPolicy`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use crate::{ChatRequest, ChatStream, Error};

mod future;
mod prime;

pub use future::ResponseFuture;
pub(crate) use prime::Priming;

/// What a guard does about a failure that happened before any output.
pub trait GuardPolicy: Clone + Send + Sync + 'static {
    /// What the policy remembers for one logical call (retries so far, a
    /// random state, a deadline).
    type State: Send + 'static;
    /// Resolves when the next attempt may start: `true` to send it, `false`
    /// to give up and return the failure.
    type Wait: Future<Output = bool> + Send + 'static;

    /// A new logical call begins.
    fn start(&self, request: &ChatRequest) -> Self::State;

    /// Adjusts the request before each attempt (stamps a credential, say).
    fn prepare(&self, _state: &mut Self::State, _request: &mut ChatRequest) {}

    /// `error` ended an attempt before any output: `Some(wait)` to retry
    /// once `wait` resolves, `None` to pass the error on.
    fn on_failure(&self, state: &mut Self::State, error: &Error) -> Option<Self::Wait>;
}

/// An LLM-level service whose calls are retried by `P` while no output has
/// been delivered. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Guard<S, P> {
    inner: S,
    policy: P,
}

impl<S, P> Guard<S, P> {
    /// Guards `inner` with `policy`.
    pub const fn new(inner: S, policy: P) -> Self {
        Guard { inner, policy }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the guard.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P> tower::Service<ChatRequest> for Guard<S, P>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
    P: GuardPolicy,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ChatRequest) -> Self::Future {
        let attempts = Attempts::of(&mut request);
        let mut state = self.policy.start(&request);
        // Attempt 1 goes through the instance that was driven ready; later
        // attempts drive that same instance ready again.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let mut first = request.clone();
        self.policy.prepare(&mut state, &mut first);
        let future = service.call(first);
        ResponseFuture::new(
            future,
            service,
            request,
            self.policy.clone(),
            state,
            attempts,
        )
    }
}

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
/// use llm_tower::retry::{RetryPolicy, TransportRetryLayer};
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
