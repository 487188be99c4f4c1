//! Azure OpenAI: where its requests go and how its keys travel, for the
//! OpenAI providers' `azure` constructors.

use http::header::{HeaderName, HeaderValue};

use super::builder::{CommonBuilder, check_path_name};
use super::client::Common;
use crate::auth::secret_header;
use crate::error::Error;

/// The environment variable Azure's documentation and SDKs keep the key in.
pub(crate) const KEY_ENV: &str = "AZURE_OPENAI_API_KEY";

/// The header Azure reads an API key from (Entra ID tokens go in
/// `Authorization: Bearer`).
pub(crate) const KEY_HEADER: HeaderName = HeaderName::from_static("api-key");

/// How a service reaches Azure OpenAI: the v1 API (`/openai/v1/…`, the
/// model named in the body) or a deployment's own path with an
/// `api-version`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Azure {
    /// `(deployment, api_version)` for the deployment style.
    pub(crate) deployment: Option<(String, String)>,
}

impl Azure {
    /// The resource's root and the path of `api` (`/chat/completions`,
    /// `/responses`) under it, from `endpoint` as the user gave it
    /// (`https://{resource}.openai.azure.com`, with or without `/openai/v1`).
    pub(crate) fn base_and_path(
        &self,
        provider: &str,
        endpoint: &str,
        api: &str,
    ) -> Result<(String, String), Error> {
        let root = endpoint.trim_end_matches('/');
        let root = root
            .strip_suffix("/openai/v1")
            .or_else(|| root.strip_suffix("/openai"))
            .unwrap_or(root);
        let path = match &self.deployment {
            None => format!("/openai/v1{api}"),
            Some((deployment, version)) => {
                check_path_name(provider, "Azure deployment", deployment)?;
                check_path_name(provider, "Azure api-version", version)?;
                format!("/openai/deployments/{deployment}{api}?api-version={version}")
            }
        };
        Ok((root.to_owned(), path))
    }
}

/// Where an OpenAI provider sends an API key: Azure's `api-key: {key}`, or
/// `Authorization: Bearer {key}`.
pub(crate) fn key_header(azure: bool, key: &HeaderValue) -> (HeaderName, HeaderValue) {
    if !azure {
        return super::wire::bearer(key);
    }
    let mut value = key.clone();
    value.set_sensitive(true);
    (KEY_HEADER, value)
}

/// An OpenAI provider's shared configuration for `api` (`/chat/completions`,
/// `/responses`): on Azure (`azure`), the resource's path and the key in
/// `api-key` (replaced by a managed credential too), and a deployment as the
/// default model; elsewhere the base URL's path and a bearer key.
pub(crate) fn openai_common(
    provider: &'static str,
    mut common: CommonBuilder,
    azure: Option<&Azure>,
    api: &str,
    key: Option<&str>,
) -> Result<Common, Error> {
    let mut path = api.to_owned();
    if let Some(azure) = azure {
        let (base, azure_path) = azure.base_and_path(provider, &common.base_url, api)?;
        common.base_url = base;
        path = azure_path;
        if let (Some((deployment, _)), true) = (&azure.deployment, common.model.is_empty()) {
            common.model = deployment.clone();
        }
    }
    let auth = match key {
        Some(key) => vec![key_header(azure.is_some(), &secret_header(provider, key)?)],
        None => Vec::new(),
    };
    let mut built = common.common(provider, &path, auth)?;
    if azure.is_some() {
        built.key_header = Some(KEY_HEADER);
    }
    Ok(built)
}
