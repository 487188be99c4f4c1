//! Deadlines that cover the stream, not only the response head.
//!
//! `tower::timeout` bounds a service's response future; an LLM call lives
//! on in its stream. [`StreamTimeoutLayer`] bounds three things, each
//! optional:
//!
//! - **first event**: from the call to the first *output* event of the
//!   answer — the time to first token. Metadata does not count: a server
//!   that sends OpenAI's opening role chunk or Anthropic's `message_start`
//!   and then nothing has not started answering (see
//!   [`StreamEvent::is_output`]);
//! - **idle**: the longest the stream waits for its next event once output
//!   has begun (or, with no first-event limit, from the head on), counted
//!   from when the caller asks for it, so time the caller spends on an
//!   event is not charged to the server (events are
//!   [`StreamEvent`]s: keep-alive comments and `ping`s do not count — a
//!   server that only says it is still there is not delivering);
//! - **total**: from the call to the end of the stream.
//!
//! An expiry ends the stream with [`Error::Timeout`] naming the phase (or
//! fails the response future, if it comes before the head). Timeouts are
//! retryable: with a [`TransportRetryLayer`](crate::TransportRetryLayer)
//! *outside* this layer, a stream that stalls before any output is cut and
//! sent again. A total deadline also travels with the request, as a
//! [`Deadline`](crate::Deadline) a caller sets does, so retrying layers
//! *inside* it do not start a wait that would outlast it.
//!
//! ```
//! use llm_tower::mock::{MockServer, Reply};
//! use llm_tower::{ChatRequest, Message, OpenAi, RetryPolicy, StreamTimeoutLayer, TransportRetryLayer};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let server = MockServer::start().await;
//! server.push(Reply::text(["never"]).stall_after(0)); // stalls before output
//! server.push(Reply::text(["Hello"]));
//!
//! let openai = OpenAi::builder().base_url(server.openai_url()).model("m").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(TransportRetryLayer::new(RetryPolicy::default()))
//!     .layer(StreamTimeoutLayer::new().first_event(Duration::from_secs(10)).idle(Duration::from_secs(30)))
//!     .service(openai);
//!
//! let answer = service.oneshot(ChatRequest::new("").message(Message::user("hi"))).await?;
//! assert_eq!(answer.completion().await?.text, "Hello");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use futures_core::Stream;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::call::CallHandle;
use crate::chat::Events;
use crate::{ChatRequest, ChatStream, Error, StreamEvent, TimeoutPhase};

pub(crate) mod layer;

use layer::{Limits, StreamTimeoutLayer};

/// A service whose answers are cut when they stall. See the [module
/// docs](self).
#[derive(Debug, Clone)]
pub struct StreamTimeout<S> {
    inner: S,
    limits: Limits,
}

impl<S> StreamTimeout<S> {
    /// `inner`, its answers cut by `layer`'s limits.
    pub const fn new(inner: S, layer: StreamTimeoutLayer) -> Self {
        StreamTimeout {
            inner,
            limits: layer.limits,
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

impl<S> tower::Service<ChatRequest> for StreamTimeout<S>
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
        let now = Instant::now();
        // A limit too long for the clock (`Duration::MAX`) is no limit.
        let total = self.limits.total.and_then(|t| crate::later(now, t));
        let first = self.limits.first_event.and_then(|t| crate::later(now, t));
        // Before the head, the nearer of the first-event and total deadlines.
        let head = match (first, total) {
            (Some(f), Some(t)) if t < f => Some((t, TimeoutPhase::Total)),
            (Some(f), _) => Some((f, TimeoutPhase::FirstEvent)),
            (None, Some(t)) => Some((t, TimeoutPhase::Total)),
            (None, None) => None,
        };
        // With a deadline before the head: the call's context names the
        // provider for a timeout then, and carries the total deadline to
        // the layers inside, so they do not start a wait that would outlast
        // it.
        let called = head.map(|_| request.call());
        if let (Some(call), Some(at)) = (&called, total) {
            call.limit(at);
        }
        let limits = Cut {
            first,
            total,
            idle: self.limits.idle,
        };
        ResponseFuture {
            future: self.inner.call(request),
            // The stream's box, made now with the head's timer in it: one
            // allocation and one timer registration for head and stream.
            stream: head.map(|(at, _)| Box::pin(TimeoutStream::new(limits, Some(at)))),
            head_phase: head.map_or(TimeoutPhase::Total, |(_, p)| p),
            called,
            limits,
        }
    }
}

/// A call's deadlines.
#[derive(Debug, Clone, Copy)]
struct Cut {
    first: Option<Instant>,
    total: Option<Instant>,
    idle: Option<Duration>,
}

pin_project! {
    /// The response future of [`StreamTimeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        // The answer's stream-to-be, its timer running for the head.
        stream: Option<Pin<Box<TimeoutStream>>>,
        head_phase: TimeoutPhase,
        // Names the provider for a timeout before the head.
        called: Option<CallHandle>,
        limits: Cut,
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
        if let Poll::Ready(result) = this.future.poll(cx) {
            let stream = result?;
            let provider = stream.meta().provider;
            // The head's timer, set for the stream's first deadline (the
            // nearer of first-event and total), carries on.
            let mut cut = this
                .stream
                .take()
                .unwrap_or_else(|| Box::pin(TimeoutStream::new(*this.limits, None)));
            return Poll::Ready(Ok(stream.map_boxed(|inner| {
                let s = cut.as_mut().project();
                *s.inner = Some(inner);
                *s.provider = provider;
                cut
            })));
        }
        if let Some(cut) = this.stream.as_mut()
            && let Some(sleep) = cut.as_mut().project().sleep.as_pin_mut()
        {
            ready!(sleep.poll(cx));
            // No head yet: the provider that was sent the call, if any.
            return Poll::Ready(Err(Error::Timeout {
                provider: this.called.as_ref().map_or("unknown", CallHandle::provider),
                phase: *this.head_phase,
            }));
        }
        Poll::Pending
    }
}

/// The deadline that applies now, and its phase.
fn next_deadline(
    first: Option<Instant>,
    total: Option<Instant>,
    idle_from_now: Option<Instant>,
) -> Option<(Instant, TimeoutPhase)> {
    let per_event = match idle_from_now {
        Some(at) => Some((at, TimeoutPhase::Idle)),
        None => first.map(|at| (at, TimeoutPhase::FirstEvent)),
    };
    match (per_event, total) {
        (Some((at, phase)), Some(t)) if at <= t => Some((at, phase)),
        (_, Some(t)) => Some((t, TimeoutPhase::Total)),
        (per_event, None) => per_event,
    }
}

pin_project! {
    /// The events of an answer, cut at the first deadline that passes.
    ///
    /// The timer is moved lazily: a stream delivering events steadily only
    /// notes when each wait starts, and the timer, still set for an earlier
    /// deadline, is pushed back when it fires early — at most once per idle
    /// period, not once per event.
    struct TimeoutStream {
        // `None` before the head and once over: dropped, connection and
        // all, when a deadline passes.
        inner: Option<Events>,
        // The deadline of the current wait, and its phase.
        deadline: Option<(Instant, TimeoutPhase)>,
        // An event was delivered since `deadline` was computed.
        delivered: bool,
        // An output event was delivered: the first-event limit is met.
        output: bool,
        // One timer per call, moved with `reset` rather than re-created;
        // made when first needed. Set at or before `deadline`.
        #[pin]
        sleep: Option<Sleep>,
        // The waker the timer holds since it was last polled.
        timer_waker: Option<Waker>,
        limits: Cut,
        provider: &'static str,
    }
}

impl TimeoutStream {
    /// A stream cut by `limits`, its timer set for `head` if given.
    fn new(limits: Cut, head: Option<Instant>) -> Self {
        TimeoutStream {
            inner: None,
            deadline: next_deadline(limits.first, limits.total, None),
            delivered: false,
            output: false,
            sleep: head.map(tokio::time::sleep_until),
            timer_waker: None,
            limits,
            provider: "unknown",
        }
    }
}

impl Stream for TimeoutStream {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(item)) => {
                *this.delivered = true;
                *this.output |= item.as_ref().is_ok_and(StreamEvent::is_output);
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                *this.inner = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let limits = *this.limits;
        if *this.delivered {
            // A new wait. Before output with a first-event limit, that
            // limit still governs; otherwise the idle period counts from now.
            *this.delivered = false;
            if *this.output || limits.first.is_none() {
                let idle = limits.idle.and_then(|d| crate::later(Instant::now(), d));
                *this.deadline = next_deadline(None, limits.total, idle);
            }
        }
        let Some((at, phase)) = *this.deadline else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        // Set just above when it was not: `None` cannot happen here.
        let Some(mut sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        if sleep.deadline() > at {
            // The deadline came nearer (an idle limit shorter than what was
            // left of the first-event one).
            sleep.as_mut().reset(at);
            *this.timer_waker = None;
        }
        loop {
            // A timer that has not fired and holds a waker for this task has
            // nothing new to learn: polling it again would only swap wakers.
            if !sleep.is_elapsed()
                && this
                    .timer_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            if sleep.as_mut().poll(cx).is_pending() {
                *this.timer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if sleep.deadline() >= at {
                break;
            }
            // It fired for an earlier deadline: move it to this one.
            sleep.as_mut().reset(at);
            *this.timer_waker = None;
        }
        *this.inner = None;
        Poll::Ready(Some(Err(Error::Timeout {
            provider: this.provider,
            phase,
        })))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            // A deadline may pass before the next event: then one error
            // takes the place of what was left, so at least one item of a
            // stream that has any; never more than the stream has.
            Some(inner) => {
                let (lower, upper) = inner.size_hint();
                (lower.min(1), upper)
            }
            None => (0, Some(0)),
        }
    }
}
