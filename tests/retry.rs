//! The stream guard and TransportRetryLayer against the mock server, with a
//! paused clock for every wait.

mod support;

use std::time::Duration;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, Deadline, Error, Message, RetryPolicy, StreamEvent, TransportRetryLayer,
};
use support::{Captured, Svc, anthropic_at, boxed, drain, openai_at, texts};
use tokio::time::Instant;
use tower::ServiceExt;

fn openai(server: &MockServer, policy: RetryPolicy) -> Svc {
    boxed(TransportRetryLayer::new(policy), openai_at(server))
}

fn anthropic(server: &MockServer, policy: RetryPolicy) -> Svc {
    boxed(TransportRetryLayer::new(policy), anthropic_at(server))
}

fn both(server: &MockServer, policy: RetryPolicy) -> [(&'static str, Svc); 2] {
    [
        ("openai", openai(server, policy.clone())),
        ("anthropic", anthropic(server, policy)),
    ]
}

fn hello(stream: bool) -> ChatRequest {
    ChatRequest::new("")
        .message(Message::user("hello"))
        .stream(stream)
}

async fn call(svc: &Svc, stream: bool) -> (Vec<StreamEvent>, Option<Error>) {
    match svc.clone().oneshot(hello(stream)).await {
        Ok(s) => drain(s).await,
        Err(e) => (Vec::new(), Some(e)),
    }
}

const WORDS: [&str; 4] = ["one", " two", " three", " four"];

#[tokio::test(start_paused = true)]
async fn a_failure_before_output_is_retried_invisibly() {
    let server = MockServer::start().await;
    for (name, svc) in both(&server, RetryPolicy::default()) {
        for stream in [true, false] {
            // The events of one clean call, for comparison.
            server.push(Reply::text(WORDS));
            let (clean, err) = call(&svc, stream).await;
            assert!(err.is_none());
            for fault in [
                Reply::text(WORDS).reset_after(0),
                Reply::reset(),
                Reply::text(WORDS).truncate_after(0),
            ] {
                let before = server.request_count();
                server.push(fault).push(Reply::text(WORDS));
                let (events, err) = call(&svc, stream).await;
                assert!(err.is_none(), "{name} stream={stream}: {err:?}");
                assert_eq!(
                    events, clean,
                    "{name} stream={stream}: exactly one clean stream"
                );
                assert_eq!(server.request_count() - before, 2, "{name} stream={stream}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_output_is_never_retried() {
    let server = MockServer::start().await;
    for (name, svc) in both(&server, RetryPolicy::default().max_retries(5)) {
        let before = server.request_count();
        server
            .push(Reply::text(WORDS).reset_after(3))
            .push(Reply::text(WORDS));
        let stream = svc.clone().oneshot(hello(true)).await.unwrap();
        assert_eq!(stream.meta().attempts, 1);
        let (events, err) = drain(stream).await;
        assert_eq!(
            texts(&events),
            ["one", " two", " three"],
            "{name}: each delta once"
        );
        assert!(
            matches!(err, Some(Error::Transport { .. })),
            "{name}: {err:?}"
        );

        // The success queued for a retry was never asked for.
        assert_eq!(server.pending_replies(), 1);
        let _ = call(&svc, true).await;

        server.push(Reply::text(WORDS).reset_after(3));
        let err = svc
            .clone()
            .oneshot(hello(true))
            .await
            .unwrap()
            .completion()
            .await
            .unwrap_err();
        let Error::Interrupted { partial, .. } = err else {
            panic!("{name}: {err:?}")
        };
        assert_eq!(partial.text, "one two three");
        assert_eq!(
            server.request_count() - before,
            3,
            "{name}: one request per call"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_out_exactly() {
    let server = MockServer::start().await;
    for (name, svc) in both(&server, RetryPolicy::default()) {
        for stream in [true, false] {
            server
                .push(
                    Reply::api_error(429, "rate_limit_error", "slow down")
                        .header("retry-after", "2"),
                )
                .push(Reply::text(WORDS));
            let started = Instant::now();
            let stream_result = svc.clone().oneshot(hello(stream)).await.unwrap();
            assert_eq!(stream_result.meta().attempts, 2);
            assert_eq!(
                stream_result.completion().await.unwrap().text,
                WORDS.concat()
            );
            let requests = server.requests();
            let n = requests.len();
            let waited = requests[n - 1].received_at - requests[n - 2].received_at;
            assert_eq!(waited, Duration::from_secs(2), "{name} stream={stream}");
            assert!(started.elapsed() >= Duration::from_secs(2));
        }
    }
    // retry-after-ms wins, in milliseconds.
    server
        .push(
            Reply::api_error(503, "overloaded_error", "busy")
                .header("retry-after-ms", "1500")
                .header("retry-after", "9"),
        )
        .push(Reply::text(WORDS));
    let _ = call(&openai(&server, RetryPolicy::default()), true).await;
    let r = server.requests();
    assert_eq!(
        r[r.len() - 1].received_at - r[r.len() - 2].received_at,
        Duration::from_millis(1500)
    );
}

#[tokio::test(start_paused = true)]
async fn retries_count_and_give_up() {
    let server = MockServer::start().await;
    let e500 = || Reply::api_error(500, "api_error", "boom");
    for (name, svc) in both(&server, RetryPolicy::default()) {
        for stream in [true, false] {
            let before = server.request_count();
            server.push_all([e500(), e500(), Reply::text(WORDS)]);
            let s = svc.clone().oneshot(hello(stream)).await.unwrap();
            assert_eq!(s.meta().attempts, 3);
            assert_eq!(s.completion().await.unwrap().text, WORDS.concat());
            assert_eq!(server.request_count() - before, 3, "{name} stream={stream}");

            let before = server.request_count();
            server.push_all([e500(), e500(), e500(), Reply::text(WORDS)]);
            let err = svc.clone().oneshot(hello(stream)).await.unwrap_err();
            assert!(
                matches!(err, Error::Server { status, .. } if status == 500),
                "{err:?}"
            );
            assert_eq!(
                server.request_count() - before,
                3,
                "{name} stream={stream}: 3 attempts, no more"
            );
            let _ = call(&svc, stream).await; // use up the queued success

            let before = server.request_count();
            server.push_all([
                Reply::api_error(400, "invalid_request_error", "bad"),
                Reply::text(WORDS),
            ]);
            let err = svc.clone().oneshot(hello(stream)).await.unwrap_err();
            assert!(matches!(err, Error::InvalidRequest { .. }));
            assert_eq!(
                server.request_count() - before,
                1,
                "{name} stream={stream}: a 400 is final"
            );
            let _ = call(&svc, stream).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn what_is_never_retried() {
    let server = MockServer::start().await;
    let svc = openai(&server, RetryPolicy::default().max_retries(4));
    for (status, kind, header) in [
        (401, "invalid_api_key", None),
        (403, "permission_error", None),
        (404, "not_found_error", None),
        (413, "request_too_large", None),
        (422, "invalid_request_error", None),
        (429, "insufficient_quota", None),
        (503, "overloaded_error", Some(("x-should-retry", "false"))),
        // A server asking for more than the 60 s cap: returned, not waited.
        (429, "rate_limit_exceeded", Some(("retry-after", "120"))),
    ] {
        let mut reply = Reply::api_error(status, kind, "no");
        if let Some((k, v)) = header {
            reply = reply.header(k, v);
        }
        let before = server.request_count();
        let started = Instant::now();
        server.push(reply);
        let (_, err) = call(&svc, true).await;
        let err = err.unwrap_or_else(|| panic!("{status} {kind}: no error"));
        let want = match status {
            401 => "unauthorized",
            403 => "forbidden",
            404 | 413 | 422 => "invalid_request",
            429 => "rate_limited",
            503 => "overloaded",
            other => panic!("no class given for {other}"),
        };
        assert_eq!(err.kind(), want, "{status} {kind}: {err}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(server.request_count() - before, 1, "{status} {kind}");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "{status} {kind}: no wait"
        );
    }
    // x-should-retry: true makes a 400 retryable.
    server.push_all([
        Reply::api_error(400, "invalid_request_error", "try again")
            .header("x-should-retry", "true"),
        Reply::text(WORDS),
    ]);
    let (_, err) = call(&svc, true).await;
    assert!(err.is_none());
}

#[tokio::test(start_paused = true)]
async fn overload_events_mid_stream_before_output_are_retried() {
    let server = MockServer::start().await;
    for (name, svc) in both(&server, RetryPolicy::default()) {
        let before = server.request_count();
        server.push_all([
            Reply::text(WORDS).error_event_after(0, "overloaded_error", "Overloaded"),
            Reply::text(WORDS),
        ]);
        let (events, err) = call(&svc, true).await;
        assert!(err.is_none(), "{name}: {err:?}");
        assert_eq!(texts(&events).concat(), WORDS.concat());
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, StreamEvent::MessageStart { .. }))
                .count(),
            1,
            "{name}: no second MessageStart"
        );
        assert_eq!(server.request_count() - before, 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_would_pass_during_the_wait_returns_now() {
    let server = MockServer::start().await;
    let svc = openai(&server, RetryPolicy::default());
    server.push(Reply::api_error(500, "api_error", "boom"));
    let mut req = hello(true);
    req.extensions
        .insert(Deadline::after(Duration::from_millis(100)));
    let started = Instant::now();
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert!(matches!(err, Error::Server { .. }));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(server.request_count(), 1);
    assert_eq!(server.pending_replies(), 0);

    // A deadline far enough away lets the retry happen: the 500, a backoff,
    // then the success, on the second request.
    let mut req = hello(true);
    req.extensions
        .insert(Deadline::after(Duration::from_secs(5)));
    server.push_all([
        Reply::api_error(500, "api_error", "boom"),
        Reply::text(WORDS),
    ]);
    let started = Instant::now();
    let stream = svc.oneshot(req).await.unwrap();
    assert_eq!(stream.meta().attempts, 2);
    assert!(started.elapsed() > Duration::ZERO, "waited a backoff");
    assert_eq!(stream.completion().await.unwrap().text, WORDS.concat());
    assert_eq!(server.request_count(), 3);
    assert_eq!(server.pending_replies(), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_do_not_retry_in_lockstep() {
    let server = MockServer::start().await;
    let svc = openai(&server, RetryPolicy::default());
    let e500 = || Reply::api_error(500, "api_error", "boom");
    // Both calls fail once at the same instant, then succeed.
    server.push_all([e500(), e500(), Reply::text(WORDS), Reply::text(WORDS)]);
    let (a, b) = tokio::join!(call(&svc, true), call(&svc, true));
    assert!(a.1.is_none() && b.1.is_none());
    let r = server.requests();
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].received_at, r[1].received_at, "both failed together");
    let (wait_a, wait_b) = (
        r[2].received_at - r[0].received_at,
        r[3].received_at - r[1].received_at,
    );
    assert_ne!(wait_a, wait_b, "jitter is drawn per call");
    for w in [wait_a, wait_b] {
        assert!(
            (Duration::from_millis(375)..=Duration::from_millis(500)).contains(&w),
            "{w:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_cancels_the_wait_and_the_attempt() {
    let server = MockServer::start().await;
    let svc = openai(&server, RetryPolicy::default());
    let tasks = tokio::runtime::Handle::current().metrics();
    let baseline = tasks.num_alive_tasks();

    // Dropped during the backoff: the retry never happens.
    server.push_all([
        Reply::api_error(500, "api_error", "boom"),
        Reply::text(WORDS),
    ]);
    let mut future = Box::pin(svc.clone().oneshot(hello(true)));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut future)
            .await
            .is_err()
    );
    assert_eq!(server.request_count(), 1);
    drop(future);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(server.request_count(), 1, "no attempt after the drop");
    assert_eq!(server.pending_replies(), 1);
    let _ = call(&svc, true).await;

    // Dropped during an attempt that stalls before output: its connection closes.
    server.push(Reply::text(WORDS).stall_after(0));
    let mut future = Box::pin(svc.clone().oneshot(hello(true)));
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut future)
            .await
            .is_err()
    );
    // Open now: the stalled attempt's, and pooled idle ones.
    let open = server.live_connections();
    drop(future);
    for _ in 0..100 {
        if server.live_connections() < open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.live_connections(),
        open - 1,
        "the attempt's connection is gone"
    );
    // Once the client (and its connection pool) is gone, so is every task:
    // the guard spawns none of its own.
    drop(svc);
    for _ in 0..100 {
        if tasks.num_alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        tasks.num_alive_tasks(),
        baseline,
        "only the mock server's accept loop is left"
    );
    assert_eq!(server.live_connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_budget_and_a_classifier_limit_retries() {
    let server = MockServer::start().await;
    let e500 = || Reply::api_error(500, "api_error", "boom");
    // A budget that allows no retries at all.
    let none = tower::retry::budget::TpsBudget::new(Duration::from_secs(1), 0, 0.0);
    let svc = openai(&server, RetryPolicy::default().budget(none));
    server.push_all([e500(), Reply::text(WORDS)]);
    assert!(call(&svc, true).await.1.is_some());
    assert_eq!(server.request_count(), 1);
    let _ = call(&svc, true).await;

    let svc = openai(
        &server,
        RetryPolicy::default().retry_if(|e| !matches!(e, Error::Server { .. })),
    );
    let before = server.request_count();
    server.push_all([e500(), Reply::text(WORDS)]);
    assert!(call(&svc, true).await.1.is_some());
    assert_eq!(server.request_count() - before, 1);
}

#[tokio::test(start_paused = true)]
async fn each_retry_is_a_tracing_event() {
    let (captured, _capturing) = Captured::start();
    let server = MockServer::start().await;
    server.push_all([
        Reply::api_error(429, "rate_limit_error", "slow").header("retry-after", "1"),
        Reply::reset(),
        Reply::text(WORDS),
    ]);
    let s = openai(&server, RetryPolicy::default())
        .oneshot(hello(true))
        .await
        .unwrap();
    assert_eq!(s.meta().attempts, 3);
    let events = captured.events();
    let retries: Vec<_> = events
        .iter()
        .filter(|e| e.contains("retrying llm call"))
        .collect();
    assert_eq!(retries.len(), 2, "{events:#?}");
    assert!(
        retries[0].contains("reason=\"rate_limited\"")
            && retries[0].contains("attempt=2")
            && retries[0].contains("delay_ms=1000"),
        "{}",
        retries[0]
    );
    assert!(
        retries[1].contains("reason=\"transport\"") && retries[1].contains("attempt=3"),
        "{}",
        retries[1]
    );
}

/// The warning that a call failed "after N attempts" is for calls that were
/// sent more than once: a failure on the only attempt is the caller's to
/// log.
#[tokio::test(start_paused = true)]
async fn a_failure_on_the_only_attempt_is_not_logged_as_retried() {
    let (captured, _capturing) = Captured::start();
    let server = MockServer::start().await;
    server.push(Reply::api_error(400, "invalid_request_error", "bad"));
    let err = openai(&server, RetryPolicy::default())
        .oneshot(hello(true))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    let events = captured.events();
    assert!(
        events.iter().all(|e| !e.contains("failed after")),
        "{events:#?}"
    );
    // Sent twice, it is.
    server.push_all([
        Reply::reset(),
        Reply::api_error(400, "invalid_request_error", "bad"),
    ]);
    openai(&server, RetryPolicy::default())
        .oneshot(hello(true))
        .await
        .unwrap_err();
    assert!(
        captured
            .events()
            .iter()
            .any(|e| e.starts_with("WARN") && e.contains("failed after 2 attempts")),
        "{:#?}",
        captured.events()
    );
}
