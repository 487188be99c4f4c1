//! Rate-limit books on Redis: each step of `books.lua`, called with its
//! arguments and its reply read back.
//!
//! The rules are those of the local books (`rate_limit/books.rs`); the
//! script runs them as one atomic step on Redis's clock, so that processes
//! booking at once queue behind each other as calls in one process do.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

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
    seq: i64,
    /// What is on the books for the call.
    pub(crate) need: [u64; LIMITS],
    /// Its slot, in ms on Redis's clock.
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

impl SharedBooks {
    pub(crate) fn new(store: RedisStore, namespace: &str) -> Self {
        SharedBooks {
            store,
            namespace: namespace.into(),
        }
    }

    /// The store these books are on.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// The log and state keys of `model`'s books.
    fn keys(&self, model: &str) -> [String; 2] {
        let base = self.store.key("rl", &format!("{}|{model}", self.namespace));
        [format!("{base}:log"), format!("{base}:state")]
    }

    /// Books a call needing `need` under `budget`, to start within
    /// `deadline` of now.
    pub(crate) async fn book(
        &self,
        model: &str,
        budget: [Option<u64>; LIMITS],
        need: [u64; LIMITS],
        deadline: Option<Duration>,
    ) -> Result<Booked, StoreError> {
        let need = need.map(amount);
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.keys(model).as_slice()).arg("book");
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
        invocation.arg(booking.seq).arg(booking.need.as_slice());
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

    /// Gives a booking back, in the background.
    pub(crate) fn cancel(&self, model: &str, booking: &RemoteBooking) {
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.keys(model).as_slice()).arg("cancel");
        invocation.arg(booking.seq).arg(booking.need.as_slice());
        invocation.arg(booking.slot).arg(booking.reports);
        self.store
            .spawn(move |mut c| async move { invocation.invoke_async::<()>(&mut c).await });
    }

    /// Replaces what is on the books for a call with what it `used`, in the
    /// background.
    pub(crate) fn correct(&self, model: &str, booking: &mut RemoteBooking, used: [u64; LIMITS]) {
        let used = used.map(amount);
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.keys(model).as_slice()).arg("correct");
        invocation.arg(booking.seq).arg(booking.need.as_slice());
        invocation.arg(used.as_slice());
        booking.need = used;
        self.store
            .spawn(move |mut c| async move { invocation.invoke_async::<()>(&mut c).await });
    }

    /// The answer came: 429s are no longer in a row, and what it reported
    /// goes in the books. In the background, and only when there is
    /// something to write.
    pub(crate) fn answered(
        &self,
        model: &str,
        booking: &RemoteBooking,
        report: Option<&RateLimitInfo>,
    ) {
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.keys(model).as_slice());
        match report {
            Some(info) => {
                invocation.arg("absorb");
                push_quotas(&mut invocation, info.quotas());
            }
            None if booking.strikes => {
                invocation.arg("ok");
            }
            None => return,
        }
        self.store
            .spawn(move |mut c| async move { invocation.invoke_async::<()>(&mut c).await });
    }

    /// What a failure reported, and a 429's pause (for `retry_after`, else
    /// a backoff), in the background, in that order.
    pub(crate) fn failed(
        &self,
        model: &str,
        report: Option<&RateLimitInfo>,
        pause: Option<Option<Duration>>,
    ) {
        let keys = self.keys(model);
        let absorb = report.map(|info| {
            let mut invocation = SCRIPT.prepare_invoke();
            invocation.key(keys.as_slice()).arg("absorb");
            push_quotas(&mut invocation, info.quotas());
            invocation
        });
        let pause = pause.map(|retry_after| {
            let mut invocation = SCRIPT.prepare_invoke();
            invocation
                .key(keys.as_slice())
                .arg("pause")
                .arg(retry_after.map_or(-1, duration_ms));
            invocation
        });
        if absorb.is_none() && pause.is_none() {
            return;
        }
        self.store.spawn(move |mut c| async move {
            if let Some(absorb) = absorb {
                absorb.invoke_async::<()>(&mut c).await?;
            }
            if let Some(pause) = pause {
                pause.invoke_async::<()>(&mut c).await?;
            }
            Ok(())
        });
    }
}

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
        [0, wait, seq, slot, reports, pauses, strikes] => Ok(Booked::Slot {
            wait: micros(wait),
            booking: RemoteBooking {
                seq,
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
