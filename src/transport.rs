//! The default HTTP transport: [`reqwest`] as a
//! `Service<http::Request<B>, Response = http::Response<reqwest::Body>>`.
//!
//! Provider services are generic over their transport, so any
//! `Service<http::Request<RequestBody>>` — a stack of `tower-http` layers over
//! this transport, or an in-process test double — can stand in its place.
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
use http_body_util::Full;

use crate::error::BoxError;

/// The body of the requests provider services send: the whole encoded JSON.
pub type RequestBody = Full<Bytes>;

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
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
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
                client.execute(req).await.map(http::Response::from)
            }),
        }
    }
}

/// The response future of [`ReqwestTransport`].
pub struct ResponseFuture {
    inner:
        Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, reqwest::Error>> + Send>>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<reqwest::Body>, reqwest::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
