//! What a hostile server or a careless limit must not do: wire indices that
//! size memory, durations that overflow the clock, a silent stream after
//! its opening metadata, tower's errors all read as "transport".

mod support;

use std::time::Duration;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, CompletionBuilder, Credential, Deadline, DecodeError, Error, Message, RetryPolicy,
    StreamEvent, StreamTimeoutLayer, TimeoutPhase, TransportRetryLayer,
};
use support::{anthropic_at, drain, gemini_at, openai_at};
use tower::{Layer, ServiceBuilder, ServiceExt};

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

fn openai_tool_chunk(index: u64) -> String {
    format!(
        "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":{index},\"id\":\"call_{index}\",\"function\":{{\"name\":\"f\",\"arguments\":\"{{}}\"}}}}]}}}}]}}\n\n"
    )
}

const OPENAI_END: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n";

#[tokio::test]
async fn openai_wire_indices_map_to_dense_positions() {
    let server = MockServer::start().await;
    for index in [4_000_000_000, u64::MAX] {
        server.push(Reply::sse([
            openai_tool_chunk(index),
            OPENAI_END.to_owned(),
        ]));
        let answer = openai_at(&server)
            .oneshot(hello())
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
        assert_eq!(answer.tool_calls.len(), 1, "index {index}");
        assert_eq!(answer.tool_calls[0].id, format!("call_{index}"));
    }
    // Two sparse indices become positions 0 and 1.
    server.push(Reply::sse([
        openai_tool_chunk(7),
        openai_tool_chunk(1 << 40),
        OPENAI_END.to_owned(),
    ]));
    let (events, err) = drain(openai_at(&server).oneshot(hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    let starts: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStart { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [0, 1]);
}

#[tokio::test]
async fn too_many_tool_calls_is_a_typed_error() {
    let server = MockServer::start().await;
    let n = llm_tower::provider::MAX_PARTS as u64 + 1;
    let mut events: Vec<String> = (0..n).map(|i| openai_tool_chunk(i * 1000)).collect();
    events.push(OPENAI_END.to_owned());
    server.push(Reply::sse(events));
    let err = openai_at(&server)
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap_err();
    let Error::Interrupted { partial, source } = err else {
        panic!("tool calls were delivered before the limit: {err:?}");
    };
    assert_eq!(partial.tool_calls.len(), llm_tower::provider::MAX_PARTS);
    assert!(
        matches!(
            *source,
            Error::Decode {
                source: DecodeError::TooManyParts { limit, .. },
                ..
            } if limit == llm_tower::provider::MAX_PARTS
        ),
        "{source:?}"
    );
    assert!(!source.is_retryable());
}

fn anthropic_events(index: u64) -> Vec<String> {
    vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg\",\"model\":\"m\",\"usage\":{\"input_tokens\":18446744073709551615,\"cache_read_input_tokens\":18446744073709551615}}}\n\n".to_owned(),
        format!("event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":{{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{{}}}}}}\n\n"),
        format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{{\\\"a\\\":1}}\"}}}}\n\n"),
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":3}}\n\n".to_owned(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
    ]
}

#[tokio::test]
async fn anthropic_block_indices_and_counts_from_the_whole_u64_range() {
    let server = MockServer::start().await;
    for index in [4_000_000_000, u64::MAX] {
        server.push(Reply::sse(anthropic_events(index)));
        let answer = anthropic_at(&server)
            .oneshot(hello())
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
        assert_eq!(answer.tool_calls.len(), 1);
        assert_eq!(answer.tool_calls[0].arguments["a"], 1);
        // Counters that would overflow when added saturate.
        assert_eq!(answer.usage.unwrap().input_tokens, u64::MAX);
    }
}

#[test]
fn the_fold_takes_sparse_indices_without_allocating_by_them() {
    let mut b = CompletionBuilder::default();
    for (index, id) in [(usize::MAX, "a"), (3_000_000_000, "b")] {
        b.push(&StreamEvent::ToolCallStart {
            index,
            id: id.into(),
            name: "f".into(),
        });
        b.push(&StreamEvent::ToolCallDelta {
            index,
            arguments: "{}".into(),
        });
    }
    let c = b.finish();
    let ids: Vec<&str> = c.tool_calls.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn duration_max_limits_mean_no_limit() {
    let server = MockServer::start().await;
    server.push(Reply::text(["fine"]));
    let svc = StreamTimeoutLayer::new()
        .first_event(Duration::MAX)
        .idle(Duration::MAX)
        .total(Duration::MAX)
        .layer(openai_at(&server));
    let answer = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(answer.text, "fine");

    // A credential that lives "forever" never expires, and a deadline that
    // far is a time, not a panic.
    let forever = Credential::bearer("k").expires_in(Duration::MAX);
    assert_eq!(forever.expiry(), None);
    assert!(Deadline::after(Duration::MAX).remaining() > Duration::from_secs(86_400 * 365));

    // A retry whose wait would overflow the clock under a deadline is not
    // attempted; no panic.
    server.push(Reply::api_error(500, "server_error", "x").header("retry-after", "1000000000000"));
    let svc = ServiceBuilder::new()
        .layer(StreamTimeoutLayer::new().total(Duration::from_secs(10)))
        .layer(TransportRetryLayer::new(
            RetryPolicy::default().max_retry_after(Duration::MAX),
        ))
        .service(openai_at(&server));
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
}

fn opening_then_silence_openai() -> Reply {
    Reply::sse([
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: [DONE]\n\n",
    ])
    .stall_after(1)
}

fn opening_then_silence_anthropic() -> Reply {
    Reply::sse([
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg\",\"model\":\"m\",\"usage\":{\"input_tokens\":3}}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ])
    .stall_after(1)
}

#[tokio::test(start_paused = true)]
async fn first_event_means_first_output_after_opening_metadata() {
    for (provider, reply) in [
        ("openai", opening_then_silence_openai()),
        ("anthropic", opening_then_silence_anthropic()),
    ] {
        let server = MockServer::start().await;
        server.push(reply);
        let layer = StreamTimeoutLayer::new()
            .first_event(Duration::from_secs(3))
            .idle(Duration::from_secs(1));
        let stream = if provider == "openai" {
            layer.layer(openai_at(&server)).oneshot(hello()).await
        } else {
            layer.layer(anthropic_at(&server)).oneshot(hello()).await
        };
        let started = tokio::time::Instant::now();
        let (events, err) = drain(stream.unwrap()).await;
        assert!(events.iter().all(|e| !e.is_output()), "{provider}");
        assert!(
            matches!(
                err,
                Some(Error::Timeout {
                    phase: TimeoutPhase::FirstEvent,
                    ..
                })
            ),
            "{provider}: {err:?}"
        );
        // Neither the idle limit (1 s) nor never: the first-output limit.
        assert_eq!(started.elapsed(), Duration::from_secs(3), "{provider}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_before_the_head_names_the_provider() {
    // A server that takes the connection and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let anthropic = llm_tower::Anthropic::builder()
        .base_url(format!("http://{}", silent.local_addr().unwrap()))
        .api_key("k")
        .model("m")
        .build()
        .unwrap();
    let svc = StreamTimeoutLayer::new()
        .first_event(Duration::from_secs(1))
        .layer(anthropic);
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                provider: "anthropic",
                phase: TimeoutPhase::FirstEvent
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_proxy_408_is_a_retried_timeout() {
    let server = MockServer::start().await;
    server.push(Reply::api_error(408, "timeout", "Request timed out"));
    server.push(Reply::text(["ok"]));
    let err = openai_at(&server).oneshot(hello()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::Server,
                provider: "openai"
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let svc = TransportRetryLayer::new(RetryPolicy::default()).layer(openai_at(&server));
    let answer = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(answer.text, "ok");
}

#[tokio::test]
async fn tower_errors_are_classified_by_type() {
    use tower::BoxError;
    let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
    let e = Error::from(elapsed);
    assert!(
        matches!(
            e,
            Error::Timeout {
                phase: TimeoutPhase::Tower,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert!(e.to_string().contains("response-future"), "{e}");

    let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
    let e = Error::from(shed);
    assert!(matches!(e, Error::Overloaded { .. }), "{e:?}");
    let api = e.api_error().expect("what shed the call");
    assert!(api.is_local());
    assert_eq!(
        (api.provider(), api.error_type(), api.message()),
        (
            "tower",
            Some("load_shed"),
            Some("the service below was not ready")
        )
    );
    assert!(e.to_string().contains("load_shed"), "{e}");

    // A Buffer whose worker is gone: final, not transient.
    let svc = tower::service_fn(|_: ChatRequest| async {
        Err::<llm_tower::ChatStream, Error>(Error::Config {
            message: "never".into(),
        })
    });
    let (buffer, worker) = tower::buffer::Buffer::pair(svc, 4);
    drop(worker);
    let err = buffer.oneshot(hello()).await.map(|_| ()).unwrap_err();
    let e = Error::from(err);
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    assert!(!e.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn cancelled_fetches_are_not_failed_ones() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = MockServer::start().await;
    server.accept_keys(["fresh"]);
    server.set_default(Reply::text(["ok"]));
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let layer = llm_tower::RefreshLayer::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(Credential::bearer("fresh"))
        }
    });
    let svc = layer.layer(openai_at(&server));
    // Two callers that fetch in turn are cancelled mid-fetch; the one
    // queued behind them must fetch, not inherit a failure nobody had.
    let a = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(1),
        svc.clone().oneshot(hello()),
    ));
    tokio::task::yield_now().await;
    let b = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(2),
        svc.clone().oneshot(hello()),
    ));
    tokio::task::yield_now().await;
    let c = tokio::spawn(svc.clone().oneshot(hello()));
    assert!(a.await.unwrap().is_err(), "a timed out");
    assert!(b.await.unwrap().is_err(), "b timed out");
    let answer = c.await.unwrap().expect("c fetched its own credential");
    assert_eq!(answer.completion().await.unwrap().text, "ok");
    assert_eq!(fetches.load(Ordering::SeqCst), 3);
    assert_eq!(layer.generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_slot_is_held_while_a_credential_is_fetched() {
    let server = MockServer::start().await;
    server.set_default(Reply::text(["ok"]));
    let limited = llm_tower::StreamConcurrencyLimitLayer::new(1).layer(openai_at(&server));
    let refresh = llm_tower::RefreshLayer::new(|| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, std::io::Error>(Credential::bearer("fresh"))
    })
    .layer(limited.clone());
    let started = tokio::time::Instant::now();
    let waiting = tokio::spawn(refresh.oneshot(hello()));
    tokio::task::yield_now().await;
    // An unrelated call sharing the limit goes at once (on a refresh that
    // held its slot, it would wait for good: that stream is never read).
    let other = tokio::time::timeout(Duration::from_secs(5), limited.oneshot(hello()))
        .await
        .expect("the slot was free during the fetch")
        .unwrap();
    assert_eq!(other.completion().await.unwrap().text, "ok");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.completion().await.unwrap().text, "ok");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test]
async fn extra_merges_into_what_the_encoder_wrote() {
    use serde_json::json;
    let server = MockServer::start().await;
    server.set_default(Reply::text(["ok"]));
    let req = || {
        hello()
            .max_tokens(256)
            .temperature(0.5)
            .extra(
                "generationConfig",
                json!({"responseMimeType": "application/json"}),
            )
            .extra("stream_options", json!({"extra_flag": true}))
            .extra("metadata", json!({"user_id": "u"}))
    };
    let gemini = llm_tower::Gemini::builder()
        .base_url(server.gemini_url())
        .api_key("k")
        .model("m")
        .build()
        .unwrap();
    gemini
        .oneshot(req())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    openai_at(&server)
        .oneshot(req())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    anthropic_at(&server)
        .oneshot(
            req()
                .extra("max_tokens", serde_json::Value::Null)
                .extra("max_tokens", 99),
        )
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let bodies: Vec<serde_json::Value> = server.requests().iter().map(|r| r.json()).collect();
    let config = &bodies[0]["generationConfig"];
    assert_eq!(config["maxOutputTokens"], 256, "{config}");
    assert_eq!(config["temperature"], 0.5);
    assert_eq!(config["responseMimeType"], "application/json");
    let options = &bodies[1]["stream_options"];
    assert_eq!(options["include_usage"], true, "{options}");
    assert_eq!(options["extra_flag"], true);
    assert_eq!(bodies[2]["metadata"]["user_id"], "u");
    assert_eq!(bodies[2]["max_tokens"], 99);
    // `null` removes what the encoder wrote.
    openai_at(&server)
        .oneshot(
            hello()
                .temperature(0.5)
                .extra("temperature", serde_json::Value::Null),
        )
        .await
        .unwrap();
    let last = server.requests().last().unwrap().json();
    assert!(last.get("temperature").is_none(), "{last}");
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_queue_is_bounded() {
    let server = MockServer::start().await;
    server.set_default(Reply::text(["ok"]));
    let svc = llm_tower::RateLimitLayer::new()
        .requests_per_minute(1)
        .max_waiting(2)
        .layer(openai_at(&server));
    // One call fits now; two wait for their minute; the fourth is refused
    // at once, without waiting and without booking.
    let first = svc.clone().oneshot(hello()).await.unwrap();
    first.completion().await.unwrap();
    let second = tokio::spawn(svc.clone().oneshot(hello()));
    let third = tokio::spawn(svc.clone().oneshot(hello()));
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let err = svc.clone().oneshot(hello()).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    let Error::RateLimited { retry_after, error } = &err else {
        panic!("{err:?}");
    };
    assert!(error.is_local(), "{err}");
    assert_eq!(error.error_type(), Some("rate_limit_queue_full"));
    let message = error.message().unwrap_or_default();
    assert!(message.starts_with("2 calls already wait"), "{message}");
    assert!(
        retry_after.is_some_and(|w| w >= Duration::from_secs(60)),
        "{retry_after:?}"
    );
    assert!(second.await.unwrap().is_ok());
    assert!(third.await.unwrap().is_ok());
    assert_eq!(server.request_count(), 3, "the refused call booked nothing");
    // The queue has room again.
    let again = tokio::spawn(svc.clone().oneshot(hello()));
    tokio::task::yield_now().await;
    assert!(!again.is_finished());
    assert!(again.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_fallback_future_polled_again_answers_instead_of_panicking() {
    use std::future::Future;
    let server = MockServer::start().await;
    server.push(Reply::api_error(529, "overloaded_error", "busy"));
    server.push(Reply::text(["from the backup"]));
    let mut svc = llm_tower::FallbackLayer::new(anthropic_at(&server)).layer(openai_at(&server));
    let mut future = Box::pin(tower::Service::call(&mut svc, hello()));
    let answer = (&mut future).await.unwrap();
    assert_eq!(answer.completion().await.unwrap().text, "from the backup");
    let again = std::future::poll_fn(|cx| future.as_mut().poll(cx)).await;
    assert!(matches!(again, Err(Error::Config { .. })), "{again:?}");
}

/// Token counts at the top of the `u64` range add up without overflowing:
/// Gemini's input is its prompt plus its tools' prompt, its output the
/// candidates plus the thoughts.
#[tokio::test]
async fn gemini_token_counts_saturate() {
    let server = MockServer::start().await;
    let body = serde_json::json!({
        "candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"},
                        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": u64::MAX, "toolUsePromptTokenCount": 5,
                          "candidatesTokenCount": u64::MAX, "thoughtsTokenCount": 7},
    });
    server.push(Reply::body(200, "application/json", body.to_string()));
    let c = gemini_at(&server)
        .oneshot(ChatRequest::new("").stream(false))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let usage = c.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (u64::MAX, u64::MAX)
    );
}
