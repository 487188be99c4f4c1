//! The head of an answer: a success becomes a [`ChatStream`] over its body;
//! an error status has its (bounded) body read and classified.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::chat::ChatStream;
use crate::error::{BoxError, Error, TransportPhase};
use crate::redact::Secrets;

use super::body::{MapData, success};
use super::failure::transport_error;
use super::wire::Decode;

/// How much of an error response's body is read to classify it.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub(super) struct CallCtx {
    pub(super) provider: &'static str,
    pub(super) model: String,
    /// This request's number among the attempts of its logical call.
    pub(super) attempt: u32,
    pub(super) stream: bool,
    pub(super) max_event_size: usize,
    pub(super) decoder: Box<dyn Decode>,
    /// What the request carried that an error must not repeat.
    pub(super) secrets: Secrets,
    /// Where the request went.
    pub(super) endpoint: std::sync::Arc<crate::call::Endpoint>,
}

pin_project! {
    /// The response future of a provider service: resolves once the response
    /// head has arrived (after reading and classifying the body of an error
    /// response).
    pub struct ResponseFuture<F> {
        #[pin]
        pub(super) state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<F> {
        Failed { error: Option<Error> },
        Waiting { #[pin] future: F, ctx: Option<CallCtx> },
        ReadingError {
            #[pin] body: ErrorBody,
            provider: &'static str,
            secrets: Secrets,
            status: StatusCode,
            headers: HeaderMap,
            buf: Vec<u8>,
        },
        Done,
    }
}

/// The body of an error response, type-erased so the future names one type
/// whatever the transport's body.
type ErrorBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

impl fmt::Debug for CallCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallCtx")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let e = error.take().unwrap_or_else(polled_after_completion);
                    this.state.set(State::Done);
                    return Poll::Ready(Err(e));
                }
                StateProj::Waiting { future, ctx } => {
                    let result = ready!(future.poll(cx));
                    let Some(ctx) = ctx.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let response = match result {
                        Ok(r) => r,
                        Err(e) => {
                            this.state.set(State::Done);
                            let e =
                                transport_error(ctx.provider, TransportPhase::Request, e.into());
                            return Poll::Ready(Err(e));
                        }
                    };
                    let (parts, body) = response.into_parts();
                    if parts.status.is_success() {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(success(ctx, parts, body)));
                    }
                    let body: ErrorBody = Box::pin(http_body_util::BodyExt::map_err(
                        MapData { inner: body },
                        Into::into,
                    ));
                    this.state.set(State::ReadingError {
                        body,
                        provider: ctx.provider,
                        secrets: ctx.secrets,
                        status: parts.status,
                        headers: parts.headers,
                        buf: Vec::new(),
                    });
                }
                StateProj::ReadingError {
                    mut body,
                    provider,
                    secrets,
                    status,
                    headers,
                    buf,
                } => {
                    // A body that fails or runs long still leaves the status and
                    // headers, which classify the error on their own.
                    let complete = match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                                buf.extend_from_slice(&data[..data.len().min(room)]);
                            }
                            buf.len() >= MAX_ERROR_BODY
                        }
                        Some(Err(_)) | None => true,
                    };
                    if complete {
                        let mut e = Error::from_response(provider, *status, headers, buf);
                        secrets.error(&mut e);
                        this.state.set(State::Done);
                        return Poll::Ready(Err(e));
                    }
                }
                StateProj::Done => {
                    return Poll::Ready(Err(polled_after_completion()));
                }
            }
        }
    }
}

fn polled_after_completion() -> Error {
    Error::misuse("response future polled after completion")
}
