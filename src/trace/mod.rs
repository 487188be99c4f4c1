//! One tracing span per call, with OpenTelemetry GenAI attributes.
//!
//! [`GenAiTraceLayer`] opens a `chat` span when a call starts and closes it
//! when the answer's stream ends (or fails, or is dropped) — not when the
//! response head arrives. It records the [GenAI semantic conventions]:
//! `gen_ai.system`, `gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.request.max_tokens`, `gen_ai.response.id`,
//! `gen_ai.response.model`, `gen_ai.response.finish_reasons`,
//! `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, plus
//! `llm.time_to_first_token_ms`, `llm.attempts` and `error.type`. Put it
//! outermost: the retries and refreshes of the layers inside are logged
//! while the span is entered, so they appear as its events.
//!
//! Prompt and completion text are not recorded unless
//! [`record_content`](GenAiTraceLayer::record_content) is turned on.
//!
//! [GenAI semantic conventions]: https://opentelemetry.io/docs/specs/semconv/gen-ai/
//!
//! ```
//! use llm_tower::{GenAiTraceLayer, OpenAi, RetryPolicy, TransportRetryLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), llm_tower::Error> {
//! let openai = OpenAi::builder().model("gpt-4o-mini").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(GenAiTraceLayer::new())
//!     .layer(TransportRetryLayer::new(RetryPolicy::default()))
//!     .service(openai);
//! # let _ = service;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::Span;
use tracing::field::Empty;

use crate::chat::Events;
use crate::{ChatRequest, ChatStream, Error, StopReason, StreamEvent};

pub(crate) mod layer;

use layer::GenAiTraceLayer;

/// The most completion text recorded with `record_content`, in bytes.
const MAX_RECORDED_CONTENT: usize = 64 * 1024;

/// A service whose calls are traced. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct GenAiTrace<S> {
    inner: S,
    record_content: bool,
}

impl<S> GenAiTrace<S> {
    /// `inner`, its calls traced as `layer` says.
    pub const fn new(inner: S, layer: GenAiTraceLayer) -> Self {
        GenAiTrace {
            inner,
            record_content: layer.record_content,
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

    fn call(&mut self, request: ChatRequest) -> Self::Future {
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
        if !request.model.is_empty() {
            span.record("gen_ai.request.model", &*request.model);
        }
        if self.record_content
            && let Ok(prompt) = serde_json::to_string(&*request.messages)
        {
            span.record("gen_ai.prompt", prompt);
        }
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture {
            future,
            span: Some(span),
            started: Instant::now(),
            record_content: self.record_content,
        }
    }
}

pin_project! {
    /// The response future of [`GenAiTrace`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        span: Option<Span>,
        started: Instant,
        record_content: bool,
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
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.future.poll(cx))
        };
        let Some(span) = this.span.take() else {
            return Poll::Ready(result);
        };
        if span.is_disabled() {
            // No subscriber records this span: watching the stream would
            // cost every event a hop for nothing.
            return Poll::Ready(result);
        }
        match result {
            Ok(stream) => {
                let meta = stream.meta();
                span.record("gen_ai.system", meta.provider);
                span.record("gen_ai.request.model", meta.model.as_str());
                span.record("llm.attempts", meta.attempts);
                Poll::Ready(Ok(stream.map_events(|inner| TracedStream {
                    inner,
                    span: Some(span),
                    started: *this.started,
                    first_output: false,
                    completion: this.record_content.then(String::new),
                })))
            }
            Err(e) => {
                span.record("error.type", e.kind());
                Poll::Ready(Err(e))
            }
        }
    }
}

/// The events of an answer, recorded on the call's span, which closes with
/// the stream.
struct TracedStream {
    inner: Events,
    span: Option<Span>,
    started: Instant,
    first_output: bool,
    completion: Option<String>,
}

impl TracedStream {
    fn observe(&mut self, span: &Span, event: &StreamEvent) {
        if event.is_output() && !self.first_output {
            self.first_output = true;
            span.record(
                "llm.time_to_first_token_ms",
                self.started.elapsed().as_millis() as u64,
            );
        }
        match event {
            StreamEvent::MessageStart { id, model } => {
                if let Some(id) = id {
                    span.record("gen_ai.response.id", id.as_str());
                }
                if let Some(model) = model {
                    span.record("gen_ai.response.model", model.as_str());
                }
            }
            StreamEvent::Usage(u) => {
                span.record("gen_ai.usage.input_tokens", u.input_tokens);
                span.record("gen_ai.usage.output_tokens", u.output_tokens);
            }
            StreamEvent::Done {
                stop_reason: Some(reason),
            } => {
                span.record("gen_ai.response.finish_reasons", finish_reason(reason));
            }
            StreamEvent::TextDelta { text } => {
                if let Some(c) = &mut self.completion
                    && c.len() + text.len() <= MAX_RECORDED_CONTENT
                {
                    c.push_str(text);
                }
            }
            _ => {}
        }
    }
}

impl Stream for TracedStream {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Out of the struct while it is used, so `observe` may borrow `this`;
        // put back unless the call is over (dropping it closes the span).
        let Some(span) = this.span.take() else {
            return Pin::new(&mut this.inner).poll_next(cx);
        };
        let item = {
            let _entered = span.enter();
            Pin::new(&mut this.inner).poll_next(cx)
        };
        match &item {
            Poll::Pending => this.span = Some(span),
            Poll::Ready(Some(Ok(event))) => {
                this.observe(&span, event);
                this.span = Some(span);
            }
            Poll::Ready(Some(Err(e))) => {
                span.record("error.type", e.kind());
            }
            Poll::Ready(None) => {
                if let Some(text) = this.completion.take() {
                    span.record("gen_ai.completion", text);
                }
            }
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Every event passes as it is.
        self.inner.size_hint()
    }
}

/// A stop reason as the conventions spell finish reasons.
fn finish_reason(reason: &StopReason) -> &str {
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
