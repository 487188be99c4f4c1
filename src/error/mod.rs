//! The crate's one error type and its classification.
//!
//! Every LLM-level service answers [`Error`]. Its variants are *classes*: what
//! a caller or a retry policy needs to decide what to do next. They are derived
//! from the HTTP status, the provider's error body (`error.type` /
//! `error.code`) and the phase of the transport that failed — never from
//! English message text.
//!
//! ```
//! use llm_tower::Error;
//!
//! fn advice(err: &Error) -> &'static str {
//!     match err {
//!         Error::Unauthorized { .. } => "refresh the credential",
//!         Error::RateLimited { .. } | Error::Overloaded { .. } => "wait and retry",
//!         e if e.is_retryable() => "retry",
//!         _ => "give up",
//!     }
//! }
//! # let _ = advice;
//! ```

mod classify;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::chat::Completion;
use crate::headers::RateLimitInfo;

pub(crate) use classify::snippet;

/// A type-erased error, as tower layers and HTTP transports produce them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of every LLM-level service in this crate.
///
/// `Display` never contains an API key or token: only the provider's name,
/// status, error type, message and request id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The credential was refused (401, `authentication_error`,
    /// `invalid_api_key`, an expired token).
    #[error("unauthorized: {error}")]
    Unauthorized {
        /// What the provider said.
        error: Box<ApiError>,
    },
    /// The credential is valid but lacks permission (403, `permission_error`).
    #[error("forbidden: {error}")]
    Forbidden {
        /// What the provider said.
        error: Box<ApiError>,
    },
    /// Too many requests (429, `rate_limit_error`, `rate_limit_exceeded`).
    ///
    /// A 429 whose code is `insufficient_quota` is a billing state: it is in
    /// this class but [`Error::is_retryable`] is false for it.
    #[error("rate limited: {error}")]
    RateLimited {
        /// How long the provider asked the client to wait, if it said.
        retry_after: Option<Duration>,
        /// What the provider said.
        error: Box<ApiError>,
    },
    /// The provider is overloaded (503, 529, `overloaded_error`, also as an
    /// error event inside a stream).
    #[error("overloaded: {error}")]
    Overloaded {
        /// How long the provider asked the client to wait, if it said.
        retry_after: Option<Duration>,
        /// What the provider said.
        error: Box<ApiError>,
    },
    /// Any other server-side failure (5xx, `api_error`).
    #[error("server error: {error}")]
    Server {
        /// The HTTP status; for an error event inside a stream, the status the
        /// provider documents for its error type.
        status: StatusCode,
        /// What the provider said.
        error: Box<ApiError>,
    },
    /// The provider rejected the request itself (400, 404, 413, 422, …).
    #[error("invalid request: {error}")]
    InvalidRequest {
        /// The HTTP status; for an error event inside a stream, the status the
        /// provider documents for its error type.
        status: StatusCode,
        /// What the provider said.
        error: Box<ApiError>,
    },
    /// The connection failed: while connecting, while sending the request or
    /// waiting for its head, or while reading the body (a reset, or a body that
    /// ended before its terminator).
    #[error("transport error talking to {provider} ({phase}): {source}")]
    Transport {
        /// The provider being called.
        provider: &'static str,
        /// Where in the exchange it failed.
        phase: TransportPhase,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A deadline passed.
    #[error("{phase} timeout waiting for {provider}")]
    Timeout {
        /// The provider being called.
        provider: &'static str,
        /// Which deadline passed.
        phase: TimeoutPhase,
    },
    /// The response could not be decoded: malformed SSE or JSON, an event over
    /// the size limit, an HTML page where JSON was expected.
    #[error("could not decode {provider}'s response: {source}")]
    Decode {
        /// The provider being called.
        provider: &'static str,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },
    /// The call failed after output had been delivered: it cannot be retried
    /// transparently. What was generated before the failure is kept.
    #[error("interrupted after output: {source}")]
    Interrupted {
        /// Everything delivered before the failure, folded.
        partial: Box<Completion>,
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// The credential source failed to produce a credential.
    #[error("credential refresh failed: {source}")]
    Refresh {
        /// The source's error.
        #[source]
        source: BoxError,
    },
    /// The service is gone for good: a tower `Buffer` whose worker stopped
    /// (its inner service failed, or the runtime shut down). Not retryable:
    /// every later call fails the same way.
    #[error("service closed: {source}")]
    Closed {
        /// tower's error.
        #[source]
        source: BoxError,
    },
    /// A service was configured with an unusable value (a base URL that does
    /// not parse, a header value with control characters).
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong. Never contains the value of a secret.
        message: String,
    },
}

/// Where in an HTTP exchange a transport error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportPhase {
    /// Opening the connection (refused, DNS, TLS handshake).
    Connect,
    /// Sending the request or waiting for the response head (a reset before
    /// headers).
    Request,
    /// Reading the response body (a reset mid-stream, a truncated body).
    Body,
}

impl fmt::Display for TransportPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportPhase::Connect => "connect",
            TransportPhase::Request => "request",
            TransportPhase::Body => "body",
        })
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Opening the connection.
    Connect,
    /// Waiting for the first output event of the stream (the time to first
    /// token).
    FirstEvent,
    /// Waiting for the next event of a stream that had started.
    Idle,
    /// The whole call.
    Total,
    /// The server, or a proxy in front of it (LiteLLM's), gave up waiting
    /// for the answer: a 408.
    Server,
    /// A tower `timeout` layer: it bounds the response future, which under
    /// this crate's retrying layers is the time to the first output event
    /// (retries included), and over a provider the time to the head.
    Tower,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstEvent => "first-event",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
            TimeoutPhase::Server => "server",
            TimeoutPhase::Tower => "tower response-future",
        })
    }
}

/// Why a response could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// One SSE event (or a non-streaming body) exceeded the configured limit.
    #[error("event larger than the limit of {limit} bytes")]
    EventTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// An event's data was not the JSON the provider documents.
    #[error("malformed JSON in {context}: {source} (data starts {snippet:?})")]
    Json {
        /// The SSE event name or "body".
        context: String,
        /// The first bytes of the offending data, for diagnosis.
        snippet: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A successful status with a body that is neither SSE nor JSON, e.g. a
    /// proxy's HTML page.
    #[error("unexpected content type {content_type:?} (body starts {snippet:?})")]
    UnexpectedContentType {
        /// The `content-type` header, or empty when absent.
        content_type: String,
        /// The first bytes of the body.
        snippet: String,
    },
    /// The events did not follow the provider's protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// One answer opened more tool calls or content blocks than a client
    /// holds ([`MAX_PARTS`](crate::provider::MAX_PARTS)): what a broken or
    /// hostile server sends, never a real model.
    #[error("more than {limit} {what} in one answer")]
    TooManyParts {
        /// What there were too many of: `"tool calls"` or `"content blocks"`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The answer sent more metadata before its first output event than a
    /// retrying layer holds back (see [`engine`](crate::engine)).
    #[error("more than {limit} bytes of metadata before the first output event")]
    PreludeTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

/// What a provider said when it refused or failed a call.
///
/// Kept by every HTTP-level error class. Holds no secret: a provider's error
/// message is copied, never the request's headers.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    pub(crate) provider: &'static str,
    pub(crate) status: Option<StatusCode>,
    pub(crate) error_type: Option<String>,
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) should_retry: Option<bool>,
    pub(crate) rate_limit: Option<RateLimitInfo>,
    /// Made by this client (a rate limit layer), not said by the provider.
    pub(crate) local: bool,
}

impl ApiError {
    /// The provider that answered (`"openai"`, `"anthropic"`, …).
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// The HTTP status, or `None` for an error event inside a 200 stream.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The provider's error type (`error.type`), e.g. `overloaded_error`.
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref()
    }

    /// The provider's error code (`error.code`), e.g. `insufficient_quota`.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The provider's human-readable message.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The provider's request id (`x-request-id`, `request-id`, or the body's
    /// `request_id`).
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The delay the provider asked for (`retry-after-ms`, then
    /// `retry-after` as seconds or an HTTP date).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The `x-should-retry` header, which overrides the status rule.
    pub fn should_retry(&self) -> Option<bool> {
        self.should_retry
    }

    /// What the response's rate-limit headers said, if it had any.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.rate_limit.as_ref()
    }

    /// Whether this client refused the call itself, without asking the
    /// provider: a [`RateLimit`](crate::rate_limit::RateLimit) that found no room before
    /// the call's deadline or in its queue, or tower's `load_shed`
    /// (provider `"tower"`). [`provider`](ApiError::provider) then names the
    /// provider the call was for (`"unknown"` before any answer came).
    pub fn is_local(&self) -> bool {
        self.local
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ApiError");
        d.field("provider", &self.provider);
        if let Some(s) = self.status {
            d.field("status", &s.as_u16());
        }
        for (name, v) in [
            ("error_type", &self.error_type),
            ("code", &self.code),
            ("message", &self.message),
            ("request_id", &self.request_id),
        ] {
            if let Some(v) = v {
                d.field(name, v);
            }
        }
        if let Some(r) = self.retry_after {
            d.field("retry_after", &r);
        }
        if let Some(r) = self.should_retry {
            d.field("should_retry", &r);
        }
        if let Some(r) = &self.rate_limit {
            d.field("rate_limit", r);
        }
        if self.local {
            d.field("local", &true);
        }
        d.finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            _ if self.local && self.provider == "tower" => {
                write!(f, "refused by this client's tower layers")?;
            }
            _ if self.local => write!(f, "the client's rate limit for {}", self.provider)?,
            Some(s) => {
                write!(f, "{} answered {}", self.provider, s.as_u16())?;
                if let Some(reason) = s.canonical_reason() {
                    write!(f, " {reason}")?;
                }
            }
            None => write!(f, "{} sent an error event", self.provider)?,
        }
        match (&self.error_type, &self.code) {
            (Some(t), Some(c)) if t != c => write!(f, " ({t}, {c})")?,
            (Some(t), _) => write!(f, " ({t})")?,
            (None, Some(c)) => write!(f, " ({c})")?,
            (None, None) => {}
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

impl Error {
    /// A short, stable, lowercase name of the class, for logs, metrics and
    /// command-line output: `"unauthorized"`, `"rate_limited"`, …
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unauthorized { .. } => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::RateLimited { .. } => "rate_limited",
            Error::Overloaded { .. } => "overloaded",
            Error::Server { .. } => "server",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::Transport { .. } => "transport",
            Error::Timeout { .. } => "timeout",
            Error::Decode { .. } => "decode",
            Error::Interrupted { .. } => "interrupted",
            Error::Refresh { .. } => "refresh",
            Error::Closed { .. } => "closed",
            Error::Config { .. } => "config",
        }
    }

    /// What the provider said, for the classes that come from a provider's
    /// answer.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::Unauthorized { error }
            | Error::Forbidden { error }
            | Error::RateLimited { error, .. }
            | Error::Overloaded { error, .. }
            | Error::Server { error, .. }
            | Error::InvalidRequest { error, .. } => Some(error),
            Error::Interrupted { source, .. } => source.api_error(),
            _ => None,
        }
    }

    /// Whether waiting and sending the same call again may succeed, by the
    /// conventions of the providers' official SDKs: an `x-should-retry`
    /// header wins; else 408, 409, 429 and 5xx are retryable, other statuses
    /// are not; connection failures, timeouts and undecodable bodies are
    /// retryable, but an answer over a size limit is not (sent again, the
    /// same call would most likely grow as large, at the same cost); a 429
    /// with code `insufficient_quota` is not (it is a billing state).
    /// [`Error::Interrupted`] never is: output was already delivered.
    pub fn is_retryable(&self) -> bool {
        if let Some(api) = self.api_error()
            && !matches!(self, Error::Interrupted { .. })
        {
            if let Some(should) = api.should_retry {
                return should;
            }
            if api.code.as_deref() == Some("insufficient_quota") {
                return false;
            }
        }
        match self {
            Error::RateLimited { .. } | Error::Overloaded { .. } | Error::Server { .. } => true,
            Error::InvalidRequest { status, .. } => {
                matches!(status.as_u16(), 408 | 409)
            }
            Error::Decode {
                source:
                    DecodeError::EventTooLarge { .. }
                    | DecodeError::PreludeTooLarge { .. }
                    | DecodeError::TooManyParts { .. },
                ..
            } => false,
            Error::Transport { .. } | Error::Timeout { .. } | Error::Decode { .. } => true,
            Error::Unauthorized { .. }
            | Error::Forbidden { .. }
            | Error::Interrupted { .. }
            | Error::Refresh { .. }
            | Error::Closed { .. }
            | Error::Config { .. } => false,
        }
    }

    /// The delay the provider asked for, if it said (`retry-after-ms`, then
    /// `retry-after` as seconds or an HTTP date).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } | Error::Overloaded { retry_after, .. } => {
                *retry_after
            }
            other => other.api_error().and_then(|e| e.retry_after),
        }
    }

    /// The HTTP status of the provider's answer, where there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Server { status, .. } | Error::InvalidRequest { status, .. } => Some(*status),
            Error::Timeout {
                phase: TimeoutPhase::Server,
                ..
            } => Some(StatusCode::REQUEST_TIMEOUT),
            other => other.api_error().and_then(|e| e.status),
        }
    }

    /// The provider involved, where known.
    pub fn provider(&self) -> Option<&'static str> {
        match self {
            Error::Transport { provider, .. }
            | Error::Timeout { provider, .. }
            | Error::Decode { provider, .. } => Some(provider),
            Error::Interrupted { source, .. } => source.provider(),
            other => other.api_error().map(|e| e.provider),
        }
    }

    /// The completion delivered before the failure, for [`Error::Interrupted`].
    pub fn partial(&self) -> Option<&Completion> {
        match self {
            Error::Interrupted { partial, .. } => Some(partial),
            _ => None,
        }
    }

    /// Applies `f` to every text in this error that came from the server
    /// (the provider's message, type and code; a decode error's snippet), so
    /// that a secret it echoed can be masked.
    pub(crate) fn mask_text(&mut self, f: &mut dyn FnMut(&mut String)) {
        match self {
            Error::Unauthorized { error }
            | Error::Forbidden { error }
            | Error::RateLimited { error, .. }
            | Error::Overloaded { error, .. }
            | Error::Server { error, .. }
            | Error::InvalidRequest { error, .. } => {
                for text in [&mut error.message, &mut error.error_type, &mut error.code]
                    .into_iter()
                    .flatten()
                {
                    f(text);
                }
            }
            Error::Decode {
                source:
                    DecodeError::Json { snippet, .. }
                    | DecodeError::UnexpectedContentType { snippet, .. }
                    | DecodeError::Protocol(snippet),
                ..
            } => f(snippet),
            Error::Interrupted { source, .. } => source.mask_text(f),
            _ => {}
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }

    /// A future or service used out of turn (polled after it finished):
    /// out of line, so that the hot path of the poll that checks for it
    /// stays short.
    #[cold]
    #[inline(never)]
    pub(crate) fn misuse(message: &'static str) -> Self {
        Error::config(message)
    }

    pub(crate) fn decode(provider: &'static str, source: DecodeError) -> Self {
        Error::Decode { provider, source }
    }
}

/// Converts the boxed errors of tower layers (`Buffer`, `Timeout`,
/// `LoadShed`, …) at the boundary back into this crate's error, by type:
///
/// - an `Error` that was boxed comes back as itself, class intact;
/// - tower's `Elapsed` is [`Error::Timeout`] with phase
///   [`TimeoutPhase::Tower`] (retryable);
/// - `load_shed`'s refusal is [`Error::Overloaded`] whose
///   [`ApiError::is_local`] is true: this process shed the call;
/// - a closed `Buffer` (or the failure that closed it) is
///   [`Error::Closed`], final;
/// - anything else a [`Error::Transport`] from `"tower"` with the original
///   as its `source()`.
///
/// ```
/// use llm_tower::Error;
/// use tower::ServiceBuilder;
///
/// # fn stack<S>(s: S) -> impl tower::Service<llm_tower::ChatRequest, Error = Error>
/// # where S: tower::Service<llm_tower::ChatRequest, Response = llm_tower::ChatStream, Error = Error> + Send + 'static, S::Future: Send {
/// ServiceBuilder::new()
///     .map_err(Error::from) // tower::buffer's errors are boxed
///     .buffer(64)
///     .service(s)
/// # }
/// ```
impl From<BoxError> for Error {
    fn from(error: BoxError) -> Self {
        let error = match error.downcast::<Error>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        if error.is::<tower::timeout::error::Elapsed>() {
            return Error::Timeout {
                provider: "tower",
                phase: TimeoutPhase::Tower,
            };
        }
        if error.is::<tower::load_shed::error::Overloaded>() {
            return Error::Overloaded {
                retry_after: None,
                error: Box::new(ApiError {
                    provider: "tower",
                    error_type: Some("load_shed".into()),
                    message: Some("the service below was not ready".into()),
                    local: true,
                    ..ApiError::default()
                }),
            };
        }
        if error.is::<tower::buffer::error::Closed>()
            || error.is::<tower::buffer::error::ServiceError>()
        {
            return Error::Closed { source: error };
        }
        Error::Transport {
            provider: "tower",
            phase: TransportPhase::Request,
            source: error,
        }
    }
}
