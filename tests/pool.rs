//! The pool over mock deployments on loopback, on a paused clock: cooldowns
//! and probes, headroom from the providers' headers, balance by open
//! streams, all deployments out under a retry layer, and hedging.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::pool::Health;
use llm_tower::{
    ChatRequest, Error, Message, OpenAi, Pool, RetryPolicy, StreamEvent, TransportRetryLayer,
};
use support::texts;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

fn hi() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hi"))
}

fn openai(server: &MockServer) -> OpenAi {
    OpenAi::builder()
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap()
}

async fn servers(n: usize) -> Vec<MockServer> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(MockServer::start().await);
    }
    out
}

fn pool_of(servers: &[MockServer]) -> llm_tower::pool::PoolBuilder {
    servers
        .iter()
        .enumerate()
        .fold(Pool::builder(), |b, (i, s)| {
            b.deployment(format!("d{i}"), openai(s))
        })
}

/// Answers from the deployment named `d{i}` say so.
fn answer_as(server: &MockServer, i: usize) {
    server.set_default(Reply::text([format!("from d{i}")]));
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_deployment_is_taken_out_then_probed_once() {
    let s = servers(3).await;
    s[0].set_default(Reply::api_error(529, "overloaded_error", "Overloaded"));
    answer_as(&s[1], 1);
    answer_as(&s[2], 2);
    let pool = pool_of(&s)
        .failures(3, Duration::from_secs(60))
        .cooldown(Duration::from_secs(30))
        .build()
        .unwrap();
    // Until three calls failed there.
    let mut calls = 0;
    while s[0].request_count() < 3 {
        calls += 1;
        assert!(
            calls < 200,
            "the overloaded deployment is picked now and then"
        );
        let _ = pool.clone().oneshot(hi()).await;
    }
    assert!(matches!(
        pool.status()[0].health,
        Health::CoolingDown { .. }
    ));
    // Out for its cooldown: every call goes elsewhere, and succeeds.
    for _ in 0..50 {
        let answer = pool.clone().oneshot(hi()).await.unwrap();
        assert_ne!(answer.meta().deployment.as_deref(), Some("d0"));
        answer.completion().await.unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    assert_eq!(s[0].request_count(), 3, "no call during the cooldown");
    // After it, exactly one probe; it fails, and the next cooldown is longer.
    tokio::time::advance(Duration::from_secs(6)).await;
    for _ in 0..200 {
        let _ = pool.clone().oneshot(hi()).await;
    }
    assert_eq!(s[0].request_count(), 4, "one probe");
    match pool.status()[0].health {
        Health::CoolingDown { until } => {
            let left = until - Instant::now();
            assert!(left > Duration::from_secs(59), "doubled: {left:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn no_call_goes_where_the_headers_said_nothing_is_left_until_the_reset() {
    let s = servers(2).await;
    answer_as(&s[0], 0);
    s[1].push(
        Reply::text(["from d1"])
            .header("x-ratelimit-limit-requests", "100")
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "5s"),
    );
    answer_as(&s[1], 1);
    let pool = pool_of(&s).build().unwrap();
    // Until d1 has answered once and said it has nothing left.
    while s[1].request_count() == 0 {
        pool.clone()
            .oneshot(hi())
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
    }
    assert_eq!(pool.status()[1].remaining_requests, Some(0));
    for _ in 0..40 {
        let a = pool.clone().oneshot(hi()).await.unwrap();
        assert_eq!(a.meta().deployment.as_deref(), Some("d0"));
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(s[1].request_count(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..40 {
        pool.clone().oneshot(hi()).await.unwrap();
    }
    assert!(s[1].request_count() > 1, "back after the reset");
}

#[tokio::test(start_paused = true)]
async fn a_429_takes_a_deployment_out_for_its_retry_after() {
    let s = servers(2).await;
    answer_as(&s[0], 0);
    s[1].push(Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "3"));
    answer_as(&s[1], 1);
    let pool = pool_of(&s).build().unwrap();
    while s[1].request_count() == 0 {
        let _ = pool.clone().oneshot(hi()).await;
    }
    for _ in 0..30 {
        pool.clone().oneshot(hi()).await.unwrap();
        tokio::time::advance(Duration::from_millis(90)).await;
    }
    assert_eq!(s[1].request_count(), 1, "out for 3 s");
    tokio::time::advance(Duration::from_millis(400)).await;
    for _ in 0..40 {
        pool.clone().oneshot(hi()).await.unwrap();
    }
    assert!(s[1].request_count() > 1);
}

#[tokio::test(start_paused = true)]
async fn open_streams_balance_and_a_dropped_stream_frees_its_count_at_once() {
    let s = servers(2).await;
    for server in &s {
        // Long answers, read by nobody: they stay open.
        server.set_default(
            Reply::text((0..50).map(|i| format!("w{i} "))).delay(Duration::from_millis(10)),
        );
    }
    let pool = pool_of(&s).build().unwrap();
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(pool.clone().oneshot(hi()).await.unwrap());
    }
    let open: Vec<usize> = pool.status().iter().map(|d| d.open_streams).collect();
    assert_eq!(
        open,
        [5, 5],
        "two choices of two: always the one with fewer"
    );
    // Three of d0's streams end (dropped): its count falls at once, and the
    // next three calls go there.
    let mut dropped = 0;
    streams.retain(|st| {
        if dropped < 3 && st.meta().deployment.as_deref() == Some("d0") {
            dropped += 1;
            false
        } else {
            true
        }
    });
    assert_eq!(pool.status()[0].open_streams, 2);
    for _ in 0..3 {
        let st = pool.clone().oneshot(hi()).await.unwrap();
        assert_eq!(st.meta().deployment.as_deref(), Some("d0"));
        streams.push(st);
    }
    // A stream read to its end frees its count too.
    let st = streams.pop().unwrap();
    let c = st.completion().await.unwrap();
    assert_eq!(c.text.split_whitespace().count(), 50);
    assert_eq!(pool.status()[0].open_streams, 4);
    drop(streams);
    assert!(pool.status().iter().all(|d| d.open_streams == 0));
}

#[tokio::test(start_paused = true)]
async fn with_every_deployment_out_the_call_fails_at_once_and_a_retry_waits_for_the_first_back() {
    let s = servers(2).await;
    s[0].push(Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "3"));
    s[1].push(Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "5"));
    answer_as(&s[0], 0);
    answer_as(&s[1], 1);
    let pool = pool_of(&s).build().unwrap();
    for _ in 0..2 {
        let err = pool.clone().oneshot(hi()).await.unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    }
    let started = Instant::now();
    let err = pool.clone().oneshot(hi()).await.unwrap_err();
    assert_eq!(Instant::now(), started, "at once");
    assert!(matches!(err, Error::Overloaded { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(
        s[0].request_count() + s[1].request_count(),
        2,
        "nothing sent"
    );

    // Under the retry layer: it waits 3 s, and d0, back first, answers.
    let retrying = TransportRetryLayer::new(RetryPolicy::default()).layer(pool.clone());
    let answer = retrying.oneshot(hi()).await.unwrap();
    assert_eq!(Instant::now() - started, Duration::from_secs(3));
    assert_eq!(answer.meta().deployment.as_deref(), Some("d0"));
    assert_eq!(answer.completion().await.unwrap().text, "from d0");
}

#[tokio::test(start_paused = true)]
async fn a_retried_attempt_goes_to_another_deployment() {
    let s = servers(2).await;
    s[0].set_default(Reply::api_error(500, "server_error", "boom"));
    answer_as(&s[1], 1);
    // A breaker that never trips: only the retries' moves keep d0 away.
    let pool = pool_of(&s)
        .failures(1000, Duration::from_secs(60))
        .build()
        .unwrap();
    let retrying = TransportRetryLayer::new(RetryPolicy::default()).layer(pool);
    let mut retried = 0;
    for _ in 0..40 {
        let answer = retrying.clone().oneshot(hi()).await.unwrap();
        assert_eq!(answer.meta().deployment.as_deref(), Some("d1"));
        assert!(answer.meta().attempts <= 2, "never back to d0 in one call");
        retried += usize::from(answer.meta().attempts == 2);
    }
    assert_eq!(
        s[0].request_count(),
        retried,
        "each first attempt at d0 moved"
    );
    assert!(retried > 0);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_answers_a_slow_call_and_the_loser_is_dropped() {
    let s = servers(2).await;
    // d0 is slow to its first output (2 s per event); d1 answers at 50 ms.
    s[0].set_default(Reply::text(["from d0"]).delay(Duration::from_secs(2)));
    s[1].set_default(Reply::text(["from d1"]).delay(Duration::from_millis(50)));
    let pool = pool_of(&s)
        .hedge_after(Duration::from_millis(200))
        .hedge_budget(1.0)
        .build()
        .unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        let mut stream = pool.clone().oneshot(hi()).await.unwrap();
        let took = Instant::now() - started;
        // The first output is at the front of the answer now.
        let deployment = stream.meta().deployment.clone().unwrap();
        assert_eq!(&*deployment, "d1", "the fast one wins, primary or hedge");
        assert!(took <= Duration::from_millis(360), "{took:?}");
        let mut events = Vec::new();
        while let Some(e) = stream.next().await {
            events.push(e.unwrap());
        }
        assert_eq!(texts(&events), ["from d1"], "one attempt's output only");
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, StreamEvent::Done { .. }))
                .count(),
            1
        );
        tokio::task::yield_now().await;
        assert_eq!(
            s[0].live_connections(),
            0,
            "the slow attempt's connection is closed"
        );
    }
    assert!(pool.hedges() > 0);
    assert!(pool.status().iter().all(|d| d.open_streams == 0));
}

#[tokio::test(start_paused = true)]
async fn hedges_stay_within_their_budget() {
    let s = servers(2).await;
    s[0].set_default(Reply::text(["from d0"]).delay(Duration::from_secs(1)));
    s[1].set_default(Reply::text(["from d1"]).delay(Duration::from_secs(1)));
    // Paused, the clock jumps whenever every task waits on a socket: no
    // connect timeout to jump to.
    let patient = |server: &MockServer| {
        OpenAi::builder()
            .base_url(server.openai_url())
            .model("m")
            .connect_timeout(Duration::from_secs(86_400))
            .build()
            .unwrap()
    };
    let pool = Pool::builder()
        .deployment("d0", patient(&s[0]))
        .deployment("d1", patient(&s[1]))
        .hedge_after(Duration::from_millis(100))
        .build()
        .unwrap();
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.oneshot(hi())
                    .await
                    .unwrap()
                    .completion()
                    .await
                    .unwrap();
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    let hedges = pool.hedges();
    assert!(
        hedges > 0 && hedges <= 100,
        "{hedges} hedges for 1,000 calls"
    );
    let requests = s[0].request_count() + s[1].request_count();
    assert_eq!(requests as u64, 1000 + hedges);
}

#[tokio::test]
async fn a_refused_credential_locks_a_deployment_until_it_changes() {
    let s = servers(2).await;
    s[0].accept_keys(["right"]);
    answer_as(&s[0], 0);
    answer_as(&s[1], 1);
    let pool = Pool::builder()
        .deployment(
            "d0",
            OpenAi::builder()
                .base_url(s[0].openai_url())
                .api_key("wrong")
                .model("m")
                .build()
                .unwrap(),
        )
        .deployment("d1", openai(&s[1]))
        .build()
        .unwrap();
    while s[0].request_count() == 0 {
        let _ = pool.clone().oneshot(hi()).await;
    }
    assert_eq!(pool.status()[0].health, Health::Locked);
    for _ in 0..30 {
        pool.clone().oneshot(hi()).await.unwrap();
    }
    assert_eq!(s[0].request_count(), 1);
    assert!(pool.credential_changed("d0"));
    assert!(!pool.credential_changed("nope"));
    for _ in 0..30 {
        let _ = pool.clone().oneshot(hi()).await;
    }
    assert_eq!(s[0].request_count(), 2, "one probe, refused again");
    assert_eq!(pool.status()[0].health, Health::Locked);
}

#[test]
fn a_pool_needs_deployments_with_names_and_weights() {
    let p = || OpenAi::builder().model("m").build().unwrap();
    assert!(Pool::builder().build().is_err());
    assert!(
        Pool::builder()
            .deployment("a", p())
            .deployment("a", p())
            .build()
            .is_err()
    );
    assert!(
        Pool::builder()
            .weighted_deployment("a", 0, p())
            .build()
            .is_err()
    );
    assert!(
        Pool::builder()
            .deployment("a", p())
            .hedge_budget(1.5)
            .build()
            .is_err()
    );
    assert!(
        Pool::builder()
            .deployment("a", p())
            .failures(0, Duration::from_secs(1))
            .build()
            .is_err()
    );
}

/// 1,000 calls at once through the retry layer over a pool of three
/// deployments that fail on their own schedules — resets, 500s and 529s
/// before output on one request in ten, a reset after output on one in a
/// hundred, one deployment down for a while: every call ends with the whole
/// text or an error, each delta delivered once and in order, and the pool
/// holds no stream at the end.
#[tokio::test(start_paused = true)]
async fn a_thousand_calls_through_a_pool_with_faults_lose_nothing_and_repeat_nothing() {
    use llm_tower::StreamConcurrencyLimitLayer;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CALLS: usize = 1000;
    let words: Vec<String> = (0..8).map(|i| format!("w{i} ")).collect();
    let s = servers(3).await;
    for (d, server) in s.iter().enumerate() {
        let seen = Arc::new(AtomicUsize::new(0));
        let words = words.clone();
        server.respond_with(move |_| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            // d2 is down for its requests 100 to 199.
            if d == 2 && (100..200).contains(&n) {
                return Reply::api_error(529, "overloaded_error", "down");
            }
            match (n * 7 + d * 13) % 100 {
                0..=3 => Reply::reset(),
                4..=6 => Reply::api_error(500, "server_error", "boom"),
                7..=9 => Reply::api_error(529, "overloaded_error", "busy"),
                10 => Reply::text(words.clone()).reset_after(3),
                _ => Reply::text(words.clone()),
            }
        });
    }
    let patient = |server: &MockServer| {
        OpenAi::builder()
            .base_url(server.openai_url())
            .model("m")
            .connect_timeout(Duration::from_secs(86_400))
            .build()
            .unwrap()
    };
    let pool = Pool::builder()
        .deployment("d0", patient(&s[0]))
        .deployment("d1", patient(&s[1]))
        .deployment("d2", patient(&s[2]))
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(StreamConcurrencyLimitLayer::new(16))
        .service(pool.clone());
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                match svc.oneshot(hi()).await {
                    Ok(stream) => support::drain(stream).await,
                    Err(e) => (Vec::new(), Some(e)),
                }
            })
        })
        .collect();
    let (mut whole, mut failed, mut interrupted) = (0, 0, 0);
    for call in calls {
        let (events, error) = call.await.unwrap();
        let deltas = texts(&events);
        assert_eq!(deltas, words[..deltas.len()], "each delta once, in order");
        match error {
            None => {
                assert_eq!(deltas.len(), words.len(), "a clean end is the whole text");
                whole += 1;
            }
            Some(_) if deltas.is_empty() => failed += 1,
            Some(e) => {
                assert!(!e.is_retryable() || deltas.len() < words.len(), "{e:?}");
                interrupted += 1;
            }
        }
    }
    assert_eq!(whole + failed + interrupted, CALLS);
    assert!(
        whole > 900,
        "{whole} whole, {failed} failed, {interrupted} interrupted"
    );
    assert!(pool.status().iter().all(|d| d.open_streams == 0));
    let requests: usize = s.iter().map(MockServer::request_count).sum();
    assert!(requests >= CALLS);
    println!(
        "pool load: {whole} whole, {failed} failed, {interrupted} interrupted, {requests} requests; {:?}",
        pool.status()
            .iter()
            .map(|d| (d.name.clone(), d.health))
            .collect::<Vec<_>>()
    );
}

/// One deployment's streams last ten times longer: balancing by open
/// streams (not by requests) sends it about a tenth of the calls, and the
/// two hold about as many streams at any time.
#[tokio::test(start_paused = true)]
async fn a_deployment_with_long_streams_gets_its_share_of_open_streams_not_of_calls() {
    let s = servers(2).await;
    let words = |n: usize| (0..n).map(|i| format!("w{i} ")).collect::<Vec<_>>();
    s[0].set_default(Reply::text(words(10)).delay(Duration::from_millis(10)));
    s[1].set_default(Reply::text(words(10)).delay(Duration::from_millis(100)));
    let pool = pool_of(&s).build().unwrap();
    let mut calls = Vec::new();
    let mut widest = 0usize;
    for _ in 0..400 {
        let svc = pool.clone();
        calls.push(tokio::spawn(async move {
            svc.oneshot(hi()).await.unwrap().completion().await.unwrap();
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let open: Vec<usize> = pool.status().iter().map(|d| d.open_streams).collect();
        widest = widest.max(open[0].abs_diff(open[1]));
    }
    for c in calls {
        c.await.unwrap();
    }
    let (fast, slow) = (s[0].request_count(), s[1].request_count());
    assert_eq!(fast + slow, 400);
    assert!(
        slow * 5 < fast,
        "{slow} calls to the slow one, {fast} to the fast one"
    );
    assert!(widest <= 3, "open streams apart by {widest} at most");
    println!("long streams: {slow} calls, short ones: {fast}; open streams at most {widest} apart");
}

/// A probe whose call is given up (the caller dropped it) decides nothing:
/// the next call probes again, rather than the deployment waiting for an
/// answer that never comes.
#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_lets_the_next_call_probe() {
    let s = servers(2).await;
    s[0].push(Reply::api_error(429, "rate_limit_error", "slow").header("retry-after", "1"));
    s[0].push(Reply::text(["late"]).delay(Duration::from_secs(10)));
    s[0].push(Reply::text(["from d0"]));
    s[1].set_default(
        Reply::api_error(429, "rate_limit_error", "slow").header("retry-after", "1000"),
    );
    let pool = pool_of(&s).build().unwrap();
    while s[0].request_count() == 0 || s[1].request_count() == 0 {
        let _ = pool.clone().oneshot(hi()).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    // The probe goes to d0, whose answer takes 10 s: given up after 1 s.
    let gave_up = tokio::time::timeout(Duration::from_secs(1), pool.clone().oneshot(hi())).await;
    assert!(gave_up.is_err());
    assert_eq!(s[0].request_count(), 2);
    assert!(matches!(
        pool.status()[0].health,
        Health::CoolingDown { .. }
    ));
    let answer = pool.clone().oneshot(hi()).await.unwrap();
    assert_eq!(answer.completion().await.unwrap().text, "from d0");
    assert_eq!(pool.status()[0].health, Health::InService);
}
