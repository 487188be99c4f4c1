//! The steps of a call booked in books on Redis: the booking, and the
//! recheck after a wait, each a future the response future drives. While
//! Redis is out, the store's [`OnOutage`] decides: this process's books,
//! or a refusal.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::redis::{Booked, OnOutage, RemoteBooking, SharedBooks};
use crate::{ChatRequest, Error};

use super::books::{Books, Refusal};
use super::tracker::{Ledger, Remote, Tracker};
use super::{Shared, estimate};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A step on Redis under way.
pub(super) enum Pending {
    /// The booking: the call's tracker, or why it is refused.
    Book(Boxed<Result<Tracker, Error>>),
    /// The recheck after a wait.
    Recheck(Boxed<Recheck>),
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
    Pending::Book(Box::pin(async move {
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
                OnOutage::Refuse => Err(crate::redis::refused("rate limit", remote.store())),
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
    Some(Pending::Recheck(Box::pin(async move {
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
