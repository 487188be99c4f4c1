//! Resident memory per open, idle stream: llm-tower (bare provider and the
//! recommended stack) against plain reqwest, each holding the same number of
//! streams open against the mock server.
//!
//! ```text
//! cargo run --release --example stream_memory [-- --streams 10000]
//! ```
//!
//! Each client runs in a process of its own (the mock server in another), so
//! one's allocations cannot hide in another's freed memory. A client builds
//! its service, makes one warm-up call, reads its resident set size, opens
//! the streams (each reads its first text delta, then the server goes
//! silent), and reads its resident set size again. Linux only (it reads
//! `/proc/self/statm`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{
    ChatRequest, ChatStream, Credential, Error, Message, OpenAi, RefreshLayer, RetryPolicy,
    StreamConcurrencyLimitLayer, StreamEvent, StreamTimeoutLayer, TransportRetryLayer,
};
use tower::ServiceExt;
use tower::util::BoxCloneService;

/// How many streams open at once while the set is being built.
const OPENING: usize = 256;
/// The longest a client may take; the measurement is bounded in time.
const LIMIT: Duration = Duration::from_secs(180);

type Service = BoxCloneService<ChatRequest, ChatStream, Error>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let streams: usize = match arg("--streams").map(|n| n.parse()) {
        None => 10_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: stream_memory [--streams N]");
            std::process::exit(2);
        }
    };
    if args.first().map(String::as_str) == Some("--serve") {
        serve();
    } else if let Some(mode) = arg("--client") {
        let url = arg("--url").unwrap_or_default();
        client(&mode, &url, streams);
    } else {
        coordinate(streams);
    }
}

/// Runs the server and each client in processes of their own; prints the table.
fn coordinate(streams: usize) {
    let exe = std::env::current_exe().expect("the path of this program");
    let mut server = Command::new(&exe)
        .arg("--serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the mock server");
    let mut url = String::new();
    let stdout = server.stdout.take().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut url)
        .expect("the server's address");
    let url = url.trim().to_owned();

    println!("{streams} idle streams, resident bytes per stream (client process):");
    let mut baseline = None;
    for mode in ["reqwest", "bare", "stack"] {
        let out = Command::new(&exe)
            .args(["--client", mode, "--url", &url, "--streams"])
            .arg(streams.to_string())
            .output()
            .expect("run a client");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(per_stream) = text
            .lines()
            .find_map(|l| l.strip_prefix("per-stream "))
            .and_then(|v| v.trim().parse::<f64>().ok())
        else {
            eprintln!(
                "{mode}: failed\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stop(&mut server);
            std::process::exit(1);
        };
        let above = baseline.map_or(String::new(), |b: f64| {
            format!("  ({:+.0} bytes above reqwest)", per_stream - b)
        });
        println!("  {mode:<8} {per_stream:>8.0}{above}");
        baseline.get_or_insert(per_stream);
    }
    stop(&mut server);
}

fn stop(server: &mut std::process::Child) {
    let _ = server.kill();
    let _ = server.wait();
}

/// The mock server: every answer sends its first delta and then goes silent.
fn serve() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let server = MockServer::start().await;
        server.set_default(Reply::text(["hello", " never sent"]).stall_after(1));
        println!("{}", server.openai_url());
        // Until the coordinator kills it.
        std::future::pending::<()>().await;
    });
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// One kind of client; holds `streams` idle streams and reports the growth.
fn client(mode: &str, url: &str, streams: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let work = async {
        match mode {
            "reqwest" => {
                let client = reqwest::Client::new();
                let open = |client: reqwest::Client| {
                    let url = format!("{url}/chat/completions");
                    async move {
                        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
                        let mut resp = client
                            .post(url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                            .map_err(|e| e.to_string())?;
                        resp.chunk().await.map_err(|e| e.to_string())?;
                        Ok::<_, String>(resp)
                    }
                };
                measure(streams, move || open(client.clone())).await
            }
            "bare" | "stack" => {
                let provider = OpenAi::builder()
                    .base_url(url)
                    .model("m")
                    .build()
                    .map_err(|e| e.to_string())?;
                let service: Service = if mode == "bare" {
                    BoxCloneService::new(provider)
                } else {
                    stack(provider, streams)
                };
                let open = move |service: Service| async move {
                    let request = ChatRequest::new("").message(Message::user("hi"));
                    let mut stream = service.oneshot(request).await.map_err(|e| e.to_string())?;
                    while let Some(event) = stream.next().await {
                        if let StreamEvent::TextDelta { .. } = event.map_err(|e| e.to_string())? {
                            return Ok(stream);
                        }
                    }
                    Err("the stream ended".to_owned())
                };
                measure(streams, move || open(service.clone())).await
            }
            other => Err(format!("unknown client {other}")),
        }
    };
    let result = rt.block_on(async { tokio::time::timeout(LIMIT, work).await });
    match result {
        Ok(Ok(per_stream)) => println!("per-stream {per_stream:.1}"),
        Ok(Err(e)) => {
            eprintln!("{mode}: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("{mode}: not done within {LIMIT:?}");
            std::process::exit(1);
        }
    }
}

/// The recommended stack (README, "Stacking layers"), without the tracing
/// layer (no subscriber here: it would not wrap) and the fallback (idle).
fn stack(provider: OpenAi, streams: usize) -> Service {
    async fn token() -> Result<Credential, std::io::Error> {
        Ok(Credential::bearer("sk-memory"))
    }
    let stack = tower::ServiceBuilder::new()
        .layer(StreamTimeoutLayer::new().total(Duration::from_secs(600)))
        .layer(RefreshLayer::new(token).initial(Credential::bearer("sk-memory")))
        .layer(TransportRetryLayer::new(RetryPolicy::default()))
        .layer(
            StreamTimeoutLayer::new()
                .first_event(Duration::from_secs(30))
                .idle(Duration::from_secs(300)),
        )
        .layer(StreamConcurrencyLimitLayer::new(streams))
        .service(provider);
    BoxCloneService::new(stack)
}

/// Opens one stream (after a warm-up one), notes the resident set, opens
/// `streams` more and holds them; returns the growth per stream.
async fn measure<T, F, Fut>(streams: usize, open: F) -> Result<f64, String>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let warm = open().await?;
    drop(warm);
    let before = resident_bytes();
    let mut held = Vec::with_capacity(streams);
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..streams {
        if opening.len() == OPENING
            && let Some(done) = opening.join_next().await
        {
            held.push(done.map_err(|e| e.to_string())??);
        }
        opening.spawn(open());
    }
    while let Some(done) = opening.join_next().await {
        held.push(done.map_err(|e| e.to_string())??);
    }
    let after = resident_bytes();
    let per_stream = after.saturating_sub(before) as f64 / held.len() as f64;
    drop(held);
    Ok(per_stream)
}
