//! Message content in the shapes the GenAI conventions give it
//! (`gen_ai.input.messages`, `gen_ai.output.messages`,
//! `gen_ai.system_instructions`): recorded only when a user opts in.

use serde_json::{Value, json};

use crate::{ContentPart, Image, Message, Role, StopReason, StreamEvent};

/// The most text kept of an answer, in bytes: past it, text parts are cut
/// (the JSON stays whole).
pub(super) const MAX_TEXT: usize = 64 * 1024;

/// `messages` as (`gen_ai.system_instructions`, `gen_ai.input.messages`):
/// system messages apart when the API takes them apart (`separate`), else
/// in the history with the role `system`.
pub(super) fn input(messages: &[Message], separate: bool) -> (Option<String>, String) {
    let mut system = Vec::new();
    let mut history = Vec::new();
    let mut budget = MAX_TEXT;
    for message in messages {
        let parts: Vec<Value> = message
            .content
            .iter()
            .filter_map(|p| part(p, &mut budget))
            .collect();
        if separate && message.role == Role::System {
            system.extend(parts);
            continue;
        }
        history.push(json!({"role": role(message), "parts": parts}));
    }
    let system = (!system.is_empty()).then(|| Value::Array(system).to_string());
    (system, Value::Array(history).to_string())
}

/// A message's role; a user message that only answers tool calls is the
/// conventions' `tool`.
fn role(message: &Message) -> &'static str {
    match message.role {
        Role::System => "system",
        Role::Assistant => "assistant",
        Role::User
            if !message.content.is_empty()
                && message
                    .content
                    .iter()
                    .all(|p| matches!(p, ContentPart::ToolResult { .. })) =>
        {
            "tool"
        }
        Role::User => "user",
    }
}

/// At most `budget` bytes of `text` (cut at a character boundary), the
/// budget reduced by what is kept.
fn kept<'a>(text: &'a str, budget: &mut usize) -> &'a str {
    let mut end = text.len().min(*budget);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    *budget -= end;
    &text[..end]
}

/// A content part in the conventions' shape, its text within `budget`.
/// Images are named, not copied: an inline image's bytes (or a signed
/// URL's query) are no telemetry.
fn part(part: &ContentPart, budget: &mut usize) -> Option<Value> {
    Some(match part {
        ContentPart::Text(text) => json!({"type": "text", "content": kept(text, budget)}),
        ContentPart::Image(Image::Url(url)) => {
            let url = url.split(['?', '#']).next().unwrap_or("");
            let uri = if url.starts_with("data:") {
                "data:"
            } else {
                url
            };
            json!({"type": "uri", "modality": "image", "uri": kept(uri, budget)})
        }
        ContentPart::Image(Image::Base64 { media_type, data }) => json!({
            "type": "image", "mime_type": media_type, "size": data.len(),
        }),
        ContentPart::ToolUse {
            id,
            name,
            arguments,
        } => json!({"type": "tool_call", "id": id, "name": name, "arguments": arguments}),
        ContentPart::ToolResult {
            tool_call_id,
            content,
            ..
        } => json!({
            "type": "tool_call_response", "id": tool_call_id, "response": kept(content, budget),
        }),
        ContentPart::Thinking { text, .. } => {
            json!({"type": "reasoning", "content": kept(text, budget)})
        }
        // Opaque to anyone but the provider, or not content at all.
        ContentPart::RedactedThinking { .. } | ContentPart::CacheBreakpoint { .. } => {
            return None;
        }
    })
}

/// A stop reason as the conventions spell a finish reason.
pub(super) fn finish_reason(reason: &StopReason) -> &str {
    match reason {
        StopReason::EndTurn | StopReason::StopSequence => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_call",
        StopReason::ContentFilter => "content_filter",
        StopReason::Refusal => "refusal",
        StopReason::PauseTurn => "pause_turn",
        StopReason::Other(other) => other,
    }
}

/// The answer's content as it streams, for `gen_ai.output.messages`.
#[derive(Debug, Default)]
pub(super) struct Output {
    text: String,
    reasoning: String,
    /// By the index the stream gives them: (id, name, arguments as they
    /// came).
    tool_calls: std::collections::BTreeMap<usize, (String, String, String)>,
    /// Bytes kept so far, against [`MAX_TEXT`].
    kept: usize,
}

impl Output {
    pub(super) fn observe(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::TextDelta { text } | StreamEvent::RefusalDelta { text }
                if self.room(text.len()) =>
            {
                self.text.push_str(text);
            }
            StreamEvent::ThinkingDelta { text } if self.room(text.len()) => {
                self.reasoning.push_str(text);
            }
            StreamEvent::ToolCallStart { index, id, name } if self.room(id.len() + name.len()) => {
                self.tool_calls
                    .insert(*index, (id.clone(), name.clone(), String::new()));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let fits = self.room(arguments.len());
                if let Some(call) = self.tool_calls.get_mut(index).filter(|_| fits) {
                    call.2.push_str(arguments);
                }
            }
            _ => {}
        }
    }

    fn room(&mut self, more: usize) -> bool {
        let fits = self.kept.saturating_add(more) <= MAX_TEXT;
        if fits {
            self.kept += more;
        }
        fits
    }

    /// The answer's text, as [`Conventions::V1_36`](super::Conventions)
    /// records it.
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// The one output message, ended for `finish_reason`.
    pub(super) fn message(&self, finish_reason: &str) -> String {
        let mut parts = Vec::new();
        if !self.reasoning.is_empty() {
            parts.push(json!({"type": "reasoning", "content": self.reasoning}));
        }
        if !self.text.is_empty() {
            parts.push(json!({"type": "text", "content": self.text}));
        }
        for (id, name, arguments) in self.tool_calls.values() {
            let arguments = serde_json::from_str::<Value>(arguments)
                .unwrap_or_else(|_| Value::String(arguments.clone()));
            parts
                .push(json!({"type": "tool_call", "id": id, "name": name, "arguments": arguments}));
        }
        json!([{"role": "assistant", "parts": parts, "finish_reason": finish_reason}]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_take_the_conventions_shapes() {
        let messages = [
            Message::system("Be brief."),
            Message::user("Weather in Paris?"),
            Message::new(
                Role::Assistant,
                vec![ContentPart::ToolUse {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: json!({"location": "Paris"}),
                }],
            ),
            Message::tool_result("call_1", "rainy, 57°F"),
        ];
        let (system, history) = input(&messages, true);
        assert_eq!(
            system.as_deref(),
            Some(r#"[{"content":"Be brief.","type":"text"}]"#)
        );
        let history: Value = serde_json::from_str(&history).unwrap();
        assert_eq!(history.as_array().unwrap().len(), 3);
        assert_eq!(history[1]["parts"][0]["type"], "tool_call");
        assert_eq!(history[1]["parts"][0]["arguments"]["location"], "Paris");
        assert_eq!(history[2]["role"], "tool");
        assert_eq!(history[2]["parts"][0]["response"], "rainy, 57°F");
        // Inline, the system message keeps its place.
        let (system, history) = input(&messages, false);
        assert!(system.is_none());
        assert!(history.starts_with(r#"[{"parts":[{"content":"Be brief.""#));

        let mut output = Output::default();
        output.observe(&StreamEvent::TextDelta {
            text: "Rain".into(),
        });
        output.observe(&StreamEvent::ToolCallStart {
            index: 0,
            id: "c".into(),
            name: "f".into(),
        });
        output.observe(&StreamEvent::ToolCallDelta {
            index: 0,
            arguments: r#"{"a":1}"#.into(),
        });
        let out: Value = serde_json::from_str(&output.message("tool_call")).unwrap();
        assert_eq!(out[0]["finish_reason"], "tool_call");
        assert_eq!(out[0]["parts"][0]["content"], "Rain");
        assert_eq!(out[0]["parts"][1]["arguments"]["a"], 1);
    }
}
