//! The provider-neutral request and response types.
//!
//! A call is a [`ChatRequest`]; its answer is always a [`ChatStream`] of
//! [`StreamEvent`]s, streaming or not, which
//! [`completion`](ChatStream::completion) folds into a [`Completion`].
//!
//! ```
//! use llm_tower::{ChatStream, ResponseMeta, StreamEvent, StopReason};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let stream = ChatStream::from_events(
//!     ResponseMeta::new("test", "m"),
//!     vec![
//!         Ok(StreamEvent::TextDelta { text: "Hello".into() }),
//!         Ok(StreamEvent::Done { stop_reason: Some(StopReason::EndTurn) }),
//!     ],
//! );
//! let completion = stream.completion().await?;
//! assert_eq!(completion.text, "Hello");
//! # Ok(())
//! # }
//! ```

mod event;
mod request;
mod stream;

pub use event::{StopReason, StreamEvent, Usage};
pub use request::{ChatRequest, ContentPart, Image, Message, Role, Tool, ToolChoice};
pub(crate) use stream::Events;
pub use stream::{ChatStream, Completion, CompletionBuilder, ResponseMeta, ToolCall};
