//! The pool's [`ResponseFuture`]: one attempt, or two raced when the call
//! is hedged, each read up to its first output event.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::time::Sleep;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::call::CallHandle;
use crate::engine::Priming;
use crate::{ChatRequest, ChatStream, Error};

use super::health::Outcome;
use super::{Open, Shared, Svc};

/// The [`Pool`](super::Pool)'s response future.
pub struct ResponseFuture {
    state: State,
}

enum State {
    /// Waiting for the cooldowns other processes set (a pool just built
    /// on shared cooldowns), within a bound, before the pick.
    #[cfg(feature = "redis")]
    Syncing(Box<Syncing>),
    /// No deployment took the call.
    Failed(Option<Error>),
    Racing(Box<Race>),
}

/// A call waiting for the pool's first read of the shared cooldowns.
#[cfg(feature = "redis")]
struct Syncing {
    shared: Arc<Shared>,
    req: Option<ChatRequest>,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
}

struct Race {
    shared: Arc<Shared>,
    call: CallHandle,
    /// A copy of the request for the hedge, while one may start.
    req: Option<ChatRequest>,
    attempts: [Option<Attempt>; 2],
    hedge_at: Option<Pin<Box<Sleep>>>,
    last_error: Option<Error>,
}

struct Attempt {
    open: Option<Open>,
    stage: Stage,
}

// Inside the boxed race: the size of the priming stage costs no move.
#[allow(clippy::large_enum_variant)]
enum Stage {
    Calling(Oneshot<Svc, ChatRequest>),
    Priming(Priming),
}

impl ResponseFuture {
    pub(super) fn new(shared: Arc<Shared>, req: ChatRequest) -> Self {
        shared.calls.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "redis")]
        {
            shared.listen();
            if let Some(wait) = shared.sync() {
                return ResponseFuture {
                    state: State::Syncing(Box::new(Syncing {
                        shared,
                        req: Some(req),
                        wait,
                    })),
                };
            }
        }
        Self::pick(shared, req)
    }

    /// Picks the deployment and starts the call there.
    fn pick(shared: Arc<Shared>, mut req: ChatRequest) -> Self {
        let call = req.call();
        let id = shared.id();
        // A retried attempt goes where the call has not been, if it can.
        let index = match shared.pick(|i| call.has_tried(id, i), |_| false) {
            Ok(index) => index,
            Err(soonest) => {
                return ResponseFuture {
                    state: State::Failed(Some(shared.exhausted(soonest))),
                };
            }
        };
        let (hedge_req, hedge_at) = match shared.hedge {
            Some(h) if h.budget > 0.0 && shared.deployments.len() > 1 => (
                Some(req.clone()),
                Some(Box::pin(tokio::time::sleep(h.after))),
            ),
            _ => (None, None),
        };
        let primary = start(&shared, &call, index, req);
        ResponseFuture {
            state: State::Racing(Box::new(Race {
                shared,
                call,
                req: hedge_req,
                attempts: [Some(primary), None],
                hedge_at,
                last_error: None,
            })),
        }
    }
}

/// Sends `req` to deployment `index`, counting it there.
fn start(shared: &Arc<Shared>, call: &CallHandle, index: usize, req: ChatRequest) -> Attempt {
    call.tried(shared.id(), index);
    let svc = crate::lock(&shared.deployments[index].service).clone();
    Attempt {
        open: Some(Open {
            shared: shared.clone(),
            index,
        }),
        stage: Stage::Calling(svc.oneshot(req)),
    }
}

/// An attempt dropped before it ended (the hedge race's loser, a call the
/// caller gave up) says nothing about its deployment — but a probe must not
/// stay under way for ever: the next call probes again.
impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            open.shared.record(open.index, Outcome::Neutral, None, None);
        }
    }
}

impl Attempt {
    fn index(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.index)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<ChatStream, Error>> {
        loop {
            match &mut self.stage {
                Stage::Calling(f) => match Pin::new(f).poll(cx) {
                    Poll::Ready(Ok(stream)) => self.stage = Stage::Priming(Priming::new(stream)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                Stage::Priming(p) => return p.poll(cx),
            }
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<ChatStream, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        #[cfg(feature = "redis")]
        if let State::Syncing(syncing) = &mut self.state {
            if syncing.wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(req) = syncing.req.take() else {
                return Poll::Ready(Err(polled_after_completion()));
            };
            let shared = syncing.shared.clone();
            *self = Self::pick(shared, req);
        }
        let race = match &mut self.state {
            State::Failed(e) => {
                return Poll::Ready(Err(e.take().unwrap_or_else(polled_after_completion)));
            }
            State::Racing(race) => race,
            // Left just above: the pick never waits again.
            #[cfg(feature = "redis")]
            State::Syncing(_) => {
                return Poll::Ready(Err(polled_after_completion()));
            }
        };
        race.poll(cx)
    }
}

impl Race {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<ChatStream, Error>> {
        loop {
            for slot in 0..self.attempts.len() {
                let Some(attempt) = self.attempts[slot].as_mut() else {
                    continue;
                };
                match attempt.poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(stream)) => return Poll::Ready(Ok(self.won(slot, stream))),
                    Poll::Ready(Err(e)) => {
                        let open = attempt.open.take();
                        self.attempts[slot] = None;
                        if let Some(open) = open {
                            self.shared
                                .record(open.index, Outcome::of(&e), None, Some(&e));
                        }
                        self.last_error = Some(e);
                    }
                }
            }
            if self.attempts.iter().all(Option::is_none) {
                self.hedge_at = None;
                return Poll::Ready(Err(self
                    .last_error
                    .take()
                    .unwrap_or_else(polled_after_completion)));
            }
            let Some(timer) = self.hedge_at.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.hedge_at = None;
            if !self.hedge() {
                return Poll::Pending;
            }
            // Poll the hedge once, so that it registers its wake-ups.
        }
    }

    /// Starts the hedge, if the budget and another deployment allow;
    /// whether it started.
    fn hedge(&mut self) -> bool {
        let Some(budget) = self.shared.hedge.map(|h| h.budget) else {
            return false;
        };
        let Some(req) = self.req.take() else {
            return false;
        };
        if !self.shared.may_hedge(budget) {
            return false;
        }
        let running: Vec<usize> = self.attempts.iter().flatten().map(Attempt::index).collect();
        let id = self.shared.id();
        let call = &self.call;
        // Never where the call is running: a second request there would
        // not be a hedge.
        let Ok(index) = self
            .shared
            .pick(|i| call.has_tried(id, i), |i| running.contains(&i))
        else {
            return false;
        };
        self.shared.hedged();
        let primary = running.first().copied().unwrap_or(index);
        tracing::info!(
            llm_tower.event = "hedge",
            primary = &*self.shared.deployments[primary].name,
            hedge = &*self.shared.deployments[index].name,
            "hedging a call with no output yet"
        );
        let attempt = start(&self.shared, &self.call, index, req);
        if let Some(free) = self.attempts.iter_mut().find(|a| a.is_none()) {
            *free = Some(attempt);
        }
        true
    }

    /// Attempt `slot` delivered output first: the other is dropped, and the
    /// stream carries its deployment's count and name.
    fn won(&mut self, slot: usize, mut stream: ChatStream) -> ChatStream {
        let mut winner = self.attempts[slot].take();
        for other in self.attempts.iter_mut() {
            // Dropped: its connection closes, its count ends.
            *other = None;
        }
        self.hedge_at = None;
        self.req = None;
        if let Some(open) = winner.as_mut().and_then(|a| a.open.take()) {
            let index = open.index;
            let report = stream.meta().rate_limit;
            self.shared
                .record(index, Outcome::Served, report.as_ref(), None);
            stream.meta_mut().deployment = Some(self.shared.deployments[index].name.clone());
            stream.hold(open);
        }
        stream
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Failed(e) => f.debug_tuple("ResponseFuture::Failed").field(e).finish(),
            #[cfg(feature = "redis")]
            State::Syncing(_) => f.write_str("ResponseFuture::Syncing"),
            State::Racing(race) => f
                .debug_struct("ResponseFuture")
                .field(
                    "attempts",
                    &race
                        .attempts
                        .iter()
                        .flatten()
                        .map(|a| &*race.shared.deployments[a.index()].name)
                        .collect::<Vec<_>>(),
                )
                .field("hedge_pending", &race.hedge_at.is_some())
                .finish(),
        }
    }
}

fn polled_after_completion() -> Error {
    Error::misuse("pool future polled after completion")
}
