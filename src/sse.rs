//! An incremental decoder for server-sent events.
//!
//! Conformant to the WHATWG `text/event-stream` rules: lines end in LF, CR or
//! CRLF (also a CRLF split across chunks), a leading byte-order mark is
//! dropped (also when split), comment lines are ignored, `data` lines join
//! with LF, `event` names the type (default `message`), `id` without NUL sets
//! the last event id, `retry` takes digits only, a field without a colon has
//! an empty value. Invalid UTF-8 is replaced with U+FFFD as the standard says,
//! wherever chunk boundaries fall.
//!
//! Two deliberate departures, both for recorded and real-world streams: at
//! end of input, an event that lacks its final blank line is still
//! dispatched; and an event larger than the configured limit is reported as
//! [`SseError::EventTooLarge`] and skipped up to its end, so memory stays
//! bounded whatever the peer sends.
//!
//! The decoder works on bytes, scans every byte once (a long line costs
//! linear time, never a rescan) and borrows each event's fields from its own
//! reused buffers, so steady-state decoding allocates nothing.
//!
//! ```
//! use llm_tower::sse::SseDecoder;
//!
//! let mut decoder = SseDecoder::new();
//! let mut seen = Vec::new();
//! // A CRLF split across chunks; the last event has no final blank line.
//! for chunk in [&b"event: ping\nda"[..], b"ta: {}\r", b"\n\r\ndata: last"] {
//!     decoder.feed(chunk, |e| seen.push(e.map(|e| (e.event.to_owned(), e.data.to_owned())))).ok();
//! }
//! decoder.finish(|e| seen.push(e.map(|e| (e.event.to_owned(), e.data.to_owned()))));
//! assert_eq!(
//!     seen,
//!     [Ok(("ping".into(), "{}".into())), Ok(("message".into(), "last".into()))]
//! );
//! ```

use std::borrow::Cow;

use memchr::{memchr, memchr2};

/// The default limit on one event's size: 4 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 4 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event, borrowed from the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The event type: the last `event` field, or `"message"`.
    pub event: &'a str,
    /// The `data` lines joined with LF.
    pub data: &'a str,
    /// The last event id seen so far in the stream (empty when none).
    pub id: &'a str,
}

/// What can go wrong while decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// An event (or one line) grew past the limit; it was skipped to its end.
    #[error("server-sent event larger than the limit of {limit} bytes")]
    EventTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

/// An incremental server-sent events decoder. See the [module docs](self).
#[derive(Debug)]
pub struct SseDecoder {
    max_event_size: usize,
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    data: Vec<u8>,
    event: Vec<u8>,
    id: Vec<u8>,
    retry: Option<u64>,
    /// How many bytes of a leading BOM have matched; 3 once decided.
    bom_matched: u8,
    bom_done: bool,
    /// The previous chunk ended in CR: an LF starting the next one belongs to it.
    pending_cr: bool,
    /// Skipping an oversized event up to the blank line that ends it.
    skipping: bool,
    /// While skipping: the current (discarded) line has content.
    skipped_line_open: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new()
    }
}

impl SseDecoder {
    /// A decoder with the [default event size limit](DEFAULT_MAX_EVENT_SIZE).
    pub fn new() -> Self {
        SseDecoder::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A decoder that reports an event as [`SseError::EventTooLarge`] when
    /// the data it has gathered plus the line being read (field name and
    /// value, any field, comments too) exceed `limit` bytes. Whatever the
    /// chunking, the same input yields the same events and errors.
    pub fn with_max_event_size(limit: usize) -> Self {
        SseDecoder {
            max_event_size: limit,
            line: Vec::new(),
            data: Vec::new(),
            event: Vec::new(),
            id: Vec::new(),
            retry: None,
            bom_matched: 0,
            bom_done: false,
            pending_cr: false,
            skipping: false,
            skipped_line_open: false,
        }
    }

    /// The last `retry` value the stream sent, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The last event id the stream sent (lossily decoded).
    pub fn last_event_id(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.id)
    }

    /// Decodes `chunk`, calling `on_event` for each complete event and for
    /// each error. Decoding goes on after an error (the oversized event is
    /// skipped); the `Err` returned is the first error of this chunk, for
    /// callers that stop on one.
    pub fn feed<F>(&mut self, mut chunk: &[u8], mut on_event: F) -> Result<(), SseError>
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        let mut first_error = None;
        let mut sink = |item: Result<Event<'_>, SseError>| {
            if let Err(e) = &item {
                first_error.get_or_insert_with(|| e.clone());
            }
            on_event(item);
        };
        if !self.bom_done {
            while !chunk.is_empty() && usize::from(self.bom_matched) < BOM.len() {
                if chunk[0] == BOM[usize::from(self.bom_matched)] {
                    self.bom_matched += 1;
                    chunk = &chunk[1..];
                } else {
                    // Not a BOM after all: the bytes held back are input.
                    self.bom_done = true;
                    let held = usize::from(self.bom_matched);
                    self.process(&BOM[..held], &mut sink);
                    break;
                }
            }
            if usize::from(self.bom_matched) == BOM.len() {
                self.bom_done = true;
            }
            if !self.bom_done {
                return Ok(());
            }
        }
        self.process(chunk, &mut sink);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Ends the input: a pending last line is processed and a pending event
    /// is dispatched even without its final blank line. The decoder is then
    /// ready for a new stream; like an `EventSource` reconnecting, it keeps
    /// the last event id and the retry value.
    pub fn finish<F>(&mut self, mut on_event: F)
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        if !self.bom_done {
            let held = usize::from(self.bom_matched);
            self.bom_done = true;
            self.process(&BOM[..held], &mut on_event);
        }
        if !self.skipping && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.handle_line(&line, &mut on_event);
            self.line = line;
        }
        if !self.skipping {
            self.dispatch(&mut on_event);
        }
        self.line.clear();
        self.data.clear();
        self.event.clear();
        self.bom_matched = 0;
        self.bom_done = false;
        self.pending_cr = false;
        self.skipping = false;
        self.skipped_line_open = false;
    }

    fn process<F>(&mut self, chunk: &[u8], on_event: &mut F)
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        if chunk.is_empty() {
            // An empty chunk between a CR and its LF must not forget the CR.
            return;
        }
        let mut pos = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                pos = 1;
            }
        }
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            let Some(i) = memchr2(b'\n', b'\r', rest) else {
                self.carry(rest, on_event);
                return;
            };
            if !self.skipping
                && self.line.is_empty()
                && self.data.is_empty()
                && let Some(used) = self.whole_event(rest, i, on_event)
            {
                pos += used;
                continue;
            }
            let end = pos + i;
            if self.skipping {
                let was_open = self.skipped_line_open || i > 0;
                self.skipped_line_open = false;
                if !was_open {
                    // The blank line that ends the oversized event.
                    self.skipping = false;
                    self.data.clear();
                    self.event.clear();
                }
            } else if self.data.len() + self.line.len() + i > self.max_event_size {
                self.start_skipping(on_event);
            } else if self.line.is_empty() {
                self.handle_line(&chunk[pos..end], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[pos..end]);
                self.handle_line(&line, on_event);
                line.clear();
                self.line = line;
            }
            pos = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(pos) {
                    Some(b'\n') => pos += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
        }
    }

    /// The fast path for the commonest event, a single `data:` line and
    /// the blank line after it, whole in `rest` (whose first line ends at
    /// `i`): dispatched from the chunk, with no copy. Returns the bytes it
    /// used, or `None` (nothing done) for anything else.
    fn whole_event<F>(&mut self, rest: &[u8], i: usize, on_event: &mut F) -> Option<usize>
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        // The limit counts the line as the slow path does, field name and
        // all: over it, that path skips the event.
        if i > self.max_event_size {
            return None;
        }
        let value = rest[..i].strip_prefix(b"data:")?;
        // The line's end, then the blank line's: both known in this chunk.
        let line_end = |at: usize| match rest.get(at)? {
            b'\n' => Some(at + 1),
            b'\r' => match rest.get(at + 1)? {
                b'\n' => Some(at + 2),
                _ => Some(at + 1),
            },
            _ => None,
        };
        let used = line_end(line_end(i)?)?;
        let value = value.strip_prefix(b" ").unwrap_or(value);
        emit(&self.event, value, &self.id, on_event);
        self.event.clear();
        Some(used)
    }

    /// Keeps the start of a line that continues in the next chunk.
    fn carry<F>(&mut self, bytes: &[u8], on_event: &mut F)
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        if self.skipping {
            self.skipped_line_open |= !bytes.is_empty();
        } else if self.line.len() + bytes.len() + self.data.len() > self.max_event_size {
            self.start_skipping(on_event);
            self.skipped_line_open = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn start_skipping<F>(&mut self, on_event: &mut F)
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        self.skipping = true;
        self.skipped_line_open = false;
        self.line.clear();
        self.data.clear();
        self.event.clear();
        on_event(Err(SseError::EventTooLarge {
            limit: self.max_event_size,
        }));
    }

    /// Handles one complete line that is within the size limit.
    fn handle_line<F>(&mut self, line: &[u8], on_event: &mut F)
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if memchr(0, value).is_none() => {
                self.id.clear();
                self.id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Digits only; a value too large for u64 is ignored.
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("x").parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch<F>(&mut self, on_event: &mut F)
    where
        F: FnMut(Result<Event<'_>, SseError>),
    {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop();
        emit(&self.event, &self.data, &self.id, on_event);
        self.data.clear();
        self.event.clear();
    }
}

/// Gives `on_event` the event of type `event` (`message` when empty).
fn emit<F>(event: &[u8], data: &[u8], id: &[u8], on_event: &mut F)
where
    F: FnMut(Result<Event<'_>, SseError>),
{
    let data = utf8(data);
    let event = if event.is_empty() {
        Cow::Borrowed("message")
    } else {
        utf8(event)
    };
    let id = utf8(id);
    on_event(Ok(Event {
        event: &event,
        data: &data,
        id: &id,
    }));
}

/// The bytes as text: borrowed when valid, with U+FFFD replacements
/// otherwise. Validation is SIMD (`simdutf8`): on text with non-ASCII
/// characters std's validator took half of all framing time.
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Item {
        Event(String, String, String),
        TooLarge,
    }

    fn decode_chunks(limit: usize, chunks: &[&[u8]]) -> Vec<Item> {
        let mut d = SseDecoder::with_max_event_size(limit);
        let mut out = Vec::new();
        let mut push = |r: Result<Event<'_>, SseError>| {
            out.push(match r {
                Ok(e) => Item::Event(e.event.into(), e.data.into(), e.id.into()),
                Err(SseError::EventTooLarge { .. }) => Item::TooLarge,
            })
        };
        for c in chunks {
            let _ = d.feed(c, &mut push);
        }
        d.finish(&mut push);
        out
    }

    fn ev(event: &str, data: &str) -> Item {
        Item::Event(event.into(), data.into(), String::new())
    }

    #[test]
    fn line_endings_and_splits() {
        let want = vec![ev("message", "a"), ev("message", "b"), ev("message", "c")];
        assert_eq!(
            decode_chunks(1024, &[b"data: a\n\ndata: b\r\rdata: c\r\n\r\n"]),
            want
        );
        // CRLF split across chunks: the LF must not become an empty line.
        assert_eq!(
            decode_chunks(1024, &[b"data: a\r", b"\ndata: x\r", b"\n\r\n"]),
            vec![ev("message", "a\nx")]
        );
        // A lone CR at a chunk end followed by a new line.
        assert_eq!(
            decode_chunks(1024, &[b"data: a\r", b"\rdata: b"]),
            vec![ev("message", "a"), ev("message", "b")]
        );
    }

    #[test]
    fn bom_is_dropped_once_even_when_split() {
        assert_eq!(
            decode_chunks(64, &[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]),
            vec![ev("message", "x")]
        );
        // Only a leading BOM is special; a second one is data.
        assert_eq!(
            decode_chunks(64, &[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"]),
            Vec::<Item>::new(),
            "a field named BOM+data is not data"
        );
        // A partial BOM is input.
        assert_eq!(
            decode_chunks(64, &[b"\xEF", b"data: x\n\n"]),
            Vec::<Item>::new()
        );
        assert_eq!(decode_chunks(64, &[b"\xEF\xBB"]), Vec::<Item>::new());
    }

    #[test]
    fn fields() {
        let input = b": comment\nevent: add\ndata\ndata:  two spaces\nid: 7\nretry: 1500\nretry: 15x\nunknown: z\n\n";
        let mut d = SseDecoder::new();
        let mut seen = Vec::new();
        d.feed(input, |e| {
            let e = e.unwrap();
            seen.push((e.event.to_owned(), e.data.to_owned(), e.id.to_owned()))
        })
        .unwrap();
        assert_eq!(seen, [("add".into(), "\n two spaces".into(), "7".into())]);
        assert_eq!(d.retry(), Some(1500));
        // An id with NUL is ignored; the previous id stays.
        d.feed(b"id: a\0b\ndata: x\n\n", |e| assert_eq!(e.unwrap().id, "7"))
            .unwrap();
        // Data-less events are not dispatched and reset the type.
        assert_eq!(
            decode_chunks(64, &[b"event: x\n\ndata: y\n\n"]),
            vec![ev("message", "y")]
        );
        // Empty data still dispatches.
        assert_eq!(decode_chunks(64, &[b"data\n\n"]), vec![ev("message", "")]);
    }

    #[test]
    fn utf8_split_and_invalid() {
        let text = "data: héllo 🌍\n\n".as_bytes();
        for cut in 0..text.len() {
            assert_eq!(
                decode_chunks(64, &[&text[..cut], &text[cut..]]),
                vec![ev("message", "héllo 🌍")]
            );
        }
        assert_eq!(
            decode_chunks(64, &[b"data: a\xFFb\xC3\n\n"]),
            vec![ev("message", "a\u{FFFD}b\u{FFFD}")]
        );
    }

    #[test]
    fn oversized_events_are_skipped_and_decoding_resumes() {
        let mut big = b"data: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 100));
        big.extend_from_slice(b"\ndata: more\n\ndata: ok\n\n");
        assert_eq!(
            decode_chunks(50, &[&big]),
            vec![Item::TooLarge, ev("message", "ok")]
        );
        // The same, arriving a byte at a time.
        let bytes: Vec<&[u8]> = big.chunks(1).collect();
        assert_eq!(
            decode_chunks(50, &bytes),
            vec![Item::TooLarge, ev("message", "ok")]
        );
        // Many small data lines that add up.
        let many = b"data: 0123456789\n".repeat(10);
        assert_eq!(
            decode_chunks(50, &[&many, b"\ndata: ok\n\n"]),
            vec![Item::TooLarge, ev("message", "ok")]
        );
    }

    #[test]
    fn end_of_input_dispatches_a_pending_event() {
        assert_eq!(decode_chunks(64, &[b"data: a\n"]), vec![ev("message", "a")]);
        assert_eq!(decode_chunks(64, &[b"data: a"]), vec![ev("message", "a")]);
        assert_eq!(decode_chunks(64, &[b"data: a\r"]), vec![ev("message", "a")]);
    }
}
