//! The server: accepting connections, then for each request its dialect
//! (from the path), the key check, the request limit, and the reply.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::lock;

use super::dialect::{self, Dialect};
use super::player::{MockBody, OpenResponse};
use super::render::{Asked, Step};
use super::reply::Reply;
use super::socket::ResettableStream;
use super::{DefaultReply, RecordedRequest, Shared};

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => {
                backoff = ACCEPT_BACKOFF_MIN;
                s
            }
            Err(e) => {
                // Out of file descriptors, say: retrying at once would spin
                // a core until the condition passes.
                tracing::debug!(error = %e, backoff_ms = backoff.as_millis() as u64, "mock server: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(serve_connection(stream, shared));
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    shared.live_connections.fetch_add(1, Ordering::SeqCst);
    let _live = LiveGuard(shared.clone());
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream::new(stream, reset.clone()));
    let service = hyper::service::service_fn(move |req| handle(req, shared.clone(), reset.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the connection ends without a response.
#[derive(Debug)]
pub(super) struct ResetBeforeHeaders;

impl fmt::Display for ResetBeforeHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scripted reset before headers")
    }
}

impl std::error::Error for ResetBeforeHeaders {}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
) -> Result<Response<MockBody>, ResetBeforeHeaders> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers,
        body,
        received_at: tokio::time::Instant::now(),
    };
    let path = recorded.uri_path().to_owned();
    let json = recorded.json();

    // Gemini names the model and the mode in the path, as does Claude on
    // Vertex AI.
    let in_path = |methods: [&str; 2]| {
        path.rsplit_once(':').and_then(|(resource, method)| {
            let stream = methods.iter().position(|m| *m == method)? == 1;
            let model = resource.rsplit('/').next().unwrap_or("mock-model");
            Some((stream, model.to_owned()))
        })
    };
    let gemini = in_path(["generateContent", "streamGenerateContent"]);
    let vertex_claude = in_path(["rawPredict", "streamRawPredict"]);
    let dialect = if path.ends_with("/v1/chat/completions") {
        Dialect::OpenAi
    } else if is_azure(&path) && path.ends_with("/chat/completions") {
        // Azure's deployment paths, which name no version in the path and
        // need one in the query.
        if !recorded.path.contains("api-version=") {
            lock(&shared.requests).push(recorded);
            let body =
                serde_json::json!({"error": {"code": "404", "message": "Resource not found"}});
            return Ok(simple(
                StatusCode::NOT_FOUND,
                "application/json",
                body.to_string(),
            ));
        }
        Dialect::OpenAi
    } else if path.ends_with("/v1/responses") {
        Dialect::Responses
    } else if path.ends_with("/chat/completions") || path.ends_with("/responses") {
        // OpenAI's API lives under `/v1`: without it, its 404.
        let method = recorded.method.clone();
        lock(&shared.requests).push(recorded);
        return Ok(openai_invalid_url(&method, &path));
    } else if path.ends_with("/messages") || vertex_claude.is_some() {
        Dialect::Anthropic
    } else if gemini.is_some() {
        Dialect::Gemini
    } else {
        Dialect::Other
    };
    let on_vertex = vertex_claude.is_some();
    let (stream, model) = gemini.or(vertex_claude).unwrap_or_else(|| {
        (
            json.get("stream").and_then(Value::as_bool).unwrap_or(false),
            json.get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock-model")
                .to_owned(),
        )
    });
    let asked = Asked {
        dialect,
        stream,
        model,
        include_usage: json
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let refused = lock(&shared.accepted_keys)
        .as_ref()
        .and_then(|keys| key_refusal(dialect, &recorded, keys));
    let limited = if refused.is_some() {
        None
    } else {
        lock(&shared.rate_limit)
            .as_mut()
            .map(|limit| limit.admit(recorded.received_at))
    };
    let invalid = match dialect {
        _ if refused.is_some() => None,
        Dialect::Responses => dialect::responses::refusal(&json),
        Dialect::OpenAi => dialect::openai::refusal(&json),
        Dialect::Anthropic => dialect::anthropic::refusal(&json, on_vertex),
        Dialect::Gemini => dialect::gemini::refusal(&asked.model, &json),
        _ => None,
    };
    let reply = if let Some(message) = refused {
        Reply::api_error(401, "authentication_error", message)
    } else if let Some((status, error_type, message)) = invalid {
        Reply::api_error(status, error_type, message)
    } else if let Some((_, Some(retry_after))) = limited {
        shared.rate_limited.fetch_add(1, Ordering::SeqCst);
        Reply::api_error(429, "rate_limit_error", "Rate limit reached for requests")
            .header("retry-after", retry_after.as_secs_f64().ceil().to_string())
    } else {
        let next = lock(&shared.replies).pop_front();
        match next {
            Some(reply) => reply,
            // Cloned out so that `respond` runs without the lock.
            None => match lock(&shared.default_reply).clone() {
                DefaultReply::Reply(reply) => reply,
                DefaultReply::With(respond) => respond(&recorded),
            },
        }
    };
    lock(&shared.requests).push(recorded);
    // Made-up text has no shape on a path no provider has: the server
    // does not know it, as a real one would not.
    let reply = if dialect == Dialect::Other && reply.is_generated() {
        let body = serde_json::json!({"error": {"message": format!("no route for {path}"), "type": "not_found"}});
        Reply::body(404, "application/json", body.to_string())
    } else {
        reply
    };
    let reply = match limited {
        Some((state, _)) => state.headers(dialect, reply),
        None => reply,
    };
    let Some(rendered) = reply.render(&asked) else {
        reset.store(true, Ordering::SeqCst);
        return Err(ResetBeforeHeaders);
    };
    let mut response = Response::new(MockBody::new(
        rendered.steps.into(),
        reply.delay,
        reset,
        Some(OpenResponse::new(&shared)),
    ));
    *response.status_mut() = rendered.status;
    let content_type = rendered.content_type;
    let headers = response.headers_mut();
    if !content_type.is_empty()
        && let Ok(v) = HeaderValue::from_str(&content_type)
    {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert("x-request-id", HeaderValue::from_static("req_mock"));
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    Ok(response)
}

/// Where a request may carry its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
    /// `x-goog-api-key: <key>` (Gemini).
    XGoogApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    AzureApiKey,
}

impl KeyHeader {
    const ALL: [KeyHeader; 4] = [
        KeyHeader::Bearer,
        KeyHeader::XApiKey,
        KeyHeader::XGoogApiKey,
        KeyHeader::AzureApiKey,
    ];

    /// The headers a dialect's real API reads a key from, in order of
    /// preference.
    fn accepted(dialect: Dialect, azure: bool) -> &'static [KeyHeader] {
        match dialect {
            // Azure takes its keys in `api-key`, and Entra ID tokens as
            // bearer tokens.
            Dialect::OpenAi | Dialect::Responses if azure => {
                &[KeyHeader::AzureApiKey, KeyHeader::Bearer]
            }
            Dialect::OpenAi | Dialect::Responses => &[KeyHeader::Bearer],
            // OAuth tokens come as bearer tokens.
            Dialect::Anthropic => &[KeyHeader::XApiKey, KeyHeader::Bearer],
            // Google's APIs (and Vertex AI) take OAuth access tokens as
            // bearer tokens.
            Dialect::Gemini => &[KeyHeader::XGoogApiKey, KeyHeader::Bearer],
            // A wire of the caller's own: its key header is its own to
            // check (in `respond_with`).
            Dialect::Other => &[],
        }
    }

    /// The key the request carries here, if any.
    fn key(self, request: &RecordedRequest) -> Option<&str> {
        match self {
            KeyHeader::Bearer => request
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer ")),
            KeyHeader::XApiKey => request.header("x-api-key"),
            KeyHeader::XGoogApiKey => request.header("x-goog-api-key"),
            KeyHeader::AzureApiKey => request.header("api-key"),
        }
    }
}

impl fmt::Display for KeyHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyHeader::Bearer => "Authorization: Bearer",
            KeyHeader::XApiKey => "x-api-key",
            KeyHeader::XGoogApiKey => "x-goog-api-key",
            KeyHeader::AzureApiKey => "api-key",
        })
    }
}

/// Why `request` is refused, when it carries none of `keys` where `dialect`
/// reads keys from: a 401's message, which echoes the key presented in full.
fn key_refusal(dialect: Dialect, request: &RecordedRequest, keys: &[String]) -> Option<String> {
    let accepted = KeyHeader::accepted(dialect, is_azure(request.uri_path()));
    if accepted.is_empty() {
        return None;
    }
    let presented = |h: &KeyHeader| h.key(request).map(|key| (*h, key));
    if accepted
        .iter()
        .filter_map(presented)
        .any(|(_, key)| keys.iter().any(|k| k == key))
    {
        return None;
    }
    let expected = accepted
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    Some(match accepted.iter().find_map(presented) {
        Some((_, key)) => format!("invalid api key: Incorrect API key provided: {key}"),
        None => match KeyHeader::ALL.iter().find_map(presented) {
            Some((header, key)) => format!(
                "invalid api key: Incorrect API key provided: {key} (sent as {header}; \
                 expected {expected})"
            ),
            None => format!("invalid api key: no API key provided (expected {expected})"),
        },
    })
}

/// OpenAI's answer to a path it does not serve.
fn openai_invalid_url(method: &Method, path: &str) -> Response<MockBody> {
    let body = serde_json::json!({"error": {
        "message": format!("Invalid URL ({method} {path})"),
        "type": "invalid_request_error", "param": null, "code": null,
    }});
    simple(StatusCode::NOT_FOUND, "application/json", body.to_string())
}

/// Whether `path` is one of Azure OpenAI's (`/openai/v1/…`,
/// `/openai/deployments/{deployment}/…`).
fn is_azure(path: &str) -> bool {
    path.starts_with("/openai/")
}

impl RecordedRequest {
    fn uri_path(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

fn simple(status: StatusCode, content_type: &'static str, body: String) -> Response<MockBody> {
    let mut r = Response::new(MockBody::new(
        VecDeque::from([Step::Data(Bytes::from(body))]),
        Duration::ZERO,
        Arc::new(AtomicBool::new(false)),
        None,
    ));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}
