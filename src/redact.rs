//! Masking the secrets a request carried in what the server says back.
//!
//! Some servers echo a refused key in their error message ("Incorrect API
//! key provided: sk-…"). A provider copies the server's message into
//! [`ApiError`](crate::ApiError), whose `Display` ends up in logs and on
//! screens, so every error a provider hands on is first passed through the
//! [`Secrets`] of the request that caused it.

use http::{HeaderMap, HeaderValue};

use crate::Error;

/// What replaces a secret.
pub(crate) const MASK: &str = "[redacted]";

/// A secret this long or longer is masked wherever it appears; a shorter
/// one only as a whole token, so a test key such as `k` does not turn every
/// `k` of a message into the mask.
const ANYWHERE: usize = 8;

/// The secret header values one request carried: its credential and the
/// builder's extra headers, which `secret_header` marks sensitive.
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<HeaderValue>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({})", self.0.len())
    }
}

impl Secrets {
    /// The sensitive values among `headers` (a cheap reference-counted copy
    /// each).
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        Secrets(
            headers
                .values()
                .filter(|v| v.is_sensitive())
                .cloned()
                .collect(),
        )
    }

    /// Masks every secret in `error`'s server-supplied text.
    pub(crate) fn error(&self, error: &mut Error) {
        if !self.0.is_empty() {
            error.mask_text(&mut |text| self.text(text));
        }
    }

    /// Masks every secret in `text`: a header's whole value, and the token
    /// after an auth scheme (`Bearer sk-…` masks `sk-…` too).
    pub(crate) fn text(&self, text: &mut String) {
        for value in &self.0 {
            let Ok(value) = value.to_str() else { continue };
            let token = value
                .split_once(' ')
                .filter(|(scheme, _)| {
                    scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("basic")
                })
                .map(|(_, token)| token.trim());
            // The whole value first: it contains the token.
            mask(text, value);
            if let Some(token) = token {
                mask(text, token);
            }
        }
    }
}

/// Replaces the occurrences of `secret` in `text` with [`MASK`].
fn mask(text: &mut String, secret: &str) {
    if secret.is_empty() || !text.contains(secret) {
        return;
    }
    let is_token = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    let mut before: Option<char> = None;
    while let Some(at) = rest.find(secret) {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        let prev = head.chars().next_back().or(before);
        let next = tail[secret.len()..].chars().next();
        let whole = !prev.is_some_and(is_token) && !next.is_some_and(is_token);
        if secret.len() >= ANYWHERE || whole {
            out.push_str(MASK);
        } else {
            out.push_str(secret);
        }
        before = secret.chars().next_back();
        rest = &tail[secret.len()..];
    }
    out.push_str(rest);
    *text = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(values: &[&str]) -> Secrets {
        let mut headers = HeaderMap::new();
        for (i, v) in values.iter().enumerate() {
            let mut v = HeaderValue::from_str(v).unwrap();
            v.set_sensitive(true);
            headers.insert(
                http::HeaderName::from_bytes(format!("x-s{i}").as_bytes()).unwrap(),
                v,
            );
        }
        headers.insert("x-plain", HeaderValue::from_static("visible-value"));
        Secrets::of(&headers)
    }

    fn masked(s: &Secrets, text: &str) -> String {
        let mut t = text.to_owned();
        s.text(&mut t);
        t
    }

    #[test]
    fn long_secrets_are_masked_anywhere() {
        let s = secrets(&["sk-abcdefgh1234"]);
        assert_eq!(
            masked(&s, "Incorrect API key provided: sk-abcdefgh1234."),
            "Incorrect API key provided: [redacted]."
        );
        assert_eq!(masked(&s, "xsk-abcdefgh1234x"), "x[redacted]x");
        assert_eq!(
            masked(&s, "sk-abcdefgh1234 and sk-abcdefgh1234"),
            "[redacted] and [redacted]"
        );
    }

    #[test]
    fn the_token_of_a_bearer_value_is_masked() {
        let s = secrets(&["Bearer tok-0123456789"]);
        assert_eq!(
            masked(&s, "header was Bearer tok-0123456789; token tok-0123456789"),
            "header was [redacted]; token [redacted]"
        );
    }

    #[test]
    fn short_secrets_only_as_whole_tokens() {
        let s = secrets(&["k1"]);
        assert_eq!(
            masked(&s, "key k1 refused (k1), kk1 k12"),
            "key [redacted] refused ([redacted]), kk1 k12"
        );
        let s = secrets(&["k"]);
        assert_eq!(masked(&s, "bad key: k"), "bad key: [redacted]");
    }

    #[test]
    fn only_sensitive_values_count_and_text_without_them_is_untouched() {
        let s = secrets(&[]);
        assert_eq!(masked(&s, "visible-value"), "visible-value");
        let s = secrets(&["sk-abcdefgh1234"]);
        assert_eq!(masked(&s, "nothing here ünïcode"), "nothing here ünïcode");
        assert_eq!(format!("{s:?}"), "Secrets(1)");
    }
}
