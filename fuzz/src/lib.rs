//! What the fuzz targets share: an in-process transport that answers with
//! the fuzzer's bytes, cut into pieces the fuzzer chooses, and a check of the
//! invariants every provider stream keeps whatever the server sends.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use llm_tower::transport::RequestBody;
use llm_tower::{ChatRequest, ChatStream, Error, Message, StreamEvent};
use tower::{Service, ServiceExt};

/// The limit the providers run with here: small, so inputs reach it.
pub const MAX_EVENT_SIZE: usize = 4096;

/// One response, described by the fuzzer's bytes.
#[derive(Clone, Debug)]
pub struct Canned {
    status: u16,
    content_type: &'static str,
    body: Bytes,
    /// Where the body is cut, as piece lengths cycled over the body.
    cuts: Vec<usize>,
}

impl Canned {
    /// Byte 0 picks status and content type; byte 1 how many cut lengths
    /// follow (each one byte, 1–256); then 8 bytes of a number from the
    /// whole `u64` range, written wherever the body says `@I` (so wire
    /// indices and counts reach the extremes a mutator seldom types); the
    /// rest is the body.
    pub fn from_fuzz(data: &[u8]) -> Option<Canned> {
        let (&head, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n % 8);
        if rest.len() < n + 8 {
            return None;
        }
        let (cuts, rest) = rest.split_at(n);
        let (wide, body) = rest.split_at(8);
        let wide = u64::from_le_bytes(wide.try_into().ok()?).to_string();
        let body = replace_all(body, b"@I", wide.as_bytes());
        let status = [200, 200, 200, 200, 400, 401, 429, 500, 529, 302][usize::from(head % 10)];
        let content_type = [
            "text/event-stream",
            "application/json",
            "text/html; charset=utf-8",
            "",
        ][usize::from((head / 10) % 4)];
        Some(Canned {
            status,
            content_type,
            body: Bytes::from(body),
            cuts: cuts.iter().map(|&c| usize::from(c) + 1).collect(),
        })
    }

    fn frames(&self) -> Vec<Result<Frame<Bytes>, Infallible>> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts = self.cuts.iter().cycle();
        while at < self.body.len() {
            let len = cuts.next().copied().unwrap_or(self.body.len());
            let end = self.body.len().min(at + len);
            out.push(Ok(Frame::data(self.body.slice(at..end))));
            at = end;
        }
        out
    }
}

type Body =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl Service<http::Request<RequestBody>> for Canned {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<RequestBody>) -> Self::Future {
        let mut builder = http::Response::builder().status(self.status);
        if !self.content_type.is_empty() {
            builder = builder.header("content-type", self.content_type);
        }
        let body = StreamBody::new(futures_util::stream::iter(self.frames()));
        // The status comes from a fixed list of valid codes and the header
        // from a fixed list of valid values: building cannot fail.
        std::future::ready(Ok(builder.body(body).expect("a valid response")))
    }
}

/// Runs one provider target: the fuzzer's bytes as the answer of the
/// service `build` makes over them (byte 0's high bit: a streaming request
/// or not), checked by [`check`].
pub fn provider<S>(data: &[u8], build: impl FnOnce(Canned) -> S)
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
{
    if let Some(canned) = Canned::from_fuzz(data) {
        check(build(canned), data[0] & 0x80 == 0);
    }
}

/// Calls `service` twice with the same answer, once reading the events and
/// once folding them, and checks what every provider stream promises:
/// nothing after an error, and a fold that agrees with the events.
pub fn check<S>(service: S, stream: bool)
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
{
    let request = ChatRequest::new("m")
        .message(Message::user("hi"))
        .stream(stream);
    futures_executor::block_on(async {
        let events = match service.clone().oneshot(request.clone()).await {
            Ok(stream) => Some(read(stream).await),
            Err(e) => {
                let _ = (e.to_string(), format!("{e:?}"), e.kind(), e.is_retryable());
                None
            }
        };
        let folded = match service.oneshot(request).await {
            Ok(stream) => Some(stream.completion().await),
            Err(_) => None,
        };
        let (Some((events, error)), Some(folded)) = (events, folded) else {
            return;
        };
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let output = events.iter().any(StreamEvent::is_output);
        match (error, folded) {
            (None, Ok(c)) => assert_eq!(c.text, text),
            (Some(_), Err(Error::Interrupted { partial, .. })) => {
                assert!(output, "interrupted without output");
                assert_eq!(partial.text, text);
            }
            (Some(e), Err(f)) => {
                assert!(!output, "output then {e}, but the fold said {f}");
                assert_eq!(e.kind(), f.kind());
            }
            (e, f) => panic!("events ended with {e:?}, the fold with {f:?}"),
        }
    });
}

async fn read(mut stream: ChatStream) -> (Vec<StreamEvent>, Option<Error>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => {
                let _ = (e.to_string(), format!("{e:?}"));
                assert!(stream.next().await.is_none(), "an event after the error");
                return (events, Some(e));
            }
        }
    }
    (events, None)
}

/// `haystack` with every `from` replaced by `to`.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}
