//! The books of one rate-limited model: what was spent when, what the
//! provider last reported, and when the next call may start.
//!
//! Pure logic over a clock passed in, so that it is tested without one.
//!
//! Calls are given *slots*, in order of arrival: a call that fits now gets
//! now; one that does not is booked at the earliest time it fits behind
//! those already booked, and sleeps until then. Each call is woken once, at
//! its own slot — no crowd of waiters woken to race for one opening — and a
//! call that cannot start before its deadline knows at once.
//!
//! A slot must satisfy every constraint at once, and each constraint, once
//! met, stays met as time goes on. So the earliest slot is the latest of the
//! earliest times each constraint allows:
//!
//! - the configured budget, per limit: at most the budget spent in any 60 s
//!   window (a sliding window, the strictest reading of "per minute", which
//!   no server-side algorithm — fixed window, sliding window or token
//!   bucket — refuses);
//! - the provider's last report, per limit: no more than `remaining` before
//!   its reset, and no faster than the token bucket the report implies
//!   (capacity `limit`, refilled at `(limit - remaining) / reset`, the rate
//!   at which it would be full again at the reset);
//! - a pause after a 429, for the time the provider asked or a backoff.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::headers::{Quota, RateLimitInfo};

/// The budget's window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// No call is booked further ahead than this, whatever a header says.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// The first pause after a 429 that named no delay; doubled for each 429 in
/// a row, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(32);

/// The limits, in this order: requests, tokens (input and output
/// together), input tokens, output tokens.
pub(crate) const LIMITS: usize = 4;

/// An amount for each limit.
pub(crate) type Amounts = [u64; LIMITS];

/// What a call costs, by the request: one request, and its estimated tokens.
pub(crate) fn amounts(input: u64, output: u64) -> Amounts {
    [1, input.saturating_add(output), input, output]
}

/// Why a call gets no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A budget of zero.
    ZeroBudget,
    /// The slot is `wait` away, past the call's deadline.
    Deadline { wait: Duration },
    /// The slot is `wait` away, and as many calls as may wait already do.
    QueueFull { wait: Duration },
}

/// A call's place in the books.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Booking {
    /// When it may start.
    pub(crate) at: Instant,
    seq: u64,
    /// What was booked, by the estimate (and charged to the provider's
    /// report).
    need: Amounts,
    reports: u64,
    pauses: u64,
}

/// What calls booked within one [`GRANULE`] spent, together.
#[derive(Debug)]
struct Entry {
    /// The first call's slot.
    first: Instant,
    /// The last call's slot: the entry counts until this leaves the window,
    /// never before any of its calls does.
    at: Instant,
    seq: u64,
    spend: Amounts,
}

/// Calls booked this close together share an entry: the log holds at most
/// a window's worth of granules however fast calls come, at the cost of
/// counting some calls up to a granule longer than they need be.
const GRANULE: Duration = Duration::from_millis(1);

/// The entry number of a call whose entry has left the window.
const NO_ENTRY: u64 = u64::MAX;

#[derive(Debug, Default)]
pub(crate) struct Books {
    /// Calls booked in the last window and ahead, in slot order.
    log: VecDeque<Entry>,
    /// The sum of `log`'s spends.
    sums: Amounts,
    next_seq: u64,
    /// The latest slot given: later calls queue behind it.
    last_slot: Option<Instant>,
    reported: [Option<Reported>; LIMITS],
    /// Counts reports absorbed, so a cancel only gives back to the report it
    /// was charged to.
    reports: u64,
    pause_until: Option<Instant>,
    /// Counts pauses, so a sleeping call knows one began.
    pauses: u64,
    /// 429s in a row.
    strikes: u32,
}

/// One limit as the provider last reported it.
#[derive(Debug, Clone, Copy)]
struct Reported {
    /// Until the reset, at most `left` more.
    reset_at: Instant,
    left: u64,
    /// When the limit is known.
    bucket: Option<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    /// The level at `at`; negative when more is booked than reported.
    level: f64,
    at: Instant,
    /// Refill per second; positive.
    rate: f64,
}

impl Bucket {
    fn level_at(&self, t: Instant) -> f64 {
        let elapsed = t.saturating_duration_since(self.at).as_secs_f64();
        (self.level + self.rate * elapsed).min(self.capacity)
    }
}

/// `at + wait`, with the wait bounded by [`MAX_WAIT`] from `now` (so that
/// no arithmetic on an `Instant` can overflow).
fn after(now: Instant, at: Instant, wait: Duration) -> Instant {
    let limit = now + MAX_WAIT;
    at.checked_add(wait).map_or(limit, |t| t.min(limit))
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(MAX_WAIT)
}

impl Books {
    /// Books a call needing `need`, with `budget` per minute for each limit
    /// (`None`: no budget), to start no later than `deadline`.
    pub(crate) fn book(
        &mut self,
        budget: &[Option<u64>; LIMITS],
        need: Amounts,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Booking, Refusal> {
        self.expire(now);
        let mut t = now;
        for later in [self.last_slot, self.pause_until].into_iter().flatten() {
            t = t.max(later);
        }
        for (i, limit) in budget.iter().enumerate() {
            match *limit {
                Some(0) => return Err(Refusal::ZeroBudget),
                Some(b) => t = t.max(self.room_in_window(i, t, need[i].min(b), b, now)),
                None => {}
            }
        }
        for (i, r) in self.reported.iter().enumerate() {
            if let Some(r) = r {
                t = t.max(r.earliest(t, need[i], now));
            }
        }
        let t = t.min(now + MAX_WAIT);
        if t > now
            && let Some(deadline) = deadline
            && t > deadline
        {
            return Err(Refusal::Deadline { wait: t - now });
        }
        Ok(self.commit(t, need))
    }

    fn commit(&mut self, t: Instant, need: Amounts) -> Booking {
        let seq = self.record(t, need);
        for (i, r) in self.reported.iter_mut().enumerate() {
            if let Some(r) = r {
                r.charge(t, need[i]);
            }
        }
        self.last_slot = Some(t);
        Booking {
            at: t,
            seq,
            need,
            reports: self.reports,
            pauses: self.pauses,
        }
    }

    /// Adds `spend` at `t` (no earlier than any entry) to the log: to the
    /// last entry if it began less than a granule before. Returns the
    /// entry's number.
    fn record(&mut self, t: Instant, spend: Amounts) -> u64 {
        add(&mut self.sums, &spend);
        if let Some(last) = self.log.back_mut()
            && t.saturating_duration_since(last.first) < GRANULE
        {
            last.at = last.at.max(t);
            add(&mut last.spend, &spend);
            return last.seq;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.log.push_back(Entry {
            first: t,
            at: t,
            seq,
            spend,
        });
        seq
    }

    /// The earliest time from `t` at which `need` fits in a window of
    /// `budget` for limit `i`. Every entry is at or before `t`, so later
    /// times only let entries out.
    fn room_in_window(
        &self,
        i: usize,
        t: Instant,
        need: u64,
        budget: u64,
        now: Instant,
    ) -> Instant {
        let mut sum = self.sums[i];
        let mut entries = self.log.iter();
        // Entries out of the window at `t` (none when `t` is now: expired).
        let mut first_in = None;
        for e in entries.by_ref() {
            if after(now, e.at, WINDOW) > t {
                first_in = Some(e);
                break;
            }
            sum = sum.saturating_sub(e.spend[i]);
        }
        if sum.saturating_add(need) <= budget {
            return t;
        }
        // Let entries out, oldest first, until the call fits.
        for e in first_in.into_iter().chain(entries) {
            sum = sum.saturating_sub(e.spend[i]);
            if sum.saturating_add(need) <= budget {
                return after(now, e.at, WINDOW);
            }
        }
        // Unreachable: with every entry out, `need <= budget` fits. Stay
        // correct regardless.
        t
    }

    /// Gives a booking back: the call will not be sent (its caller gave up,
    /// or it is booked again after a pause).
    pub(crate) fn cancel(&mut self, booking: &Booking) {
        if let Some(e) = self.entry_mut(booking.seq) {
            sub(&mut e.spend, &booking.need);
            sub(&mut self.sums, &booking.need);
        }
        if booking.reports == self.reports {
            for (i, r) in self.reported.iter_mut().enumerate() {
                if let Some(r) = r {
                    r.refund(booking.at, booking.need[i]);
                }
            }
        }
    }

    /// A sleeping call woke at its slot: `None` if it may go, else its new
    /// booking (or refusal) because a pause began after it was booked and
    /// covers its slot.
    pub(crate) fn recheck(
        &mut self,
        booking: &Booking,
        budget: &[Option<u64>; LIMITS],
        now: Instant,
        deadline: Option<Instant>,
    ) -> Option<Result<Booking, Refusal>> {
        let paused = booking.pauses != self.pauses
            && self.pause_until.is_some_and(|p| p > booking.at && p > now);
        if !paused {
            return None;
        }
        self.cancel(booking);
        Some(self.book(budget, booking.need, now, deadline))
    }

    /// The answer reported what the call really used: the books are
    /// corrected from the estimate.
    pub(crate) fn correct(&mut self, booking: &mut Booking, input: u64, output: u64, now: Instant) {
        let actual = amounts(input, output);
        // Corrections replace each other: `booking.need` is what is on the
        // books for the call so far.
        let on_books = booking.need;
        booking.need = actual;
        if let Some(e) = self.entry_mut(booking.seq)
            && after(now, e.at, WINDOW) > now
        {
            sub(&mut e.spend, &on_books);
            add(&mut e.spend, &actual);
            sub(&mut self.sums, &on_books);
            add(&mut self.sums, &actual);
            return;
        }
        self.expire(now);
        // The call outlived the window: charge what it used beyond the
        // estimate now (behind the queue, to keep the log in order).
        let mut excess = [0; LIMITS];
        for (i, x) in excess.iter_mut().enumerate().skip(1) {
            *x = actual[i].saturating_sub(on_books[i]);
        }
        // From now on the call has no entry of its own: a later report
        // charges only what it adds to this one.
        booking.seq = NO_ENTRY;
        if excess.iter().any(|&x| x > 0) {
            let at = self.last_slot.map_or(now, |l| l.max(now));
            self.record(at, excess);
            self.last_slot = Some(at);
        }
    }

    /// Takes in what a response reported. Calls booked ahead of `now` are
    /// not in the report yet: they are taken off it.
    pub(crate) fn absorb(&mut self, info: &RateLimitInfo, now: Instant) {
        let mut ahead = [0; LIMITS];
        for e in self.log.iter().rev().take_while(|e| e.at > now) {
            add(&mut ahead, &e.spend);
        }
        let mut any = false;
        for (i, quota) in info.quotas().into_iter().enumerate() {
            if let Some(r) = quota.and_then(|q| Reported::new(q, now, ahead[i])) {
                self.reported[i] = Some(r);
                any = true;
            }
        }
        if any {
            self.reports += 1;
        }
    }

    /// The provider answered: 429s are no longer in a row.
    pub(crate) fn succeeded(&mut self) {
        self.strikes = 0;
    }

    /// The provider refused a call for its rate: every call waits
    /// `retry_after`, or a backoff that doubles with each 429 in a row.
    pub(crate) fn rate_limited(&mut self, retry_after: Option<Duration>, now: Instant) {
        self.strikes = self.strikes.saturating_add(1);
        let wait = retry_after.unwrap_or_else(|| {
            let doublings = self.strikes.saturating_sub(1).min(16);
            BASE_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
        });
        let until = after(now, now, wait);
        if self.pause_until.is_none_or(|p| p < until) {
            self.pause_until = Some(until);
            self.pauses += 1;
        }
    }

    /// Nothing booked and no pause: the books can be dropped.
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        self.log.iter().all(|e| after(now, e.at, WINDOW) <= now)
            && self.pause_until.is_none_or(|p| p <= now)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(e) = self.log.front() {
            if after(now, e.at, WINDOW) > now {
                break;
            }
            sub(&mut self.sums, &e.spend);
            self.log.pop_front();
        }
        if self.pause_until.is_some_and(|p| p <= now) {
            self.pause_until = None;
        }
    }

    /// How many entries the log holds.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.log.len()
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = self.log.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.log.get_mut(i)
    }
}

impl Reported {
    fn new(q: Quota, now: Instant, ahead: u64) -> Option<Reported> {
        let remaining = q.remaining?;
        let reset = q.reset.unwrap_or(Duration::ZERO).min(MAX_WAIT);
        let bucket = q.limit.filter(|&l| l > 0).map(|limit| {
            let (l, r) = (limit as f64, remaining as f64);
            let rate = if l > r && !reset.is_zero() {
                (l - r) / reset.as_secs_f64()
            } else {
                // Nothing spent, or no reset given: assume the shortest
                // period providers use, a minute.
                l / WINDOW.as_secs_f64()
            };
            Bucket {
                capacity: l,
                level: r.min(l) - ahead as f64,
                at: now,
                rate,
            }
        });
        Some(Reported {
            reset_at: now + reset,
            left: remaining.saturating_sub(ahead),
            bucket,
        })
    }

    /// The earliest time from `t` at which `need` fits.
    fn earliest(&self, t: Instant, need: u64, now: Instant) -> Instant {
        let mut at = t;
        if at < self.reset_at && self.left < need {
            at = self.reset_at;
        }
        if let Some(b) = &self.bucket {
            let need = (need as f64).min(b.capacity);
            let level = b.level_at(at);
            if level < need {
                at = after(now, at, secs((need - level) / b.rate));
            }
        }
        at
    }

    /// Charges `need` at `t`.
    fn charge(&mut self, t: Instant, need: u64) {
        if t < self.reset_at {
            self.left = self.left.saturating_sub(need);
        }
        if let Some(b) = &mut self.bucket {
            b.level = b.level_at(t) - (need as f64).min(b.capacity);
            b.at = b.at.max(t);
        }
    }

    fn refund(&mut self, at: Instant, amount: u64) {
        if at < self.reset_at {
            self.left = self.left.saturating_add(amount);
        }
        if let Some(b) = &mut self.bucket {
            b.level = (b.level + (amount as f64).min(b.capacity)).min(b.capacity);
        }
    }
}

fn add(to: &mut Amounts, x: &Amounts) {
    for (a, b) in to.iter_mut().zip(x) {
        *a = a.saturating_add(*b);
    }
}

fn sub(from: &mut Amounts, x: &Amounts) {
    for (a, b) in from.iter_mut().zip(x) {
        *a = a.saturating_sub(*b);
    }
}
