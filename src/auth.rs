//! Credentials as the providers send them, and the credential a layer
//! supplies at send time.
//!
//! A [`Credential`] is a secret and how it goes on the wire. A provider
//! sends, in this order of preference: the credential a layer supplied in
//! the request's extensions ([`SuppliedCredential`], read when the request
//! is encoded, so a call queued before a refresh sends the new one), a
//! [`Credential`] stamped on the request, its own configured key.
//!
//! It sits at the bottom of the crate, below the providers and the
//! [`RefreshLayer`](crate::RefreshLayer) that supplies credentials.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::Error;
use crate::call::CallHandle;

/// A secret and how it is sent, with an optional expiry.
///
/// `Debug` never shows the secret. Put one in a request's extensions to send
/// it instead of the provider's configured key for that one request (a
/// gateway serving many tenants), or let a
/// [`RefreshLayer`](crate::RefreshLayer) manage it.
///
/// ```
/// use llm_tower::Credential;
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
        let secret = |v: &str| secret_header("credential", v);
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

/// A header value holding a secret: marked sensitive so that `Debug` (ours,
/// http's, hyper's) prints no value.
pub(crate) fn secret_header(provider: &str, value: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::config(format!(
            "{provider}: the credential contains characters not allowed in a header"
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Something that holds the credential to send now, with a version that
/// changes whenever the credential does (a refresh layer's store).
pub(crate) trait CredentialSupply: Send + Sync {
    /// The header to send now and its version, or `None` when there is no
    /// credential yet.
    fn current(&self) -> Option<(AuthHeader, u64)>;
}

/// The credential a layer supplies to one call, carried in the request:
/// read by the provider when it encodes each attempt, which records in the
/// call's context which version it sent.
#[derive(Clone)]
pub(crate) struct SuppliedCredential {
    supply: Arc<dyn CredentialSupply>,
    /// Where the version sent is recorded, and under what.
    record: Option<(CallHandle, u64)>,
}

impl SuppliedCredential {
    /// Supplies `supply`'s credential, recording the version sent in a
    /// call's context under a token (see
    /// [`credential_token`](crate::call::credential_token)), when given one.
    pub(crate) fn new(
        supply: Arc<dyn CredentialSupply>,
        record: Option<(CallHandle, u64)>,
    ) -> Self {
        SuppliedCredential { supply, record }
    }

    /// The header to send now, recording its version as sent.
    pub(crate) fn header(&self) -> Option<AuthHeader> {
        let (header, version) = self.supply.current()?;
        if let Some((call, token)) = &self.record {
            call.sent_credential(*token, version);
        }
        Some(header)
    }
}

impl fmt::Debug for SuppliedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuppliedCredential").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_there_when_asked_for_and_nowhere_else() {
        for (credential, scheme) in [
            (Credential::bearer("tok-123"), AuthScheme::Bearer),
            (Credential::api_key("tok-123"), AuthScheme::ApiKey),
        ] {
            assert_eq!(credential.expose_secret(), "tok-123");
            assert_eq!(credential.scheme(), &scheme);
            let debug = format!("{credential:?}");
            assert!(!debug.contains("tok-123"), "{debug}");
            assert!(
                debug.starts_with("Credential {")
                    && debug.contains(&format!("{scheme:?}"))
                    && debug.contains("<redacted>"),
                "Debug still says what it is: {debug}"
            );
        }
    }
}
