//! The README stack against the bare provider and against `async-openai`,
//! over loopback, with the mock server in another process: what a user who
//! compares clients would measure.
//!
//! The server is this program run again as a child process (on one worker
//! thread), so the CPU time counted here is the clients' alone. The
//! clients share one single-threaded runtime. For each workload, rounds
//! alternate the clients, in a rotating order, and each round gives each
//! client the same work; the figures are medians over the rounds, and the
//! ratios to the bare provider are medians of per-round ratios, which a
//! drifting machine moves far less than it moves the absolute figures.
//!
//! - **short**: a non-streaming call answered "Hello there.", one at a
//!   time and 32 at once: calls per second and client CPU per call;
//! - **stream**: a streamed answer of 1,000 text deltas, one at a time and
//!   32 at once: events per second and client CPU per event.
//!
//! `cargo bench --bench peers` (under a minute). Under `cargo test
//! --benches` it makes one short pass, to show it runs. For finding where
//! the cost is: `PEERS_LAYERS=1` compares each layer of the stack alone
//! over the bare provider; `PEERS_WORKLOAD=short/1` (or `short/32`,
//! `stream/1`, `stream/32`) runs one workload; `PEERS_CLIENT=bare` (or
//! `README stack`, `async-openai`) one client, to run under `perf`;
//! `PEERS_ROUNDS=100` runs more rounds than the 30 of the default, for
//! differences of a microsecond or two.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{ChatRequest, Message, OpenAi};
use tower::ServiceExt;

use common::{Boxed, full_stack};

/// Set in the child process: serve, do not measure.
const SERVE: &str = "LLM_TOWER_PEERS_SERVE";

/// Text deltas in a long answer.
const DELTAS: usize = 1000;

/// The model that asks for the long answer; any other gets the short one.
const LONG: &str = "long";
const SHORT: &str = "short";

fn main() {
    if std::env::var_os(SERVE).is_some() {
        serve();
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut server = Server::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut clients = rt.block_on(async { clients(&server.url) });
    // `PEERS_CLIENT=bare`, say: that client only, for a profiler.
    if let Ok(only) = std::env::var("PEERS_CLIENT") {
        clients.retain(|(name, _)| *name == only);
    }
    let workloads = [
        Workload::short(1, if quick { 2 } else { 200 }),
        Workload::short(32, if quick { 1 } else { 10 }),
        Workload::stream(1, if quick { 1 } else { 4 }),
        Workload::stream(32, 1),
    ];
    let rounds = if quick {
        2
    } else {
        std::env::var("PEERS_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(30)
    };
    // `PEERS_WORKLOAD=short/1`, say: that workload only.
    let only = std::env::var("PEERS_WORKLOAD").ok();
    for workload in workloads {
        let name = format!("{}/{}", workload.name, workload.concurrency);
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        measure(&rt, &clients, &workload, rounds);
    }
    server.stop();
}

/// The child process: a mock server on one worker thread, its URL on
/// stdout, until stdin closes (the parent ended, however it ended).
fn serve() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = MockServer::start().await;
        let deltas: Vec<String> = (0..DELTAS).map(|i| format!(" word{i}")).collect();
        server.respond_with(move |req| match req.json()["model"].as_str() {
            Some(LONG) => Reply::text(deltas.clone()),
            _ => Reply::text(["Hello there."]),
        });
        println!("{}", server.openai_url());
        std::io::stdout().flush().expect("stdout");
        // Blocks this worker-less thread only; the server runs on the
        // runtime's worker.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    });
}

/// The server process, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Server {
        let exe = std::env::current_exe().expect("this program's path");
        let mut child = Command::new(exe)
            .env(SERVE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server process");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut url = String::new();
        BufReader::new(stdout)
            .read_line(&mut url)
            .expect("the server's URL");
        let url = url.trim().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "server said {url:?}");
        Server { child, url }
    }

    fn stop(&mut self) {
        // Closing its stdin ends it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.stdin.is_some() {
            let _ = self.child.kill();
            self.stop();
        }
    }
}

/// One way of making a call; each reads the whole answer and returns the
/// text deltas it saw.
#[derive(Clone)]
enum Client {
    Tower(Boxed),
    AsyncOpenAi(async_openai::Client<OpenAIConfig>),
}

fn clients(url: &str) -> Vec<(&'static str, Client)> {
    let provider = OpenAi::builder()
        .base_url(url)
        .api_key("sk-bench")
        .build()
        .expect("valid configuration");
    if std::env::var_os("PEERS_LAYERS").is_some() {
        return each_layer(provider);
    }
    let config = OpenAIConfig::new()
        .with_api_base(url)
        .with_api_key("sk-bench");
    vec![
        ("bare", Client::Tower(Boxed::new(provider.clone()))),
        ("README stack", Client::Tower(full_stack(provider, 64))),
        (
            "async-openai",
            Client::AsyncOpenAi(async_openai::Client::with_config(config)),
        ),
    ]
}

/// `PEERS_LAYERS=1`: the bare provider and each layer of the README stack
/// alone over it, to find which one costs what.
fn each_layer(p: OpenAi) -> Vec<(&'static str, Client)> {
    std::iter::once(("bare", Boxed::new(p.clone())))
        .chain(common::each_layer(p))
        .map(|(name, svc)| (name, Client::Tower(svc)))
        .collect()
}

impl Client {
    async fn call(self, long: bool) -> usize {
        let model = if long { LONG } else { SHORT };
        match self {
            Client::Tower(svc) => {
                let req = ChatRequest::new(model)
                    .message(Message::user("Say hello."))
                    .stream(long);
                let mut stream = svc.oneshot(req).await.expect("call failed");
                let mut deltas = 0;
                while let Some(event) = stream.next().await {
                    if let llm_tower::StreamEvent::TextDelta { .. } = event.expect("stream failed")
                    {
                        deltas += 1;
                    }
                }
                deltas
            }
            Client::AsyncOpenAi(client) => {
                let req = openai_request(model);
                if long {
                    let mut stream = client.chat().create_stream(req).await.expect("call failed");
                    let mut deltas = 0;
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.expect("stream failed");
                        deltas += chunk
                            .choices
                            .iter()
                            // The opening chunk carries the role and "".
                            .filter(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()))
                            .count();
                    }
                    deltas
                } else {
                    let answer = client.chat().create(req).await.expect("call failed");
                    answer
                        .choices
                        .iter()
                        .filter(|c| c.message.content.is_some())
                        .count()
                }
            }
        }
    }
}

fn openai_request(model: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessage::from("Say hello.").into()])
        .build()
        .expect("a valid request")
}

/// What one round gives each client to do.
struct Workload {
    name: &'static str,
    long: bool,
    concurrency: usize,
    /// Batches of `concurrency` calls per round.
    batches: usize,
    /// Text deltas each call must see.
    deltas: usize,
}

impl Workload {
    fn short(concurrency: usize, batches: usize) -> Workload {
        Workload {
            name: "short",
            long: false,
            concurrency,
            batches,
            deltas: 1,
        }
    }

    fn stream(concurrency: usize, batches: usize) -> Workload {
        Workload {
            name: "stream",
            long: true,
            concurrency,
            batches,
            deltas: DELTAS,
        }
    }

    /// Calls, or events for a stream, in one round.
    fn units(&self) -> f64 {
        let calls = (self.concurrency * self.batches) as f64;
        if self.long {
            calls * self.deltas as f64
        } else {
            calls
        }
    }

    fn unit(&self) -> &'static str {
        if self.long { "event" } else { "call" }
    }
}

/// Runs one client's share of a round: wall time and this process's CPU
/// time.
fn run(rt: &tokio::runtime::Runtime, client: &Client, w: &Workload) -> (Duration, Duration) {
    let cpu0 = cpu_time();
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..w.batches {
            let calls: Vec<_> = (0..w.concurrency)
                .map(|_| tokio::spawn(client.clone().call(w.long)))
                .collect();
            for call in calls {
                let seen = call.await.expect("task");
                assert_eq!(seen, w.deltas, "text deltas in one answer");
            }
        }
    });
    (started.elapsed(), cpu_time().saturating_sub(cpu0))
}

fn measure(rt: &tokio::runtime::Runtime, clients: &[(&str, Client)], w: &Workload, rounds: usize) {
    // Warm up: connections, lazy statics, the allocator's pools.
    for (_, client) in clients {
        run(rt, client, w);
    }
    let n = clients.len();
    let mut rates = vec![Vec::with_capacity(rounds); n];
    let mut cpus = vec![Vec::with_capacity(rounds); n];
    // User and kernel CPU time, summed over the rounds.
    let mut split = vec![(Duration::ZERO, Duration::ZERO); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let (u0, s0) = user_and_system();
            let (wall, cpu) = run(rt, &clients[i].1, w);
            let (u1, s1) = user_and_system();
            split[i].0 += u1.saturating_sub(u0);
            split[i].1 += s1.saturating_sub(s0);
            rates[i].push(w.units() / wall.as_secs_f64());
            cpus[i].push(cpu.as_secs_f64() * 1e9 / w.units());
        }
    }
    let per_round = |i: usize, f: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
        (0..rounds).map(|r| f(i, r)).collect()
    };
    println!(
        "peers/{}/{}: {} round(s) of {} {}s each",
        w.name,
        w.concurrency,
        rounds,
        w.units(),
        w.unit()
    );
    for (i, (name, _)) in clients.iter().enumerate() {
        let rate_ratio = median(per_round(i, &|i, r| rates[i][r] / rates[0][r]));
        let cpu_extra = median(per_round(i, &|i, r| cpus[i][r] - cpus[0][r]));
        let cpu_ratio = median(per_round(i, &|i, r| cpus[i][r] / cpus[0][r]));
        let per_unit = |d: Duration| d.as_secs_f64() * 1e9 / (w.units() * rounds as f64);
        println!(
            "  {name:<30} {:>10.0} {}s/s  {:>8.0} ns CPU/{} (user {:.0}, kernel {:.0})   vs bare: {:.3}x {}s/s, CPU {:+.0} ns/{} ({:.3}x)",
            median(rates[i].clone()),
            w.unit(),
            median(cpus[i].clone()),
            w.unit(),
            per_unit(split[i].0),
            per_unit(split[i].1),
            rate_ratio,
            w.unit(),
            cpu_extra,
            w.unit(),
            cpu_ratio,
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// CPU time of this process, all threads.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This process's CPU time in user space and in the kernel.
fn user_and_system() -> (Duration, Duration) {
    // SAFETY: all-zero is a valid `rusage`, which the call then fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let d = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (d(usage.ru_utime), d(usage.ru_stime))
}
