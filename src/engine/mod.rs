//! The attempt engine: every layer that may try a call more than once, or
//! must wait before trying it, runs its attempts here.
//!
//! [`Engine`] wraps an LLM-level service. For one logical call it asks its
//! [`Policy`] whether attempt 1 must wait (a credential fetch, say), sends
//! the attempt through the inner service, then reads the answer's events
//! *inside its response future*, holding metadata (`MessageStart`, `Usage`)
//! back, until the first output event arrives (see
//! [`StreamEvent::is_output`](crate::StreamEvent::is_output)). A failure
//! before that point — from the response future or from the stream — goes to
//! the policy, which may wait and let the engine send the call again. The
//! caller sees one coherent stream, as if the failed attempts never
//! happened.
//!
//! One rule about readiness holds throughout: an attempt is sent through an
//! instance driven ready (`poll_ready`) just before, and **no readied
//! instance is held across a wait**. Attempt 1 goes through the instance the
//! caller drove ready, unless the policy waits first: then that instance is
//! dropped — giving back what its readiness reserved below (a concurrency
//! slot, a buffer's place) — and a clone is driven ready once the wait is
//! over, as for every later attempt. That step is written once, here, and
//! shared with the layers that wait without retrying (the rate limit) and
//! with the fallback.
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
//! waits, retries and time to first output. Dropping it cancels the
//! in-flight attempt and any pending wait; dropping the resolved stream
//! cancels the call. No task is spawned.
//!
//! [`TransportRetryLayer`](crate::TransportRetryLayer) and
//! [`RefreshLayer`](crate::RefreshLayer) are this engine with two
//! policies; custom policies implement [`Policy`].

use std::future::Future;
use std::task::{Context, Poll};

use crate::{ChatRequest, ChatStream, Error};

mod attempt;
mod future;
mod prime;
mod ready;

pub(crate) use attempt::Attempt;
pub use future::ResponseFuture;
pub(crate) use prime::Priming;
pub(crate) use ready::{Ready, poll_call};

/// What the engine does before a call's first attempt and about a failure
/// before any output.
pub trait Policy: Clone + Send + Sync + 'static {
    /// What the policy remembers for one logical call (retries so far, a
    /// random state, a deadline).
    type State: Send + 'static;
    /// A wait: resolves `Ok(())` when the next attempt may start. Waiting out
    /// a failure, `Err` gives up and the call fails with that failure;
    /// before the first attempt, where there is none, with this error.
    type Wait: Future<Output = Result<(), Error>> + Send + 'static;

    /// A new logical call begins.
    fn start(&self, request: &ChatRequest) -> Self::State;

    /// What attempt 1 waits for, if anything (a credential to fetch, a slot
    /// to come): `None`, the default, sends it at once.
    fn before_first(&self, _state: &mut Self::State, _request: &ChatRequest) -> Option<Self::Wait> {
        None
    }

    /// Adjusts the request before each attempt (stamps a credential, say).
    fn prepare(&self, _state: &mut Self::State, _request: &mut ChatRequest) {}

    /// `error` ended an attempt before any output: `Some(wait)` to retry
    /// once `wait` resolves, `None` to pass the error on.
    fn on_failure(&self, state: &mut Self::State, error: &Error) -> Option<Self::Wait>;
}

/// An LLM-level service whose calls are attempted, and retried while no
/// output has been delivered, as `P` says. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Engine<S, P> {
    inner: S,
    policy: P,
}

impl<S, P> Engine<S, P> {
    /// Runs the attempts of calls to `inner` by `policy`.
    pub const fn new(inner: S, policy: P) -> Self {
        Engine { inner, policy }
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

    /// The inner service, consuming the engine.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P> tower::Service<ChatRequest> for Engine<S, P>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
    P: Policy,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ChatRequest) -> Self::Future {
        let context = request.call();
        let mut state = self.policy.start(&request);
        // The instance driven ready for this call leaves with it; a clone
        // takes its place for the next.
        let clone = self.inner.clone();
        let readied = std::mem::replace(&mut self.inner, clone);
        if let Some(wait) = self.policy.before_first(&mut state, &request) {
            // Dropping `readied` gives back what its readiness reserved:
            // nothing is held while the call waits.
            drop(readied);
            let service = self.inner.clone();
            return ResponseFuture::waiting(
                wait,
                service,
                request,
                self.policy.clone(),
                state,
                context,
            );
        }
        ResponseFuture::sending(readied, request, self.policy.clone(), state, context)
    }
}
