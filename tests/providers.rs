//! Provider services against the mock server on loopback: wire encoding,
//! decoding in both modes, and error classification.

mod support;

use std::time::Duration;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    Anthropic, ChatRequest, Error, Message, OpenAi, StopReason, StreamEvent, Tool, ToolChoice,
    TransportPhase,
};
use serde_json::json;
use support::{drain, texts};
use tower::ServiceExt;

fn openai(server: &MockServer) -> OpenAi {
    OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("sk-test-openai")
        .model("gpt-test")
        .build()
        .unwrap()
}

fn anthropic(server: &MockServer) -> Anthropic {
    Anthropic::builder()
        .base_url(server.anthropic_url())
        .api_key("sk-ant-test")
        .model("claude-test")
        .build()
        .unwrap()
}

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

#[tokio::test]
async fn openai_request_on_the_wire() {
    let server = MockServer::start().await;
    let req = ChatRequest::new("")
        .message(Message::system("be brief"))
        .message(Message::user("hello"))
        .max_tokens(50)
        .temperature(0.5)
        .tool(Tool::new("tide", "tide times", json!({"type": "object"})))
        .tool_choice(ToolChoice::Tool("tide".into()))
        .extra("seed", 7)
        .extra("temperature", 0.1);
    let c = openai(&server)
        .oneshot(req)
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "Hello from the mock server.");
    assert_eq!(c.usage.unwrap().output_tokens, 5);

    let r = &server.requests()[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test-openai"));
    assert_eq!(r.header("accept"), Some("text/event-stream"));
    let body = r.json();
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
        ])
    );
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["temperature"], 0.1, "extra overrides the encoder");
    assert_eq!(body["tools"][0]["function"]["name"], "tide");
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "tide"}})
    );
}

#[tokio::test]
async fn openai_tool_round_trip_encoding() {
    let server = MockServer::start().await;
    server.push(Reply::tool_call(
        "call_1",
        "tide",
        [r#"{"port":"#, r#""Brest"}"#],
    ));
    let svc = openai(&server);
    let first = svc
        .clone()
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(first.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(first.tool_calls[0].arguments, json!({"port": "Brest"}));

    let follow = hello()
        .message(first.to_message())
        .message(Message::tool_result("call_1", "06:12"));
    svc.oneshot(follow)
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let messages = server.requests()[1].json()["messages"].clone();
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], serde_json::Value::Null);
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["arguments"],
        r#"{"port":"Brest"}"#
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "06:12"})
    );
}

#[tokio::test]
async fn anthropic_request_on_the_wire() {
    let server = MockServer::start().await;
    let req = ChatRequest::new("claude-other")
        .message(Message::system("one"))
        .message(Message::system("two"))
        .message(Message::user("hello"));
    let c = anthropic(&server)
        .oneshot(req)
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "Hello from the mock server.");
    assert_eq!(c.model.as_deref(), Some("claude-other"));

    let r = &server.requests()[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    let body = r.json();
    assert_eq!(body["model"], "claude-other");
    assert_eq!(body["system"], "one\n\ntwo");
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    );
}

#[tokio::test]
async fn anthropic_oauth_bearer() {
    let server = MockServer::start().await;
    let svc = Anthropic::builder()
        .base_url(server.anthropic_url())
        .oauth_token("oauth-access-token")
        .header("anthropic-beta", "oauth-2025-04-20")
        .model("claude-test")
        .build()
        .unwrap();
    svc.oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.header("authorization"), Some("Bearer oauth-access-token"));
    assert_eq!(r.header("x-api-key"), None);
    assert_eq!(r.header("anthropic-beta"), Some("oauth-2025-04-20"));
}

/// Streaming and non-streaming calls yield the same events, but for the
/// granularity of the deltas.
#[tokio::test]
async fn both_modes_yield_the_same_answer() {
    let server = MockServer::start().await;
    for dialect in ["openai", "anthropic"] {
        for reply in [
            Reply::text(["Hi", " there"]),
            Reply::tool_call("call_9", "tide", [r#"{"port": "#, r#""Brest"}"#]),
        ] {
            let mut answers = Vec::new();
            for stream in [true, false] {
                server.push(reply.clone());
                let req = hello().stream(stream);
                let s = match dialect {
                    "openai" => openai(&server).oneshot(req).await.unwrap(),
                    _ => anthropic(&server).oneshot(req).await.unwrap(),
                };
                let (events, err) = drain(s).await;
                assert!(err.is_none(), "{dialect} stream={stream}: {err:?}");
                assert!(matches!(events[0], StreamEvent::MessageStart { .. }));
                let mut b = llm_tower::CompletionBuilder::default();
                events.iter().for_each(|e| b.push(e));
                let mut c = b.finish();
                // A whole Anthropic message carries tool input as an object:
                // its text may be spaced differently from the streamed one.
                c.tool_calls
                    .iter_mut()
                    .for_each(|t| t.raw_arguments.clear());
                answers.push(c);
            }
            assert_eq!(answers[0], answers[1], "{dialect}");
        }
    }
    let non_streaming = &server.requests()[1];
    assert_eq!(non_streaming.json()["stream"], false);
    assert_eq!(non_streaming.header("accept"), Some("application/json"));
}

async fn error_of(server: &MockServer, reply: Reply, dialect: &str) -> Error {
    server.push(reply);
    let result = match dialect {
        "openai" => openai(server).oneshot(hello()).await,
        _ => anthropic(server).oneshot(hello()).await,
    };
    match result {
        Ok(stream) => stream.completion().await.expect_err("the call fails"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn http_errors_are_classified() {
    let server = MockServer::start().await;
    for dialect in ["openai", "anthropic"] {
        let e = error_of(
            &server,
            Reply::api_error(401, "authentication_error", "bad key"),
            dialect,
        )
        .await;
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
        assert!(!e.is_retryable());
        assert_eq!(e.api_error().unwrap().message(), Some("bad key"));
        assert_eq!(e.api_error().unwrap().request_id(), Some("req_mock"));

        let e = error_of(
            &server,
            Reply::api_error(403, "permission_error", "no"),
            dialect,
        )
        .await;
        assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");

        let e = error_of(
            &server,
            Reply::api_error(429, "rate_limit_error", "slow").header("retry-after", "2"),
            dialect,
        )
        .await;
        assert!(
            matches!(e, Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(2)),
            "{e:?}"
        );
        assert!(e.is_retryable());

        let e = error_of(
            &server,
            Reply::api_error(529, "overloaded_error", "Overloaded"),
            dialect,
        )
        .await;
        assert!(matches!(e, Error::Overloaded { .. }), "{e:?}");
        assert_eq!(e.status().map(|s| s.as_u16()), Some(529));

        let e = error_of(&server, Reply::api_error(500, "api_error", "boom"), dialect).await;
        assert!(
            matches!(e, Error::Server { status, .. } if status == 500),
            "{e:?}"
        );
        assert!(e.is_retryable());

        let e = error_of(
            &server,
            Reply::api_error(400, "invalid_request_error", "bad"),
            dialect,
        )
        .await;
        assert!(
            matches!(e, Error::InvalidRequest { status, .. } if status == 400),
            "{e:?}"
        );
        assert!(!e.is_retryable());

        let e = error_of(
            &server,
            Reply::api_error(503, "api_error", "x").header("x-should-retry", "false"),
            dialect,
        )
        .await;
        assert!(!e.is_retryable(), "x-should-retry: false wins");
        let e = error_of(
            &server,
            Reply::api_error(400, "invalid_request_error", "x").header("x-should-retry", "true"),
            dialect,
        )
        .await;
        assert!(e.is_retryable(), "x-should-retry: true wins");
    }
    let e = error_of(
        &server,
        Reply::api_error(429, "insufficient_quota", "pay"),
        "openai",
    )
    .await;
    assert!(matches!(e, Error::RateLimited { .. }));
    assert!(
        !e.is_retryable(),
        "an exhausted quota does not come back by waiting"
    );
}

#[tokio::test]
async fn mid_stream_error_events_are_classified() {
    let server = MockServer::start().await;
    for dialect in ["openai", "anthropic"] {
        // Before output: the error itself.
        let e = error_of(
            &server,
            Reply::text(["a", "b"]).error_event_after(0, "overloaded_error", "Overloaded"),
            dialect,
        )
        .await;
        assert!(matches!(e, Error::Overloaded { .. }), "{dialect}: {e:?}");
        // After output: Interrupted, with the output kept.
        let e = error_of(
            &server,
            Reply::text(["a", "b"]).error_event_after(1, "overloaded_error", "Overloaded"),
            dialect,
        )
        .await;
        assert_eq!(e.partial().map(|p| p.text.as_str()), Some("a"), "{dialect}");
        assert!(
            matches!(e, Error::Interrupted { ref source, .. } if matches!(**source, Error::Overloaded { .. }))
        );
    }
}

#[tokio::test]
async fn html_error_page_is_a_server_error_with_its_title() {
    let server = MockServer::start().await;
    let page = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>";
    let e = error_of(&server, Reply::body(502, "text/html", page), "openai").await;
    assert!(
        matches!(e, Error::Server { status, .. } if status == 502),
        "{e:?}"
    );
    assert_eq!(e.api_error().unwrap().message(), Some("502 Bad Gateway"));
    assert!(e.is_retryable());
}

#[tokio::test]
async fn html_page_with_200_is_a_decode_error() {
    let server = MockServer::start().await;
    let page = "<!doctype html><html><body>Please sign in to the captive portal</body></html>";
    let e = error_of(
        &server,
        Reply::body(200, "text/html; charset=utf-8", page),
        "anthropic",
    )
    .await;
    assert!(
        matches!(
            &e,
            Error::Decode {
                source: llm_tower::DecodeError::UnexpectedContentType { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("captive portal"));
}

#[tokio::test]
async fn malformed_json_event_is_a_decode_error() {
    let server = MockServer::start().await;
    let e = error_of(
        &server,
        Reply::sse(["data: {\"choices\": [\n\n", "data: [DONE]\n\n"]),
        "openai",
    )
    .await;
    assert!(
        matches!(
            &e,
            Error::Decode {
                source: llm_tower::DecodeError::Json { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = error_of(
        &server,
        Reply::sse(["event: content_block_delta\ndata: {\"index\": 0, \"delta\": 5}\n\n"]),
        "anthropic",
    )
    .await;
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    // A non-streaming body that is not JSON.
    server.push(Reply::body(200, "application/json", "{\"id\": "));
    let e = openai(&server)
        .oneshot(hello().stream(false))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
}

#[tokio::test]
async fn a_10_mb_line_is_refused_without_buffering_it() {
    let server = MockServer::start().await;
    let line = format!("data: {}\n\n", "x".repeat(10_000_000));
    let e = error_of(&server, Reply::sse([line]).chunk_size(64 * 1024), "openai").await;
    assert!(
        matches!(&e, Error::Decode { source: llm_tower::DecodeError::EventTooLarge { limit }, .. } if *limit == 4 << 20),
        "{e:?}"
    );
    // A line that never ends: a client that read to the line's end before
    // judging its size would wait here forever. The error comes once the
    // limit is passed.
    let endless = format!("data: {}", "x".repeat(6 << 20));
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        error_of(
            &server,
            Reply::sse([endless]).chunk_size(64 * 1024).stall_after(1),
            "openai",
        ),
    )
    .await
    .expect("refused at the limit, not at the end of the line");
    assert!(
        matches!(
            &e,
            Error::Decode {
                source: llm_tower::DecodeError::EventTooLarge { .. },
                ..
            }
        ),
        "{e:?}"
    );
    // A smaller limit applies to non-streaming bodies too.
    server.push(Reply::text(["x".repeat(2000)]));
    let svc = OpenAi::builder()
        .base_url(server.openai_url())
        .model("m")
        .max_event_size(1000)
        .build()
        .unwrap();
    let e = svc
        .oneshot(hello().stream(false))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Decode {
                source: llm_tower::DecodeError::EventTooLarge { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn truncated_streams_are_transport_errors() {
    let server = MockServer::start().await;
    for dialect in ["openai", "anthropic"] {
        // Cut before any output.
        let e = error_of(&server, Reply::text(["a", "b"]).truncate_after(0), dialect).await;
        assert!(
            matches!(
                e,
                Error::Transport {
                    phase: TransportPhase::Body,
                    ..
                }
            ),
            "{dialect}: {e:?}"
        );
        assert!(e.is_retryable());
        // Cut after output.
        let e = error_of(&server, Reply::text(["a", "b"]).truncate_after(1), dialect).await;
        assert_eq!(e.partial().unwrap().text, "a");
    }
    // An empty 200 body.
    let e = error_of(&server, Reply::sse(Vec::<String>::new()), "openai").await;
    assert!(
        matches!(
            e,
            Error::Transport {
                phase: TransportPhase::Body,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn resets_are_transport_errors_by_phase() {
    let server = MockServer::start().await;
    let e = error_of(&server, Reply::reset(), "openai").await;
    assert!(
        matches!(
            e,
            Error::Transport {
                phase: TransportPhase::Request,
                ..
            }
        ),
        "{e:?}"
    );

    server.push(Reply::text(["one", "two", "three", "four"]).reset_after(3));
    let (events, err) = drain(openai(&server).oneshot(hello()).await.unwrap()).await;
    assert_eq!(texts(&events), ["one", "two", "three"]);
    assert!(
        matches!(
            err,
            Some(Error::Transport {
                phase: TransportPhase::Body,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    // Bound, never listening: connecting is refused, and the port is held
    // so that no other test's server takes it meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let svc = OpenAi::builder()
        .base_url(format!("http://127.0.0.1:{port}/v1"))
        .model("m")
        .build()
        .unwrap();
    let e = svc.oneshot(hello()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transport {
                phase: TransportPhase::Connect,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
}

#[tokio::test]
async fn invalid_utf8_split_across_chunks_is_replaced_not_fatal() {
    let server = MockServer::start().await;
    let mut body = Vec::new();
    body.extend_from_slice(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\xC3\xA9 \xF0\x9F\x8C\x8A \xFF!\"}}]}\n\n");
    body.extend_from_slice(b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
    server.push(Reply::body(200, "text/event-stream", body).chunk_size(1));
    let c = openai(&server)
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "café 🌊 \u{FFFD}!");
}

#[tokio::test(start_paused = true)]
async fn stalled_stream_can_be_dropped() {
    let server = MockServer::start().await;
    server.push(Reply::text(["a", "b"]).stall_after(1));
    let mut stream = openai(&server).oneshot(hello()).await.unwrap();
    use futures_util::StreamExt;
    let mut got_text = false;
    while let Some(Ok(e)) = stream.next().await {
        if matches!(e, StreamEvent::TextDelta { .. }) {
            got_text = true;
            break;
        }
    }
    assert!(got_text);
    let next = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
    assert!(next.is_err(), "the stream stalls");
    assert_eq!(server.live_connections(), 1);
    drop(stream);
    // The client closed the connection: the server sees it go as soon as
    // it runs (a paused clock: the sleeps take no real time).
    for _ in 0..100 {
        if server.live_connections() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("dropping the stream closes its connection");
}

#[tokio::test]
async fn missing_model_and_bad_config_are_config_errors() {
    let server = MockServer::start().await;
    let svc = OpenAi::builder()
        .base_url(server.openai_url())
        .build()
        .unwrap();
    let e = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert_eq!(server.request_count(), 0);

    assert!(matches!(
        OpenAi::builder().base_url("not a url").build(),
        Err(Error::Config { .. })
    ));
    let e = OpenAi::builder()
        .api_key("sk-bad\nkey")
        .build()
        .unwrap_err();
    assert!(!e.to_string().contains("sk-bad"), "{e}");
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let server = MockServer::start().await;
    let o = OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("sk-secret-1")
        .header("x-gw-key", "gw-secret-2");
    let a = Anthropic::builder().api_key("sk-ant-secret-3");
    let b = Anthropic::builder().oauth_token("oauth-secret-4");
    let text = format!(
        "{o:?} {a:?} {b:?} {:?} {:?} {:?}",
        o.clone().build().unwrap(),
        a.clone().build().unwrap(),
        b.clone().build().unwrap()
    );
    for secret in [
        "sk-secret-1",
        "gw-secret-2",
        "sk-ant-secret-3",
        "oauth-secret-4",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    // A refused call's error does not repeat the key, even where the server
    // echoed it.
    let e = error_of(
        &server,
        Reply::api_error(
            401,
            "invalid_api_key",
            "Incorrect API key provided: sk-test-openai.",
        ),
        "openai",
    )
    .await;
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("sk-test-openai"), "{shown}");
    assert!(
        shown.contains("Incorrect API key provided: [redacted]."),
        "{shown}"
    );
}

/// An error body is read up to 64 KiB: what lies beyond is never parsed,
/// and a body that never ends does not hold the call.
#[tokio::test(start_paused = true)]
async fn an_error_body_is_read_up_to_64_kib() {
    let server = MockServer::start().await;
    // The error's type comes after 64 KiB of padding: unread, so the class
    // is the status's (a 500 is `server`, where `overloaded_error` would
    // have made it `overloaded`).
    let padded = format!(
        r#"{{"pad": "{}", "error": {{"type": "overloaded_error", "message": "busy"}}}}"#,
        "x".repeat(64 * 1024)
    );
    let e = error_of(
        &server,
        Reply::body(500, "application/json", padded),
        "openai",
    )
    .await;
    assert!(matches!(e, Error::Server { .. }), "{e:?}");
    let api = e.api_error().unwrap();
    assert_eq!(api.error_type(), None);
    assert!(
        api.message().unwrap().len() <= 200,
        "a snippet, not the body"
    );

    // Just under the cap, the same body is read whole.
    let fits = r#"{"pad": "xxxx", "error": {"type": "overloaded_error", "message": "busy"}}"#;
    let e = error_of(
        &server,
        Reply::body(500, "application/json", fits),
        "openai",
    )
    .await;
    assert!(matches!(e, Error::Overloaded { .. }), "{e:?}");

    // An error body that stops after 64 KiB and never ends: the error comes
    // at once, not after a wait for the rest.
    // (A body with a stall is cut in its middle, here after 80 KiB.)
    let endless = "y".repeat(160 * 1024);
    server.push(Reply::body(503, "application/json", endless).stall_after(0));
    let started = tokio::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(3600), openai(&server).oneshot(hello()))
        .await
        .expect("the error does not wait for the body's end")
        .unwrap_err();
    assert!(matches!(e, Error::Overloaded { .. }), "{e:?}");
    assert_eq!(started.elapsed(), Duration::ZERO);
}
