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
        // Booking on Redis.
        Booking,
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
    // Once the call knows it waits.
    pub(super) _queued: Option<Queued>,
    // A step on Redis under way.
    #[cfg(feature = "redis")]
    pub(super) pending: Option<super::remote::Pending>,
}

/// A call dropped in the middle of a step on Redis gives back what the
/// step books, once it ends.
#[cfg(feature = "redis")]
impl<S> Drop for Waiting<S> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.abandon(self.ticket.0.take());
        }
    }
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

    /// A call being booked on Redis.
    #[cfg(feature = "redis")]
    pub(super) fn booking(waiting: Waiting<S>) -> Self {
        ResponseFuture {
            state: State::Booking,
            waiting: Some(Box::new(waiting)),
            tracker: None,
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
                #[cfg(not(feature = "redis"))]
                StateProj::Booking => {
                    this.state.set(State::Done);
                    return Poll::Ready(Err(polled_after_completion()));
                }
                #[cfg(feature = "redis")]
                StateProj::Booking => {
                    use super::remote::Pending;
                    let Some(w) = this.waiting.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let Some(Pending::Book(book)) = w.pending.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let booked = ready!(book.poll(cx)).unwrap_or_else(|| {
                        Err(Error::config(
                            "rate limit: the booking step on Redis was lost",
                        ))
                    });
                    w.pending = None;
                    let tracker = match booked {
                        Ok(t) => t,
                        Err(e) => {
                            *this.waiting = None;
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let now = Instant::now();
                    if tracker.at() > now {
                        let shared = tracker.shared.clone();
                        match Queued::enter_for(&shared, tracker, now) {
                            Ok((queued, tracker)) => {
                                shared.waits(tracker.at() - now);
                                w._queued = Some(queued);
                                w.ticket.0 = Some(tracker);
                            }
                            Err(e) => {
                                *this.waiting = None;
                                this.state.set(State::Done);
                                return Poll::Ready(Err(e));
                            }
                        }
                        this.state.set(State::Waiting);
                    } else {
                        w.ticket.0 = Some(tracker);
                        this.state.set(State::Readying);
                    }
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
                    let at = t.at();
                    let sleep = w
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    ready!(sleep.as_mut().poll(cx));
                    #[cfg(feature = "redis")]
                    {
                        use super::remote::{Pending, Recheck, recheck};
                        if w.pending.is_none() {
                            w.pending = recheck(t);
                        }
                        if let Some(Pending::Recheck(step)) = w.pending.as_mut() {
                            let next = ready!(step.poll(cx)).unwrap_or(Recheck::Go);
                            w.pending = None;
                            match next {
                                Recheck::Go => this.state.set(State::Readying),
                                Recheck::Moved { booking, at } => {
                                    if let super::tracker::Ledger::Remote(r) = &mut t.ledger {
                                        r.booking = booking;
                                        r.at = at;
                                    }
                                    sleep.as_mut().reset(at);
                                }
                                Recheck::Refused(error) => {
                                    // The script gave the old booking back.
                                    w.ticket.0 = None;
                                    *this.waiting = None;
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(error));
                                }
                            }
                            continue;
                        }
                    }
                    // One arm without the `redis` feature.
                    #[cfg_attr(
                        not(feature = "redis"),
                        allow(clippy::infallible_destructuring_match)
                    )]
                    let booking = match &mut t.ledger {
                        super::tracker::Ledger::Local(booking) => booking,
                        #[cfg(feature = "redis")]
                        super::tracker::Ledger::Remote(_) => {
                            this.state.set(State::Readying);
                            continue;
                        }
                    };
                    let recheck = lock(&t.books).recheck(
                        booking,
                        &t.shared.budget,
                        Instant::now(),
                        t.deadline,
                    );
                    match recheck {
                        None => this.state.set(State::Readying),
                        // A 429 paused the model while this call slept.
                        Some(Ok(new)) => {
                            *booking = new;
                            sleep.as_mut().reset(new.at);
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
    Error::misuse("rate limit response future polled after completion")
}
