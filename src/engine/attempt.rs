//! One attempt: sent through a service driven ready, then read until its
//! first output event. What every layer that may try again holds while it
//! can: the engine, and the fallback for its primary.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

use crate::{ChatRequest, ChatStream, Error};

use super::{Priming, Ready};

pin_project! {
    /// Resolves `Ok` with the answer once it delivered its first output
    /// event (or ended cleanly without one), its metadata held back and put
    /// in front again; `Err` with the failure that ended it before any
    /// output, when trying again is still invisible to the caller.
    pub(crate) struct Attempt<S>
    where
        S: Service<ChatRequest>,
    {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S>
    where
        S: Service<ChatRequest>,
    {
        Sending { #[pin] call: Ready<S> },
        Priming { priming: Priming },
    }
}

impl<S> Attempt<S>
where
    S: Service<ChatRequest>,
{
    /// Drives `service` ready, calls it with `request`, primes the answer.
    pub(crate) fn new(service: S, request: ChatRequest) -> Self {
        Attempt {
            state: State::Sending {
                call: Ready::new(service, request),
            },
        }
    }

    /// Primes the answer of a call already made.
    pub(crate) fn called(future: S::Future) -> Self {
        Attempt {
            state: State::Sending {
                call: Ready::called(future),
            },
        }
    }
}

impl<S> Future for Attempt<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error>,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Sending { call } => {
                    let stream = ready!(call.poll(cx))?;
                    this.state.set(State::Priming {
                        priming: Priming::new(stream),
                    });
                }
                StateProj::Priming { priming } => return priming.poll(cx),
            }
        }
    }
}
