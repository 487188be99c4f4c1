use std::future::Future;
use std::pin::Pin;

use crate::BoxError;
use crate::auth::Credential;

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
/// use llm_tower::{Credential, RefreshLayer};
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
