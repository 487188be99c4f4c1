//! Gemini: transcripts decoded whatever the chunking (in-process), the
//! request on the wire and error classification (against the mock server).

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, ContentPart, Credential, Error, Gemini, Message, RefreshLayer, StopReason,
    StreamEvent, Tool, ToolChoice, TransportPhase, Usage,
};
use serde_json::json;
use support::{FixtureTransport, drain, fixture, texts};
use tower::{Layer, ServiceExt};

async fn decode(name: &str, chunk: usize) -> (Vec<StreamEvent>, Option<Error>) {
    let svc = Gemini::builder()
        .api_key("gm-fixture")
        .model("gemini-2.5-flash")
        .build_with(FixtureTransport::sse(fixture(name), chunk))
        .unwrap();
    let stream = svc
        .oneshot(ChatRequest::new("").message(Message::user("hi")))
        .await
        .unwrap();
    drain(stream).await
}

/// The events of a transcript, the same at every chunking.
async fn transcript(name: &str) -> (Vec<StreamEvent>, Option<Error>) {
    support::each_chunking(name, |c| decode(name, c)).await
}

#[tokio::test]
async fn text_stream_with_usage_and_no_terminator() {
    let (events, err) = transcript("gemini_text.sse").await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events[0],
        StreamEvent::MessageStart {
            id: Some("resp-gem-1".into()),
            model: Some("gemini-2.5-flash".into()),
        }
    );
    assert_eq!(
        texts(&events).concat(),
        "Tides at Brest: high water 06:12, low 12:31 — côte 🌊."
    );
    let n = events.len();
    assert_eq!(
        events[n - 2],
        StreamEvent::Usage(Usage {
            input_tokens: 9,
            output_tokens: 15,
            reasoning_tokens: None,
            cache_read_input_tokens: None,
            cache_creation_input_tokens: None,
        }),
        "one usage, the last, before the end"
    );
    assert_eq!(
        events[n - 1],
        StreamEvent::Done {
            stop_reason: Some(StopReason::EndTurn)
        }
    );
}

#[tokio::test]
async fn thinking_then_a_whole_function_call_with_its_signature() {
    let (events, err) = transcript("gemini_thinking_tool.sse").await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events[1..5],
        [
            StreamEvent::ThinkingDelta {
                text: "The user wants tide times; call the tool.".into()
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "gemini-call-0".into(),
                name: "tide_times".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"{"port":"Brest","day":"2026-11-21"}"#.into()
            },
            StreamEvent::ThinkingSignature {
                signature: "CiQB0e2Kb7sig==".into()
            },
        ]
    );
    let usage = match &events[5] {
        StreamEvent::Usage(u) => *u,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (31, 30),
        "thoughts count as output"
    );
    assert_eq!(usage.reasoning_tokens, Some(12));
    assert_eq!(usage.cache_read_input_tokens, Some(8));
    assert_eq!(
        events[6],
        StreamEvent::Done {
            stop_reason: Some(StopReason::ToolUse)
        },
        "STOP after a function call is a tool use"
    );

    // Folded, and sent back: the call keeps its name, the made-up id stays
    // home, the result finds its call's name.
    let c = Gemini::builder()
        .model("m")
        .build_with(FixtureTransport::sse(
            fixture("gemini_thinking_tool.sse"),
            64,
        ))
        .unwrap()
        .oneshot(ChatRequest::new("").message(Message::user("hi")))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.tool_calls[0].arguments["port"], "Brest");
    let server = MockServer::start().await;
    let call = &c.tool_calls[0];
    let req = ChatRequest::new("")
        .message(Message::user("tides?"))
        .message(Message::new(
            llm_tower::Role::Assistant,
            vec![ContentPart::ToolUse {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            }],
        ))
        .message(Message::tool_result(&call.id, "06:12 / 12:31"));
    gemini(&server).oneshot(req).await.unwrap();
    let body = server.requests()[0].json();
    assert_eq!(
        body["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {
            "name": "tide_times", "args": {"port": "Brest", "day": "2026-11-21"}}}]})
    );
    assert_eq!(
        body["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {
            "name": "tide_times", "response": {"result": "06:12 / 12:31"}}}]})
    );
}

#[tokio::test]
async fn an_error_chunk_mid_stream_is_classified_and_the_output_kept() {
    let (events, err) = transcript("gemini_overloaded_midstream.sse").await;
    assert_eq!(texts(&events), ["Partial "]);
    let err = err.unwrap();
    assert!(matches!(err, Error::Overloaded { .. }), "{err:?}");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
}

#[tokio::test]
async fn a_blocked_prompt_ends_with_a_content_filter_stop() {
    let (events, err) = transcript("gemini_prompt_blocked.sse").await;
    assert!(err.is_none());
    assert!(!events.iter().any(StreamEvent::is_output));
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Done {
            stop_reason: Some(StopReason::ContentFilter)
        })
    );
}

#[tokio::test]
async fn a_stream_cut_before_its_finish_reason_is_truncated() {
    let body = fixture("gemini_text.sse");
    // Everything but the last chunk, which carries the finish reason.
    let cut = body.len()
        - 1
        - body[..body.len() - 4]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
    let svc = Gemini::builder()
        .model("m")
        .build_with(FixtureTransport::sse(body[..body.len() - cut].to_vec(), 16))
        .unwrap();
    let (events, err) = drain(svc.oneshot(ChatRequest::new("")).await.unwrap()).await;
    assert_eq!(
        texts(&events).concat(),
        "Tides at Brest: high water 06:12, "
    );
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

fn gemini(server: &MockServer) -> Gemini {
    Gemini::builder()
        .base_url(server.gemini_url())
        .api_key("gm-test-key")
        .model("gemini-test")
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_request_on_the_wire() {
    let server = MockServer::start().await;
    let mut req = ChatRequest::new("")
        .message(Message::system("be brief"))
        .message(Message::user("hello"))
        .max_tokens(50)
        .temperature(0.5)
        .tool(Tool::new("tide", "tide times", json!({"type": "object"})))
        .tool_choice(ToolChoice::Tool("tide".into()))
        .extra("safetySettings", json!([]));
    req.stop = vec!["END".into()];
    let svc = Gemini::builder()
        .base_url(server.gemini_url())
        .api_key("gm-test-key")
        .model("gemini-test")
        .include_thoughts(true)
        .build()
        .unwrap();
    let c = svc.oneshot(req).await.unwrap().completion().await.unwrap();
    assert_eq!(c.text, "Hello from the mock server.");
    assert_eq!(c.stop_reason, Some(StopReason::EndTurn));
    assert_eq!(c.usage.unwrap().output_tokens, 5);

    let r = &server.requests()[0];
    assert_eq!(
        r.path,
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    );
    assert_eq!(r.header("x-goog-api-key"), Some("gm-test-key"));
    assert!(!r.path.contains("key="), "the key is never in the URL");
    assert_eq!(r.header("accept"), Some("text/event-stream"));
    assert_eq!(
        r.json(),
        json!({
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
            "generationConfig": {
                "maxOutputTokens": 50, "temperature": 0.5, "stopSequences": ["END"],
                "thinkingConfig": {"includeThoughts": true},
            },
            "tools": [{"functionDeclarations": [
                {"name": "tide", "description": "tide times", "parameters": {"type": "object"}}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["tide"]}},
            "safetySettings": [],
        })
    );
}

#[tokio::test]
async fn both_modes_and_a_named_model_reach_their_paths() {
    let server = MockServer::start().await;
    let svc = gemini(&server);
    for stream in [true, false] {
        server.push(Reply::tool_call(
            "c1",
            "tide",
            [r#"{"port":"#, r#""Brest"}"#],
        ));
        let c = svc
            .clone()
            .oneshot(ChatRequest::new("models/gemini-other").stream(stream))
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
        assert_eq!(c.tool_calls[0].name, "tide");
        // The API sends no call id (nor does the mock): the client makes
        // one up, so that a result can name its call.
        assert_eq!(c.tool_calls[0].id, "gemini-call-0");
        assert_eq!(c.tool_calls[0].arguments, json!({"port": "Brest"}));
        assert_eq!(c.stop_reason, Some(StopReason::ToolUse));
    }
    let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/gemini-other:streamGenerateContent?alt=sse",
            "/v1beta/models/gemini-other:generateContent",
        ]
    );
    let err = svc
        .oneshot(ChatRequest::new("bad?model"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn error_bodies_are_classified_by_status_name_and_reason() {
    let server = MockServer::start().await;
    let body = |code: u16, status: &str, details: serde_json::Value| {
        Reply::body(
            code,
            "application/json",
            json!({"error": {"code": code, "message": "m", "status": status, "details": details}})
                .to_string(),
        )
    };
    let cases = [
        (
            body(
                429,
                "RESOURCE_EXHAUSTED",
                json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]),
            ),
            "rate_limited",
            Some(Duration::from_secs(37)),
        ),
        (
            body(
                400,
                "INVALID_ARGUMENT",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]),
            ),
            "unauthorized",
            None,
        ),
        (
            body(401, "UNAUTHENTICATED", json!([])),
            "unauthorized",
            None,
        ),
        (body(403, "PERMISSION_DENIED", json!([])), "forbidden", None),
        (body(503, "UNAVAILABLE", json!([])), "overloaded", None),
        (body(500, "INTERNAL", json!([])), "server", None),
        (
            body(400, "INVALID_ARGUMENT", json!([])),
            "invalid_request",
            None,
        ),
        (body(404, "NOT_FOUND", json!([])), "invalid_request", None),
        (
            Reply::api_error(429, "RESOURCE_EXHAUSTED", "quota").header("retry-after", "2"),
            "rate_limited",
            Some(Duration::from_secs(2)),
        ),
    ];
    for (reply, kind, retry_after) in cases {
        server.push(reply);
        let err = gemini(&server)
            .oneshot(ChatRequest::new(""))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err:?}");
        assert_eq!(err.retry_after(), retry_after, "{err:?}");
        assert_eq!(err.provider(), Some("gemini"));
    }
}

#[tokio::test]
async fn a_refreshed_api_key_goes_in_gemini_s_header() {
    let server = MockServer::start().await;
    server.accept_keys(["gm-fresh"]);
    let svc =
        RefreshLayer::new(|| async { Ok::<_, std::io::Error>(Credential::api_key("gm-fresh")) })
            .initial(Credential::api_key("gm-stale"))
            .layer(gemini(&server));
    let c = svc
        .oneshot(ChatRequest::new("").message(Message::user("hi")))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "Hello from the mock server.");
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| {
            (
                r.header("x-goog-api-key").map(str::to_owned),
                r.header("x-api-key").map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            (Some("gm-stale".to_owned()), None),
            (Some("gm-fresh".to_owned()), None)
        ],
        "replaces the configured key, in Gemini's header"
    );
}

#[tokio::test]
async fn the_key_stays_out_of_debug_output() {
    let builder = Gemini::builder().api_key("gm-SECRET-key").model("m");
    assert!(!format!("{builder:?}").contains("SECRET"));
    let svc = builder.build().unwrap();
    assert!(!format!("{svc:?}").contains("SECRET"));
    // And out of errors: a refused connection names the URL, which holds no key.
    let svc = Gemini::builder()
        .base_url("http://127.0.0.1:9")
        .api_key("gm-SECRET-key")
        .model("m")
        .build()
        .unwrap();
    let err = svc.oneshot(ChatRequest::new("")).await.unwrap_err();
    let mut text = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!("{s} {s:?}"));
        source = s.source();
    }
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_arrives_delta_by_delta() {
    // One chunk a second: each delta reaches the caller when its chunk
    // arrives, not when the answer is whole.
    let server = MockServer::start().await;
    server.push(Reply::text(["a", "b", "c"]).delay(Duration::from_secs(1)));
    let started = tokio::time::Instant::now();
    let mut stream = gemini(&server).oneshot(ChatRequest::new("")).await.unwrap();
    let mut seen = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(e) = stream.next().await {
        let e = e.unwrap();
        if let StreamEvent::TextDelta { text } = &e {
            arrivals.push((text.clone(), started.elapsed().as_secs()));
        }
        seen.push(e);
    }
    assert_eq!(texts(&seen), ["a", "b", "c"]);
    assert!(matches!(seen[0], StreamEvent::MessageStart { .. }));
    assert_eq!(
        arrivals,
        [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
        "each delta as its chunk arrives"
    );
}

/// A call id the server does send (Vertex AI and newer models may) is kept.
#[tokio::test]
async fn a_call_id_the_server_sends_is_kept() {
    let server = MockServer::start().await;
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"id": "c1", "name": "tide", "args": {"port": "Brest"}}}
        ]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4},
    });
    server.push(Reply::body(200, "application/json", body.to_string()));
    let c = gemini(&server)
        .oneshot(ChatRequest::new("").stream(false))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.tool_calls[0].id, "c1");
    assert_eq!(c.tool_calls[0].arguments, json!({"port": "Brest"}));
}
