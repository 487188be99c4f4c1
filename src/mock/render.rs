//! A [`Reply`] rendered for the request that receives it: made-up content
//! in the request's dialect, then the body as steps with the scripted fault
//! in place.

use std::borrow::Cow;

use bytes::Bytes;
use http::StatusCode;

use super::dialect::{self, Dialect};
use super::reply::{Fault, Kind, Reply};

/// What the request asked for, as far as rendering cares.
#[derive(Debug)]
pub(crate) struct Asked {
    pub(crate) dialect: Dialect,
    pub(crate) stream: bool,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
}

/// What to write, step by step.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    Reset,
    Stall,
}

/// A rendered reply: head and body steps.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Cow<'static, str>,
    pub(crate) steps: Vec<Step>,
}

/// One event of a generated stream; `counted` events are the deltas faults
/// are placed by.
pub(crate) struct Frame {
    pub(crate) text: String,
    pub(crate) counted: bool,
}

impl Reply {
    /// Whether this reply's content is made up in the request's dialect
    /// (text, a tool call) rather than given as bytes.
    pub(crate) fn is_generated(&self) -> bool {
        matches!(self.kind, Kind::Text(_) | Kind::ToolCall { .. })
    }

    pub(crate) fn render(&self, asked: &Asked) -> Option<Rendered> {
        let (content_type, frames, whole): (&'static str, Vec<Frame>, Option<String>) =
            match &self.kind {
                Kind::ResetBeforeHeaders => return None,
                Kind::Text(deltas) => match &self.fault {
                    // A whole body gets the bad bytes in its text too: mark
                    // the place, replaced once rendered.
                    Some((n, Fault::InvalidUtf8)) if !asked.stream => {
                        let mut marked = deltas.clone();
                        marked.insert((*n).min(deltas.len()), MARK.to_owned());
                        generated(asked, &Content::Text(&marked))
                    }
                    _ => generated(asked, &Content::Text(deltas)),
                },
                Kind::ToolCall {
                    text,
                    id,
                    name,
                    arguments,
                } => generated(
                    asked,
                    &Content::Tool {
                        text,
                        id,
                        name,
                        arguments,
                    },
                ),
                Kind::ApiError {
                    error_type,
                    message,
                } => {
                    let body = asked.dialect.error_body(self.status, error_type, message);
                    ("application/json", Vec::new(), Some(body.to_string()))
                }
                Kind::Sse(events) => (
                    "text/event-stream",
                    events
                        .iter()
                        .map(|e| Frame {
                            text: e.clone(),
                            counted: true,
                        })
                        .collect(),
                    None,
                ),
                Kind::Body { content_type, body } => {
                    return Some(Rendered {
                        status: self.status,
                        content_type: Cow::Owned(content_type.clone()),
                        steps: self.whole_body(body.clone()),
                    });
                }
            };
        let steps = match whole {
            Some(body) => self.whole_body(Bytes::from(body)),
            None => self.stream_steps(asked.dialect, frames),
        };
        Some(Rendered {
            status: self.status,
            content_type: Cow::Borrowed(content_type),
            steps,
        })
    }

    fn pieces(&self, body: Bytes) -> Vec<Step> {
        match self.chunk_size {
            Some(n) => (0..body.len())
                .step_by(n)
                .map(|i| Step::Data(body.slice(i..body.len().min(i + n))))
                .collect(),
            None => vec![Step::Data(body)],
        }
    }

    /// A body sent whole; a fault cuts it in the middle.
    fn whole_body(&self, body: Bytes) -> Vec<Step> {
        let Some((_, fault)) = &self.fault else {
            return self.pieces(body);
        };
        let middle = body.len() / 2;
        let mut out = match fault {
            Fault::InvalidUtf8 => {
                let at = memchr::memmem::find(&body, MARK.as_bytes());
                let (at, skip) = at.map_or((middle, 0), |at| (at, MARK.len()));
                let mut bytes = body[..at].to_vec();
                bytes.extend_from_slice(&NOT_UTF8);
                bytes.extend_from_slice(&body[at + skip..]);
                return self.pieces(Bytes::from(bytes));
            }
            Fault::Oversized(n) => {
                let mut bytes = body.to_vec();
                bytes.resize(body.len() + n, b' ');
                return self.pieces(Bytes::from(bytes));
            }
            _ => self.pieces(body.slice(..middle)),
        };
        match fault {
            Fault::Reset => out.push(Step::Reset),
            Fault::Stall => out.push(Step::Stall),
            _ => {}
        }
        out
    }

    fn stream_steps(&self, dialect: Dialect, frames: Vec<Frame>) -> Vec<Step> {
        let mut out = Vec::new();
        let mut counted = 0;
        let push = |out: &mut Vec<Step>, bytes: Bytes| {
            out.extend(self.pieces(bytes));
        };
        let mut fault = self.fault.as_ref();
        // A fault after the last delta falls before the frame that follows
        // it (the finish chunk, `content_block_stop`): the answer is cut
        // with all its output and without its end.
        let total = frames.iter().filter(|f| f.counted).count();
        for frame in frames {
            if let Some((n, f)) = fault
                && counted == *n
                && (frame.counted || counted == total)
            {
                fault = None;
                match f {
                    Fault::Reset => out.push(Step::Reset),
                    Fault::Stall => out.push(Step::Stall),
                    Fault::End => {}
                    Fault::ErrorEvent {
                        error_type,
                        message,
                    } => {
                        let status = dialect::error_status(error_type);
                        let body = dialect.error_body(status, error_type, message);
                        push(&mut out, Bytes::from(dialect.error_event(&body)));
                    }
                    Fault::Malformed => {
                        let whole = text_delta(dialect, b"cut");
                        // Cut inside the JSON; keep the blank line that ends
                        // the event.
                        let mut cut = whole[..whole.len() / 2].to_vec();
                        cut.extend_from_slice(b"\n\n");
                        push(&mut out, Bytes::from(cut));
                    }
                    Fault::InvalidUtf8 => {
                        push(&mut out, text_delta(dialect, &NOT_UTF8));
                        counted += usize::from(frame.counted);
                        push(&mut out, Bytes::from(frame.text));
                        continue;
                    }
                    Fault::Oversized(n) => {
                        push(&mut out, text_delta(dialect, &vec![b'x'; *n]));
                        counted += usize::from(frame.counted);
                        push(&mut out, Bytes::from(frame.text));
                        continue;
                    }
                }
                return out;
            }
            counted += usize::from(frame.counted);
            push(&mut out, Bytes::from(frame.text));
        }
        out
    }
}

/// The first two bytes of `€` (E2 82 AC): not UTF-8 on their own.
const NOT_UTF8: [u8; 2] = [0xE2, 0x82];

/// Where in a rendered whole body [`NOT_UTF8`] goes: a noncharacter no
/// scripted text has.
const MARK: &str = "\u{10FFFF}";

/// A text delta event whose text is `text`, as raw bytes (which need not be
/// UTF-8, and are not escaped).
fn text_delta(dialect: Dialect, text: &[u8]) -> Bytes {
    let (before, after) = dialect.text_delta_around();
    let mut out = Vec::with_capacity(before.len() + text.len() + after.len());
    out.extend_from_slice(before);
    out.extend_from_slice(text);
    out.extend_from_slice(after);
    Bytes::from(out)
}

/// What a generated reply says, whatever the dialect.
pub(crate) enum Content<'a> {
    Text(&'a [String]),
    Tool {
        /// Text deltas before the call.
        text: &'a [String],
        id: &'a str,
        name: &'a str,
        arguments: &'a [String],
    },
}

/// Renders generated content in the request's dialect: SSE frames when it
/// streams, one JSON body when it does not.
fn generated(asked: &Asked, content: &Content<'_>) -> (&'static str, Vec<Frame>, Option<String>) {
    let output_tokens = match content {
        Content::Text(d) => d.len(),
        Content::Tool {
            text, arguments, ..
        } => text.len() + arguments.len() + 1,
    } as u64;
    let input_tokens = 12u64;
    if asked.stream {
        let frames = asked
            .dialect
            .frames(asked, content, input_tokens, output_tokens);
        ("text/event-stream", frames, None)
    } else {
        let body = asked
            .dialect
            .whole(asked, content, input_tokens, output_tokens);
        ("application/json", Vec::new(), Some(body.to_string()))
    }
}
