//! The fault matrix: every fault the mock server plays, for each provider,
//! streaming and not, through the recommended stack. Each case checks the
//! outcome (the text, or the error's class), the exact requests the server
//! saw, that no output arrived twice — and, across the whole matrix, that no
//! key ever shows in tracing output, `Debug` or `Display`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llm_tower::mock::{MockServer, RecordedRequest, Reply};
use llm_tower::trace::Conventions;
use llm_tower::{
    Anthropic, Attempts, ChatRequest, Credential, DecodeError, Error, FallbackLayer, Gemini,
    GenAiTraceLayer, Message, OpenAi, OpenAiResponses, RateLimitLayer, RefreshLayer, RetryPolicy,
    StreamConcurrencyLimitLayer, StreamEvent, StreamTimeoutLayer, TransportRetryLayer,
};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use support::{Captured, Svc, drain, texts};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

const DELTAS: [&str; 4] = ["Hel", "lo", " wor", "ld"];
const TEXT: &str = "Hello world";

/// Every secret contains this, so one search finds any of them.
const SECRET: &str = "SECRET";
/// The backup provider's key, given to its builder.
const BACKUP_KEY: &str = "sk-BACKUP-SECRET-0";
/// The primary's first credential, stamped by the refresh layer.
const INITIAL_KEY: &str = "sk-INITIAL-SECRET-1";
/// What the credential source hands out.
const REFRESHED_KEY: &str = "sk-REFRESHED-SECRET-2";

/// Large enough to pass the default limit on one event (4 MiB).
const OVERSIZED: usize = 5 << 20;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Provider {
    OpenAi,
    Responses,
    Anthropic,
    Gemini,
}

impl Provider {
    /// Whether the mock server saw a request for this provider at `path`.
    fn called_at(self, path: &str) -> bool {
        match self {
            Provider::OpenAi => path == "/v1/chat/completions",
            Provider::Responses => path == "/v1/responses",
            Provider::Anthropic => path == "/v1/messages",
            Provider::Gemini => path.starts_with("/v1beta/models/m:"),
        }
    }

    /// The backup.
    fn other(self) -> Provider {
        match self {
            Provider::OpenAi | Provider::Responses | Provider::Gemini => Provider::Anthropic,
            Provider::Anthropic => Provider::OpenAi,
        }
    }

    fn base_url(self, server: &MockServer) -> String {
        match self {
            Provider::OpenAi | Provider::Responses => server.openai_url(),
            Provider::Anthropic => server.anthropic_url(),
            Provider::Gemini => server.gemini_url(),
        }
    }

    /// The provider at `base`, with `key` if given; also its `Debug`, for
    /// the secrets check.
    fn service(self, base: &str, key: Option<&str>, seen: &mut Vec<String>) -> Svc {
        // The builders share their method names, not a trait.
        macro_rules! build {
            ($builder:expr) => {{
                let mut b = $builder.base_url(base).model("m");
                if let Some(key) = key {
                    b = b.api_key(key);
                }
                seen.push(format!("{b:?}"));
                let svc = b.build().unwrap();
                seen.push(format!("{svc:?}"));
                BoxCloneService::new(svc)
            }};
        }
        match self {
            Provider::OpenAi => build!(OpenAi::builder()),
            Provider::Responses => build!(OpenAiResponses::builder()),
            Provider::Anthropic => build!(Anthropic::builder()),
            Provider::Gemini => build!(Gemini::builder()),
        }
    }

    /// How the refresh layer sends this provider's credential.
    fn credential(self, secret: &str) -> Credential {
        match self {
            Provider::OpenAi | Provider::Responses => Credential::bearer(secret),
            Provider::Anthropic | Provider::Gemini => Credential::api_key(secret),
        }
    }
}

/// The README's production stack over `primary`, falling back to `backup`
/// when overloaded; the credential source counts its refreshes.
fn production(
    provider: Provider,
    primary: Svc,
    backup: Svc,
    refreshes: Arc<AtomicUsize>,
    seen: &mut Vec<String>,
) -> Svc {
    let refresh = RefreshLayer::new(move || {
        refreshes.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::io::Error>(provider.credential(REFRESHED_KEY)) }
    })
    .initial(provider.credential(INITIAL_KEY));
    seen.push(format!("{refresh:?}"));
    seen.push(format!("{:?}", provider.credential(INITIAL_KEY)));
    let stack = ServiceBuilder::new()
        .layer(
            GenAiTraceLayer::new()
                .conventions(Conventions::Latest)
                .record_content(true)
                .meter(&exported().meters.meter("faults")),
        )
        .layer(StreamTimeoutLayer::new().total(Duration::from_secs(120)))
        .layer(FallbackLayer::new(backup).when(|e| matches!(e, Error::Overloaded { .. })))
        .layer(refresh)
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(RateLimitLayer::new().requests_per_minute(600))
        .layer(
            StreamTimeoutLayer::new()
                .first_event(Duration::from_secs(30))
                .idle(Duration::from_secs(20)),
        )
        .layer(StreamConcurrencyLimitLayer::new(32))
        .service(primary);
    BoxCloneService::new(stack)
}

/// What a case must end in.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Success with this text.
    Text(&'static str),
    /// An error of this class before any output.
    Fail(&'static str),
    /// Output (this text), then an error of this class.
    Interrupted(&'static str, &'static str),
}

/// One fault, scripted on a fresh server whose default reply is `DELTAS`.
struct Case {
    name: &'static str,
    script: fn(&MockServer),
    /// The primary's address is a closed port.
    refused: bool,
    /// Outcome and requests (`P` primary, `B` backup, in order) when
    /// streaming, then when not.
    stream: (Want, &'static str),
    whole: (Want, &'static str),
    /// Credential refreshes.
    refreshes: usize,
    /// The least time between the first and the second request.
    gap: Duration,
}

const CASE: Case = Case {
    name: "",
    script: |_| {},
    refused: false,
    stream: (Want::Text(TEXT), "P"),
    whole: (Want::Text(TEXT), "P"),
    refreshes: 0,
    gap: Duration::ZERO,
};

fn text() -> Reply {
    Reply::text(DELTAS)
}

fn html(status: u16) -> Reply {
    Reply::body(
        status,
        "text/html; charset=utf-8",
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
    )
}

fn cases() -> Vec<Case> {
    use Want::{Fail, Interrupted, Text};
    let retried = (Text(TEXT), "PP");
    vec![
        Case {
            name: "connect refused",
            refused: true,
            stream: (Fail("transport"), ""),
            whole: (Fail("transport"), ""),
            ..CASE
        },
        Case {
            name: "reset before headers, once",
            script: |s| {
                s.push(Reply::reset());
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "reset before headers, always",
            script: |s| {
                s.set_default(Reply::reset());
            },
            stream: (Fail("transport"), "PPP"),
            whole: (Fail("transport"), "PPP"),
            ..CASE
        },
        Case {
            name: "500, once",
            script: |s| {
                s.push(Reply::api_error(500, "server_error", "boom"));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "500, always",
            script: |s| {
                s.set_default(Reply::api_error(500, "server_error", "boom"));
            },
            stream: (Fail("server"), "PPP"),
            whole: (Fail("server"), "PPP"),
            ..CASE
        },
        Case {
            name: "429 with retry-after: 7, once",
            script: |s| {
                s.push(
                    Reply::api_error(429, "rate_limit_error", "slow down")
                        .header("retry-after", "7"),
                );
            },
            stream: retried,
            whole: retried,
            gap: Duration::from_secs(7),
            ..CASE
        },
        Case {
            name: "429 without retry-after, once",
            script: |s| {
                s.push(Reply::api_error(429, "rate_limit_error", "slow down"));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "429, always",
            script: |s| {
                s.set_default(Reply::api_error(429, "rate_limit_error", "no"));
            },
            stream: (Fail("rate_limited"), "PPP"),
            whole: (Fail("rate_limited"), "PPP"),
            ..CASE
        },
        Case {
            name: "529, once",
            script: |s| {
                s.push(Reply::api_error(529, "overloaded_error", "busy"));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "529 until the retries are spent: the backup answers",
            script: |s| {
                s.push_all(std::iter::repeat_n(
                    Reply::api_error(529, "overloaded_error", "busy"),
                    3,
                ));
            },
            stream: (Text(TEXT), "PPPB"),
            whole: (Text(TEXT), "PPPB"),
            ..CASE
        },
        Case {
            name: "529, always (the backup too)",
            script: |s| {
                s.set_default(Reply::api_error(529, "overloaded_error", "busy"));
            },
            stream: (Fail("overloaded"), "PPPB"),
            whole: (Fail("overloaded"), "PPPB"),
            ..CASE
        },
        Case {
            name: "overloaded event before output, once",
            script: |s| {
                s.push(text().error_event_after(0, "overloaded_error", "busy"));
            },
            stream: retried,
            // A whole body with a fault is cut in its middle.
            whole: retried,
            ..CASE
        },
        Case {
            name: "overloaded event after 2 deltas",
            script: |s| {
                s.push(text().error_event_after(2, "overloaded_error", "busy"));
            },
            stream: (Interrupted("Hello", "overloaded"), "P"),
            whole: retried,
            ..CASE
        },
        Case {
            name: "401 once: refreshed",
            script: |s| {
                s.accept_keys([REFRESHED_KEY]);
            },
            stream: retried,
            whole: retried,
            refreshes: 1,
            ..CASE
        },
        Case {
            name: "401 always: refreshed once, then given up",
            script: |s| {
                s.accept_keys(["nobody's"]);
            },
            stream: (Fail("unauthorized"), "PP"),
            whole: (Fail("unauthorized"), "PP"),
            refreshes: 1,
            ..CASE
        },
        Case {
            name: "reset after 0 deltas",
            script: |s| {
                s.push(text().reset_after(0));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "reset after 2 deltas",
            script: |s| {
                s.push(text().reset_after(2));
            },
            stream: (Interrupted("Hello", "transport"), "P"),
            whole: retried,
            ..CASE
        },
        Case {
            name: "truncated after 0 deltas",
            script: |s| {
                s.push(text().truncate_after(0));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "truncated after 2 deltas, no terminator",
            script: |s| {
                s.push(text().truncate_after(2));
            },
            stream: (Interrupted("Hello", "transport"), "P"),
            whole: retried,
            ..CASE
        },
        Case {
            name: "stall after 0 deltas",
            script: |s| {
                s.push(text().stall_after(0));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "stall after 2 deltas",
            script: |s| {
                s.push(text().stall_after(2));
            },
            stream: (Interrupted("Hello", "timeout"), "P"),
            whole: retried,
            ..CASE
        },
        Case {
            name: "malformed JSON event after 0 deltas",
            script: |s| {
                s.push(text().malformed_after(0));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "malformed JSON event after 2 deltas",
            script: |s| {
                s.push(text().malformed_after(2));
            },
            stream: (Interrupted("Hello", "decode"), "P"),
            whole: retried,
            ..CASE
        },
        Case {
            name: "HTML error page with 502",
            script: |s| {
                s.push(html(502));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "HTML page with 200, once",
            script: |s| {
                s.push(html(200));
            },
            stream: retried,
            whole: retried,
            ..CASE
        },
        Case {
            name: "HTML page with 200, always",
            script: |s| {
                s.set_default(html(200));
            },
            stream: (Fail("decode"), "PPP"),
            whole: (Fail("decode"), "PPP"),
            ..CASE
        },
        Case {
            name: "invalid UTF-8 after 2 deltas",
            script: |s| {
                s.push(text().invalid_utf8_after(2));
            },
            // As the SSE standard decodes: one replacement character, and
            // the rest of the answer intact.
            stream: (Text("Hello\u{FFFD} world"), "P"),
            whole: (Text("Hello\u{FFFD} world"), "P"),
            ..CASE
        },
        Case {
            name: "oversized line after 0 deltas",
            script: |s| {
                s.push(text().oversized_after(0, OVERSIZED));
            },
            stream: (Fail("decode"), "P"),
            whole: (Fail("decode"), "P"),
            ..CASE
        },
        Case {
            name: "oversized line after 2 deltas",
            script: |s| {
                s.push(text().oversized_after(2, OVERSIZED));
            },
            stream: (Interrupted("Hello", "decode"), "P"),
            whole: (Fail("decode"), "P"),
            ..CASE
        },
    ]
}

/// Runs one case; `Err` says how it went wrong. Adds every `Debug` and
/// `Display` it can reach to `seen`.
async fn run(
    provider: Provider,
    stream: bool,
    case: &Case,
    seen: &mut Vec<String>,
) -> Result<(), String> {
    let server = MockServer::start().await;
    server.set_default(text());
    (case.script)(&server);
    // Held, never listening: connecting is refused, and no other test can
    // take the port while this one runs.
    let (primary_base, _closed) = if case.refused {
        let (url, socket) = closed_port(provider);
        (url, Some(socket))
    } else {
        (provider.base_url(&server), None)
    };
    let primary = provider.service(&primary_base, None, seen);
    let backup =
        provider
            .other()
            .service(&provider.other().base_url(&server), Some(BACKUP_KEY), seen);
    let refreshes = Arc::new(AtomicUsize::new(0));
    let svc = production(provider, primary, backup, refreshes.clone(), seen);

    let attempts = Attempts::new();
    let request = ChatRequest::new("")
        .message(Message::user("hello"))
        .stream(stream)
        .extension(attempts.clone());
    seen.push(format!("{request:?}"));
    let (events, error) = match svc.oneshot(request).await {
        Ok(s) => {
            seen.push(format!("{s:?}"));
            drain(s).await
        }
        Err(e) => (Vec::new(), Some(e)),
    };
    if let Some(e) = &error {
        seen.push(format!("{e} / {e:?}"));
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            seen.push(format!("{s} / {s:?}"));
            source = s.source();
        }
    }

    let (want, requests) = if stream { case.stream } else { case.whole };
    let delivered: String = texts(&events).concat();
    let output = events.iter().any(StreamEvent::is_output);
    let kind = error.as_ref().map(Error::kind);
    match want {
        Want::Text(t) => {
            if error.is_some() || delivered != t {
                return Err(format!("want {t:?}, got {delivered:?} then {error:?}"));
            }
            if stream && t == TEXT && texts(&events) != DELTAS {
                return Err(format!("deltas {:?}", texts(&events)));
            }
        }
        Want::Fail(k) => {
            if output || kind != Some(k) {
                return Err(format!(
                    "want {k} before output, got {delivered:?} then {error:?}"
                ));
            }
        }
        Want::Interrupted(partial, k) => {
            if delivered != partial || kind != Some(k) {
                return Err(format!(
                    "want {partial:?} then {k}, got {delivered:?} then {error:?}"
                ));
            }
        }
    }
    // Metadata is held back across retries: one start, at most one end.
    let starts = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::MessageStart { .. }))
        .count();
    let dones = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Done { .. }))
        .count();
    if starts > 1 || dones > 1 {
        return Err(format!("{starts} starts and {dones} ends in {events:?}"));
    }

    let seen_paths: String = server
        .requests()
        .iter()
        .map(|r| {
            if provider.called_at(&r.path) {
                'P'
            } else if provider.other().called_at(&r.path) {
                'B'
            } else {
                '?'
            }
        })
        .collect();
    if seen_paths != requests {
        return Err(format!(
            "want requests {requests}, the server saw {seen_paths}"
        ));
    }
    // Every request the providers sent, the refused ones included: a
    // refused connection is retried max_retries (2) times.
    let sent = if case.refused { 3 } else { requests.len() };
    if attempts.get() as usize != sent {
        return Err(format!("{} requests sent, want {sent}", attempts.get()));
    }
    check_requests(provider, case, &server.requests())?;
    let refreshed = refreshes.load(Ordering::SeqCst);
    if refreshed != case.refreshes {
        return Err(format!("{refreshed} refreshes, want {}", case.refreshes));
    }
    let recorded = server.requests();
    if let [first, second, ..] = recorded.as_slice() {
        let gap = second.received_at - first.received_at;
        if gap < case.gap {
            return Err(format!(
                "retried after {gap:?}, asked to wait {:?}",
                case.gap
            ));
        }
    }
    Ok(())
}

/// The URL of a port on loopback where nothing listens, and the socket
/// that holds it: bound but not listening, so a connection is refused and
/// the port is not handed to anyone else while the socket lives.
fn closed_port(provider: Provider) -> (String, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let url = match provider {
        Provider::OpenAi | Provider::Responses => format!("http://{addr}/v1"),
        Provider::Anthropic | Provider::Gemini => format!("http://{addr}"),
    };
    (url, socket)
}

/// The key a request carried, where `provider` sends it.
fn key_of(provider: Provider, r: &RecordedRequest) -> Option<&str> {
    match provider {
        Provider::OpenAi | Provider::Responses => r
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer ")),
        Provider::Anthropic => r.header("x-api-key"),
        Provider::Gemini => r.header("x-goog-api-key"),
    }
}

/// What each request carried: the primary's requests the initial key until
/// a refresh and the refreshed one after, the same body every attempt; the
/// backup's its own key.
fn check_requests(
    provider: Provider,
    case: &Case,
    recorded: &[RecordedRequest],
) -> Result<(), String> {
    let mut primary_body = None;
    for (n, r) in recorded.iter().enumerate() {
        if provider.called_at(&r.path) {
            let want = if n > 0 && case.refreshes > 0 {
                REFRESHED_KEY
            } else {
                INITIAL_KEY
            };
            if key_of(provider, r) != Some(want) {
                return Err(format!("request {n} carried the wrong key, want {want}"));
            }
            let body = r.json();
            if ["messages", "contents", "input"]
                .iter()
                .any(|k| body[k].is_array())
            {
                // The same call each attempt.
                if primary_body.get_or_insert_with(|| body.clone()) != &body {
                    return Err(format!("request {n}'s body differs from the first"));
                }
            } else {
                return Err(format!("request {n} has no conversation: {body}"));
            }
        } else if key_of(provider.other(), r) != Some(BACKUP_KEY) {
            return Err(format!("backup request {n} carried the wrong key"));
        }
    }
    Ok(())
}

/// One OpenTelemetry pipeline for this binary's tests: what the trace
/// layer exports — spans with content opted in, and metrics — kept in
/// memory, to be searched for secrets.
struct Exported {
    spans: InMemorySpanExporter,
    tracers: SdkTracerProvider,
    metrics: InMemoryMetricExporter,
    meters: SdkMeterProvider,
}

fn exported() -> &'static Exported {
    static EXPORTED: std::sync::OnceLock<Exported> = std::sync::OnceLock::new();
    EXPORTED.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        Exported {
            tracers: SdkTracerProvider::builder()
                .with_simple_exporter(spans.clone())
                .build(),
            meters: SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(metrics.clone()).build())
                .build(),
            spans,
            metrics,
        }
    })
}

/// Runs the whole matrix for one provider and mode, then checks that no
/// secret reached tracing output, the exported spans and metrics, or any
/// `Debug` / `Display` on the way.
async fn matrix(provider: Provider, stream: bool) {
    use opentelemetry::trace::TracerProvider as _;
    let (captured, _capturing) =
        Captured::everywhere_exporting(exported().tracers.tracer("faults"));
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        if let Err(why) = run(provider, stream, case, &mut seen).await {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{provider:?}, stream {stream}:\n{}",
        failures.join("\n")
    );

    let logged = captured.events();
    assert!(
        logged.iter().any(|e| e.contains("retrying llm call")),
        "the capture works"
    );
    assert!(logged.iter().any(|e| e.contains("credential refreshed")));
    for text in logged.iter().chain(&seen) {
        assert!(!text.contains(SECRET), "a secret leaked: {text}");
    }
    let spans = exported().spans.get_finished_spans().unwrap();
    assert!(
        spans.iter().any(|s| s.name.starts_with("chat")),
        "the spans are exported"
    );
    exported().meters.force_flush().unwrap();
    let metrics = exported().metrics.get_finished_metrics().unwrap();
    assert!(!metrics.is_empty(), "the metrics are exported");
    for exported in [format!("{spans:?}"), format!("{metrics:?}")] {
        assert!(!exported.contains(SECRET), "a secret was exported");
    }
}

/// One test per provider and mode, each running the whole matrix.
macro_rules! matrices {
    ($($name:ident: $provider:ident, $stream:expr;)*) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            matrix(Provider::$provider, $stream).await;
        }
    )*};
}

matrices! {
    openai_streaming: OpenAi, true;
    openai_not_streaming: OpenAi, false;
    responses_streaming: Responses, true;
    responses_not_streaming: Responses, false;
    anthropic_streaming: Anthropic, true;
    anthropic_not_streaming: Anthropic, false;
    gemini_streaming: Gemini, true;
    gemini_not_streaming: Gemini, false;
}

/// Metadata without end before the first output: the guard holds back at
/// most its limit, then fails the call with a typed error, once. (Gemini's
/// decoder makes no event of a chunk that carries only usage, nor the
/// Responses decoder of `response.in_progress`, so nothing piles up there;
/// the idle timeout ends such a stream.)
#[tokio::test(start_paused = true)]
async fn a_prelude_without_end_is_cut_off_at_the_limit() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let server = MockServer::start().await;
        let usage = match provider {
            Provider::Gemini | Provider::Responses => unreachable!("not run for {provider:?}"),
            Provider::OpenAi => {
                "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"
            }
            Provider::Anthropic => {
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":1}}\n\n"
            }
        };
        let mut events = Vec::new();
        if provider == Provider::Anthropic {
            events.push(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"m\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n".to_owned(),
            );
        }
        events.extend(std::iter::repeat_n(usage.to_owned(), 100_000));
        server.set_default(Reply::sse(events));
        let mut seen = Vec::new();
        let primary = provider.service(&provider.base_url(&server), None, &mut seen);
        let backup = provider
            .other()
            .service(&provider.other().base_url(&server), None, &mut seen);
        let svc = production(provider, primary, backup, Arc::default(), &mut seen);
        let err = svc
            .oneshot(ChatRequest::new("").message(Message::user("hi")))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Decode {
                    source: DecodeError::PreludeTooLarge { limit },
                    ..
                } if *limit == 1 << 20
            ),
            "{provider:?}: {err:?}"
        );
        assert!(!err.is_retryable());
        assert_eq!(server.request_count(), 1, "{provider:?}: not retried");
    }
}

/// A stream dropped while the server is still sending, through the whole
/// stack: its connection closes and no task of the call is left behind,
/// with the service itself still alive.
#[tokio::test(start_paused = true)]
async fn dropping_a_stream_mid_flight_frees_its_connection_and_task() {
    use futures_util::StreamExt;
    for provider in [
        Provider::OpenAi,
        Provider::Responses,
        Provider::Anthropic,
        Provider::Gemini,
    ] {
        let server = MockServer::start().await;
        let words: Vec<String> = (0..1000).map(|i| format!("w{i} ")).collect();
        server.set_default(Reply::text(words).delay(Duration::from_millis(10)));
        let mut seen = Vec::new();
        let primary = provider.service(&provider.base_url(&server), None, &mut seen);
        let backup = provider
            .other()
            .service(&provider.other().base_url(&server), None, &mut seen);
        let svc = production(provider, primary, backup, Arc::default(), &mut seen);
        let tasks = tokio::runtime::Handle::current().metrics();
        let baseline = tasks.num_alive_tasks();

        let mut stream = svc
            .clone()
            .oneshot(ChatRequest::new("").message(Message::user("hi")))
            .await
            .unwrap();
        let mut deltas = 0;
        while deltas < 3 {
            if let StreamEvent::TextDelta { .. } = stream.next().await.unwrap().unwrap() {
                deltas += 1;
            }
        }
        assert_eq!(server.live_connections(), 1);
        assert_eq!(server.open_responses(), 1);
        assert!(
            tasks.num_alive_tasks() > baseline,
            "the connection's tasks run"
        );
        drop(stream);
        for _ in 0..100 {
            if server.live_connections() == 0 && tasks.num_alive_tasks() == baseline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            server.live_connections(),
            0,
            "{provider:?}: connection closed"
        );
        assert_eq!(server.open_responses(), 0);
        assert_eq!(
            tasks.num_alive_tasks(),
            baseline,
            "{provider:?}: no task left"
        );
        assert_eq!(server.request_count(), 1);
        // The next round's count starts once this server's task is gone.
        drop((svc, server));
        tokio::task::yield_now().await;
    }
}
