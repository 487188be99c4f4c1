use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;

use crate::{ChatStream, DecodeError, Error, StreamEvent};

/// The most metadata, in bytes, held back before an answer's first output
/// event. A real prelude is a few events (`MessageStart`, a `Usage`); a
/// server that sends metadata without end gets
/// [`DecodeError::PreludeTooLarge`] instead of the caller's memory.
pub(crate) const MAX_PRELUDE: usize = 1 << 20;

/// Reads an answer until its first output event, holding the metadata before
/// it, to find out whether the attempt failed before any output.
#[derive(Debug)]
pub(crate) struct Priming {
    stream: Option<ChatStream>,
    held: Vec<StreamEvent>,
    held_bytes: usize,
}

impl Priming {
    pub(crate) fn new(stream: ChatStream) -> Self {
        Priming {
            stream: Some(stream),
            held: Vec::new(),
            held_bytes: 0,
        }
    }

    /// `Ok` with the stream, held events put back in front, once an output
    /// event arrived or the answer ended cleanly; `Err` with the failure that
    /// ended it before any output (the attempt is dropped, connection and all).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<ChatStream, Error>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(Err(Error::misuse("priming polled after completion")));
            };
            if self.held.is_empty() && stream.primed() {
                // Primed below (by a retrying layer inside this one): its
                // first output event already waits in front, so nothing
                // before it can fail. Reading the events out and putting
                // them back would change nothing.
                return Poll::Ready(
                    self.stream
                        .take()
                        .ok_or_else(|| Error::misuse("priming polled after completion")),
                );
            }
            let failed = match ready!(Pin::new(&mut *stream).poll_next(cx)) {
                Some(Ok(event)) => {
                    let output = event.is_output();
                    if !output {
                        self.held_bytes += event.held_size();
                        if self.held_bytes > MAX_PRELUDE {
                            Some(Error::decode(
                                stream.meta().provider,
                                DecodeError::PreludeTooLarge { limit: MAX_PRELUDE },
                            ))
                        } else {
                            self.held.push(event);
                            continue;
                        }
                    } else {
                        self.held.push(event);
                        None
                    }
                }
                Some(Err(e)) => Some(e),
                // Ended cleanly without output (an empty answer).
                None => None,
            };
            let Some(mut stream) = self.stream.take() else {
                continue;
            };
            return Poll::Ready(match failed {
                Some(e) => Err(e),
                None => {
                    stream.prepend_vec(std::mem::take(&mut self.held));
                    Ok(stream)
                }
            });
        }
    }
}
