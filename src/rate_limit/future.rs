//! The response future of [`RateLimit`](super::RateLimit): wait for the
//! slot, then drive the inner service ready and call it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::engine::poll_call;
use crate::lock;
use crate::{ChatRequest, ChatStream, Error};

use super::Shared;
use super::tracker::{Ticket, Tracker};

pin_project! {
    /// The response future of [`RateLimit`]: waits for the call's slot,
    /// then drives the inner service ready and calls it.
    pub struct ResponseFuture<S>
    where
        S: Service<ChatRequest>,
    {
        #[pin]
        state: State<S::Future>,
        // Only for a call that waits: boxed, so the call that has room moves
        // a small future around.
        waiting: Option<Box<Waiting<S>>>,
        // Once sent.
        tracker: Option<Tracker>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Failed { error: Option<Error> },
        Waiting,
        Readying,
        Calling { #[pin] future: F },
        Done,
    }
}

/// What a call that waits for its slot holds.
pub(super) struct Waiting<S> {
    // Made when first polled, inside the runtime, rather than by `call`.
    pub(super) sleep: Option<Pin<Box<Sleep>>>,
    pub(super) service: S,
    pub(super) request: Option<ChatRequest>,
    // Given back if the call is dropped before it is sent.
    pub(super) ticket: Ticket,
    pub(super) _queued: Queued,
}

/// A place among the calls that wait, given back on drop.
pub(super) struct Queued(Arc<Shared>);

impl Queued {
    pub(super) fn enter(shared: &Arc<Shared>) -> Option<Queued> {
        shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_waiting).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(shared.clone()))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<ChatRequest>,
{
    /// A call sent at once, its booking tracked.
    pub(super) fn calling(future: S::Future, tracker: Tracker) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            waiting: None,
            tracker: Some(tracker),
        }
    }

    /// A call that waits for its slot.
    pub(super) fn waiting(waiting: Waiting<S>) -> Self {
        ResponseFuture {
            state: State::Waiting,
            waiting: Some(Box::new(waiting)),
            tracker: None,
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            waiting: None,
            tracker: None,
        }
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<ChatRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("waiting", &self.waiting.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error>,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error.take().unwrap_or_else(polled_after_completion);
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Waiting => {
                    let Some(w) = this.waiting.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let Some(t) = w.ticket.0.as_mut() else {
                        this.state.set(State::Readying);
                        continue;
                    };
                    let at = t.booking.at;
                    let sleep = w
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    ready!(sleep.as_mut().poll(cx));
                    let recheck = lock(&t.books).recheck(
                        &t.booking,
                        &t.shared.budget,
                        Instant::now(),
                        t.deadline,
                    );
                    match recheck {
                        None => this.state.set(State::Readying),
                        // A 429 paused the model while this call slept.
                        Some(Ok(booking)) => {
                            t.booking = booking;
                            sleep.as_mut().reset(booking.at);
                        }
                        Some(Err(refusal)) => {
                            // `recheck` gave the old booking back already.
                            let error = t.shared.refused(refusal);
                            w.ticket.0 = None;
                            *this.waiting = None;
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Readying => {
                    let Some(w) = this.waiting.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let sent = ready!(poll_call(&mut w.service, &mut w.request, cx));
                    // Sent: the booking is used. Not sent: dropping the
                    // ticket with `waiting` gives it back.
                    if sent.is_ok() {
                        *this.tracker = w.ticket.0.take();
                    }
                    *this.waiting = None;
                    match sent {
                        Ok(future) => this.state.set(State::Calling { future }),
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    let Some(tracker) = this.tracker.take() else {
                        return Poll::Ready(result);
                    };
                    return Poll::Ready(match result {
                        Ok(stream) => Ok(tracker.answered(stream)),
                        Err(e) => {
                            tracker.failed(&e);
                            Err(e)
                        }
                    });
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

fn polled_after_completion() -> Error {
    Error::config("rate limit response future polled after completion")
}
