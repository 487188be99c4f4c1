//! What a request will cost before it is sent: a cheap token estimate.

use serde_json::Value;

use crate::{ChatRequest, ContentPart};

/// A cheap estimate of a request's tokens: `(input, output)`. Input is
/// about four bytes of text to a token, plus a few per message, and a flat
/// amount per image; output is `max_tokens`, what providers reserve.
pub(crate) fn estimate(request: &ChatRequest) -> (u64, u64) {
    /// A typical image, by OpenAI's and Anthropic's published sizes.
    const IMAGE_TOKENS: u64 = 1000;
    const MESSAGE_TOKENS: u64 = 4;
    let mut bytes = 0u64;
    let mut tokens = 0u64;
    for message in request.messages.iter() {
        tokens += MESSAGE_TOKENS;
        for part in &message.content {
            bytes += match part {
                ContentPart::Text(text) => text.len() as u64,
                ContentPart::Image(_) => {
                    tokens += IMAGE_TOKENS;
                    0
                }
                ContentPart::ToolUse {
                    id,
                    name,
                    arguments,
                } => (id.len() + name.len()) as u64 + json_len(arguments, 0),
                ContentPart::ToolResult {
                    tool_call_id,
                    content,
                    ..
                } => (tool_call_id.len() + content.len()) as u64,
                ContentPart::Thinking { text, .. } => text.len() as u64,
                ContentPart::RedactedThinking { data } => data.len() as u64,
                ContentPart::CacheBreakpoint { .. } => 0,
            };
        }
    }
    for tool in request.tools.iter() {
        bytes += (tool.name.len() + tool.description.as_ref().map_or(0, String::len)) as u64;
        bytes += json_len(&tool.parameters, 0);
    }
    bytes += request.stop.iter().map(|s| s.len() as u64).sum::<u64>();
    let input = tokens + bytes.div_ceil(4);
    (input, request.max_tokens.map_or(0, u64::from))
}

/// About how long `value` is as JSON, without writing it out.
pub(super) fn json_len(value: &Value, depth: u32) -> u64 {
    // Deeper than any real schema: a guess, not a stack overflow.
    const MAX_DEPTH: u32 = 32;
    if depth > MAX_DEPTH {
        return 16;
    }
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 8,
        Value::String(s) => s.len() as u64 + 2,
        Value::Array(items) => {
            2 + items
                .iter()
                .map(|v| json_len(v, depth + 1) + 1)
                .sum::<u64>()
        }
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() as u64 + 4 + json_len(v, depth + 1))
                .sum::<u64>()
        }
    }
}
