//! The mock server's key check by dialect, its OpenAI 404 for a path
//! without `/v1`, and text said before a tool call — through the real
//! provider clients.

use http::HeaderName;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    Anthropic, ChatRequest, Completion, Credential, Error, Gemini, Message, OpenAi, StopReason,
};
use serde_json::json;
use tower::ServiceExt;

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

/// `hello()` sent with `credential` instead of any configured key.
fn hello_with(credential: Credential) -> ChatRequest {
    let mut req = hello();
    req.extensions.insert(credential);
    req
}

fn openai(server: &MockServer, key: Option<&str>) -> OpenAi {
    let mut b = OpenAi::builder().base_url(server.openai_url()).model("m");
    if let Some(key) = key {
        b = b.api_key(key);
    }
    b.build().unwrap()
}

fn anthropic(server: &MockServer, key: Option<&str>) -> Anthropic {
    let mut b = Anthropic::builder()
        .base_url(server.anthropic_url())
        .model("m");
    if let Some(key) = key {
        b = b.api_key(key);
    }
    b.build().unwrap()
}

fn gemini(server: &MockServer, key: Option<&str>) -> Gemini {
    let mut b = Gemini::builder().base_url(server.gemini_url()).model("m");
    if let Some(key) = key {
        b = b.api_key(key);
    }
    b.build().unwrap()
}

async fn complete<S>(svc: S, req: ChatRequest) -> Result<Completion, Error>
where
    S: tower::Service<ChatRequest, Response = llm_tower::ChatStream, Error = Error>,
{
    svc.oneshot(req).await?.completion().await
}

fn assert_unauthorized(result: Result<Completion, Error>) -> Error {
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        err.status(),
        Some(http::StatusCode::UNAUTHORIZED),
        "{err:?}"
    );
    err
}

const GOOD: &str = "sk-good-key";
const TEXT: &str = "Hello from the mock server.";

// ---- The right scheme for each dialect ----

#[tokio::test]
async fn openai_takes_a_bearer_key() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let c = complete(openai(&server, Some(GOOD)), hello())
        .await
        .unwrap();
    assert_eq!(c.text, TEXT);
    let want = format!("Bearer {GOOD}");
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some(want.as_str())
    );
}

#[tokio::test]
async fn anthropic_takes_x_api_key_and_a_bearer_oauth_token() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let c = complete(anthropic(&server, Some(GOOD)), hello())
        .await
        .unwrap();
    assert_eq!(c.text, TEXT);
    assert_eq!(server.requests()[0].header("x-api-key"), Some(GOOD));

    // `Credential::api_key` goes to Anthropic as `x-api-key`.
    let c = complete(
        anthropic(&server, None),
        hello_with(Credential::api_key(GOOD)),
    )
    .await
    .unwrap();
    assert_eq!(c.text, TEXT);
    assert_eq!(server.requests()[1].header("x-api-key"), Some(GOOD));

    // An OAuth token comes as a bearer token.
    let oauth = Anthropic::builder()
        .base_url(server.anthropic_url())
        .oauth_token(GOOD)
        .model("m")
        .build()
        .unwrap();
    let c = complete(oauth, hello()).await.unwrap();
    assert_eq!(c.text, TEXT);
    let want = format!("Bearer {GOOD}");
    assert_eq!(
        server.requests()[2].header("authorization"),
        Some(want.as_str())
    );
    assert_eq!(server.requests()[2].header("x-api-key"), None);
}

#[tokio::test]
async fn gemini_takes_x_goog_api_key_and_a_bearer_token() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let c = complete(gemini(&server, Some(GOOD)), hello())
        .await
        .unwrap();
    assert_eq!(c.text, TEXT);
    assert_eq!(server.requests()[0].header("x-goog-api-key"), Some(GOOD));

    // An OAuth access token, as Google's APIs and Vertex AI take them.
    let c = complete(gemini(&server, None), hello_with(Credential::bearer(GOOD)))
        .await
        .unwrap();
    assert_eq!(c.text, TEXT);
    let want = format!("Bearer {GOOD}");
    assert_eq!(
        server.requests()[1].header("authorization"),
        Some(want.as_str())
    );
}

// ---- A key in the wrong header ----

// A `Credential` for `x-api-key` is the provider's API key to the client
// (OpenAI gets it as a bearer key): an extra header on the builder puts the
// key in `x-api-key` as it is.

#[tokio::test]
async fn openai_refuses_a_key_in_x_api_key() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let svc = OpenAi::builder()
        .base_url(server.openai_url())
        .header("x-api-key", GOOD)
        .model("m")
        .build()
        .unwrap();
    let err = assert_unauthorized(complete(svc, hello()).await);
    assert_eq!(err.provider(), Some("openai"));
    let r = &server.requests()[0];
    assert_eq!(
        r.header("x-api-key"),
        Some(GOOD),
        "sent, in the wrong header"
    );
    assert_eq!(r.header("authorization"), None);
}

#[tokio::test]
async fn openai_refuses_a_key_in_x_goog_api_key() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let req = hello_with(Credential::header(
        HeaderName::from_static("x-goog-api-key"),
        GOOD,
    ));
    assert_unauthorized(complete(openai(&server, None), req).await);
}

#[tokio::test]
async fn anthropic_refuses_a_key_in_x_goog_api_key() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let req = hello_with(Credential::header(
        HeaderName::from_static("x-goog-api-key"),
        GOOD,
    ));
    let err = assert_unauthorized(complete(anthropic(&server, None), req).await);
    assert_eq!(err.provider(), Some("anthropic"));
    assert_eq!(
        err.api_error().unwrap().error_type(),
        Some("authentication_error")
    );
}

#[tokio::test]
async fn gemini_refuses_a_key_in_x_api_key() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let svc = Gemini::builder()
        .base_url(server.gemini_url())
        .header("x-api-key", GOOD)
        .model("m")
        .build()
        .unwrap();
    let err = assert_unauthorized(complete(svc, hello()).await);
    assert_eq!(err.provider(), Some("gemini"));
}

#[tokio::test]
async fn a_wrong_key_in_the_right_header_is_refused_in_every_dialect() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    assert_unauthorized(complete(openai(&server, Some("sk-bad")), hello()).await);
    assert_unauthorized(complete(anthropic(&server, Some("sk-bad")), hello()).await);
    assert_unauthorized(complete(gemini(&server, Some("sk-bad")), hello()).await);
    assert_unauthorized(complete(openai(&server, None), hello()).await);
    assert_eq!(server.request_count(), 4);
}

/// The mock's 401 echoes the presented key in full, as a careless server
/// might: read with a plain HTTP client, which hides nothing.
#[tokio::test]
async fn the_401_echoes_the_presented_key_in_the_provider_s_shape() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let bad = "sk-bad-echoed-1234";
    let answer = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.openai_url()))
        .bearer_auth(bad)
        .header("content-type", "application/json")
        .body(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let body: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(
        body["error"]["message"],
        "invalid api key: Incorrect API key provided: sk-bad-echoed-1234"
    );
}

/// What the server echoed is masked before it reaches `ApiError`, so no
/// `Display`, `Debug` or log line repeats it: a key in the right header, a
/// key in a header the provider ignores, a bearer token, each provider.
#[tokio::test]
async fn an_echoed_key_stays_out_of_the_error() {
    let server = MockServer::start().await;
    server.accept_keys([GOOD]);
    let bad = "sk-bad-echoed-1234";
    let in_wrong_header = OpenAi::builder()
        .base_url(server.openai_url())
        .header("x-api-key", bad)
        .model("m")
        .build()
        .unwrap();
    for (what, result) in [
        (
            "openai",
            complete(openai(&server, Some(bad)), hello()).await,
        ),
        (
            "anthropic",
            complete(anthropic(&server, Some(bad)), hello()).await,
        ),
        (
            "gemini",
            complete(gemini(&server, Some(bad)), hello()).await,
        ),
        (
            "gemini bearer",
            complete(gemini(&server, None), hello_with(Credential::bearer(bad))).await,
        ),
        (
            "openai, extra header",
            complete(in_wrong_header.clone(), hello()).await,
        ),
        (
            "openai, stream off",
            complete(openai(&server, Some(bad)), hello().stream(false)).await,
        ),
    ] {
        let err = assert_unauthorized(result);
        let message = err.api_error().unwrap().message().unwrap().to_owned();
        assert!(
            message.starts_with("invalid api key: Incorrect API key provided: [redacted]"),
            "{what}: {message}"
        );
        for shown in [err.to_string(), format!("{err:?}"), message] {
            assert!(!shown.contains(bad), "{what}: {shown}");
            assert!(!shown.contains("echoed"), "{what}: {shown}");
        }
    }
}

/// A key echoed inside a 200 stream's error event is masked too.
#[tokio::test]
async fn a_key_echoed_in_an_error_event_is_masked() {
    let server = MockServer::start().await;
    let key = "sk-streamed-secret-42";
    server.push(Reply::sse([
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"key sk-streamed-secret-42 revoked\"}}\n\n",
    ]));
    let err = complete(anthropic(&server, Some(key)), hello())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        err.api_error().unwrap().message(),
        Some("key [redacted] revoked")
    );
    assert!(!format!("{err} {err:?}").contains(key));
}

/// `Credential::header` puts the secret in the header it names, as it is:
/// only `Credential::api_key` follows the provider's own key header.
#[tokio::test]
async fn a_named_header_credential_is_sent_as_named() {
    let server = MockServer::start().await;
    let req = hello_with(Credential::header(
        HeaderName::from_static("x-api-key"),
        GOOD,
    ));
    complete(openai(&server, None), req).await.unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.header("x-api-key"), Some(GOOD));
    assert_eq!(r.header("authorization"), None);
    // The API key, by contrast, goes where OpenAI reads keys.
    complete(openai(&server, None), hello_with(Credential::api_key(GOOD)))
        .await
        .unwrap();
    let r = &server.requests()[1];
    let want = format!("Bearer {GOOD}");
    assert_eq!(r.header("authorization"), Some(want.as_str()));
    assert_eq!(r.header("x-api-key"), None);
}

// ---- OpenAI without /v1 ----

#[tokio::test]
async fn openai_without_v1_is_openai_s_404() {
    let server = MockServer::start().await;
    let svc = OpenAi::builder()
        .base_url(format!("http://{}", server.addr()))
        .api_key(GOOD)
        .model("m")
        .build()
        .unwrap();
    for stream in [true, false] {
        let err = complete(svc.clone(), hello().stream(stream))
            .await
            .unwrap_err();
        match &err {
            Error::InvalidRequest { status, error } => {
                assert_eq!(*status, http::StatusCode::NOT_FOUND);
                assert_eq!(error.error_type(), Some("invalid_request_error"));
                assert_eq!(
                    error.message(),
                    Some("Invalid URL (POST /chat/completions)")
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(server.request_count(), 2, "recorded, not served");
    assert_eq!(server.pending_replies(), 0);
    assert_eq!(server.requests()[0].path, "/chat/completions");
}

#[tokio::test]
async fn openai_without_v1_uses_no_scripted_reply() {
    let server = MockServer::start().await;
    server.push(Reply::text(["kept"]));
    let svc = OpenAi::builder()
        .base_url(server.url())
        .model("m")
        .build()
        .unwrap();
    assert!(complete(svc, hello()).await.is_err());
    assert_eq!(server.pending_replies(), 1);
    let c = complete(openai(&server, None), hello()).await.unwrap();
    assert_eq!(c.text, "kept");
}

// ---- Text before a tool call ----

fn text_then_call() -> Reply {
    Reply::text_then_tool_call(
        ["Let me check", " the tides."],
        "call_1",
        "tide",
        [r#"{"port":"#, r#""Brest"}"#],
    )
}

fn assert_text_then_call(c: &Completion, what: &str) {
    assert_eq!(c.text, "Let me check the tides.", "{what}: {c:?}");
    assert_eq!(c.tool_calls.len(), 1, "{what}: {c:?}");
    let call = &c.tool_calls[0];
    assert_eq!(call.name, "tide", "{what}");
    assert_eq!(call.arguments, json!({"port": "Brest"}), "{what}");
    assert_eq!(c.stop_reason, Some(StopReason::ToolUse), "{what}");
}

#[tokio::test]
async fn text_before_a_tool_call_folds_for_openai() {
    let server = MockServer::start().await;
    for stream in [true, false] {
        server.push(text_then_call());
        let c = complete(openai(&server, None), hello().stream(stream))
            .await
            .unwrap();
        assert_text_then_call(&c, &format!("openai stream={stream}"));
        assert_eq!(c.tool_calls[0].id, "call_1");
    }
}

#[tokio::test]
async fn text_before_a_tool_call_folds_for_anthropic() {
    let server = MockServer::start().await;
    for stream in [true, false] {
        server.push(text_then_call());
        let c = complete(anthropic(&server, None), hello().stream(stream))
            .await
            .unwrap();
        assert_text_then_call(&c, &format!("anthropic stream={stream}"));
        assert_eq!(c.tool_calls[0].id, "call_1");
    }
}

#[tokio::test]
async fn text_before_a_tool_call_folds_for_gemini() {
    let server = MockServer::start().await;
    for stream in [true, false] {
        server.push(text_then_call());
        let c = complete(gemini(&server, None), hello().stream(stream))
            .await
            .unwrap();
        assert_text_then_call(&c, &format!("gemini stream={stream}"));
    }
}

#[tokio::test]
async fn a_tool_call_alone_is_unchanged() {
    let server = MockServer::start().await;
    for stream in [true, false] {
        server.push(Reply::tool_call("call_1", "tide", [r#"{"port":"Brest"}"#]));
        let c = complete(openai(&server, None), hello().stream(stream))
            .await
            .unwrap();
        assert_eq!(c.text, "");
        assert_eq!(c.tool_calls[0].arguments, json!({"port": "Brest"}));
        let no_text = Reply::text_then_tool_call(
            Vec::<String>::new(),
            "call_1",
            "tide",
            [r#"{"port":"Brest"}"#],
        );
        server.push(no_text);
        let d = complete(anthropic(&server, None), hello().stream(stream))
            .await
            .unwrap();
        assert_eq!(d.text, "");
        assert_eq!(d.tool_calls.len(), 1);
    }
}

#[tokio::test]
async fn a_stream_reset_after_the_text_keeps_the_text() {
    let server = MockServer::start().await;
    // Two text deltas, then the reset, before the call's arguments.
    server.push(text_then_call().reset_after(2));
    let err = complete(anthropic(&server, None), hello())
        .await
        .unwrap_err();
    match err {
        Error::Interrupted { partial, .. } => {
            assert_eq!(partial.text, "Let me check the tides.");
            assert!(
                partial
                    .tool_calls
                    .iter()
                    .all(|c| c.raw_arguments.is_empty()),
                "{partial:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}
