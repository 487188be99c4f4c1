//! Gemini's Generative Language API, as the mock writes it.

use http::StatusCode;
use serde_json::{Value, json};

use crate::mock::render::{Asked, Content, Frame};

use super::{MESSAGE_ID, tool_args};

/// An error body: `{"error": {code, message, status}}`.
pub(super) fn error_body(status: StatusCode, error_type: &str, message: &str) -> Value {
    json!({"error": {
        "code": status.as_u16(), "message": message, "status": status_name(error_type),
    }})
}

/// What comes before and after a text delta's raw text.
pub(super) const TEXT_DELTA: (&[u8], &[u8]) = (
    b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"",
    b"\"}],\"role\":\"model\"},\"index\":0}]}\n\n",
);

/// The whole answer, not streamed.
pub(super) fn whole(
    asked: &Asked,
    content: &Content<'_>,
    input_tokens: u64,
    output_tokens: u64,
) -> Value {
    let parts = match content {
        Content::Text(d) => vec![json!({"text": d.concat()})],
        Content::Tool {
            text,
            id: _,
            name,
            arguments,
        } => {
            // Gemini's calls carry no id.
            let call = json!({"functionCall": {
                "name": name, "args": tool_args(arguments),
            }});
            if text.is_empty() {
                vec![call]
            } else {
                vec![json!({"text": text.concat()}), call]
            }
        }
    };
    response_parts(
        asked,
        parts,
        Some("STOP"),
        usage(input_tokens, output_tokens),
    )
}

/// Gemini's status name for an error type given in OpenAI's or Anthropic's
/// words; a name in Gemini's own words is kept.
pub(super) fn status_name(error_type: &str) -> &str {
    match error_type {
        "rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota" => "RESOURCE_EXHAUSTED",
        "overloaded_error" => "UNAVAILABLE",
        "authentication_error" | "invalid_api_key" => "UNAUTHENTICATED",
        "permission_error" => "PERMISSION_DENIED",
        "server_error" | "api_error" => "INTERNAL",
        "invalid_request_error" => "INVALID_ARGUMENT",
        "not_found_error" => "NOT_FOUND",
        other => other,
    }
}

/// The HTTP status Gemini pairs with a status name.
pub(super) fn status_code(status: &str) -> StatusCode {
    match status {
        "RESOURCE_EXHAUSTED" => StatusCode::TOO_MANY_REQUESTS,
        "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "PERMISSION_DENIED" => StatusCode::FORBIDDEN,
        "INVALID_ARGUMENT" => StatusCode::BAD_REQUEST,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({"promptTokenCount": input_tokens, "candidatesTokenCount": output_tokens,
           "totalTokenCount": input_tokens + output_tokens})
}

/// One `GenerateContentResponse` with one part.
fn response(asked: &Asked, part: Value, finish: Option<&str>, usage: Value) -> Value {
    response_parts(asked, vec![part], finish, usage)
}

/// One `GenerateContentResponse` with these parts.
fn response_parts(asked: &Asked, parts: Vec<Value>, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(finish) = finish {
        candidate["finishReason"] = finish.into();
    }
    json!({"candidates": [candidate], "usageMetadata": usage,
           "modelVersion": asked.model, "responseId": MESSAGE_ID})
}

/// Gemini streams: one chunk per delta (a function call comes whole, in one
/// chunk), then one with the finish reason; no terminator after it.
pub(super) fn frames(asked: &Asked, content: &Content<'_>, input_tokens: u64) -> Vec<Frame> {
    let chunk = |v: Value, counted: bool| Frame {
        text: format!("data: {v}\n\n"),
        counted,
    };
    let mut frames = Vec::new();
    let mut output = 0;
    let (deltas, tool) = match content {
        Content::Text(deltas) => (*deltas, None),
        Content::Tool {
            text,
            id: _,
            name,
            arguments,
        } => (*text, Some((name, arguments))),
    };
    for d in deltas {
        output += 1;
        let usage = usage(input_tokens, output);
        frames.push(chunk(
            response(asked, json!({"text": d}), None, usage),
            true,
        ));
    }
    if let Some((name, arguments)) = tool {
        output += arguments.len() as u64 + 1;
        let part = json!({"functionCall": {"name": name, "args": tool_args(arguments)}});
        let usage = usage(input_tokens, output);
        frames.push(chunk(response(asked, part, None, usage), true));
    }
    let usage = usage(input_tokens, output);
    frames.push(chunk(
        response(asked, json!({"text": ""}), Some("STOP"), usage),
        false,
    ));
    frames
}

/// Why Gemini would refuse this request body for `model`, as (status,
/// error type, message): Gemini 3 models refuse a model turn whose first
/// function call comes back without its thought signature.
pub(crate) fn refusal(model: &str, body: &Value) -> Option<(u16, &'static str, String)> {
    if !model.starts_with("gemini-3") {
        return None;
    }
    let contents = body.get("contents").and_then(Value::as_array)?;
    for (i, c) in contents.iter().enumerate() {
        if c.get("role").and_then(Value::as_str) != Some("model") {
            continue;
        }
        let first_call = c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("functionCall").is_some());
        if let Some(call) = first_call
            && call.get("thoughtSignature").is_none()
        {
            return Some((
                400,
                "invalid_request_error",
                format!(
                    "Function call is missing a thought_signature in functionCall parts. \
                     This is required for tools to work correctly (contents[{i}])."
                ),
            ));
        }
    }
    None
}
