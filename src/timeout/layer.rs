//! [`StreamTimeoutLayer`]: the settings, and the layer that applies them.

use std::time::Duration;

use super::StreamTimeout;

/// Applies [`StreamTimeout`]. See the [module docs](crate::timeout).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamTimeoutLayer {
    pub(super) limits: Limits,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Limits {
    pub(super) first_event: Option<Duration>,
    pub(super) idle: Option<Duration>,
    pub(super) total: Option<Duration>,
}

impl StreamTimeoutLayer {
    /// A layer with no limit set yet.
    pub const fn new() -> Self {
        StreamTimeoutLayer {
            limits: Limits {
                first_event: None,
                idle: None,
                total: None,
            },
        }
    }

    /// The longest wait from the call to the answer's first output event
    /// (text, thinking, a tool call: metadata such as an opening role chunk
    /// does not count). Until then, the idle limit does not apply.
    pub const fn first_event(mut self, timeout: Duration) -> Self {
        self.limits.first_event = Some(timeout);
        self
    }

    /// The longest wait for the next event, from when the caller asks for
    /// it: once output has begun, or from the head on when no first-event
    /// limit is set.
    pub const fn idle(mut self, timeout: Duration) -> Self {
        self.limits.idle = Some(timeout);
        self
    }

    /// The longest a whole call may take, stream included.
    pub const fn total(mut self, timeout: Duration) -> Self {
        self.limits.total = Some(timeout);
        self
    }
}

impl<S> tower::Layer<S> for StreamTimeoutLayer {
    type Service = StreamTimeout<S>;

    fn layer(&self, inner: S) -> StreamTimeout<S> {
        StreamTimeout {
            inner,
            limits: self.limits,
        }
    }
}
