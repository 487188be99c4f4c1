use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::{BoxError, Error};

/// A secret and how it is sent, with an optional expiry.
///
/// `Debug` never shows the secret. Put one in a request's extensions to send
/// it instead of the provider's configured key for that one request (a
/// gateway serving many tenants), or let a
/// [`RefreshLayer`](super::RefreshLayer) manage it.
///
/// ```
/// use llm_tower::refresh::Credential;
/// use std::time::Duration;
///
/// let token = Credential::bearer("eyJhbGciOi…").expires_in(Duration::from_secs(3600));
/// assert!(!format!("{token:?}").contains("eyJ"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    secret: String,
    scheme: AuthScheme,
    expires_at: Option<Instant>,
}

/// How a [`Credential`] is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthScheme {
    /// `Authorization: Bearer <secret>` (OpenAI keys, OAuth tokens).
    Bearer,
    /// The provider's API-key header (see [`Credential::api_key`]).
    ApiKey,
    /// `<name>: <secret>`.
    Header(HeaderName),
}

impl Credential {
    /// Sent as `Authorization: Bearer <secret>`.
    pub fn bearer(secret: impl Into<String>) -> Self {
        Credential::new(secret, AuthScheme::Bearer)
    }

    /// Sent as the provider's API key: `x-api-key` to Anthropic,
    /// `x-goog-api-key` to Gemini, `Authorization: Bearer` to OpenAI (and
    /// `x-api-key` to other services).
    pub fn api_key(secret: impl Into<String>) -> Self {
        Credential::new(secret, AuthScheme::ApiKey)
    }

    /// Sent as `<name>: <secret>`.
    pub fn header(name: HeaderName, secret: impl Into<String>) -> Self {
        Credential::new(secret, AuthScheme::Header(name))
    }

    /// A credential sent by `scheme`.
    pub fn new(secret: impl Into<String>, scheme: AuthScheme) -> Self {
        Credential {
            secret: secret.into(),
            scheme,
            expires_at: None,
        }
    }

    /// Expires `ttl` from now (on tokio's clock); a `ttl` too long for the
    /// clock (`Duration::MAX`) never expires.
    pub fn expires_in(mut self, ttl: Duration) -> Self {
        self.expires_at = crate::later(Instant::now(), ttl);
        self
    }

    /// Expires at `when` (on tokio's clock).
    pub fn expires_at(mut self, when: Instant) -> Self {
        self.expires_at = Some(when);
        self
    }

    /// When it expires, if it said.
    pub fn expiry(&self) -> Option<Instant> {
        self.expires_at
    }

    /// How it is sent.
    pub fn scheme(&self) -> &AuthScheme {
        &self.scheme
    }

    /// The secret itself. Mind where it goes.
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// Whether it expires within `margin` from now.
    pub(crate) fn expires_within(&self, margin: Duration) -> bool {
        self.expires_at
            .is_some_and(|at| crate::later(Instant::now(), margin).is_none_or(|t| at <= t))
    }

    /// The header that carries it, its value marked sensitive.
    pub(crate) fn header_pair(&self) -> Result<AuthHeader, Error> {
        let secret = |v: &str| crate::provider::secret_header("credential", v);
        Ok(match &self.scheme {
            AuthScheme::Bearer => AuthHeader::Named(
                http::header::AUTHORIZATION,
                secret(&format!("Bearer {}", self.secret))?,
            ),
            AuthScheme::ApiKey => AuthHeader::ApiKey(secret(&self.secret)?),
            AuthScheme::Header(name) => AuthHeader::Named(name.clone(), secret(&self.secret)?),
        })
    }
}

/// Where a credential goes on the wire.
#[derive(Clone)]
pub(crate) enum AuthHeader {
    /// In the provider's own API-key header, whichever that is.
    ApiKey(HeaderValue),
    /// In this header, whatever the provider.
    Named(HeaderName, HeaderValue),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("scheme", &self.scheme)
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The future of a [`CredentialSource`].
pub type CredentialFuture = Pin<Box<dyn Future<Output = Result<Credential, BoxError>> + Send>>;

/// Where fresh credentials come from: an OAuth refresh, a secrets manager, a
/// command. Called only when one is needed, by one caller at a time.
///
/// A failure is logged (`tracing::warn!`) with the error's `Display`: keep
/// secrets out of your source's error messages.
///
/// Any `Fn() -> impl Future<Output = Result<Credential, E>>` is one:
///
/// ```
/// use llm_tower::refresh::{Credential, RefreshLayer};
///
/// let layer = RefreshLayer::new(|| async {
///     let token = std::env::var("API_TOKEN")?; // or an OAuth refresh
///     Ok::<_, std::env::VarError>(Credential::bearer(token))
/// });
/// # let _ = layer;
/// ```
pub trait CredentialSource: Send + Sync + 'static {
    /// Fetches a fresh credential.
    fn fetch(&self) -> CredentialFuture;
}

impl<F, Fut, E> CredentialSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credential, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn fetch(&self) -> CredentialFuture {
        let fut = self();
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
