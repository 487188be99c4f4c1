//! [`StreamConcurrencyLimitLayer`]: the settings, and the layer that applies them.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::StreamConcurrencyLimit;

/// Applies [`StreamConcurrencyLimit`].
#[derive(Debug, Clone)]
pub struct StreamConcurrencyLimitLayer {
    limit: Limit,
}

#[derive(Debug, Clone)]
enum Limit {
    /// A new semaphore for each service the layer builds (shared by its clones).
    PerService(usize),
    /// One semaphore for every service.
    Shared(Arc<Semaphore>),
}

impl StreamConcurrencyLimitLayer {
    /// At most `max` streams at once per service this layer builds (its
    /// clones share the limit).
    pub const fn new(max: usize) -> Self {
        StreamConcurrencyLimitLayer {
            limit: Limit::PerService(max),
        }
    }

    /// At most as many streams as `semaphore` has permits, across every
    /// service that shares it.
    pub fn shared(semaphore: Arc<Semaphore>) -> Self {
        StreamConcurrencyLimitLayer {
            limit: Limit::Shared(semaphore),
        }
    }
}

impl<S> tower::Layer<S> for StreamConcurrencyLimitLayer {
    type Service = StreamConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> StreamConcurrencyLimit<S> {
        let semaphore = match &self.limit {
            Limit::PerService(max) => Arc::new(Semaphore::new(*max)),
            Limit::Shared(s) => s.clone(),
        };
        StreamConcurrencyLimit::with_semaphore(inner, semaphore)
    }
}
