//! What a call that was booked does to the books: gives the booking back
//! if never sent; once answered, records the provider's report, the
//! answer's usage, and a 429 inside the stream.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::chat::Events;
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
        stream.map_events(|events| Watch {
            events,
            tracker: self,
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
