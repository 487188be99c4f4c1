//! Vertex AI: where a project's models of a publisher live, for the
//! providers' `vertex` constructors.

use super::builder::check_path_name;
use crate::error::Error;

/// A Google Cloud project and location on Vertex AI.
#[derive(Debug, Clone)]
pub(crate) struct Vertex {
    pub(crate) project: String,
    pub(crate) location: String,
}

impl Vertex {
    /// The API's host for the location: regional
    /// (`https://{location}-aiplatform.googleapis.com`), or the global one.
    pub(crate) fn base_url(location: &str) -> String {
        if location == "global" {
            "https://aiplatform.googleapis.com".to_owned()
        } else {
            format!("https://{location}-aiplatform.googleapis.com")
        }
    }

    /// `/v1/projects/{project}/locations/{location}/publishers/{publisher}/`,
    /// after checking that the names fit in a path.
    pub(crate) fn publisher_path(&self, provider: &str, publisher: &str) -> Result<String, Error> {
        check_path_name(provider, "Vertex AI project", &self.project)?;
        check_path_name(provider, "Vertex AI location", &self.location)?;
        Ok(format!(
            "/v1/projects/{}/locations/{}/publishers/{publisher}/",
            self.project, self.location
        ))
    }
}

/// Checks that `model` fits in a Vertex AI path (`{model}:{method}`):
/// `claude-sonnet-4-5@20250929` does, `a/b` or `x:y` does not.
pub(crate) fn check_model(provider: &str, model: &str) -> Result<(), Error> {
    if model.is_empty() || model.contains(['?', '#', ':', ' ', '/']) {
        return Err(Error::config(format!(
            "{provider}: invalid model name {model:?} for Vertex AI"
        )));
    }
    Ok(())
}
