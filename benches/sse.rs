//! SSE decoding: framing alone, and framing + parsing into `StreamEvent`s
//! through a provider, on realistic 10,000-event transcripts fed in 1 KiB
//! chunks and in random 1–4096-byte chunks — each beside its baseline in the
//! same group:
//!
//! - `framing`: ours, `sse-stream` 0.3 (the fastest framing crate we know of)
//!   and `eventsource-stream` 0.2 (what `reqwest-eventsource` uses);
//! - `decode`: ours through the provider into typed `StreamEvent`s, and
//!   `eventsource-stream` + `serde_json::Value` taking the text out of each
//!   event (what a `reqwest-eventsource` user writes); and the OpenAI
//!   transcript's text as the Responses API streams it
//!   (`llm-tower/responses`), beside Chat Completions (`llm-tower/openai`).
//!
//! Throughput is in events; the transcripts' sizes are printed first, so
//! bytes/s = events/s × bytes/event.
//!
//! `cargo bench --bench sse`

mod common;

use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use llm_tower::sse::SseDecoder;
use llm_tower::{Anthropic, ChatRequest, OpenAi, OpenAiResponses};
use sse_stream::SseByteStream;

use common::{
    ANTHROPIC_TEXT, Canned, EVENTS, OPENAI_TEXT, anthropic_transcript, baseline_text,
    baseline_text_typed, fixed_chunks, openai_transcript, random_chunks, responses_transcript,
};
use tower::ServiceExt;

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
                    .build_with(Canned::sse(chunks.clone()));
                tower::util::BoxCloneService::new(svc.unwrap())
            }
            _ => {
                let svc = Anthropic::builder()
                    .model("m")
                    .build_with(Canned::sse(chunks.clone()));
                tower::util::BoxCloneService::new(svc.unwrap())
            }
        };
        group.bench_function(BenchmarkId::new(format!("llm-tower/{name}"), split), |b| {
            b.iter(|| rt.block_on(count(svc.clone().oneshot(ChatRequest::new("")))))
        });
        if name == "openai" {
            // The same text from the Responses API, cut the same ways.
            let body = responses_transcript();
            let chunks = match split {
                "1KiB" => fixed_chunks(&body, 1024),
                _ => random_chunks(&body),
            };
            let svc = OpenAiResponses::builder()
                .model("m")
                .build_with(Canned::sse(chunks))
                .unwrap();
            group.bench_function(BenchmarkId::new("llm-tower/responses", split), |b| {
                b.iter(|| rt.block_on(count(svc.clone().oneshot(ChatRequest::new("")))))
            });
        }
        let text_at = match name {
            "openai" => OPENAI_TEXT,
            _ => ANTHROPIC_TEXT,
        };
        for (baseline, extract) in [
            (
                "eventsource-stream+serde_json",
                baseline_text as fn(&str, &str) -> Option<String>,
            ),
            ("eventsource-stream+typed-serde", baseline_text_typed),
        ] {
            group.bench_with_input(
                BenchmarkId::new(format!("{baseline}/{name}"), split),
                &chunks,
                |b, chunks| {
                    b.iter(|| {
                        let mut texts = Vec::new();
                        drain(as_stream(chunks).eventsource(), |e| {
                            texts.extend(extract(&e.unwrap().data, text_at));
                        });
                        assert!(texts.len() >= EVENTS - 4, "{} texts", texts.len());
                        black_box(texts)
                    })
                },
            );
        }
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
        ("responses", responses_transcript()),
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
