//! The providers' wire formats as the mock server writes them, one module
//! per dialect, mirroring the providers' own. Written apart from the
//! providers' decoders and from the classification in `error`, so that the
//! tests check one against the other rather than against itself.

pub(crate) mod anthropic;
pub(crate) mod gemini;
pub(crate) mod openai;
pub(crate) mod responses;

use http::StatusCode;
use serde_json::{Value, json};

use super::render::{Asked, Content, Frame};

/// Which wire format a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    OpenAi,
    /// OpenAI's Responses API.
    Responses,
    Anthropic,
    Gemini,
    /// A path none of the providers' APIs has: a wire of the caller's own
    /// (see [`MockServer::respond_with`](crate::mock::MockServer::respond_with)).
    /// Replies that are bytes as given ([`Reply::sse`](crate::mock::Reply::sse),
    /// [`Reply::body`](crate::mock::Reply::body),
    /// [`Reply::reset`](crate::mock::Reply::reset)) play as usual; errors take
    /// OpenAI's shape; text made up for a dialect is a 404.
    Other,
}

impl Dialect {
    /// Made-up content, streamed.
    pub(crate) fn frames(
        self,
        asked: &Asked,
        content: &Content<'_>,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Vec<Frame> {
        match self {
            // Not played for `Other`: the server answers 404 for made-up
            // content on a path no provider has.
            Dialect::OpenAi | Dialect::Other => {
                openai::frames(asked, content, input_tokens, output_tokens)
            }
            Dialect::Responses => responses::frames(asked, content, input_tokens, output_tokens),
            Dialect::Anthropic => anthropic::frames(asked, content, input_tokens, output_tokens),
            Dialect::Gemini => gemini::frames(asked, content, input_tokens),
        }
    }

    /// Made-up content, as one body.
    pub(crate) fn whole(
        self,
        asked: &Asked,
        content: &Content<'_>,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Value {
        match self {
            Dialect::OpenAi => openai::whole(asked, content, input_tokens, output_tokens),
            Dialect::Responses => responses::whole(asked, content, input_tokens, output_tokens),
            Dialect::Anthropic => anthropic::whole(asked, content, input_tokens, output_tokens),
            Dialect::Gemini => gemini::whole(asked, content, input_tokens, output_tokens),
            // Not played (see `frames`).
            Dialect::Other => json!({}),
        }
    }

    /// An error body in this dialect's shape.
    pub(crate) fn error_body(self, status: StatusCode, error_type: &str, message: &str) -> Value {
        match self {
            Dialect::OpenAi | Dialect::Responses | Dialect::Other => {
                openai::error_body(error_type, message)
            }
            Dialect::Anthropic => anthropic::error_body(error_type, message),
            Dialect::Gemini => gemini::error_body(status, error_type, message),
        }
    }

    /// An error event inside a stream, carrying `body`.
    pub(crate) fn error_event(self, body: &Value) -> String {
        match self {
            Dialect::Anthropic => format!("event: error\ndata: {body}\n\n"),
            Dialect::Responses => responses::error_event(body),
            Dialect::OpenAi | Dialect::Gemini | Dialect::Other => format!("data: {body}\n\n"),
        }
    }

    /// What comes before and after a text delta's raw text.
    pub(crate) fn text_delta_around(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Dialect::OpenAi => openai::TEXT_DELTA,
            Dialect::Responses => responses::TEXT_DELTA,
            Dialect::Anthropic => anthropic::TEXT_DELTA,
            Dialect::Gemini => gemini::TEXT_DELTA,
            // The text itself, as the data of an event.
            Dialect::Other => (b"data: ", b"\n\n"),
        }
    }
}

/// The HTTP status an error type stands for (Gemini's table, which names
/// them all), for errors inside a stream.
pub(crate) fn error_status(error_type: &str) -> StatusCode {
    gemini::status_code(gemini::status_name(error_type))
}

/// The id of every made-up message.
const MESSAGE_ID: &str = "msg_mock_0001";

/// A tool call's streamed argument fragments, as one JSON value.
fn tool_args(arguments: &[String]) -> Value {
    serde_json::from_str(&arguments.concat()).unwrap_or_else(|_| json!({}))
}
