//! End to end over loopback against the mock server: streamed events per
//! second through the bare provider, through the recommended stack, and
//! through a plain reqwest + `eventsource-stream` + `serde_json` client (the
//! outside baseline), at 1 and at 64 concurrent streams.
//!
//! The server runs in the same process, on the same 2-worker runtime, so
//! every client pays the same share of its cost.
//!
//! On a small shared machine, runs drift by more than the few percent the
//! stack may cost, so the ratio is also measured paired: bare and full in
//! alternation, round after round, the median of the per-round ratios
//! printed at the end (`full/bare events/s`).
//!
//! `cargo bench --bench loopback`

mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{ChatRequest, Message, OpenAi};
use tower::ServiceExt;

use common::{Boxed, OPENAI_TEXT, baseline_text, count_events, full_stack};

/// Text deltas per answer.
const DELTAS: usize = 1000;

/// One way of reading a whole answer; returns the events it saw.
#[derive(Clone)]
enum Client {
    Tower(Boxed),
    Reqwest {
        client: reqwest::Client,
        url: String,
    },
}

impl Client {
    async fn answer(self) -> usize {
        match self {
            Client::Tower(svc) => {
                let req = ChatRequest::new("").message(Message::user("Count."));
                count_events(svc.oneshot(req).await).await
            }
            Client::Reqwest { client, url } => {
                let body = serde_json::json!({
                    "model": "m",
                    "messages": [{"role": "user", "content": "Count."}],
                    "stream": true,
                });
                let resp = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("request failed");
                let mut events = resp.bytes_stream().eventsource();
                let mut texts = Vec::new();
                while let Some(e) = events.next().await {
                    let e = e.expect("stream failed");
                    texts.extend(baseline_text(&e.data, OPENAI_TEXT));
                }
                texts.len()
            }
        }
    }
}

/// The runtime, the server (kept alive) and the clients to compare.
fn setup() -> (
    tokio::runtime::Runtime,
    MockServer,
    [(&'static str, Client); 3],
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(MockServer::start());
    let deltas: Vec<String> = (0..DELTAS).map(|i| format!(" word{i}")).collect();
    server.set_default(Reply::text(deltas));
    let clients = rt.block_on(async {
        let provider = OpenAi::builder()
            .base_url(server.openai_url())
            .model("m")
            .build()
            .expect("valid configuration");
        [
            ("bare", Client::Tower(Boxed::new(provider.clone()))),
            ("full", Client::Tower(full_stack(provider, 1024))),
            (
                "reqwest+eventsource",
                Client::Reqwest {
                    client: reqwest::Client::new(),
                    url: format!("{}/chat/completions", server.openai_url()),
                },
            ),
        ]
    });
    (rt, server, clients)
}

/// Reads `concurrency` whole answers at once.
async fn round(client: &Client, concurrency: usize) {
    let calls: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(client.clone().answer()))
        .collect();
    for call in calls {
        let n = call.await.expect("task");
        assert!(n >= DELTAS, "{n} events");
    }
}

fn loopback(c: &mut Criterion) {
    let (rt, _server, clients) = setup();
    for concurrency in [1usize, 64] {
        let mut group = c.benchmark_group(format!("loopback/{concurrency}"));
        group.throughput(Throughput::Elements((concurrency * DELTAS) as u64));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(8));
        for (name, client) in &clients {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| rt.block_on(round(client, concurrency)))
            });
        }
        group.finish();
    }
}

/// Bare and full in alternation (the order swapped every round); prints the
/// median and quartiles of full/bare events/s over the rounds.
fn paired(_: &mut Criterion) {
    let (rt, _server, clients) = setup();
    let bare = &clients[0].1;
    let full = &clients[1].1;
    for (concurrency, rounds) in [(1usize, 1000), (64, 50)] {
        rt.block_on(round(bare, concurrency)); // warm both up
        rt.block_on(round(full, concurrency));
        let mut ratios: Vec<f64> = (0..rounds)
            .map(|i| {
                let time = |client| {
                    let started = Instant::now();
                    rt.block_on(round(client, concurrency));
                    started.elapsed().as_secs_f64()
                };
                let (b, f) = if i % 2 == 0 {
                    let b = time(bare);
                    (b, time(full))
                } else {
                    let f = time(full);
                    (time(bare), f)
                };
                b / f
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let q = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
        eprintln!(
            "loopback/{concurrency} paired: full/bare events/s median {:.3} (quartiles {:.3}–{:.3}, {rounds} rounds)",
            q(0.5),
            q(0.25),
            q(0.75)
        );
    }
}

criterion_group!(benches, loopback, paired);
criterion_main!(benches);
