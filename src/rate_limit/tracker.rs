//! What a call that was booked does to the books: gives the booking back
//! if never sent; once answered, records the provider's report, the
//! answer's usage, and a 429 inside the stream.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::lock;
use crate::{ChatStream, Error, StreamEvent};

use super::Shared;
use super::books::{Booking, Books};

/// A call's booking and what is needed to keep its books.
pub(super) struct Tracker {
    pub(super) shared: Arc<Shared>,
    /// This process's books of the model: the booking's, or (with shared
    /// books) where reports and pauses are kept too, for an outage.
    pub(super) books: Arc<Mutex<Books>>,
    pub(super) ledger: Ledger,
    pub(super) deadline: Option<Instant>,
}

/// Where the call is booked.
pub(super) enum Ledger {
    /// In this process's books.
    Local(Booking),
    /// In the books on Redis.
    #[cfg(feature = "redis")]
    Remote(Remote),
}

/// A booking in the books on Redis.
#[cfg(feature = "redis")]
pub(super) struct Remote {
    pub(super) books: crate::redis::SharedBooks,
    pub(super) model: Arc<str>,
    pub(super) booking: crate::redis::RemoteBooking,
    /// When it may start, on this process's clock.
    pub(super) at: Instant,
    /// The usage last reported, written to Redis once, when the answer is
    /// dropped (a stream may report usage more than once; one write keeps
    /// the corrections in order).
    pub(super) used: Option<[u64; 4]>,
}

#[cfg(feature = "redis")]
impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(used) = self.used.take() {
            self.books.correct(&self.model, &mut self.booking, used);
        }
    }
}

/// A booking not used yet: given back if the call is dropped before it is
/// sent.
pub(super) struct Ticket(pub(super) Option<Tracker>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.cancel();
        }
    }
}

impl Tracker {
    /// When the call may start.
    pub(super) fn at(&self) -> Instant {
        match &self.ledger {
            Ledger::Local(booking) => booking.at,
            #[cfg(feature = "redis")]
            Ledger::Remote(r) => r.at,
        }
    }

    /// Gives the booking back.
    fn cancel(self) {
        match &self.ledger {
            Ledger::Local(booking) => lock(&self.books).cancel(booking),
            #[cfg(feature = "redis")]
            Ledger::Remote(r) => r.books.cancel(&r.model, &r.booking),
        }
    }

    /// The answer came: its headers go in the books, and its stream is
    /// watched for the usage and for a 429 inside it.
    pub(super) fn answered(self, stream: ChatStream) -> ChatStream {
        let provider = stream.meta().provider;
        self.shared.provider.get_or_init(|| provider);
        {
            let mut books = lock(&self.books);
            books.succeeded();
            if let Some(info) = &stream.meta().rate_limit {
                books.absorb(info, Instant::now());
            }
        }
        #[cfg(feature = "redis")]
        if let Ledger::Remote(r) = &self.ledger {
            r.books
                .answered(&r.model, &r.booking, stream.meta().rate_limit.as_ref());
        }
        let mut tracker = self;
        stream.observe(move |item| match item {
            Ok(StreamEvent::Usage(u)) if tracker.shared.counts_tokens() => {
                let now = Instant::now();
                match &mut tracker.ledger {
                    Ledger::Local(booking) => {
                        lock(&tracker.books).correct(booking, u.input_tokens, u.output_tokens, now);
                    }
                    #[cfg(feature = "redis")]
                    Ledger::Remote(r) => {
                        r.used = Some(super::books::amounts(u.input_tokens, u.output_tokens));
                    }
                }
            }
            Err(e) => tracker.failed(e),
            Ok(_) => {}
        })
    }

    /// The call failed: what the provider reported, and a 429, go in the
    /// books.
    pub(super) fn failed(&self, error: &Error) {
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
        let pause = (matches!(error, Error::RateLimited { .. }) && error.is_retryable())
            .then(|| error.retry_after());
        {
            let mut books = lock(&self.books);
            if let Some(info) = api.rate_limit() {
                books.absorb(info, now);
            }
            if let Some(retry_after) = pause {
                books.rate_limited(retry_after, now);
                tracing::debug!(
                    retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
                    "rate limit: the provider answered 429; pausing calls to this model"
                );
            }
        }
        #[cfg(feature = "redis")]
        if let Ledger::Remote(r) = &self.ledger {
            r.books.failed(&r.model, api.rate_limit(), pause);
        }
    }
}
