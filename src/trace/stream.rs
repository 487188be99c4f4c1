//! One call as the trace layer watches it: what it records on the span, in
//! the metrics and through the hooks, from the response head to the end of
//! the answer's stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::time::Instant;
use tracing::Span;

use super::content::{self, Output};
use super::{Config, Conventions};
use crate::call::Endpoint;
use crate::chat::Events;
use crate::{Error, Message, ResponseMeta, StreamEvent, Usage};

/// What the layer knows about one call while it runs.
pub(super) struct Watch {
    config: Arc<Config>,
    span: Span,
    started: Instant,
    streaming: bool,
    first_output: bool,
    last_output: Option<Instant>,
    usage: Option<Usage>,
    finish: Option<String>,
    /// The answer's content, when recorded.
    output: Option<Output>,
    /// The answer's metadata, for the first-output hook.
    meta: Option<ResponseMeta>,
    /// Whether the request named its model (recorded when the span was
    /// made), or the provider's default is recorded from the answer.
    named_model: bool,
    /// Whether the inner stream waited since the last output: the next
    /// output begins a new chunk.
    fresh: bool,
    /// The metrics' attributes, once the head says where the call went.
    #[cfg(feature = "otel")]
    attributes: Vec<opentelemetry::KeyValue>,
    ended: bool,
}

impl Watch {
    pub(super) fn new(config: Arc<Config>, span: Span, streaming: bool, model: &str) -> Self {
        let output = config.record_content.then(Output::default);
        #[cfg(feature = "otel")]
        let attributes = if config.metrics.is_some() {
            let mut a = vec![opentelemetry::KeyValue::new(
                "gen_ai.operation.name",
                "chat",
            )];
            if !model.is_empty() {
                a.push(opentelemetry::KeyValue::new(
                    "gen_ai.request.model",
                    model.to_owned(),
                ));
            }
            a
        } else {
            Vec::new()
        };
        Watch {
            config,
            span,
            started: Instant::now(),
            streaming,
            first_output: false,
            last_output: None,
            usage: None,
            finish: None,
            output,
            meta: None,
            named_model: !model.is_empty(),
            fresh: false,
            #[cfg(feature = "otel")]
            attributes,
            ended: false,
        }
    }

    pub(super) fn span(&self) -> &Span {
        &self.span
    }

    fn latest(&self) -> bool {
        self.config.conventions == Conventions::Latest
    }

    /// Whether the answer's events must pass through the layer.
    pub(super) fn needs_stream(&self) -> bool {
        !self.span.is_disabled() || self.config.watches()
    }

    /// The call reached a provider (or failed trying): where — the
    /// endpoint that answered, else the last one tried — and the content
    /// it sent.
    pub(super) fn reached(
        &mut self,
        endpoint: Option<Arc<Endpoint>>,
        messages: Option<&[Message]>,
    ) {
        if self.latest() {
            if let Some(endpoint) = &endpoint {
                self.span.record("gen_ai.provider.name", endpoint.provider);
                self.span.record("server.address", &*endpoint.address);
                self.span.record("server.port", i64::from(endpoint.port));
            }
            if let Some(messages) = messages {
                // The APIs that take system instructions apart.
                let separate = endpoint
                    .as_ref()
                    .is_some_and(|e| matches!(e.wire, "anthropic" | "gemini" | "openai-responses"));
                let (system, history) = content::input(messages, separate);
                if let Some(system) = system {
                    self.span.record("gen_ai.system_instructions", system);
                }
                self.span.record("gen_ai.input.messages", history);
            }
        }
        #[cfg(feature = "otel")]
        if let (true, Some(endpoint)) = (self.config.metrics.is_some(), &endpoint) {
            use opentelemetry::KeyValue;
            self.attributes
                .push(KeyValue::new("gen_ai.provider.name", endpoint.provider));
            self.attributes.push(KeyValue::new(
                "server.address",
                endpoint.address.to_string(),
            ));
            self.attributes
                .push(KeyValue::new("server.port", i64::from(endpoint.port)));
        }
    }

    /// The response head arrived.
    pub(super) fn answered(&mut self, meta: &ResponseMeta) {
        if !self.named_model {
            self.span
                .record("gen_ai.request.model", meta.model.as_str());
        }
        if self.latest() {
            self.span
                .record("llm_tower.attempts", i64::from(meta.attempts));
            if let Some(deployment) = &meta.deployment {
                self.span.record("llm_tower.deployment", &**deployment);
            }
        } else {
            self.span.record("gen_ai.system", meta.provider);
            self.span.record("llm.attempts", meta.attempts);
        }
        #[cfg(feature = "otel")]
        if self.config.metrics.is_some() {
            use opentelemetry::KeyValue;
            if !self.named_model {
                self.attributes
                    .push(KeyValue::new("gen_ai.request.model", meta.model.clone()));
            }
            self.attributes.push(KeyValue::new(
                "llm_tower.attempts",
                i64::from(meta.attempts),
            ));
            if let Some(deployment) = &meta.deployment {
                self.attributes.push(KeyValue::new(
                    "llm_tower.deployment",
                    deployment.to_string(),
                ));
            }
        }
        if self.config.hooks.on_first_output.is_some() {
            self.meta = Some(meta.clone());
        }
    }

    fn observe(&mut self, event: &StreamEvent) {
        let now = Instant::now();
        if event.is_output() {
            if !self.first_output {
                self.first_output = true;
                let took = now.saturating_duration_since(self.started);
                if self.latest() {
                    if self.streaming {
                        self.span
                            .record("gen_ai.response.time_to_first_chunk", took.as_secs_f64());
                    }
                } else {
                    self.span
                        .record("llm.time_to_first_token_ms", took.as_millis() as u64);
                }
                if let (Some(hook), Some(meta)) =
                    (&self.config.hooks.on_first_output, self.meta.as_ref())
                {
                    hook(meta, took, &self.span);
                }
                #[cfg(feature = "otel")]
                if let (Some(m), true) = (&self.config.metrics, self.streaming) {
                    m.first_chunk(took, &self.attributes);
                }
            } else if self.fresh {
                // The first output of a new chunk: what arrived in one read
                // is one chunk, however many events it decodes into.
                #[cfg(feature = "otel")]
                if let (Some(m), true, Some(last)) =
                    (&self.config.metrics, self.streaming, self.last_output)
                {
                    m.per_chunk(now.saturating_duration_since(last), &self.attributes);
                }
            }
            if self.fresh || self.last_output.is_none() {
                self.last_output = Some(now);
            }
            self.fresh = false;
        }
        match event {
            StreamEvent::MessageStart { id, model } => {
                if let Some(id) = id {
                    self.span.record("gen_ai.response.id", id.as_str());
                }
                if let Some(model) = model {
                    self.span.record("gen_ai.response.model", model.as_str());
                    #[cfg(feature = "otel")]
                    if self.config.metrics.is_some()
                        && !self
                            .attributes
                            .iter()
                            .any(|kv| kv.key.as_str() == "gen_ai.response.model")
                    {
                        self.attributes.push(opentelemetry::KeyValue::new(
                            "gen_ai.response.model",
                            model.clone(),
                        ));
                    }
                }
            }
            // Recorded once, at the end: a stream may report usage more
            // than once (Anthropic's start and end), the last the whole.
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::Done {
                stop_reason: Some(reason),
            } => {
                let reason = if self.latest() {
                    content::finish_reason(reason)
                } else {
                    legacy_finish_reason(reason)
                };
                self.finish = Some(reason.to_owned());
                if self.latest() {
                    super::strings(&self.span, "gen_ai.response.finish_reasons", &[reason]);
                } else {
                    self.span.record("gen_ai.response.finish_reasons", reason);
                }
            }
            _ => {}
        }
        if let Some(output) = &mut self.output {
            output.observe(event);
        }
        if let Some(hook) = &self.config.hooks.on_event {
            hook(event, &self.span);
        }
    }

    /// The answer ended cleanly.
    fn end(&mut self) {
        self.ended = true;
        let took = self.started.elapsed();
        self.record_usage();
        self.record_output(None);
        if let Some(hook) = &self.config.hooks.on_eos {
            hook(self.usage.as_ref(), took, &self.span);
        }
        self.record_metrics(None);
    }

    /// The call failed: before its head, or in its stream.
    pub(super) fn failed(&mut self, error: &Error) {
        self.ended = true;
        let took = self.started.elapsed();
        self.span.record("error.type", error.kind());
        if self.latest() {
            self.span.record("otel.status_code", "error");
        }
        self.record_usage();
        self.record_output(Some("error"));
        if let Some(hook) = &self.config.hooks.on_failure {
            hook(error, took, &self.span);
        }
        self.record_metrics(Some(error.kind()));
    }

    fn record_usage(&self) {
        let Some(u) = &self.usage else { return };
        let n = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        self.span
            .record("gen_ai.usage.input_tokens", n(u.input_tokens));
        self.span
            .record("gen_ai.usage.output_tokens", n(u.output_tokens));
        if self.latest() {
            if let Some(x) = u.cache_read_input_tokens {
                self.span
                    .record("gen_ai.usage.cache_read.input_tokens", n(x));
            }
            if let Some(x) = u.cache_creation_input_tokens {
                self.span
                    .record("gen_ai.usage.cache_creation.input_tokens", n(x));
            }
            if let Some(x) = u.reasoning_tokens {
                self.span
                    .record("gen_ai.usage.reasoning.output_tokens", n(x));
            }
        }
    }

    fn record_output(&mut self, finish: Option<&str>) {
        let Some(output) = self.output.take() else {
            return;
        };
        let finish = finish.or(self.finish.as_deref()).unwrap_or("stop");
        if self.latest() {
            self.span
                .record("gen_ai.output.messages", output.message(finish));
        } else {
            self.span.record("gen_ai.completion", output.text());
        }
    }

    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    fn record_metrics(&self, error: Option<&str>) {
        #[cfg(feature = "otel")]
        if let Some(m) = &self.config.metrics {
            m.duration(self.started.elapsed(), &self.attributes, error);
            if let Some(u) = &self.usage {
                m.tokens(u.input_tokens, u.output_tokens, &self.attributes);
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The answer's end was read, not the stream's: a clean end.
        if self.finish.is_some() {
            self.end();
            return;
        }
        // Dropped by its caller before the end: cancelled. The call still
        // took this long and used what it reported.
        self.ended = true;
        let took = self.started.elapsed();
        self.span.record("error.type", CANCELLED);
        self.record_usage();
        self.record_output(Some(CANCELLED));
        if let Some(hook) = &self.config.hooks.on_eos {
            hook(self.usage.as_ref(), took, &self.span);
        }
        self.record_metrics(Some(CANCELLED));
    }
}

/// `error.type` of a call its caller dropped before the end.
const CANCELLED: &str = "cancelled";

/// A stop reason as this layer spelt finish reasons before
/// ([`Conventions::V1_36`]).
fn legacy_finish_reason(reason: &crate::StopReason) -> &str {
    use crate::StopReason;
    match reason {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::ContentFilter => "content_filter",
        StopReason::Refusal => "refusal",
        StopReason::PauseTurn => "pause_turn",
        StopReason::Other(other) => other,
    }
}

/// The events of an answer, recorded on the call's span, which closes with
/// the stream.
pub(super) struct TracedStream {
    inner: Events,
    watch: Option<Watch>,
}

impl TracedStream {
    pub(super) fn new(inner: Events, watch: Watch) -> Self {
        TracedStream {
            inner,
            watch: Some(watch),
        }
    }
}

impl Stream for TracedStream {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(watch) = this.watch.as_mut() else {
            return Pin::new(&mut this.inner).poll_next(cx);
        };
        let item = {
            let _entered = watch.span.enter();
            Pin::new(&mut this.inner).poll_next(cx)
        };
        match &item {
            Poll::Pending => watch.fresh = true,
            Poll::Ready(Some(Ok(event))) => watch.observe(event),
            Poll::Ready(Some(Err(e))) => {
                watch.failed(e);
                // Dropping it closes the span.
                this.watch = None;
            }
            Poll::Ready(None) => {
                watch.end();
                this.watch = None;
            }
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Every event passes as it is.
        self.inner.size_hint()
    }
}
