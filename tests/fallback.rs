//! Fallback: a second service for failures before output, never after.

mod support;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    Anthropic, ChatRequest, Error, FallbackLayer, Message, RetryPolicy, TransportRetryLayer,
};
use support::{anthropic_at, boxed, drain, openai_at, texts};
use tower::{ServiceBuilder, ServiceExt};

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

fn overloaded(e: &Error) -> bool {
    matches!(e, Error::Overloaded { .. })
}

fn paths(server: &MockServer) -> Vec<String> {
    server.requests().into_iter().map(|r| r.path).collect()
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_provider_falls_back_to_another() {
    let server = MockServer::start().await;
    let svc = boxed(
        FallbackLayer::new(openai_at(&server)).when(overloaded),
        anthropic_at(&server),
    );
    for primary_failure in [
        Reply::api_error(529, "overloaded_error", "Overloaded"),
        // The same, arriving inside the stream before any output.
        Reply::text(["x"]).error_event_after(0, "overloaded_error", "Overloaded"),
    ] {
        let before = server.request_count();
        server.push_all([primary_failure, Reply::text(["from", " openai"])]);
        let stream = svc.clone().oneshot(hello()).await.unwrap();
        assert_eq!(stream.meta().provider, "openai");
        let (events, err) = drain(stream).await;
        assert!(err.is_none());
        assert_eq!(texts(&events).concat(), "from openai");
        assert_eq!(
            &paths(&server)[before..],
            ["/v1/messages", "/v1/chat/completions"]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_oauth_token_falls_back_to_an_api_key() {
    let server = MockServer::start().await;
    server.accept_keys(["sk-ant-api"]);
    let oauth = Anthropic::builder()
        .base_url(server.anthropic_url())
        .oauth_token("expired-oauth")
        .model("m")
        .build()
        .unwrap();
    let api_key = Anthropic::builder()
        .base_url(server.anthropic_url())
        .api_key("sk-ant-api")
        .model("m")
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(FallbackLayer::new(api_key).when(|e| matches!(e, Error::Unauthorized { .. })))
        .service(oauth);
    let c = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "Hello from the mock server.");
    let r = server.requests();
    assert_eq!(r[0].header("authorization"), Some("Bearer expired-oauth"));
    assert_eq!(r[1].header("x-api-key"), Some("sk-ant-api"));
}

#[tokio::test(start_paused = true)]
async fn never_after_output() {
    let server = MockServer::start().await;
    let svc = boxed(
        FallbackLayer::new(openai_at(&server)).when(|_| true),
        anthropic_at(&server),
    );
    server.push_all([
        Reply::text(["one", " two", " three"]).error_event_after(
            2,
            "overloaded_error",
            "Overloaded",
        ),
        Reply::text(["would be a second answer"]),
    ]);
    let err = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap_err();
    assert_eq!(err.partial().unwrap().text, "one two");
    assert_eq!(
        paths(&server),
        ["/v1/messages"],
        "the secondary was never called"
    );
}

#[tokio::test(start_paused = true)]
async fn other_failures_are_returned() {
    let server = MockServer::start().await;
    // Default predicate: transient failures only. A 400 is not one.
    let svc = boxed(
        FallbackLayer::new(openai_at(&server)),
        anthropic_at(&server),
    );
    server.push(Reply::api_error(400, "invalid_request_error", "bad"));
    assert!(matches!(
        svc.clone().oneshot(hello()).await,
        Err(Error::InvalidRequest { .. })
    ));
    assert_eq!(server.request_count(), 1);
    // The secondary's own failure is the caller's.
    server.push_all([
        Reply::api_error(503, "overloaded_error", "busy"),
        Reply::api_error(500, "server_error", "down too"),
    ]);
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert_eq!(err.provider(), Some("openai"));
}

#[tokio::test(start_paused = true)]
async fn the_primarys_own_retries_come_first() {
    let server = MockServer::start().await;
    let e500 = || Reply::api_error(500, "api_error", "boom");
    server.push_all([e500(), e500(), e500(), Reply::text(["secondary"])]);
    let primary = ServiceBuilder::new()
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(anthropic_at(&server));
    let svc = boxed(FallbackLayer::new(openai_at(&server)), primary);
    let c = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "secondary");
    assert_eq!(
        paths(&server),
        [
            "/v1/messages",
            "/v1/messages",
            "/v1/messages",
            "/v1/chat/completions"
        ]
    );
}
