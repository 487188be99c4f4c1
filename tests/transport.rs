//! The HTTP level under a provider is any `Service<http::Request<_>>`:
//! tower-http and tower layers stack under a provider like over any client.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use llm_tower::mock::{MockServer, Reply};
use llm_tower::transport::ReqwestTransport;
use llm_tower::{Anthropic, ChatRequest, Error, Gemini, Message, OpenAi, TimeoutPhase};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::set_header::SetRequestHeaderLayer;
use tower_http::trace::TraceLayer;

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

#[tokio::test]
async fn tower_http_layers_sit_under_a_provider() {
    let server = MockServer::start().await;
    // Sets a header and wraps the response body in tower-http's own type.
    let transport = ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::overriding(
            HeaderName::from_static("x-gateway-route"),
            HeaderValue::from_static("eu-west"),
        ))
        .layer(TraceLayer::new_for_http())
        .service(ReqwestTransport::new().unwrap());
    let svc = OpenAi::builder()
        .base_url(server.openai_url())
        .model("m")
        .build_with(transport)
        .unwrap();
    let c = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "Hello from the mock server.");
    assert_eq!(
        server.requests()[0].header("x-gateway-route"),
        Some("eu-west")
    );
}

/// tower's timeout under a provider bounds the response head only: a
/// stream that stalls after its head is not cut — the gap the LLM-level
/// stream timeouts close.
#[tokio::test(start_paused = true)]
async fn a_tower_timeout_covers_the_head_not_the_stream() {
    use futures_util::StreamExt;
    let server = MockServer::start().await;
    server.push(Reply::text(["never sent"]).stall_after(0));
    let transport = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .service(ReqwestTransport::new().unwrap());
    let svc = Anthropic::builder()
        .base_url(server.anthropic_url())
        .model("m")
        .build_with(transport)
        .unwrap();
    let mut stream = svc.oneshot(hello()).await.unwrap();
    let mut seen = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(Ok(e)) = stream.next().await {
            seen.push(e);
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "still open after 120 s, well past the 30 s timeout"
    );
    assert!(
        !seen.is_empty() && seen.iter().all(|e| !e.is_output()),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn tower_timeout_elapsed_maps_to_timeout_class() {
    // A transport that never answers: the head waits forever.
    #[derive(Clone)]
    struct Never;
    impl tower::Service<http::Request<llm_tower::transport::RequestBody>> for Never {
        type Response = http::Response<http_body_util::Empty<bytes::Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<Self::Response, Self::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<llm_tower::transport::RequestBody>) -> Self::Future {
            std::future::pending()
        }
    }
    let transport = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .service(Never);
    let svc = OpenAi::builder().model("m").build_with(transport).unwrap();
    let started = tokio::time::Instant::now();
    let e = svc.oneshot(hello()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                phase: TimeoutPhase::Total,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed_and_carries_no_key() {
    let origin = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    // Another host name for the same machine: what a redirect off-site looks like.
    let target = format!(
        "http://localhost:{}/v1/chat/completions",
        elsewhere.addr().port()
    );
    let openai = OpenAi::builder()
        .base_url(origin.openai_url())
        .api_key("sk-secret-openai")
        .model("m")
        .build()
        .unwrap();
    let anthropic = Anthropic::builder()
        .base_url(origin.anthropic_url())
        .api_key("sk-ant-secret")
        .model("m")
        .build()
        .unwrap();
    let gemini = Gemini::builder()
        .base_url(origin.gemini_url())
        .api_key("AIza-secret-gemini")
        .model("m")
        .build()
        .unwrap();
    // 302 is followed as a GET by clients that follow redirects, 307 with
    // the method and body kept.
    for status in [302, 307] {
        for _ in 0..3 {
            origin.push(
                Reply::body(status, "text/plain", "moved").header("location", target.clone()),
            );
        }
        let results = [
            openai.clone().oneshot(hello()).await.map(drop),
            anthropic.clone().oneshot(hello()).await.map(drop),
            gemini.clone().oneshot(hello()).await.map(drop),
        ];
        for result in results {
            let err = result.unwrap_err();
            assert!(
                matches!(err, Error::InvalidRequest { .. })
                    && err.status().map(|s| s.as_u16()) == Some(status),
                "{err:?}"
            );
        }
    }
    assert_eq!(origin.request_count(), 6);
    assert_eq!(elsewhere.request_count(), 0, "no redirect was followed");
}

/// The default transport's future and body say what they are, and hold
/// nothing a `Debug` could leak; its errors say whether they came while
/// connecting.
#[tokio::test]
async fn the_default_transports_parts_are_debuggable_and_its_errors_classified() {
    use llm_tower::transport::{RequestBody, TransportError};
    use tower::Service;

    let server = MockServer::start().await;
    server.push(Reply::text(["ok"]));
    let mut transport = ReqwestTransport::new().unwrap();
    let request = http::Request::post(format!("{}/chat/completions", server.openai_url()))
        .header("authorization", "Bearer sk-secret")
        .body(RequestBody::from(r#"{"model":"m","stream":true}"#))
        .unwrap();
    let future = transport.call(request);
    assert_eq!(format!("{future:?}"), "ResponseFuture { .. }");
    let response = future.await.unwrap();
    assert!(!format!("{response:?}").contains("sk-secret"));

    // Nothing listens on port 9 of this host.
    let refused = http::Request::post("http://127.0.0.1:9/")
        .body(RequestBody::from("{}"))
        .unwrap();
    let err: TransportError = transport.call(refused).await.unwrap_err();
    assert!(err.is_connect() && !err.is_timeout(), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}
