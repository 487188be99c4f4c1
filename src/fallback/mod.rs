//! Send a call to a second service when the first fails before output.
//!
//! [`Fallback`] calls its primary service; when that attempt fails before
//! any output with an error the predicate selects, it sends the same request
//! to the secondary — another provider, or API-key auth after OAuth fails —
//! and the caller sees one stream. After output it never falls back: the
//! error is passed on.
//!
//! ```
//! use llm_tower::mock::{MockServer, Reply};
//! use llm_tower::{Anthropic, ChatRequest, Error, FallbackLayer, Message, OpenAi};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let server = MockServer::start().await;
//! server.push(Reply::api_error(529, "overloaded_error", "Overloaded"));
//! server.push(Reply::text(["Hello from the other one"]));
//!
//! let anthropic = Anthropic::builder().base_url(server.anthropic_url()).model("claude").build()?;
//! let openai = OpenAi::builder().base_url(server.openai_url()).model("gpt").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(FallbackLayer::new(openai).when(|e| matches!(e, Error::Overloaded { .. })))
//!     .service(anthropic);
//!
//! let answer = service.oneshot(ChatRequest::new("").message(Message::user("hi"))).await?;
//! assert_eq!(answer.meta().provider, "openai");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::engine::{Attempt, Ready};
use crate::{ChatRequest, ChatStream, Error};

pub(crate) mod layer;

use layer::FallbackLayer;

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// A primary service with a secondary for failures before output. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Fallback<A, B> {
    primary: A,
    secondary: B,
    when: Predicate,
}

impl<A, B> Fallback<A, B> {
    /// `primary`, with `layer`'s secondary for the failures it selects.
    pub fn new(primary: A, layer: FallbackLayer<B>) -> Self {
        Fallback {
            primary,
            secondary: layer.secondary,
            when: layer.when,
        }
    }

    /// The primary service.
    pub fn get_ref(&self) -> &A {
        &self.primary
    }

    /// The primary service, mutably.
    pub fn get_mut(&mut self) -> &mut A {
        &mut self.primary
    }

    /// The primary service, consuming this one.
    pub fn into_inner(self) -> A {
        self.primary
    }

    /// The secondary service.
    pub fn secondary(&self) -> &B {
        &self.secondary
    }
}

impl<A: fmt::Debug, B: fmt::Debug> fmt::Debug for Fallback<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("primary", &self.primary)
            .field("secondary", &self.secondary)
            .finish_non_exhaustive()
    }
}

impl<A, B> tower::Service<ChatRequest> for Fallback<A, B>
where
    A: tower::Service<ChatRequest, Response = ChatStream, Error = Error>,
    B: tower::Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<A, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The secondary is driven ready only when it is needed.
        self.primary.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let spare = request.clone();
        ResponseFuture {
            state: State::Primary {
                attempt: Attempt::called(self.primary.call(request)),
            },
            fallback: Some(Box::new((self.secondary.clone(), spare))),
            when: self.when.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`Fallback`].
    pub struct ResponseFuture<A, B>
    where
        A: tower::Service<ChatRequest>,
        B: tower::Service<ChatRequest>,
    {
        #[pin]
        state: State<A, B>,
        // Boxed: the primary's future, which this one holds, is moved by
        // every layer outside; the request is most of what this one adds.
        fallback: Option<Box<(B, ChatRequest)>>,
        when: Predicate,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<A, B>
    where
        A: tower::Service<ChatRequest>,
        B: tower::Service<ChatRequest>,
    {
        Primary { #[pin] attempt: Attempt<A> },
        Secondary { #[pin] future: Ready<B> },
        Done,
    }
}

impl<A, B> fmt::Debug for ResponseFuture<A, B>
where
    A: tower::Service<ChatRequest>,
    B: tower::Service<ChatRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<A, B> Future for ResponseFuture<A, B>
where
    A: tower::Service<ChatRequest, Response = ChatStream, Error = Error>,
    B: tower::Service<ChatRequest, Response = ChatStream, Error = Error>,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let failure = match this.state.as_mut().project() {
                StateProj::Primary { attempt } => match ready!(attempt.poll(cx)) {
                    Ok(stream) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(stream));
                    }
                    Err(e) => e,
                },
                StateProj::Secondary { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Done => {
                    return Poll::Ready(Err(Error::misuse(
                        "fallback response future polled after completion",
                    )));
                }
            };
            // The primary failed before any output.
            let Some(kept) = this.fallback.take().filter(|_| (this.when)(&failure)) else {
                this.state.set(State::Done);
                return Poll::Ready(Err(failure));
            };
            report_fallback(&failure);
            let (secondary, request) = *kept;
            this.state.set(State::Secondary {
                future: Ready::new(secondary, request),
            });
        }
    }
}

/// The primary failed before output and the secondary is tried: out of
/// line, so that the path each poll takes stays short.
#[cold]
#[inline(never)]
fn report_fallback(failure: &Error) {
    tracing::info!(
        llm_tower.event = "fallback",
        reason = failure.kind(),
        error = %failure,
        "falling back to the secondary service"
    );
}
