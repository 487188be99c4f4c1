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
//!   [`StreamEvent::is_output`](crate::StreamEvent::is_output));
//! - **idle**: the longest the stream waits for its next event once output
//!   has begun (or, with no first-event limit, from the head on), counted
//!   from when the caller asks for it, so time the caller spends on an
//!   event is not charged to the server (events are
//!   [`StreamEvent`](crate::StreamEvent)s: keep-alive comments and `ping`s do not count — a
//!   server that only says it is still there is not delivering);
//! - **total**: from the call to the end of the stream.
//!
//! An expiry ends the stream with [`Error::Timeout`] naming the phase (or
//! fails the response future, if it comes before the head). The limits go
//! on the answer's events rather than around them: every timeout layer over
//! one answer shares one timer, the nearest of their limits applying, and
//! no event passes through a stream per layer. Before the head too, a layer
//! whose deadline is later than the head timer another timeout layer set
//! for the same call (one inside it, typically) waits on that timer, as
//! long as it wakes this layer's task; it sets its own if that one goes
//! first (its attempt failed, or output began) or is due: one timer per
//! call, not one per layer. Timeouts are
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
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::call::CallHandle;
use crate::chat::cut::{Cut, Limits, next_deadline};
use crate::{ChatRequest, ChatStream, Error, TimeoutPhase};

pub(crate) mod layer;

use layer::StreamTimeoutLayer;

/// A service whose answers are cut when they stall. See the [module
/// docs](self).
#[derive(Debug, Clone)]
pub struct StreamTimeout<S> {
    inner: S,
    limits: layer::Limits,
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
        let head = next_deadline(first, total, None);
        // With a deadline before the head: the call's context names the
        // provider for a timeout then, and carries the total deadline to
        // the layers inside, so they do not start a wait that would outlast
        // it.
        let called = head.map(|_| request.call());
        if let (Some(call), Some(at)) = (&called, total) {
            call.limit(at);
        }
        let limits = Limits {
            first,
            total,
            idle: self.limits.idle,
        };
        let future = self.inner.call(request);
        // A timeout layer inside, reached as the call was made, may have
        // set a timer for the head that fires before this layer's deadline:
        // then this layer may rely on it rather than set a second timer for
        // every call. Whether it does is settled when polled: only on a
        // timer that wakes this task, and only while it serves the head.
        let (cut, relied_on) = match (head, &called) {
            (Some((at, _)), Some(call)) if call.armed_by(at) => (None, Some(at)),
            (Some((at, _)), Some(call)) => (Some(armed_cut(limits, at, call)), None),
            _ => (None, None),
        };
        ResponseFuture {
            future,
            // Made now with the head's timer in it, which goes on with the
            // answer: one allocation and one timer for head and stream.
            cut,
            relied_on,
            head_phase: head.map_or(TimeoutPhase::Total, |(_, p)| p),
            called,
            limits,
        }
    }
}

/// Deadlines `limits` with a timer for the head due at `at`, recorded in
/// `call`'s context for a timeout layer outside to rely on.
fn armed_cut(limits: Limits, at: Instant, call: &CallHandle) -> Pin<Box<Cut>> {
    let mut cut = Box::pin(Cut::new(limits, Some(at)));
    cut.as_mut().arm(call, at);
    cut
}

pin_project! {
    /// The response future of [`StreamTimeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        // The answer's deadlines-to-be, their timer running for the head.
        cut: Option<Pin<Box<Cut>>>,
        // With no timer of its own: the head deadline for which it relies
        // on a timeout layer inside.
        relied_on: Option<Instant>,
        head_phase: TimeoutPhase,
        // Names the provider for a timeout before the head.
        called: Option<CallHandle>,
        limits: Limits,
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
            if let (Some(_), Some(call)) = (this.relied_on.take(), this.called.as_ref()) {
                call.stop_relying(cx.waker());
            }
            // Taken now, so that a failure drops it (and its timer, and its
            // record for a layer outside) with this future's answer.
            let cut = this.cut.take();
            let mut stream = result?;
            // The head's timer, set for the stream's first deadline (the
            // nearer of first-event and total), carries on; or this
            // layer's limits join those a layer inside put on the stream.
            match cut {
                Some(cut) => stream.cut_by(cut, cx.waker()),
                None => stream.limit_by(*this.limits, cx.waker()),
            }
            return Poll::Ready(Ok(stream));
        }
        if let (Some(at), Some(call)) = (*this.relied_on, this.called.as_ref()) {
            if call.rely(at, Instant::now(), cx.waker()) {
                return Poll::Pending;
            }
            // The timer relied on went (its attempt failed) or is due: this
            // layer sets its own.
            *this.relied_on = None;
            *this.cut = Some(armed_cut(*this.limits, at, call));
        }
        if let Some(cut) = this.cut.as_mut() {
            ready!(cut.as_mut().poll_head(cx));
            *this.cut = None;
            // No head yet: the provider that was sent the call, if any.
            return Poll::Ready(Err(Error::Timeout {
                provider: this.called.as_ref().map_or("unknown", CallHandle::provider),
                phase: *this.head_phase,
            }));
        }
        Poll::Pending
    }
}
