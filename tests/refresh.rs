//! RefreshLayer against the mock server: refresh on 401, retry once,
//! single-flight across callers, refresh before expiry, and stacking with
//! TransportRetryLayer.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_tower::Credential;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::refresh::CredentialSource;
use llm_tower::transport::{RequestBody, ReqwestTransport};
use llm_tower::{
    Anthropic, ChatRequest, Error, Message, OpenAi, RefreshLayer, RetryPolicy, TransportRetryLayer,
};
use support::{Captured, Svc, drain, texts};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

/// A source handing out `keys` in turn (the last one forever), counting calls.
fn source(keys: &[&'static str]) -> (impl CredentialSource + use<>, Arc<AtomicUsize>) {
    // Long enough for every concurrent caller to pile up on it.
    source_taking(keys, Duration::from_millis(100))
}

fn source_taking(
    keys: &[&'static str],
    delay: Duration,
) -> (impl CredentialSource + use<>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let keys = keys.to_vec();
    let source = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let key = keys[n.min(keys.len() - 1)];
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::io::Error>(Credential::bearer(key))
        }
    };
    (source, calls)
}

fn failing_source() -> (impl CredentialSource + use<>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let source = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<Credential, _>(std::io::Error::other("identity provider unreachable")) }
    };
    (source, calls)
}

/// Each request's key and the layer's generation, taken as it is sent.
type Sent = Arc<Mutex<Vec<(String, u64)>>>;

/// An OpenAI service whose transport records, as each request is sent, the
/// key it carries and how many refreshes `layer` had completed. (Tests run
/// on one thread: nothing runs between reading the credential and this.)
fn recording_openai(server: &MockServer, layer: &RefreshLayer) -> (Svc, Sent) {
    let sent = Sent::default();
    let (log, generation) = (sent.clone(), layer.clone());
    let transport = ServiceBuilder::new()
        .map_request(move |req: http::Request<RequestBody>| {
            let key = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            log.lock().unwrap().push((key, generation.generation()));
            req
        })
        .service(ReqwestTransport::new().unwrap());
    let provider = OpenAi::builder()
        .base_url(server.openai_url())
        .model("m")
        .build_with(transport)
        .unwrap();
    (BoxCloneService::new(provider), sent)
}

fn openai(server: &MockServer, layer: RefreshLayer) -> Svc {
    let p = OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("configured-key")
        .model("m")
        .build()
        .unwrap();
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(p))
}

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

fn keys_sent(server: &MockServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn success_passes_through_without_refresh() {
    let server = MockServer::start().await;
    server.accept_keys(["k1"]);
    let (src, calls) = source(&["k2"]);
    let svc = openai(
        &server,
        RefreshLayer::new(src).initial(Credential::bearer("k1")),
    );
    let c = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "Hello from the mock server.");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        keys_sent(&server),
        ["Bearer k1"],
        "the managed key replaces the configured one"
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_call_fetches_a_credential() {
    let server = MockServer::start().await;
    server.accept_keys(["k1"]);
    let (src, calls) = source(&["k1"]);
    let svc = openai(&server, RefreshLayer::new(src));
    let (a, b) = tokio::join!(svc.clone().oneshot(hello()), svc.clone().oneshot(hello()));
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one fetch for both callers"
    );
    assert_eq!(keys_sent(&server), ["Bearer k1", "Bearer k1"]);
}

#[tokio::test(start_paused = true)]
async fn unauthorized_then_success_refreshes_once() {
    let server = MockServer::start().await;
    server.accept_keys(["k2"]);
    let (src, calls) = source(&["k2"]);
    let layer = RefreshLayer::new(src).initial(Credential::bearer("k1"));
    let svc = openai(&server, layer.clone());
    let stream = svc.oneshot(hello()).await.unwrap();
    assert_eq!(stream.meta().attempts, 2);
    assert_eq!(
        stream.completion().await.unwrap().text,
        "Hello from the mock server."
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.generation(), 1);
    assert_eq!(keys_sent(&server), ["Bearer k1", "Bearer k2"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_refresh_returns_the_original_401_and_logs() {
    let (captured, _capturing) = Captured::everywhere();
    let server = MockServer::start().await;
    server.accept_keys(["k2"]);
    let (src, calls) = failing_source();
    let svc = openai(
        &server,
        RefreshLayer::new(src).initial(Credential::bearer("secret-k1")),
    );
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        err.api_error().unwrap().message(),
        Some("invalid api key: Incorrect API key provided: [redacted]"),
        "the original 401, the key it echoed masked"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.request_count(), 1);
    let events = captured.events();
    // Other tests' threads log too (see `Captured::everywhere`): look for
    // this source's reason, which only this test's source gives.
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("WARN") && e.contains("identity provider unreachable")),
        "the refresh failure is logged at WARN: {events:#?}"
    );
    assert!(
        events.iter().all(|e| !e.contains("secret-k1")),
        "{events:#?}"
    );
}

/// With no credential yet, a failed fetch fails the calls waiting on it
/// with the source's reason: the one that fetched and the one that waited.
#[tokio::test(start_paused = true)]
async fn a_failed_first_fetch_fails_every_waiting_call_with_its_reason() {
    let server = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = openai(
        &server,
        RefreshLayer::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err::<Credential, _>(std::io::Error::other("identity provider unreachable"))
            }
        }),
    );
    let (first, second) = tokio::join!(svc.clone().oneshot(hello()), svc.clone().oneshot(hello()));
    for result in [first, second] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Refresh { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "credential refresh failed: identity provider unreachable"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch for both");
    assert_eq!(
        server.request_count(),
        0,
        "nothing sent without a credential"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_refusal_is_returned_unchanged() {
    let server = MockServer::start().await;
    server.accept_keys(["nobody"]);
    let (src, calls) = source(&["k2"]);
    let svc = openai(
        &server,
        RefreshLayer::new(src).initial(Credential::bearer("k1")),
    );
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        keys_sent(&server),
        ["Bearer k1", "Bearer k2"],
        "exactly 2 requests"
    );
}

#[tokio::test(start_paused = true)]
async fn streaming_401_before_and_after_output() {
    let server = MockServer::start().await;
    let (src, calls) = source(&["k2"]);
    let svc = openai(
        &server,
        RefreshLayer::new(src).initial(Credential::bearer("k1")),
    );
    let auth_event = |after| {
        Reply::text(["a", "b", "c"]).error_event_after(after, "invalid_api_key", "token expired")
    };

    // Before output: one clean retried stream.
    server.push_all([auth_event(0), Reply::text(["a", "b", "c"])]);
    let (events, err) = drain(svc.clone().oneshot(hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts(&events), ["a", "b", "c"]);
    assert_eq!(
        events.iter().filter(|e| !e.is_output()).count(),
        3,
        "one MessageStart, one Usage, one Done"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // After output: no retry; the output, then the error.
    let before = server.request_count();
    server.push(auth_event(2));
    let (events, err) = drain(svc.clone().oneshot(hello()).await.unwrap()).await;
    assert_eq!(texts(&events), ["a", "b"]);
    assert!(matches!(err, Some(Error::Unauthorized { .. })), "{err:?}");
    assert_eq!(server.request_count() - before, 1);

    // Twice before output: exactly 2 requests and the second error.
    let before = server.request_count();
    server.push_all([
        auth_event(0),
        Reply::text(["x"]).error_event_after(0, "invalid_api_key", "second refusal"),
    ]);
    let err = svc.clone().oneshot(hello()).await.unwrap_err();
    assert_eq!(err.api_error().unwrap().message(), Some("second refusal"));
    assert_eq!(server.request_count() - before, 2);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_callers_on_a_stale_key_share_one_refresh() {
    let server = MockServer::start().await;
    server.accept_keys(["k2"]);
    let (src, calls) = source(&["k2"]);
    let layer = RefreshLayer::new(src).initial(Credential::bearer("k1"));

    let (provider, sent) = recording_openai(&server, &layer);
    let svc = ServiceBuilder::new().layer(layer.clone()).service(provider);

    let calls_done = futures_util::future::join_all((0..1000).map(|i| {
        let svc = svc.clone();
        async move {
            let req = hello().extra("user", format!("call-{i}"));
            svc.oneshot(req).await?.completion().await
        }
    }))
    .await;
    assert!(calls_done.iter().all(Result::is_ok), "every call succeeds");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one refresh");

    let mut per_call: HashMap<String, usize> = HashMap::new();
    for r in server.requests() {
        *per_call
            .entry(r.json()["user"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_call.len(), 1000);
    assert!(
        per_call.values().all(|&n| n <= 2),
        "no call sends more than 2 requests"
    );
    let sent = sent.lock().unwrap();
    assert!(
        sent.iter()
            .filter(|(_, g)| *g >= 1)
            .all(|(key, _)| key == "Bearer k2"),
        "a request sent after the refresh carried the stale key"
    );
    // The calls that went out before the refresh carried k1, were refused,
    // and went again with k2: one extra request each, no more.
    let stale = sent.iter().filter(|(k, _)| k == "Bearer k1").count();
    assert!(stale >= 1, "the first call went out with the stale key");
    assert_eq!(server.request_count(), 1000 + stale);
    assert_eq!(per_call.values().filter(|&&n| n == 2).count(), stale);
}

/// Calls queued in a buffer were stamped long before they are sent: the
/// credential is read at send time, so once the refresh is done no queued
/// call goes out with the stale key.
#[tokio::test(start_paused = true)]
async fn queued_calls_send_the_credential_current_when_they_leave() {
    let server = MockServer::start().await;
    server.accept_keys(["k2"]);
    let (src, calls) = source_taking(&["k2"], Duration::ZERO);
    let layer = RefreshLayer::new(src).initial(Credential::bearer("k1"));
    let (provider, sent) = recording_openai(&server, &layer);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .map_err(Error::from)
        .buffer(1024)
        .concurrency_limit(20)
        .service(provider);
    let results =
        futures_util::future::join_all((0..200).map(|_| svc.clone().oneshot(hello()))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let sent = sent.lock().unwrap();
    let stale = sent.iter().filter(|(k, _)| k == "Bearer k1").count();
    assert!(
        sent.iter()
            .filter(|(_, g)| *g >= 1)
            .all(|(k, _)| k == "Bearer k2")
    );
    assert!(
        stale <= 20,
        "only the first wave (the limit is 20), {stale} stale"
    );
    assert_eq!(
        sent.len(),
        200 + stale,
        "every stale request was retried once, nothing else"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expiring_credential_is_refreshed_before_sending() {
    let server = MockServer::start().await;
    server.accept_keys(["k2"]);
    let (src, calls) = source(&["k2"]);
    let layer = RefreshLayer::new(src)
        .initial(Credential::bearer("k1").expires_in(Duration::from_secs(1)))
        .margin(Duration::from_secs(5));
    let svc = openai(&server, layer);
    svc.clone().oneshot(hello()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(keys_sent(&server), ["Bearer k2"], "no 401 seen");

    // A credential valid for now is used until it comes within the margin.
    let server = MockServer::start().await;
    server.accept_keys(["k1", "k2"]);
    let (src, calls) = source(&["k2"]);
    let layer = RefreshLayer::new(src)
        .initial(Credential::bearer("k1").expires_in(Duration::from_secs(10)))
        .margin(Duration::from_secs(5));
    let svc = openai(&server, layer);
    svc.clone().oneshot(hello()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    svc.clone().oneshot(hello()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(keys_sent(&server), ["Bearer k1", "Bearer k2"]);
}

#[tokio::test(start_paused = true)]
async fn forbidden_is_opt_in() {
    let server = MockServer::start().await;
    let (src, calls) = source(&["k2"]);
    let svc = openai(
        &server,
        RefreshLayer::new(src).initial(Credential::bearer("k1")),
    );
    server.push(Reply::api_error(403, "permission_error", "no"));
    assert!(matches!(
        svc.oneshot(hello()).await,
        Err(Error::Forbidden { .. })
    ));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "403 does not refresh by default"
    );

    let (src, calls) = source(&["k2"]);
    let layer = RefreshLayer::new(src)
        .initial(Credential::bearer("k1"))
        .refresh_on(|e| matches!(e, Error::Unauthorized { .. } | Error::Forbidden { .. }));
    server.push(Reply::api_error(403, "permission_error", "no"));
    assert!(openai(&server, layer).oneshot(hello()).await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_and_retry_stack_in_either_order() {
    for refresh_outside in [true, false] {
        let server = MockServer::start().await;
        server.push_all([
            Reply::reset(),
            Reply::api_error(401, "invalid_api_key", "expired"),
            Reply::text(["ok"]),
        ]);
        let (src, calls) = source(&["k2"]);
        let refresh = RefreshLayer::new(src).initial(Credential::bearer("k1"));
        let retry = TransportRetryLayer::new(RetryPolicy::default());
        let provider = OpenAi::builder()
            .base_url(server.openai_url())
            .model("m")
            .build()
            .unwrap();
        let svc: Svc = if refresh_outside {
            BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(refresh)
                    .layer(retry)
                    .service(provider),
            )
        } else {
            BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(retry)
                    .layer(refresh)
                    .service(provider),
            )
        };
        let stream = svc.oneshot(hello()).await.unwrap();
        assert_eq!(
            stream.meta().attempts,
            3,
            "refresh outside: {refresh_outside}"
        );
        assert_eq!(stream.completion().await.unwrap().text, "ok");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(keys_sent(&server), ["Bearer k1", "Bearer k1", "Bearer k2"]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_credential_on_one_request_overrides_the_configured_key() {
    let server = MockServer::start().await;
    let anthropic = Anthropic::builder()
        .base_url(server.anthropic_url())
        .api_key("configured")
        .model("m")
        .build()
        .unwrap();
    let mut req = hello();
    req.extensions.insert(Credential::api_key("tenant-7-key"));
    anthropic.clone().oneshot(req).await.unwrap();
    anthropic.oneshot(hello()).await.unwrap();
    let r = server.requests();
    assert_eq!(r[0].header("x-api-key"), Some("tenant-7-key"));
    assert_eq!(r[1].header("x-api-key"), Some("configured"));
}

#[tokio::test(start_paused = true)]
async fn credentials_stay_out_of_debug_and_logs() {
    let (captured, _capturing) = Captured::everywhere();
    let server = MockServer::start().await;
    server.accept_keys(["token-B-secret"]);
    let (src, _) = source_taking(&["token-B-secret"], Duration::ZERO);
    let layer = RefreshLayer::new(src).initial(Credential::bearer("token-A-secret"));
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(
            OpenAi::builder()
                .base_url(server.openai_url())
                .api_key("sk-configured-secret")
                .model("m")
                .build()
                .unwrap(),
        );
    let stream = svc.clone().oneshot(hello()).await.unwrap();
    let mut req = hello();
    req.extensions.insert(Credential::api_key("tenant-secret"));
    let text = format!(
        "{layer:?} {svc:?} {stream:?} {req:?} {:?} {:?}",
        Credential::bearer("token-A-secret"),
        stream.meta()
    );
    // Debug still says what is safe to say: the policy's margin and the
    // credential's generation.
    let debug = format!("{layer:?}");
    assert!(
        debug.contains("margin") && debug.contains("generation"),
        "{debug}"
    );
    let logs = captured.events().join("\n");
    for secret in [
        "token-A-secret",
        "token-B-secret",
        "sk-configured-secret",
        "tenant-secret",
    ] {
        assert!(!text.contains(secret), "{secret} in Debug output: {text}");
        assert!(!logs.contains(secret), "{secret} in tracing output: {logs}");
    }
}

/// The secrets checks above read what every thread logged, not only the
/// test's own: a worker thread's events reach the capture.
#[test]
fn the_capture_sees_other_threads() {
    let (captured, _capturing) = Captured::everywhere();
    std::thread::spawn(|| tracing::warn!(key = "sk-from-a-worker", "from another thread"))
        .join()
        .unwrap();
    assert!(
        captured
            .events()
            .iter()
            .any(|e| e.contains("from another thread") && e.contains("sk-from-a-worker")),
        "{:#?}",
        captured.events()
    );
}

/// A failure is reported once per call, with every request it sent: the
/// retry layer that gave up says so, and the refresh layer around it, giving
/// up on the same failure, does not say it again.
#[tokio::test(start_paused = true)]
async fn a_failure_after_retries_inside_a_refresh_is_reported_once_with_all_its_requests() {
    let (captured, _capturing) = Captured::start();
    let server = MockServer::start().await;
    // A refused key, refreshed; then a server that stays down through the
    // retry layer's three attempts.
    server.push(Reply::api_error(401, "invalid_api_key", "no"));
    server.push_all((0..3).map(|_| Reply::api_error(500, "server_error", "down")));
    let (source, fetches) = source(&["first", "second"]);
    let p = OpenAi::builder()
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RefreshLayer::new(source))
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(p);
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert_eq!(server.request_count(), 4);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    let warnings: Vec<String> = captured
        .events()
        .into_iter()
        .filter(|e| e.starts_with("WARN") && e.contains("failed after"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("failed after 4 attempts"),
        "{warnings:#?}"
    );
}
