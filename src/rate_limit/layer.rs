//! [`RateLimitLayer`]: the settings, and the layer that applies them.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};

use super::books::LIMITS;
use super::{RateLimit, Shared};

/// Applies [`RateLimit`]. See the [module docs](crate::rate_limit).
///
/// Each service the layer builds keeps its own books, shared by that
/// service's clones — or, with [`shared`](Self::shared), books on Redis
/// shared by every process. A budget of zero refuses every call, with a
/// [`Error::RateLimited`](crate::Error::RateLimited) that is not retryable.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    budget: [Option<u64>; LIMITS],
    max_waiting: usize,
    #[cfg(feature = "redis")]
    remote: Option<crate::redis::SharedBooks>,
    #[cfg(feature = "otel")]
    instruments: Option<std::sync::Arc<super::Instruments>>,
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        RateLimitLayer::new()
    }
}

/// How many calls may wait for a slot at once, by default.
pub const DEFAULT_MAX_WAITING: usize = 1024;

impl RateLimitLayer {
    /// Follows the providers' rate-limit headers, with no budget of its own.
    pub const fn new() -> Self {
        RateLimitLayer {
            budget: [None; LIMITS],
            max_waiting: DEFAULT_MAX_WAITING,
            #[cfg(feature = "redis")]
            remote: None,
            #[cfg(feature = "otel")]
            instruments: None,
        }
    }

    /// Records what the layer does with `meter` (feature `otel`):
    /// `llm_tower.rate_limit.wait`, a histogram of the waits of the calls
    /// that waited for a slot (seconds), and
    /// `llm_tower.rate_limit.refusals`, a counter of the calls refused here,
    /// by `llm_tower.reason` (`deadline`, `queue_full`, `zero_budget`,
    /// `shared_state_unavailable`).
    #[cfg(feature = "otel")]
    pub fn meter(mut self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.instruments = Some(std::sync::Arc::new(super::Instruments {
            wait: meter
                .f64_histogram("llm_tower.rate_limit.wait")
                .with_unit("s")
                .with_description("How long calls waited for a rate-limit slot.")
                .with_boundaries(vec![
                    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92,
                ])
                .build(),
            refusals: meter
                .u64_counter("llm_tower.rate_limit.refusals")
                .with_unit("{call}")
                .with_description("Calls the rate limit refused before sending them.")
                .build(),
        }));
        self
    }

    /// Keeps the books on Redis, shared by every process that uses the same
    /// [`SharedBooks`](crate::redis::SharedBooks) (feature `redis`): each
    /// call is booked by one atomic step there, on Redis's clock, so the
    /// processes together keep to the budget and to what the provider last
    /// reported, and a 429 one of them meets pauses all of them. Each
    /// process passes its own budget with each booking: give them the same.
    ///
    /// Every call waits for its booking (one round trip), so, as a call
    /// that waits for a slot, it drives the inner service ready again once
    /// booked rather than holding what `poll_ready` reserved below (a
    /// concurrency permit) across the round trip.
    ///
    /// While Redis is out the layer does what the store's
    /// [`OnOutage`](crate::redis::OnOutage) says: books locally, or refuses.
    /// See the README's "Many processes" section for what is exact and what
    /// is approximate.
    #[cfg(feature = "redis")]
    pub fn shared(mut self, books: crate::redis::SharedBooks) -> Self {
        self.remote = Some(books);
        self
    }

    /// At most `n` calls wait for a slot at once (default
    /// [`DEFAULT_MAX_WAITING`]), across every clone of the service. A call
    /// that would wait beyond them fails at once with a local
    /// [`Error::RateLimited`](crate::Error::RateLimited) whose `retry_after` is the wait it would have
    /// had, so memory stays bounded under a burst and the caller can shed
    /// or retry. Calls that fit now never count.
    pub const fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// At most `n` calls in any minute, per model.
    pub const fn requests_per_minute(mut self, n: u64) -> Self {
        self.budget[0] = Some(n);
        self
    }

    /// At most `n` tokens, input and output together, in any minute, per
    /// model (OpenAI's TPM).
    pub const fn tokens_per_minute(mut self, n: u64) -> Self {
        self.budget[1] = Some(n);
        self
    }

    /// At most `n` input tokens in any minute, per model (Anthropic's ITPM).
    pub const fn input_tokens_per_minute(mut self, n: u64) -> Self {
        self.budget[2] = Some(n);
        self
    }

    /// At most `n` output tokens in any minute, per model (Anthropic's
    /// OTPM). A call counts its `max_tokens` until its usage is known: set
    /// it, or output is only counted once generated.
    pub const fn output_tokens_per_minute(mut self, n: u64) -> Self {
        self.budget[3] = Some(n);
        self
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: Arc::new(Shared {
                budget: self.budget,
                max_waiting: self.max_waiting,
                waiting: AtomicUsize::new(0),
                first: OnceLock::new(),
                models: Mutex::new(HashMap::new()),
                provider: OnceLock::new(),
                #[cfg(feature = "redis")]
                remote: self.remote.clone(),
                #[cfg(feature = "otel")]
                instruments: self.instruments.clone(),
            }),
        }
    }
}
