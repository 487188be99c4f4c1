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

pub(crate) mod cut;
pub(crate) mod event;
pub(crate) mod features;
pub(crate) mod request;
pub(crate) mod stream;

pub(crate) use event::{StopReason, StreamEvent, Usage};
pub(crate) use features::{CacheTtl, Effort, ResponseFormat};
pub(crate) use request::{ChatRequest, ContentPart, Image, Message, Role, ToolChoice};
pub(crate) use stream::Events;
pub(crate) use stream::{ChatStream, Completion, ResponseMeta};

/// Maps sparse indices (`tool_calls[].index` and `content_block_start.index`
/// from a server, `ToolCallStart::index` from a caller) to dense positions
/// from 0, in order of first appearance, so no such number sizes an
/// allocation.
#[derive(Debug, Default)]
pub(crate) struct DenseIndex {
    seen: Vec<u64>,
}

impl DenseIndex {
    /// The position of `wire`, if it was seen.
    pub(crate) fn get(&self, wire: u64) -> Option<usize> {
        // Indices that are dense already sit at their own position.
        if let Ok(i) = usize::try_from(wire)
            && self.seen.get(i) == Some(&wire)
        {
            return Some(i);
        }
        self.seen.iter().rposition(|&w| w == wire)
    }

    /// The position of `wire` and whether it is new; `Err` when it is new
    /// and `limit` positions are taken.
    pub(crate) fn insert(&mut self, wire: u64, limit: usize) -> Result<(usize, bool), ()> {
        if let Some(p) = self.get(wire) {
            return Ok((p, false));
        }
        if self.seen.len() >= limit {
            return Err(());
        }
        self.seen.push(wire);
        Ok((self.seen.len() - 1, true))
    }
}
