//! The main job: real calls through the provider services and layers, against
//! the embedded mock server on loopback, printing what happens.
//!
//! ```text
//! cargo run --example demo
//! ```

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    Anthropic, ChatRequest, ChatStream, Credential, Error, FallbackLayer, Message, OpenAi, Pool,
    RateLimitLayer, RefreshLayer, RetryPolicy, StopReason, StreamEvent, StreamTimeoutLayer, Tool,
    TransportRetryLayer, Usage,
};
use serde_json::json;
use tower::{Layer, ServiceBuilder, ServiceExt};

fn scene(title: &str) {
    println!("\n== {title}");
}

/// Why the model stopped, as the wire names it (`end_turn`, `tool_use`, …).
fn stop_text(reason: Option<&StopReason>) -> String {
    let name = match reason {
        None => return "not given".to_owned(),
        Some(StopReason::EndTurn) => "end_turn",
        Some(StopReason::MaxTokens) => "max_tokens",
        Some(StopReason::StopSequence) => "stop_sequence",
        Some(StopReason::ToolUse) => "tool_use",
        Some(StopReason::ContentFilter) => "content_filter",
        Some(StopReason::Refusal) => "refusal",
        Some(StopReason::PauseTurn) => "pause_turn",
        Some(StopReason::Other(other)) => other,
        Some(other) => return format!("{other:?}"),
    };
    name.to_owned()
}

/// Token counts, or that none were reported.
fn usage_text(usage: Option<&Usage>) -> String {
    match usage {
        Some(u) => format!("{} in, {} out", u.input_tokens, u.output_tokens),
        None => "not reported".to_owned(),
    }
}

/// A duration the way people write it: `1s`, `1.5s`, `250ms`.
fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A number a server may leave out.
fn count_text(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn question() -> ChatRequest {
    ChatRequest::new("").message(Message::user("When is high tide in Brest?"))
}

/// Prints the text as it streams; returns the error that ended the stream.
async fn show(mut stream: ChatStream) -> Option<Error> {
    print!("   ");
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::TextDelta { text }) => {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            Ok(StreamEvent::Done { stop_reason }) => {
                println!("   [done, stop: {}]", stop_text(stop_reason.as_ref()));
            }
            Ok(_) => {}
            Err(e) => {
                println!();
                return Some(e);
            }
        }
    }
    None
}

fn outcome(result: Result<llm_tower::Completion, Error>) {
    match result {
        Ok(c) => println!("   ok: {:?}", c.text),
        Err(e) => {
            println!("   error class: {}", e.kind());
            println!("   retryable:   {}", e.is_retryable());
            if let Some(d) = e.retry_after() {
                println!("   retry after: {}", duration_text(d));
            }
            if let Some(p) = e.partial() {
                println!("   kept output: {:?}", p.text);
            }
            println!("   message:     {e}");
        }
    }
}

async fn complete(
    svc: impl tower::Service<ChatRequest, Response = ChatStream, Error = Error>,
) -> Result<llm_tower::Completion, Error> {
    svc.oneshot(question()).await?.completion().await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Retries are tracing events: show them.
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_max_level(tracing::Level::INFO)
        .init();
    let server = MockServer::start().await;
    println!("mock server on {}", server.url());
    let openai = OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("sk-demo")
        .model("gpt-4o-mini")
        .build()?;
    let anthropic = Anthropic::builder()
        .base_url(server.anthropic_url())
        .api_key("sk-ant-demo")
        .model("claude-sonnet-4-5")
        .build()?;

    scene("OpenAI, streaming: text arrives as it is generated");
    server.push(
        Reply::text([
            "High", " tide", " in", " Brest", " is", " at", " 06:12", ".",
        ])
        .delay(Duration::from_millis(40)),
    );
    if let Some(e) = show(openai.clone().oneshot(question()).await?).await {
        println!("   error: {e}");
    }

    scene("Anthropic, a tool call, streamed and not: the same Completion");
    let tide = Tool::new(
        "tide_table",
        "High and low water times",
        json!({"type": "object"}),
    );
    for stream in [true, false] {
        server.push(Reply::tool_call(
            "toolu_1",
            "tide_table",
            [r#"{"port": "#, r#""Brest", "#, r#""days": 1}"#],
        ));
        let c = anthropic
            .clone()
            .oneshot(question().tool(tide.clone()).stream(stream))
            .await?
            .completion()
            .await?;
        let call = &c.tool_calls[0];
        println!(
            "   {:<13} -> {}({}); stop: {}; usage: {}",
            if stream { "streamed" } else { "not streamed" },
            call.name,
            call.arguments,
            stop_text(c.stop_reason.as_ref()),
            usage_text(c.usage.as_ref())
        );
    }

    scene("A 429 with Retry-After: classified, with the wait the server asked for");
    server.push(
        Reply::api_error(429, "rate_limit_error", "Number of requests exceeded")
            .header("retry-after", "2"),
    );
    outcome(complete(anthropic.clone()).await);

    scene("A proxy's HTML 502 page instead of JSON: a server error, titled");
    server.push(Reply::body(
        502,
        "text/html",
        "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
    ));
    outcome(complete(openai.clone()).await);

    scene("Overloaded mid-stream, after output: the output is kept, not lost");
    server.push(Reply::text(["High", " tide", " is"]).error_event_after(
        2,
        "overloaded_error",
        "Overloaded",
    ));
    outcome(complete(anthropic.clone()).await);

    // The same provider behind the retry layer.
    let retrying = ServiceBuilder::new()
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(openai.clone());

    scene("Retry: a reset before any output is retried invisibly");
    server.push(Reply::text(["High", " tide"]).reset_after(0));
    server.push(Reply::text(["High", " tide", " at", " 06:12."]).delay(Duration::from_millis(40)));
    let before = server.request_count();
    let stream = retrying.clone().oneshot(question()).await?;
    let attempts = stream.meta().attempts;
    if let Some(e) = show(stream).await {
        println!("   error: {e}");
    }
    println!(
        "   attempts: {attempts}, requests seen by the server: {}",
        server.request_count() - before
    );

    scene("Retry: a reset after output is surfaced, never retried; the output is kept");
    server.push(Reply::text(["High", " tide", " is", " at"]).reset_after(3));
    server.push(Reply::text(["this", " would", " be", " a", " duplicate"]));
    let before = server.request_count();
    outcome(complete(retrying.clone()).await);
    println!(
        "   requests seen by the server: {}",
        server.request_count() - before
    );
    let _ = complete(openai.clone()).await; // the unused reply

    scene("Retry: a 429 with Retry-After: 1 is waited out");
    server.push(
        Reply::api_error(429, "rate_limit_exceeded", "Rate limit reached")
            .header("retry-after", "1"),
    );
    server.push(Reply::text(["High", " tide", " at", " 06:12."]));
    let started = std::time::Instant::now();
    let stream = retrying.clone().oneshot(question()).await?;
    let attempts = stream.meta().attempts;
    let c = stream.completion().await?;
    println!(
        "   ok after {:.1} s and {attempts} attempts: {:?}",
        started.elapsed().as_secs_f64(),
        c.text
    );

    scene("Refresh: a key that expires mid-run is replaced, the call retried once");
    server.accept_keys(["key-1"]);
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = fetched.clone();
    let refresh = RefreshLayer::new(move || {
        // Stands in for an OAuth refresh or a secrets manager.
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move { Ok::<_, std::io::Error>(Credential::bearer(format!("key-{n}"))) }
    });
    let managed = ServiceBuilder::new()
        .layer(refresh.clone())
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .service(openai.clone());
    let c = complete(managed.clone()).await?;
    println!(
        "   with key-1: {:?} (credentials fetched: {})",
        c.text,
        refresh.generation()
    );
    server.accept_keys(["key-2"]); // key-1 is revoked
    let stream = managed.clone().oneshot(question()).await?;
    let attempts = stream.meta().attempts;
    let c = stream.completion().await?;
    println!(
        "   key-1 refused, refreshed to key-{}: {:?} after {attempts} attempts",
        refresh.generation(),
        c.text
    );
    let keys: Vec<String> = server
        .requests()
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|r| {
            r.header("authorization")
                .unwrap_or("")
                .replace("Bearer ", "")
        })
        .collect();
    println!("   keys the server saw, in order: {}", keys.join(", "));
    server.accept_any_key();

    scene("Idle timeout: a stream that stalls before output is cut and retried");
    let guarded = ServiceBuilder::new()
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(StreamTimeoutLayer::new().idle(Duration::from_millis(300)))
        .service(openai.clone());
    server.push(Reply::text(["never", " sent"]).stall_after(0));
    server.push(Reply::text(["High", " tide", " at", " 06:12."]));
    let started = std::time::Instant::now();
    let stream = guarded.clone().oneshot(question()).await?;
    let attempts = stream.meta().attempts;
    let c = stream.completion().await?;
    println!(
        "   ok after {:.1} s and {attempts} attempts: {:?}",
        started.elapsed().as_secs_f64(),
        c.text
    );

    scene("Fallback: Anthropic overloaded, the call goes to OpenAI");
    let with_backup = ServiceBuilder::new()
        // Per-model defaults are a map_request away.
        .map_request(|mut req: ChatRequest| {
            req.max_tokens.get_or_insert(512);
            req
        })
        .layer(FallbackLayer::new(openai.clone()).when(|e| matches!(e, Error::Overloaded { .. })))
        .service(anthropic.clone());
    server.push(Reply::api_error(529, "overloaded_error", "Overloaded"));
    server.push(Reply::text([
        "High",
        " tide",
        " at",
        " 06:12",
        " (from",
        " the",
        " backup).",
    ]));
    let stream = with_backup.oneshot(question()).await?;
    let provider = stream.meta().provider;
    let c = stream.completion().await?;
    println!("   answered by {provider}: {:?}", c.text);
    let sent = server.requests();
    println!(
        "   max_tokens sent: {} (the default filled in)",
        sent[sent.len() - 1].json()["max_tokens"]
    );

    scene(
        "Rate limit: the server says none left for 1 s; the next call waits instead of taking a 429",
    );
    let paced = ServiceBuilder::new()
        .layer(RateLimitLayer::new().requests_per_minute(100))
        .service(openai.clone());
    server.push(
        Reply::text(["High", " tide", " at", " 06:12."])
            .header("x-ratelimit-limit-requests", "60")
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "1s"),
    );
    let stream = paced.clone().oneshot(question()).await?;
    if let Some(requests) = stream.meta().rate_limit.and_then(|r| r.requests) {
        println!(
            "   reported: {} of {} requests left, full again in {}",
            count_text(requests.remaining),
            count_text(requests.limit),
            requests.reset.map_or_else(|| "?".to_owned(), duration_text)
        );
    }
    stream.completion().await?;
    let started = std::time::Instant::now();
    let c = complete(paced).await?;
    println!(
        "   next call sent after {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        c.text
    );

    scene("A pool of three deployments: the overloaded one is taken out, the slow one is hedged");
    let deployments = [
        (
            "east",
            Reply::api_error(529, "overloaded_error", "Overloaded"),
        ),
        (
            "west",
            Reply::text(["High", " tide", " at", " 06:12", " (west)."])
                .delay(Duration::from_millis(700)),
        ),
        (
            "north",
            Reply::text(["High", " tide", " at", " 06:12", " (north)."])
                .delay(Duration::from_millis(10)),
        ),
    ];
    let mut pool = Pool::builder()
        // One failure takes a deployment out, for the demo's sake.
        .failures(1, Duration::from_secs(60))
        .cooldown(Duration::from_secs(30))
        .hedge_after(Duration::from_millis(200))
        .hedge_budget(1.0);
    let mut servers = Vec::new();
    for (name, reply) in deployments {
        let deployment = MockServer::start().await;
        deployment.set_default(reply);
        pool = pool.deployment(
            name,
            OpenAi::builder()
                .base_url(deployment.openai_url())
                .api_key("sk-demo")
                .model("gpt-4o-mini")
                .build()?,
        );
        servers.push(deployment);
    }
    let pool = pool.build()?;
    let svc = TransportRetryLayer::new(RetryPolicy::default()).layer(pool.clone());
    for call in 1..=8 {
        let started = std::time::Instant::now();
        let stream = svc.clone().oneshot(question()).await?;
        let (deployment, attempts) = (stream.meta().deployment.clone(), stream.meta().attempts);
        let first_output = started.elapsed();
        let c = stream.completion().await?;
        println!(
            "   call {call}: {:?} from {} after {attempts} attempt(s), first output in {} ms",
            c.text,
            deployment.as_deref().unwrap_or("?"),
            first_output.as_millis()
        );
    }
    for d in pool.status() {
        println!(
            "   {}: {}, {} open streams",
            d.name,
            match d.health {
                llm_tower::pool::Health::InService => "in service".to_owned(),
                llm_tower::pool::Health::CoolingDown { until } => format!(
                    "cooling down for {} s more",
                    until
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_secs()
                ),
                other => format!("{other:?}"),
            },
            d.open_streams
        );
    }
    println!(
        "   {} hedges; east saw {} requests",
        pool.hedges(),
        servers[0].request_count()
    );

    scene("A 10 MB line: refused at the size limit, never buffered whole");
    server
        .push(Reply::sse([format!("data: {}\n\n", "x".repeat(10_000_000))]).chunk_size(256 * 1024));
    outcome(complete(openai.clone()).await);

    println!("\nthe mock server saw {} requests", server.request_count());
    Ok(())
}
