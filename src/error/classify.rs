//! Classification from the wire: a provider's status, headers and error
//! body (or an error event inside a 200 stream) become an [`Error`] class.
//! The status names the class; the body's `error.code`, else its
//! `error.type`, may name a more specific one.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::headers::{RateLimitInfo, header_str, parse_retry_after, request_id_header};

use super::{ApiError, DecodeError, Error, TimeoutPhase};

impl Error {
    pub(crate) fn json(
        provider: &'static str,
        context: &str,
        data: &str,
        source: serde_json::Error,
    ) -> Self {
        Error::decode(
            provider,
            DecodeError::Json {
                context: context.to_owned(),
                snippet: snippet(data.as_bytes()),
                source,
            },
        )
    }

    /// Classifies a provider's non-success answer from its status, headers and
    /// (bounded) body.
    pub(crate) fn from_response(
        provider: &'static str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Self {
        let mut api = parse_error_body(provider, body);
        api.status = Some(status);
        if api.request_id.is_none() {
            api.request_id = request_id_header(headers).map(str::to_owned);
        }
        // The headers win over a delay the body gave (Gemini's `RetryInfo`).
        let now = SystemTime::now();
        api.retry_after = parse_retry_after(headers, now).or(api.retry_after);
        api.rate_limit = RateLimitInfo::from_headers(headers, now);
        api.should_retry = match header_str(headers, "x-should-retry") {
            Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        };
        // 401, 403 and 429 mean one thing whatever the body says (OpenAI
        // sends a 401 with type `invalid_request_error`); for other statuses a
        // code or type names the class more precisely (an `overloaded_error`
        // with a 500, `token_expired` with a 400).
        if status == StatusCode::REQUEST_TIMEOUT {
            // A proxy's own upstream timeout (LiteLLM answers 408): the
            // answer did not come in time, which is what a timeout is.
            return Error::Timeout {
                provider,
                phase: TimeoutPhase::Server,
            };
        }
        let by_status = class_from_status(status);
        let class = match status.as_u16() {
            401 | 403 | 429 => by_status,
            _ => class_from_type(&api).unwrap_or(by_status),
        };
        class.build(status, api)
    }

    /// Classifies the JSON text of an error that arrived inside a 200
    /// response; text that is not JSON is a decode error naming `context`.
    pub(crate) fn from_event_data(provider: &'static str, context: &str, data: &str) -> Self {
        match serde_json::from_str::<Value>(data) {
            Ok(v) => Error::from_event(provider, &v),
            Err(e) => Error::json(provider, context, data, e),
        }
    }

    /// Classifies an error object that arrived inside a 200 stream (Anthropic
    /// `event: error`, an OpenAI-compatible chunk carrying `error`).
    pub(crate) fn from_event(provider: &'static str, value: &Value) -> Self {
        let mut api = ApiError {
            provider,
            ..ApiError::default()
        };
        fill_from_value(&mut api, value);
        let numeric = value
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .and_then(|c| StatusCode::from_u16(c).ok());
        // A status the event names (Gemini's `code`) is the answer's status.
        api.status = numeric;
        let class = class_from_type(&api)
            .or_else(|| numeric.map(class_from_status))
            .unwrap_or(Class::Server);
        let status = numeric.unwrap_or(match class {
            Class::Unauthorized => StatusCode::UNAUTHORIZED,
            Class::Forbidden => StatusCode::FORBIDDEN,
            Class::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Class::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Class::Server => StatusCode::INTERNAL_SERVER_ERROR,
            Class::InvalidRequest => StatusCode::BAD_REQUEST,
        });
        class.build(status, api)
    }
}

#[derive(Clone, Copy)]
enum Class {
    Unauthorized,
    Forbidden,
    RateLimited,
    Overloaded,
    Server,
    InvalidRequest,
}

impl Class {
    fn build(self, status: StatusCode, api: ApiError) -> Error {
        let retry_after = api.retry_after;
        let error = Box::new(api);
        match self {
            Class::Unauthorized => Error::Unauthorized { error },
            Class::Forbidden => Error::Forbidden { error },
            Class::RateLimited => Error::RateLimited { retry_after, error },
            Class::Overloaded => Error::Overloaded { retry_after, error },
            Class::Server => Error::Server { status, error },
            Class::InvalidRequest => Error::InvalidRequest { status, error },
        }
    }
}

fn class_from_status(status: StatusCode) -> Class {
    match status.as_u16() {
        401 => Class::Unauthorized,
        403 => Class::Forbidden,
        429 => Class::RateLimited,
        503 | 529 => Class::Overloaded,
        500..=599 => Class::Server,
        _ => Class::InvalidRequest,
    }
}

/// The class the provider's error code, or else its type, names. The code
/// comes first: it is the more specific of the two.
fn class_from_type(api: &ApiError) -> Option<Class> {
    [api.code.as_deref(), api.error_type.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|t| match t {
            "authentication_error"
            | "invalid_api_key"
            | "token_expired"
            | "invalid_token"
            | "UNAUTHENTICATED"
            | "API_KEY_INVALID" => Some(Class::Unauthorized),
            "permission_error" | "PERMISSION_DENIED" => Some(Class::Forbidden),
            "rate_limit_error"
            | "rate_limit_exceeded"
            | "insufficient_quota"
            | "RESOURCE_EXHAUSTED" => Some(Class::RateLimited),
            "overloaded_error" | "UNAVAILABLE" => Some(Class::Overloaded),
            "api_error" | "server_error" | "INTERNAL" => Some(Class::Server),
            "invalid_request_error"
            | "not_found_error"
            | "request_too_large"
            | "INVALID_ARGUMENT"
            | "NOT_FOUND"
            // The Responses API's `response.failed` codes for what the
            // request holds: sending it again fails the same way.
            | "invalid_prompt"
            | "empty_image_file"
            | "failed_to_download_image"
            | "unsupported_image_media_type" => Some(Class::InvalidRequest),
            t if t.starts_with("invalid_image") || t.starts_with("image_") => {
                Some(Class::InvalidRequest)
            }
            _ => None,
        })
}

/// Reads the error shapes of OpenAI (`{"error": {message, type, code}}`),
/// Anthropic (`{"type": "error", "error": {type, message}, "request_id"}`),
/// Gemini (`{"error": {code, message, status}}`) and the looser forms some
/// compatible servers send (`{"error": "text"}`, `{"message": …}`). A body that
/// is not JSON (a proxy's HTML page) keeps a short snippet as the message.
fn parse_error_body(provider: &'static str, body: &[u8]) -> ApiError {
    let mut api = ApiError {
        provider,
        ..ApiError::default()
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => fill_from_value(&mut api, &v),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if !text.is_empty() {
                api.message =
                    Some(html_title(text).map_or_else(|| snippet(text.as_bytes()), str::to_owned));
            }
        }
    }
    api
}

fn fill_from_value(api: &mut ApiError, v: &Value) {
    let as_string = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match v.get("error") {
        Some(Value::Object(e)) => {
            // Gemini (Google's APIs) name the class in `status` and give the
            // HTTP status as a number in `code`; the reason of an
            // `ErrorInfo` detail (`API_KEY_INVALID`) is the most specific.
            api.error_type = e
                .get("type")
                .and_then(as_string)
                .or_else(|| e.get("status").and_then(as_string));
            let details = e.get("details").and_then(Value::as_array);
            let detail = |kind: &str, field: &str| {
                details?
                    .iter()
                    .filter(|d| {
                        d.get("@type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| t.ends_with(kind))
                    })
                    .find_map(|d| d.get(field).and_then(Value::as_str))
            };
            api.code = detail("ErrorInfo", "reason")
                .map(str::to_owned)
                .or_else(|| e.get("code").and_then(as_string));
            api.retry_after = detail("RetryInfo", "retryDelay").and_then(parse_proto_duration);
            api.message = e.get("message").and_then(as_string);
        }
        Some(Value::String(s)) => api.message = Some(s.clone()),
        _ => api.message = v.get("message").and_then(as_string),
    }
    if let Some(id) = v.get("request_id").and_then(as_string) {
        api.request_id = Some(id);
    }
}

/// A protobuf `Duration` in its JSON form: seconds with an `s`, as in `"37s"`
/// or `"1.5s"`.
fn parse_proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// The `<title>` of an HTML page, which says more than its first bytes.
fn html_title(text: &str) -> Option<&str> {
    let lower_start = text.find("<title>").or_else(|| text.find("<TITLE>"))? + "<title>".len();
    let rest = &text[lower_start..];
    let end = rest.find("</").unwrap_or(rest.len());
    let title = rest[..end].trim();
    (!title.is_empty()).then_some(title)
}

/// At most 200 bytes of `bytes` as text, cut on a character boundary.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX + 4)]);
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
