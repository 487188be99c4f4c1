//! Drive a service ready, then call it: the one step every layer takes after
//! a wait, so that no readied instance is ever held across one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

use crate::{ChatRequest, Error};

pin_project! {
    /// `service` driven ready, then called with `request`; or a call already
    /// made. Like tower's `Oneshot`, but polled again after it finished it
    /// answers an error instead of panicking.
    pub(crate) struct Ready<S>
    where
        S: Service<ChatRequest>,
    {
        #[pin]
        state: State<S, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        Readying { service: S, request: Option<ChatRequest> },
        Calling { #[pin] future: F },
        Done,
    }
}

impl<S> Ready<S>
where
    S: Service<ChatRequest>,
{
    /// Drives `service` ready, then calls it with `request`.
    pub(crate) fn new(service: S, request: ChatRequest) -> Self {
        Ready {
            state: State::Readying {
                service,
                request: Some(request),
            },
        }
    }

    /// A call already made through an instance that was ready.
    pub(crate) fn called(future: S::Future) -> Self {
        Ready {
            state: State::Calling { future },
        }
    }
}

impl<S, T> Future for Ready<S>
where
    S: Service<ChatRequest, Response = T, Error = Error>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Readying { service, request } => {
                    match ready!(poll_call(service, request, cx)) {
                        Ok(future) => this.state.set(State::Calling { future }),
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let output = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(output);
                }
                StateProj::Done => {
                    return Poll::Ready(Err(Error::misuse("a call polled after it finished")));
                }
            }
        }
    }
}

/// Drives `service` ready, then calls it with the request in `request`,
/// taken only then: the step itself, for a future that must act at the
/// moment of sending (the rate limit turns its booking into a sent call).
pub(crate) fn poll_call<S>(
    service: &mut S,
    request: &mut Option<ChatRequest>,
    cx: &mut Context<'_>,
) -> Poll<Result<S::Future, Error>>
where
    S: Service<ChatRequest, Error = Error>,
{
    ready!(service.poll_ready(cx))?;
    match request.take() {
        Some(request) => Poll::Ready(Ok(service.call(request))),
        None => Poll::Ready(Err(Error::misuse("a call polled after it was sent"))),
    }
}
