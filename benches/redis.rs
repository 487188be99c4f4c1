//! What books on Redis cost per call, side by side with local books: the
//! same `RateLimitLayer` (a budget of requests and tokens, the provider's
//! report, the usage correction) over an inner service that answers at
//! once from memory, once with its books in this process and once on a
//! `redis-server` on loopback that the benchmark starts itself (skipped,
//! with a line saying so, where none is on `PATH`).
//!
//! - `redis_books/call`: one call at a time — the time a call waits for its
//!   booking (one round trip) beside the local booking.
//! - `redis_books/concurrent_64`: 64 calls at once, to read calls per
//!   second from one process.
//!
//! `cargo bench --bench redis`

use std::time::SystemTime;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llm_tower::redis::RedisStore;
use llm_tower::{RateLimitInfo, RateLimitLayer, ResponseMeta};
use tower::Layer;

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

mod common;

use common::{Boxed, drain, from_memory, short_request};

/// Answers from memory: start, text, usage, done, with a report of room.
fn inner() -> Boxed {
    let mut meta = ResponseMeta::new("openai", "gpt-4o-mini");
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("x-ratelimit-limit-requests", "1000000000"),
        ("x-ratelimit-limit-tokens", "1000000000000"),
        ("x-ratelimit-remaining-requests", "999999999"),
        ("x-ratelimit-remaining-tokens", "999999999990"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-reset-tokens", "0s"),
    ] {
        headers.insert(k, v.parse().expect("valid header"));
    }
    meta.rate_limit = RateLimitInfo::from_headers(&headers, SystemTime::now());
    assert!(meta.rate_limit.is_some());
    from_memory(meta, 1)
}

fn per_call(c: &mut Criterion) {
    if redis_server::which("redis-server").is_none() {
        eprintln!("redis_books: skipped (no redis-server on PATH)");
        return;
    }
    let server = redis_server::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Budgets no run can reach: there is always room.
    let layer = RateLimitLayer::new()
        .requests_per_minute(1 << 40)
        .tokens_per_minute(1 << 50);
    let store = RedisStore::builder(server.url())
        .prefix("llm-tower-bench")
        .build()
        .expect("a store");
    let local = layer.clone().layer(inner());
    let shared = {
        let _guard = rt.enter();
        layer.shared(store.books("bench")).layer(inner())
    };
    // Connected, and the script loaded, before anything is timed.
    rt.block_on(async { assert_eq!(drain(&shared, short_request()).await, 4) });

    let mut group = c.benchmark_group("redis_books/call");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter("local"), |b| {
        b.iter(|| rt.block_on(async { assert_eq!(drain(&local, short_request()).await, 4) }))
    });
    group.bench_function(BenchmarkId::from_parameter("redis"), |b| {
        b.iter(|| rt.block_on(async { assert_eq!(drain(&shared, short_request()).await, 4) }))
    });
    group.finish();

    let mut group = c.benchmark_group("redis_books/concurrent_64");
    group.throughput(Throughput::Elements(64));
    for (name, svc) in [("local", &local), ("redis", &shared)] {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let calls = (0..64).map(|_| drain(svc, short_request()));
                    let counts = futures_util::future::join_all(calls).await;
                    assert!(counts.iter().all(|&n| n == 4));
                })
            })
        });
    }
    group.finish();
    assert_eq!(store.outages(), 0, "Redis answered every step in time");
    // The percentiles the target is about, which criterion does not give:
    // each call timed on its own, the two kinds interleaved, beside a bare
    // PING on a connection of the same kind (the round trip's floor).
    rt.block_on(async {
        let mut ping =
            redis::aio::ConnectionManager::new(redis::Client::open(server.url()).expect("a URL"))
                .await
                .expect("a connection");
        let (mut l, mut r, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            let t = std::time::Instant::now();
            drain(&local, short_request()).await;
            l.push(t.elapsed());
            let t = std::time::Instant::now();
            drain(&shared, short_request()).await;
            r.push(t.elapsed());
            let t = std::time::Instant::now();
            redis::cmd("PING")
                .query_async::<()>(&mut ping)
                .await
                .expect("PONG");
            p.push(t.elapsed());
        }
        let (l, r, p) = (percentiles(l), percentiles(r), percentiles(p));
        // What Redis spent on the script per call, by its own count.
        let mut c = server.client().await;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .expect("INFO");
        for line in stats.lines().filter(|l| l.starts_with("cmdstat_evalsha")) {
            eprintln!("redis_books/server: {line}");
        }
        eprintln!(
            "redis_books/percentiles ({SAMPLES} calls each): local p50 {:.1?} p99 {:.1?}; \
             redis p50 {:.1?} p99 {:.1?}; added at p50 {:.1?}; \
             a PING's round trip p50 {:.1?} p99 {:.1?}",
            l.0,
            l.1,
            r.0,
            r.1,
            r.0.saturating_sub(l.0),
            p.0,
            p.1
        );
    });
}

const SAMPLES: usize = 5_000;

/// The median and 99th percentile of `times`.
fn percentiles(mut times: Vec<std::time::Duration>) -> (std::time::Duration, std::time::Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

criterion_group!(benches, per_call);
criterion_main!(benches);
