//! Anthropic Messages, as the mock writes it.

use serde_json::{Value, json};

use crate::mock::render::{Asked, Content, Frame};

use super::{MESSAGE_ID, tool_args};

/// An error body: `{"type": "error", "error": {type, message}, "request_id"}`.
pub(super) fn error_body(error_type: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_mock",
    })
}

/// What comes before and after a text delta's raw text.
pub(super) const TEXT_DELTA: (&[u8], &[u8]) = (
    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"",
    b"\"}}\n\n",
);

/// The whole answer, not streamed.
pub(super) fn whole(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Value {
    let (blocks, stop) = match content {
        Content::Text(d) => (
            vec![json!({"type": "text", "text": d.concat()})],
            "end_turn",
        ),
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => {
            let call =
                json!({"type": "tool_use", "id": id, "name": name, "input": tool_args(arguments)});
            let blocks = if text.is_empty() {
                vec![call]
            } else {
                vec![json!({"type": "text", "text": text.concat()}), call]
            };
            (blocks, "tool_use")
        }
    };
    json!({
        "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": asked.model,
        "content": blocks, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": output_tokens},
    })
}

/// The answer streamed.
pub(super) fn frames(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Vec<Frame> {
    let event = |name: &str, data: Value| Frame {
        text: format!("event: {name}\ndata: {data}\n\n"),
        counted: false,
    };
    let mut frames = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": asked.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1},
            }}),
        ),
        // The API sends pings to keep the connection alive; one comes early.
        event("ping", json!({"type": "ping"})),
    ];
    let mut last_block = 0;
    let stop = match content {
        Content::Text(deltas) => {
            frames.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for d in deltas.iter() {
                let mut f = event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
                );
                f.counted = true;
                frames.push(f);
            }
            "end_turn"
        }
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => {
            // The text, if any, is block 0 and the call the next.
            let mut index = 0;
            if !text.is_empty() {
                frames.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                for d in text.iter() {
                    let mut f = event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
                    );
                    f.counted = true;
                    frames.push(f);
                }
                frames.push(event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                index = 1;
            }
            frames.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            for a in arguments.iter() {
                let mut f = event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": a}}),
                );
                f.counted = true;
                frames.push(f);
            }
            last_block = index;
            "tool_use"
        }
    };
    frames.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": last_block}),
    ));
    frames.push(event(
        "message_delta",
        // The usage is cumulative, input included, as the API now sends it.
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0, "output_tokens": output_tokens}}),
    ));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    frames
}

/// Why Anthropic would refuse this request body, as (status, error type,
/// message): on Vertex AI, a body without Vertex's `anthropic_version`; a
/// thinking block sent back without its signature; or — with thinking on —
/// a last assistant turn that calls a tool without the thinking that led to
/// the call.
pub(crate) fn refusal(body: &Value, on_vertex: bool) -> Option<(u16, &'static str, String)> {
    if on_vertex
        && body.get("anthropic_version").and_then(Value::as_str) != Some("vertex-2023-10-16")
    {
        return Some((
            400,
            "invalid_request_error",
            "anthropic_version: Input should be 'vertex-2023-10-16'".to_owned(),
        ));
    }
    let messages = body.get("messages").and_then(Value::as_array)?;
    let thinking_on = body.get("thinking").is_some();
    let mut last_assistant = None;
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        last_assistant = Some((i, m));
        for (j, block) in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let signed = block
                .get("signature")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if block.get("type").and_then(Value::as_str) == Some("thinking") && !signed {
                return Some((
                    400,
                    "invalid_request_error",
                    format!("messages.{i}.content.{j}: Invalid `signature` in `thinking` block"),
                ));
            }
        }
    }
    let (i, last) = last_assistant?;
    let blocks = last.get("content").and_then(Value::as_array)?;
    let kind = |b: &Value| b.get("type").and_then(Value::as_str).map(str::to_owned);
    let calls = blocks
        .iter()
        .any(|b| kind(b).as_deref() == Some("tool_use"));
    let first = blocks.first().and_then(kind);
    if thinking_on && calls && !matches!(first.as_deref(), Some("thinking" | "redacted_thinking")) {
        return Some((
            400,
            "invalid_request_error",
            format!(
                "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but \
                 found `{}`. When `thinking` is enabled, a final `assistant` message must start \
                 with a thinking block",
                first.unwrap_or_default()
            ),
        ));
    }
    None
}
