//! The HTTP side: routes, the master key, bounds on bodies and open calls,
//! streaming, metrics and graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use llm_tower::redis::RedisStore;
use llm_tower::{ChatStream, CompletionBuilder};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::config::{Config, Secret};
use crate::openai::{self, Chunks, Failure};
use crate::stack::Models;

/// Everything a request reads.
pub struct App {
    models: Models,
    master_key: Option<Secret>,
    max_request_bytes: usize,
    /// How long a client may take to send a request's headers, and its
    /// body.
    client_timeout: Duration,
    drop_params: bool,
    /// One permit per open call, held until its stream ends.
    calls: Arc<Semaphore>,
    max_calls: usize,
    store: Option<RedisStore>,
    registry: prometheus::Registry,
    /// Kept alive for the instruments; flushed at shutdown.
    meter_provider: SdkMeterProvider,
    requests: Counter<u64>,
    /// Set once shutdown starts: not ready any more.
    draining: AtomicBool,
    started: u64,
}

impl App {
    pub fn new(
        config: &Config,
        models: Models,
        store: Option<RedisStore>,
        registry: prometheus::Registry,
        meter_provider: SdkMeterProvider,
        meter: &Meter,
        client_timeout: Duration,
    ) -> App {
        App {
            models,
            master_key: config.master_key.clone(),
            max_request_bytes: config.max_request_bytes,
            client_timeout,
            drop_params: config.drop_params,
            calls: Arc::new(Semaphore::new(config.max_parallel_requests)),
            max_calls: config.max_parallel_requests,
            store,
            registry,
            meter_provider,
            requests: meter
                .u64_counter("llm_tower.gateway.requests")
                .with_unit("{request}")
                .with_description("Requests the gateway answered, by route and status.")
                .build(),
            draining: AtomicBool::new(false),
            started: unix_now(),
        }
    }

    fn count(&self, route: &'static str, status: StatusCode) {
        self.requests.add(
            1,
            &[
                KeyValue::new("http.route", route),
                KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
            ],
        );
    }

    /// Whether the request carries the master key (`Authorization: Bearer`
    /// or `x-api-key`), when one is set.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Failure> {
        let Some(key) = &self.master_key else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| {
                let v = v.as_bytes();
                (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                    .then(|| v[7..].trim_ascii())
            })
            .or_else(|| headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii()));
        match presented {
            Some(p) if same(p, key.expose().as_bytes()) => Ok(()),
            Some(_) => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "Authentication error: the key presented is not this gateway's key.",
            )),
            None => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing_api_key",
                "Authentication error: no key presented (send `Authorization: Bearer KEY` or \
                 `x-api-key: KEY`).",
            )),
        }
    }
}

/// Compares a presented key with the secret in time that depends only on
/// the presented key's length (which its sender knows), not on where it
/// differs from the secret, nor on the secret's length.
fn same(presented: &[u8], secret: &[u8]) -> bool {
    if secret.is_empty() {
        return false;
    }
    let mut equal = (presented.len() as u64).ct_eq(&(secret.len() as u64));
    for (i, byte) in presented.iter().enumerate() {
        equal &= byte.ct_eq(&secret[i % secret.len()]);
    }
    equal.into()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn fail(f: &Failure) -> Response {
    let mut response = json(f.status, f.body());
    response.headers_mut().extend(f.headers());
    response
}

/// Serves until SIGTERM or Ctrl-C, then drains for at most `grace`.
///
/// Its own accept loop over hyper rather than `axum::serve`, which sets no
/// timer: here a client has `client_timeout` to send a request's headers
/// (and an idle kept-alive connection is closed after as long), so that a
/// connection that stalls does not stay open for ever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    grace: Duration,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/health/liveliness", get(live))
        .route("/health/liveness", get(live))
        .route("/health/readiness", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(app.clone());
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(app.client_timeout);
    let signalled = shutdown_signal();
    tokio::pin!(signalled);
    loop {
        let tcp = tokio::select! {
            () = &mut signalled => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset
                    // before it was taken: wait a little, go on.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Each SSE event is its own small write: without TCP_NODELAY,
        // Nagle's algorithm holds the next one back until the client's
        // delayed ACK, 40 ms later (measured: +43 ms per stream).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    app.draining.store(true, Ordering::SeqCst);
    tracing::info!(
        open = app.max_calls - app.calls.available_permits(),
        "shutting down: no new connections; open streams may finish within {grace:?}"
    );
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                open = app.max_calls - app.calls.available_permits(),
                "grace period over: closing the streams still open"
            );
        }
    }
    let _ = app.meter_provider.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn not_found() -> Response {
    fail(&Failure::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "No such route on this gateway: it serves /v1/chat/completions, /v1/models, \
         /health/liveliness, /health/readiness and /metrics.",
    ))
}

async fn not_allowed() -> Response {
    fail(&Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "This route does not take that method.",
    ))
}

async fn live() -> Response {
    json(StatusCode::OK, "\"I'm alive!\"".into())
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let draining = app.draining.load(Ordering::SeqCst);
    let redis = app.store.as_ref().map(|s| {
        if s.is_available() {
            "connected"
        } else {
            "unavailable (books kept locally until it is back)"
        }
    });
    let body = serde_json::json!({
        "status": if draining { "shutting_down" } else { "healthy" },
        "cache": app.store.as_ref().map(|_| "redis"),
        "redis": redis,
        "open_calls": app.max_calls - app.calls.available_permits(),
    });
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(status, body.to_string())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut out = Vec::new();
    if let Err(e) = encoder.encode(&app.registry.gather(), &mut out) {
        return fail(&Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "metrics",
            format!("cannot encode the metrics: {e}"),
        ));
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(f) = app.authorize(&headers) {
        app.count("/v1/models", f.status);
        return fail(&f);
    }
    let data: Vec<serde_json::Value> = app
        .models
        .names
        .iter()
        .map(|name| {
            serde_json::json!({
                "id": name,
                "object": "model",
                "created": app.started,
                "owned_by": app.models.by_name.get(name).map_or("", |m| m.owner),
            })
        })
        .collect();
    app.count("/v1/models", StatusCode::OK);
    json(
        StatusCode::OK,
        serde_json::json!({"object": "list", "data": data}).to_string(),
    )
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let response = match call(&app, &headers, body).await {
        Ok(r) => r,
        Err(f) => fail(&f),
    };
    app.count("/v1/chat/completions", response.status());
    response
}

async fn call(app: &Arc<App>, headers: &HeaderMap, body: Body) -> Result<Response, Failure> {
    app.authorize(headers)?;
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!(
                "The request body is larger than this gateway takes ({} bytes; \
                 general_settings.max_request_size_mb).",
                app.max_request_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_request_bytes as u64) {
        drain(body).await;
        return Err(too_large());
    }
    // The call's place first: bodies being read count among the open
    // calls, so that what they hold is bounded too.
    let Ok(permit) = app.calls.clone().try_acquire_owned() else {
        drain(body).await;
        let mut f = Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            "gateway_busy",
            format!(
                "The gateway has {} calls open, its limit \
                 (general_settings.global_max_parallel_requests); try again shortly.",
                app.max_calls
            ),
        );
        f.retry_after = Some(Duration::from_secs(1));
        return Err(f);
    };
    let mut body = body;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(app.client_timeout, async {
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let frame = frame.map_err(|e| {
                Failure::invalid(format!("the request body could not be read: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > app.max_request_bytes {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(f)) => {
            if f.status == StatusCode::PAYLOAD_TOO_LARGE {
                drain(body).await;
            }
            return Err(f);
        }
        Err(_) => {
            return Err(Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                format!(
                    "The request body did not arrive within {:?}.",
                    app.client_timeout
                ),
            ));
        }
    }
    let parsed = openai::parse(
        &bytes,
        |name| app.models.by_name.get(name).map(|m| m.openai_wire),
        app.drop_params,
    )?;
    let Some(model) = app.models.by_name.get(&parsed.model) else {
        // parse() checked the name.
        return Err(Failure::invalid("unknown model"));
    };
    let created = unix_now();
    let streaming = parsed.request.stream;
    let stream = model
        .service
        .clone()
        .oneshot(parsed.request)
        .await
        .map_err(|e| openai::failure(&e))?;
    let response = if streaming {
        sse(stream, permit, created, parsed.model, parsed.include_usage)
    } else {
        whole(stream, created, &parsed.model).await?
    };
    Ok(response)
}

/// Reads and drops what is left of a body refused as too large, so that a
/// client still writing it reads the 413 rather than a broken pipe — up to
/// [`DRAIN_BYTES`] and for at most [`DRAIN_TIME`]; past either the
/// connection is closed.
async fn drain(mut body: Body) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Headers that say who answered.
fn answered_by(stream: &ChatStream, headers: &mut HeaderMap) {
    let meta = stream.meta();
    if let Some(d) = meta
        .deployment
        .as_deref()
        .and_then(|d| HeaderValue::from_str(d).ok())
    {
        headers.insert("x-llm-tower-deployment", d);
    }
    headers.insert("x-llm-tower-attempts", HeaderValue::from(meta.attempts));
}

/// A non-streaming answer: the stream folded into one `chat.completion`.
async fn whole(mut stream: ChatStream, created: u64, model: &str) -> Result<Response, Failure> {
    let mut headers = HeaderMap::new();
    answered_by(&stream, &mut headers);
    let mut builder = CompletionBuilder::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => builder.push(&event),
            Err(e) => return Err(openai::failure(&e)),
        }
    }
    let completion = builder.finish();
    let id = match &completion.id {
        Some(id) => format!("chatcmpl-{}", id.trim_start_matches("chatcmpl-")),
        None => new_id(),
    };
    let mut response = json(
        StatusCode::OK,
        openai::completion_body(&id, created, model, &completion),
    );
    response.headers_mut().extend(headers);
    Ok(response)
}

fn new_id() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("chatcmpl-{:x}{:08x}", unix_now(), n)
}

/// A streaming answer as server-sent events: OpenAI's chunks, then
/// `[DONE]` — or, when the stream fails after output, an error event and
/// the end, without `[DONE]`. Dropped when the client goes away, which
/// drops the stream and closes the upstream connection.
fn sse(
    stream: ChatStream,
    permit: OwnedSemaphorePermit,
    created: u64,
    model: String,
    include_usage: bool,
) -> Response {
    let mut headers = HeaderMap::new();
    answered_by(&stream, &mut headers);
    struct State {
        stream: ChatStream,
        chunks: Chunks,
        done: bool,
        _permit: OwnedSemaphorePermit,
    }
    let state = State {
        stream,
        chunks: Chunks::new(new_id(), created, model, include_usage),
        done: false,
        _permit: permit,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = Vec::with_capacity(256);
        // What is ready now goes out in one write.
        loop {
            let next = if out.is_empty() {
                st.stream.next().await
            } else {
                match futures_util::FutureExt::now_or_never(st.stream.next()) {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                Some(Ok(event)) => st.chunks.push(&event, &mut out),
                Some(Err(e)) => {
                    openai::error_event(&mut out, &e);
                    st.done = true;
                    break;
                }
                None => {
                    st.chunks.finish(&mut out);
                    st.done = true;
                    break;
                }
            }
        }
        Some((Ok::<_, Infallible>(Bytes::from(out)), st))
    });
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.extend(headers);
    response
}
