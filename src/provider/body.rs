//! An answer's body to events: SSE framing (or one JSON body), the
//! provider's decoder, the terminator, and what a cut-off body means.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use futures_core::Stream;
use http::header::CONTENT_TYPE;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::chat::{ChatStream, ResponseMeta, StreamEvent};
use crate::error::{BoxError, DecodeError, Error, TransportPhase, snippet};
use crate::headers::{RateLimitInfo, request_id_header};
use crate::redact::Secrets;
use crate::sse::{SseDecoder, SseError};

use super::failure::transport_error;
use super::response::CallCtx;
use super::wire::{Decode, Decoded};

pub(super) fn success<B>(ctx: CallCtx, parts: http::response::Parts, body: B) -> ChatStream
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mode = if content_type.starts_with("text/html") {
        Mode::Reject {
            content_type,
            buf: Vec::new(),
        }
    } else if !ctx.stream || content_type.starts_with("application/json") {
        // A server may answer a streaming request with one JSON body: an
        // error object, or the whole answer when it ignores `stream`.
        Mode::Json { buf: Vec::new() }
    } else {
        Mode::Sse {
            sse: SseDecoder::with_max_event_size(ctx.max_event_size),
        }
    };
    let request_id = request_id_header(&parts.headers).map(str::to_owned);
    let rate_limit = RateLimitInfo::from_headers(&parts.headers, SystemTime::now());
    let meta = ResponseMeta {
        provider: ctx.provider,
        model: ctx.model,
        status: parts.status,
        request_id,
        headers: parts.headers,
        attempts: ctx.attempt,
        rate_limit,
        deployment: None,
        endpoint: Some(ctx.endpoint),
    };
    ChatStream::new(
        meta,
        EventStream {
            body,
            mode,
            decoder: ctx.decoder,
            out: Decoded::new(ctx.provider),
            provider: ctx.provider,
            max_event_size: ctx.max_event_size,
            secrets: ctx.secrets,
            finished: false,
        },
    )
}

enum Mode {
    Sse { sse: SseDecoder },
    Json { buf: Vec<u8> },
    Reject { content_type: String, buf: Vec<u8> },
}

pin_project! {
    /// A response body decoded into events.
    pub(super) struct EventStream<B> {
        #[pin]
        body: B,
        mode: Mode,
        decoder: Box<dyn Decode>,
        out: Decoded,
        provider: &'static str,
        max_event_size: usize,
        secrets: Secrets,
        finished: bool,
    }
}

impl<B> Stream for EventStream<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Item = Result<StreamEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(mut item) = this.out.pop() {
                if let Err(e) = &mut item {
                    // An error ends the stream; nothing decoded after it counts.
                    *this.finished = true;
                    this.out.clear();
                    this.secrets.error(e);
                }
                return Poll::Ready(Some(item));
            }
            if *this.finished {
                return Poll::Ready(None);
            }
            if this.out.is_done() {
                *this.finished = true;
                drain_ready(this.body.as_mut(), cx);
                continue;
            }
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        let bytes = data.copy_to_bytes(data.remaining());
                        feed(
                            this.mode,
                            &mut **this.decoder,
                            this.out,
                            *this.max_event_size,
                            &bytes,
                        );
                    }
                }
                Some(Err(e)) => {
                    let e = transport_error(this.provider, TransportPhase::Body, e.into());
                    this.out.fail(e);
                }
                None => {
                    finish(this.mode, &mut **this.decoder, this.out);
                    *this.finished = true;
                }
            }
        }
    }
}

/// After the terminator, reads what is already there (usually the end of the
/// body) so the connection can go back to the pool, without waiting for more.
fn drain_ready<B: Body>(mut body: Pin<&mut B>, cx: &mut Context<'_>) {
    for _ in 0..4 {
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

fn feed(
    mode: &mut Mode,
    decoder: &mut dyn Decode,
    out: &mut Decoded,
    max_event_size: usize,
    bytes: &[u8],
) {
    let provider = out.provider();
    match mode {
        Mode::Sse { sse } => {
            let _ = sse.feed(bytes, |item| match item {
                Ok(event) => {
                    if !out.is_done() {
                        decoder.event(event, out);
                    }
                }
                Err(SseError::EventTooLarge { limit }) => {
                    out.fail(Error::decode(
                        provider,
                        DecodeError::EventTooLarge { limit },
                    ));
                }
            });
        }
        Mode::Json { buf } => {
            if buf.len() + bytes.len() > max_event_size {
                buf.clear();
                out.fail(Error::decode(
                    provider,
                    DecodeError::EventTooLarge {
                        limit: max_event_size,
                    },
                ));
            } else {
                buf.extend_from_slice(bytes);
            }
        }
        Mode::Reject { content_type, buf } => {
            buf.extend_from_slice(&bytes[..bytes.len().min(256)]);
            if buf.len() >= 200 {
                out.fail(reject(provider, content_type, buf));
            }
        }
    }
}

/// The body ended: what the framing still holds is decoded, then the answer
/// ends the way every decoder's does (see [`Decoded::close`]).
fn finish(mode: &mut Mode, decoder: &mut dyn Decode, out: &mut Decoded) {
    match mode {
        Mode::Sse { sse } => {
            sse.finish(|item| {
                if let Ok(event) = item
                    && !out.is_done()
                {
                    decoder.event(event, out);
                }
            });
        }
        Mode::Json { buf } => {
            let body = std::mem::take(buf);
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if !text.is_empty() {
                decoder.body(text, out);
            }
        }
        Mode::Reject { content_type, buf } => {
            let provider = out.provider();
            out.fail(reject(provider, content_type, buf));
            return;
        }
    }
    if !out.is_done() && !out.has_failed() {
        decoder.finish(out);
    }
    out.close();
}

fn reject(provider: &'static str, content_type: &str, buf: &[u8]) -> Error {
    Error::decode(
        provider,
        DecodeError::UnexpectedContentType {
            content_type: content_type.to_owned(),
            snippet: snippet(buf),
        },
    )
}

/// The error for a body that ended before the provider's terminator.
pub(super) fn truncated(provider: &'static str) -> Error {
    Error::Transport {
        provider,
        phase: TransportPhase::Body,
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the stream ended before its terminator",
        )),
    }
}

pin_project! {
    /// Normalizes any body's data to `Bytes`.
    pub(super) struct MapData<B> {
        #[pin]
        pub(super) inner: B,
    }
}

impl<B: Body> Body for MapData<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx).map(|f| {
            f.map(|r| r.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
        })
    }
}
