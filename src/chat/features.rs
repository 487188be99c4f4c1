//! Typed request features every provider encodes its own way: the shape of
//! the answer ([`ResponseFormat`]), how much the model reasons
//! ([`Reasoning`]), and where a prompt's cacheable prefix ends
//! ([`CacheTtl`], with [`ContentPart::CacheBreakpoint`](crate::ContentPart::CacheBreakpoint)).
//!
//! A provider that lacks a feature fails the call with
//! [`Error::Config`](crate::Error::Config) before anything is sent, naming
//! what it lacks — except cache hints, which never change an answer:
//! providers that cache on their own (OpenAI, Gemini) leave breakpoints out,
//! and those without a cache key leave the key out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The shape the answer's text must have.
///
/// | | OpenAI Chat | Responses | Anthropic | Gemini |
/// |---|---|---|---|---|
/// | [`Json`](ResponseFormat::Json) | `response_format: json_object` | `text.format: json_object` | — (refused) | `responseMimeType: application/json` |
/// | [`JsonSchema`](ResponseFormat::JsonSchema) | `response_format: json_schema` | `text.format: json_schema` | `output_config.format` | `responseJsonSchema` |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResponseFormat {
    /// Any valid JSON value (OpenAI asks that the prompt mention JSON too).
    Json,
    /// JSON that matches a schema; made with
    /// [`json_schema`](ResponseFormat::json_schema).
    #[non_exhaustive]
    JsonSchema {
        /// A name for the schema (`[a-zA-Z0-9_-]`, at most 64 characters,
        /// as OpenAI requires).
        name: String,
        /// The JSON Schema.
        schema: Value,
        /// Whether the provider must follow the schema exactly (OpenAI's
        /// `strict`; Anthropic and Gemini always constrain to the schema).
        strict: bool,
    },
}

impl ResponseFormat {
    /// JSON that matches `schema`, strictly.
    pub fn json_schema(name: impl Into<String>, schema: Value) -> Self {
        ResponseFormat::JsonSchema {
            name: name.into(),
            schema,
            strict: true,
        }
    }

    /// Whether a schema is followed exactly (OpenAI's `strict`; default
    /// on). No effect on [`Json`](ResponseFormat::Json).
    pub fn strict(mut self, on: bool) -> Self {
        if let ResponseFormat::JsonSchema { strict, .. } = &mut self {
            *strict = on;
        }
        self
    }
}

/// How much the model reasons before it answers, and whether it says how.
///
/// | | OpenAI Chat | Responses | Anthropic | Gemini |
/// |---|---|---|---|---|
/// | [`effort`](Reasoning::effort) | `reasoning_effort` | `reasoning.effort` | `output_config.effort`, with adaptive thinking | `thinkingConfig.thinkingLevel` |
/// | [`budget_tokens`](Reasoning::budget_tokens) | — (refused) | — (refused) | `thinking.budget_tokens` | `thinkingConfig.thinkingBudget` |
/// | [`summary`](Reasoning::summary) | — (refused) | `reasoning.summary: auto` | — (thinking, when on, comes back anyway) | `thinkingConfig.includeThoughts` |
///
/// On Anthropic an effort also turns on adaptive thinking, which the models
/// since Claude Opus 4.6 take; give older thinking models a budget instead.
/// Not every level exists everywhere: `Minimal` is not Anthropic's, `XHigh`
/// and `Max` are not Gemini's, `Max` is not OpenAI's; a level a provider
/// lacks is refused. Gemini takes a level or a budget, not both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reasoning {
    /// How hard to think.
    pub effort: Option<Effort>,
    /// At most this many tokens of thinking.
    pub budget_tokens: Option<u32>,
    /// Whether to return the reasoning (a summary of it) as
    /// [`StreamEvent::ThinkingDelta`](crate::StreamEvent::ThinkingDelta)s.
    pub summary: bool,
}

impl Reasoning {
    /// Reasoning at `effort`.
    pub fn effort(effort: Effort) -> Self {
        Reasoning {
            effort: Some(effort),
            ..Reasoning::default()
        }
    }

    /// Reasoning within `tokens`.
    pub fn budget(tokens: u32) -> Self {
        Reasoning {
            budget_tokens: Some(tokens),
            ..Reasoning::default()
        }
    }

    /// Also at `effort`.
    pub fn with_effort(mut self, effort: Effort) -> Self {
        self.effort = Some(effort);
        self
    }

    /// Also within `tokens` of thinking.
    pub fn with_budget(mut self, tokens: u32) -> Self {
        self.budget_tokens = Some(tokens);
        self
    }

    /// Also returns the reasoning, summarised.
    pub fn with_summary(mut self) -> Self {
        self.summary = true;
        self
    }
}

/// A level of reasoning effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Effort {
    /// As little as the model can.
    Minimal,
    /// Little.
    Low,
    /// Some.
    Medium,
    /// Much.
    High,
    /// More than much (OpenAI's and Anthropic's `xhigh`).
    XHigh,
    /// All the model has (Anthropic's `max`).
    Max,
}

impl Effort {
    /// The level as the providers spell it: `minimal`, `low`, `medium`,
    /// `high`, `xhigh`, `max`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::XHigh => "xhigh",
            Effort::Max => "max",
        }
    }
}

/// How long a cached prompt prefix is kept. Anthropic takes hour-long
/// breakpoints only before the shorter ones in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CacheTtl {
    /// The provider's default (Anthropic: 5 minutes, refreshed on each hit).
    #[default]
    Short,
    /// An hour (Anthropic's `ttl: "1h"`, billed higher to write).
    Hour,
}
