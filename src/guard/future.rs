use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

use super::{Attempts, GuardPolicy, Priming};
use crate::{ChatRequest, ChatStream, Error};

pin_project! {
    /// The response future of a [`Guard`](super::Guard): resolves when an
    /// attempt has delivered its first output event (or ended cleanly
    /// without any), or with the error that ended the last attempt.
    pub struct ResponseFuture<S, P>
    where
        S: Service<ChatRequest>,
        P: GuardPolicy,
    {
        #[pin]
        state: State<S::Future, P::Wait>,
        service: S,
        request: ChatRequest,
        policy: P,
        call: P::State,
        attempts: Attempts,
        guard_attempts: u32,
        // The failure being waited out, returned if the policy gives up.
        failure: Option<Error>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, W> {
        Calling { #[pin] future: F },
        Priming { priming: Priming },
        Waiting { #[pin] wait: W },
        Readying,
        Done,
    }
}

impl<S, P> ResponseFuture<S, P>
where
    S: Service<ChatRequest>,
    P: GuardPolicy,
{
    pub(super) fn new(
        future: S::Future,
        service: S,
        request: ChatRequest,
        policy: P,
        call: P::State,
        attempts: Attempts,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            service,
            request,
            policy,
            call,
            attempts,
            guard_attempts: 1,
            failure: None,
        }
    }
}

impl<S, P> fmt::Debug for ResponseFuture<S, P>
where
    S: Service<ChatRequest>,
    P: GuardPolicy,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.guard_attempts)
            .finish_non_exhaustive()
    }
}

impl<S, P> Future for ResponseFuture<S, P>
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error>,
    P: GuardPolicy,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let failure = match this.state.as_mut().project() {
                StateProj::Calling { future } => match ready!(future.poll(cx)) {
                    Ok(stream) => {
                        this.state.set(State::Priming {
                            priming: Priming::new(stream),
                        });
                        continue;
                    }
                    Err(e) => e,
                },
                StateProj::Priming { priming } => match ready!(priming.poll(cx)) {
                    Ok(mut committed) => {
                        let meta = committed.meta_mut();
                        meta.attempts = meta
                            .attempts
                            .max(this.attempts.get())
                            .max(*this.guard_attempts);
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(committed));
                    }
                    // Nothing was delivered: the attempt can be redone.
                    Err(e) => e,
                },
                StateProj::Waiting { wait } => {
                    if ready!(wait.poll(cx)) {
                        this.state.set(State::Readying);
                        continue;
                    }
                    this.state.set(State::Done);
                    let e = this
                        .failure
                        .take()
                        .unwrap_or_else(|| Error::config("guard gave up without a failure"));
                    return Poll::Ready(Err(e));
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(e));
                    }
                    let mut request = this.request.clone();
                    this.policy.prepare(this.call, &mut request);
                    *this.guard_attempts += 1;
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                    continue;
                }
                StateProj::Done => {
                    return Poll::Ready(Err(Error::config(
                        "guard response future polled after completion",
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
                    let sent = this.attempts.get().max(*this.guard_attempts);
                    if sent > 1 {
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
