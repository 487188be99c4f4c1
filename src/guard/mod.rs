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
use std::task::{Context, Poll};

use crate::call::Attempts;
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
