use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

use super::{Attempt, Policy};
use crate::call::CallHandle;
use crate::{ChatRequest, ChatStream, Error};

pin_project! {
    /// The response future of an [`Engine`](super::Engine): resolves when an
    /// attempt has delivered its first output event (or ended cleanly
    /// without any), or with the error that ended the last attempt.
    pub struct ResponseFuture<S, P>
    where
        S: Service<ChatRequest>,
        P: Policy,
    {
        #[pin]
        state: State<S, P::Wait>,
        // Not ready: each later attempt drives a clone of it ready.
        service: S,
        request: ChatRequest,
        policy: P,
        call: P::State,
        context: CallHandle,
        sent: u32,
        // The failure being waited out, returned if the policy gives up.
        failure: Option<Error>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, W>
    where
        S: Service<ChatRequest>,
    {
        Attempting { #[pin] attempt: Attempt<S> },
        Waiting { #[pin] wait: W },
        Done,
    }
}

impl<S, P> ResponseFuture<S, P>
where
    S: Service<ChatRequest> + Clone,
    P: Policy,
{
    /// Attempt 1, sent at once through `readied`.
    pub(super) fn sending(
        mut readied: S,
        request: ChatRequest,
        policy: P,
        mut call: P::State,
        context: CallHandle,
    ) -> Self {
        let mut first = request.clone();
        policy.prepare(&mut call, &mut first);
        let attempt = Attempt::called(readied.call(first));
        ResponseFuture {
            state: State::Attempting { attempt },
            service: readied,
            request,
            policy,
            call,
            context,
            sent: 1,
            failure: None,
        }
    }

    /// Attempt 1, sent through a clone of `service` once `wait` is over.
    pub(super) fn waiting(
        wait: P::Wait,
        service: S,
        request: ChatRequest,
        policy: P,
        call: P::State,
        context: CallHandle,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting { wait },
            service,
            request,
            policy,
            call,
            context,
            sent: 0,
            failure: None,
        }
    }
}

impl<S, P> fmt::Debug for ResponseFuture<S, P>
where
    S: Service<ChatRequest>,
    P: Policy,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.sent)
            .finish_non_exhaustive()
    }
}

impl<S, P> Future for ResponseFuture<S, P>
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
    P: Policy,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let failure = match this.state.as_mut().project() {
                StateProj::Attempting { attempt } => match ready!(attempt.poll(cx)) {
                    Ok(mut committed) => {
                        let meta = committed.meta_mut();
                        meta.attempts = meta.attempts.max(this.context.attempts()).max(*this.sent);
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(committed));
                    }
                    // Nothing was delivered: the attempt can be redone.
                    Err(e) => e,
                },
                StateProj::Waiting { wait } => {
                    if let Err(e) = ready!(wait.poll(cx)) {
                        this.state.set(State::Done);
                        // The failure waited out; before the first attempt,
                        // the wait's own.
                        return Poll::Ready(Err(this.failure.take().unwrap_or(e)));
                    }
                    *this.failure = None;
                    let mut request = this.request.clone();
                    this.policy.prepare(this.call, &mut request);
                    *this.sent += 1;
                    let attempt = Attempt::new(this.service.clone(), request);
                    this.state.set(State::Attempting { attempt });
                    continue;
                }
                StateProj::Done => {
                    return Poll::Ready(Err(Error::config(
                        "the engine's response future polled after completion",
                    )));
                }
            };
            // An attempt failed before output.
            match this.policy.on_failure(this.call, &failure) {
                Some(wait) => {
                    *this.failure = Some(failure);
                    this.state.set(State::Waiting { wait });
                }
                None => {
                    let sent = this.context.attempts().max(*this.sent);
                    // Once per count: an engine around this one that gives
                    // up on the same failure has nothing to add.
                    if sent > 1 && this.context.first_report(sent) {
                        tracing::warn!(
                            attempts = sent,
                            reason = failure.kind(),
                            error = %failure,
                            "llm call failed after {sent} attempts"
                        );
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(Err(failure));
                }
            }
        }
    }
}
