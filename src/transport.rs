//! The default HTTP transport: [`reqwest`] as a
//! `Service<http::Request<B>, Response = http::Response<ResponseBody>>`.
//!
//! Provider services are generic over their transport, so any
//! `Service<http::Request<RequestBody>>` — a stack of `tower-http` layers over
//! this transport, or an in-process test double — can stand in its place.
//! Providers classify a transport's failures by what they are: a
//! [`TransportError`] says whether it happened while connecting and whether
//! it was a timeout (so does an `std::io::Error`'s kind, and tower's
//! `Elapsed`); any other error counts by the phase it happened in.
//!
//! ```
//! use llm_tower::transport::ReqwestTransport;
//! use std::time::Duration;
//!
//! let transport = ReqwestTransport::builder()
//!     .connect_timeout(Duration::from_secs(5))
//!     .build()
//!     .expect("a TLS backend is available");
//! # let _ = transport;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::Full;

use crate::error::BoxError;

/// The body of the requests provider services send: the whole encoded JSON.
pub type RequestBody = Full<Bytes>;

/// A transport's failure, with what a provider classifies it by: whether it
/// happened while connecting, and whether a timeout ended it. A transport of
/// one's own returns it (or anything that has it among its `source()`s) so
/// that its refused connections and timeouts are classified as the default
/// transport's are.
#[derive(Debug)]
pub struct TransportError {
    source: BoxError,
    connect: bool,
    timeout: bool,
}

impl TransportError {
    /// A failure caused by `source`, neither while connecting nor a timeout
    /// until said otherwise.
    pub fn new(source: impl Into<BoxError>) -> Self {
        TransportError {
            source: source.into(),
            connect: false,
            timeout: false,
        }
    }

    /// It happened while connecting (a refused connection, a failed TLS
    /// handshake, a name that did not resolve).
    pub fn connecting(mut self) -> Self {
        self.connect = true;
        self
    }

    /// A timeout ended it.
    pub fn timed_out(mut self) -> Self {
        self.timeout = true;
        self
    }

    /// Whether it happened while connecting.
    pub fn is_connect(&self) -> bool {
        self.connect
    }

    /// Whether a timeout ended it.
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<reqwest::Error> for TransportError {
    fn from(e: reqwest::Error) -> Self {
        let (connect, timeout) = (e.is_connect(), e.is_timeout());
        TransportError {
            source: Box::new(e),
            connect,
            timeout,
        }
    }
}

/// A [`reqwest::Client`] as a tower service.
///
/// Redirects are not followed: an LLM API does not redirect a `POST`, and
/// following one could hand the credential (sent in a custom header such as
/// `x-api-key`, which reqwest does not strip) to another host. A 3xx answer
/// becomes an [`Error::InvalidRequest`](crate::Error::InvalidRequest).
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A transport with the defaults of [`ReqwestTransportBuilder`].
    pub fn new() -> Result<Self, crate::Error> {
        ReqwestTransport::builder().build()
    }

    /// Configures a transport.
    pub fn builder() -> ReqwestTransportBuilder {
        ReqwestTransportBuilder::default()
    }

    /// Wraps a client you built. Mind its redirect policy (see the type docs).
    pub fn from_client(client: reqwest::Client) -> Self {
        ReqwestTransport { client }
    }

    /// The client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }
}

/// Builds a [`ReqwestTransport`].
#[derive(Debug, Clone)]
pub struct ReqwestTransportBuilder {
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
}

impl Default for ReqwestTransportBuilder {
    fn default() -> Self {
        ReqwestTransportBuilder {
            connect_timeout: Some(Duration::from_secs(5)),
            timeout: None,
        }
    }
}

impl ReqwestTransportBuilder {
    /// How long opening a connection may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a whole exchange, body included, may take (default: no limit;
    /// long generations stream for minutes — prefer the stream timeouts of
    /// the LLM-level layers).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Builds the transport; fails only when no TLS backend can start.
    pub fn build(self) -> Result<ReqwestTransport, crate::Error> {
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(t) = self.connect_timeout {
            b = b.connect_timeout(t);
        }
        if let Some(t) = self.timeout {
            b = b.timeout(t);
        }
        let client = b
            .build()
            .map_err(|e| crate::Error::config(format!("cannot build the HTTP client: {e}")))?;
        Ok(ReqwestTransport { client })
    }
}

impl<B> tower::Service<http::Request<B>> for ReqwestTransport
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = TransportError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let req = req.map(reqwest::Body::wrap);
        let client = self.client.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let req = reqwest::Request::try_from(req)?;
                let response = http::Response::from(client.execute(req).await?);
                Ok(response.map(|inner| ResponseBody { inner }))
            }),
        }
    }
}

/// The response future of [`ReqwestTransport`].
pub struct ResponseFuture {
    inner:
        Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, TransportError>> + Send>>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, TransportError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The body of a [`ReqwestTransport`] response: reqwest's, its failures as
/// [`TransportError`]s.
#[derive(Debug)]
pub struct ResponseBody {
    inner: reqwest::Body,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = TransportError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TransportError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map_err(TransportError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
