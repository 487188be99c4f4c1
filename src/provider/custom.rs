//! A provider of one's own: a [`Wire`] over the client every built-in
//! provider uses.

use http::HeaderValue;

use crate::auth::secret_header;
use crate::error::Error;
use crate::transport::ReqwestTransport;

use super::builder::{CommonBuilder, common_builder_methods, default_transport, provider_service};
use super::client::Client;
use super::wire::Wire;

/// A provider for a wire format of one's own, as a `Service<ChatRequest,
/// Response = ChatStream, Error = Error>`: the [`Wire`] says how a request
/// is encoded and how its answer decodes; the rest — headers and
/// credentials (also those a [`RefreshLayer`](crate::RefreshLayer)
/// supplies), `extra`, the transport, error statuses classified, SSE
/// framing and its size limit, secrets masked in errors, the answer's
/// metadata and rate-limit headers — is what the built-in providers do,
/// so every layer of the crate works over it unchanged.
///
/// ```no_run
/// # use llm_tower::provider::{Decode, Decoded, Provider, Wire};
/// # use llm_tower::{ChatRequest, Error};
/// # #[derive(Default)] struct MyWire;
/// # struct MyDecoder;
/// # impl Decode for MyDecoder {
/// #     fn event(&mut self, _: llm_tower::sse::Event<'_>, _: &mut Decoded) {}
/// #     fn body(&mut self, _: &str, _: &mut Decoded) {}
/// # }
/// # impl Wire for MyWire {
/// #     const NAME: &'static str = "mine";
/// #     type Decoder = MyDecoder;
/// #     fn encode(&self, _: &ChatRequest, _: &str) -> Result<serde_json::Map<String, serde_json::Value>, Error> { Ok(Default::default()) }
/// #     fn decoder(&self) -> MyDecoder { MyDecoder }
/// # }
/// let mine = Provider::builder(MyWire)
///     .base_url("https://llm.example.com")
///     .path("/v2/generate")
///     .api_key(std::env::var("MY_KEY").unwrap_or_default())
///     .model("small")
///     .build()?;
/// # Ok::<(), Error>(())
/// ```
///
/// `examples/custom_provider.rs` is a whole one, for an invented wire.
pub struct Provider<W, S = ReqwestTransport> {
    client: Client<W, S>,
}

provider_service!(Provider<W: Wire>);

impl<W: Wire> Provider<W> {
    /// Configures a service speaking `wire`. It has no base URL until one is
    /// given.
    pub fn builder(wire: W) -> ProviderBuilder<W> {
        ProviderBuilder {
            wire,
            common: CommonBuilder::new(""),
            path: String::new(),
            api_key: None,
        }
    }
}

/// Builds a [`Provider`].
pub struct ProviderBuilder<W> {
    wire: W,
    common: CommonBuilder,
    path: String,
    api_key: Option<String>,
}

impl<W> std::fmt::Debug for ProviderBuilder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderBuilder")
            .field("common", &self.common)
            .field("path", &self.path)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl<W: Wire> ProviderBuilder<W> {
    common_builder_methods!();

    /// The path after the base URL that requests go to, e.g.
    /// `/v1/generate` (default: none, the base URL itself). A [`Wire`] may
    /// still change it per call ([`Wire::uri`]).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The API key, sent as the wire's [`Wire::api_key_header`] says
    /// (by default `Authorization: Bearer …`). Never shown by `Debug`, and
    /// masked where an error message repeats it.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Builds the service over the default transport (reqwest, rustls).
    pub fn build(self) -> Result<Provider<W>, Error> {
        let transport = default_transport(&self.common)?;
        self.build_with(transport)
    }

    /// Builds the service over `transport`, any
    /// `Service<http::Request<RequestBody>>`. The timeouts set here apply to
    /// the default transport only.
    pub fn build_with<S>(self, transport: S) -> Result<Provider<W, S>, Error> {
        let mut auth = Vec::new();
        let mut key_header = None;
        if let Some(key) = &self.api_key {
            let key: HeaderValue = secret_header(W::NAME, key)?;
            let (name, value) = self.wire.api_key_header(&key);
            key_header = Some(name.clone());
            auth.push((name, value));
        }
        let mut common = self.common.common(W::NAME, &self.path, auth)?;
        common.key_header = key_header;
        Ok(Provider {
            client: Client {
                wire: std::sync::Arc::new(self.wire),
                common: std::sync::Arc::new(common),
                transport,
            },
        })
    }
}
