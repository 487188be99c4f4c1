//! What the recommended layer stack costs over the bare provider: per call
//! (a non-streaming answer) and per streamed event (a 10,000-event stream),
//! both through an in-process transport so no socket noise hides it.
//!
//! The full stack is the README's, layer for layer; it runs with no
//! tracing subscriber (`full`) and with an application's `fmt` subscriber
//! at INFO writing to nowhere (`full+subscriber`), whose filtering and
//! formatting cost is then part of the figure.
//!
//! The `-waiting` groups make the transport answer as a socket does, each
//! read `Pending` once first, so that every layer is polled once per wait:
//! what a call over a network costs the layers, which the other groups,
//! answered at once, do not show.
//!
//! `cargo bench --bench stack`

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llm_tower::{ChatRequest, Message, OpenAi};
use tower::ServiceExt;

use common::{Boxed, Canned, EVENTS, count_events, fixed_chunks, full_stack, openai_transcript};

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1763000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#;

/// Each service, and whether it runs under a subscriber.
fn services(transport: Canned) -> [(&'static str, Boxed, bool); 3] {
    let provider = OpenAi::builder()
        .model("gpt-4o-mini")
        .build_with(transport)
        .expect("valid configuration");
    [
        ("bare", Boxed::new(provider.clone()), false),
        ("full", full_stack(provider.clone(), 64), false),
        ("full+subscriber", full_stack(provider, 64), true),
    ]
}

/// Runs `f` with the benchmark's subscriber as the default, when asked.
fn traced<T>(on: bool, f: impl FnOnce() -> T) -> T {
    if on {
        tracing::subscriber::with_default(common::subscriber(), f)
    } else {
        f()
    }
}

fn request(stream: bool) -> ChatRequest {
    ChatRequest::new("")
        .message(Message::user("Say hello."))
        .max_tokens(64)
        .stream(stream)
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");

    let chunks = fixed_chunks(&openai_transcript(), 1024);
    for (group, canned, stream) in [
        ("stack/unary", Canned::json(ANSWER), false),
        ("stack/unary-waiting", Canned::json(ANSWER).waiting(), false),
        ("stack/stream", Canned::sse(chunks.clone()), true),
        ("stack/stream-waiting", Canned::sse(chunks).waiting(), true),
    ] {
        calls(c, &rt, group, canned, stream);
    }
}

/// One call through each service: a short non-streaming one, or a
/// 10,000-event stream; throughput in calls or events.
fn calls(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &str,
    canned: Canned,
    stream: bool,
) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(if stream { EVENTS as u64 } else { 1 }));
    for (name, svc, subscribed) in services(canned) {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            traced(subscribed, || {
                b.iter(|| {
                    rt.block_on(async {
                        let n = count_events(svc.clone().oneshot(request(stream)).await).await;
                        if stream {
                            assert!(n >= EVENTS, "{n} events");
                        } else {
                            assert_eq!(n, 4, "start, text, usage, done");
                        }
                    })
                })
            })
        });
    }
    group.finish();
}

/// Bare and full in alternation, the order swapped every round: the median
/// and quartiles of full/bare time per round, for a short call and a
/// streamed event, answered at once and waiting. A ratio taken round by
/// round holds on a machine whose speed drifts, where two criterion groups
/// run a minute apart do not.
fn paired(_: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let chunks = fixed_chunks(&openai_transcript(), 1024);
    let quick = !std::env::args().any(|a| a == "--bench");
    for (name, canned, stream, cold, calls, rounds) in [
        ("unary", Canned::json(ANSWER), false, false, 2000, 41),
        (
            "unary-waiting",
            Canned::json(ANSWER).waiting(),
            false,
            false,
            2000,
            41,
        ),
        (
            "unary-cold",
            Canned::json(ANSWER).waiting(),
            false,
            true,
            200,
            41,
        ),
        ("stream", Canned::sse(chunks.clone()), true, false, 3, 41),
        (
            "stream-waiting",
            Canned::sse(chunks.clone()).waiting(),
            true,
            false,
            3,
            41,
        ),
    ] {
        let (calls, rounds) = if quick { (1, 3) } else { (calls, rounds) };
        let [(_, bare, _), (_, full, _), _] = services(canned);
        let mut evict = vec![0u8; 4 << 20];
        let mut time = |svc: &Boxed| {
            let mut spent = 0.0;
            for _ in 0..calls {
                if cold {
                    // What a socket, the kernel and other tasks do to the
                    // caches between two calls: the call runs from L3.
                    for line in evict.chunks_mut(64) {
                        line[0] = line[0].wrapping_add(1);
                    }
                }
                let started = std::time::Instant::now();
                rt.block_on(async {
                    count_events(svc.clone().oneshot(request(stream)).await).await;
                });
                spent += started.elapsed().as_secs_f64();
            }
            spent
        };
        time(&bare);
        time(&full);
        let mut pairs: Vec<(f64, f64)> = (0..rounds)
            .map(|i| {
                if i % 2 == 0 {
                    let b = time(&bare);
                    (b, time(&full))
                } else {
                    let f = time(&full);
                    (time(&bare), f)
                }
            })
            .collect();
        let mut ratios: Vec<f64> = pairs.iter().map(|(b, f)| f / b).collect();
        ratios.sort_by(f64::total_cmp);
        let q = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        pairs.sort_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)));
        let (b, f) = pairs[pairs.len() / 2];
        let per = if stream { calls * EVENTS } else { calls } as f64;
        println!(
            "stack/{name} paired: full/bare time median {:.3} (quartiles {:.3}–{:.3}, {rounds} rounds); full − bare median {:+.0} ns per {}",
            q(&ratios, 0.5),
            q(&ratios, 0.25),
            q(&ratios, 0.75),
            (f - b) * 1e9 / per,
            if stream { "event" } else { "call" },
        );
    }
}

criterion_group!(benches, stack, paired);
criterion_main!(benches);
