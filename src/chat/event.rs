use serde::{Deserialize, Serialize};

/// One provider-neutral event of an answer.
///
/// Events split into two classes (see [`is_output`](StreamEvent::is_output)):
/// *output* — what the model generated, which a caller may already have shown
/// to a user — and *metadata*, which never makes a retry visible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamEvent {
    /// The answer started. Metadata.
    MessageStart {
        /// The provider's id for the answer.
        id: Option<String>,
        /// The model that answers, as the provider names it.
        model: Option<String>,
    },
    /// A piece of the answer's text. Output.
    TextDelta {
        /// The text.
        text: String,
    },
    /// A piece of the model's visible reasoning (Anthropic thinking, or
    /// `reasoning_content` / `reasoning` from OpenAI-compatible servers).
    /// Output.
    ThinkingDelta {
        /// The text.
        text: String,
    },
    /// The provider's signature over the reasoning just streamed. Output.
    ThinkingSignature {
        /// The signature.
        signature: String,
    },
    /// A block of encrypted reasoning. Output.
    RedactedThinking {
        /// The opaque data.
        data: String,
    },
    /// A piece of a refusal (OpenAI `delta.refusal`). Output.
    RefusalDelta {
        /// The text.
        text: String,
    },
    /// A tool call begins. Output.
    ToolCallStart {
        /// The call's position among this answer's tool calls, from 0.
        index: usize,
        /// The provider's id for the call.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// A piece of a tool call's JSON arguments. Output.
    ToolCallDelta {
        /// The position of the call it belongs to, as in `ToolCallStart`.
        index: usize,
        /// The JSON fragment.
        arguments: String,
    },
    /// Token usage so far. Each `Usage` event is cumulative: the last one
    /// counts. Metadata.
    Usage(Usage),
    /// The answer is complete. Metadata.
    Done {
        /// Why generation stopped, when the provider said.
        stop_reason: Option<StopReason>,
    },
}

impl StreamEvent {
    /// Whether this event is output: once one has been delivered to the
    /// caller, the call can no longer be retried transparently.
    pub fn is_output(&self) -> bool {
        !matches!(
            self,
            StreamEvent::MessageStart { .. } | StreamEvent::Usage(_) | StreamEvent::Done { .. }
        )
    }

    /// About how much memory the event takes while held: its own size and
    /// its text.
    pub(crate) fn held_size(&self) -> usize {
        let text = match self {
            StreamEvent::MessageStart { id, model } => {
                id.as_ref().map_or(0, String::len) + model.as_ref().map_or(0, String::len)
            }
            StreamEvent::TextDelta { text }
            | StreamEvent::ThinkingDelta { text }
            | StreamEvent::RefusalDelta { text } => text.len(),
            StreamEvent::ThinkingSignature { signature } => signature.len(),
            StreamEvent::RedactedThinking { data } => data.len(),
            StreamEvent::ToolCallStart { id, name, .. } => id.len() + name.len(),
            StreamEvent::ToolCallDelta { arguments, .. } => arguments.len(),
            StreamEvent::Done {
                stop_reason: Some(StopReason::Other(other)),
            } => other.len(),
            StreamEvent::Usage(_) | StreamEvent::Done { .. } => 0,
        };
        std::mem::size_of::<StreamEvent>() + text
    }
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens read, including those served from a prompt cache.
    pub input_tokens: u64,
    /// Tokens generated, including reasoning tokens.
    pub output_tokens: u64,
    /// Input tokens served from a prompt cache, where reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to a prompt cache, where reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Output tokens spent on reasoning, where reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reasoning_tokens: Option<u64>,
}

/// Why the model stopped generating.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// The model finished its turn (`end_turn`, `stop`).
    EndTurn,
    /// The token limit was reached (`max_tokens`, `length`).
    MaxTokens,
    /// A stop sequence matched.
    StopSequence,
    /// The model wants tool results (`tool_use`, `tool_calls`).
    ToolUse,
    /// Output was withheld by a content filter.
    ContentFilter,
    /// The model refused.
    Refusal,
    /// A long-running turn paused (Anthropic `pause_turn`).
    PauseTurn,
    /// A reason this crate does not know, verbatim.
    Other(String),
}
