//! OpenAI's Responses API, as the mock writes it: semantic events, each
//! named in its `event:` line and in its data's `type`, numbered by
//! `sequence_number`, ending at `response.completed` (no `[DONE]`).

use serde_json::{Value, json};

use crate::mock::render::{Asked, Content, Frame};

use super::MESSAGE_ID;

/// The id of every made-up response.
const RESPONSE_ID: &str = "resp_mock_0001";

/// The id of every made-up function call item (its `call_id` is the
/// scripted one).
const CALL_ITEM_ID: &str = "fc_mock_0001";

/// What comes before and after a text delta's raw text.
pub(super) const TEXT_DELTA: (&[u8], &[u8]) = (
    b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_mock_0001\",\"output_index\":0,\"content_index\":0,\"delta\":\"",
    b"\"}\n\n",
);

/// An error inside a stream: the response fails, carrying the error object
/// of `body` (OpenAI's shape, `{"error": {…}}`).
pub(super) fn error_event(body: &Value) -> String {
    let error = json!({
        "code": body.pointer("/error/code").cloned().unwrap_or(Value::Null),
        "message": body.pointer("/error/message").cloned().unwrap_or(Value::Null),
    });
    let data = json!({
        "type": "response.failed",
        "response": {"id": RESPONSE_ID, "object": "response", "status": "failed",
                     "error": error, "output": [], "usage": null},
    });
    format!("event: response.failed\ndata: {data}\n\n")
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    })
}

fn response(asked: &Asked, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": RESPONSE_ID, "object": "response", "created_at": 1_700_000_000,
        "status": status, "model": asked.model, "output": output, "usage": usage,
        "incomplete_details": null, "error": null,
    })
}

fn message_item(text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    } else {
        json!([])
    };
    json!({"id": MESSAGE_ID, "type": "message", "status": status, "role": "assistant",
           "content": content})
}

fn call_item(id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": CALL_ITEM_ID, "type": "function_call", "status": status, "call_id": id,
           "name": name, "arguments": arguments})
}

/// The output items of the answer, whole.
fn items(content: &Content<'_>) -> Vec<Value> {
    match content {
        Content::Text(d) => vec![message_item(&d.concat(), "completed")],
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => {
            let call = call_item(id, name, &arguments.concat(), "completed");
            if text.is_empty() {
                vec![call]
            } else {
                vec![message_item(&text.concat(), "completed"), call]
            }
        }
    }
}

/// The whole answer, not streamed.
pub(super) fn whole(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Value {
    response(
        asked,
        "completed",
        Value::Array(items(content)),
        usage(input_tokens, output_tokens),
    )
}

/// The answer streamed.
pub(super) fn frames(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut push = |kind: &str, mut data: Value, counted: bool| {
        data["type"] = kind.into();
        data["sequence_number"] = frames.len().into();
        frames.push(Frame {
            text: format!("event: {kind}\ndata: {data}\n\n"),
            counted,
        });
    };
    push(
        "response.created",
        json!({"response": response(asked, "in_progress", json!([]), Value::Null)}),
        false,
    );
    let (text, call) = match content {
        Content::Text(d) => (*d, None),
        Content::Tool {
            text,
            id,
            name,
            arguments,
        } => (*text, Some((*id, *name, *arguments))),
    };
    let mut output = 0;
    if !text.is_empty() || call.is_none() {
        let ids = json!({"item_id": MESSAGE_ID, "output_index": output, "content_index": 0});
        let with = |mut v: Value, extra: Value| {
            if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
            v
        };
        push(
            "response.output_item.added",
            json!({"output_index": output, "item": message_item("", "in_progress")}),
            false,
        );
        push(
            "response.content_part.added",
            with(
                ids.clone(),
                json!({"part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
            false,
        );
        for d in text {
            push(
                "response.output_text.delta",
                with(ids.clone(), json!({"delta": d, "logprobs": []})),
                true,
            );
        }
        let whole = text.concat();
        push(
            "response.output_text.done",
            with(ids.clone(), json!({"text": whole, "logprobs": []})),
            false,
        );
        push(
            "response.content_part.done",
            with(
                ids,
                json!({"part": {"type": "output_text", "text": whole, "annotations": []}}),
            ),
            false,
        );
        push(
            "response.output_item.done",
            json!({"output_index": output, "item": message_item(&whole, "completed")}),
            false,
        );
        output += 1;
    }
    if let Some((id, name, arguments)) = call {
        push(
            "response.output_item.added",
            json!({"output_index": output, "item": call_item(id, name, "", "in_progress")}),
            false,
        );
        for a in arguments {
            push(
                "response.function_call_arguments.delta",
                json!({"item_id": CALL_ITEM_ID, "output_index": output, "delta": a}),
                true,
            );
        }
        let whole = arguments.concat();
        push(
            "response.function_call_arguments.done",
            json!({"item_id": CALL_ITEM_ID, "output_index": output, "arguments": whole}),
            false,
        );
        push(
            "response.output_item.done",
            json!({"output_index": output, "item": call_item(id, name, &whole, "completed")}),
            false,
        );
    }
    push(
        "response.completed",
        json!({"response": response(
            asked,
            "completed",
            Value::Array(items(content)),
            usage(input_tokens, output_tokens),
        )}),
        false,
    );
    frames
}

/// Why the Responses API would refuse this request body, as (status, error
/// type, message): what a stateless conversation gets wrong when it is sent
/// back — a reasoning item that cannot be found (not stored, and without its
/// encrypted content), a function call output that answers no call before it.
pub(crate) fn refusal(body: &Value) -> Option<(u16, &'static str, String)> {
    let stored = body.get("store").and_then(Value::as_bool).unwrap_or(true);
    // Continuing a stored response, outputs answer its calls.
    let continued = body.get("previous_response_id").is_some();
    let items = body.get("input").and_then(Value::as_array)?;
    let mut calls = Vec::new();
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("reasoning") => {
                let id = item.get("id").and_then(Value::as_str).unwrap_or("");
                if !stored && item.get("encrypted_content").is_none() {
                    return Some((
                        404,
                        "invalid_request_error",
                        format!(
                            "Item with id '{id}' not found. Items are not persisted when \
                             `store` is set to false."
                        ),
                    ));
                }
            }
            Some("function_call") => {
                calls.extend(item.get("call_id").and_then(Value::as_str));
            }
            Some("function_call_output") => {
                let id = item.get("call_id").and_then(Value::as_str).unwrap_or("");
                if !continued && !calls.contains(&id) {
                    return Some((
                        400,
                        "invalid_request_error",
                        format!("No tool call found for function call output with call_id {id}."),
                    ));
                }
            }
            _ => {}
        }
    }
    None
}
