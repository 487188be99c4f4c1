//! Pacing calls before the provider answers 429.
//!
//! Providers say how much room is left with every answer (see
//! [`RateLimitInfo`](crate::RateLimitInfo)). [`RateLimit`] reads it, and a budget you configure
//! (requests, tokens, input tokens and output tokens per minute), and makes
//! each call wait until it fits instead of sending it into a 429:
//!
//! - **Token-aware.** A call's input tokens are estimated from its request
//!   (about four bytes of text to a token, plus its images and tools) and its
//!   output as its `max_tokens`, as OpenAI and Anthropic themselves count a
//!   call when it starts; the usage reported at the end replaces the
//!   estimate in the books. tower's `rate_limit` counts requests only.
//! - **Shared.** All clones of the service share one set of books, one per
//!   model (providers limit each model separately). A 429 that arrives
//!   anyway pauses every call to that model for the time the provider asked
//!   (or a backoff doubling from 1 s), including calls already waiting: they
//!   back off together, not one 429 each.
//! - **In order, woken once.** Calls get slots in order of arrival; a call
//!   that must wait sleeps until its own slot. While it waits it holds
//!   nothing: no connection, and no slot of a limit below it (the inner
//!   service is driven ready only once the wait is over).
//! - **Deadline-aware.** A call whose slot would come after its
//!   [`Deadline`](crate::Deadline) fails at once with [`Error::RateLimited`], its
//!   `retry_after` saying how far the slot was (its
//!   [`ApiError::is_local`](crate::ApiError::is_local) is true: this client
//!   refused it, not the provider).
//!
//! A budget is a sliding window: never more than the budget in any 60
//! seconds. What the provider reports is followed as a token bucket (how
//! OpenAI and Anthropic describe their limits): no more than `remaining`
//! before the reset, and no faster than the refill the report implies. So
//! with `remaining: 0` and a reset in 2 s, the next call waits 2 s.
//!
//! ```
//! use llm_tower::{OpenAi, RateLimitLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), llm_tower::Error> {
//! let openai = OpenAi::builder().model("gpt-4o-mini").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(
//!         RateLimitLayer::new()
//!             .requests_per_minute(500)
//!             .tokens_per_minute(200_000),
//!     )
//!     .service(openai);
//! # let _ = service;
//! # Ok(())
//! # }
//! ```
//!
//! Place it below the retry layer, so that every attempt is paced and every
//! 429 is seen, and above a first-event timeout, so that waiting for a slot
//! is not taken for a stalled server (the README's "Rate limits" section).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

use crate::lock;
use crate::{ApiError, ChatRequest, ChatStream, Error};

mod books;
mod estimate;
mod future;
pub(crate) mod layer;
mod tracker;

pub use crate::headers::Quota;
use books::{Books, LIMITS, Refusal};
pub(crate) use estimate::estimate;
pub use future::ResponseFuture;
use future::{Queued, Waiting};
use tracker::Ledger;
use tracker::{Ticket, Tracker};

/// Paces calls to the provider's rate limits and a budget. See the [module
/// docs](self).
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

struct Shared {
    budget: [Option<u64>; LIMITS],
    max_waiting: usize,
    /// Calls asleep until their slot, across every clone.
    waiting: AtomicUsize,
    /// The first model called, found without a lookup: most services call
    /// one model.
    first: OnceLock<(Box<str>, Arc<Mutex<Books>>)>,
    /// Every other model.
    models: Mutex<HashMap<Box<str>, Arc<Mutex<Books>>>>,
    /// The provider's name, once an answer gave it: for the errors this
    /// layer makes itself.
    provider: OnceLock<&'static str>,
    /// The books on Redis, when shared across processes.
    #[cfg(feature = "redis")]
    remote: Option<crate::redis::SharedBooks>,
    #[cfg(feature = "otel")]
    instruments: Option<Arc<Instruments>>,
}

/// The layer's own instruments (feature `otel`).
#[cfg(feature = "otel")]
#[derive(Debug)]
pub(crate) struct Instruments {
    wait: opentelemetry::metrics::Histogram<f64>,
    refusals: opentelemetry::metrics::Counter<u64>,
}

/// Past this many models, books with nothing in them are dropped when a new
/// model is added.
const MAX_IDLE_MODELS: usize = 64;

impl Shared {
    fn books(&self, model: &str) -> Arc<Mutex<Books>> {
        let (first, books) = self.first.get_or_init(|| (model.into(), Arc::default()));
        if **first == *model {
            return books.clone();
        }
        let mut models = lock(&self.models);
        if let Some(books) = models.get(model) {
            return books.clone();
        }
        if models.len() >= MAX_IDLE_MODELS {
            let now = Instant::now();
            models.retain(|_, b| Arc::strong_count(b) > 1 || !lock(b).is_idle(now));
        }
        models.entry(model.into()).or_default().clone()
    }

    /// Whether a token budget is set, for which the usage reported matters.
    fn counts_tokens(&self) -> bool {
        self.budget[1..].iter().any(Option::is_some)
    }

    /// A call waits `wait` for its slot.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    fn waits(&self, wait: std::time::Duration) {
        #[cfg(feature = "otel")]
        if let Some(i) = &self.instruments {
            i.wait.record(wait.as_secs_f64(), &[]);
        }
    }

    /// Counts a call refused here, for `reason`.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    fn count_refusal(&self, reason: &'static str) {
        #[cfg(feature = "otel")]
        if let Some(i) = &self.instruments {
            i.refusals.add(
                1,
                &[opentelemetry::KeyValue::new("llm_tower.reason", reason)],
            );
        }
    }

    fn refused(&self, refusal: Refusal) -> Error {
        self.count_refusal(match refusal {
            Refusal::Deadline { .. } => "deadline",
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::ZeroBudget => "zero_budget",
        });
        let (retry_after, error_type, message, should_retry) = match refusal {
            Refusal::Deadline { wait } => (
                Some(wait),
                "rate_limit_deadline",
                format!(
                    "no room to start before the call's deadline: the next slot is {wait:.1?} away"
                ),
                None,
            ),
            Refusal::QueueFull { wait } => (
                Some(wait),
                "rate_limit_queue_full",
                format!(
                    "{} calls already wait for a slot; this one would wait {wait:.1?}",
                    self.max_waiting
                ),
                None,
            ),
            Refusal::ZeroBudget => (
                None,
                "rate_limit_budget",
                "the budget is zero".to_owned(),
                Some(false),
            ),
        };
        Error::RateLimited {
            retry_after,
            error: Box::new(ApiError {
                provider: self.provider.get().copied().unwrap_or("unknown"),
                error_type: Some(error_type.to_owned()),
                message: Some(message),
                retry_after,
                should_retry,
                local: true,
                ..ApiError::default()
            }),
        }
    }
}

impl<S> RateLimit<S> {
    /// `inner`, paced by `layer`'s budget and the provider's headers.
    pub fn new(inner: S, layer: RateLimitLayer) -> Self {
        tower::Layer::layer(&layer, inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = ["requests", "tokens", "input_tokens", "output_tokens"];
        let mut d = f.debug_struct("RateLimit");
        d.field("inner", &self.inner);
        for (name, budget) in names.iter().zip(self.shared.budget) {
            if let Some(n) = budget {
                d.field(name, &n);
            }
        }
        d.finish_non_exhaustive()
    }
}

impl<S> Service<ChatRequest> for RateLimit<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> ResponseFuture<S> {
        let books = self.shared.books(&request.model);
        let deadline = request.deadline();
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.shared.remote {
            let booking = remote::book(remote, &self.shared, books, &request, deadline);
            return ResponseFuture::booking(Waiting {
                sleep: None,
                service: self.take_ready(),
                request: Some(request),
                ticket: Ticket(None),
                _queued: None,
                pending: Some(booking),
            });
        }
        let (input, output) = estimate(&request);
        let now = Instant::now();
        let tracker = match self
            .shared
            .book_locally(books, input, output, deadline, now)
        {
            Ok(t) => t,
            Err(e) => return ResponseFuture::failed(e),
        };
        if tracker.at() <= now {
            let future = self.inner.call(request);
            return ResponseFuture::calling(future, tracker);
        }
        let queued = match Queued::enter_for(&self.shared, tracker, now) {
            Ok(q) => q,
            Err(e) => return ResponseFuture::failed(e),
        };
        let wait = queued.1.at() - now;
        self.shared.waits(wait);
        tracing::debug!(
            model = %request.model,
            wait_ms = wait.as_millis() as u64,
            "rate limit: waiting for a slot"
        );
        ResponseFuture::waiting(Waiting {
            sleep: None,
            service: self.take_ready(),
            request: Some(request),
            ticket: Ticket(Some(queued.1)),
            _queued: Some(queued.0),
            #[cfg(feature = "redis")]
            pending: None,
        })
    }
}

impl<S: Clone> RateLimit<S> {
    /// A clone of the inner service for a call that waits, driven ready
    /// once the wait is over; the service that was driven ready for this
    /// call is dropped, so that what it reserved below (a concurrency slot)
    /// is not held meanwhile.
    fn take_ready(&mut self) -> S {
        let service = self.inner.clone();
        self.inner = self.inner.clone();
        service
    }
}

impl Shared {
    /// Books a call needing `input` and `output` tokens in this process's
    /// `books` of its model.
    fn book_locally(
        self: &Arc<Self>,
        books: Arc<Mutex<Books>>,
        input: u64,
        output: u64,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<Tracker, Error> {
        let booked = lock(&books).book(&self.budget, books::amounts(input, output), now, deadline);
        match booked {
            Ok(booking) => Ok(Tracker {
                shared: self.clone(),
                books,
                ledger: Ledger::Local(booking),
                deadline,
            }),
            Err(refusal) => Err(self.refused(refusal)),
        }
    }
}

impl Queued {
    /// A place among the calls that wait, for `tracker`'s call, whose slot
    /// is ahead; else the booking is given back and the call refused.
    fn enter_for(
        shared: &Arc<Shared>,
        tracker: Tracker,
        now: Instant,
    ) -> Result<(Queued, Tracker), Error> {
        match Queued::enter(shared) {
            Some(q) => Ok((q, tracker)),
            None => {
                let wait = tracker.at().saturating_duration_since(now);
                // Dropping the ticket gives the booking back.
                drop(Ticket(Some(tracker)));
                Err(shared.refused(Refusal::QueueFull { wait }))
            }
        }
    }
}

#[cfg(feature = "redis")]
mod remote;

#[cfg(test)]
mod tests;

pub use layer::DEFAULT_MAX_WAITING;
use layer::RateLimitLayer;
