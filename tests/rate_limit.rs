//! RateLimitLayer against the mock server, on a paused clock: calls are paced
//! by a budget and by the providers' headers, back off together after a
//! 429, respect their deadline, and hold nothing while they wait.

mod support;

use std::sync::Arc;
use std::time::Duration;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, Deadline, Error, Message, RateLimitLayer, RetryPolicy,
    StreamConcurrencyLimitLayer, StreamTimeoutLayer, TransportRetryLayer,
};
use support::{Svc, anthropic_at, boxed, gemini_at, openai_at};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

fn hello() -> ChatRequest {
    ChatRequest::new("")
        .message(Message::user("hello"))
        .stream(true)
}

/// Calls `svc` and reads the whole answer.
fn complete(svc: &Svc, req: ChatRequest) -> impl Future<Output = Result<String, Error>> + Send {
    let call = svc.clone().oneshot(req);
    async move { Ok(call.await?.completion().await?.text) }
}

/// When each request reached the server, from `t0`, in seconds.
fn arrivals(server: &MockServer, t0: Instant) -> Vec<f64> {
    server
        .requests()
        .iter()
        .map(|r| (r.received_at - t0).as_secs_f64())
        .collect()
}

/// The most requests in any 60 s window.
fn busiest_minute(times: &[f64]) -> usize {
    times
        .iter()
        .map(|&start| {
            times
                .iter()
                .filter(|&&t| t >= start && t < start + 60.0)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_budget_of_10_a_minute_paces_30_concurrent_calls_without_a_429() {
    for provider in ["openai", "anthropic"] {
        let server = MockServer::start().await;
        // The server refuses an 11th request in any minute.
        server.limit_requests(10);
        let inner: Svc = match provider {
            "openai" => BoxCloneService::new(openai_at(&server)),
            _ => BoxCloneService::new(anthropic_at(&server)),
        };
        let svc = boxed(RateLimitLayer::new().requests_per_minute(10), inner);
        let t0 = Instant::now();
        let done = futures_util::future::join_all((0..30).map(|_| complete(&svc, hello()))).await;
        let elapsed = t0.elapsed().as_secs_f64();

        assert!(done.iter().all(|r| r.is_ok()), "{provider}: {done:?}");
        assert_eq!(server.rate_limited_count(), 0, "{provider}");
        let times = arrivals(&server, t0);
        assert_eq!(times.len(), 30, "{provider}");
        assert_eq!(busiest_minute(&times), 10, "{provider}: {times:?}");
        // Three minutes' worth, no more: 10 now, 10 at 60 s, 10 at 120 s.
        assert!((120.0..121.0).contains(&elapsed), "{provider}: {elapsed}");
    }
}

/// Without the layer, the same burst meets the server's limit: the test
/// above would catch a layer that let calls through.
#[tokio::test(start_paused = true)]
async fn without_the_layer_the_burst_is_refused() {
    let server = MockServer::start().await;
    server.limit_requests(10);
    let svc: Svc = BoxCloneService::new(openai_at(&server));
    let done = futures_util::future::join_all((0..30).map(|_| complete(&svc, hello()))).await;
    assert_eq!(done.iter().filter(|r| r.is_ok()).count(), 10);
    assert_eq!(server.rate_limited_count(), 20);
    assert!(matches!(done[29], Err(Error::RateLimited { .. })));
}

#[tokio::test(start_paused = true)]
async fn zero_remaining_with_a_reset_in_2s_makes_the_next_call_wait_2s() {
    // Anthropic gives its reset as a time of day. The answer's `Date` is
    // years off this machine's clock, so the client reads the reset against
    // the server's clock, as it would a server whose clock is right when
    // ours is not: the wait is exactly 2 s however long the test takes.
    let date = "Wed, 01 Jan 2025 00:00:00 GMT";
    let in_2s = "2025-01-01T00:00:02Z".to_owned();
    for (provider, remaining, reset) in [
        (
            "openai",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        (
            "anthropic",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ),
    ] {
        let server = MockServer::start().await;
        let reset_value = if provider == "openai" { "2s" } else { &in_2s };
        server.push(
            Reply::text(["first"])
                .header(remaining, "0")
                .header(reset, reset_value)
                .header("date", date),
        );
        let inner: Svc = match provider {
            "openai" => BoxCloneService::new(openai_at(&server)),
            _ => BoxCloneService::new(anthropic_at(&server)),
        };
        let svc = boxed(RateLimitLayer::new(), inner);

        let stream = svc.clone().oneshot(hello()).await.unwrap();
        let info = stream.meta().rate_limit.expect("rate-limit headers");
        assert_eq!(info.requests.unwrap().remaining, Some(0));
        assert_eq!(stream.completion().await.unwrap().text, "first");
        let t0 = Instant::now();
        complete(&svc, hello()).await.unwrap();
        let times = arrivals(&server, t0);
        assert_eq!(times[1], 2.0, "{provider}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_servers_headers_alone_keep_calls_within_its_limit() {
    let server = MockServer::start().await;
    server.limit_requests(5);
    // No budget: only what the server reports. One call first, to learn.
    let svc = boxed(RateLimitLayer::new(), openai_at(&server));
    complete(&svc, hello()).await.unwrap();
    let t0 = Instant::now();
    let done = futures_util::future::join_all((0..12).map(|_| complete(&svc, hello()))).await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    assert_eq!(server.rate_limited_count(), 0);
    let times = arrivals(&server, t0);
    assert!(busiest_minute(&times) <= 5, "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_caller_together() {
    let server = MockServer::start().await;
    server.push(Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "5"));
    let svc = boxed(RateLimitLayer::new(), openai_at(&server));
    let t0 = Instant::now();
    let err = complete(&svc, hello()).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }));
    assert!(!err.api_error().unwrap().is_local());
    // Ten callers after the 429: none reaches the server before 5 s.
    let done = futures_util::future::join_all((0..10).map(|_| complete(&svc, hello()))).await;
    assert!(done.iter().all(Result::is_ok));
    let times = arrivals(&server, t0);
    assert_eq!(times.len(), 11);
    assert!(
        times[1..].iter().all(|&t| (5.0..5.1).contains(&t)),
        "{times:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn under_a_retry_layer_the_429_is_retried_once_and_the_others_wait_with_it() {
    let server = MockServer::start().await;
    server.push(Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "7"));
    let svc: Svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(TransportRetryLayer::new(RetryPolicy::default()))
            .layer(RateLimitLayer::new())
            .service(openai_at(&server)),
    );
    let t0 = Instant::now();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { complete(&svc, hello()).await }
    });
    // The others start once the 429 is in.
    while server.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let others = futures_util::future::join_all((0..5).map(|_| complete(&svc, hello()))).await;
    assert!(first.await.unwrap().is_ok());
    assert!(others.iter().all(Result::is_ok));
    let times = arrivals(&server, t0);
    assert_eq!(times.len(), 7, "one 429, then six answers: {times:?}");
    assert!(times[1..].iter().all(|&t| t >= 7.0), "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn a_call_that_cannot_start_before_its_deadline_fails_at_once() {
    let server = MockServer::start().await;
    let svc = boxed(
        RateLimitLayer::new().requests_per_minute(1),
        openai_at(&server),
    );
    complete(&svc, hello()).await.unwrap();

    let t0 = Instant::now();
    let mut req = hello();
    req.extensions
        .insert(Deadline::after(Duration::from_secs(10)));
    let err = complete(&svc, req).await.unwrap_err();
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let Error::RateLimited { retry_after, error } = &err else {
        panic!("{err:?}");
    };
    assert!(error.is_local());
    assert_eq!(error.provider(), "openai");
    assert_eq!(error.status(), None);
    assert_eq!(error.error_type(), Some("rate_limit_deadline"));
    let wait = retry_after.unwrap();
    assert!((59.0..=60.0).contains(&wait.as_secs_f64()), "{wait:?}");
    assert_eq!(error.retry_after(), Some(wait));
    // Says why, and how far the slot was, in the caller's log.
    let message = error.message().unwrap_or_default();
    assert!(
        message.contains("before the call's deadline") && message.contains(&format!("{wait:.1?}")),
        "{message}"
    );
    assert!(
        err.to_string().contains("client's rate limit for openai"),
        "{err}"
    );
    assert_eq!(server.request_count(), 1);

    // The same through a total timeout above it, which sets the deadline.
    let svc: Svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(StreamTimeoutLayer::new().total(Duration::from_secs(30)))
            .layer(RateLimitLayer::new().requests_per_minute(1))
            .service(openai_at(&server)),
    );
    complete(&svc, hello()).await.unwrap();
    let t0 = Instant::now();
    let err = complete(&svc, hello()).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // A call that fits is not refused, deadline or not.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(complete(&svc, hello()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_holds_no_slot_of_a_limit_below_it() {
    let server = MockServer::start().await;
    let slots = Arc::new(Semaphore::new(1));
    let svc: Svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RateLimitLayer::new().requests_per_minute(1))
            .layer(StreamConcurrencyLimitLayer::shared(slots.clone()))
            .service(openai_at(&server)),
    );
    complete(&svc, hello()).await.unwrap();
    let waiting = tokio::spawn({
        let svc = svc.clone();
        async move { complete(&svc, hello()).await }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(server.request_count(), 1);
    assert_eq!(
        slots.available_permits(),
        1,
        "the waiting call holds the slot"
    );
    assert!(waiting.await.unwrap().is_ok());
    assert_eq!(slots.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_call_gives_its_slot_back() {
    let server = MockServer::start().await;
    let svc = boxed(
        RateLimitLayer::new().requests_per_minute(1),
        openai_at(&server),
    );
    complete(&svc, hello()).await.unwrap();
    // Waits for 60 s; given up after 10.
    let given_up = tokio::time::timeout(Duration::from_secs(10), complete(&svc, hello())).await;
    assert!(given_up.is_err());
    let t0 = Instant::now();
    complete(&svc, hello()).await.unwrap();
    let waited = t0.elapsed().as_secs_f64();
    assert!((50.0..50.1).contains(&waited), "{waited}");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_usage_reported_corrects_the_estimate() {
    let server = MockServer::start().await;
    // 1,000 output tokens a minute; each call reserves 600 by its
    // `max_tokens` but writes only a few.
    let svc = boxed(
        RateLimitLayer::new().output_tokens_per_minute(1000),
        openai_at(&server),
    );
    let t0 = Instant::now();
    for _ in 0..5 {
        complete(&svc, hello().max_tokens(600)).await.unwrap();
    }
    assert_eq!(t0.elapsed(), Duration::ZERO);

    // A stream not read to its usage keeps its reservation.
    let open = svc.clone().oneshot(hello().max_tokens(600)).await.unwrap();
    let t1 = Instant::now();
    complete(&svc, hello().max_tokens(600)).await.unwrap();
    assert!(
        t1.elapsed() >= Duration::from_secs(59),
        "{:?}",
        t1.elapsed()
    );
    drop(open);
}

#[tokio::test(start_paused = true)]
async fn models_are_paced_separately() {
    let server = MockServer::start().await;
    let svc = boxed(
        RateLimitLayer::new().requests_per_minute(1),
        openai_at(&server),
    );
    let t0 = Instant::now();
    for model in ["a", "b", "c"] {
        let mut req = hello();
        req.model = model.into();
        complete(&svc, req).await.unwrap();
    }
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let mut req = hello();
    req.model = "a".into();
    complete(&svc, req).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_429_carries_the_servers_rate_limit_state() {
    for provider in ["openai", "anthropic"] {
        let server = MockServer::start().await;
        server.limit_requests(1);
        let svc: Svc = match provider {
            "openai" => BoxCloneService::new(openai_at(&server)),
            _ => BoxCloneService::new(anthropic_at(&server)),
        };
        complete(&svc, hello()).await.unwrap();
        let err = complete(&svc, hello()).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { .. }),
            "{provider}: {err:?}"
        );
        let info = err
            .api_error()
            .and_then(|e| e.rate_limit())
            .copied()
            .unwrap();
        let requests = info.requests.unwrap();
        assert_eq!(
            (requests.limit, requests.remaining),
            (Some(1), Some(0)),
            "{provider}"
        );
        let reset = requests.reset.unwrap();
        if provider == "openai" {
            // A duration: exact.
            assert_eq!(reset, Duration::from_secs(60));
            assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
        } else {
            // A time of day, read against this machine's clock.
            let reset = reset.as_secs_f64();
            assert!((59.0..=60.0).contains(&reset), "{provider}: {reset}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_budget_refuses_every_call_without_sending_it() {
    let server = MockServer::start().await;
    let svc = boxed(
        RateLimitLayer::new().output_tokens_per_minute(0),
        openai_at(&server),
    );
    let err = complete(&svc, hello()).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert!(err.api_error().unwrap().is_local());
    assert!(!err.is_retryable());
    assert_eq!(server.request_count(), 0);
}

// ---- End to end: token budgets, Gemini, pauses, wake-ups, stalls ----

/// An OpenAI stream whose usage says `input` prompt tokens and `output`
/// completion tokens.
fn answer_with_usage(input: u64, output: u64) -> Reply {
    Reply::sse([
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"ok\"}}]}\n\n".to_owned(),
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".to_owned(),
        format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{input},\"completion_tokens\":{output},\"total_tokens\":{}}}}}\n\n",
            input + output
        ),
        "data: [DONE]\n\n".to_owned(),
    ])
}

#[tokio::test(start_paused = true)]
async fn token_budgets_pace_calls_by_what_they_cost() {
    // Each call: a 4,000-byte message (estimated at 1,004 input tokens) and
    // 10 output tokens at most; the server reports 1,000 and 10. A budget of
    // 2,500 takes two calls a minute.
    let big = || {
        ChatRequest::new("")
            .message(Message::user("x".repeat(4000)))
            .max_tokens(10)
            .stream(true)
    };
    for (what, layer) in [
        (
            "input_tokens_per_minute",
            RateLimitLayer::new().input_tokens_per_minute(2500),
        ),
        (
            "tokens_per_minute",
            RateLimitLayer::new().tokens_per_minute(2500),
        ),
    ] {
        let server = MockServer::start().await;
        server.set_default(answer_with_usage(1000, 10));
        let svc = boxed(layer, openai_at(&server));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(complete(&svc, big()).await.unwrap(), "ok", "{what}");
        }
        assert_eq!(
            arrivals(&server, t0),
            [0.0, 0.0, 60.0, 60.0, 120.0],
            "{what}: two calls in any minute"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn gemini_sends_no_headers_the_budget_and_its_429s_pace_it() {
    // The server allows 2 requests a minute and says nothing of it until
    // it refuses; the budget keeps every call within it.
    let server = MockServer::start().await;
    server.limit_requests(2);
    let svc = boxed(
        RateLimitLayer::new().requests_per_minute(2),
        gemini_at(&server),
    );
    let t0 = Instant::now();
    let done = futures_util::future::join_all((0..6).map(|_| complete(&svc, hello()))).await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    assert_eq!(server.rate_limited_count(), 0);
    let times = arrivals(&server, t0);
    assert_eq!(busiest_minute(&times), 2, "{times:?}");

    // Without a budget, its 429 pauses the callers after it.
    let server = MockServer::start().await;
    server.push(Reply::api_error(429, "rate_limit_error", "quota").header("retry-after", "9"));
    let svc = boxed(RateLimitLayer::new(), gemini_at(&server));
    let t0 = Instant::now();
    let err = complete(&svc, hello()).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    let done = futures_util::future::join_all((0..3).map(|_| complete(&svc, hello()))).await;
    assert!(done.iter().all(Result::is_ok));
    let times = arrivals(&server, t0);
    assert!(times[1..].iter().all(|&t| t == 9.0), "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_reschedules_calls_already_waiting() {
    // One request a minute. The first call's 429 arrives at 5 s, asking for
    // 90 s; the second call was already asleep until 60 s. It goes at 95 s.
    let server = MockServer::start().await;
    server.push(
        Reply::api_error(429, "rate_limit_error", "slow down")
            .header("retry-after", "90")
            .delay(Duration::from_secs(5)),
    );
    let svc = boxed(
        RateLimitLayer::new().requests_per_minute(1),
        openai_at(&server),
    );
    let t0 = Instant::now();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { complete(&svc, hello()).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = tokio::spawn({
        let svc = svc.clone();
        async move { complete(&svc, hello()).await }
    });
    assert!(matches!(
        first.await.unwrap(),
        Err(Error::RateLimited { .. })
    ));
    assert!(second.await.unwrap().is_ok());
    assert_eq!(arrivals(&server, t0), [0.0, 95.0]);
}

#[tokio::test(start_paused = true)]
async fn one_models_429_does_not_pause_another() {
    let server = MockServer::start().await;
    server.push(Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "30"));
    let svc = boxed(RateLimitLayer::new(), openai_at(&server));
    let t0 = Instant::now();
    let mut a = hello();
    a.model = "a".into();
    assert!(complete(&svc, a.clone()).await.is_err());
    let mut b = hello();
    b.model = "b".into();
    complete(&svc, b).await.unwrap();
    complete(&svc, a).await.unwrap();
    assert_eq!(arrivals(&server, t0), [0.0, 0.0, 30.0]);
}

/// Counts how often the service below is asked whether it is ready.
#[derive(Clone)]
struct CountsReady<S> {
    inner: S,
    polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: tower::Service<ChatRequest>> tower::Service<ChatRequest> for CountsReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> S::Future {
        self.inner.call(req)
    }
}

#[tokio::test(start_paused = true)]
async fn each_waiting_call_is_woken_once_and_holds_nothing_meanwhile() {
    // Twenty calls against a budget of one a minute: each sleeps until its
    // own slot, then readies the service below. A call woken by every
    // opening (a herd) would ask the service below again and again.
    let server = MockServer::start().await;
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc: Svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RateLimitLayer::new().requests_per_minute(1))
            .service(CountsReady {
                inner: openai_at(&server),
                polls: polls.clone(),
            }),
    );
    let t0 = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { complete(&svc, hello()).await })
        })
        .collect();
    // Half way: ten sent, ten asleep, and nothing open for the sleepers.
    tokio::time::sleep(Duration::from_secs(9 * 60 + 30)).await;
    assert_eq!(server.request_count(), 10);
    assert_eq!(server.open_responses(), 0, "no answer is held open");
    assert!(
        server.live_connections() <= 1,
        "the sleepers opened no connection: {}",
        server.live_connections()
    );
    for c in calls {
        assert!(c.await.unwrap().is_ok());
    }
    let times = arrivals(&server, t0);
    let want: Vec<f64> = (0..20).map(|i| f64::from(i) * 60.0).collect();
    assert_eq!(times, want);
    // Every call readies the service below through the layer's poll_ready;
    // a call that must wait lets that go (it holds nothing while asleep)
    // and readies it once more when its slot comes: 20 + 19.
    assert_eq!(
        polls.load(std::sync::atomic::Ordering::SeqCst),
        20 + 19,
        "each sleeper readied the service below once when woken"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_for_a_slot_is_not_a_stall() {
    // The README's order: the rate limit above the first-output timeout. A
    // call that waits 60 s for its slot is not cut by a 5 s limit on the
    // time to first output, nor retried.
    let server = MockServer::start().await;
    let svc: Svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(TransportRetryLayer::new(RetryPolicy::default()))
            .layer(RateLimitLayer::new().requests_per_minute(1))
            .layer(
                StreamTimeoutLayer::new()
                    .first_event(Duration::from_secs(5))
                    .idle(Duration::from_secs(5)),
            )
            .service(openai_at(&server)),
    );
    let t0 = Instant::now();
    complete(&svc, hello()).await.unwrap();
    complete(&svc, hello()).await.unwrap();
    assert_eq!(arrivals(&server, t0), [0.0, 60.0]);
}
