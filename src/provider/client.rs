//! The machinery the provider services share: stamp the credential,
//! encode, send through the transport.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Uri};
use http_body::Body;
use serde_json::Value;

use crate::auth::{AuthHeader, Credential};
use crate::chat::{ChatRequest, ChatStream};
use crate::error::{BoxError, Error, TransportPhase};
use crate::redact::Secrets;
use crate::transport::RequestBody;

use super::encode::merge_patch;
use super::failure::transport_error;
use super::response::{CallCtx, ResponseFuture, State};
use super::wire::Wire;

/// The headers a managed credential replaces: `Authorization`, then the API
/// key headers (Anthropic's, which [`Credential::api_key`] stands for, and
/// Gemini's).
///
/// [`Credential::api_key`]: crate::Credential::api_key
const AUTH_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-goog-api-key"];

/// Configuration every provider shares.
#[derive(Clone)]
pub(crate) struct Common {
    pub(crate) endpoint: Uri,
    pub(crate) model: String,
    /// Authentication and extra headers, sent on every request. Secret values
    /// are marked sensitive.
    pub(crate) headers: HeaderMap,
    pub(crate) max_event_size: usize,
    /// Where a custom wire's configured key went, when not among
    /// [`AUTH_HEADERS`]: a managed credential replaces it too.
    pub(crate) key_header: Option<HeaderName>,
    /// Where calls go, as the tracing conventions name it.
    pub(crate) server: Arc<crate::call::Endpoint>,
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: values may be credentials.
        f.debug_struct("Common")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("max_event_size", &self.max_event_size)
            .finish()
    }
}

/// The machinery shared by provider services: encode, send, classify, decode.
pub(crate) struct Client<W, S> {
    pub(crate) wire: Arc<W>,
    pub(crate) common: Arc<Common>,
    pub(crate) transport: S,
}

impl<W, S: Clone> Clone for Client<W, S> {
    fn clone(&self) -> Self {
        Client {
            wire: self.wire.clone(),
            common: self.common.clone(),
            transport: self.transport.clone(),
        }
    }
}

impl<W: Wire, S> Client<W, S> {
    /// Whether `name` carries the configured key: what a managed
    /// credential replaces.
    fn is_auth_header(&self, name: &HeaderName) -> bool {
        AUTH_HEADERS.contains(&name.as_str()) || self.common.key_header.as_ref() == Some(name)
    }

    fn encode(&self, req: &ChatRequest) -> Result<(http::Request<RequestBody>, String), Error> {
        let model = if req.model.is_empty() {
            self.common.model.clone()
        } else {
            req.model.to_string()
        };
        if model.is_empty() {
            return Err(Error::config(format!(
                "no model: the request names none and the {} service has no default",
                W::NAME
            )));
        }
        let mut body = self.wire.encode(req, &model)?;
        merge_patch(&mut body, &req.extra);
        let bytes = serde_json::to_vec(&Value::Object(body))
            .map_err(|e| Error::config(format!("cannot encode the request: {e}")))?;
        let uri = self.wire.uri(&self.common.endpoint, &model, req.stream)?;
        let mut http_req = http::Request::post(uri)
            .body(RequestBody::new(Bytes::from(bytes)))
            .map_err(|e| Error::config(format!("cannot build the request: {e}")))?;
        let headers = http_req.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static(if req.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        // A managed credential (read now, at send time) or one stamped on this
        // request replaces the configured key: the configured headers are
        // copied without their authentication ones (cheaper than removing
        // them after, which hashes each name).
        let credential = match &req.credential {
            Some(supplied) => supplied.header(),
            None => match req.extensions.get::<Credential>() {
                Some(c) => Some(c.header_pair()?),
                None => None,
            },
        };
        for (k, v) in &self.common.headers {
            if credential.is_some() && self.is_auth_header(k) {
                continue;
            }
            headers.insert(k.clone(), v.clone());
        }
        if let Some(header) = credential {
            let (name, value) = match header {
                AuthHeader::ApiKey(value) => self.wire.api_key_header(&value),
                AuthHeader::Named(name, value) => (name, value),
            };
            headers.insert(name, value);
        }
        Ok((http_req, model))
    }
}

impl<W, S, B> tower::Service<ChatRequest> for Client<W, S>
where
    W: Wire,
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.transport
            .poll_ready(cx)
            .map_err(|e| transport_error(W::NAME, TransportPhase::Connect, e.into()))
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let (http_req, model) = match self.encode(&req) {
            Ok(r) => r,
            Err(e) => {
                return ResponseFuture {
                    state: State::Failed { error: Some(e) },
                };
            }
        };
        let attempt = req.count_attempt();
        req.called(W::NAME, &self.common.server);
        let secrets = Secrets::of(http_req.headers());
        ResponseFuture {
            state: State::Waiting {
                future: self.transport.call(http_req),
                ctx: Some(CallCtx {
                    provider: W::NAME,
                    model,
                    attempt,
                    stream: req.stream,
                    max_event_size: self.common.max_event_size,
                    decoder: Box::new(self.wire.decoder()),
                    secrets,
                    endpoint: self.common.server.clone(),
                }),
            },
        }
    }
}
