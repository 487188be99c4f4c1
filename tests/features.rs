//! Typed request features — structured output, reasoning, prompt caching —
//! as each provider takes them (the exact JSON sent to the mock server), the
//! typed error before sending where a provider lacks one, cache tokens in
//! `Usage`, and second turns that send reasoning and a tool call back to
//! the mock, which checks them as the real APIs do.

mod support;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    Anthropic, CacheTtl, ChatRequest, ContentPart, Effort, Error, Gemini, Message, OpenAi,
    OpenAiResponses, Reasoning, ResponseFormat, Role, Tool, Usage,
};
use serde_json::{Value, json};
use support::Svc;
use tower::ServiceExt;
use tower::util::BoxCloneService;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Which {
    OpenAi,
    Responses,
    Anthropic,
    Gemini,
}

fn service(which: Which, server: &MockServer, model: &str) -> Svc {
    match which {
        Which::OpenAi => BoxCloneService::new(
            OpenAi::builder()
                .base_url(server.openai_url())
                .model(model)
                .build()
                .unwrap(),
        ),
        Which::Responses => BoxCloneService::new(
            OpenAiResponses::builder()
                .base_url(server.openai_url())
                .model(model)
                .build()
                .unwrap(),
        ),
        Which::Anthropic => BoxCloneService::new(
            Anthropic::builder()
                .base_url(server.anthropic_url())
                .model(model)
                .build()
                .unwrap(),
        ),
        Which::Gemini => BoxCloneService::new(
            Gemini::builder()
                .base_url(server.gemini_url())
                .model(model)
                .build()
                .unwrap(),
        ),
    }
}

fn hi() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hi"))
}

/// The body `which` sends for `req`, or the error it fails with before
/// sending anything.
async fn sent(which: Which, req: ChatRequest) -> Result<Value, Error> {
    let server = MockServer::start().await;
    server.set_default(Reply::text(["ok"]));
    let result = service(which, &server, "m").oneshot(req).await;
    match result {
        Ok(stream) => {
            stream.completion().await.unwrap();
            let requests = server.requests();
            assert_eq!(requests.len(), 1, "{which:?}");
            Ok(requests[0].json())
        }
        Err(e) => {
            assert_eq!(server.request_count(), 0, "{which:?}: nothing is sent");
            Err(e)
        }
    }
}

/// `req` fails on `which` with a configuration error naming `what`.
async fn refused(which: Which, req: ChatRequest, what: &str) {
    let err = sent(which, req).await.expect_err("refused before sending");
    assert!(matches!(err, Error::Config { .. }), "{which:?}: {err:?}");
    assert!(err.to_string().contains(what), "{which:?}: {err}");
}

fn person() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string"}},
           "required": ["name"], "additionalProperties": false})
}

#[tokio::test]
async fn a_json_schema_as_each_provider_takes_it() {
    let req = || hi().response_format(ResponseFormat::json_schema("person", person()));
    let want = [
        (
            Which::OpenAi,
            "/response_format",
            json!({"type": "json_schema",
                   "json_schema": {"name": "person", "schema": person(), "strict": true}}),
        ),
        (
            Which::Responses,
            "/text",
            json!({"format": {"type": "json_schema", "name": "person", "schema": person(),
                              "strict": true}}),
        ),
        (
            Which::Anthropic,
            "/output_config",
            json!({"format": {"type": "json_schema", "schema": person()}}),
        ),
        (
            Which::Gemini,
            "/generationConfig",
            json!({"responseMimeType": "application/json", "responseJsonSchema": person()}),
        ),
    ];
    for (which, at, value) in want {
        let body = sent(which, req()).await.unwrap();
        assert_eq!(body.pointer(at), Some(&value), "{which:?}: {body}");
    }
}

#[tokio::test]
async fn plain_json_where_there_is_such_a_mode_and_an_error_where_not() {
    let req = || hi().response_format(ResponseFormat::Json);
    let want = [
        (
            Which::OpenAi,
            "/response_format",
            json!({"type": "json_object"}),
        ),
        (
            Which::Responses,
            "/text",
            json!({"format": {"type": "json_object"}}),
        ),
        (
            Which::Gemini,
            "/generationConfig",
            json!({"responseMimeType": "application/json"}),
        ),
    ];
    for (which, at, value) in want {
        let body = sent(which, req()).await.unwrap();
        assert_eq!(body.pointer(at), Some(&value), "{which:?}: {body}");
    }
    refused(Which::Anthropic, req(), "no plain JSON mode").await;
}

#[tokio::test]
async fn reasoning_effort_as_each_provider_takes_it() {
    let req = || hi().reasoning(Reasoning::effort(Effort::High));
    let body = sent(Which::OpenAi, req()).await.unwrap();
    assert_eq!(body["reasoning_effort"], "high");
    let body = sent(Which::Responses, req()).await.unwrap();
    assert_eq!(body["reasoning"], json!({"effort": "high"}));
    let body = sent(Which::Anthropic, req()).await.unwrap();
    assert_eq!(body["output_config"], json!({"effort": "high"}));
    assert_eq!(body["thinking"], json!({"type": "adaptive"}));
    let body = sent(Which::Gemini, req()).await.unwrap();
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "high"})
    );
}

#[tokio::test]
async fn a_thinking_budget_and_summaries_where_they_exist() {
    // Anthropic: the budget, and room for an answer after it.
    let body = sent(Which::Anthropic, hi().reasoning(Reasoning::budget(2048)))
        .await
        .unwrap();
    assert_eq!(
        body["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(body["max_tokens"], 2048 + 4096);
    let body = sent(
        Which::Anthropic,
        hi().max_tokens(9000)
            .reasoning(Reasoning::effort(Effort::Medium).with_budget(4000)),
    )
    .await
    .unwrap();
    assert_eq!(body["max_tokens"], 9000);
    assert_eq!(
        body["thinking"],
        json!({"type": "enabled", "budget_tokens": 4000})
    );
    assert_eq!(body["output_config"], json!({"effort": "medium"}));
    refused(
        Which::Anthropic,
        hi().max_tokens(1000).reasoning(Reasoning::budget(2048)),
        "must be above the thinking budget",
    )
    .await;

    let body = sent(
        Which::Gemini,
        hi().reasoning(Reasoning::budget(1024).with_summary()),
    )
    .await
    .unwrap();
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    let body = sent(
        Which::Responses,
        hi().reasoning(Reasoning::effort(Effort::Low).with_summary()),
    )
    .await
    .unwrap();
    assert_eq!(
        body["reasoning"],
        json!({"effort": "low", "summary": "auto"})
    );

    refused(
        Which::OpenAi,
        hi().reasoning(Reasoning::budget(1024)),
        "token budget",
    )
    .await;
    refused(
        Which::Responses,
        hi().reasoning(Reasoning::budget(1024)),
        "token budget",
    )
    .await;
    refused(
        Which::OpenAi,
        hi().reasoning(Reasoning::effort(Effort::Low).with_summary()),
        "OpenAiResponses",
    )
    .await;
    refused(
        Which::Gemini,
        hi().reasoning(Reasoning::effort(Effort::Low).with_budget(100)),
        "not both",
    )
    .await;
}

#[tokio::test]
async fn a_level_a_provider_lacks_is_refused() {
    let at = |e| hi().reasoning(Reasoning::effort(e));
    refused(Which::OpenAi, at(Effort::Max), "\"max\"").await;
    refused(Which::Responses, at(Effort::Max), "\"max\"").await;
    refused(Which::Anthropic, at(Effort::Minimal), "\"minimal\"").await;
    refused(Which::Gemini, at(Effort::XHigh), "\"xhigh\"").await;
    // And the ones each has.
    for (which, effort) in [
        (Which::OpenAi, Effort::Minimal),
        (Which::OpenAi, Effort::XHigh),
        (Which::Anthropic, Effort::Max),
        (Which::Anthropic, Effort::XHigh),
        (Which::Gemini, Effort::Minimal),
    ] {
        sent(which, at(effort)).await.unwrap();
    }
}

#[tokio::test]
async fn cache_breakpoints_become_anthropics_cache_control() {
    let tool = Tool::new("lookup", "Looks things up", json!({"type": "object"}));
    let req = ChatRequest::new("")
        .message(Message::system("A long handbook.").cache(CacheTtl::Hour))
        .message(Message::system("Be brief."))
        .message(Message::user("First question.").cache(CacheTtl::Short))
        .message(Message::assistant("First answer."))
        .message(Message::user("Second question."))
        .tool(tool.clone())
        .tool(Tool::new("other", "Other", json!({"type": "object"})))
        .cache_tools(CacheTtl::Short)
        .prompt_cache_key("left-out");
    let body = sent(Which::Anthropic, req.clone()).await.unwrap();
    assert_eq!(
        body["system"],
        json!([
            {"type": "text", "text": "A long handbook.",
             "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "Be brief."},
        ])
    );
    assert_eq!(
        body["messages"][0]["content"],
        json!([{"type": "text", "text": "First question.",
                "cache_control": {"type": "ephemeral"}}])
    );
    assert_eq!(
        body["messages"][2]["content"],
        json!([{"type": "text", "text": "Second question."}])
    );
    assert!(body["tools"][0].get("cache_control").is_none());
    assert_eq!(
        body["tools"][1]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert!(body.get("prompt_cache_key").is_none(), "{body}");

    // OpenAI and Gemini cache on their own: the breakpoints are left out,
    // and OpenAI takes the key.
    for which in [Which::OpenAi, Which::Responses] {
        let body = sent(which, req.clone()).await.unwrap();
        assert_eq!(body["prompt_cache_key"], "left-out", "{which:?}");
        assert!(!body.to_string().contains("cache_control"), "{body}");
    }
    let body = sent(Which::OpenAi, req.clone()).await.unwrap();
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "A long handbook."})
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "user", "content": "First question."})
    );
    let body = sent(Which::Gemini, req).await.unwrap();
    assert_eq!(
        body["systemInstruction"],
        json!({"parts": [{"text": "A long handbook."}, {"text": "Be brief."}]})
    );
    assert!(body.get("prompt_cache_key").is_none());
}

#[tokio::test]
async fn misplaced_or_too_many_breakpoints_are_refused() {
    let five = (0..5).fold(ChatRequest::new(""), |r, i| {
        r.message(Message::user(format!("part {i}")).cache(CacheTtl::Short))
    });
    refused(Which::Anthropic, five, "at most 4 cache breakpoints").await;
    let first = ChatRequest::new("").message(Message::new(
        Role::User,
        vec![
            ContentPart::CacheBreakpoint {
                ttl: CacheTtl::Short,
            },
            ContentPart::Text("hi".into()),
        ],
    ));
    refused(Which::Anthropic, first, "must follow a part").await;
}

#[tokio::test]
async fn cache_reads_and_writes_arrive_in_usage() {
    let server = MockServer::start().await;
    server.push(Reply::sse([
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ok\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ]));
    let answer = service(Which::Anthropic, &server, "m")
        .oneshot(hi())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let usage: Usage = answer.usage.unwrap();
    assert_eq!(usage.cache_creation_input_tokens, Some(2000));
    assert_eq!(usage.cache_read_input_tokens, Some(0));
    // Input counts every token of the prompt, cached or not.
    assert_eq!(usage.input_tokens, 2012);
    assert_eq!(usage.output_tokens, 3);
}

/// Turn 1's answer, sent back with the tool's result as turn 2: the mock
/// checks what the real API checks and answers turn 2.
async fn second_turn(
    which: Which,
    model: &str,
    turn1: Reply,
    reasoning: Option<Reasoning>,
) -> (llm_tower::Completion, Value) {
    let server = MockServer::start().await;
    server.push(turn1);
    server.push(Reply::text(["Done."]));
    let svc = service(which, &server, model);
    let mut req = hi();
    if let Some(r) = reasoning {
        req = req.reasoning(r);
    }
    let turn1 = svc
        .clone()
        .oneshot(req.clone())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(turn1.tool_calls.len(), 1, "{which:?}: {turn1:?}");
    let req = req
        .message(turn1.to_message())
        .message(Message::tool_result(&turn1.tool_calls[0].id, "42"));
    let turn2 = svc
        .oneshot(req)
        .await
        .unwrap_or_else(|e| panic!("{which:?}: the second turn is refused: {e}"))
        .completion()
        .await
        .unwrap();
    assert_eq!(turn2.text, "Done.");
    (turn1, server.requests()[1].json())
}

fn recorded(name: &str) -> Reply {
    let path = format!(
        "{}/tests/fixtures/recorded/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    Reply::body(200, "text/event-stream", std::fs::read(path).unwrap())
}

#[tokio::test]
async fn anthropic_thinking_and_its_signature_go_back_before_the_call() {
    let (turn1, sent) = second_turn(
        Which::Anthropic,
        "m",
        recorded("anthropic_stream_thinking_then_tool_use.sse"),
        Some(Reasoning::budget(2048)),
    )
    .await;
    let signature = turn1.thinking_signature.clone().unwrap();
    let assistant = &sent["messages"][1]["content"];
    assert_eq!(assistant[0]["type"], "thinking");
    assert_eq!(assistant[0]["thinking"], turn1.thinking.as_str());
    assert_eq!(assistant[0]["signature"], signature.as_str());
    assert_eq!(assistant[1]["type"], "tool_use");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
}

#[tokio::test]
async fn gemini_3s_signature_goes_back_on_the_function_call() {
    let (turn1, sent) = second_turn(
        Which::Gemini,
        "gemini-3-pro-preview",
        recorded("gemini_stream_function_call_thought_signature.sse"),
        Some(Reasoning::effort(Effort::High)),
    )
    .await;
    // No thought text came, only a signature: it goes back all the same.
    assert!(turn1.thinking.is_empty());
    let signature = turn1.thinking_signature.unwrap();
    let model_turn = &sent["contents"][1];
    assert_eq!(model_turn["role"], "model");
    assert_eq!(
        model_turn["parts"],
        json!([{"functionCall": {"name": "get_country", "args": {}},
                "thoughtSignature": signature}])
    );
}

#[tokio::test]
async fn openai_sends_the_call_back_and_keeps_reasoning_to_itself() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": delta,
                   "finish_reason": finish}]})
        )
    };
    let turn1 = Reply::sse([
        chunk(
            json!({"role": "assistant", "reasoning_content": "Need the tool."}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_7", "type": "function",
                                   "function": {"name": "lookup", "arguments": "{}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]);
    let (turn1, sent) = second_turn(
        Which::OpenAi,
        "m",
        turn1,
        Some(Reasoning::effort(Effort::Low)),
    )
    .await;
    assert_eq!(turn1.thinking, "Need the tool.");
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_7", "type": "function",
             "function": {"name": "lookup", "arguments": "{}"}}]})
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_7", "content": "42"})
    );
}

#[tokio::test]
async fn the_mock_refuses_a_second_turn_the_real_apis_refuse() {
    let server = MockServer::start().await;
    // Anthropic: thinking without its signature (which the provider never
    // sends: only a body written by hand can carry one).
    let unsigned = hi().extra(
        "messages",
        json!([{"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "text", "text": "ok"}]}]),
    );
    let err = service(Which::Anthropic, &server, "m")
        .oneshot(unsigned)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Invalid `signature`"), "{err}");
    // Anthropic with thinking on: a tool call without the thinking before it.
    let call = Message::new(
        Role::Assistant,
        vec![ContentPart::ToolUse {
            id: "t1".into(),
            name: "lookup".into(),
            arguments: json!({}),
        }],
    );
    let err = service(Which::Anthropic, &server, "m")
        .oneshot(
            hi().reasoning(Reasoning::budget(1024))
                .message(call.clone())
                .message(Message::tool_result("t1", "42")),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("must start with a thinking block"),
        "{err}"
    );
    // Gemini 3: a function call without its signature.
    let err = service(Which::Gemini, &server, "gemini-3-pro-preview")
        .oneshot(
            hi().message(call.clone())
                .message(Message::tool_result("t1", "42")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("thought_signature"), "{err}");
    // OpenAI: a tool result for no call.
    let err = service(Which::OpenAi, &server, "m")
        .oneshot(hi().message(Message::tool_result("nope", "42")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("role 'tool'"), "{err}");
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
}

/// History from another provider: reasoning Anthropic did not sign is left
/// out rather than sent to be refused.
#[tokio::test]
async fn anthropic_leaves_out_reasoning_it_did_not_write() {
    let history = hi().message(Message::new(
        Role::Assistant,
        vec![
            ContentPart::Thinking {
                text: "a summary from elsewhere".into(),
                signature: None,
            },
            ContentPart::RedactedThinking {
                data: "rs_1:gAAAAenc".into(),
            },
            ContentPart::RedactedThinking {
                data: "EqQBCkYIARgC".into(),
            },
            ContentPart::Text("ok".into()),
        ],
    ));
    let body = sent(Which::Anthropic, history).await.unwrap();
    assert_eq!(
        body["messages"][1]["content"],
        json!([{"type": "redacted_thinking", "data": "EqQBCkYIARgC"},
               {"type": "text", "text": "ok"}])
    );
}

#[tokio::test]
async fn continuing_a_stored_response_is_the_responses_apis_alone() {
    let req = || hi().previous_response_id("resp_123");
    let body = sent(Which::Responses, req()).await.unwrap();
    assert_eq!(body["previous_response_id"], "resp_123");
    for which in [Which::OpenAi, Which::Anthropic, Which::Gemini] {
        refused(which, req(), "previous_response_id").await;
    }
}

#[tokio::test]
async fn two_breakpoints_in_a_row_mark_one_part_and_thinking_takes_none() {
    let twice = hi().message(
        Message::user("doc")
            .cache(CacheTtl::Short)
            .cache(CacheTtl::Hour),
    );
    let body = sent(Which::Anthropic, twice).await.unwrap();
    assert_eq!(
        body["messages"][1]["content"],
        json!([{"type": "text", "text": "doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    );
    let after_thinking = hi().message(Message::new(
        Role::Assistant,
        vec![
            ContentPart::Thinking {
                text: "t".into(),
                signature: Some("sig".into()),
            },
            ContentPart::CacheBreakpoint {
                ttl: CacheTtl::Short,
            },
        ],
    ));
    refused(Which::Anthropic, after_thinking, "thinking cannot carry").await;
}
