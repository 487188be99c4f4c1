//! Rate-limit books on Redis: each step of `books.lua`, called with its
//! arguments and its reply read back.
//!
//! The rules are those of the local books (`rate_limit/books.rs`); the
//! script runs them as one atomic step on Redis's clock, so that processes
//! booking at once queue behind each other as calls in one process do.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use ::redis::Script;

use super::{RedisStore, StoreError};
use crate::headers::RateLimitInfo;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("books.lua")));

/// The limits, in the script's order: requests, tokens, input tokens,
/// output tokens.
const LIMITS: usize = 4;

/// The largest amount sent: numbers in Lua are doubles, exact to 2^53.
const MAX_AMOUNT: u64 = 1 << 53;

/// The rate-limit books of one budget, on Redis, for
/// [`RateLimitLayer::shared`](crate::RateLimitLayer::shared). Made by
/// [`RedisStore::books`].
#[derive(Clone)]
pub struct SharedBooks {
    store: RedisStore,
    namespace: Arc<str>,
    /// Per model, what this process learnt and has not sent yet.
    outboxes: Arc<Mutex<HashMap<String, Outbox>>>,
}

impl fmt::Debug for SharedBooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBooks")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A call's place in the shared books: what is needed to give it back or
/// correct it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemoteBooking {
    /// What is on the books for the call.
    pub(crate) need: [u64; LIMITS],
    /// Its slot, in µs on Redis's clock.
    slot: i64,
    reports: i64,
    pauses: i64,
    /// Whether 429s in a row were counted when it was booked: an answer
    /// must then say they ended.
    strikes: bool,
}

/// The shared books' answer to a booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Booked {
    /// Booked: the call may start after `wait`.
    Slot {
        wait: Duration,
        booking: RemoteBooking,
    },
    /// A budget is zero.
    ZeroBudget,
    /// The slot would be `wait` away, past the call's deadline.
    Deadline { wait: Duration },
}

/// A report's limits, as the script takes them.
pub(crate) type Quotas = [Option<crate::headers::Quota>; LIMITS];

fn amount(x: u64) -> u64 {
    x.min(MAX_AMOUNT)
}

fn budget_arg(b: Option<u64>) -> i64 {
    b.map_or(-1, |b| amount(b) as i64)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(1 << 53)
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// What a process learnt about one model's books since its last step,
/// sent with its next booking (or after [`FLUSH_AFTER`], if none comes):
/// one script call per call, not three.
#[derive(Default)]
struct Outbox {
    cancels: Vec<RemoteBooking>,
    /// (the call's slot, what is on the books, what was used).
    corrections: Vec<(i64, [u64; LIMITS], [u64; LIMITS])>,
    /// An answer came (429s are no longer in a row).
    answered: bool,
    /// What an answer or a failure reported last, and when it came.
    report: Option<(Quotas, Instant)>,
    /// A flush is scheduled.
    flushing: bool,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.cancels.is_empty()
            && self.corrections.is_empty()
            && !self.answered
            && self.report.is_none()
    }

    /// Its steps as the script takes them, leaving it empty.
    fn drain_into(&mut self, invocation: &mut ::redis::ScriptInvocation<'_>) {
        invocation.arg(self.cancels.len());
        for c in self.cancels.drain(..) {
            invocation.arg(c.need.as_slice()).arg(c.slot).arg(c.reports);
        }
        invocation.arg(self.corrections.len());
        for (slot, on_books, used) in self.corrections.drain(..) {
            invocation
                .arg(slot)
                .arg(on_books.as_slice())
                .arg(used.as_slice());
        }
        let answered = u8::from(std::mem::take(&mut self.answered));
        match self.report.take() {
            Some((quotas, at)) => {
                invocation.arg(answered | 2);
                invocation.arg(duration_ms(at.elapsed()));
                push_quotas(invocation, quotas);
            }
            None => {
                invocation.arg(answered);
            }
        }
    }
}

/// How long what a process learnt waits for its next booking to carry it
/// before it is sent on its own.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

impl SharedBooks {
    pub(crate) fn new(store: RedisStore, namespace: &str) -> Self {
        SharedBooks {
            store,
            namespace: namespace.into(),
            outboxes: Arc::default(),
        }
    }

    /// The store these books are on.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// The keys of `model`'s books: the log, what each granule spent, the
    /// state. The kind carries the script's version, so that processes of
    /// two versions never read each other's books.
    fn keys(&self, model: &str) -> [String; 3] {
        let base = self
            .store
            .key("rl1", &format!("{}|{model}", self.namespace));
        [
            format!("{base}:log"),
            format!("{base}:spent"),
            format!("{base}:state"),
        ]
    }

    /// A `steps` call for `model`, carrying what its outbox holds.
    fn steps(&self, model: &str) -> ::redis::ScriptInvocation<'static> {
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.keys(model).as_slice()).arg("steps");
        let mut outboxes = crate::lock(&self.outboxes);
        match outboxes.get_mut(model) {
            Some(outbox) => outbox.drain_into(&mut invocation),
            None => {
                invocation.arg(0).arg(0).arg(0);
            }
        }
        invocation
    }

    /// Puts something in `model`'s outbox, and makes sure it is sent soon.
    fn post(&self, model: &str, put: impl FnOnce(&mut Outbox)) {
        let handle = tokio::runtime::Handle::try_current().ok();
        let schedule = {
            let mut outboxes = crate::lock(&self.outboxes);
            // The model's key is allocated once, when its outbox is made.
            if !outboxes.contains_key(model) {
                if outboxes.len() >= MAX_OUTBOXES {
                    outboxes.retain(|_, o| !o.is_empty() || o.flushing);
                }
                outboxes.insert(model.to_owned(), Outbox::default());
            }
            let Some(outbox) = outboxes.get_mut(model) else {
                return;
            };
            put(outbox);
            // Without a runtime nothing can be scheduled: the next booking
            // carries it.
            handle.is_some() && !std::mem::replace(&mut outbox.flushing, true)
        };
        let Some(handle) = handle.filter(|_| schedule) else {
            return;
        };
        let this = self.clone();
        let model = model.to_owned();
        handle.spawn(async move {
            tokio::time::sleep(FLUSH_AFTER).await;
            let pending = {
                let mut outboxes = crate::lock(&this.outboxes);
                outboxes.get_mut(&model).map(|o| {
                    o.flushing = false;
                    !o.is_empty()
                })
            };
            if pending == Some(true) {
                let mut invocation = this.steps(&model);
                invocation.arg(0);
                let _ = this
                    .store
                    .run(|mut c| async move { invocation.invoke_async::<()>(&mut c).await })
                    .await;
            }
        });
    }

    /// Books a call needing `need` under `budget`, to start within
    /// `deadline` of now; what this process learnt since its last step goes
    /// with it.
    pub(crate) async fn book(
        &self,
        model: &str,
        budget: [Option<u64>; LIMITS],
        need: [u64; LIMITS],
        deadline: Option<Duration>,
    ) -> Result<Booked, StoreError> {
        let need = need.map(amount);
        let mut invocation = self.steps(model);
        invocation.arg(1);
        invocation.arg(budget.map(budget_arg).as_slice());
        invocation.arg(need.as_slice());
        invocation.arg(deadline.map_or(-1, duration_ms));
        let reply: Vec<i64> = self
            .store
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        read_booked(&reply, need)
    }

    /// A call that slept until its slot: `None` if it may go, else its new
    /// place, because a 429 paused the model (in any process) after it was
    /// booked.
    pub(crate) async fn recheck(
        &self,
        model: &str,
        booking: &RemoteBooking,
        budget: [Option<u64>; LIMITS],
        deadline: Option<Duration>,
    ) -> Result<Option<Booked>, StoreError> {
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.keys(model).as_slice()).arg("recheck");
        invocation.arg(booking.need.as_slice());
        invocation
            .arg(booking.slot)
            .arg(booking.reports)
            .arg(booking.pauses);
        invocation.arg(budget.map(budget_arg).as_slice());
        invocation.arg(deadline.map_or(-1, duration_ms));
        let reply: Vec<i64> = self
            .store
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        if reply.first() == Some(&3) {
            return Ok(None);
        }
        read_booked(&reply, booking.need).map(Some)
    }

    /// Gives a booking back.
    pub(crate) fn cancel(&self, model: &str, booking: &RemoteBooking) {
        let booking = *booking;
        self.post(model, |o| {
            if o.cancels.len() < MAX_PENDING {
                o.cancels.push(booking);
            }
        });
    }

    /// Replaces what is on the books for a call with what it `used`.
    pub(crate) fn correct(&self, model: &str, booking: &mut RemoteBooking, used: [u64; LIMITS]) {
        let used = used.map(amount);
        let (slot, on_books) = (booking.slot, booking.need);
        booking.need = used;
        self.post(model, |o| {
            if o.corrections.len() < MAX_PENDING {
                o.corrections.push((slot, on_books, used));
            }
        });
    }

    /// The answer came: 429s are no longer in a row, and what it reported
    /// goes in the books. Nothing is sent when there is nothing to say.
    pub(crate) fn answered(
        &self,
        model: &str,
        booking: &RemoteBooking,
        report: Option<&RateLimitInfo>,
    ) {
        if report.is_none() && !booking.strikes {
            return;
        }
        let report = report.map(|info| (info.quotas(), Instant::now()));
        self.post(model, |o| {
            o.answered = true;
            if report.is_some() {
                o.report = report;
            }
        });
    }

    /// What a failure reported, at once with a 429's pause (for
    /// `retry_after`, else a backoff): the other processes must stop now.
    pub(crate) fn failed(
        &self,
        model: &str,
        report: Option<&RateLimitInfo>,
        pause: Option<Option<Duration>>,
    ) {
        if let Some(info) = report {
            let report = (info.quotas(), Instant::now());
            self.post(model, |o| o.report = Some(report));
        }
        let Some(retry_after) = pause else { return };
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(self.keys(model).as_slice())
            .arg("pause")
            .arg(retry_after.map_or(-1, duration_ms));
        self.store
            .spawn(move |mut c| async move { invocation.invoke_async::<()>(&mut c).await });
    }
}

/// Past this many models with nothing pending, their outboxes are dropped.
const MAX_OUTBOXES: usize = 64;

/// At most this many cancels, and as many corrections, wait in one outbox: past it (Redis out
/// for long), the rest are dropped.
const MAX_PENDING: usize = 4096;

fn push_quotas(invocation: &mut ::redis::ScriptInvocation<'_>, quotas: Quotas) {
    for quota in quotas {
        let (limit, remaining, reset) = match quota {
            Some(q) => (
                q.limit.map_or(-1, |l| amount(l) as i64),
                q.remaining.map_or(-1, |r| amount(r) as i64),
                q.reset.map_or(0, duration_ms),
            ),
            None => (-1, -1, 0),
        };
        invocation.arg(limit).arg(remaining).arg(reset);
    }
}

/// Reads the script's reply to a booking.
fn read_booked(reply: &[i64], need: [u64; LIMITS]) -> Result<Booked, StoreError> {
    match *reply {
        [0, wait, slot, reports, pauses, strikes] => Ok(Booked::Slot {
            wait: micros(wait),
            booking: RemoteBooking {
                need,
                slot,
                reports,
                pauses,
                strikes: strikes != 0,
            },
        }),
        [1] => Ok(Booked::ZeroBudget),
        [2, wait] => Ok(Booked::Deadline { wait: micros(wait) }),
        _ => Err(StoreError::Redis(format!(
            "unexpected reply from the books script: {reply:?}"
        ))),
    }
}
