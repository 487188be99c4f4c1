use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::retry::budget::Budget;

use crate::engine::Policy;
use crate::{ChatRequest, Error};

/// When and how long [`TransportRetryLayer`](crate::TransportRetryLayer)
/// waits before sending a failed call again.
///
/// Cheap to clone: clones share one configuration (and one budget).
///
/// ```
/// use llm_tower::RetryPolicy;
/// use std::time::Duration;
/// use tower::retry::budget::TpsBudget;
///
/// let policy = RetryPolicy::default()
///     .max_retries(4)
///     .backoff(Duration::from_millis(200), Duration::from_secs(5))
///     .max_retry_after(Duration::from_secs(30))
///     // At most 20 % extra load from retries, beyond 5 retries a second.
///     .budget(TpsBudget::new(Duration::from_secs(10), 5, 0.2))
///     // Also give up on timeouts, which this caller handles itself.
///     .retry_if(|e| e.is_retryable() && !matches!(e, llm_tower::Error::Timeout { .. }));
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    jitter: f64,
    max_retry_after: Duration,
    budget: Option<Arc<dyn Budget + Send + Sync>>,
    retry_if: Option<Classifier>,
}

/// A caller-supplied rule for which failures are retried.
type Classifier = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

impl Default for RetryPolicy {
    /// The official SDKs' defaults: 2 retries, 0.5 s doubling to 8 s minus up
    /// to 25 % jitter, server hints honoured up to 60 s, no budget, the
    /// default classification ([`Error::is_retryable`]).
    fn default() -> Self {
        RetryPolicy {
            config: Arc::new(Config {
                max_retries: 2,
                initial_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(8),
                jitter: 0.25,
                max_retry_after: Duration::from_secs(60),
                budget: None,
                retry_if: None,
            }),
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("RetryPolicy")
            .field("max_retries", &c.max_retries)
            .field("initial_backoff", &c.initial_backoff)
            .field("max_backoff", &c.max_backoff)
            .field("jitter", &c.jitter)
            .field("max_retry_after", &c.max_retry_after)
            .field("budget", &c.budget.is_some())
            .field("retry_if", &c.retry_if.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// Retries after the first attempt, at most (default 2: 3 attempts in all).
    pub fn max_retries(mut self, n: u32) -> Self {
        Arc::make_mut(&mut self.config).max_retries = n;
        self
    }

    /// The backoff before retry `n` (from 0) is `min(initial · 2ⁿ, max)`,
    /// less the jitter (defaults 0.5 s and 8 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        let c = Arc::make_mut(&mut self.config);
        c.initial_backoff = initial;
        c.max_backoff = max;
        self
    }

    /// The largest fraction of a backoff removed at random, in `0.0..=1.0`
    /// (default 0.25), so that calls that failed together do not retry
    /// together.
    pub fn jitter(mut self, fraction: f64) -> Self {
        Arc::make_mut(&mut self.config).jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The longest server-requested wait (`retry-after`) honoured (default
    /// 60 s). A server asking for longer gets its error returned at once
    /// rather than a caller blocked for minutes.
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        Arc::make_mut(&mut self.config).max_retry_after = cap;
        self
    }

    /// Limits retries to what `budget` allows, e.g. a
    /// [`TpsBudget`](tower::retry::budget::TpsBudget): every call deposits,
    /// every retry withdraws, so a failing upstream is not hammered. Shared
    /// by every service this policy (and its clones) guards.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        Arc::make_mut(&mut self.config).budget = Some(Arc::new(budget));
        self
    }

    /// Decides which failures are retried, in place of
    /// [`Error::is_retryable`]. Only failures before output ever reach it.
    pub fn retry_if(mut self, classify: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        Arc::make_mut(&mut self.config).retry_if = Some(Arc::new(classify));
        self
    }

    /// The backoff before retry `retries` (0 for the first retry) for a
    /// uniform random draw `random` in `[0, 1)`.
    pub fn backoff_for(&self, retries: u32, random: f64) -> Duration {
        let c = &self.config;
        let exp = c
            .initial_backoff
            .checked_mul(2u32.saturating_pow(retries.min(31)))
            .unwrap_or(c.max_backoff);
        exp.min(c.max_backoff)
            .mul_f64(1.0 - c.jitter * random.clamp(0.0, 1.0))
    }

    /// How long to wait before retrying after `error`, or `None` to give up.
    fn delay(&self, state: &mut CallState, error: &Error) -> Option<Duration> {
        let c = &self.config;
        if state.retries >= c.max_retries {
            return None;
        }
        let retryable = match &c.retry_if {
            Some(classify) => classify(error),
            None => error.is_retryable(),
        };
        if !retryable {
            return None;
        }
        let delay = match error.retry_after() {
            Some(hint) if hint <= c.max_retry_after => hint,
            Some(hint) => {
                tracing::debug!(
                    retry_after_ms = hint.as_millis() as u64,
                    "not retrying: the server asks for a longer wait than the policy allows"
                );
                return None;
            }
            None => self.backoff_for(state.retries, state.random()),
        };
        if let Some(deadline) = state.deadline
            && crate::later(Instant::now(), delay).is_none_or(|t| t > deadline)
        {
            tracing::debug!(
                delay_ms = delay.as_millis() as u64,
                "not retrying: the wait would pass the deadline"
            );
            return None;
        }
        if let Some(budget) = &c.budget
            && !budget.withdraw()
        {
            tracing::debug!("not retrying: the retry budget is spent");
            return None;
        }
        Some(delay)
    }
}

/// What a [`RetryPolicy`] remembers for one call: its retries so far, its own
/// random state (so concurrent calls draw different jitter) and its deadline.
#[derive(Debug)]
pub struct CallState {
    retries: u32,
    /// The random state; 0 until the first draw seeds it.
    rng: u64,
    deadline: Option<Instant>,
}

impl CallState {
    /// A uniform draw in `[0, 1)` (splitmix64), seeded at the first draw:
    /// most calls never retry, and never need one.
    fn random(&mut self) -> f64 {
        if self.rng == 0 {
            self.rng = seed();
        }
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed no other call shares: the process's random hash keys over a
/// counter.
fn seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(CALLS.fetch_add(1, Ordering::Relaxed))
}

impl Policy for RetryPolicy {
    type State = CallState;
    type Wait = Delay;

    fn start(&self, request: &ChatRequest) -> CallState {
        if let Some(budget) = &self.config.budget {
            budget.deposit();
        }
        CallState {
            retries: 0,
            rng: 0,
            deadline: request.deadline(),
        }
    }

    fn on_failure(&self, state: &mut CallState, error: &Error) -> Option<Delay> {
        let delay = self.delay(state, error)?;
        state.retries += 1;
        tracing::info!(
            llm_tower.event = "retry",
            reason = error.kind(),
            attempt = i64::from(state.retries) + 1,
            delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            error = %error,
            "retrying llm call"
        );
        Some(Delay::new(delay))
    }
}

pin_project! {
    /// The wait before a retry of [`RetryPolicy`].
    #[derive(Debug)]
    pub struct Delay {
        #[pin]
        sleep: Sleep,
    }
}

impl Delay {
    fn new(delay: Duration) -> Self {
        Delay {
            sleep: tokio::time::sleep(delay),
        }
    }
}

impl Future for Delay {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(self.project().sleep.poll(cx));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_settings() {
        let p = RetryPolicy::default()
            .max_retries(5)
            .backoff(Duration::from_millis(250), Duration::from_secs(4));
        let debug = format!("{p:?}");
        for part in [
            "RetryPolicy {",
            "max_retries: 5",
            "initial_backoff: 250ms",
            "max_backoff: 4s",
            "budget: false",
        ] {
            assert!(debug.contains(part), "{part} in {debug}");
        }
    }

    #[test]
    fn backoff_follows_the_sdk_formula() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_for(0, 0.0), Duration::from_millis(500));
        assert_eq!(p.backoff_for(0, 1.0), Duration::from_millis(375));
        assert_eq!(p.backoff_for(1, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff_for(4, 0.0), Duration::from_secs(8));
        assert_eq!(
            p.backoff_for(40, 0.0),
            Duration::from_secs(8),
            "no overflow"
        );
        let none = RetryPolicy::default().jitter(0.0);
        assert_eq!(none.backoff_for(2, 0.9), Duration::from_secs(2));
    }

    #[test]
    fn every_call_draws_its_own_jitter() {
        let p = RetryPolicy::default();
        let req = ChatRequest::new("m");
        let draws: Vec<Duration> = (0..64)
            .map(|_| {
                let mut state = p.start(&req);
                p.backoff_for(0, state.random())
            })
            .collect();
        let mut distinct = draws.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 60, "calls retry in lockstep: {draws:?}");
        assert!(
            draws
                .iter()
                .all(|d| (Duration::from_millis(375)..=Duration::from_millis(500)).contains(d))
        );
    }

    #[test]
    fn draws_are_uniform_enough() {
        let mut state = CallState {
            retries: 0,
            rng: 7,
            deadline: None,
        };
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let r = state.random();
            assert!((0.0..1.0).contains(&r));
            buckets[(r * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }
}
