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
//!   [`Deadline`] fails at once with [`Error::RateLimited`], its
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
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use futures_util::StreamExt;
use pin_project_lite::pin_project;
use serde_json::Value;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::chat::Events;
use crate::engine::poll_call;
use crate::lock;
use crate::{ApiError, ChatRequest, ChatStream, ContentPart, Deadline, Error, StreamEvent};

mod books;

pub use crate::headers::Quota;
use books::{Booking, Books, LIMITS, Refusal};

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

    fn refused(&self, refusal: Refusal) -> Error {
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
        let (input, output) = estimate(&request);
        let deadline = request.extensions.get::<Deadline>().map(|d| d.0);
        let now = Instant::now();
        let booked = lock(&books).book(
            &self.shared.budget,
            books::amounts(input, output),
            now,
            deadline,
        );
        let booking = match booked {
            Ok(b) => b,
            Err(refusal) => return ResponseFuture::failed(self.shared.refused(refusal)),
        };
        let tracker = Tracker {
            shared: self.shared.clone(),
            books,
            booking,
            deadline,
        };
        if booking.at <= now {
            let future = self.inner.call(request);
            return ResponseFuture {
                state: State::Calling { future },
                waiting: None,
                tracker: Some(tracker),
            };
        }
        let wait = booking.at - now;
        let Some(queued) = Queued::enter(&self.shared) else {
            // Dropping the ticket gives the booking back.
            drop(Ticket(Some(tracker)));
            return ResponseFuture::failed(self.shared.refused(Refusal::QueueFull { wait }));
        };
        tracing::debug!(
            model = %request.model,
            wait_ms = wait.as_millis() as u64,
            "rate limit: waiting for a slot"
        );
        // The wait is done by a clone, driven ready once it is over; the
        // service that was driven ready for this call is dropped, so that
        // what it reserved below (a concurrency slot) is not held meanwhile.
        let service = self.inner.clone();
        self.inner = self.inner.clone();
        ResponseFuture {
            state: State::Waiting,
            waiting: Some(Box::new(Waiting {
                sleep: None,
                service,
                request: Some(request),
                ticket: Ticket(Some(tracker)),
                _queued: queued,
            })),
            tracker: None,
        }
    }
}

/// A call's booking and what is needed to keep its books.
struct Tracker {
    shared: Arc<Shared>,
    books: Arc<Mutex<Books>>,
    booking: Booking,
    deadline: Option<Instant>,
}

/// A booking not used yet: given back if the call is dropped before it is
/// sent.
struct Ticket(Option<Tracker>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            lock(&t.books).cancel(&t.booking);
        }
    }
}

impl Tracker {
    /// The answer came: its headers go in the books, and its stream is
    /// watched for the usage and for a 429 inside it.
    fn answered(self, stream: ChatStream) -> ChatStream {
        let provider = stream.meta().provider;
        self.shared.provider.get_or_init(|| provider);
        {
            let mut books = lock(&self.books);
            books.succeeded();
            if let Some(info) = &stream.meta().rate_limit {
                books.absorb(info, Instant::now());
            }
        }
        stream.map_events(|events| Watch {
            events,
            tracker: self,
        })
    }

    /// The call failed: what the provider reported, and a 429, go in the
    /// books.
    fn failed(&self, error: &Error) {
        let error = match error {
            Error::Interrupted { source, .. } => source,
            e => e,
        };
        let Some(api) = error.api_error() else { return };
        if api.is_local() {
            return;
        }
        self.shared.provider.get_or_init(|| api.provider());
        let now = Instant::now();
        let mut books = lock(&self.books);
        if let Some(info) = api.rate_limit() {
            books.absorb(info, now);
        }
        if matches!(error, Error::RateLimited { .. }) && error.is_retryable() {
            books.rate_limited(error.retry_after(), now);
            tracing::debug!(
                retry_after_ms = error.retry_after().map(|d| d.as_millis() as u64),
                "rate limit: the provider answered 429; pausing calls to this model"
            );
        }
    }
}

/// An answer's events, watched for what they tell the books.
struct Watch {
    events: Events,
    tracker: Tracker,
}

impl Stream for Watch {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.events.poll_next_unpin(cx));
        match &item {
            Some(Ok(StreamEvent::Usage(u))) if self.tracker.shared.counts_tokens() => {
                let t = &mut self.tracker;
                let now = Instant::now();
                lock(&t.books).correct(&mut t.booking, u.input_tokens, u.output_tokens, now);
            }
            Some(Err(e)) => self.tracker.failed(e),
            _ => {}
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

pin_project! {
    /// The response future of [`RateLimit`]: waits for the call's slot,
    /// then drives the inner service ready and calls it.
    pub struct ResponseFuture<S>
    where
        S: Service<ChatRequest>,
    {
        #[pin]
        state: State<S::Future>,
        // Only for a call that waits: boxed, so the call that has room moves
        // a small future around.
        waiting: Option<Box<Waiting<S>>>,
        // Once sent.
        tracker: Option<Tracker>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Failed { error: Option<Error> },
        Waiting,
        Readying,
        Calling { #[pin] future: F },
        Done,
    }
}

/// What a call that waits for its slot holds.
struct Waiting<S> {
    // Made when first polled, inside the runtime, rather than by `call`.
    sleep: Option<Pin<Box<Sleep>>>,
    service: S,
    request: Option<ChatRequest>,
    // Given back if the call is dropped before it is sent.
    ticket: Ticket,
    _queued: Queued,
}

/// A place among the calls that wait, given back on drop.
struct Queued(Arc<Shared>);

impl Queued {
    fn enter(shared: &Arc<Shared>) -> Option<Queued> {
        shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_waiting).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(shared.clone()))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<ChatRequest>,
{
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            waiting: None,
            tracker: None,
        }
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<ChatRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("waiting", &self.waiting.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error>,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error.take().unwrap_or_else(polled_after_completion);
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Waiting => {
                    let Some(w) = this.waiting.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let Some(t) = w.ticket.0.as_mut() else {
                        this.state.set(State::Readying);
                        continue;
                    };
                    let at = t.booking.at;
                    let sleep = w
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    ready!(sleep.as_mut().poll(cx));
                    let recheck = lock(&t.books).recheck(
                        &t.booking,
                        &t.shared.budget,
                        Instant::now(),
                        t.deadline,
                    );
                    match recheck {
                        None => this.state.set(State::Readying),
                        // A 429 paused the model while this call slept.
                        Some(Ok(booking)) => {
                            t.booking = booking;
                            sleep.as_mut().reset(booking.at);
                        }
                        Some(Err(refusal)) => {
                            // `recheck` gave the old booking back already.
                            let error = t.shared.refused(refusal);
                            w.ticket.0 = None;
                            *this.waiting = None;
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Readying => {
                    let Some(w) = this.waiting.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let sent = ready!(poll_call(&mut w.service, &mut w.request, cx));
                    // Sent: the booking is used. Not sent: dropping the
                    // ticket with `waiting` gives it back.
                    if sent.is_ok() {
                        *this.tracker = w.ticket.0.take();
                    }
                    *this.waiting = None;
                    match sent {
                        Ok(future) => this.state.set(State::Calling { future }),
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    let Some(tracker) = this.tracker.take() else {
                        return Poll::Ready(result);
                    };
                    return Poll::Ready(match result {
                        Ok(stream) => Ok(tracker.answered(stream)),
                        Err(e) => {
                            tracker.failed(&e);
                            Err(e)
                        }
                    });
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

fn polled_after_completion() -> Error {
    Error::config("rate limit response future polled after completion")
}

/// A cheap estimate of a request's tokens: `(input, output)`. Input is
/// about four bytes of text to a token, plus a few per message, and a flat
/// amount per image; output is `max_tokens`, what providers reserve.
pub(crate) fn estimate(request: &ChatRequest) -> (u64, u64) {
    /// A typical image, by OpenAI's and Anthropic's published sizes.
    const IMAGE_TOKENS: u64 = 1000;
    const MESSAGE_TOKENS: u64 = 4;
    let mut bytes = 0u64;
    let mut tokens = 0u64;
    for message in &request.messages {
        tokens += MESSAGE_TOKENS;
        for part in &message.content {
            bytes += match part {
                ContentPart::Text(text) => text.len() as u64,
                ContentPart::Image(_) => {
                    tokens += IMAGE_TOKENS;
                    0
                }
                ContentPart::ToolUse {
                    id,
                    name,
                    arguments,
                } => (id.len() + name.len()) as u64 + json_len(arguments, 0),
                ContentPart::ToolResult {
                    tool_call_id,
                    content,
                    ..
                } => (tool_call_id.len() + content.len()) as u64,
                ContentPart::Thinking { text, .. } => text.len() as u64,
                ContentPart::RedactedThinking { data } => data.len() as u64,
            };
        }
    }
    for tool in &request.tools {
        bytes += (tool.name.len() + tool.description.as_ref().map_or(0, String::len)) as u64;
        bytes += json_len(&tool.parameters, 0);
    }
    bytes += request.stop.iter().map(|s| s.len() as u64).sum::<u64>();
    let input = tokens + bytes.div_ceil(4);
    (input, request.max_tokens.map_or(0, u64::from))
}

/// About how long `value` is as JSON, without writing it out.
fn json_len(value: &Value, depth: u32) -> u64 {
    // Deeper than any real schema: a guess, not a stack overflow.
    const MAX_DEPTH: u32 = 32;
    if depth > MAX_DEPTH {
        return 16;
    }
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 8,
        Value::String(s) => s.len() as u64 + 2,
        Value::Array(items) => {
            2 + items
                .iter()
                .map(|v| json_len(v, depth + 1) + 1)
                .sum::<u64>()
        }
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() as u64 + 4 + json_len(v, depth + 1))
                .sum::<u64>()
        }
    }
}

#[cfg(test)]
mod tests;

pub(crate) mod layer;

pub use layer::DEFAULT_MAX_WAITING;
use layer::RateLimitLayer;
