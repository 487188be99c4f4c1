//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use llm_tower::transport::RequestBody;
use llm_tower::{ChatStream, Error, StreamEvent};

/// Reads a transcript written for these tests (never `../shared`).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

pub type FixtureBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// An in-process HTTP transport: answers every request with one canned
/// response whose body arrives in pieces of `chunk` bytes. No socket.
#[derive(Clone)]
pub struct FixtureTransport {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub chunk: usize,
    pub seen: Arc<Mutex<Vec<http::Request<Bytes>>>>,
}

impl FixtureTransport {
    pub fn sse(body: impl Into<Bytes>, chunk: usize) -> Self {
        FixtureTransport {
            status: 200,
            content_type: "text/event-stream",
            body: body.into(),
            chunk,
            seen: Arc::default(),
        }
    }
}

impl tower::Service<http::Request<RequestBody>> for FixtureTransport {
    type Response = http::Response<FixtureBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RequestBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(body))
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.seen
            .lock()
            .unwrap()
            .push(http::Request::from_parts(parts, body));
        let frames: Vec<_> = (0..self.body.len())
            .step_by(self.chunk.max(1))
            .map(|i| {
                Ok(Frame::data(
                    self.body
                        .slice(i..self.body.len().min(i + self.chunk.max(1))),
                ))
            })
            .collect();
        let resp = http::Response::builder()
            .status(self.status)
            .header("content-type", self.content_type)
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        std::future::ready(Ok(resp))
    }
}

/// Every event of a stream, and the error that ended it, if any.
pub async fn drain(mut stream: ChatStream) -> (Vec<StreamEvent>, Option<Error>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => {
                assert!(
                    stream.next().await.is_none(),
                    "a stream ends after its error"
                );
                return (events, Some(e));
            }
        }
    }
    (events, None)
}

/// The text deltas of `events`, in order.
pub fn texts(events: &[StreamEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}
