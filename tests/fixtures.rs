//! Recorded-shape transcripts decode to the right events, whatever the chunk
//! boundaries. Runs with an in-process transport: no socket.

mod support;

use llm_tower::{Anthropic, ChatRequest, Error, Message, OpenAi, StopReason, StreamEvent, Usage};
use serde_json::json;
use support::{FixtureTransport, drain, fixture, texts};
use tower::ServiceExt;

async fn openai(name: &str, chunk: usize) -> (Vec<StreamEvent>, Option<Error>) {
    let transport = FixtureTransport::sse(fixture(name), chunk);
    let svc = OpenAi::builder()
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
    sent_once(
        &transport,
        "https://api.openai.com/v1/chat/completions",
        ("authorization", "Bearer sk-fixture"),
        json!([{"role": "user", "content": "hi"}]),
    );
    out
}

async fn anthropic(name: &str, chunk: usize) -> (Vec<StreamEvent>, Option<Error>) {
    let transport = FixtureTransport::sse(fixture(name), chunk);
    let svc = Anthropic::builder()
        .api_key("sk-ant-fixture")
        .model("m")
        .build_with(transport.clone())
        .unwrap();
    let out = drain(
        svc.oneshot(ChatRequest::new("").message(Message::user("hi")))
            .await
            .unwrap(),
    )
    .await;
    sent_once(
        &transport,
        "https://api.anthropic.com/v1/messages",
        ("x-api-key", "sk-ant-fixture"),
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
    );
    out
}

/// The transport was handed exactly one request: a streaming POST of the
/// conversation (`messages`, as the provider spells it) to `uri`, with the
/// key in its header.
fn sent_once(
    transport: &FixtureTransport,
    uri: &str,
    key: (&str, &str),
    messages: serde_json::Value,
) {
    let seen = transport.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one request per call");
    let r = &seen[0];
    assert_eq!(r.method(), http::Method::POST);
    assert_eq!(r.uri(), uri);
    assert_eq!(r.headers()[key.0], key.1);
    assert_eq!(r.headers()["accept"], "text/event-stream");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body["model"], "m");
    assert_eq!(body["stream"], true);
    assert_eq!(body["messages"], messages);
}

/// The same events whatever the chunking.
async fn each_chunking<F, Fut>(run: F) -> (Vec<StreamEvent>, Option<String>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (Vec<StreamEvent>, Option<Error>)>,
{
    let (events, err) = support::each_chunking("the transcript", run).await;
    (events, err.map(|e| e.to_string()))
}

#[tokio::test]
async fn openai_text_with_usage() {
    let (events, err) = each_chunking(|c| openai("openai_text.sse", c)).await;
    assert!(err.is_none());
    assert_eq!(
        events.first(),
        Some(&StreamEvent::MessageStart {
            id: Some("chatcmpl-LT0001".into()),
            model: Some("gpt-4o-mini-2024-07-18".into())
        })
    );
    assert_eq!(texts(&events).concat(), "The tide turns twice daily.");
    assert_eq!(
        texts(&events).len(),
        6,
        "the empty first content is not an event"
    );
    let n = events.len();
    assert_eq!(
        events[n - 2],
        StreamEvent::Usage(Usage {
            input_tokens: 19,
            output_tokens: 6,
            cache_read_input_tokens: Some(0),
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
async fn openai_parallel_tool_calls_by_index() {
    let svc = OpenAi::builder()
        .model("m")
        .build_with(FixtureTransport::sse(
            fixture("openai_parallel_tools.sse"),
            5,
        ))
        .unwrap();
    let c = svc
        .oneshot(ChatRequest::new(""))
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(c.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(c.tool_calls.len(), 2);
    assert_eq!(
        (c.tool_calls[0].id.as_str(), c.tool_calls[0].name.as_str()),
        ("call_tideA", "tide_table")
    );
    assert_eq!(c.tool_calls[0].arguments, json!({"port": "Brest"}));
    assert_eq!(c.tool_calls[1].id, "call_tideB");
    assert_eq!(c.tool_calls[1].arguments, json!({"port": "Saint-Malo"}));
    assert_eq!(c.text, "");
}

#[tokio::test]
async fn openai_refusal() {
    let (events, err) = each_chunking(|c| openai("openai_refusal.sse", c)).await;
    assert!(err.is_none());
    let refusal: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::RefusalDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(refusal, "I can't help with that.");
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, StreamEvent::TextDelta { .. }))
    );
}

#[tokio::test]
async fn openai_compatible_reasoning_then_error_chunk() {
    let (events, err) =
        each_chunking(|c| openai("openai_compat_reasoning_then_error.sse", c)).await;
    let thinking: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ThinkingDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(thinking, "Weigh the options. Then answer.");
    assert_eq!(texts(&events), ["Yes"]);
    let err = err.expect("the error chunk ends the stream");
    assert!(
        err.contains("502") && err.contains("Upstream provider dropped"),
        "{err}"
    );

    // The class comes from the chunk's numeric code.
    let (_, err) = openai("openai_compat_reasoning_then_error.sse", 1 << 20).await;
    assert!(
        matches!(err, Some(Error::Server { status, .. }) if status == 502),
        "{err:?}"
    );
}

#[tokio::test]
async fn openai_event_error_is_classified() {
    let (events, err) = openai("openai_event_error.sse", 4).await;
    assert_eq!(texts(&events), ["Par"]);
    let err = err.unwrap();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(
        err.api_error().unwrap().status(),
        None,
        "an in-stream error has no HTTP status"
    );
}

#[tokio::test]
async fn anthropic_padded_text_without_final_newline() {
    let (events, err) = each_chunking(|c| anthropic("anthropic_text.sse", c)).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts(&events).concat(), "Low tide at noon.");
    let usages: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Usage(u) => Some(*u),
            _ => None,
        })
        .collect();
    // Input counts cached tokens too; message_delta updates output only.
    assert_eq!(usages.last().unwrap().input_tokens, 125);
    assert_eq!(usages.last().unwrap().cache_read_input_tokens, Some(100));
    assert_eq!(usages.last().unwrap().output_tokens, 9);
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Done {
            stop_reason: Some(StopReason::EndTurn)
        })
    );
}

#[tokio::test]
async fn anthropic_tool_use_after_text() {
    let (events, err) = each_chunking(|c| anthropic("anthropic_tool_use.sse", c)).await;
    assert!(err.is_none());
    assert!(events.contains(&StreamEvent::ToolCallStart {
        index: 0,
        id: "toolu_01LTtide".into(),
        name: "tide_table".into()
    }));
    let c = anthropic_completion("anthropic_tool_use.sse")
        .await
        .unwrap();
    assert_eq!(c.text, "Checking the tables.");
    assert_eq!(
        c.tool_calls[0].arguments,
        json!({"port": "Brest", "days": 2})
    );
    assert_eq!(c.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(c.usage.unwrap().output_tokens, 58);
}

async fn anthropic_completion(name: &str) -> Result<llm_tower::Completion, Error> {
    let svc = Anthropic::builder()
        .model("m")
        .build_with(FixtureTransport::sse(fixture(name), 9))
        .unwrap();
    svc.oneshot(ChatRequest::new("")).await?.completion().await
}

#[tokio::test]
async fn anthropic_thinking_with_signature() {
    let c = anthropic_completion("anthropic_thinking.sse")
        .await
        .unwrap();
    assert_eq!(c.thinking, "Tides follow the moon.");
    assert_eq!(
        c.thinking_signature.as_deref(),
        Some("EqQBCkgIARABGAIiQLTsigLT==")
    );
    assert_eq!(c.text, "Twice a day.");
    // Replaying the answer keeps the signed thinking first.
    let m = c.to_message();
    assert!(matches!(
        &m.content[0],
        llm_tower::ContentPart::Thinking {
            signature: Some(_),
            ..
        }
    ));
}

#[tokio::test]
async fn anthropic_redacted_thinking() {
    let c = anthropic_completion("anthropic_redacted_thinking.sse")
        .await
        .unwrap();
    assert_eq!(
        c.redacted_thinking,
        ["RTBLTredactedAAAA", "RTBLTredactedBBBB"]
    );
    assert_eq!(c.text, "Done thinking.");
}

#[tokio::test]
async fn anthropic_overloaded_mid_stream_keeps_the_output() {
    let (events, err) = each_chunking(|c| anthropic("anthropic_overloaded_midstream.sse", c)).await;
    assert_eq!(texts(&events), ["High"]);
    assert!(err.unwrap().starts_with("overloaded"));
    let err = anthropic_completion("anthropic_overloaded_midstream.sse")
        .await
        .unwrap_err();
    let Error::Interrupted { partial, source } = err else {
        panic!("output was delivered: the error is Interrupted");
    };
    assert_eq!(partial.text, "High");
    assert!(matches!(
        *source,
        Error::Overloaded {
            retry_after: None,
            ..
        }
    ));
    assert!(!Error::Interrupted { partial, source }.is_retryable());
}

#[tokio::test]
async fn anthropic_tool_arguments_cut_by_max_tokens_are_kept_raw() {
    let c = anthropic_completion("anthropic_max_tokens_cut_tool.sse")
        .await
        .unwrap();
    assert_eq!(c.stop_reason, Some(StopReason::MaxTokens));
    assert_eq!(c.tool_calls[0].arguments, serde_json::Value::Null);
    assert_eq!(
        c.tool_calls[0].raw_arguments,
        r#"{"path": "tides.txt", "lines": ["High water 06:12","#
    );
}
