//! What a `Pool` costs per call beside the same service called directly:
//! the pick (power of two choices among 1, 2 or 8 deployments), counting
//! the call on its deployment until its stream ends, reading the answer to
//! its first output, and taking in its rate-limit report.
//!
//! The deployments answer at once from memory, with OpenAI's rate-limit
//! headers parsed into the metadata, so the difference between the rows is
//! the pool's own cost.
//!
//! `cargo bench --bench pool`

use std::convert::Infallible;
use std::time::SystemTime;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use llm_tower::{
    ChatRequest, ChatStream, Error, Message, Pool, RateLimitInfo, ResponseMeta, StopReason,
    StreamEvent,
};
use tower::ServiceExt;
use tower::util::BoxCloneService;

type Boxed = BoxCloneService<ChatRequest, ChatStream, Error>;

/// A deployment that answers at once: start, text, done.
fn deployment() -> Boxed {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-tokens", "29999990"),
        ("x-ratelimit-reset-tokens", "0s"),
    ] {
        headers.insert(k, v.parse().expect("valid header"));
    }
    let mut meta = ResponseMeta::new("openai", "gpt-4o-mini");
    meta.rate_limit = RateLimitInfo::from_headers(&headers, SystemTime::now());
    BoxCloneService::new(tower::service_fn(move |_req: ChatRequest| {
        let events = vec![
            Ok(StreamEvent::MessageStart {
                id: Some("chatcmpl-1".into()),
                model: Some("gpt-4o-mini".into()),
            }),
            Ok(StreamEvent::TextDelta {
                text: "Hello there.".into(),
            }),
            Ok(StreamEvent::Done {
                stop_reason: Some(StopReason::EndTurn),
            }),
        ];
        let stream = ChatStream::from_events(meta.clone(), events);
        async move { Ok::<_, Infallible>(stream) }
    }))
    .map_err(|e: Infallible| match e {})
    .boxed_clone()
}

fn pool(n: usize) -> Boxed {
    let pool = (0..n)
        .fold(Pool::builder(), |b, i| {
            b.deployment(format!("d{i}"), deployment())
        })
        .build()
        .expect("a valid pool");
    BoxCloneService::new(pool)
}

async fn call(svc: Boxed) -> usize {
    let req = ChatRequest::new("").message(Message::user("Say hello."));
    let mut stream = svc.oneshot(req).await.expect("call");
    let mut n = 0;
    while let Some(e) = futures_util::StreamExt::next(&mut stream).await {
        e.expect("event");
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("pool");
    let bare = deployment();
    group.bench_function(BenchmarkId::new("bare", 1), |b| {
        b.iter(|| rt.block_on(call(bare.clone())))
    });
    for n in [1, 2, 8] {
        let svc = pool(n);
        group.bench_function(BenchmarkId::new("pool", n), |b| {
            b.iter(|| rt.block_on(call(svc.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
