//! Provider services: a [`ChatRequest`](crate::ChatRequest) in, an HTTP
//! exchange with the provider, a [`ChatStream`](crate::ChatStream) out.
//!
//! Each provider is a `Service<ChatRequest, Response = ChatStream, Error =
//! Error>` that is `Clone`, generic over its HTTP transport (default
//! [`ReqwestTransport`](crate::transport::ReqwestTransport)):
//!
//! - [`OpenAi`](crate::OpenAi): Chat Completions, and every
//!   OpenAI-compatible server through its base URL (vLLM, Ollama,
//!   llama.cpp, gateways), with [`Preset`](crate::Preset)s for the common
//!   ones.
//! - [`OpenAiResponses`](crate::OpenAiResponses): OpenAI's Responses API.
//! - [`Anthropic`](crate::Anthropic): Messages, with an API key or an OAuth
//!   bearer token.
//! - [`Gemini`](crate::Gemini): Google's Generative Language API.
//! - [`Provider`]: a wire format of one's own ([`Wire`], [`Decode`]) over
//!   the same client.
//!
//! This module holds their builders and what a provider of one's own needs.
//!
//! ```no_run
//! use llm_tower::{ChatRequest, Message, OpenAi};
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let openai = OpenAi::builder()
//!     .api_key(std::env::var("OPENAI_API_KEY").unwrap_or_default())
//!     .model("gpt-4o-mini")
//!     .build()?;
//! let answer = openai
//!     .oneshot(ChatRequest::new("").message(Message::user("Say hi")))
//!     .await?
//!     .completion()
//!     .await?;
//! println!("{}", answer.text);
//! # Ok(())
//! # }
//! ```

pub(crate) mod anthropic;
mod azure;
mod body;
mod builder;
mod client;
mod custom;
mod encode;
mod failure;
pub(crate) mod gemini;
pub(crate) mod openai;
mod response;
pub(crate) mod responses;
mod vertex;
mod wire;

pub use anthropic::AnthropicBuilder;
pub use custom::{Provider, ProviderBuilder};
pub use gemini::GeminiBuilder;
pub use openai::OpenAiBuilder;
pub use response::ResponseFuture;
pub use responses::OpenAiResponsesBuilder;
pub use wire::{Decode, Decoded, Wire};

use builder::{CommonBuilder, common_builder_methods, default_transport, provider_service};
use client::Client;
use encode::decimal;

/// The most tool calls, or content blocks, one answer may open. Wire
/// indices are mapped to dense positions below it, so no number a server
/// sends sizes an allocation; past it the answer fails with
/// [`DecodeError::TooManyParts`](crate::DecodeError::TooManyParts).
pub const MAX_PARTS: usize = 1024;
