//! What RateLimitLayer costs per call when there is room, side by side with
//! the same service without it.
//!
//! The inner service answers at once from memory, with the rate-limit
//! headers OpenAI sends parsed into its metadata and a usage event, so the
//! layered run does everything it does for a real call: estimate the
//! request, book it against a budget of requests and tokens, take in the
//! report, and correct the books from the usage. The difference between
//! the two runs is the layer's cost. Also: reading the headers, which the
//! provider does for every response.
//!
//! `cargo bench --bench rate_limit`

use std::time::SystemTime;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderMap;
use llm_tower::{RateLimitInfo, RateLimitLayer, ResponseMeta};
use tower::Layer;

mod common;

use common::{Boxed, drain, from_memory, short_request};

/// A response's headers as OpenAI sends them, rate limits among the rest.
fn openai_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("date", "Fri, 21 Nov 2026 10:00:00 GMT"),
        ("content-type", "text/event-stream; charset=utf-8"),
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive"),
        ("access-control-expose-headers", "X-Request-ID"),
        ("openai-organization", "org-bench"),
        ("openai-processing-ms", "182"),
        ("openai-version", "2020-10-01"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-remaining-tokens", "29999990"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-reset-tokens", "0s"),
        ("x-request-id", "req_bench"),
        ("strict-transport-security", "max-age=31536000"),
        ("cf-cache-status", "DYNAMIC"),
        ("server", "cloudflare"),
    ] {
        h.insert(k, v.parse().expect("valid header"));
    }
    h
}

/// Answers from memory, with the rate-limit report OpenAI sends.
fn inner() -> Boxed {
    let mut meta = ResponseMeta::new("openai", "gpt-4o-mini");
    meta.rate_limit = RateLimitInfo::from_headers(&openai_headers(), SystemTime::now());
    assert!(meta.rate_limit.is_some());
    from_memory(meta, 1)
}

fn per_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // Budgets no benchmark run can reach: there is always room.
    let layer = RateLimitLayer::new()
        .requests_per_minute(u64::MAX)
        .tokens_per_minute(u64::MAX)
        .input_tokens_per_minute(u64::MAX)
        .output_tokens_per_minute(u64::MAX);
    let bare = inner();
    // Not boxed again: the difference is the layer's, not a second box's.
    let limited = layer.layer(inner());
    // The default: the provider's headers only, no budget to correct.
    let headers_only = RateLimitLayer::new().layer(inner());

    let mut group = c.benchmark_group("rate_limit/call");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter("bare"), |b| {
        b.iter(|| rt.block_on(async { assert_eq!(drain(&bare, short_request()).await, 4) }))
    });
    group.bench_function(BenchmarkId::from_parameter("rate_limit"), |b| {
        b.iter(|| rt.block_on(async { assert_eq!(drain(&limited, short_request()).await, 4) }))
    });
    group.bench_function(
        BenchmarkId::from_parameter("rate_limit_headers_only"),
        |b| {
            b.iter(|| {
                rt.block_on(async { assert_eq!(drain(&headers_only, short_request()).await, 4) })
            })
        },
    );
    group.finish();

    let headers = openai_headers();
    c.bench_function("rate_limit/read_headers", |b| {
        b.iter(|| RateLimitInfo::from_headers(std::hint::black_box(&headers), SystemTime::now()))
    });
}

criterion_group!(benches, per_call);
criterion_main!(benches);
