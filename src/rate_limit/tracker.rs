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
    pub(super) books: Arc<Mutex<Books>>,
    pub(super) booking: Booking,
    pub(super) deadline: Option<Instant>,
}

/// A booking not used yet: given back if the call is dropped before it is
/// sent.
pub(super) struct Ticket(pub(super) Option<Tracker>);

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
        let mut tracker = self;
        stream.observe(move |item| match item {
            Ok(StreamEvent::Usage(u)) if tracker.shared.counts_tokens() => {
                let t = &mut tracker;
                let now = Instant::now();
                lock(&t.books).correct(&mut t.booking, u.input_tokens, u.output_tokens, now);
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
