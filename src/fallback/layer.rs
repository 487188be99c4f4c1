//! [`FallbackLayer`]: the settings, and the layer that applies them.

use std::fmt;
use std::sync::Arc;

use crate::Error;

use super::{Fallback, Predicate};

/// Applies [`Fallback`] with `secondary` as the second service.
#[derive(Clone)]
pub struct FallbackLayer<B> {
    pub(super) secondary: B,
    pub(super) when: Predicate,
}

impl<B> FallbackLayer<B> {
    /// Falls back to `secondary` on failures that [`Error::is_retryable`]
    /// calls transient (put it outside the primary's retry layer, so the
    /// primary's own retries come first).
    pub fn new(secondary: B) -> Self {
        FallbackLayer {
            secondary,
            when: Arc::new(Error::is_retryable),
        }
    }

    /// Falls back on the failures `predicate` selects instead.
    pub fn when(mut self, predicate: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.when = Arc::new(predicate);
        self
    }
}

impl<B: fmt::Debug> fmt::Debug for FallbackLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("secondary", &self.secondary)
            .finish_non_exhaustive()
    }
}

impl<A, B: Clone> tower::Layer<A> for FallbackLayer<B> {
    type Service = Fallback<A, B>;

    fn layer(&self, primary: A) -> Fallback<A, B> {
        Fallback {
            primary,
            secondary: self.secondary.clone(),
            when: self.when.clone(),
        }
    }
}
