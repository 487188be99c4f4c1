//! OpenAI Chat Completions, as the mock writes it.

use serde_json::{Value, json};

use crate::mock::render::{Asked, Content, Frame};

use super::MESSAGE_ID;

/// An error body: `{"error": {message, type, param, code}}`.
pub(super) fn error_body(error_type: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": error_type, "param": null, "code": error_type}})
}

/// What comes before and after a text delta's raw text.
pub(super) const TEXT_DELTA: (&[u8], &[u8]) = (
    b"data: {\"id\":\"msg_mock_0001\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
    b"\"},\"finish_reason\":null}]}\n\n",
);

/// The whole answer, not streamed.
pub(super) fn whole(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Value {
    let mut message = json!({"role": "assistant", "content": null, "refusal": null});
    let finish = match content {
        Content::Text(d) => {
            message["content"] = d.concat().into();
            "stop"
        }
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => {
            if !text.is_empty() {
                message["content"] = text.concat().into();
            }
            message["tool_calls"] = json!([{
                "id": id, "type": "function",
                "function": {"name": name, "arguments": arguments.concat()},
            }]);
            "tool_calls"
        }
    };
    json!({
        "id": MESSAGE_ID, "object": "chat.completion", "created": 1_700_000_000, "model": asked.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens},
    })
}

/// The answer streamed.
pub(super) fn frames(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Vec<Frame> {
    let chunk = |delta: Value, finish: Value| {
        let v = json!({
            "id": MESSAGE_ID, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": asked.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null,
        });
        format!("data: {v}\n\n")
    };
    let mut frames = Vec::new();
    let finish = match content {
        Content::Text(deltas) => {
            frames.push(Frame {
                text: chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                counted: false,
            });
            for d in deltas.iter() {
                frames.push(Frame {
                    text: chunk(json!({"content": d}), Value::Null),
                    counted: true,
                });
            }
            "stop"
        }
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => {
            let call = json!([{
                "index": 0, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""},
            }]);
            if text.is_empty() {
                frames.push(Frame {
                    text: chunk(
                        json!({"role": "assistant", "content": null, "tool_calls": call}),
                        Value::Null,
                    ),
                    counted: false,
                });
            } else {
                // Text first, then the call opens in a chunk of its own.
                frames.push(Frame {
                    text: chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                    counted: false,
                });
                for d in text.iter() {
                    frames.push(Frame {
                        text: chunk(json!({"content": d}), Value::Null),
                        counted: true,
                    });
                }
                frames.push(Frame {
                    text: chunk(json!({"tool_calls": call}), Value::Null),
                    counted: false,
                });
            }
            for a in arguments.iter() {
                frames.push(Frame {
                    text: chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
                        Value::Null,
                    ),
                    counted: true,
                });
            }
            "tool_calls"
        }
    };
    frames.push(Frame {
        text: chunk(json!({}), finish.into()),
        counted: false,
    });
    if asked.include_usage {
        let v = json!({
            "id": MESSAGE_ID, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": asked.model, "choices": [],
            "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens},
        });
        frames.push(Frame {
            text: format!("data: {v}\n\n"),
            counted: false,
        });
    }
    frames.push(Frame {
        text: "data: [DONE]\n\n".into(),
        counted: false,
    });
    frames
}

/// Why Chat Completions would refuse this request body, as (status, error
/// type, message): a tool message that answers no tool call before it.
pub(crate) fn refusal(body: &Value) -> Option<(u16, &'static str, String)> {
    let messages = body.get("messages").and_then(Value::as_array)?;
    let mut calls: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("assistant") => calls.extend(
                m.get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("id").and_then(Value::as_str)),
            ),
            Some("tool") => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                if !calls.contains(&id) {
                    return Some((
                        400,
                        "invalid_request_error",
                        format!(
                            "Invalid parameter: messages[{i}]: messages with role 'tool' must be \
                             a response to a preceding message with 'tool_calls'."
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    None
}
