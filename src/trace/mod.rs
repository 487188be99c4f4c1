//! One tracing span per call, to OpenTelemetry's GenAI conventions, the
//! GenAI client metrics, and hooks.
//!
//! [`GenAiTraceLayer`] opens a span when a call starts and closes it when
//! the answer's stream ends (or fails, or is dropped) — not when the
//! response head arrives — so the span covers the whole logical call, its
//! retries included. With `tracing-opentelemetry` the span reaches an OTLP
//! collector as a client span with the [GenAI semantic conventions]'
//! attributes:
//!
//! - its name `{gen_ai.operation.name} {gen_ai.request.model}` (`chat
//!   gpt-4o`), kind client, `error.type` (the [`Error::kind`] of a failure)
//!   and an error status when the call failed;
//! - `gen_ai.provider.name` (`openai`, `anthropic`, `gcp.gemini`,
//!   `gcp.vertex_ai`, `azure.ai.openai`, …, worked out from the provider
//!   and its host), `server.address`, `server.port`;
//! - the request's parameters, the response's id, model and finish
//!   reasons, its usage (cache and reasoning tokens too), the time to the
//!   first chunk of a streaming answer;
//! - `llm_tower.attempts` and `llm_tower.deployment` (a
//!   [`Pool`](crate::Pool)'s);
//! - message content only when opted in
//!   ([`record_content`](GenAiTraceLayer::record_content)).
//!
//! Which version of the conventions is followed is [`Conventions`]: by
//! their transition rule, the latest when `OTEL_SEMCONV_STABILITY_OPT_IN`
//! lists `gen_ai_latest_experimental`, else what this layer emitted before
//! (v1.36: `gen_ai.system`, …). Choose with
//! [`conventions`](GenAiTraceLayer::conventions).
//!
//! Put it outermost: what the layers inside log while the call runs —
//! a retry, a refresh, a fallback, a cooldown, a hedge, each with an
//! `llm_tower.event` field naming it — is logged inside the span, so it
//! becomes one of its events.
//!
//! **Metrics** (feature `otel`, [`meter`](GenAiTraceLayer::meter)): the
//! conventions' four client histograms, through the OpenTelemetry metrics
//! API — what OpenTelemetry asks libraries to depend on; the exporter is
//! yours. **Hooks**, as tower-http's trace layer has them:
//! [`make_span_with`](GenAiTraceLayer::make_span_with),
//! [`on_first_output`](GenAiTraceLayer::on_first_output),
//! [`on_event`](GenAiTraceLayer::on_event),
//! [`on_eos`](GenAiTraceLayer::on_eos),
//! [`on_failure`](GenAiTraceLayer::on_failure).
//!
//! With no subscriber, no meter and no hook, the layer adds nothing to an
//! answer's stream.
//!
//! [GenAI semantic conventions]: https://opentelemetry.io/docs/specs/semconv/gen-ai/
//!
//! ```
//! use llm_tower::trace::Conventions;
//! use llm_tower::{GenAiTraceLayer, OpenAi, RetryPolicy, TransportRetryLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), llm_tower::Error> {
//! let openai = OpenAi::builder().model("gpt-4o-mini").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(GenAiTraceLayer::new().conventions(Conventions::Latest))
//!     .layer(TransportRetryLayer::new(RetryPolicy::default()))
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
use tracing::Span;
use tracing::field::Empty;

use crate::call::CallHandle;
use crate::{ChatRequest, ChatStream, Error, Message};

mod content;
pub(crate) mod layer;
#[cfg(feature = "otel")]
mod metrics;
mod stream;

pub use layer::Conventions;
use layer::{GenAiTraceLayer, Hooks};
use stream::{TracedStream, Watch};

/// A service whose calls are traced. See the [module docs](self).
#[derive(Clone)]
pub struct GenAiTrace<S> {
    inner: S,
    config: Arc<Config>,
}

/// What every call of one layer's services shares.
pub(crate) struct Config {
    record_content: bool,
    conventions: Conventions,
    hooks: Hooks,
    #[cfg(feature = "otel")]
    metrics: Option<Arc<metrics::Instruments>>,
}

impl Config {
    /// Whether anything but the span watches the answer.
    fn watches(&self) -> bool {
        #[cfg(feature = "otel")]
        if self.metrics.is_some() {
            return true;
        }
        self.hooks.watch_stream()
    }
}

impl<S: fmt::Debug> fmt::Debug for GenAiTrace<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenAiTrace")
            .field("inner", &self.inner)
            .field("conventions", &self.config.conventions)
            .finish_non_exhaustive()
    }
}

impl<S> GenAiTrace<S> {
    /// `inner`, its calls traced as `layer` says.
    pub fn new(inner: S, layer: GenAiTraceLayer) -> Self {
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

/// The span of a call, to `conventions`, with what the request says.
fn span(request: &ChatRequest, conventions: Conventions) -> Span {
    let model = &*request.model;
    match conventions {
        Conventions::Latest => {
            let span = tracing::info_span!(
                "gen_ai.chat",
                otel.name = %if model.is_empty() { "chat".to_owned() } else { format!("chat {model}") },
                otel.kind = "client",
                otel.status_code = Empty,
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = Empty,
                gen_ai.request.model = Empty,
                gen_ai.request.max_tokens = request.max_tokens.map(i64::from),
                gen_ai.request.temperature = request.temperature.map(f64::from),
                gen_ai.request.top_p = request.top_p.map(f64::from),
                gen_ai.request.stop_sequences = Empty,
                gen_ai.request.stream = Empty,
                gen_ai.request.reasoning.level = Empty,
                gen_ai.request.previous_response.id = Empty,
                gen_ai.output.type = Empty,
                gen_ai.response.id = Empty,
                gen_ai.response.model = Empty,
                gen_ai.response.finish_reasons = Empty,
                gen_ai.response.time_to_first_chunk = Empty,
                gen_ai.usage.input_tokens = Empty,
                gen_ai.usage.output_tokens = Empty,
                gen_ai.usage.cache_read.input_tokens = Empty,
                gen_ai.usage.cache_creation.input_tokens = Empty,
                gen_ai.usage.reasoning.output_tokens = Empty,
                server.address = Empty,
                server.port = Empty,
                error.type = Empty,
                llm_tower.attempts = Empty,
                llm_tower.deployment = Empty,
                gen_ai.input.messages = Empty,
                gen_ai.output.messages = Empty,
                gen_ai.system_instructions = Empty,
            );
            if span.is_disabled() {
                return span;
            }
            if !model.is_empty() {
                span.record("gen_ai.request.model", model);
            }
            if request.stream {
                span.record("gen_ai.request.stream", true);
            }
            if let Some(effort) = request.reasoning.as_ref().and_then(|r| r.effort) {
                span.record("gen_ai.request.reasoning.level", effort.as_str());
            }
            if let Some(id) = &request.previous_response_id {
                span.record("gen_ai.request.previous_response.id", id.as_str());
            }
            if request.response_format.is_some() {
                span.record("gen_ai.output.type", "json");
            }
            if !request.stop.is_empty() {
                strings(&span, "gen_ai.request.stop_sequences", &request.stop);
            }
            span
        }
        Conventions::V1_36 => {
            let span = tracing::info_span!(
                "chat",
                otel.kind = "client",
                gen_ai.operation.name = "chat",
                gen_ai.system = Empty,
                gen_ai.request.model = Empty,
                gen_ai.request.max_tokens = request.max_tokens,
                gen_ai.request.temperature = request.temperature,
                gen_ai.response.id = Empty,
                gen_ai.response.model = Empty,
                gen_ai.response.finish_reasons = Empty,
                gen_ai.usage.input_tokens = Empty,
                gen_ai.usage.output_tokens = Empty,
                llm.time_to_first_token_ms = Empty,
                llm.attempts = Empty,
                error.type = Empty,
                gen_ai.prompt = Empty,
                gen_ai.completion = Empty,
            );
            if !model.is_empty() {
                span.record("gen_ai.request.model", model);
            }
            span
        }
    }
}

/// Records a list of strings: an array attribute when the span goes to
/// OpenTelemetry through `tracing-opentelemetry` 0.34 (feature `otel`),
/// else (another subscriber, or another version of the bridge) a JSON
/// array in a string.
fn strings(span: &Span, name: &'static str, values: &[impl AsRef<str>]) {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        if span.context().span().span_context().is_valid() {
            let values = values
                .iter()
                .map(|v| v.as_ref().to_owned().into())
                .collect();
            span.set_attribute(
                name,
                opentelemetry::Value::Array(opentelemetry::Array::String(values)),
            );
            return;
        }
    }
    let values: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
    if let Ok(json) = serde_json::to_string(&values) {
        span.record(name, json);
    }
}

impl<S> tower::Service<ChatRequest> for GenAiTrace<S>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error>,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ChatRequest) -> Self::Future {
        let config = &self.config;
        let span = match &config.hooks.make_span {
            Some(make) => make(&request, config.conventions),
            None => span(&request, config.conventions),
        };
        let watched = !span.is_disabled() || config.watches();
        // Only what a watched call needs: where it went, its content.
        let call = watched.then(|| request.call());
        let latest = config.conventions == Conventions::Latest;
        let messages =
            (watched && latest && config.record_content).then(|| request.messages.clone());
        if config.record_content
            && !latest
            && !span.is_disabled()
            && let Ok(prompt) = serde_json::to_string(&*request.messages)
        {
            span.record("gen_ai.prompt", prompt);
        }
        // Boxed: an unwatched call moves a small future around.
        let watch = call.map(|call| {
            Box::new(Head {
                call,
                messages,
                watch: Watch::new(
                    self.config.clone(),
                    span.clone(),
                    request.stream,
                    &request.model,
                ),
            })
        });
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture { future, watch }
    }
}

/// What a watched call holds until its head arrives.
struct Head {
    call: CallHandle,
    messages: Option<Arc<Vec<Message>>>,
    watch: Watch,
}

pin_project! {
    /// The response future of [`GenAiTrace`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        watch: Option<Box<Head>>,
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
        let result = {
            let _entered = this.watch.as_ref().map(|h| h.watch.span().enter());
            ready!(this.future.poll(cx))
        };
        let Some(head) = this.watch.take() else {
            return Poll::Ready(result);
        };
        let Head {
            call,
            messages,
            mut watch,
        } = *head;
        let endpoint = match &result {
            Ok(stream) => stream.meta().endpoint.clone().or_else(|| call.endpoint()),
            Err(_) => call.endpoint(),
        };
        watch.reached(endpoint, messages.as_deref().map(Vec::as_slice));
        match result {
            Ok(stream) => {
                watch.answered(stream.meta());
                if !watch.needs_stream() {
                    // Nothing records the answer's events: no hop for each.
                    return Poll::Ready(Ok(stream));
                }
                Poll::Ready(Ok(
                    stream.map_events(|inner| TracedStream::new(inner, watch))
                ))
            }
            Err(e) => {
                watch.failed(&e);
                Poll::Ready(Err(e))
            }
        }
    }
}
