//! State shared across processes on Redis, against a real `redis-server`
//! each test starts itself (from `PATH`, on a free port, no persistence)
//! and stops.
//!
//! Its own harness: where no `redis-server` is on `PATH`, every test is
//! reported as ignored, never as passed. The same binary is the worker
//! the multi-process tests spawn: with `LLM_TOWER_WORKER` set, `main` runs
//! one worker and exits.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use llm_tower::mock::{MockServer, Reply};
use llm_tower::redis::{CredentialKey, OnOutage, RedisStore, StoreError};
use llm_tower::{
    ChatRequest, Credential, Deadline, Error, Message, OpenAi, Pool, RateLimitLayer, RefreshLayer,
};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use redis_server::RedisServer;

/// The longest any worker may run before the test gives up on it.
const KILL_AFTER: Duration = Duration::from_secs(60);

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn main() {
    if let Ok(mode) = std::env::var("LLM_TOWER_WORKER") {
        worker::run(&mode);
        return;
    }
    let args = Arguments::from_args();
    let missing = redis_server::which("redis-server").is_none();
    let tests: [(&str, Test); 13] = [
        (
            "processes_share_one_request_budget",
            processes_share_one_request_budget,
        ),
        (
            "processes_share_one_token_budget",
            processes_share_one_token_budget,
        ),
        (
            "a_report_one_process_sees_holds_back_another",
            a_report_one_process_sees_holds_back_another,
        ),
        (
            "one_refresh_across_processes_and_never_in_the_clear",
            one_refresh_across_processes_and_never_in_the_clear,
        ),
        (
            "a_refresher_that_dies_loses_its_lease",
            a_refresher_that_dies_loses_its_lease,
        ),
        (
            "redis_stopped_mid_run_local_books_then_shared_again",
            redis_stopped_mid_run_local_books_then_shared_again,
        ),
        (
            "redis_answering_slowly_is_cut_at_the_step_budget",
            redis_answering_slowly_is_cut_at_the_step_budget,
        ),
        (
            "fail_closed_refuses_with_a_typed_error",
            fail_closed_refuses_with_a_typed_error,
        ),
        ("pools_share_cooldowns", pools_share_cooldowns),
        (
            "a_429_in_one_process_pauses_the_others",
            a_429_in_one_process_pauses_the_others,
        ),
        (
            "a_call_dropped_while_booking_gives_its_slot_back",
            a_call_dropped_while_booking_gives_its_slot_back,
        ),
        (
            "a_failed_refresh_frees_the_lock_at_once",
            a_failed_refresh_frees_the_lock_at_once,
        ),
        (
            "shared_books_decide_as_local_books_do",
            shared_books_decide_as_local_books_do,
        ),
    ];
    let mut trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, test)| Trial::test(name, test).with_ignored_flag(missing))
        .collect();
    // What needs no server runs everywhere.
    trials.push(Trial::test(
        "the_store_never_shows_its_password",
        the_store_never_shows_its_password,
    ));
    if missing {
        eprintln!("redis-server not found on PATH: the Redis tests are reported as ignored");
    }
    libtest_mimic::run(&args, trials).exit();
}

/// A test of this file.
type Test = fn() -> Result<(), Failed>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn check(condition: bool, message: impl Into<String>) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

/// A worker process: this binary with `mode` and `env`.
fn spawn_worker(mode: &str, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("this binary"));
    command
        .env("LLM_TOWER_WORKER", mode)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("a worker starts")
}

/// Waits for a worker (killing it past [`KILL_AFTER`]) and reads the JSON
/// line it printed.
fn report(mut child: Child) -> Value {
    let started = Instant::now();
    loop {
        match child.try_wait().expect("the worker's status") {
            Some(status) => {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
                }
                assert!(status.success(), "worker failed: {status}; printed {out}");
                return serde_json::from_str(out.trim()).expect("the worker's report");
            }
            None if started.elapsed() > KILL_AFTER => {
                let _ = child.kill();
                panic!("a worker still ran after {KILL_AFTER:?}: killed");
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `workers` budget workers against `upstream`, with Redis at `redis`
/// (or local books), and returns their reports.
fn run_budget(
    workers: usize,
    upstream: String,
    redis: Option<String>,
    env: &[(&str, String)],
) -> Vec<Value> {
    let namespace = unique("budget");
    let children: Vec<Child> = (0..workers)
        .map(|_| {
            let mut all: Vec<(&str, String)> = vec![
                ("UPSTREAM", upstream.clone()),
                ("NAMESPACE", namespace.clone()),
            ];
            if let Some(r) = &redis {
                all.push(("REDIS", r.clone()));
            }
            all.extend(env.iter().cloned());
            spawn_worker("budget", &all)
        })
        .collect();
    children.into_iter().map(report).collect()
}

/// [`run_budget`] off the runtime's thread (the workers are waited for
/// with blocking calls), against `upstream` and `redis` (or local books).
async fn budget_run(
    upstream: &MockServer,
    redis: Option<&RedisServer>,
    env: &[(&'static str, String)],
) -> Vec<Value> {
    let (upstream, redis, env) = (
        upstream.openai_url(),
        redis.map(RedisServer::url),
        env.to_vec(),
    );
    tokio::task::spawn_blocking(move || run_budget(4, upstream, redis, &env))
        .await
        .expect("the workers ran")
}

fn total(reports: &[Value], field: &str) -> u64 {
    reports.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

fn processes_share_one_request_budget() -> Result<(), Failed> {
    runtime().block_on(async {
        let redis = RedisServer::start();
        // A provider that refuses the 41st request in any minute.
        let upstream = MockServer::start().await;
        upstream.limit_requests(40);
        let env = [
            ("RPM", "40".to_owned()),
            ("CALLS", "50".to_owned()),
            ("DEADLINE_MS", "3000".to_owned()),
        ];
        let reports = budget_run(&upstream, Some(&redis), &env).await;
        check(
            upstream.request_count() == 40 && upstream.rate_limited_count() == 0,
            format!(
                "with Redis: the server saw {} requests and refused {} (reports {reports:?})",
                upstream.request_count(),
                upstream.rate_limited_count()
            ),
        )?;
        check(
            total(&reports, "ok") == 40,
            format!("40 answered: {reports:?}"),
        )?;
        check(
            total(&reports, "refused_locally") == 160,
            format!("the rest refused here, before their deadline: {reports:?}"),
        )?;

        // The same run with each process on its own books overshoots.
        let upstream = MockServer::start().await;
        upstream.limit_requests(40);
        let _ = budget_run(&upstream, None, &env).await;
        check(
            upstream.request_count() == 160 && upstream.rate_limited_count() == 120,
            format!(
                "without Redis: {} requests, {} refused by the server",
                upstream.request_count(),
                upstream.rate_limited_count()
            ),
        )
    })
}

fn processes_share_one_token_budget() -> Result<(), Failed> {
    runtime().block_on(async {
        let redis = RedisServer::start();
        // "hi" with max_tokens 240: 4 + 1 input tokens by the estimate, and
        // 240 output, 245 in all. Four fit in 1,000 tokens a minute. The
        // server reports what was booked as used (12 input tokens, 233
        // output), so that the corrections change nothing.
        let upstream = MockServer::start().await;
        upstream.set_default(Reply::text(vec!["x"; 233]));
        let env = [
            ("TPM", "1000".to_owned()),
            ("MAX_TOKENS", "240".to_owned()),
            ("CALLS", "10".to_owned()),
            ("DEADLINE_MS", "3000".to_owned()),
        ];
        let reports = budget_run(&upstream, Some(&redis), &env).await;
        check(
            upstream.request_count() == 4,
            format!(
                "with Redis: {} requests of 245 tokens in a minute for 1,000 ({reports:?})",
                upstream.request_count()
            ),
        )?;
        let upstream = MockServer::start().await;
        upstream.set_default(Reply::text(vec!["x"; 233]));
        let _ = budget_run(&upstream, None, &env).await;
        check(
            upstream.request_count() == 16,
            format!(
                "without Redis each process spends the budget: {} requests",
                upstream.request_count()
            ),
        )
    })
}

fn a_report_one_process_sees_holds_back_another() -> Result<(), Failed> {
    runtime().block_on(async {
        let redis = RedisServer::start();
        let upstream = MockServer::start().await;
        upstream.push(
            Reply::text(["ok"])
                .header("x-ratelimit-limit-requests", "100")
                .header("x-ratelimit-remaining-requests", "0")
                .header("x-ratelimit-reset-requests", "2s"),
        );
        let namespace = unique("report");
        let env = |calls: &str| {
            vec![
                ("UPSTREAM", upstream.openai_url()),
                ("NAMESPACE", namespace.clone()),
                ("REDIS", redis.url()),
                ("CALLS", calls.to_owned()),
            ]
        };
        let first = env("1");
        let second = env("1");
        let (a, b) = tokio::task::spawn_blocking(move || {
            let a = report(spawn_worker("budget", &first));
            let b = report(spawn_worker("budget", &second));
            (a, b)
        })
        .await
        .unwrap();
        check(
            a["ok"] == 1 && b["ok"] == 1,
            format!("both answered: {a} {b}"),
        )?;
        let waited = b["slowest_ms"].as_u64().unwrap_or(0);
        check(
            (1500..4000).contains(&waited),
            format!("the second process's call waited for the reset the first saw: {waited} ms"),
        )
    })
}

fn credential_env(
    redis: &RedisServer,
    upstream: &MockServer,
    name: &str,
    log: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("UPSTREAM", upstream.openai_url()),
        ("REDIS", redis.url()),
        ("CREDENTIAL", name.to_owned()),
        ("SOURCE_LOG", log.display().to_string()),
        ("KEY", KEY_HEX.to_owned()),
    ]
}

fn source_calls(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |s| s.lines().count())
}

fn one_refresh_across_processes_and_never_in_the_clear() -> Result<(), Failed> {
    runtime().block_on(async {
        let redis = RedisServer::start();
        let upstream = MockServer::start().await;
        upstream.accept_keys(["fresh-token"]);
        let name = unique("cred");
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let mut env = credential_env(&redis, &upstream, &name, &log);
        env.push(("SOURCE_DELAY_MS", "300".to_owned()));
        let reports = tokio::task::spawn_blocking(move || {
            let children: Vec<Child> = (0..4).map(|_| spawn_worker("credential", &env)).collect();
            children.into_iter().map(report).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        check(
            total(&reports, "ok") == 4,
            format!("every call answered: {reports:?}"),
        )?;
        check(
            source_calls(&log) == 1,
            format!("the source was called {} times", source_calls(&log)),
        )?;
        // The value on Redis, read back raw: sealed, not the secret.
        let mut c = redis.client().await;
        let key = format!("llm-tower-test:cred:{{{name}}}");
        let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        check(!fields.is_empty(), "the credential is on Redis")?;
        for (field, value) in &fields {
            let text = String::from_utf8_lossy(value);
            check(
                !text.contains("fresh-token") && !text.contains("stale-token"),
                format!("{field} holds the secret in the clear"),
            )?;
        }
        let _ = std::fs::remove_file(&log);
        Ok(())
    })
}

fn a_refresher_that_dies_loses_its_lease() -> Result<(), Failed> {
    runtime().block_on(async {
        let redis = RedisServer::start();
        let upstream = MockServer::start().await;
        upstream.accept_keys(["fresh-token"]);
        let name = unique("lease");
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let env = credential_env(&redis, &upstream, &name, &log);
        let (b, elapsed) = tokio::task::spawn_blocking({
            let log = log.clone();
            move || {
                let mut stuck = env.clone();
                stuck.push(("SOURCE_DELAY_MS", "60000".to_owned()));
                stuck.push(("LEASE_MS", "1000".to_owned()));
                let mut a = spawn_worker("credential", &stuck);
                let started = Instant::now();
                while source_calls(&log) == 0 {
                    assert!(started.elapsed() < KILL_AFTER, "the first refresh began");
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Killed in the middle of its refresh, holding the lock.
                a.kill().unwrap();
                a.wait().unwrap();
                let started = Instant::now();
                let b = report(spawn_worker("credential", &env));
                (b, started.elapsed())
            }
        })
        .await
        .unwrap();
        check(b["ok"] == 1, format!("the next process refreshed: {b}"))?;
        check(
            source_calls(&log) == 2,
            format!("the source was called {} times", source_calls(&log)),
        )?;
        check(
            elapsed < Duration::from_secs(10),
            format!("within the lease: {elapsed:?}"),
        )?;
        let _ = std::fs::remove_file(&log);
        Ok(())
    })
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A call through `service`, and how long it took.
async fn timed<S>(service: &S) -> (Result<String, Error>, Duration)
where
    S: tower::Service<ChatRequest, Response = llm_tower::ChatStream, Error = Error> + Clone,
{
    let started = Instant::now();
    let result = async {
        let stream = service
            .clone()
            .oneshot(ChatRequest::new("m").message(Message::user("hi")))
            .await?;
        Ok(stream.completion().await?.text)
    }
    .await;
    (result, started.elapsed())
}

/// The requests the shared books of `namespace` (model `m`) hold, read
/// back from Redis: the books keep what each granule of time spent.
async fn entries_on_redis(redis: &RedisServer, namespace: &str) -> usize {
    let mut c = redis.client().await;
    let key = format!("llm-tower-test:rl1:{{{namespace}|m}}:spent");
    redis::Script::new(
        "local n = 0 \
         for _, v in ipairs(redis.call('HVALS', KEYS[1])) do n = n + cmsgpack.unpack(v)[1] end \
         return n",
    )
    .key(key)
    .invoke_async(&mut c)
    .await
    .unwrap_or(0)
}

/// A store on the test's server, under the tests' prefix.
fn store_at(redis: &RedisServer) -> RedisStore {
    RedisStore::builder(redis.url())
        .prefix("llm-tower-test")
        .build()
        .unwrap()
}

/// The same, quick to call Redis out: a 50 ms budget per step, tried again
/// after 200 ms.
fn impatient_store_at(redis: &RedisServer) -> RedisStore {
    RedisStore::builder(redis.url())
        .prefix("llm-tower-test")
        .step_timeout(Duration::from_millis(50))
        .retry_after(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// `upstream` behind books on `store`, `namespace`, of `rpm` requests a
/// minute.
fn booked(
    store: &RedisStore,
    namespace: &str,
    rpm: u64,
    upstream: &MockServer,
) -> llm_tower::rate_limit::RateLimit<OpenAi> {
    ServiceBuilder::new()
        .layer(
            RateLimitLayer::new()
                .requests_per_minute(rpm)
                .shared(store.books(namespace)),
        )
        .service(support::openai_at(upstream))
}

fn redis_stopped_mid_run_local_books_then_shared_again() -> Result<(), Failed> {
    let (logs, _capturing) = support::Captured::start();
    let count = |needle: &str| logs.events().iter().filter(|e| e.contains(needle)).count();
    current_thread().block_on(async {
        let mut redis = RedisServer::start();
        let upstream = MockServer::start().await;
        let store = impatient_store_at(&redis);
        let namespace = unique("outage");
        let service = booked(&store, &namespace, 1000, &upstream);
        for _ in 0..5 {
            timed(&service).await.0?;
        }
        check(
            entries_on_redis(&redis, &namespace).await == 5,
            "5 calls booked on Redis",
        )?;

        redis.stop();
        for i in 0..20 {
            let (result, took) = timed(&service).await;
            result.map_err(|e| format!("call {i} with Redis down: {e}"))?;
            check(
                took < Duration::from_millis(500),
                format!("call {i} took {took:?}"),
            )?;
        }
        check(
            store.outages() == 1,
            format!("one outage: {}", store.outages()),
        )?;
        check(
            store.fallbacks() >= 20,
            format!("20 calls on local books: {}", store.fallbacks()),
        )?;
        check(
            count("Redis is out") == 1,
            format!("warned once: {}", count("Redis is out")),
        )?;

        redis.restart();
        let started = Instant::now();
        loop {
            timed(&service).await.0?;
            if store.is_available() && entries_on_redis(&redis, &namespace).await > 0 {
                break;
            }
            check(
                started.elapsed() < Duration::from_secs(10),
                "shared again within 10 s",
            )?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        check(count("Redis is back") == 1, "said it is back")
    })
}

fn redis_answering_slowly_is_cut_at_the_step_budget() -> Result<(), Failed> {
    current_thread().block_on(async {
        let redis = RedisServer::start();
        let upstream = MockServer::start().await;
        let store = impatient_store_at(&redis);
        let namespace = unique("slow");
        let service = booked(&store, &namespace, 1000, &upstream);
        timed(&service).await.0?;
        // Redis busy for 1.5 s: calls go on, each within its step budget.
        let mut c = redis.client().await;
        let sleeper = tokio::spawn(async move {
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(1.5)
                .query_async::<()>(&mut c)
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let mut calls = 0;
        while started.elapsed() < Duration::from_millis(1000) {
            let (result, took) = timed(&service).await;
            result?;
            check(
                took < Duration::from_millis(300),
                format!("a call took {took:?}"),
            )?;
            calls += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        check(calls > 5, format!("calls went on: {calls}"))?;
        check(store.outages() >= 1, "the slow answer counted as an outage")?;
        // The client may give up on DEBUG SLEEP's answer first; the server
        // slept all the same (the outage above shows it).
        let _ = sleeper.await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = entries_on_redis(&redis, &namespace).await;
        let started = Instant::now();
        loop {
            timed(&service).await.0?;
            if entries_on_redis(&redis, &namespace).await > before {
                break;
            }
            check(started.elapsed() < Duration::from_secs(10), "shared again")?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    })
}

fn fail_closed_refuses_with_a_typed_error() -> Result<(), Failed> {
    current_thread().block_on(async {
        let upstream = MockServer::start().await;
        // Nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
            .on_outage(OnOutage::Refuse)
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(RateLimitLayer::new().shared(store.books("closed")))
            .service(support::openai_at(&upstream));
        let (result, took) = timed(&service).await;
        let error = result.err().ok_or("refused")?;
        check(
            matches!(error, Error::Overloaded { .. })
                && error.api_error().and_then(|e| e.error_type())
                    == Some("shared_state_unavailable")
                && error.api_error().is_some_and(|e| e.is_local()),
            format!("a local overload: {error:?}"),
        )?;
        check(took < Duration::from_secs(1), format!("at once: {took:?}"))?;
        check(upstream.request_count() == 0, "nothing sent")?;

        let refresh = ServiceBuilder::new()
            .layer(
                RefreshLayer::new(|| async { Ok::<_, std::io::Error>(Credential::bearer("t")) })
                    .shared(store.credential("closed", CredentialKey::from_hex(KEY_HEX).unwrap())),
            )
            .service(support::openai_at(&upstream));
        let error = timed(&refresh).await.0.err().ok_or("refused")?;
        let typed = match &error {
            Error::Refresh { source } => source.downcast_ref::<StoreError>().is_some(),
            _ => false,
        };
        check(
            typed,
            format!("a refresh error whose source is a StoreError: {error:?}"),
        )
    })
}

fn pools_share_cooldowns() -> Result<(), Failed> {
    current_thread().block_on(async {
        let redis = RedisServer::start();
        let a = MockServer::start().await;
        let b = MockServer::start().await;
        let namespace = unique("pool");
        let pool = || {
            // A store each, as each process has its own.
            let store = store_at(&redis);
            Pool::builder()
                .deployment("a", support::openai_at(&a))
                .deployment("b", support::openai_at(&b))
                .shared(store.cooldowns(&namespace))
                .build()
                .unwrap()
        };
        // Built inside the runtime, each pool listens from the start.
        let (first, second) = (pool(), pool());
        timed(&first).await.0?;
        timed(&second).await.0?;
        tokio::time::sleep(Duration::from_millis(300)).await;

        a.set_default(
            Reply::api_error(429, "rate_limit_exceeded", "slow down").header("retry-after", "30"),
        );
        let health = |pool: &Pool| {
            pool.status()
                .into_iter()
                .find(|d| &*d.name == "a")
                .map(|d| d.health)
        };
        let cooling = |pool: &Pool| {
            matches!(
                health(pool),
                Some(llm_tower::pool::Health::CoolingDown { .. })
            )
        };
        for _ in 0..50 {
            if cooling(&first) {
                break;
            }
            let _ = timed(&first).await;
        }
        check(cooling(&first), "the first pool cooled a down")?;
        let started = Instant::now();
        while !cooling(&second) {
            check(
                started.elapsed() < Duration::from_secs(3),
                format!("the second pool heard: {:?}", health(&second)),
            )?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A pool that starts later reads the cooldown that runs before
        // its first calls pick: even a burst at once sends nothing to a.
        let seen_by_a = a.request_count();
        let third = pool();
        let burst = (0..10).map(|_| timed(&third));
        for (result, _) in futures_util::future::join_all(burst).await {
            result?;
        }
        check(cooling(&third), "the third pool read the cooldown")?;
        for _ in 0..10 {
            timed(&second).await.0?;
        }
        check(
            a.request_count() == seen_by_a,
            format!(
                "the second and third pools sent {} more to a",
                a.request_count() - seen_by_a
            ),
        )
    })
}

fn a_429_in_one_process_pauses_the_others() -> Result<(), Failed> {
    current_thread().block_on(async {
        let redis = RedisServer::start();
        let upstream = MockServer::start().await;
        upstream.push(
            Reply::api_error(429, "rate_limit_exceeded", "slow down").header("retry-after", "2"),
        );
        let namespace = unique("pause");
        let layer = || {
            let store = store_at(&redis);
            RateLimitLayer::new().shared(store.books(&namespace))
        };
        let first = ServiceBuilder::new()
            .layer(layer())
            .service(support::openai_at(&upstream));
        let second = ServiceBuilder::new()
            .layer(layer())
            .service(support::openai_at(&upstream));
        let error = timed(&first).await.0.err().ok_or("the 429")?;
        check(
            matches!(error, Error::RateLimited { .. }),
            format!("{error:?}"),
        )?;
        // The pause is written in the background.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (result, took) = timed(&second).await;
        result?;
        check(
            took > Duration::from_millis(1500) && took < Duration::from_secs(4),
            format!("the other service waited out the pause: {took:?}"),
        )
    })
}

fn a_call_dropped_while_booking_gives_its_slot_back() -> Result<(), Failed> {
    current_thread().block_on(async {
        let redis = RedisServer::start();
        let upstream = MockServer::start().await;
        let store = store_at(&redis);
        let namespace = unique("dropped");
        let service = booked(&store, &namespace, 2, &upstream);
        // Polled once, so that its booking is sent, then dropped.
        let mut call = Box::pin(
            service
                .clone()
                .oneshot(ChatRequest::new("m").message(Message::user("hi"))),
        );
        check(
            futures_util::poll!(call.as_mut()).is_pending(),
            "the booking is under way",
        )?;
        drop(call);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Both slots of the minute are free again.
        for i in 0..2 {
            let request = ChatRequest::new("m")
                .message(Message::user("hi"))
                .extension(Deadline::after(Duration::from_secs(1)));
            let answer = service.clone().oneshot(request).await;
            check(answer.is_ok(), format!("call {i}: {:?}", answer.err()))?;
        }
        check(upstream.request_count() == 2, "two calls sent")
    })
}

fn a_failed_refresh_frees_the_lock_at_once() -> Result<(), Failed> {
    current_thread().block_on(async {
        let redis = RedisServer::start();
        let upstream = MockServer::start().await;
        upstream.accept_keys(["fresh-token"]);
        let name = unique("freed");
        let layer = |fails: bool| {
            let store = store_at(&redis);
            let source = move || async move {
                if fails {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Err(std::io::Error::other("the identity provider is down"))
                } else {
                    Ok(Credential::bearer("fresh-token"))
                }
            };
            RefreshLayer::new(source)
                .initial(Credential::bearer("stale-token"))
                .shared(store.credential(&name, CredentialKey::from_hex(KEY_HEX).unwrap()))
        };
        let failing = ServiceBuilder::new()
            .layer(layer(true))
            .service(support::openai_at(&upstream));
        let working = ServiceBuilder::new()
            .layer(layer(false))
            .service(support::openai_at(&upstream));
        let first = tokio::spawn(async move { timed(&failing).await.0.is_err() });
        // The second finds the lock held by the first, and waits; when the
        // first's source fails the lock is freed, not held for its 30 s
        // lease.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (second, took) = timed(&working).await;
        check(first.await.unwrap(), "the first refresh failed")?;
        second?;
        check(
            took < Duration::from_secs(5),
            format!("the second waited {took:?}, not the lease"),
        )
    })
}

/// Three response headers, as (name, value).
type Headers = [(&'static str, &'static str); 3];

/// The same calls, one after another, through local books and through
/// books on Redis: which go and which are refused must agree (the script
/// runs the local books' rules).
fn shared_books_decide_as_local_books_do() -> Result<(), Failed> {
    current_thread().block_on(async {
        let redis = RedisServer::start();
        let store = store_at(&redis);
        // (budget, the first answer's report, calls): a request budget; a
        // token budget; a report that leaves 2 requests before a reset in
        // 30 s; a token report.
        let cases: [(RateLimitLayer, Option<Headers>, usize); 4] = [
            (RateLimitLayer::new().requests_per_minute(5), None, 8),
            (RateLimitLayer::new().tokens_per_minute(1_000), None, 12),
            (
                RateLimitLayer::new().requests_per_minute(50),
                Some([
                    ("x-ratelimit-limit-requests", "100"),
                    ("x-ratelimit-remaining-requests", "2"),
                    ("x-ratelimit-reset-requests", "30s"),
                ]),
                6,
            ),
            (
                RateLimitLayer::new(),
                Some([
                    ("x-ratelimit-limit-tokens", "10000"),
                    ("x-ratelimit-remaining-tokens", "300"),
                    ("x-ratelimit-reset-tokens", "20s"),
                ]),
                6,
            ),
        ];
        for (n, (layer, report, calls)) in cases.into_iter().enumerate() {
            let namespace = unique("same");
            let mut outcomes = Vec::new();
            for shared in [false, true] {
                let upstream = MockServer::start().await;
                if let Some(headers) = report {
                    let mut reply = Reply::text(vec!["x"; 100]);
                    for (name, value) in headers {
                        reply = reply.header(name, value);
                    }
                    upstream.push(reply);
                }
                upstream.set_default(Reply::text(vec!["x"; 100]));
                let layer = if shared {
                    layer.clone().shared(store.books(&namespace))
                } else {
                    layer.clone()
                };
                let service = ServiceBuilder::new()
                    .layer(layer)
                    .service(support::openai_at(&upstream));
                let mut went = Vec::new();
                for _ in 0..calls {
                    // 4 + 1 input tokens by the estimate, and 95 output:
                    // 100 a call, as used (12 input, 100 output: 112).
                    let request = ChatRequest::new("m")
                        .message(Message::user("hi"))
                        .max_tokens(95)
                        .extension(Deadline::after(Duration::from_millis(200)));
                    let answer = async {
                        let stream = service.clone().oneshot(request).await?;
                        stream.completion().await
                    }
                    .await;
                    went.push(answer.is_ok());
                }
                outcomes.push(went);
            }
            check(
                outcomes[0] == outcomes[1],
                format!(
                    "case {n}: local {:?}, on Redis {:?}",
                    outcomes[0], outcomes[1]
                ),
            )?;
            check(
                outcomes[0].contains(&false) && outcomes[0].contains(&true),
                format!(
                    "case {n} has calls that go and calls refused: {:?}",
                    outcomes[0]
                ),
            )?;
        }
        Ok(())
    })
}

fn the_store_never_shows_its_password() -> Result<(), Failed> {
    let store = RedisStore::builder("redis://:hunter2-secret@127.0.0.1:6379/")
        .build()
        .map_err(|e| e.to_string())?;
    check(!format!("{store:?}").contains("hunter2"), "Debug")?;
    let error = RedisStore::builder("rediss-nope://:hunter2-secret@host/")
        .build()
        .err()
        .ok_or("a bad URL is refused")?;
    check(
        !format!("{error} {error:?}").contains("hunter2"),
        format!("the error shows the password: {error}"),
    )?;
    let key = CredentialKey::from_hex(KEY_HEX).map_err(|e| e.to_string())?;
    let shared = store.credential("c", key);
    check(
        !format!("{shared:?}").contains("0001020304"),
        "the key in Debug",
    )
}

/// The worker processes.
mod worker {
    use super::*;

    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn number(name: &str) -> Option<u64> {
        var(name).map(|v| v.parse().expect("a number"))
    }

    pub(super) fn run(mode: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let report = rt.block_on(async {
            let report = match mode {
                "budget" => budget().await,
                "credential" => credential().await,
                other => panic!("unknown worker {other}"),
            };
            // What the calls wrote in the background reaches Redis.
            tokio::time::sleep(Duration::from_millis(200)).await;
            report
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{report}").unwrap();
    }

    /// The store at `REDIS`, if set. These runs are about sharing, not
    /// about a slow Redis: a generous step budget, so that a loaded machine
    /// does not send a worker to its local books.
    fn store() -> Option<RedisStore> {
        var("REDIS").map(|url| {
            RedisStore::builder(url)
                .prefix("llm-tower-test")
                .step_timeout(Duration::from_secs(2))
                .build()
                .expect("a store")
        })
    }

    fn upstream() -> OpenAi {
        OpenAi::builder()
            .base_url(var("UPSTREAM").expect("UPSTREAM"))
            .api_key("sk-test")
            .model("m")
            .build()
            .expect("a provider")
    }

    /// Makes `CALLS` calls at once, under `RPM` / `TPM`, on Redis if
    /// `REDIS` is set, each with `DEADLINE_MS` to start.
    async fn budget() -> Value {
        let mut layer = RateLimitLayer::new();
        if let Some(n) = number("RPM") {
            layer = layer.requests_per_minute(n);
        }
        if let Some(n) = number("TPM") {
            layer = layer.tokens_per_minute(n);
        }
        if let Some(store) = store() {
            layer = layer.shared(store.books(&var("NAMESPACE").expect("NAMESPACE")));
        }
        let service = ServiceBuilder::new().layer(layer).service(upstream());
        let calls = number("CALLS").unwrap_or(1);
        let deadline = number("DEADLINE_MS").map(Duration::from_millis);
        let max_tokens = number("MAX_TOKENS").map(|n| n as u32);
        let tasks: Vec<_> = (0..calls)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    let mut request = ChatRequest::new("m").message(Message::user("hi"));
                    if let Some(n) = max_tokens {
                        request = request.max_tokens(n);
                    }
                    if let Some(d) = deadline {
                        request = request.extension(Deadline::after(d));
                    }
                    let started = Instant::now();
                    let result = async {
                        let stream = service.oneshot(request).await?;
                        stream.completion().await
                    }
                    .await;
                    (result, started.elapsed())
                })
            })
            .collect();
        let (mut ok, mut local, mut limited, mut other, mut slowest) = (0, 0, 0, 0, 0u128);
        for task in tasks {
            let (result, took) = task.await.expect("a call");
            slowest = slowest.max(took.as_millis());
            match result {
                Ok(_) => ok += 1,
                Err(e) if e.api_error().is_some_and(|a| a.is_local()) => local += 1,
                Err(Error::RateLimited { .. }) => limited += 1,
                Err(e) => {
                    eprintln!("worker: {e}");
                    other += 1;
                }
            }
        }
        json!({
            "ok": ok, "refused_locally": local, "rate_limited": limited,
            "other": other, "slowest_ms": slowest,
        })
    }

    /// One call with a stale credential, refreshed on the 401 from a
    /// source that logs each call to `SOURCE_LOG` and takes
    /// `SOURCE_DELAY_MS`; the credential shared as `CREDENTIAL`.
    async fn credential() -> Value {
        let log = PathBuf::from(var("SOURCE_LOG").expect("SOURCE_LOG"));
        let delay = Duration::from_millis(number("SOURCE_DELAY_MS").unwrap_or(0));
        let key = CredentialKey::from_hex(&var("KEY").expect("KEY")).expect("a key");
        let mut shared = store()
            .expect("REDIS")
            .credential(&var("CREDENTIAL").expect("CREDENTIAL"), key);
        if let Some(ms) = number("LEASE_MS") {
            shared = shared.lease(Duration::from_millis(ms));
        }
        let source = move || {
            let log = log.clone();
            async move {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?;
                writeln!(file, "{}", std::process::id())?;
                drop(file);
                tokio::time::sleep(delay).await;
                Ok::<_, std::io::Error>(Credential::bearer("fresh-token"))
            }
        };
        let service = ServiceBuilder::new()
            .layer(
                RefreshLayer::new(source)
                    .initial(Credential::bearer("stale-token"))
                    .shared(shared),
            )
            .service(upstream());
        let (result, took) = timed(&service).await;
        if let Err(e) = &result {
            eprintln!("worker: {e}");
        }
        json!({"ok": u32::from(result.is_ok()), "ms": took.as_millis()})
    }
}
