//! Our layers and tower's in one ServiceBuilder, each doing what it says.

mod support;

use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, ChatStream, Credential, Error, FallbackLayer, GenAiTraceLayer, Message,
    RateLimitLayer, RefreshLayer, RetryPolicy, StreamConcurrencyLimitLayer, StreamTimeoutLayer,
    TimeoutPhase, TransportRetryLayer,
};
use support::{Captured, anthropic_at, openai_at};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

/// The README's production stack, pointed at the mock server.
fn production(server: &MockServer) -> BoxCloneService<ChatRequest, ChatStream, Error> {
    let stack = ServiceBuilder::new()
        .layer(GenAiTraceLayer::new())
        .map_request(|mut req: ChatRequest| {
            req.max_tokens.get_or_insert(1024);
            req
        })
        .layer(StreamTimeoutLayer::new().total(Duration::from_secs(120)))
        .layer(
            FallbackLayer::new(anthropic_at(server))
                .when(|e| matches!(e, Error::Overloaded { .. })),
        )
        .layer(
            RefreshLayer::new(|| async { Ok::<_, std::io::Error>(Credential::bearer("k2")) })
                .initial(Credential::bearer("k1")),
        )
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(
            RateLimitLayer::new()
                .requests_per_minute(500)
                .tokens_per_minute(200_000),
        )
        .layer(
            StreamTimeoutLayer::new()
                .first_event(Duration::from_secs(30))
                .idle(Duration::from_secs(20)),
        )
        .layer(StreamConcurrencyLimitLayer::new(32))
        .service(openai_at(server));
    BoxCloneService::new(stack)
}

#[tokio::test(start_paused = true)]
async fn the_production_stack_survives_a_bad_day() {
    let (captured, _capturing) = Captured::start();
    let server = MockServer::start().await;
    server.push_all([
        Reply::reset(),                                      // transport retry
        Reply::api_error(401, "invalid_api_key", "expired"), // refresh, retry once
        // After the refresh, a new call through the retry layer: 3 attempts.
        Reply::text(["stalls"]).stall_after(0), // idle timeout, transport retry
        Reply::api_error(529, "overloaded_error", "busy"), // transport retry
        Reply::api_error(529, "overloaded_error", "busy"), // retries spent: fallback
        Reply::text(["Hello", " from", " the", " backup"]),
    ]);
    let svc = production(&server);
    let started = Instant::now();
    let stream = svc.clone().oneshot(hello()).await.unwrap();
    assert_eq!(stream.meta().provider, "anthropic");
    assert_eq!(
        stream.completion().await.unwrap().text,
        "Hello from the backup"
    );
    // 30 s for the stalled attempt's first output, then three backoffs of
    // 0.5 s, 0.5 s and 1 s less up to 25 % jitter: nothing else waits.
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(31_500)..=Duration::from_secs(32)).contains(&took),
        "{took:?}"
    );

    let requests = server.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/v1/chat/completions"; 5]
            .iter()
            .copied()
            .chain(["/v1/messages"])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        requests[0].json()["max_tokens"],
        1024,
        "per-model defaults via map_request"
    );
    let keys: Vec<_> = requests[..5]
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "Bearer k1",
            "Bearer k1",
            "Bearer k2",
            "Bearer k2",
            "Bearer k2"
        ]
    );
    let closed: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.starts_with("CLOSED chat"))
        .collect();
    assert_eq!(closed.len(), 1, "one span for the whole call");
    assert!(closed[0].contains("gen_ai.system=\"anthropic\""));
    for event in ["retrying llm call", "credential refreshed", "falling back"] {
        let e = captured
            .events()
            .into_iter()
            .find(|e| e.contains(event))
            .unwrap_or_else(|| panic!("{event}"));
        assert!(e.contains("[in chat]"), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn towers_timeout_above_our_retry_bounds_the_time_to_first_output() {
    let server = MockServer::start().await;
    server.push_all([
        Reply::api_error(500, "api_error", "boom"),
        Reply::text(["late"]).stall_after(0),
    ]);
    let svc = ServiceBuilder::new()
        .map_err(Error::from)
        .timeout(Duration::from_secs(5))
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(openai_at(&server));
    let started = Instant::now();
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::Tower,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(
        server.request_count(),
        2,
        "the retry happened inside the bound"
    );
}

#[tokio::test(start_paused = true)]
async fn towers_rate_limit_inside_our_retry_counts_every_attempt() {
    let server = MockServer::start().await;
    server.push_all([
        Reply::api_error(503, "overloaded_error", "busy"),
        Reply::text(["a"]),
        Reply::text(["b"]),
    ]);
    // tower's RateLimit is not Clone: a buffer makes it shareable.
    let svc = ServiceBuilder::new()
        .layer(TransportRetryLayer::new(RetryPolicy::default().jitter(0.0)))
        .map_err(Error::from)
        .buffer(16)
        .rate_limit(2, Duration::from_secs(10))
        .service(openai_at(&server));
    let (a, b) = tokio::join!(svc.clone().oneshot(hello()), svc.clone().oneshot(hello()));
    assert!(a.is_ok() && b.is_ok());
    let r = server.requests();
    assert_eq!(r.len(), 3);
    // Two attempts spent the window; the retry waited for the next one.
    assert_eq!(r[2].received_at - r[0].received_at, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn errors_keep_their_class_through_towers_boxed_layers() {
    let server = MockServer::start().await;
    server.push(Reply::api_error(429, "rate_limit_exceeded", "slow").header("retry-after", "90"));
    let svc = ServiceBuilder::new()
        .map_err(Error::from)
        .buffer(4)
        .map_err(Error::from)
        .concurrency_limit(2)
        .service(openai_at(&server));
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(90)));
}

/// Every layer passes the size hint on honestly: whatever it says at any
/// point, the events still to come fall within it.
#[tokio::test(start_paused = true)]
async fn the_stacks_size_hint_never_promises_too_few_events() {
    let server = MockServer::start().await;
    server.push(Reply::text(["a", "b", "c", "d"]));
    let mut stream = production(&server).oneshot(hello()).await.unwrap();
    let mut hints = vec![stream.size_hint()];
    while let Some(event) = stream.next().await {
        event.unwrap();
        hints.push(stream.size_hint());
    }
    let total = hints.len() - 1;
    assert!(total >= 5, "{total} events");
    for (seen, (lower, upper)) in hints.into_iter().enumerate() {
        let left = total - seen;
        assert!(
            lower <= left,
            "after {seen}: at least {lower}, but {left} came"
        );
        assert!(
            upper.is_none_or(|u| u >= left),
            "after {seen}: at most {upper:?}, but {left} came"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boxed_stack_is_shared_across_tasks() {
    let server = MockServer::start().await;
    // Only the initial key is good: a call that raced into a refresh would
    // send k2 and be refused.
    server.accept_keys(["k1"]);
    let svc = production(&server);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(hello()).await?.completion().await })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap().text,
            "Hello from the mock server."
        );
    }
    assert_eq!(server.request_count(), 20, "one request per call");
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer k1"))
    );
}

/// Every middleware has one shape: `X::new(inner, settings)` makes what its
/// layer makes, and `get_ref`/`get_mut`/`into_inner` reach the service
/// under it.
#[tokio::test(start_paused = true)]
async fn every_service_is_made_by_new_as_by_its_layer() {
    use llm_tower::fallback::Fallback;
    use llm_tower::limit::StreamConcurrencyLimit;
    use llm_tower::rate_limit::RateLimit;
    use llm_tower::refresh::Refresh;
    use llm_tower::retry::TransportRetry;
    use llm_tower::timeout::StreamTimeout;
    use llm_tower::trace::GenAiTrace;
    let server = MockServer::start().await;
    server.accept_keys(["k1", "backup-key"]);
    server.push(Reply::api_error(529, "overloaded_error", "busy"));
    let bottom = openai_at(&server);
    let limited = StreamConcurrencyLimit::new(bottom, 4);
    let timed = StreamTimeout::new(
        limited,
        StreamTimeoutLayer::new().first_event(Duration::from_secs(5)),
    );
    let paced = RateLimit::new(timed, RateLimitLayer::new().requests_per_minute(100));
    let retried = TransportRetry::new(paced, RetryPolicy::default().max_retries(0));
    let refreshed = Refresh::new(
        retried,
        RefreshLayer::new(|| async { Ok::<_, std::io::Error>(Credential::bearer("k1")) }),
    );
    let backup = llm_tower::OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("backup-key")
        .model("m")
        .build()
        .unwrap();
    let mut fallback = Fallback::new(
        refreshed,
        FallbackLayer::new(backup).when(|e| matches!(e, Error::Overloaded { .. })),
    );
    assert_eq!(
        fallback.secondary().endpoint().to_string(),
        format!("{}/chat/completions", server.openai_url())
    );
    let _: &mut Refresh<_> = fallback.get_mut();
    let traced = GenAiTrace::new(fallback, GenAiTraceLayer::new());
    let inner: &Fallback<_, _> = traced.get_ref();
    let _ = inner
        .get_ref()
        .get_ref()
        .get_ref()
        .get_ref()
        .get_ref()
        .get_ref();
    let answer = traced.oneshot(hello()).await.unwrap();
    // The primary was overloaded (no retries left): the secondary answered,
    // with the credential the refresh fetched before the first attempt.
    assert_eq!(
        answer.completion().await.unwrap().text,
        "Hello from the mock server."
    );
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(
        keys,
        [
            Some("Bearer k1".to_owned()),
            Some("Bearer backup-key".to_owned())
        ],
        "the primary sent the fetched credential; the secondary its own key"
    );
}
