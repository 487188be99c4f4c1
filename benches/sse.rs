//! SSE decoding: framing alone, and framing + parsing into `StreamEvent`s
//! through a provider, on realistic 10,000-event transcripts fed in 1 KiB
//! chunks and in random 1–4096-byte chunks — each beside its baseline in the
//! same group:
//!
//! - `framing`: ours, `sse-stream` 0.3 (the fastest framing crate we know of)
//!   and `eventsource-stream` 0.2 (what `reqwest-eventsource` uses);
//! - `decode`: ours through the provider into typed `StreamEvent`s, and
//!   `eventsource-stream` + `serde_json::Value` taking the text out of each
//!   event (what a `reqwest-eventsource` user writes).
//!
//! Throughput is in events; the transcripts' sizes are printed first, so
//! bytes/s = events/s × bytes/event.
//!
//! `cargo bench --bench sse`

use std::convert::Infallible;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::StreamBody;
use llm_tower::sse::SseDecoder;
use llm_tower::transport::RequestBody;
use llm_tower::{Anthropic, ChatRequest, OpenAi};
use sse_stream::SseByteStream;
use tower::ServiceExt;

const EVENTS: usize = 10_000;

/// A small deterministic generator (xorshift), so every run sees the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
}

const WORDS: [&str; 8] = [
    " tide", " moon", " harbour", " été", " Brest", " 06:12", " wave", " 🌊",
];

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.range(0, WORDS.len() - 1)])
        .collect()
}

/// OpenAI chunks of 150–300 bytes, usage null on each, ending in `[DONE]`.
fn openai_transcript() -> Vec<u8> {
    let mut rng = Rng(0x5eed);
    let mut out = String::new();
    for i in 0..EVENTS {
        let n = rng.range(1, 8);
        let text = words(&mut rng, n);
        let chunk = serde_json::json!({
            "id": "chatcmpl-BENCH0001", "object": "chat.completion.chunk", "created": 1763000000,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null,
                         "finish_reason": if i + 1 == EVENTS { serde_json::json!("stop") } else { serde_json::Value::Null }}],
            "usage": null,
        });
        out.push_str(&format!("data: {chunk}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// Anthropic `content_block_delta` events of the same size, with the
/// surrounding protocol events.
fn anthropic_transcript() -> Vec<u8> {
    let mut rng = Rng(0xfeed);
    let mut out = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for _ in 0..EVENTS - 4 {
        let n = rng.range(4, 14);
        let text = words(&mut rng, n);
        let delta = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
        out.push_str(&format!("event: content_block_delta\ndata: {delta}\n\n"));
    }
    out.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9000}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    out.into_bytes()
}

fn fixed_chunks(body: &[u8], size: usize) -> Vec<Bytes> {
    body.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn random_chunks(body: &[u8]) -> Vec<Bytes> {
    let mut rng = Rng(0xc0ffee);
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let n = rng.range(1, 4096).min(body.len() - i);
        out.push(Bytes::copy_from_slice(&body[i..i + n]));
        i += n;
    }
    out
}

/// Serves canned chunks in-process: the provider's whole decode path, no socket.
#[derive(Clone)]
struct Canned(Vec<Bytes>);

type CannedBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl tower::Service<http::Request<RequestBody>> for Canned {
    type Response = http::Response<CannedBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<RequestBody>) -> Self::Future {
        let frames: Vec<_> = self.0.iter().cloned().map(|b| Ok(Frame::data(b))).collect();
        let mut resp = http::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        std::future::ready(Ok(resp))
    }
}

/// Both transcripts, each cut in 1 KiB chunks and in random ones.
fn inputs() -> Vec<(&'static str, &'static str, Vec<Bytes>)> {
    let mut out = Vec::new();
    for (name, body) in [
        ("openai", openai_transcript()),
        ("anthropic", anthropic_transcript()),
    ] {
        out.push((name, "1KiB", fixed_chunks(&body, 1024)));
        out.push((name, "random", random_chunks(&body)));
    }
    out
}

/// Polls a stream that never waits (its input is in memory) to its end.
fn drain<S: Stream + Unpin>(mut stream: S, mut each: impl FnMut(S::Item)) {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(item)) => each(item),
            Poll::Ready(None) => return,
            Poll::Pending => unreachable!("in-memory input never waits"),
        }
    }
}

fn as_stream(chunks: &[Bytes]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures_util::stream::iter(chunks.iter().cloned().map(Ok))
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, split, chunks) in inputs() {
        {
            group.bench_with_input(
                BenchmarkId::new(format!("llm-tower/{name}"), split),
                &chunks,
                |b, chunks| {
                    b.iter(|| {
                        let mut d = SseDecoder::new();
                        let mut n = 0usize;
                        for c in chunks {
                            let _ = d.feed(c, |e| n += e.map_or(0, |e| e.data.len()));
                        }
                        d.finish(|_| {});
                        black_box(n)
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("sse-stream/{name}"), split),
                &chunks,
                |b, chunks| {
                    b.iter(|| {
                        let mut n = 0usize;
                        drain(SseByteStream::new(as_stream(chunks)), |e| {
                            n += e.map_or(0, |e| e.data.map_or(0, |d| d.len()))
                        });
                        black_box(n)
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("eventsource-stream/{name}"), split),
                &chunks,
                |b, chunks| {
                    b.iter(|| {
                        let mut n = 0usize;
                        drain(as_stream(chunks).eventsource(), |e| {
                            n += e.map_or(0, |e| e.data.len())
                        });
                        black_box(n)
                    })
                },
            );
        }
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, split, chunks) in inputs() {
        let svc = match name {
            "openai" => {
                let svc = OpenAi::builder()
                    .model("m")
                    .build_with(Canned(chunks.clone()));
                tower::util::BoxCloneService::new(svc.unwrap())
            }
            _ => {
                let svc = Anthropic::builder()
                    .model("m")
                    .build_with(Canned(chunks.clone()));
                tower::util::BoxCloneService::new(svc.unwrap())
            }
        };
        group.bench_function(BenchmarkId::new(format!("llm-tower/{name}"), split), |b| {
            b.iter(|| rt.block_on(count(svc.clone().oneshot(ChatRequest::new("")))))
        });
        // The text pointer of each provider's delta event.
        let text_at = match name {
            "openai" => "/choices/0/delta/content",
            _ => "/delta/text",
        };
        group.bench_with_input(
            BenchmarkId::new(format!("eventsource-stream+serde_json/{name}"), split),
            &chunks,
            |b, chunks| {
                b.iter(|| {
                    let mut texts = Vec::new();
                    drain(as_stream(chunks).eventsource(), |e| {
                        let e = e.unwrap();
                        if e.data == "[DONE]" {
                            return;
                        }
                        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                        if let Some(t) = v.pointer(text_at).and_then(|t| t.as_str()) {
                            texts.push(t.to_owned());
                        }
                    });
                    assert!(texts.len() >= EVENTS - 4, "{} texts", texts.len());
                    black_box(texts)
                })
            },
        );
    }
    group.finish();
}

async fn count(
    call: impl std::future::Future<Output = Result<llm_tower::ChatStream, llm_tower::Error>>,
) -> usize {
    let mut stream = call.await.unwrap();
    let mut n = 0;
    while let Some(e) = stream.next().await {
        e.unwrap();
        n += 1;
    }
    assert!(n >= EVENTS - 2, "{n} events");
    n
}

fn sizes(_: &mut Criterion) {
    for (name, body) in [
        ("openai", openai_transcript()),
        ("anthropic", anthropic_transcript()),
    ] {
        eprintln!(
            "{name} transcript: {} bytes, {EVENTS} events, {} bytes/event",
            body.len(),
            body.len() / EVENTS
        );
    }
}

criterion_group!(benches, sizes, framing, decode);
criterion_main!(benches);
