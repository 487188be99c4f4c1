//! GenAiTraceLayer: one span per call with the GenAI attributes, open until
//! the stream ends, with the inner layers' retries as its events.

mod support;

use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{ChatRequest, GenAiTraceLayer, Message, RetryPolicy, TransportRetryLayer};
use support::{Captured, anthropic_at, openai_at};
use tower::{ServiceBuilder, ServiceExt};

fn hello() -> ChatRequest {
    ChatRequest::new("")
        .message(Message::user("a secret question"))
        .max_tokens(64)
}

fn closed(captured: &Captured) -> Vec<String> {
    captured
        .events()
        .into_iter()
        .filter(|e| e.starts_with("CLOSED chat"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn one_span_per_call_closed_when_the_stream_ends() {
    let (captured, _capturing) = Captured::start();
    let server = MockServer::start().await;
    server.push_all([
        Reply::api_error(503, "overloaded_error", "busy"),
        Reply::text(["Low", " tide"]),
    ]);
    let svc = ServiceBuilder::new()
        .layer(GenAiTraceLayer::new())
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(anthropic_at(&server));

    let mut stream = svc.oneshot(hello()).await.unwrap();
    assert!(
        closed(&captured).is_empty(),
        "the head has arrived but the span stays open"
    );
    while let Some(e) = stream.next().await {
        e.unwrap();
    }
    let spans = closed(&captured);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    for field in [
        "gen_ai.system=\"anthropic\"",
        "gen_ai.operation.name=\"chat\"",
        "gen_ai.request.model=\"m\"",
        "gen_ai.request.max_tokens=64",
        "gen_ai.response.id=\"msg_mock_0001\"",
        "gen_ai.response.model=\"m\"",
        "gen_ai.response.finish_reasons=\"end_turn\"",
        "gen_ai.usage.input_tokens=12",
        "gen_ai.usage.output_tokens=2",
        "llm.attempts=2",
        "llm.time_to_first_token_ms=",
    ] {
        assert!(span.contains(field), "{field} missing from {span}");
    }
    assert!(
        !span.contains("a secret question") && !span.contains("Low"),
        "no content by default: {span}"
    );
    let retry = captured
        .events()
        .into_iter()
        .find(|e| e.contains("retrying llm call"))
        .unwrap();
    assert!(
        retry.contains("[in chat]"),
        "the retry is an event of the call's span: {retry}"
    );
}

#[tokio::test(start_paused = true)]
async fn content_is_opt_in_and_errors_are_typed() {
    let (captured, _capturing) = Captured::start();
    let server = MockServer::start().await;
    let svc = ServiceBuilder::new()
        .layer(GenAiTraceLayer::new().record_content(true))
        .service(openai_at(&server));
    svc.clone()
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let span = closed(&captured).pop().unwrap();
    assert!(span.contains("gen_ai.system=\"openai\""));
    assert!(
        span.contains("a secret question"),
        "prompt recorded: {span}"
    );
    assert!(
        span.contains("gen_ai.completion=\"Hello from the mock server.\""),
        "{span}"
    );

    server.push(Reply::api_error(429, "rate_limit_exceeded", "slow"));
    let _ = svc.clone().oneshot(hello()).await;
    assert!(
        closed(&captured)
            .pop()
            .unwrap()
            .contains("error.type=\"rate_limited\"")
    );

    server.push(Reply::text(["a", "b"]).reset_after(1));
    let _ = svc.oneshot(hello()).await.unwrap().completion().await;
    assert!(
        closed(&captured)
            .pop()
            .unwrap()
            .contains("error.type=\"transport\"")
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_closes_its_span() {
    let (captured, _capturing) = Captured::start();
    let server = MockServer::start().await;
    server.push(Reply::text(["a", "b"]).stall_after(1));
    let svc = ServiceBuilder::new()
        .layer(GenAiTraceLayer::new())
        .service(openai_at(&server));
    let mut stream = svc.oneshot(hello()).await.unwrap();
    let _ = stream.next().await;
    assert!(closed(&captured).is_empty());
    drop(stream);
    assert_eq!(closed(&captured).len(), 1);
}
