//! Every public field of `ChatRequest` has a builder, and each reaches the
//! wire as each provider spells it: read back from what the mock server
//! received.

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    Anthropic, ChatRequest, Credential, Deadline, Gemini, Message, OpenAi, Tool, ToolChoice,
};
use serde_json::json;
use std::time::Duration;
use tower::ServiceExt;

fn tide() -> Tool {
    Tool::new(
        "tide",
        "High and low water for a port",
        json!({"type": "object", "properties": {"port": {"type": "string"}}}),
    )
}

/// A request built with every builder, some twice to show which replace
/// and which append.
fn every_builder() -> ChatRequest {
    ChatRequest::new("ignored-model")
        .message(Message::user("replaced by messages()"))
        .messages([
            Message::system("Be brief."),
            Message::user("When is high tide in Brest?"),
            Message::new(
                llm_tower::Role::Assistant,
                vec![llm_tower::ContentPart::ToolUse {
                    id: "call_1".into(),
                    name: "tide".into(),
                    arguments: json!({"port": "Brest"}),
                }],
            ),
            Message::tool_error("call_1", "the tide service is down"),
        ])
        .tool(Tool::new("replaced", "by tools()", json!({})))
        .tools([tide()])
        .tool_choice(ToolChoice::Auto)
        .max_tokens(64)
        .temperature(0.2)
        .top_p(0.9)
        .stop("END")
        .stop("STOP")
        .model("the-model")
        .stream(false)
        .extension(Credential::api_key("sk-per-request-key"))
        .extension(Deadline::after(Duration::from_secs(30)))
}

async fn send<S>(svc: S)
where
    S: tower::Service<ChatRequest, Response = llm_tower::ChatStream, Error = llm_tower::Error>,
{
    svc.oneshot(every_builder())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
}

#[tokio::test]
async fn openai_sends_every_field() {
    let server = MockServer::start().await;
    server.push(Reply::text(["ok"]));
    let svc = OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("sk-configured")
        .build()
        .unwrap();
    send(svc).await;
    let r = &server.requests()[0];
    assert_eq!(r.header("authorization"), Some("Bearer sk-per-request-key"));
    let body = r.json();
    assert_eq!(body["model"], "the-model");
    assert_eq!(body["stream"], false);
    assert_eq!(body["max_tokens"], 64);
    // Sent as written, not as f32 widened to f64 (0.20000000298023224).
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains(r#""temperature":0.2"#), "{text}");
    assert!(text.contains(r#""top_p":0.9"#), "{text}");
    assert_eq!(body["stop"], json!(["END", "STOP"]));
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["tools"].as_array().unwrap().len(), 1);
    assert_eq!(body["tools"][0]["function"]["name"], "tide");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "the tide service is down"})
    );
}

#[tokio::test]
async fn anthropic_sends_every_field() {
    let server = MockServer::start().await;
    server.push(Reply::text(["ok"]));
    let svc = Anthropic::builder()
        .base_url(server.anthropic_url())
        .api_key("sk-configured")
        .build()
        .unwrap();
    send(svc).await;
    let r = &server.requests()[0];
    assert_eq!(r.header("x-api-key"), Some("sk-per-request-key"));
    let body = r.json();
    assert_eq!(body["model"], "the-model");
    assert_eq!(body["max_tokens"], 64);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains(r#""temperature":0.2"#), "{text}");
    assert!(text.contains(r#""top_p":0.9"#), "{text}");
    assert_eq!(body["stop_sequences"], json!(["END", "STOP"]));
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["tools"][0]["name"], "tide");
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user");
    assert_eq!(
        last["content"][0],
        json!({"type": "tool_result", "tool_use_id": "call_1",
               "content": "the tide service is down", "is_error": true})
    );
}

#[tokio::test]
async fn gemini_sends_every_field() {
    let server = MockServer::start().await;
    server.push(Reply::text(["ok"]));
    let svc = Gemini::builder()
        .base_url(server.gemini_url())
        .api_key("configured")
        .build()
        .unwrap();
    send(svc).await;
    let r = &server.requests()[0];
    assert!(
        r.path.contains("/models/the-model:generateContent"),
        "{}",
        r.path
    );
    assert_eq!(r.header("x-goog-api-key"), Some("sk-per-request-key"));
    let body = r.json();
    let config = &body["generationConfig"];
    assert_eq!(config["maxOutputTokens"], 64);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains(r#""temperature":0.2"#), "{text}");
    assert!(text.contains(r#""topP":0.9"#), "{text}");
    assert_eq!(config["stopSequences"], json!(["END", "STOP"]));
    assert_eq!(body["tools"][0]["functionDeclarations"][0]["name"], "tide");
    let last = body["contents"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["parts"][0]["functionResponse"]["response"],
        json!({"error": "the tide service is down"}),
        "{last}"
    );
    assert_eq!(last["parts"][0]["functionResponse"]["name"], "tide");
}

#[test]
fn tool_error_and_tool_result_differ_only_in_the_flag() {
    let fail = Message::tool_error("c", "boom");
    let ok = Message::tool_result("c", "boom");
    assert_eq!(fail.role, ok.role);
    match (&fail.content[0], &ok.content[0]) {
        (
            llm_tower::ContentPart::ToolResult { is_error: true, .. },
            llm_tower::ContentPart::ToolResult {
                is_error: false, ..
            },
        ) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn max_completion_tokens_is_a_toggle() {
    let server = MockServer::start().await;
    server.set_default(Reply::text(["ok"]));
    let openai = |on| {
        OpenAi::builder()
            .base_url(server.openai_url())
            .model("m")
            .max_completion_tokens(true)
            .max_completion_tokens(on)
            .build()
            .unwrap()
    };
    for on in [true, false] {
        openai(on)
            .oneshot(
                ChatRequest::new("")
                    .message(Message::user("hi"))
                    .max_tokens(99),
            )
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
    }
    let sent = server.requests();
    assert_eq!(sent[0].json()["max_completion_tokens"], 99);
    assert_eq!(sent[0].json().get("max_tokens"), None);
    assert_eq!(sent[1].json()["max_tokens"], 99);
    assert_eq!(sent[1].json().get("max_completion_tokens"), None);
}

/// A retrying layer keeps a copy of the request for each later attempt: the
/// model name, the conversation, the tools and `extra` are shared by the
/// copies, not copied, and a copy that is changed gets its own.
#[test]
fn clones_share_the_large_parts_until_one_is_changed() {
    use std::sync::Arc;

    let original = every_builder().extra("seed", 7);
    let mut copy = original.clone();
    assert!(Arc::ptr_eq(&original.model, &copy.model));
    assert!(Arc::ptr_eq(&original.messages, &copy.messages));
    assert!(Arc::ptr_eq(&original.tools, &copy.tools));
    assert!(Arc::ptr_eq(&original.extra, &copy.extra));

    Arc::make_mut(&mut copy.messages).push(Message::user("and in Roscoff?"));
    Arc::make_mut(&mut copy.extra).insert("seed".into(), json!(8));
    assert_eq!(original.messages.len(), 4);
    assert_eq!(copy.messages.len(), 5);
    assert_eq!(original.extra["seed"], 7);
    assert_eq!(copy.extra["seed"], 8);
    assert!(Arc::ptr_eq(&original.tools, &copy.tools));
}
