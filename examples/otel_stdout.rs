//! Spans and metrics of a call, to OpenTelemetry's GenAI conventions,
//! printed by the OpenTelemetry SDK's stdout exporters.
//!
//! ```sh
//! cargo run --example otel_stdout
//! ```
//!
//! It calls the embedded mock server through `GenAiTraceLayer` (the latest
//! conventions, message content opted in, the client metrics), bridged to
//! OpenTelemetry by `tracing-opentelemetry`. Swap the stdout exporters for
//! `opentelemetry-otlp`'s to send the same to a collector.

use llm_tower::mock::{MockServer, Reply};
use llm_tower::trace::Conventions;
use llm_tower::{
    ChatRequest, GenAiTraceLayer, Message, OpenAi, RateLimitLayer, RetryPolicy, TransportRetryLayer,
};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The pipeline: spans and metrics to stdout.
    let tracers = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let meters = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default()).build(),
        )
        .build();
    let meter = meters.meter("llm-tower");
    // Only this crate's spans and events (hyper's connection events would
    // become span events too).
    let only_ours =
        tracing_subscriber::filter::Targets::new().with_target("llm_tower", tracing::Level::INFO);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracers.tracer("llm-tower")))
            .with(only_ours),
    )?;

    // A server that resets the first connection (a retry, as the span's
    // event), then answers.
    let server = MockServer::start().await;
    server.push(Reply::reset());
    let openai = OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("sk-example")
        .model("gpt-4o-mini")
        .build()?;
    let service = ServiceBuilder::new()
        .layer(
            GenAiTraceLayer::new()
                .conventions(Conventions::Latest)
                .record_content(true)
                .meter(&meter),
        )
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(RateLimitLayer::new().requests_per_minute(60).meter(&meter))
        .service(openai);

    let request = ChatRequest::new("gpt-4o-mini")
        .message(Message::system("Answer in one sentence."))
        .message(Message::user("Why is the sky blue?"))
        .stream(true);
    let answer = service.oneshot(request).await?.completion().await?;
    println!("answer: {}\n", answer.text);

    // Flushing prints the span (already ended) and the metrics.
    tracers.shutdown()?;
    meters.shutdown()?;
    Ok(())
}
