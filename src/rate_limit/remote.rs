//! The steps of a call booked in books on Redis: the booking, and the
//! recheck after a wait, each a future the response future drives — and
//! finishes in a task of its own if the call is dropped in the middle of
//! one, so that what the step did is undone once it ends. While Redis is out, the store's
//! [`OnOutage`] decides: this process's books, or a refusal.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::time::Instant;

use crate::redis::{Booked, OnOutage, RemoteBooking, SharedBooks};
use crate::{ChatRequest, Error};

use super::books::{Books, Refusal};
use super::tracker::{Ledger, Remote, Ticket, Tracker};
use super::{Shared, estimate};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A step on Redis under way.
pub(super) enum Pending {
    /// The booking: the call's tracker, or why it is refused.
    Book(Step<Result<Tracker, Error>>),
    /// The recheck after a wait.
    Recheck(Step<Recheck>),
}

/// A step's future, polled in place. A call dropped while it is under way
/// hands it to a task of its own, which finishes it and undoes what it did:
/// nothing is spawned unless a call goes away mid-step.
pub(super) struct Step<T>(Option<Boxed<T>>);

impl<T: Send + 'static> Step<T> {
    fn new(step: impl Future<Output = T> + Send + 'static) -> Self {
        Step(Some(Box::pin(step)))
    }

    /// The step's outcome; `None` if polled again after it.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(step) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let done = std::task::ready!(step.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(Some(done))
    }

    /// The call went away: `undo` what the step did once it ends, with its
    /// outcome; at once with `None` when that cannot be known (it ended
    /// already, or there is no runtime to finish it on).
    fn abandon(mut self, undo: impl FnOnce(Option<T>) + Send + 'static) {
        match (self.0.take(), tokio::runtime::Handle::try_current()) {
            (Some(step), Ok(runtime)) => {
                runtime.spawn(async move { undo(Some(step.await)) });
            }
            _ => undo(None),
        }
    }
}

impl Pending {
    /// The call went away in the middle of this step, holding `ticket` (the
    /// booking it had before the step): whatever the step leaves booked is
    /// given back once it ends — the new booking, or the old one if the
    /// step kept it — and nothing twice.
    pub(super) fn abandon(self, ticket: Option<Tracker>) {
        match self {
            Pending::Book(step) => step.abandon(|booked| {
                if let Some(Ok(tracker)) = booked {
                    drop(Ticket(Some(tracker)));
                }
            }),
            Pending::Recheck(step) => step.abandon(move |next| match (next, ticket) {
                (Some(Recheck::Moved { booking, .. }), Some(mut t)) => {
                    if let Ledger::Remote(r) = &mut t.ledger {
                        r.booking = booking;
                    }
                    drop(Ticket(Some(t)));
                }
                // The script gave the old booking back, and made no new
                // one.
                (Some(Recheck::Refused(_)), _) => {}
                (_, held) => drop(Ticket(held)),
            }),
        }
    }
}

/// What a call that slept until its slot does.
pub(super) enum Recheck {
    /// Go: no pause began, or Redis could not say.
    Go,
    /// A 429 paused the model meanwhile: its new place.
    Moved { booking: RemoteBooking, at: Instant },
    /// Its new place is past its deadline (the old one was given back).
    Refused(Error),
}

/// Books `request` on `remote`, or, while Redis is out, as the store says.
pub(super) fn book(
    remote: &SharedBooks,
    shared: &Arc<Shared>,
    local: Arc<Mutex<Books>>,
    request: &ChatRequest,
    deadline: Option<Instant>,
) -> Pending {
    let remote = remote.clone();
    let shared = shared.clone();
    let model: Arc<str> = Arc::from(&*request.model);
    let (input, output) = estimate(request);
    Pending::Book(Step::new(async move {
        let need = super::books::amounts(input, output);
        let now = Instant::now();
        let within = deadline.map(|d| d.saturating_duration_since(now));
        let booked = remote.book(&model, shared.budget, need, within).await;
        let now = Instant::now();
        match booked {
            Ok(Booked::Slot { wait, booking }) => Ok(Tracker {
                shared,
                books: local,
                ledger: Ledger::Remote(Remote {
                    books: remote,
                    model,
                    booking,
                    at: crate::later_or_far(now, wait),
                    used: None,
                }),
                deadline,
            }),
            Ok(Booked::ZeroBudget) => Err(shared.refused(Refusal::ZeroBudget)),
            Ok(Booked::Deadline { wait }) => Err(shared.refused(Refusal::Deadline { wait })),
            Err(_) => match remote.store().on_outage() {
                OnOutage::Refuse => {
                    shared.count_refusal("shared_state_unavailable");
                    Err(crate::redis::refused("rate limit", remote.store()))
                }
                _ => shared.book_locally(local, input, output, deadline, now),
            },
        }
    }))
}

/// Asks Redis whether a call that slept until its slot may go.
pub(super) fn recheck(tracker: &Tracker) -> Option<Pending> {
    let Ledger::Remote(r) = &tracker.ledger else {
        return None;
    };
    let remote = r.books.clone();
    let model = r.model.clone();
    let booking = r.booking;
    let shared = tracker.shared.clone();
    let deadline = tracker.deadline;
    Some(Pending::Recheck(Step::new(async move {
        let now = Instant::now();
        let within = deadline.map(|d| d.saturating_duration_since(now));
        match remote
            .recheck(&model, &booking, shared.budget, within)
            .await
        {
            Ok(None) | Err(_) => Recheck::Go,
            Ok(Some(Booked::Slot { wait, booking })) => Recheck::Moved {
                booking,
                at: crate::later_or_far(Instant::now(), wait),
            },
            Ok(Some(Booked::ZeroBudget)) => Recheck::Refused(shared.refused(Refusal::ZeroBudget)),
            Ok(Some(Booked::Deadline { wait })) => {
                Recheck::Refused(shared.refused(Refusal::Deadline { wait }))
            }
        }
    })))
}
