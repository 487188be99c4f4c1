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
        // What a later attempt is made from: the service (not ready: each
        // later attempt drives a clone of it ready) and the request. Boxed:
        // every layer outside moves this future, which holds every future
        // inside; these two are most of what the engine adds to it.
        kept: Box<(S, ChatRequest)>,
        policy: P,
        call: P::State,
        context: CallHandle,
        sent: u32,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, W>
    where
        S: Service<ChatRequest>,
    {
        Attempting { #[pin] attempt: Attempt<S> },
        // `failure`: what is waited out, returned if the policy gives up
        // (none before attempt 1). Here rather than beside the state, so
        // that it costs the attempting future no room.
        Waiting { #[pin] wait: W, failure: Option<Error> },
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
            kept: Box::new((readied, request)),
            policy,
            call,
            context,
            sent: 1,
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
            state: State::Waiting {
                wait,
                failure: None,
            },
            kept: Box::new((service, request)),
            policy,
            call,
            context,
            sent: 0,
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
                StateProj::Waiting { wait, failure } => {
                    if let Err(e) = ready!(wait.poll(cx)) {
                        // The failure waited out; before the first attempt,
                        // the wait's own.
                        let failure = failure.take().unwrap_or(e);
                        this.state.set(State::Done);
                        return Poll::Ready(Err(failure));
                    }
                    let (service, request) = &**this.kept;
                    let mut request = request.clone();
                    this.policy.prepare(this.call, &mut request);
                    *this.sent += 1;
                    let attempt = Attempt::new(service.clone(), request);
                    this.state.set(State::Attempting { attempt });
                    continue;
                }
                StateProj::Done => {
                    return Poll::Ready(Err(Error::misuse(
                        "the engine's response future polled after completion",
                    )));
                }
            };
            // An attempt failed before output.
            match this.policy.on_failure(this.call, &failure) {
                Some(wait) => {
                    this.state.set(State::Waiting {
                        wait,
                        failure: Some(failure),
                    });
                }
                None => {
                    report_given_up(this.context, *this.sent, &failure);
                    this.state.set(State::Done);
                    return Poll::Ready(Err(failure));
                }
            }
        }
    }
}

/// The policy gave up on `failure`: a warning when the call was tried more
/// than once. Out of line, as every failure path here is, so that the
/// path each poll takes stays short.
#[cold]
#[inline(never)]
fn report_given_up(context: &CallHandle, sent: u32, failure: &Error) {
    let sent = context.attempts().max(sent);
    // Once per count: an engine around this one that gives up on the same
    // failure has nothing to add.
    if sent > 1 && context.first_report(sent) {
        tracing::warn!(
            attempts = sent,
            reason = failure.kind(),
            error = %failure,
            "llm call failed after {sent} attempts"
        );
    }
}
