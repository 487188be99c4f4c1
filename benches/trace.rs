//! What GenAiTraceLayer costs, per call and per event, side by side with
//! the same in-memory service without it: with no subscriber and no meter
//! (the layer must add nothing measurable), and with a whole OpenTelemetry
//! pipeline installed (`tracing-opentelemetry` into the SDK's tracer, and
//! the SDK's meter, exporting to memory).
//!
//! `cargo bench --bench trace`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llm_tower::trace::Conventions;
use llm_tower::{ChatRequest, GenAiTraceLayer, ResponseMeta};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tower::Layer;
use tracing_subscriber::layer::SubscriberExt as _;

mod common;

use common::{Boxed, drain, from_memory};

/// Exports spans nowhere (the SDK's whole path runs up to the export, and
/// nothing piles up over millions of iterations).
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Answers from memory: start, `deltas` text deltas, usage, done.
fn inner(deltas: usize) -> Boxed {
    from_memory(ResponseMeta::new("openai", "gpt-4o-mini"), deltas)
}

/// The benchmarks' short request, streaming.
fn request() -> ChatRequest {
    common::short_request().stream(true)
}

fn costs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The pipeline, for the runs that have one.
    let tracers = SdkTracerProvider::builder()
        .with_simple_exporter(Discard)
        .build();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    let meter = meters.meter("bench");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracers.tracer("bench")));
    let dispatch = tracing::Dispatch::new(subscriber);

    let layer = GenAiTraceLayer::new().conventions(Conventions::Latest);
    for (group, deltas) in [("trace/call", 1), ("trace/stream_1000", 1000)] {
        let bare = inner(deltas);
        let traced = layer.clone().layer(inner(deltas));
        let measured = layer.clone().meter(&meter).layer(inner(deltas));
        let events = deltas + 3;
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(if deltas == 1 {
            1
        } else {
            events as u64
        }));
        g.bench_function(BenchmarkId::from_parameter("bare"), |b| {
            b.iter(|| rt.block_on(async { assert_eq!(drain(&bare, request()).await, events) }))
        });
        g.bench_function(BenchmarkId::from_parameter("traced_no_subscriber"), |b| {
            b.iter(|| rt.block_on(async { assert_eq!(drain(&traced, request()).await, events) }))
        });
        g.bench_function(BenchmarkId::from_parameter("traced_pipeline"), |b| {
            tracing::dispatcher::with_default(&dispatch, || {
                b.iter(|| {
                    rt.block_on(async { assert_eq!(drain(&measured, request()).await, events) })
                })
            });
        });
        g.finish();
    }
}

criterion_group!(benches, costs);
criterion_main!(benches);
