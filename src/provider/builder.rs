//! What every provider builder shares: settings, the endpoint, and the
//! macros that give each provider its builder methods and `Service` impl.

use std::fmt;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Uri};

use crate::auth::secret_header;
use crate::error::Error;
use crate::transport::ReqwestTransport;

use super::client::Common;

/// Parses `base` + `path` into the endpoint URI.
pub(super) fn endpoint(provider: &str, base: &str, path: &str) -> Result<Uri, Error> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::config(format!("{provider}: invalid base URL {base:?}: {e}")))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(Error::config(format!(
            "{provider}: base URL {base:?} needs a scheme and a host"
        )));
    }
    Ok(uri)
}

/// Checks that `value`, the `what` of a cloud's path (an Azure deployment, a
/// Vertex AI project), is a name that fits in one path segment: letters,
/// digits, `-`, `_` and `.`.
pub(super) fn check_path_name(provider: &str, what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Error::config(format!(
            "{provider}: invalid {what} {value:?} (letters, digits, '-', '_' and '.' only)"
        )));
    }
    Ok(())
}

/// Settings every provider builder has.
#[derive(Clone)]
pub(crate) struct CommonBuilder {
    pub(crate) base_url: String,
    pub(crate) model: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) transport: crate::transport::ReqwestTransportBuilder,
    pub(crate) max_event_size: usize,
}

impl fmt::Debug for CommonBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonBuilder")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("max_event_size", &self.max_event_size)
            .finish_non_exhaustive()
    }
}

impl CommonBuilder {
    pub(crate) fn new(base_url: &str) -> Self {
        CommonBuilder {
            base_url: base_url.to_owned(),
            model: String::new(),
            headers: Vec::new(),
            transport: crate::transport::ReqwestTransport::builder(),
            max_event_size: crate::sse::DEFAULT_MAX_EVENT_SIZE,
        }
    }

    /// The shared configuration, with `auth` headers first so that extra
    /// headers may override them.
    pub(crate) fn common(
        &self,
        provider: &'static str,
        path: &str,
        auth: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Common, Error> {
        let mut headers = HeaderMap::new();
        for (k, v) in auth {
            headers.insert(k, v);
        }
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| Error::config(format!("{provider}: invalid header name {k:?}")))?;
            // Extra headers may carry credentials of a gateway: keep them
            // out of Debug output too.
            let value = secret_header(provider, v).map_err(|_| {
                Error::config(format!("{provider}: invalid value for header {k:?}"))
            })?;
            headers.insert(name, value);
        }
        let endpoint = endpoint(provider, &self.base_url, path)?;
        Ok(Common {
            server: std::sync::Arc::new(crate::call::Endpoint::of(provider, &endpoint)),
            endpoint,
            model: self.model.clone(),
            headers,
            max_event_size: self.max_event_size,
            key_header: None,
        })
    }
}

/// The builder methods every provider has.
macro_rules! common_builder_methods {
    () => {
        /// The API root, e.g. `http://127.0.0.1:8000/v1` for an
        /// OpenAI-compatible server.
        pub fn base_url(mut self, url: impl Into<String>) -> Self {
            self.common.base_url = url.into();
            self
        }

        /// The model used when a request names none.
        pub fn model(mut self, model: impl Into<String>) -> Self {
            self.common.model = model.into();
            self
        }

        /// A header sent on every request (`OpenAI-Organization`,
        /// `anthropic-beta`, a gateway's key…). Its value is treated as a
        /// secret: left out of `Debug` output, and masked where an error
        /// message from the server repeats it.
        pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.common.headers.push((name.into(), value.into()));
            self
        }

        /// How long opening a connection may take with the default transport
        /// (default 5 s).
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.common.transport = self.common.transport.connect_timeout(timeout);
            self
        }

        /// How long a whole exchange may take with the default transport,
        /// body included (default: no limit; streams of long generations run
        /// for minutes — prefer the LLM-level stream timeouts).
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.common.transport = self.common.transport.timeout(timeout);
            self
        }

        /// The largest server-sent event (or non-streaming body) accepted, in
        /// bytes (default 4 MiB); a larger one ends the stream with
        /// [`DecodeError::EventTooLarge`](crate::DecodeError::EventTooLarge).
        pub fn max_event_size(mut self, bytes: usize) -> Self {
            self.common.max_event_size = bytes;
            self
        }
    };
}
pub(crate) use common_builder_methods;

/// The `Service` implementation of a provider type wrapping a [`Client`]:
/// `provider_service!(OpenAi)`, or `provider_service!(Provider<W: Wire>)`
/// for a type generic over its wire.
macro_rules! provider_service {
    ($name:ident $(<$w:ident: $bound:path>)?) => {
        impl<$($w: $bound,)? S, B> tower::Service<$crate::ChatRequest> for $name<$($w,)? S>
        where
            S: tower::Service<
                    http::Request<$crate::transport::RequestBody>,
                    Response = http::Response<B>,
                >,
            S::Error: Into<$crate::BoxError>,
            B: http_body::Body + Send + 'static,
            B::Error: Into<$crate::BoxError>,
        {
            type Response = $crate::ChatStream;
            type Error = $crate::Error;
            type Future = $crate::provider::ResponseFuture<S::Future>;

            fn poll_ready(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), $crate::Error>> {
                self.client.poll_ready(cx)
            }

            fn call(&mut self, req: $crate::ChatRequest) -> Self::Future {
                self.client.call(req)
            }
        }

        impl<$($w,)? S> $name<$($w,)? S> {
            /// The HTTP transport.
            pub fn get_ref(&self) -> &S {
                &self.client.transport
            }

            /// The HTTP transport, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.client.transport
            }

            /// The HTTP transport, consuming the service.
            pub fn into_inner(self) -> S {
                self.client.transport
            }

            /// The model used when a request names none.
            pub fn default_model(&self) -> &str {
                &self.client.common.model
            }

            /// The URL requests are sent to.
            pub fn endpoint(&self) -> &http::Uri {
                &self.client.common.endpoint
            }
        }

        impl<$($w,)? S: Clone> Clone for $name<$($w,)? S> {
            fn clone(&self) -> Self {
                $name {
                    client: self.client.clone(),
                }
            }
        }

        impl<$($w,)? S> std::fmt::Debug for $name<$($w,)? S> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("common", &self.client.common)
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use provider_service;

/// The default transport, built from a builder's settings.
pub(super) fn default_transport(common: &CommonBuilder) -> Result<ReqwestTransport, Error> {
    common.transport.clone().build()
}
