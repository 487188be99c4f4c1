//! One deployment's standing in its pool: whether it is in service, its
//! open streams, its recent failures and the headroom it last reported —
//! and the cost the pick compares. Pure bookkeeping, no I/O.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, RateLimitInfo};

/// Whether a deployment takes calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// It takes calls.
    InService,
    /// Out until then; after it, one probe call decides.
    CoolingDown {
        /// When the probe may go.
        until: Instant,
    },
    /// A probe call is under way; no other call goes until it ends.
    Probing,
    /// Refused its credential (401, 403): out until
    /// [`Pool::credential_changed`](super::Pool::credential_changed).
    Locked,
}

/// The pool's settings for taking deployments out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breaker {
    /// This many failures within `window`, if they are at least
    /// `failure_rate` of the calls there, take a deployment out.
    pub(crate) failures: u32,
    pub(crate) window: Duration,
    pub(crate) failure_rate: f64,
    /// The first cooldown; each failed probe doubles it, up to `max`.
    pub(crate) cooldown: Duration,
    pub(crate) max_cooldown: Duration,
}

/// How a call ended for the deployment that served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Output came, or the answer ended cleanly.
    Served,
    /// Refused for now: out for this long.
    RateLimited(Option<Duration>),
    /// Overloaded, a 5xx, a transport failure or a timeout: counts toward
    /// the breaker.
    Failed,
    /// The credential was refused.
    Refused,
    /// The request's fault (400, 404…), or a cancelled call: says nothing
    /// about the deployment.
    Neutral,
}

impl Outcome {
    /// What `error`, before any output, says about the deployment that
    /// gave it: read from the error's class, never from its text.
    pub(crate) fn of(error: &Error) -> Outcome {
        match error {
            Error::RateLimited { retry_after, .. } => Outcome::RateLimited(*retry_after),
            Error::Overloaded { .. }
            | Error::Server { .. }
            | Error::Transport { .. }
            | Error::Timeout { .. }
            | Error::Decode { .. } => Outcome::Failed,
            Error::Unauthorized { .. } | Error::Forbidden { .. } => Outcome::Refused,
            _ => Outcome::Neutral,
        }
    }
}

/// What the last answer's rate-limit headers said is left.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Headroom {
    requests: Option<Left>,
    tokens: Option<Left>,
}

/// One limit's state as last reported.
#[derive(Debug, Clone, Copy)]
struct Left {
    remaining: u64,
    limit: Option<u64>,
    /// When it is full again.
    reset: Option<Instant>,
}

impl Left {
    fn read(quota: Option<crate::headers::Quota>, now: Instant) -> Option<Left> {
        let q = quota?;
        Some(Left {
            remaining: q.remaining?,
            limit: q.limit,
            reset: q.reset.map(|d| crate::later_or_far(now, d)),
        })
    }

    /// Whether its reset has come, so that what it said no longer holds.
    fn stale(&self, now: Instant) -> bool {
        self.reset.is_some_and(|r| r <= now)
    }
}

impl Headroom {
    pub(crate) fn update(&mut self, info: &RateLimitInfo, now: Instant) {
        if let Some(left) = Left::read(info.requests, now) {
            self.requests = Some(left);
        }
        if let Some(left) = Left::read(info.tokens, now) {
            self.tokens = Some(left);
        }
    }

    /// Until when the deployment said it has nothing left, if it did and
    /// that time has not come.
    pub(crate) fn exhausted_until(&self, now: Instant) -> Option<Instant> {
        [self.requests, self.tokens]
            .into_iter()
            .flatten()
            .filter(|left| left.remaining == 0 && !left.stale(now))
            .filter_map(|left| left.reset)
            .max()
    }

    /// The share of its limits the deployment has left, 0.05 to 1 (1 when
    /// it said nothing, or its limits have reset since).
    pub(crate) fn room(&self, now: Instant) -> f64 {
        let share = |left: Option<Left>| match left {
            Some(l) if l.stale(now) => 1.0,
            Some(Left {
                remaining,
                limit: Some(limit),
                ..
            }) if limit > 0 => remaining as f64 / limit as f64,
            _ => 1.0,
        };
        share(self.requests)
            .min(share(self.tokens))
            .clamp(0.05, 1.0)
    }

    /// What is left, for the pool's status: (remaining requests, remaining
    /// tokens).
    pub(crate) fn remaining(&self) -> (Option<u64>, Option<u64>) {
        (
            self.requests.map(|l| l.remaining),
            self.tokens.map(|l| l.remaining),
        )
    }
}

/// One deployment's standing.
#[derive(Debug)]
pub(crate) struct Standing {
    pub(crate) health: Health,
    pub(crate) open: usize,
    /// Recent outcomes that count for the breaker: when, and whether it
    /// failed. At most [`MAX_RECENT`].
    recent: VecDeque<(Instant, bool)>,
    /// The next cooldown's length.
    next_cooldown: Duration,
    pub(crate) headroom: Headroom,
}

impl Standing {
    pub(crate) fn new(breaker: &Breaker) -> Self {
        Standing {
            health: Health::InService,
            open: 0,
            recent: VecDeque::new(),
            next_cooldown: breaker.cooldown,
            headroom: Headroom::default(),
        }
    }

    /// Whether a call may go here now, and if so whether it is the probe.
    /// `None` with the time it may take calls again (if known).
    pub(crate) fn admits(&self, now: Instant) -> Result<bool, Option<Instant>> {
        let probe = match self.health {
            Health::InService => false,
            Health::CoolingDown { until } if until <= now => true,
            Health::CoolingDown { until } => return Err(Some(until)),
            // The probe's answer decides; until then nothing is known.
            Health::Probing | Health::Locked => return Err(None),
        };
        if let Some(until) = self.headroom.exhausted_until(now) {
            return Err(Some(until));
        }
        Ok(probe)
    }

    /// What a call here costs, for the pick: open streams per unit of
    /// weight, divided by the room left. Lower is better.
    pub(crate) fn cost(&self, weight: f64, now: Instant) -> f64 {
        (self.open as f64 + 1.0) / weight / self.headroom.room(now)
    }

    /// A call is sent here (as the probe, if `probe`).
    pub(crate) fn start(&mut self, probe: bool) {
        self.open += 1;
        if probe {
            self.health = Health::Probing;
        }
    }

    /// A call sent here ended before any output with `outcome`, or
    /// produced output (`Served`). Returns the new health when it changed.
    pub(crate) fn record(
        &mut self,
        outcome: Outcome,
        breaker: &Breaker,
        now: Instant,
    ) -> Option<Health> {
        let before = self.health;
        let probing = before == Health::Probing;
        let cool = |s: &mut Standing, length: Duration| {
            s.health = Health::CoolingDown {
                until: crate::later_or_far(now, length),
            };
            s.recent.clear();
        };
        match outcome {
            Outcome::Served => {
                if probing {
                    self.health = Health::InService;
                    self.next_cooldown = breaker.cooldown;
                }
                self.remember(false, breaker, now);
            }
            Outcome::Neutral => {
                // A probe that proved nothing (cancelled, or the request's
                // own fault) lets the next call probe.
                if probing {
                    self.health = Health::CoolingDown { until: now };
                }
            }
            Outcome::Refused => self.health = Health::Locked,
            Outcome::RateLimited(wait) => {
                if probing {
                    self.next_cooldown = (self.next_cooldown * 2).min(breaker.max_cooldown);
                }
                let length = wait.unwrap_or(self.next_cooldown);
                cool(self, length);
            }
            Outcome::Failed if probing => {
                self.next_cooldown = (self.next_cooldown * 2).min(breaker.max_cooldown);
                let length = self.next_cooldown;
                cool(self, length);
            }
            Outcome::Failed => {
                self.remember(true, breaker, now);
                let failed = self.recent.iter().filter(|(_, f)| *f).count();
                let rate = failed as f64 / self.recent.len().max(1) as f64;
                if failed >= breaker.failures.max(1) as usize
                    && rate >= breaker.failure_rate
                    && self.health == Health::InService
                {
                    let length = self.next_cooldown;
                    cool(self, length);
                }
            }
        }
        (self.health != before).then_some(self.health)
    }

    /// Out until `until`, as another process decided: unless a probe is
    /// under way, the credential is locked, or a later cooldown already
    /// runs. Whether it changed.
    #[cfg(feature = "redis")]
    pub(crate) fn cool_until(&mut self, until: Instant) -> bool {
        let later = match self.health {
            Health::InService => true,
            Health::CoolingDown { until: current } => current < until,
            Health::Probing | Health::Locked => false,
        };
        if later {
            self.health = Health::CoolingDown { until };
            self.recent.clear();
        }
        later
    }

    /// Notes an outcome in the breaker's window.
    fn remember(&mut self, failed: bool, breaker: &Breaker, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > breaker.window)
            || self.recent.len() >= MAX_RECENT
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, failed));
    }
}

/// The most outcomes a deployment remembers for its breaker.
const MAX_RECENT: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker {
            failures: 3,
            window: Duration::from_secs(60),
            failure_rate: 0.5,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(300),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_within_the_window_cool_down_and_one_probe_decides() {
        let b = breaker();
        let mut s = Standing::new(&b);
        let t0 = Instant::now();
        assert_eq!(s.record(Outcome::Failed, &b, t0), None);
        assert_eq!(
            s.record(Outcome::Failed, &b, t0 + Duration::from_secs(30)),
            None
        );
        // The third, 61 s after the first, finds only two in its window.
        let late = t0 + Duration::from_secs(61);
        assert_eq!(s.record(Outcome::Failed, &b, late), None);
        assert_eq!(
            s.record(Outcome::Failed, &b, late),
            Some(Health::CoolingDown {
                until: late + Duration::from_secs(30)
            })
        );
        assert_eq!(s.admits(late), Err(Some(late + Duration::from_secs(30))));
        let back = late + Duration::from_secs(30);
        assert_eq!(s.admits(back), Ok(true), "the probe");
        s.start(true);
        assert_eq!(s.admits(back), Err(None), "one probe at a time");
        // A failed probe doubles the cooldown; a good one ends it.
        s.record(Outcome::Failed, &b, back);
        assert_eq!(
            s.health,
            Health::CoolingDown {
                until: back + Duration::from_secs(60)
            }
        );
        let back = back + Duration::from_secs(60);
        s.start(true);
        assert_eq!(s.record(Outcome::Served, &b, back), Some(Health::InService));
        assert_eq!(s.admits(back), Ok(false));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_among_many_successes_do_not_trip_the_breaker() {
        let b = breaker();
        let mut s = Standing::new(&b);
        let now = Instant::now();
        for i in 0..100 {
            let outcome = if i % 10 == 0 {
                Outcome::Failed
            } else {
                Outcome::Served
            };
            assert_eq!(s.record(outcome, &b, now), None, "call {i}");
        }
        assert_eq!(s.admits(now), Ok(false));
        // A run of failures does, once they are half of what is remembered.
        let mut tripped = None;
        for i in 0..200 {
            if s.record(Outcome::Failed, &b, now).is_some() {
                tripped = Some(i);
                break;
            }
        }
        assert_eq!(tripped, Some(79), "10 + 80 failures of 180 outcomes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_its_retry_after_and_a_401_locks() {
        let b = breaker();
        let mut s = Standing::new(&b);
        let now = Instant::now();
        s.record(Outcome::RateLimited(Some(Duration::from_secs(3))), &b, now);
        assert_eq!(s.admits(now), Err(Some(now + Duration::from_secs(3))));
        let mut s = Standing::new(&b);
        s.record(Outcome::Refused, &b, now);
        assert_eq!(s.admits(now + Duration::from_secs(3600)), Err(None));
        let mut s = Standing::new(&b);
        for _ in 0..10 {
            assert_eq!(s.record(Outcome::Neutral, &b, now), None);
        }
        assert_eq!(s.admits(now), Ok(false));
    }

    #[tokio::test(start_paused = true)]
    async fn headroom_at_zero_keeps_calls_away_until_its_reset() {
        let b = breaker();
        let mut s = Standing::new(&b);
        let now = Instant::now();
        let info = RateLimitInfo {
            requests: Some(crate::headers::Quota {
                limit: Some(100),
                remaining: Some(0),
                reset: Some(Duration::from_secs(5)),
            }),
            ..RateLimitInfo::default()
        };
        s.headroom.update(&info, now);
        assert_eq!(s.admits(now), Err(Some(now + Duration::from_secs(5))));
        assert_eq!(s.admits(now + Duration::from_secs(5)), Ok(false));
        // Little room costs more than much.
        let mut roomy = Standing::new(&b);
        let half = RateLimitInfo {
            requests: Some(crate::headers::Quota {
                limit: Some(100),
                remaining: Some(50),
                reset: Some(Duration::from_secs(60)),
            }),
            ..RateLimitInfo::default()
        };
        roomy.headroom.update(&half, now);
        let fresh = Standing::new(&b);
        assert!(roomy.cost(1.0, now) > fresh.cost(1.0, now));
        assert!((roomy.cost(1.0, now) - 2.0).abs() < 1e-9);
        // An absurd reset does not overflow.
        let far = RateLimitInfo {
            tokens: Some(crate::headers::Quota {
                limit: Some(10),
                remaining: Some(0),
                reset: Some(Duration::MAX),
            }),
            ..RateLimitInfo::default()
        };
        s.headroom.update(&far, now);
        assert!(s.admits(now + Duration::from_secs(86_400)).is_err());
    }
}
