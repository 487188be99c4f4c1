//! StreamTimeoutLayer: first-event, idle and total deadlines over the stream,
//! and how they compose with TransportRetryLayer. Paused clock throughout.

mod support;

use std::time::Duration;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, Error, Message, RetryPolicy, StreamTimeoutLayer, TimeoutPhase, TransportRetryLayer,
};
use support::{anthropic_at, drain, openai_at, texts};
use tokio::time::Instant;
use tower::util::BoxService;
use tower::{ServiceBuilder, ServiceExt};

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

fn is_timeout(e: &Option<Error>, want: TimeoutPhase) -> bool {
    matches!(e, Some(Error::Timeout { phase, .. }) if *phase == want)
}

/// Sends one call through `svc`: it delivers exactly `want`, then ends with
/// a timeout of `phase`, `after` from the call.
async fn cut_after<S>(svc: S, want: &[&str], phase: TimeoutPhase, after: Duration)
where
    S: tower::Service<ChatRequest, Response = llm_tower::ChatStream, Error = Error>,
{
    let started = Instant::now();
    let (events, err) = drain(svc.oneshot(hello()).await.unwrap()).await;
    assert_eq!(texts(&events), want);
    assert!(is_timeout(&err, phase), "{err:?}");
    assert_eq!(started.elapsed(), after);
}

#[tokio::test(start_paused = true)]
async fn no_event_at_all_is_a_first_event_timeout() {
    let server = MockServer::start().await;
    server.push(Reply::sse(["data: {}\n\n"]).stall_after(0));
    let svc = StreamTimeoutLayer::new()
        .first_event(Duration::from_secs(5))
        .idle(Duration::from_secs(1));
    let svc = tower::Layer::layer(&svc, openai_at(&server));
    let started = Instant::now();
    let (events, err) = drain(svc.oneshot(hello()).await.unwrap()).await;
    assert!(events.is_empty());
    assert!(is_timeout(&err, TimeoutPhase::FirstEvent), "{err:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "the idle limit starts after the first event"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_stalls_is_cut_by_the_idle_timeout() {
    let server = MockServer::start().await;
    server.push(Reply::text(["one", " two", " three"]).stall_after(2));
    let layer = StreamTimeoutLayer::new().idle(Duration::from_secs(2));
    let svc = tower::Layer::layer(&layer, anthropic_at(&server));
    let started = Instant::now();
    let err = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let Error::Interrupted { partial, source } = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        partial.text, "one two",
        "the output before the stall is kept"
    );
    assert!(matches!(
        *source,
        Error::Timeout {
            phase: TimeoutPhase::Idle,
            provider: "anthropic"
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn slow_but_steady_streams_live_until_the_total_limit() {
    let server = MockServer::start().await;
    let words: Vec<String> = (0..20).map(|i| format!("w{i} ")).collect();
    server.push(Reply::text(words.clone()).delay(Duration::from_secs(1)));
    let layer = StreamTimeoutLayer::new()
        .idle(Duration::from_secs(2))
        .total(Duration::from_secs(10));
    let svc = tower::Layer::layer(&layer, openai_at(&server));
    let started = Instant::now();
    let (events, err) = drain(svc.oneshot(hello()).await.unwrap()).await;
    assert!(is_timeout(&err, TimeoutPhase::Total), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    // One frame a second from t = 1 s: the opening chunk, then w0 at 2 s
    // … w8 at 10 s, the instant the total limit passes (a frame due at the
    // deadline is not delivered).
    assert_eq!(texts(&events), words[..8]);

    // Under the limits, nothing is cut (frames without an event, like the
    // finish chunk, make a gap of two delays).
    server.push(Reply::text(["a", "b"]).delay(Duration::from_millis(900)));
    let (_, err) = drain(
        tower::Layer::layer(&layer, openai_at(&server))
            .oneshot(hello())
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stall_before_output_is_cut_and_retried_by_an_outer_retry_layer() {
    let server = MockServer::start().await;
    for stream in [true, false] {
        let before = server.request_count();
        server.push_all([Reply::text(["late"]).stall_after(0), Reply::text(["fresh"])]);
        let svc = ServiceBuilder::new()
            .layer(TransportRetryLayer::new(RetryPolicy::default()))
            .layer(
                StreamTimeoutLayer::new()
                    .first_event(Duration::from_secs(3))
                    .idle(Duration::from_secs(3)),
            )
            .service(openai_at(&server));
        let s = svc.oneshot(hello().stream(stream)).await.unwrap();
        assert_eq!(s.meta().attempts, 2);
        assert_eq!(
            s.completion().await.unwrap().text,
            "fresh",
            "stream={stream}"
        );
        assert_eq!(server.request_count() - before, 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_total_limit_outside_a_retry_layer_bounds_its_waits() {
    let server = MockServer::start().await;
    server.push_all([
        Reply::api_error(500, "api_error", "boom"),
        Reply::text(["ok"]),
    ]);
    // The backoff (at least 375 ms) would outlast the 200 ms total: the
    // retry layer inside returns the failure at once.
    let svc = ServiceBuilder::new()
        .layer(StreamTimeoutLayer::new().total(Duration::from_millis(200)))
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(openai_at(&server));
    let started = Instant::now();
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(server.request_count(), 1);
}

/// Two total limits over one call: the nearer bounds the retry layer's
/// waits, whichever layer set it.
#[tokio::test(start_paused = true)]
async fn of_two_total_limits_the_nearer_bounds_the_waits() {
    for (outer, inner) in [(10_000, 200), (200, 10_000)] {
        let server = MockServer::start().await;
        server.push_all([
            Reply::api_error(500, "api_error", "boom"),
            Reply::text(["ok"]),
        ]);
        let svc = ServiceBuilder::new()
            .layer(StreamTimeoutLayer::new().total(Duration::from_millis(outer)))
            .layer(StreamTimeoutLayer::new().total(Duration::from_millis(inner)))
            .layer(TransportRetryLayer::new(RetryPolicy::default()))
            .service(openai_at(&server));
        let started = Instant::now();
        let err = svc.oneshot(hello()).await.unwrap_err();
        assert!(
            matches!(err, Error::Server { .. }),
            "{outer}/{inner}: {err:?}"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(server.request_count(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_head_that_never_comes_fails_the_call() {
    for (layer, phase, after) in [
        (
            StreamTimeoutLayer::new().first_event(Duration::from_secs(5)),
            TimeoutPhase::FirstEvent,
            5,
        ),
        (
            StreamTimeoutLayer::new()
                .first_event(Duration::from_secs(5))
                .total(Duration::from_secs(2)),
            TimeoutPhase::Total,
            2,
        ),
    ] {
        let started = Instant::now();
        let err = tower::Layer::layer(&layer, Never)
            .oneshot(hello())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Timeout { phase: p, .. } if p == phase),
            "{err:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(after));
    }
}

#[tokio::test(start_paused = true)]
async fn an_expired_stream_releases_its_connection_at_once() {
    use futures_util::StreamExt;
    let server = MockServer::start().await;
    server.push(Reply::text(["a", "b"]).stall_after(1));
    let layer = StreamTimeoutLayer::new().idle(Duration::from_secs(1));
    let mut stream = tower::Layer::layer(&layer, openai_at(&server))
        .oneshot(hello())
        .await
        .unwrap();
    while let Some(Ok(_)) = stream.next().await {}
    // The caller still holds the stream; the stalled response is gone anyway.
    for _ in 0..100 {
        if server.open_responses() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.open_responses(), 0);
    assert!(stream.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn with_only_an_idle_limit_a_head_followed_by_silence_is_cut() {
    use futures_util::StreamExt;

    let server = MockServer::start().await;
    // The head, then not a byte.
    server.push(Reply::sse(["data: {}\n\n"]).stall_after(0));
    let layer = StreamTimeoutLayer::new().idle(Duration::from_secs(2));
    let mut stream = tower::Layer::layer(&layer, openai_at(&server))
        .oneshot(hello())
        .await
        .unwrap();
    let head = Instant::now();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    assert_eq!(head.elapsed(), Duration::from_secs(2));
    assert!(
        matches!(
            items.last(),
            Some(Err(Error::Timeout {
                phase: TimeoutPhase::Idle,
                ..
            }))
        ),
        "{items:?}"
    );
    assert_eq!(items.len(), 1, "{items:?}");
}

#[tokio::test(start_paused = true)]
async fn the_idle_wait_starts_when_the_caller_asks_for_the_next_event() {
    use futures_util::StreamExt;
    use llm_tower::StreamEvent;

    let server = MockServer::start().await;
    // Three seconds of silence before each frame, one limit of two. The
    // first-event limit governs until "a"; the idle one from then on (with
    // none, it would count from the head and cut the first wait).
    server.push(Reply::text(["a", "b"]).delay(Duration::from_secs(3)));
    let layer = StreamTimeoutLayer::new()
        .first_event(Duration::from_secs(10))
        .idle(Duration::from_secs(2));
    let mut stream = tower::Layer::layer(&layer, openai_at(&server))
        .oneshot(hello())
        .await
        .unwrap();
    let first = stream.next().await;
    assert!(
        matches!(first, Some(Ok(StreamEvent::MessageStart { .. }))),
        "{first:?}"
    );
    // The caller spends two seconds on each event, so it waits one second
    // for the next: never longer than the limit, though the server is
    // silent for longer.
    for want in ["a", "b"] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let asked = Instant::now();
        let next = stream.next().await;
        assert!(
            matches!(&next, Some(Ok(StreamEvent::TextDelta { text })) if text == want),
            "{next:?}"
        );
        assert_eq!(asked.elapsed(), Duration::from_secs(1));
    }
}

/// Output a layer inside put in front of the answer (as a retrying layer
/// does with what it held back) meets the first-event limit when the
/// caller reads it, as output from the server would: the wait after it is
/// an idle one.
#[tokio::test(start_paused = true)]
async fn output_put_in_front_meets_the_first_event_limit() {
    use futures_util::StreamExt;
    use llm_tower::{ChatStream, ResponseMeta, StreamEvent};

    // The held output in front, then a server that says nothing.
    let primed = tower::service_fn(|_: ChatRequest| async {
        let mut stream = ChatStream::new(
            ResponseMeta::new("test", "m"),
            futures_util::stream::pending(),
        );
        stream.prepend([StreamEvent::TextDelta { text: "hi".into() }]);
        Ok::<_, Error>(stream)
    });
    let layer = StreamTimeoutLayer::new()
        .first_event(Duration::from_secs(5))
        .idle(Duration::from_secs(10));
    let started = Instant::now();
    let mut stream = tower::Layer::layer(&layer, primed)
        .oneshot(hello())
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(StreamEvent::TextDelta { .. }))
    ));
    let err = stream.next().await;
    assert!(
        matches!(
            &err,
            Some(Err(Error::Timeout {
                phase: TimeoutPhase::Idle,
                provider: "test"
            }))
        ),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(stream.next().await.is_none(), "nothing follows the timeout");
}

/// An outer layer's limit still applies when a layer inside set deadlines
/// on the same answer first: here the outer total, nearer than the inner
/// idle limit, cuts a stream that stalls after its first delta.
#[tokio::test(start_paused = true)]
async fn an_outer_limit_applies_to_an_answer_an_inner_layer_put_deadlines_on() {
    let server = MockServer::start().await;
    server.push(Reply::text(["a", "b"]).stall_after(1));
    let svc = ServiceBuilder::new()
        .layer(StreamTimeoutLayer::new().total(Duration::from_secs(5)))
        .layer(StreamTimeoutLayer::new().idle(Duration::from_secs(20)))
        .service(openai_at(&server));
    cut_after(svc, &["a"], TimeoutPhase::Total, Duration::from_secs(5)).await;
}

/// Once output has begun the idle limit governs, even when it is shorter
/// than what is left of the first-event one: the timer, set for the
/// first-event deadline, is brought nearer.
#[tokio::test(start_paused = true)]
async fn after_output_a_shorter_idle_limit_governs() {
    let server = MockServer::start().await;
    server.push(Reply::text(["a", "b"]).stall_after(1));
    let layer = StreamTimeoutLayer::new()
        .first_event(Duration::from_secs(10))
        .idle(Duration::from_secs(2));
    let svc = tower::Layer::layer(&layer, openai_at(&server));
    cut_after(svc, &["a"], TimeoutPhase::Idle, Duration::from_secs(2)).await;
}

/// Before output, the first-event limit governs while it is nearer than the
/// total one.
#[tokio::test(start_paused = true)]
async fn before_output_the_nearer_first_event_limit_governs() {
    let server = MockServer::start().await;
    // The head and the opening role chunk, then nothing.
    server.push(Reply::text(["never"]).stall_after(0));
    let layer = StreamTimeoutLayer::new()
        .first_event(Duration::from_secs(5))
        .total(Duration::from_secs(60));
    let svc = tower::Layer::layer(&layer, openai_at(&server));
    cut_after(svc, &[], TimeoutPhase::FirstEvent, Duration::from_secs(5)).await;
}

/// An answer's future, as a layer between two timeout layers sees it.
type Answer = futures_util::future::BoxFuture<'static, Result<llm_tower::ChatStream, Error>>;

/// A layer of a user's own between two timeout layers: `wrap` done to each
/// call's future.
#[derive(Clone)]
struct Between<S> {
    inner: S,
    wrap: fn(Answer) -> Answer,
}

fn between<S>(wrap: fn(Answer) -> Answer) -> impl Fn(S) -> Between<S> + Clone {
    move |inner| Between { inner, wrap }
}

impl<S> tower::Service<ChatRequest> for Between<S>
where
    S: tower::Service<ChatRequest, Response = llm_tower::ChatStream, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = llm_tower::ChatStream;
    type Error = Error;
    type Future = Answer;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Answer {
        (self.wrap)(Box::pin(self.inner.call(req)))
    }
}

/// Sits on a failure for an hour, the finished call kept, as a layer
/// knowing nothing of deadlines may.
fn slow_on_failure(mut answer: Answer) -> Answer {
    Box::pin(async move {
        let result = (&mut answer).await;
        if result.is_err() {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        result
    })
}

/// Makes the call at once but first polls it an hour later (it writes an
/// audit record first, say).
fn late_to_poll(answer: Answer) -> Answer {
    Box::pin(async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        answer.await
    })
}

/// Reads the whole answer before handing it on.
fn reads_it_all(answer: Answer) -> Answer {
    use futures_util::StreamExt;
    Box::pin(async move {
        let stream = answer.await?;
        let meta = stream.meta().clone();
        let events = stream.collect::<Vec<_>>().await;
        Ok(llm_tower::ChatStream::from_events(meta, events))
    })
}

/// Runs the call on a task of its own.
fn on_its_own_task(answer: Answer) -> Answer {
    let task = tokio::spawn(answer);
    Box::pin(async move { task.await.expect("the call's task") })
}

/// A service whose answer never comes.
#[derive(Clone)]
struct Never;

impl tower::Service<ChatRequest> for Never {
    type Response = llm_tower::ChatStream;
    type Error = Error;
    type Future = std::future::Pending<Result<llm_tower::ChatStream, Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ChatRequest) -> Self::Future {
        std::future::pending()
    }
}

/// An outer total limit over an inner first-event one sets no timer of its
/// own while the inner one's, due sooner, runs; once that one goes (its
/// attempt failed, here with a layer between that then waits an hour), the
/// outer limit still cuts the call on time, on the caller's task or with
/// the call on a task of its own; and so it does when the inner timer,
/// set as the call was made, is not running (a layer between polls the
/// call only an hour later).
#[tokio::test(start_paused = true)]
async fn an_outer_limit_outlives_the_inner_timer_it_relied_on() {
    let outer = StreamTimeoutLayer::new().total(Duration::from_secs(10));
    let inner = StreamTimeoutLayer::new().first_event(Duration::from_secs(3));
    let same_task = ServiceBuilder::new()
        .layer(outer)
        .layer_fn(between(slow_on_failure))
        .layer(inner)
        .service(Never);
    // The inner timer is set when the call is made, but runs only once
    // polled, an hour later.
    let late_to_poll = ServiceBuilder::new()
        .layer(outer)
        .layer_fn(between(late_to_poll))
        .layer(inner)
        .service(Never);
    let own_task = ServiceBuilder::new()
        .layer(outer)
        .layer_fn(between(on_its_own_task))
        .layer_fn(between(slow_on_failure))
        .layer(inner)
        .service(Never);
    cut_at_ten_seconds(BoxService::new(same_task), "same task").await;
    cut_at_ten_seconds(BoxService::new(own_task), "own task").await;
    cut_at_ten_seconds(BoxService::new(late_to_poll), "late to poll").await;
}

/// Sends one call through `svc`, whose outer limit is a total of 10 s: it
/// fails with that limit, on time. Bounded, so that a limit that failed
/// shows as a failure, not as a test that never ends.
async fn cut_at_ten_seconds(
    svc: BoxService<ChatRequest, llm_tower::ChatStream, Error>,
    case: &str,
) {
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), svc.oneshot(hello()))
        .await
        .expect("the outer limit cut the call")
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::Total,
                ..
            }
        ),
        "{case}: {err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10), "{case}");
}

/// The same once the inner timer's answer has begun: its first-event
/// deadline is met and it has no other, while a layer between reads the
/// rest of an answer that stalls. The outer limit cuts the call on time.
#[tokio::test(start_paused = true)]
async fn an_outer_limit_holds_once_the_inner_answer_has_begun() {
    for own_task in [false, true] {
        let server = MockServer::start().await;
        server.push(Reply::text(["a", "b"]).stall_after(1));
        let inner = ServiceBuilder::new()
            .layer_fn(between(reads_it_all))
            .layer(StreamTimeoutLayer::new().first_event(Duration::from_secs(3)))
            .service(openai_at(&server));
        let outer = StreamTimeoutLayer::new().total(Duration::from_secs(10));
        let svc = if own_task {
            BoxService::new(tower::Layer::layer(
                &outer,
                Between {
                    inner,
                    wrap: on_its_own_task,
                },
            ))
        } else {
            BoxService::new(tower::Layer::layer(&outer, inner))
        };
        cut_at_ten_seconds(svc, if own_task { "own task" } else { "same task" }).await;
    }
}
