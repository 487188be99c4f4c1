//! An open-loop load generator for OpenAI-compatible chat endpoints: the
//! one `benches/gateway_vs_litellm.sh` drives the mock server, the gateway
//! example and LiteLLM's proxy with, so all three meet the same load.
//!
//! ```text
//! cargo bench --bench gateway_load -- --url URL [--key K] [--model M]
//!     --rate R [--duration SECS] [--stream]
//! ```
//!
//! Requests start on a fixed schedule (`R` per second, for `SECS`),
//! whether or not earlier ones have answered — open loop, so a slow server
//! meets the load it would meet in production instead of slowing the
//! client down with it. Each request's times count from when it was *due*,
//! not from when it was sent, so a client that fell behind cannot hide a
//! queue. Prints one JSON line: requests, failures (a status other than
//! 200, a broken or truncated answer, a stream without `[DONE]`, no answer
//! within 30 s, or more than `--max-in-flight` requests open), and the p50
//! and p99 of the time to the first byte of the body and to its end, in
//! milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// The chat completions URL.
    #[arg(long)]
    url: String,
    /// Sent as `Authorization: Bearer K`.
    #[arg(long, default_value = "sk-load")]
    key: String,
    #[arg(long, default_value = "gpt")]
    model: String,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Ask for a stream (and expect `data: [DONE]` at its end).
    #[arg(long)]
    stream: bool,
    /// Requests open at once beyond which a due request counts as failed
    /// without being sent: the server is not keeping up.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One request's outcome: (time to first byte, time to the end), from when
/// it was due; `None` for a failure.
type Outcome = Option<(Duration, Duration)>;

async fn one(client: &reqwest::Client, args: &Args, body: &str, due: Instant) -> Outcome {
    let response = client
        .post(&args.url)
        .bearer_auth(&args.key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let mut body = response.bytes_stream();
    let mut first = None;
    let mut tail: Vec<u8> = Vec::new();
    let mut len = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        first.get_or_insert_with(|| due.elapsed());
        len += chunk.len();
        tail.extend_from_slice(&chunk);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    let total = due.elapsed();
    let complete = if args.stream {
        tail.windows(12).any(|w| w == b"data: [DONE]")
    } else {
        len > 0 && tail.last() == Some(&b'}')
    };
    complete.then_some((first?, total))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    if !(args.rate > 0.0 && args.rate.is_finite() && args.duration > 0.0) {
        eprintln!("--rate and --duration must be above 0");
        std::process::exit(2);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(usize::MAX)
        .no_proxy()
        .build()
        .expect("a client");
    let body = Arc::new(
        serde_json::json!({
            "model": args.model,
            "stream": args.stream,
            "messages": [{"role": "user", "content": "Say hello"}],
        })
        .to_string(),
    );
    let count = (args.rate * args.duration).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(count);
    let mut overrun = 0;
    for i in 0..count {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            overrun += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, args, body, in_flight) = (
            client.clone(),
            args.clone(),
            body.clone(),
            in_flight.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = one(&client, &args, &body, due).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            outcome
        }));
    }
    let sent_for = start.elapsed();
    let mut ttfb = Vec::with_capacity(count);
    let mut total = Vec::with_capacity(count);
    let mut failed = overrun;
    for task in tasks {
        match task.await.ok().flatten() {
            Some((first, end)) => {
                ttfb.push(first);
                total.push(end);
            }
            None => failed += 1,
        }
    }
    let elapsed = start.elapsed();
    ttfb.sort();
    total.sort();
    println!(
        "{}",
        serde_json::json!({
            "url": args.url,
            "stream": args.stream,
            "rate": args.rate,
            "requests": count,
            "failed": failed,
            "overrun": overrun,
            "sent_for_s": sent_for.as_secs_f64(),
            "elapsed_s": elapsed.as_secs_f64(),
            "ttfb_p50_ms": percentile(&ttfb, 50.0),
            "ttfb_p99_ms": percentile(&ttfb, 99.0),
            "total_p50_ms": percentile(&total, 50.0),
            "total_p99_ms": percentile(&total, 99.0),
        })
    );
}
