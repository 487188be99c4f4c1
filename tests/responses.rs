//! OpenAI's Responses API: the request it is sent, the events it answers
//! with at every chunking, errors in its stream, and a conversation carried
//! statelessly from one turn to the next.

mod support;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, ContentPart, Error, Image, Message, OpenAiResponses, Role, StopReason,
    StreamEvent, Tool, ToolChoice, Usage,
};
use serde_json::json;
use support::{FixtureTransport, drain, fixture, texts};
use tower::ServiceExt;

/// `name` decoded at chunk size `chunk`, after checking the one request
/// the transport was handed.
async fn decode(name: &str, chunk: usize) -> (Vec<StreamEvent>, Option<Error>) {
    let transport = FixtureTransport::sse(fixture(name), chunk);
    let svc = OpenAiResponses::builder()
        .api_key("sk-fixture")
        .model("m")
        .build_with(transport.clone())
        .unwrap();
    let out = drain(
        svc.oneshot(ChatRequest::new("").message(Message::user("hi")))
            .await
            .unwrap(),
    )
    .await;
    let seen = transport.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one request per call");
    let r = &seen[0];
    assert_eq!(r.uri(), "https://api.openai.com/v1/responses");
    assert_eq!(r.headers()["authorization"], "Bearer sk-fixture");
    assert_eq!(r.headers()["accept"], "text/event-stream");
    let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "m", "stream": true, "store": false,
            "include": ["reasoning.encrypted_content"],
            "input": [{"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "hi"}]}],
        })
    );
    out
}

/// The same events at every chunk size.
async fn each_chunking(name: &str) -> (Vec<StreamEvent>, Option<Error>) {
    support::each_chunking(name, |c| decode(name, c)).await
}

#[tokio::test]
async fn text_with_cached_tokens_and_an_unknown_event_skipped() {
    let (events, err) = each_chunking("responses_text.sse").await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events.first(),
        Some(&StreamEvent::MessageStart {
            id: Some("resp_LT0001".into()),
            model: Some("gpt-5-mini-2025-08-07".into()),
        })
    );
    // Each delta once: `.done` and the completed response repeat the text.
    assert_eq!(
        texts(&events),
        [
            "Ebb",
            " and flow",
            " twice",
            " a day",
            " — ",
            "über",
            " tides."
        ]
    );
    let n = events.len();
    assert_eq!(n, 10, "start, 7 deltas, usage, done: {events:?}");
    assert_eq!(
        events[n - 2],
        StreamEvent::Usage(Usage {
            input_tokens: 31,
            output_tokens: 9,
            cache_read_input_tokens: Some(16),
            reasoning_tokens: Some(0),
            ..Usage::default()
        })
    );
    assert_eq!(
        events[n - 1],
        StreamEvent::Done {
            stop_reason: Some(StopReason::EndTurn)
        }
    );
}

#[tokio::test]
async fn reasoning_summary_and_encrypted_content_then_a_function_call() {
    let (events, err) = each_chunking("responses_reasoning_tool.sse").await;
    assert!(err.is_none(), "{err:?}");
    let expected = vec![
        StreamEvent::MessageStart {
            id: Some("resp_LT0001".into()),
            model: Some("gpt-5-mini-2025-08-07".into()),
        },
        StreamEvent::ThinkingDelta {
            text: "**Weather lookup**\n\n".into(),
        },
        StreamEvent::ThinkingDelta {
            text: "The user wants Paris.".into(),
        },
        // The second summary part, set off from the first.
        StreamEvent::ThinkingDelta {
            text: "\n\n".into(),
        },
        StreamEvent::ThinkingDelta {
            text: "Call the tool.".into(),
        },
        StreamEvent::RedactedThinking {
            data: "rs_LT0001:gAAAAABoLT0001-encrypted_reasoning_blob==".into(),
        },
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_LT0001".into(),
            name: "get_weather".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "{\"city\"".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: ":\"Par".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "is\"}".into(),
        },
        StreamEvent::Usage(Usage {
            input_tokens: 72,
            output_tokens: 140,
            cache_read_input_tokens: Some(0),
            reasoning_tokens: Some(128),
            ..Usage::default()
        }),
        StreamEvent::Done {
            stop_reason: Some(StopReason::ToolUse),
        },
    ];
    assert_eq!(events, expected);
}

#[tokio::test]
async fn a_refusal_arrives_as_refusal_deltas() {
    let (events, err) = each_chunking("responses_refusal.sse").await;
    assert!(err.is_none(), "{err:?}");
    let refusal: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::RefusalDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(refusal, "I can't help with that.");
    assert!(texts(&events).is_empty());
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Done {
            stop_reason: Some(StopReason::EndTurn)
        })
    );
}

#[tokio::test]
async fn incomplete_details_give_the_stop_reason() {
    let (events, err) = each_chunking("responses_incomplete.sse").await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts(&events).concat(), "The tide rises and");
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Done {
            stop_reason: Some(StopReason::MaxTokens)
        })
    );
}

#[tokio::test]
async fn a_failed_response_before_output_is_a_retryable_server_error() {
    let (events, err) = each_chunking("responses_failed.sse").await;
    assert!(events.iter().all(|e| !e.is_output()), "{events:?}");
    let err = err.expect("the response failed");
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .contains("The model failed to generate a response."),
        "{err}"
    );
}

#[tokio::test]
async fn an_error_event_after_output_is_classified_and_keeps_the_output() {
    let (events, err) = each_chunking("responses_error_event.sse").await;
    assert_eq!(texts(&events), ["Partial"]);
    let err = err.expect("the stream failed");
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");

    let transport = FixtureTransport::sse(fixture("responses_error_event.sse"), 64);
    let svc = OpenAiResponses::builder()
        .model("m")
        .build_with(transport)
        .unwrap();
    let err = svc
        .oneshot(ChatRequest::new("").message(Message::user("hi")))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap_err();
    match err {
        Error::Interrupted { partial, source } => {
            assert_eq!(partial.text, "Partial");
            assert!(matches!(*source, Error::RateLimited { .. }), "{source:?}");
        }
        other => panic!("expected Interrupted, got {other:?}"),
    }
}

fn responses_at(server: &MockServer) -> OpenAiResponses {
    OpenAiResponses::builder()
        .base_url(server.openai_url())
        .api_key("sk-test")
        .model("m")
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_request_as_the_responses_api_takes_it() {
    let server = MockServer::start().await;
    server.push(Reply::text(["ok"]));
    let weather = Tool::new(
        "get_weather",
        "Weather for a city",
        json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    );
    let req = ChatRequest::new("gpt-5-mini")
        .message(Message::system("Be brief."))
        .message(Message::system("Answer in English."))
        .message(Message::new(
            Role::User,
            vec![
                ContentPart::Text("What is this?".into()),
                ContentPart::Image(Image::Url("https://example.com/a.png".into())),
                ContentPart::Image(Image::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into(),
                }),
            ],
        ))
        .message(Message::new(
            Role::Assistant,
            vec![
                ContentPart::Thinking {
                    text: "a summary, not sent".into(),
                    signature: None,
                },
                ContentPart::RedactedThinking {
                    data: "rs_1:gAAAAenc".into(),
                },
                // Another provider's encrypted thinking: not ours to send.
                ContentPart::RedactedThinking {
                    data: "EqQBCkYIARgCKkCanthropic".into(),
                },
                ContentPart::Text("Let me look.".into()),
                ContentPart::ToolUse {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris"}),
                },
            ],
        ))
        .message(Message::tool_result("call_1", "18°C"))
        .tool(weather)
        .tool_choice(ToolChoice::Tool("get_weather".into()))
        .max_tokens(300)
        .temperature(0.5)
        .stream(false);
    let answer = responses_at(&server)
        .oneshot(req)
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(answer.text, "ok");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].path.ends_with("/v1/responses"),
        "{}",
        requests[0].path
    );
    assert_eq!(
        requests[0].json(),
        json!({
            "model": "gpt-5-mini",
            "instructions": "Be brief.\n\nAnswer in English.",
            "input": [
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAenc"},
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "Let me look."},
                ]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                 "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18°C"},
            ],
            "stream": false,
            "store": false,
            "include": ["reasoning.encrypted_content"],
            "max_output_tokens": 300,
            "temperature": 0.5,
            "tools": [{"type": "function", "name": "get_weather",
                       "description": "Weather for a city",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                       "strict": false}],
            "tool_choice": {"type": "function", "name": "get_weather"},
        })
    );
}

#[tokio::test]
async fn stored_responses_send_reasoning_by_id_and_ask_for_no_encryption() {
    let server = MockServer::start().await;
    server.push(Reply::text(["ok"]));
    server.push(Reply::text(["ok"]));
    let history = ChatRequest::new("m").message(Message::new(
        Role::Assistant,
        vec![
            ContentPart::RedactedThinking {
                data: "rs_2".into(),
            },
            ContentPart::Text("Hi.".into()),
        ],
    ));
    let stored = OpenAiResponses::builder()
        .base_url(server.openai_url())
        .store(true)
        .build()
        .unwrap();
    stored.oneshot(history.clone()).await.unwrap();
    // Not stored, an item without its encrypted content cannot be found: it
    // is left out rather than sent to be refused.
    responses_at(&server).oneshot(history).await.unwrap();
    let requests = server.requests();
    let (stored, stateless) = (requests[0].json(), requests[1].json());
    assert_eq!(stored["store"], true);
    assert!(stored.get("include").is_none(), "{stored}");
    assert_eq!(
        stored["input"][0],
        json!({"type": "reasoning", "id": "rs_2", "summary": []})
    );
    assert_eq!(stateless["store"], false);
    assert_eq!(
        stateless["input"],
        json!([{"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi."}]}])
    );
}

#[tokio::test]
async fn stop_sequences_are_refused_before_sending() {
    let server = MockServer::start().await;
    let err = responses_at(&server)
        .oneshot(
            ChatRequest::new("m")
                .message(Message::user("hi"))
                .stop("END"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("stop"), "{err}");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn streamed_and_whole_answers_fold_to_the_same_completion() {
    let server = MockServer::start().await;
    let replies = || {
        [
            Reply::text(["Hel", "lo", " there"]),
            Reply::text_then_tool_call(["Checking."], "call_9", "lookup", ["{\"q\":", "\"x\"}"]),
            Reply::tool_call("call_8", "lookup", ["{}"]),
        ]
    };
    for stream in [true, false] {
        server.push_all(replies());
        let mut folded = Vec::new();
        for _ in 0..3 {
            let c = responses_at(&server)
                .oneshot(
                    ChatRequest::new("m")
                        .message(Message::user("hi"))
                        .stream(stream),
                )
                .await
                .unwrap()
                .completion()
                .await
                .unwrap();
            folded.push(c);
        }
        assert_eq!(folded[0].text, "Hello there");
        assert_eq!(folded[0].stop_reason, Some(StopReason::EndTurn));
        assert_eq!(folded[0].id.as_deref(), Some("resp_mock_0001"));
        assert_eq!(folded[1].text, "Checking.");
        assert_eq!(folded[1].tool_calls.len(), 1);
        assert_eq!(folded[1].tool_calls[0].id, "call_9");
        assert_eq!(folded[1].tool_calls[0].arguments, json!({"q": "x"}));
        assert_eq!(folded[1].stop_reason, Some(StopReason::ToolUse));
        assert_eq!(folded[2].tool_calls[0].name, "lookup");
        assert!(
            folded
                .iter()
                .all(|c| c.usage.is_some_and(|u| u.input_tokens == 12))
        );
    }
}

/// Turn 1 answers with reasoning and a function call; turn 2 sends them
/// back with the call's output, and the mock — which refuses a reasoning
/// item it could not find and an output that answers no call — takes it.
#[tokio::test]
async fn a_second_turn_sends_reasoning_and_the_call_back() {
    let server = MockServer::start().await;
    let transcript = String::from_utf8(fixture("responses_reasoning_tool.sse")).unwrap();
    let events: Vec<String> = transcript
        .split_inclusive("\n\n")
        .map(str::to_owned)
        .collect();
    server.push(Reply::sse(events));
    server.push(Reply::text(["It is 18°C in Paris."]));
    let svc = responses_at(&server);
    let mut req = ChatRequest::new("m").message(Message::user("Weather in Paris?"));
    let turn1 = svc
        .clone()
        .oneshot(req.clone())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(turn1.tool_calls.len(), 1);
    req = req
        .message(turn1.to_message())
        .message(Message::tool_result(&turn1.tool_calls[0].id, "18°C"));
    let turn2 = svc
        .oneshot(req)
        .await
        .expect("the mock accepts the second turn")
        .completion()
        .await
        .unwrap();
    assert_eq!(turn2.text, "It is 18°C in Paris.");
    let sent = server.requests()[1].json();
    assert_eq!(
        sent["input"],
        json!([
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "reasoning", "id": "rs_LT0001", "summary": [],
             "encrypted_content": "gAAAAABoLT0001-encrypted_reasoning_blob=="},
            {"type": "function_call", "call_id": "call_LT0001", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_LT0001", "output": "18°C"},
        ])
    );
}

#[tokio::test]
async fn the_mock_refuses_what_the_real_api_refuses() {
    let server = MockServer::start().await;
    let svc = responses_at(&server);
    // An output for a call that was never made.
    let err = svc
        .clone()
        .oneshot(ChatRequest::new("m").message(Message::tool_result("call_x", "1")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    assert!(err.to_string().contains("call_x"), "{err}");
    // A reasoning item sent by id, not stored, without its content: a 404.
    let err = OpenAiResponses::builder()
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap()
        .oneshot(ChatRequest::new("m").message(Message::user("hi")).extra(
            "input",
            json!([{"type": "reasoning", "id": "rs_9", "summary": []}]),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    assert!(err.to_string().contains("rs_9"), "{err}");
}

/// Open-weight models served by vLLM stream their raw reasoning as
/// `response.reasoning_text.delta`; a reasoning item without encrypted
/// content comes back as its id alone.
#[tokio::test]
async fn raw_reasoning_text_arrives_as_thinking() {
    let (events, err) = each_chunking("responses_reasoning_text.sse").await;
    assert!(err.is_none(), "{err:?}");
    let thinking: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ThinkingDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(thinking, ["Two plus two", " is four."]);
    assert!(events.contains(&StreamEvent::RedactedThinking {
        data: "rs_LT0003".into()
    }));
    assert_eq!(texts(&events), ["4"]);
    assert!(events.contains(&StreamEvent::Usage(Usage {
        input_tokens: 20,
        output_tokens: 12,
        reasoning_tokens: Some(9),
        ..Usage::default()
    })));
}

/// A body that is an error, or a response that did not end, is a failure,
/// not an empty answer; `null` where a list belongs is an empty list; a
/// message a server sends whole, without deltas, is not lost.
#[tokio::test]
async fn whole_bodies_that_failed_and_items_sent_whole() {
    let server = MockServer::start().await;
    let svc = responses_at(&server);
    let whole = |body: serde_json::Value| Reply::body(200, "application/json", body.to_string());
    server.push(whole(
        json!({"error": {"code": "invalid_prompt", "message": "flagged"}}),
    ));
    server.push(whole(
        json!({"id": "resp_1", "status": "cancelled", "output": []}),
    ));
    server.push(whole(
        json!({"id": "resp_2", "status": "completed", "output": [
        {"type": "message", "id": "m", "content": null},
        {"type": "message", "id": "m2", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "reasoning", "id": "rs_1", "summary": null}],
        "usage": null}),
    ));
    let call = || {
        svc.clone().oneshot(
            ChatRequest::new("m")
                .message(Message::user("hi"))
                .stream(false),
        )
    };
    let err = call().await.unwrap().completion().await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    assert!(!err.is_retryable(), "the same prompt fails the same way");
    let err = call().await.unwrap().completion().await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    let ok = call().await.unwrap().completion().await.unwrap();
    assert_eq!(ok.text, "ok");
    assert_eq!(ok.redacted_thinking, ["rs_1"]);

    // Streamed, a message whose text came only in its item.
    let events = [
        "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"m\",\"content\":[{\"type\":\"output_text\",\"text\":\"whole\"}]}}\n\n",
        "event: response.refusal.done\ndata: {\"type\":\"response.refusal.done\",\"output_index\":1,\"refusal\":\"no\"}\n\n",
        "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"output_index\":1,\"item\":{\"type\":\"message\",\"id\":\"m2\",\"content\":[{\"type\":\"refusal\",\"refusal\":\"no\"}]}}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"status\":\"completed\",\"output\":[{\"content\":null}]}}\n\n",
    ];
    server.push(Reply::sse(events));
    let c = svc
        .oneshot(ChatRequest::new("m").message(Message::user("hi")))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.text, "whole");
    assert_eq!(c.refusal, "no");
}

#[tokio::test]
async fn a_continued_response_may_answer_calls_the_stored_one_made() {
    let server = MockServer::start().await;
    server.push(Reply::text(["ok"]));
    let svc = OpenAiResponses::builder()
        .base_url(server.openai_url())
        .store(true)
        .model("m")
        .build()
        .unwrap();
    svc.oneshot(
        ChatRequest::new("m")
            .previous_response_id("resp_9")
            .message(Message::tool_result("call_from_resp_9", "42")),
    )
    .await
    .expect("the mock takes outputs for the stored response's calls")
    .completion()
    .await
    .unwrap();
}
