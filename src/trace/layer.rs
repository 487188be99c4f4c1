//! [`GenAiTraceLayer`]: the settings, the hooks, and the layer that applies
//! them.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::Span;

use super::{Config, GenAiTrace};
use crate::{ChatRequest, Error, ResponseMeta, StreamEvent, Usage};

/// Which version of OpenTelemetry's GenAI conventions the spans follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conventions {
    /// The current ones: `gen_ai.provider.name`, span name
    /// `{operation} {model}`, cache and reasoning token counts,
    /// `server.address`, and message content (when opted in) as
    /// `gen_ai.input.messages`, `gen_ai.output.messages` and
    /// `gen_ai.system_instructions`.
    Latest,
    /// What this layer emitted before (v1.36 of the conventions):
    /// `gen_ai.system`, a span named `chat`, content as `gen_ai.prompt` and
    /// `gen_ai.completion`, `llm.time_to_first_token_ms`, `llm.attempts`.
    V1_36,
}

impl Conventions {
    /// What the conventions' transition rule says to emit by default: the
    /// latest when `OTEL_SEMCONV_STABILITY_OPT_IN` lists
    /// `gen_ai_latest_experimental`, else what an existing instrumentation
    /// emitted before ([`Conventions::V1_36`]). Read once per process.
    pub fn from_env() -> Conventions {
        static CHOSEN: OnceLock<Conventions> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let opted_in = std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").is_ok_and(|v| {
                v.split(',')
                    .any(|item| item.trim() == "gen_ai_latest_experimental")
            });
            if opted_in {
                Conventions::Latest
            } else {
                Conventions::V1_36
            }
        })
    }
}

type MakeSpan = dyn Fn(&ChatRequest, Conventions) -> Span + Send + Sync;
type OnFirstOutput = dyn Fn(&ResponseMeta, Duration, &Span) + Send + Sync;
type OnEvent = dyn Fn(&StreamEvent, &Span) + Send + Sync;
type OnEos = dyn Fn(Option<&Usage>, Duration, &Span) + Send + Sync;
type OnFailure = dyn Fn(&Error, Duration, &Span) + Send + Sync;

/// The hooks a user set; each is called on the call's span.
#[derive(Clone, Default)]
pub(super) struct Hooks {
    pub(super) make_span: Option<Arc<MakeSpan>>,
    pub(super) on_first_output: Option<Arc<OnFirstOutput>>,
    pub(super) on_event: Option<Arc<OnEvent>>,
    pub(super) on_eos: Option<Arc<OnEos>>,
    pub(super) on_failure: Option<Arc<OnFailure>>,
}

impl Hooks {
    /// Whether a hook watches the answer's events.
    pub(super) fn watch_stream(&self) -> bool {
        self.on_first_output.is_some()
            || self.on_event.is_some()
            || self.on_eos.is_some()
            || self.on_failure.is_some()
    }
}

/// Applies [`GenAiTrace`]. See the [module docs](crate::trace).
#[derive(Clone)]
pub struct GenAiTraceLayer {
    pub(super) record_content: bool,
    pub(super) conventions: Option<Conventions>,
    pub(super) hooks: Hooks,
    #[cfg(feature = "otel")]
    pub(super) metrics: Option<Arc<super::metrics::Instruments>>,
}

impl Default for GenAiTraceLayer {
    fn default() -> Self {
        GenAiTraceLayer::new()
    }
}

impl fmt::Debug for GenAiTraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("GenAiTraceLayer");
        d.field("record_content", &self.record_content)
            .field("conventions", &self.conventions);
        #[cfg(feature = "otel")]
        d.field("metrics", &self.metrics.is_some());
        d.finish_non_exhaustive()
    }
}

impl GenAiTraceLayer {
    /// Spans without message content, to the conventions
    /// [`Conventions::from_env`] picks.
    pub const fn new() -> Self {
        GenAiTraceLayer {
            record_content: false,
            conventions: None,
            hooks: Hooks {
                make_span: None,
                on_first_output: None,
                on_event: None,
                on_eos: None,
                on_failure: None,
            },
            #[cfg(feature = "otel")]
            metrics: None,
        }
    }

    /// Also records message content: with [`Conventions::Latest`],
    /// `gen_ai.input.messages`, `gen_ai.system_instructions` (when the API
    /// takes system instructions apart: Anthropic, Gemini, OpenAI's
    /// Responses) and `gen_ai.output.messages`, in the conventions' JSON
    /// shapes; with [`Conventions::V1_36`], `gen_ai.prompt` and
    /// `gen_ai.completion`. At most 64 KiB of an answer's text. Content may
    /// hold personal or confidential data: it is off by default.
    pub const fn record_content(mut self, on: bool) -> Self {
        self.record_content = on;
        self
    }

    /// Follows these conventions, whatever `OTEL_SEMCONV_STABILITY_OPT_IN`
    /// says.
    pub const fn conventions(mut self, conventions: Conventions) -> Self {
        self.conventions = Some(conventions);
        self
    }

    /// Makes each call's span (instead of the layer's own, which
    /// [`GenAiTraceLayer::default_span`] makes), given the request and the
    /// conventions the layer follows. The layer records its attributes on
    /// the span made: those the span declares (tracing records only
    /// declared fields), all of them when the span starts from
    /// `default_span`. For example, to put a tenant id on every span with
    /// `tracing-opentelemetry`:
    ///
    /// ```
    /// use llm_tower::GenAiTraceLayer;
    ///
    /// let layer = GenAiTraceLayer::new().make_span_with(|request, conventions| {
    ///     let span = GenAiTraceLayer::default_span(request, conventions);
    ///     // e.g. `span.set_attribute("tenant.id", …)` (tracing_opentelemetry::OpenTelemetrySpanExt)
    ///     span
    /// });
    /// # let _ = layer;
    /// ```
    pub fn make_span_with(
        mut self,
        make: impl Fn(&ChatRequest, Conventions) -> Span + Send + Sync + 'static,
    ) -> Self {
        self.hooks.make_span = Some(Arc::new(make));
        self
    }

    /// Called once, when the first output of an answer arrives: the
    /// answer's metadata and the time since the call began.
    pub fn on_first_output(
        mut self,
        hook: impl Fn(&ResponseMeta, Duration, &Span) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_first_output = Some(Arc::new(hook));
        self
    }

    /// Called for each event of an answer. Unset, it costs nothing.
    pub fn on_event(mut self, hook: impl Fn(&StreamEvent, &Span) + Send + Sync + 'static) -> Self {
        self.hooks.on_event = Some(Arc::new(hook));
        self
    }

    /// Called when an answer's stream ends cleanly: its usage, if it said,
    /// and the time since the call began.
    pub fn on_eos(
        mut self,
        hook: impl Fn(Option<&Usage>, Duration, &Span) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_eos = Some(Arc::new(hook));
        self
    }

    /// Called when a call fails, before or after output: the error and the
    /// time since the call began.
    pub fn on_failure(
        mut self,
        hook: impl Fn(&Error, Duration, &Span) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_failure = Some(Arc::new(hook));
        self
    }

    /// Records the GenAI client metrics (feature `otel`) with `meter`:
    /// `gen_ai.client.operation.duration`, `gen_ai.client.token.usage`,
    /// `gen_ai.client.operation.time_to_first_chunk` and
    /// `gen_ai.client.operation.time_per_output_chunk`, with the
    /// conventions' units, attributes and bucket boundaries, plus
    /// `llm_tower.attempts` and `llm_tower.deployment` as attributes. The
    /// library installs no exporter: the meter comes from your
    /// OpenTelemetry SDK (`opentelemetry::global::meter("llm-tower")` once
    /// the global provider is set).
    #[cfg(feature = "otel")]
    pub fn meter(mut self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.metrics = Some(Arc::new(super::metrics::Instruments::new(meter)));
        self
    }

    /// The span this layer makes for `request` by default, to
    /// `conventions`: for [`make_span_with`](Self::make_span_with) to start
    /// from.
    pub fn default_span(request: &ChatRequest, conventions: Conventions) -> Span {
        super::span(request, conventions)
    }
}

impl<S> tower::Layer<S> for GenAiTraceLayer {
    type Service = GenAiTrace<S>;

    fn layer(&self, inner: S) -> GenAiTrace<S> {
        GenAiTrace {
            inner,
            config: Arc::new(Config {
                record_content: self.record_content,
                conventions: self.conventions.unwrap_or_else(Conventions::from_env),
                hooks: self.hooks.clone(),
                #[cfg(feature = "otel")]
                metrics: self.metrics.clone(),
            }),
        }
    }
}
