//! The trace layer through a real OpenTelemetry pipeline: the SDK's
//! in-memory span and metric exporters, fed by `tracing-opentelemetry` and
//! the metrics API, checked for what reaches a collector.

use std::time::Duration;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::trace::Conventions;
use llm_tower::{
    ChatRequest, Credential, GenAiTraceLayer, Message, RefreshLayer, RetryPolicy,
    TransportRetryLayer,
};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt as _;

mod support;

/// A pipeline of the SDK's own, with in-memory exporters.
struct Pipeline {
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
    meters: SdkMeterProvider,
    _tracers: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Pipeline {
    fn install() -> Pipeline {
        let spans = InMemorySpanExporter::default();
        let tracers = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracers.tracer("test")));
        let metrics = InMemoryMetricExporter::default();
        let meters = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        Pipeline {
            spans,
            metrics,
            meters,
            _tracers: tracers,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn meter(&self) -> opentelemetry::metrics::Meter {
        self.meters.meter("llm-tower-test")
    }

    fn finished_spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().unwrap()
    }

    fn metrics(&self) -> ResourceMetrics {
        self.meters.force_flush().unwrap();
        self.metrics
            .get_finished_metrics()
            .unwrap()
            .pop()
            .expect("a snapshot")
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The data points of histogram `name`: (attributes, count, sum).
fn histogram(metrics: &ResourceMetrics, name: &str) -> Vec<(Vec<KeyValue>, u64, f64)> {
    let mut points = Vec::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics().filter(|m| m.name() == name) {
            match metric.data() {
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        points.push((p.attributes().cloned().collect(), p.count(), p.sum()));
                    }
                }
                AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        points.push((p.attributes().cloned().collect(), p.count(), p.sum() as f64));
                    }
                }
                _ => {}
            }
        }
    }
    points
}

/// The data points of counter or gauge `name`: (attributes, value).
fn points(metrics: &ResourceMetrics, name: &str) -> Vec<(Vec<KeyValue>, u64)> {
    let mut points = Vec::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics().filter(|m| m.name() == name) {
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        points.push((p.attributes().cloned().collect(), p.value()));
                    }
                }
                AggregatedMetrics::U64(MetricData::Gauge(gauge)) => {
                    for p in gauge.data_points() {
                        points.push((p.attributes().cloned().collect(), p.value()));
                    }
                }
                _ => {}
            }
        }
    }
    points
}

fn hello() -> ChatRequest {
    ChatRequest::new("m")
        .message(Message::system("Be brief."))
        .message(Message::user("hi"))
        .max_tokens(64)
        .stream(true)
}

#[tokio::test(start_paused = true)]
async fn one_call_with_a_refresh_and_a_retry_reaches_the_collector_to_the_conventions() {
    let pipeline = Pipeline::install();
    let server = MockServer::start().await;
    server.accept_keys(["fresh-token"]);
    // After the refresh, a connection reset before any output; then an
    // answer whose events come 250 ms apart.
    server.push(Reply::reset());
    server.set_default(Reply::text(["Hello", " there", "."]).delay(Duration::from_millis(250)));
    let service = ServiceBuilder::new()
        .layer(
            GenAiTraceLayer::new()
                .conventions(Conventions::Latest)
                .meter(&pipeline.meter()),
        )
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(
            RefreshLayer::new(|| async {
                Ok::<_, std::io::Error>(Credential::bearer("fresh-token"))
            })
            .initial(Credential::bearer("stale-token")),
        )
        .service(support::openai_at(&server));
    let completion = support::complete(service, hello()).await;
    assert_eq!(completion.text, "Hello there.");

    let spans = pipeline.finished_spans();
    let chat: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat"))
        .collect();
    assert_eq!(chat.len(), 1, "one span for the logical call: {spans:#?}");
    let span = chat[0];
    assert_eq!(span.name, "chat m");
    assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Client);
    let a = &span.attributes;
    let s = |v: &str| Value::from(v.to_owned());
    assert_eq!(attribute(a, "gen_ai.operation.name"), Some(&s("chat")));
    assert_eq!(attribute(a, "gen_ai.provider.name"), Some(&s("openai")));
    assert_eq!(attribute(a, "gen_ai.request.model"), Some(&s("m")));
    for key in [
        "gen_ai.request.model",
        "gen_ai.provider.name",
        "server.port",
    ] {
        let n = a.iter().filter(|kv| kv.key.as_str() == key).count();
        assert_eq!(n, 1, "{key} recorded once");
    }
    assert_eq!(
        attribute(a, "gen_ai.request.max_tokens"),
        Some(&Value::I64(64))
    );
    assert_eq!(
        attribute(a, "gen_ai.request.stream"),
        Some(&Value::Bool(true))
    );
    assert_eq!(attribute(a, "server.address"), Some(&s("127.0.0.1")));
    assert_eq!(
        attribute(a, "server.port"),
        Some(&Value::I64(i64::from(server.addr().port())))
    );
    assert!(attribute(a, "gen_ai.response.id").is_some());
    assert_eq!(
        attribute(a, "gen_ai.response.finish_reasons"),
        Some(&Value::Array(opentelemetry::Array::String(vec![
            "stop".into()
        ])))
    );
    assert_eq!(
        attribute(a, "gen_ai.usage.input_tokens"),
        Some(&Value::I64(12))
    );
    assert_eq!(
        attribute(a, "gen_ai.usage.output_tokens"),
        Some(&Value::I64(3))
    );
    assert_eq!(attribute(a, "llm_tower.attempts"), Some(&Value::I64(3)));
    let Some(Value::F64(ttfc)) = attribute(a, "gen_ai.response.time_to_first_chunk") else {
        panic!("time to first chunk: {a:?}");
    };
    // The retry's backoff, then events 250 ms apart on the paused clock.
    assert!(*ttfc >= 0.25, "{ttfc}");
    assert!(attribute(a, "error.type").is_none());
    for key in [
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
    ] {
        assert!(attribute(a, key).is_none(), "{key} is opt-in");
    }
    // The refresh and the retry, as the span's events.
    let kinds: Vec<String> = span
        .events
        .iter()
        .filter_map(|e| {
            attribute(&e.attributes, "llm_tower.event").map(|v| v.as_str().into_owned())
        })
        .collect();
    assert_eq!(kinds, ["refresh", "retry"], "{:#?}", span.events);
    // No secret anywhere.
    let everything = format!("{spans:?}");
    for secret in ["stale-token", "fresh-token"] {
        assert!(!everything.contains(secret), "{secret} in the spans");
    }

    let metrics = pipeline.metrics();
    let tokens = histogram(&metrics, "gen_ai.client.token.usage");
    let by_type = |t: &str| {
        tokens
            .iter()
            .find(|(attrs, _, _)| attribute(attrs, "gen_ai.token.type") == Some(&s(t)))
            .map(|(attrs, count, sum)| (attrs.clone(), *count, *sum))
            .unwrap_or_else(|| panic!("{t} tokens: {tokens:?}"))
    };
    let (input_attrs, count, sum) = by_type("input");
    assert_eq!((count, sum), (1, 12.0));
    assert_eq!(by_type("output").1..=by_type("output").1, 1..=1);
    assert_eq!(by_type("output").2, 3.0);
    for (key, value) in [
        ("gen_ai.operation.name", s("chat")),
        ("gen_ai.provider.name", s("openai")),
        ("gen_ai.request.model", s("m")),
        ("server.address", s("127.0.0.1")),
        ("llm_tower.attempts", Value::I64(3)),
    ] {
        assert_eq!(attribute(&input_attrs, key), Some(&value), "{key}");
    }
    let duration = histogram(&metrics, "gen_ai.client.operation.duration");
    assert_eq!(duration.len(), 1);
    assert_eq!(duration[0].1, 1);
    assert!(attribute(&duration[0].0, "error.type").is_none());
    let first = histogram(&metrics, "gen_ai.client.operation.time_to_first_chunk");
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].1, first[0].2),
        (1, *ttfc),
        "the span's and the metric's TTFC"
    );
    let per_chunk = histogram(&metrics, "gen_ai.client.operation.time_per_output_chunk");
    assert_eq!(per_chunk[0].1, 2, "three text chunks: two gaps");
    assert!((per_chunk[0].2 - 0.5).abs() < 1e-9, "two gaps of 250 ms");
    assert!(duration[0].2 >= *ttfc + 0.5);
    let everything = format!("{metrics:?}");
    assert!(
        !everything.contains("-token"),
        "no credential in the metrics"
    );
}

#[tokio::test(start_paused = true)]
async fn content_in_the_conventions_shapes_only_when_opted_in_and_failures_typed() {
    let pipeline = Pipeline::install();
    let server = MockServer::start().await;
    let service = ServiceBuilder::new()
        .layer(
            GenAiTraceLayer::new()
                .conventions(Conventions::Latest)
                .record_content(true)
                .meter(&pipeline.meter()),
        )
        .service(support::anthropic_at(&server));
    support::complete(service.clone(), hello()).await;
    server.push(Reply::api_error(400, "invalid_request_error", "bad"));
    let error = service.oneshot(hello()).await.unwrap_err();

    let spans = pipeline.finished_spans();
    assert_eq!(spans.len(), 2);
    let ok = &spans[0].attributes;
    // Anthropic reports usage twice (at the start and the end): the span
    // holds the last, once.
    let outputs: Vec<_> = ok
        .iter()
        .filter(|kv| kv.key.as_str() == "gen_ai.usage.output_tokens")
        .collect();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(outputs[0].value, Value::I64(5));
    assert_eq!(
        attribute(ok, "gen_ai.provider.name"),
        Some(&Value::from("anthropic".to_owned()))
    );
    let json = |key: &str, a: &[KeyValue]| -> serde_json::Value {
        serde_json::from_str(&attribute(a, key).unwrap().as_str()).unwrap()
    };
    // Anthropic takes system instructions apart.
    assert_eq!(
        json("gen_ai.system_instructions", ok),
        serde_json::json!([{"type": "text", "content": "Be brief."}])
    );
    assert_eq!(
        json("gen_ai.input.messages", ok),
        serde_json::json!([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}])
    );
    let output = json("gen_ai.output.messages", ok);
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["finish_reason"], "stop");
    assert_eq!(
        output[0]["parts"][0]["content"],
        "Hello from the mock server."
    );

    let failed = &spans[1];
    assert_eq!(
        attribute(&failed.attributes, "error.type"),
        Some(&Value::from(error.kind().to_owned()))
    );
    assert!(matches!(
        failed.status,
        opentelemetry::trace::Status::Error { .. }
    ));
    let duration = histogram(&pipeline.metrics(), "gen_ai.client.operation.duration");
    let failures: Vec<_> = duration
        .iter()
        .filter(|(a, _, _)| attribute(a, "error.type").is_some())
        .collect();
    assert_eq!(failures.len(), 1, "{duration:?}");
}

#[tokio::test(start_paused = true)]
async fn hooks_see_the_call() {
    use std::sync::{Arc, Mutex};
    let server = MockServer::start().await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = |what: &'static str| {
        let seen = seen.clone();
        move |detail: String| seen.lock().unwrap().push(format!("{what} {detail}"))
    };
    let (first, event, eos, failure) = (log("first"), log("event"), log("eos"), log("failure"));
    let layer = GenAiTraceLayer::new()
        .on_first_output(move |meta, _, _| first(meta.provider.to_owned()))
        .on_event(move |e, _| event(format!("{}", e.is_output())))
        .on_eos(move |usage, _, _| eos(format!("{:?}", usage.map(|u| u.output_tokens))))
        .on_failure(move |e, _, _| failure(e.kind().to_owned()));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(support::openai_at(&server));
    support::complete(service.clone(), hello()).await;
    server.push(Reply::api_error(400, "invalid_request_error", "bad"));
    let _ = service.oneshot(hello()).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("event false"),
        "{seen:?}"
    );
    assert!(seen.contains(&"first openai".to_owned()), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|s| *s == "event true").count(),
        5,
        "{seen:?}"
    );
    assert!(seen.contains(&"eos Some(5)".to_owned()), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("failure invalid_request"),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_span_names_the_provider_that_answered() {
    let pipeline = Pipeline::install();
    let primary = MockServer::start().await;
    primary.set_default(Reply::api_error(
        503,
        "server_error",
        "down for maintenance",
    ));
    let backup = MockServer::start().await;
    let service = ServiceBuilder::new()
        .layer(GenAiTraceLayer::new().conventions(Conventions::Latest))
        .layer(
            llm_tower::FallbackLayer::new(tower::util::BoxCloneService::new(
                support::anthropic_at(&backup),
            ))
            .when(|_| true),
        )
        .service(tower::util::BoxCloneService::new(support::openai_at(
            &primary,
        )));
    support::complete(service, hello()).await;
    let spans = pipeline.finished_spans();
    let a = &spans.last().unwrap().attributes;
    assert_eq!(
        attribute(a, "gen_ai.provider.name"),
        Some(&Value::from("anthropic".to_owned()))
    );
    assert_eq!(
        attribute(a, "server.port"),
        Some(&Value::I64(i64::from(backup.addr().port())))
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_and_the_pool_have_instruments_of_their_own() {
    use llm_tower::{Deadline, Pool, RateLimitLayer};
    let pipeline = Pipeline::install();
    let meter = pipeline.meter();

    // One request a minute: the second call waits the minute out, the
    // third, whose deadline is nearer, is refused.
    let server = MockServer::start().await;
    let limited = ServiceBuilder::new()
        .layer(RateLimitLayer::new().requests_per_minute(1).meter(&meter))
        .service(support::openai_at(&server));
    for _ in 0..2 {
        let answer = limited.clone().oneshot(hello()).await.unwrap();
        answer.completion().await.unwrap();
    }
    let refused = limited
        .clone()
        .oneshot(hello().extension(Deadline::after(Duration::from_secs(1))))
        .await;
    assert!(refused.is_err());

    // A pool whose deployment `a` answers 429: it cools down.
    let a = MockServer::start().await;
    a.set_default(
        Reply::api_error(429, "rate_limit_exceeded", "slow down").header("retry-after", "30"),
    );
    let b = MockServer::start().await;
    let pool = Pool::builder()
        .deployment("a", support::openai_at(&a))
        .deployment("b", support::openai_at(&b))
        .meter(&meter)
        .build()
        .unwrap();
    for _ in 0..20 {
        let _ = pool.clone().oneshot(hello()).await;
    }

    let metrics = pipeline.metrics();
    let waits = histogram(&metrics, "llm_tower.rate_limit.wait");
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert_eq!(waits[0].1, 1, "one call waited");
    assert!(
        (waits[0].2 - 60.0).abs() < 1.0,
        "about a minute: {}",
        waits[0].2
    );
    let refusals = points(&metrics, "llm_tower.rate_limit.refusals");
    assert_eq!(refusals.len(), 1);
    assert_eq!(
        attribute(&refusals[0].0, "llm_tower.reason"),
        Some(&Value::from("deadline".to_owned()))
    );
    assert_eq!(refusals[0].1, 1);

    let deployment = |points: &[(Vec<KeyValue>, u64)], name: &str| {
        points
            .iter()
            .find(|(a, _)| {
                attribute(a, "llm_tower.deployment") == Some(&Value::from(name.to_owned()))
            })
            .map(|(_, v)| *v)
    };
    let cooldowns = points(&metrics, "llm_tower.pool.cooldowns");
    assert_eq!(deployment(&cooldowns, "a"), Some(1), "{cooldowns:?}");
    let available = points(&metrics, "llm_tower.pool.available");
    assert_eq!(deployment(&available, "a"), Some(0), "{available:?}");
    assert_eq!(deployment(&available, "b"), Some(1));
    let open = points(&metrics, "llm_tower.pool.open_streams");
    assert_eq!(
        deployment(&open, "b"),
        Some(0),
        "every stream ended: {open:?}"
    );
}
