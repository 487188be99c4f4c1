//! [`GenAiTraceLayer`]: the settings, and the layer that applies them.

use super::GenAiTrace;

/// Applies [`GenAiTrace`]. See the [module docs](crate::trace).
#[derive(Debug, Clone, Copy, Default)]
pub struct GenAiTraceLayer {
    pub(super) record_content: bool,
}

impl GenAiTraceLayer {
    /// Spans without prompt or completion text.
    pub const fn new() -> Self {
        GenAiTraceLayer {
            record_content: false,
        }
    }

    /// Also records the prompt (`gen_ai.prompt`, the messages as JSON) and the
    /// completion text (`gen_ai.completion`, at most 64 KiB). They may hold
    /// personal or confidential data.
    pub const fn record_content(mut self, on: bool) -> Self {
        self.record_content = on;
        self
    }
}

impl<S> tower::Layer<S> for GenAiTraceLayer {
    type Service = GenAiTrace<S>;

    fn layer(&self, inner: S) -> GenAiTrace<S> {
        GenAiTrace {
            inner,
            record_content: self.record_content,
        }
    }
}
