//! A concurrency limit that holds its permit for the life of the stream.
//!
//! `tower::limit::ConcurrencyLimit` releases its permit when the response
//! future resolves — for an LLM call, when the head arrives, while the
//! answer is still streaming. [`StreamConcurrencyLimit`] moves the permit
//! into the [`ChatStream`]: it is released when the stream ends, fails, or is
//! dropped.
//!
//! ```
//! use llm_tower::{OpenAi, StreamConcurrencyLimitLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), llm_tower::Error> {
//! let openai = OpenAi::builder().model("gpt-4o-mini").build()?;
//! // At most 8 answers streaming at once, across all clones.
//! let service = ServiceBuilder::new()
//!     .layer(StreamConcurrencyLimitLayer::new(8))
//!     .service(openai);
//! # let _ = service;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

use crate::{ChatRequest, ChatStream, Error};

pub(crate) mod layer;

/// Limits how many answers stream at once. See the [module docs](self).
pub struct StreamConcurrencyLimit<S> {
    inner: S,
    semaphore: PollSemaphore,
    /// Acquired by `poll_ready`, spent by `call`.
    permit: Option<OwnedSemaphorePermit>,
}

impl<S> StreamConcurrencyLimit<S> {
    /// `inner`, limited to `max` streams at once.
    pub fn new(inner: S, max: usize) -> Self {
        StreamConcurrencyLimit::with_semaphore(inner, Arc::new(Semaphore::new(max)))
    }

    /// `inner`, limited by `semaphore`'s permits.
    pub fn with_semaphore(inner: S, semaphore: Arc<Semaphore>) -> Self {
        StreamConcurrencyLimit {
            inner,
            semaphore: PollSemaphore::new(semaphore),
            permit: None,
        }
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

impl<S: Clone> Clone for StreamConcurrencyLimit<S> {
    fn clone(&self) -> Self {
        // A clone shares the semaphore, not the permit this one reserved.
        StreamConcurrencyLimit {
            inner: self.inner.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for StreamConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConcurrencyLimit")
            .field("inner", &self.inner)
            .field("available", &self.semaphore.available_permits())
            .field("reserved", &self.permit.is_some())
            .finish()
    }
}

impl<S> tower::Service<ChatRequest> for StreamConcurrencyLimit<S>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error>,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.permit.is_none() {
            self.permit = ready!(self.semaphore.poll_acquire(cx));
            if self.permit.is_none() {
                return Poll::Ready(Err(Error::config(
                    "the concurrency limit's semaphore was closed",
                )));
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        match self.permit.take() {
            Some(permit) => ResponseFuture {
                inner: Some(self.inner.call(request)),
                permit: Some(permit),
            },
            // The tower contract: `call` only after `poll_ready` said ready.
            None => ResponseFuture {
                inner: None,
                permit: None,
            },
        }
    }
}

pin_project! {
    /// The response future of [`StreamConcurrencyLimit`]: holds the permit,
    /// then hands it to the stream.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatStream, Error>>,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Error::misuse(
                "StreamConcurrencyLimit called without poll_ready",
            )));
        };
        let mut stream = ready!(inner.poll(cx))?;
        if let Some(permit) = this.permit.take() {
            // Freed when the stream ends or fails, not when the caller gets
            // round to dropping it.
            stream.hold(permit);
        }
        Poll::Ready(Ok(stream))
    }
}
