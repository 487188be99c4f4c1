//! The `gateway` example as a process, in front of the mock server, driven
//! by a plain HTTP client — and by the official `openai` Python client, and
//! three at once on one `redis-server`.
//!
//! Runs the built example, `target/<profile>/examples/gateway`: a plain
//! `cargo test` builds it first; with a target filter, build it with
//! `cargo build --example gateway --all-features`.
//!
//! Its own harness (libtest-mimic): the tests that need `redis-server` or
//! Python's `openai` package (installed from PyPI into a venv the test
//! makes) are reported as ignored where those cannot be had, never as
//! passed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libtest_mimic::{Arguments, Failed, Trial};
use llm_tower::mock::{MockServer, Reply};
use serde_json::{Value, json};

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

const MASTER: &str = "sk-gateway-master-7f3a";
const UPSTREAM_KEY: &str = "sk-upstream-9c1e";

fn main() {
    let args = Arguments::from_args();
    let no_redis = redis_server::which("redis-server").is_none();
    let tests: Vec<(&str, fn())> = vec![
        ("every_endpoint_answers", every_endpoint_answers),
        (
            "a_completion_streamed_and_not",
            a_completion_streamed_and_not,
        ),
        ("a_tool_call_streamed_and_not", a_tool_call_streamed_and_not),
        (
            "every_provider_answers_in_openai_format",
            every_provider_answers_in_openai_format,
        ),
        (
            "a_reset_before_output_is_retried",
            a_reset_before_output_is_retried,
        ),
        (
            "an_overloaded_deployment_is_cooled_down",
            an_overloaded_deployment_is_cooled_down,
        ),
        ("a_failing_model_falls_back", a_failing_model_falls_back),
        (
            "a_refused_key_is_refreshed_by_its_command",
            a_refused_key_is_refreshed_by_its_command,
        ),
        (
            "a_stall_is_cut_by_the_stream_timeout",
            a_stall_is_cut_by_the_stream_timeout,
        ),
        (
            "a_failure_after_output_is_an_in_stream_error",
            a_failure_after_output_is_an_in_stream_error,
        ),
        (
            "a_client_that_leaves_closes_the_upstream_call",
            a_client_that_leaves_closes_the_upstream_call,
        ),
        (
            "bad_input_gets_the_right_status_and_body",
            bad_input_gets_the_right_status_and_body,
        ),
        (
            "errors_keep_their_class_and_retry_after",
            errors_keep_their_class_and_retry_after,
        ),
        ("open_calls_are_bounded", open_calls_are_bounded),
        (
            "a_client_that_stalls_is_cut_off",
            a_client_that_stalls_is_cut_off,
        ),
        (
            "a_deployments_parallel_limit_queues_its_calls",
            a_deployments_parallel_limit_queues_its_calls,
        ),
        (
            "shutdown_lets_open_streams_finish",
            shutdown_lets_open_streams_finish,
        ),
        (
            "the_config_is_checked_at_start",
            the_config_is_checked_at_start,
        ),
        (
            "non_openai_parameters_follow_drop_params",
            non_openai_parameters_follow_drop_params,
        ),
    ];
    let mut trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::test(name, move || {
                test();
                Ok(())
            })
        })
        .collect();
    let redis_tests: Vec<(&str, fn())> = vec![
        (
            "three_gateways_keep_one_rpm_budget",
            three_gateways_keep_one_rpm_budget,
        ),
        (
            "three_gateways_share_cooldowns_and_credentials",
            three_gateways_share_cooldowns_and_credentials,
        ),
    ];
    for (name, test) in redis_tests {
        trials.push(
            Trial::test(name, move || {
                test();
                Ok(())
            })
            .with_ignored_flag(no_redis),
        );
    }
    let python = python_client();
    trials.push(
        Trial::test("the_openai_python_client_streams_through_it", {
            let python = python.clone();
            move || openai_python_client(python.as_ref())
        })
        .with_ignored_flag(python.is_err()),
    );
    if no_redis {
        eprintln!(
            "redis-server not found on PATH: the three-gateway tests are reported as ignored"
        );
    }
    if let Err(why) = &python {
        eprintln!("no Python openai client ({why}): its test is reported as ignored");
    }
    libtest_mimic::run(&args, trials).exit();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A gateway process of the test's own, killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    config: PathBuf,
}

static CONFIGS: AtomicUsize = AtomicUsize::new(0);

fn write_config(yaml: &str) -> PathBuf {
    let n = CONFIGS.fetch_add(1, Ordering::SeqCst);
    let path =
        std::env::temp_dir().join(format!("llm-tower-gateway-{}-{n}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("the config is written");
    path
}

/// Starts the gateway on `yaml`, with `env`; what it logs is kept.
fn spawn(yaml: &str, env: &[(&str, &str)]) -> Result<Gateway, (Option<i32>, String)> {
    spawn_with_args(yaml, env, &[])
}

/// [`spawn`], with more command-line arguments.
fn spawn_with_args(
    yaml: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<Gateway, (Option<i32>, String)> {
    let config = write_config(yaml);
    let mut command = Command::new(support::example_exe("gateway"));
    command
        .args(["--config", config.to_str().expect("a UTF-8 path")])
        .args(["--host", "127.0.0.1", "--port", "0", "--grace", "5"])
        .args(args)
        .env_remove("RUST_LOG")
        .env("UPSTREAM_KEY", UPSTREAM_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the gateway starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let started = Instant::now();
    loop {
        if let Ok(addr) = rx.recv_timeout(Duration::from_millis(20)) {
            let addr = addr.parse().expect("the address it listens on");
            return Ok(Gateway {
                child,
                addr,
                log,
                config,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(50));
            let log = log.lock().unwrap().clone();
            return Err((status.code(), log));
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway did not listen within 20 s: {}",
            log.lock().unwrap()
        );
    }
}

fn gateway(yaml: &str) -> Gateway {
    gateway_with(yaml, &[])
}

fn gateway_with(yaml: &str, env: &[(&str, &str)]) -> Gateway {
    match spawn(yaml, env) {
        Ok(g) => g,
        Err((code, log)) => panic!("the gateway exited ({code:?}) at start: {log}"),
    }
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log names no secret.
    fn assert_no_secret(&self) {
        let log = self.log();
        for secret in [MASTER, UPSTREAM_KEY, "sk-fresh-from-command"] {
            assert!(!log.contains(secret), "the log shows a secret: {log}");
        }
    }

    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit, at most `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .expect("a client")
}

/// POSTs `body` to the gateway's chat route with the master key.
async fn post(g: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(MASTER)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the gateway answers")
}

/// A response's status, headers and JSON body.
async fn answer(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("a body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, headers, value)
}

/// The `data:` payloads of an SSE body.
async fn events(r: reqwest::Response) -> Vec<String> {
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        r.headers()
    );
    let text = r.text().await.expect("a body");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The text of a stream's chunks.
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}],
    })
}

/// A config of one OpenAI model `gpt` on `server`, and `extra` YAML.
fn one_model(server: &MockServer, extra: &str) -> String {
    format!(
        "model_list:\n  - model_name: gpt\n    litellm_params:\n      model: openai/gpt-4o-mini\n      \
         api_base: {}\n      api_key: os.environ/UPSTREAM_KEY\n{extra}\ngeneral_settings:\n  master_key: {MASTER}\n",
        server.openai_url()
    )
}

fn every_endpoint_answers() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.accept_keys([UPSTREAM_KEY]);
        let g = gateway(&one_model(&server, ""));
        let c = client();
        let live = c.get(g.url("/health/liveliness")).send().await.unwrap();
        assert_eq!(live.status(), 200);
        let (status, _, ready) =
            answer(c.get(g.url("/health/readiness")).send().await.unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(ready["status"], "healthy");

        let (status, _, models) = answer(
            c.get(g.url("/v1/models"))
                .bearer_auth(MASTER)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(models["object"], "list");
        assert_eq!(models["data"][0]["id"], "gpt");
        assert_eq!(models["data"][0]["object"], "model");
        let (status, _, body) = answer(c.get(g.url("/v1/models")).send().await.unwrap()).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["type"], "authentication_error");

        // Both chat routes, with the key in either header.
        server.set_default(Reply::text(["Hi"]));
        for path in ["/v1/chat/completions", "/chat/completions"] {
            let r = c
                .post(g.url(path))
                .header("x-api-key", MASTER)
                .body(chat("gpt", false).to_string())
                .send()
                .await
                .unwrap();
            let (status, _, body) = answer(r).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(body["choices"][0]["message"]["content"], "Hi");
        }

        let metrics = c.get(g.url("/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        assert!(!text.contains(UPSTREAM_KEY) && !text.contains(MASTER));
        for name in [
            "gen_ai_client_operation_duration_seconds_bucket",
            "gen_ai_client_token_usage",
            "llm_tower_gateway_requests",
            "gen_ai_request_model=\"gpt\"",
        ] {
            assert!(text.contains(name), "/metrics lacks {name}: {text}");
        }
        let (status, _, body) = answer(c.get(g.url("/v2/nothing")).send().await.unwrap()).await;
        assert_eq!(status, 404);
        assert!(body["error"]["message"].is_string());
        g.assert_no_secret();
    });
}

fn a_completion_streamed_and_not() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.set_default(Reply::text(["Hello", ", ", "world"]));
        let g = gateway(&one_model(&server, ""));

        let (status, _, body) = answer(post(&g, &chat("gpt", false)).await).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello, world");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        let usage = &body["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{body}");
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
        // The upstream call asked for the answer whole too.
        assert_eq!(server.requests()[0].json()["stream"], false);

        let mut streaming = chat("gpt", true);
        streaming["stream_options"] = json!({"include_usage": true});
        let events = events(post(&g, &streaming).await).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(streamed_text(&events), "Hello, world");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let finish: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        // Without include_usage, no usage chunk.
        let events = events_of(&g, &chat("gpt", true)).await;
        assert!(
            events.iter().all(|e| !e.contains("\"usage\"")),
            "{events:?}"
        );
        assert_eq!(server.request_count(), 3);
    });
}

async fn events_of(g: &Gateway, body: &Value) -> Vec<String> {
    events(post(g, body).await).await
}

fn a_tool_call_streamed_and_not() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.set_default(Reply::tool_call("call_1", "get_weather", ["{\"city\":", "\"Paris\"}"]));
        let g = gateway(&one_model(&server, ""));
        let mut body = chat("gpt", false);
        body["tools"] = json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        body["tool_choice"] = json!("auto");
        let (status, _, answer_) = answer(post(&g, &body).await).await;
        assert_eq!(status, 200, "{answer_}");
        let message = &answer_["choices"][0]["message"];
        assert_eq!(answer_["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(message["tool_calls"][0]["id"], "call_1");
        assert_eq!(message["tool_calls"][0]["type"], "function");
        assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(message["tool_calls"][0]["function"]["arguments"].as_str().unwrap())
                .unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        // The tool went upstream in OpenAI's shape.
        let sent = server.requests()[0].json();
        assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

        body["stream"] = json!(true);
        let events = events_of(&g, &body).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["id"], "call_1");
        let arguments: String = calls
            .iter()
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(arguments, "{\"city\":\"Paris\"}");
        assert!(calls.iter().all(|c| c["index"] == 0));
        assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

        // The tool's result, sent back as history.
        let history = json!({
            "model": "gpt",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
            ]
        });
        server.set_default(Reply::text(["Mild."]));
        let (status, _, _) = answer(post(&g, &history).await).await;
        assert_eq!(status, 200);
        let sent = server.requests().last().unwrap().json();
        assert_eq!(sent["messages"][2]["role"], "tool");
        assert_eq!(sent["messages"][2]["tool_call_id"], "call_1");
    });
}

fn every_provider_answers_in_openai_format() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.accept_keys([UPSTREAM_KEY]);
        server.set_default(Reply::text(["Hello", " there"]));
        let base = server.url();
        let entry = |name: &str, params: String| {
            format!("  - model_name: {name}\n    litellm_params: {{{params}, api_key: os.environ/UPSTREAM_KEY}}\n")
        };
        let yaml = [
            entry("openai", format!("model: openai/gpt-4o, api_base: \"{}\"", server.openai_url())),
            entry("anthropic", format!("model: anthropic/claude-sonnet-4-5, api_base: \"{base}\"")),
            entry("gemini", format!("model: gemini/gemini-2.5-flash, api_base: \"{base}\"")),
            entry("azure", format!("model: azure/prod-4o, api_base: \"{base}\", api_version: \"2024-10-21\"")),
            entry("azure-v1", format!("model: azure/prod-4o, api_base: \"{base}\"")),
            entry("vertex", format!("model: vertex_ai/gemini-2.5-pro, vertex_project: p, vertex_location: us-central1, api_base: \"{base}\"")),
            entry("vertex-claude", format!("model: vertex_ai/claude-sonnet-4-5@20250929, vertex_project: p, vertex_location: us-east5, api_base: \"{base}\"")),
            entry("vllm", format!("model: hosted_vllm/qwen3, api_base: \"{}\"", server.openai_url())),
        ]
        .concat();
        let g = gateway(&format!("model_list:\n{yaml}general_settings: {{master_key: {MASTER}}}\n"));
        let names = ["openai", "anthropic", "gemini", "azure", "azure-v1", "vertex", "vertex-claude", "vllm"];
        for (i, name) in names.into_iter().enumerate() {
            for stream in [false, true] {
                let r = post(&g, &chat(name, stream)).await;
                assert_eq!(r.status(), 200, "{name}");
                let text = if stream {
                    let events = events(r).await;
                    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{name}");
                    streamed_text(&events)
                } else {
                    let (_, _, body) = answer(r).await;
                    body["choices"][0]["message"]["content"].as_str().unwrap_or("").to_owned()
                };
                assert_eq!(text, "Hello there", "{name}, stream: {stream}");
            }
            let sent = &server.requests()[2 * i];
            let expected = match name {
                "openai" | "vllm" => "/v1/chat/completions",
                "anthropic" => "/v1/messages",
                "gemini" => "/v1beta/models/gemini-2.5-flash:generateContent",
                "azure" => "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
                "azure-v1" => "/openai/v1/chat/completions",
                "vertex" => "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
                _ => "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
            };
            assert_eq!(sent.path, expected, "{name}");
        }
        g.assert_no_secret();
    });
}

fn a_reset_before_output_is_retried() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.push(Reply::reset());
        server.push(Reply::text(["Recovered"]));
        let g = gateway(&one_model(&server, ""));
        let r = post(&g, &chat("gpt", true)).await;
        assert_eq!(r.headers()["x-llm-tower-attempts"], "2");
        let events = events(r).await;
        assert_eq!(streamed_text(&events), "Recovered");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(server.request_count(), 2);
    });
}

fn an_overloaded_deployment_is_cooled_down() {
    runtime().block_on(async {
        let busy = MockServer::start().await;
        busy.set_default(Reply::api_error(529, "overloaded_error", "Overloaded"));
        let fine = MockServer::start().await;
        fine.set_default(Reply::text(["ok"]));
        let yaml = format!(
            "model_list:\n\
             - model_name: claude\n  litellm_params: {{model: anthropic/claude-a, api_base: \"{}\", api_key: k}}\n\
             - model_name: claude\n  litellm_params: {{model: anthropic/claude-b, api_base: \"{}\", api_key: k}}\n\
             router_settings: {{allowed_fails: 0, cooldown_time: 60, num_retries: 1}}\n\
             general_settings: {{master_key: {MASTER}}}\n",
            busy.anthropic_url(),
            fine.anthropic_url()
        );
        let g = gateway(&yaml);
        // Until the pool has tried the busy one (it picks at random
        // between idle deployments).
        let mut calls = 0;
        while busy.request_count() == 0 {
            calls += 1;
            assert!(calls < 60, "the busy deployment was never picked");
            let (status, headers, body) = answer(post(&g, &chat("claude", false)).await).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(headers["x-llm-tower-deployment"], "claude#1");
        }
        // The 529 was retried on the other one; the busy one is out.
        for _ in 0..20 {
            let (status, headers, _) = answer(post(&g, &chat("claude", false)).await).await;
            assert_eq!(status, 200);
            assert_eq!(headers["x-llm-tower-deployment"], "claude#1");
        }
        assert_eq!(busy.request_count(), 1);
    });
}

fn a_failing_model_falls_back() {
    runtime().block_on(async {
        let primary = MockServer::start().await;
        primary.set_default(Reply::api_error(500, "server_error", "down"));
        let backup = MockServer::start().await;
        backup.set_default(Reply::text(["from", " backup"]));
        let yaml = format!(
            "model_list:\n\
             - model_name: gpt\n  litellm_params: {{model: openai/gpt-4o, api_base: \"{}\", api_key: k}}\n\
             - model_name: claude\n  litellm_params: {{model: anthropic/claude-x, api_base: \"{}\", api_key: k}}\n\
             router_settings: {{num_retries: 1, fallbacks: [{{gpt: [claude]}}]}}\n\
             general_settings: {{master_key: {MASTER}}}\n",
            primary.openai_url(),
            backup.anthropic_url()
        );
        let g = gateway(&yaml);
        let r = post(&g, &chat("gpt", true)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-llm-tower-deployment"], "claude#0");
        let events = events(r).await;
        assert_eq!(streamed_text(&events), "from backup");
        // The primary had its retry first; the backup was asked once, in
        // Anthropic's wire.
        assert_eq!(primary.request_count(), 2);
        assert_eq!(backup.request_count(), 1);
        assert!(backup.requests()[0].path.ends_with("/messages"));
    });
}

fn a_refused_key_is_refreshed_by_its_command() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.accept_keys(["sk-fresh-from-command"]);
        server.set_default(Reply::text(["authorized"]));
        let yaml = format!(
            "model_list:\n\
             - model_name: gpt\n  litellm_params:\n    model: openai/gpt-4o\n    api_base: \"{}\"\n    \
             api_key: os.environ/UPSTREAM_KEY\n    api_key_command: [sh, -c, \"echo sk-fresh-from-command\"]\n\
             general_settings: {{master_key: {MASTER}}}\n",
            server.openai_url()
        );
        let g = gateway(&yaml);
        let (status, headers, body) = answer(post(&g, &chat("gpt", false)).await).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "authorized");
        assert_eq!(headers["x-llm-tower-attempts"], "2");
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].header("authorization"), Some(format!("Bearer {UPSTREAM_KEY}").as_str()));
        assert_eq!(requests[1].header("authorization"), Some("Bearer sk-fresh-from-command"));
        // The next call sends the new key at once.
        let (status, _, _) = answer(post(&g, &chat("gpt", false)).await).await;
        assert_eq!(status, 200);
        assert_eq!(server.request_count(), 3);
        g.assert_no_secret();
    });
}

fn a_stall_is_cut_by_the_stream_timeout() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        // Before output: cut and sent again.
        server.push(Reply::text(["never"]).stall_after(0));
        server.push(Reply::text(["second", " try"]));
        let g = gateway(&one_model(&server, "      stream_timeout: 0.5\n"));
        let started = Instant::now();
        let events = events_of(&g, &chat("gpt", true)).await;
        assert_eq!(streamed_text(&events), "second try");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_secs(5));
        // After output: an in-stream timeout error, no [DONE].
        server.push(Reply::text(["part", "never"]).stall_after(1));
        let events = events_of(&g, &chat("gpt", true)).await;
        assert_eq!(streamed_text(&events), "part");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "timeout", "{last}");
        assert!(!events.iter().any(|e| e == "[DONE]"));
        assert_eq!(server.request_count(), 3);
    });
}

fn a_failure_after_output_is_an_in_stream_error() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.push(Reply::text(["one ", "two ", "three"]).reset_after(2));
        let g = gateway(&one_model(&server, ""));
        let events = events_of(&g, &chat("gpt", true)).await;
        assert_eq!(streamed_text(&events), "one two ");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert!(last["error"]["message"].is_string(), "{last}");
        assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
        // Never sent again: the client had output.
        assert_eq!(server.request_count(), 1);
    });
}

fn a_client_that_leaves_closes_the_upstream_call() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.push(Reply::text(["first", "never"]).stall_after(1));
        let g = gateway(&one_model(&server, ""));
        let r = post(&g, &chat("gpt", true)).await;
        let mut body = r.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("first"));
        assert_eq!(server.open_responses(), 1);
        drop(body);
        closes(&server).await;
        // A client that gives up waiting for a whole answer.
        server.push(Reply::text(["first", "never"]).stall_after(1));
        let gave_up = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap()
            .post(g.url("/v1/chat/completions"))
            .bearer_auth(MASTER)
            .body(chat("gpt", false).to_string())
            .send()
            .await;
        assert!(gave_up.is_err());
        closes(&server).await;
    });
}

/// Waits until the server has no call open, at most 5 s.
async fn closes(server: &MockServer) {
    let started = Instant::now();
    while server.open_responses() > 0 || server.live_connections() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the upstream call is still open 5 s after the client left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn bad_input_gets_the_right_status_and_body() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        let g = gateway(&one_model(&server, ""));
        let c = client();
        let send = |body: Vec<u8>, key: &str| {
            c.post(g.url("/v1/chat/completions"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
            (
                b"{\"model\": \"gpt\", \"messages\": [".to_vec(),
                MASTER,
                400,
                "invalid_request_error",
            ),
            (vec![b' '; 20 << 20], MASTER, 413, "invalid_request_error"),
            (
                chat("gpt", false).to_string().into_bytes(),
                "sk-wrong",
                401,
                "authentication_error",
            ),
            (
                chat("no-such-model", false).to_string().into_bytes(),
                MASTER,
                404,
                "invalid_request_error",
            ),
            (
                b"<html>hi</html>".to_vec(),
                MASTER,
                400,
                "invalid_request_error",
            ),
            (vec![0xff, 0xfe, 0x00], MASTER, 400, "invalid_request_error"),
            (
                json!({"model": "gpt"}).to_string().into_bytes(),
                MASTER,
                400,
                "invalid_request_error",
            ),
        ];
        for (body, key, status, kind) in cases {
            let len = body.len();
            let r = send(body, key).await.unwrap();
            let (got, _, value) = answer(r).await;
            assert_eq!(got, status, "a {len}-byte body: {value}");
            assert_eq!(value["error"]["type"], kind, "{value}");
            assert!(
                value["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
        assert_eq!(server.request_count(), 0, "nothing bad went upstream");
        g.assert_no_secret();
    });
}

fn errors_keep_their_class_and_retry_after() {
    runtime().block_on(async {
        let cases = [
            (
                Reply::api_error(429, "rate_limit_exceeded", "slow down")
                    .header("retry-after", "7"),
                429,
                "rate_limit_error",
                Some("7"),
            ),
            (
                Reply::api_error(400, "invalid_request_error", "bad param"),
                400,
                "invalid_request_error",
                None,
            ),
            (
                Reply::api_error(
                    401,
                    "invalid_api_key",
                    format!("Incorrect API key provided: {UPSTREAM_KEY}"),
                ),
                401,
                "authentication_error",
                None,
            ),
            (
                Reply::api_error(500, "server_error", "boom"),
                502,
                "api_error",
                None,
            ),
            (
                Reply::api_error(503, "overloaded", "busy").header("retry-after", "3"),
                503,
                "overloaded_error",
                Some("3"),
            ),
            (
                Reply::body(200, "text/html", "<html>proxy error</html>"),
                502,
                "api_error",
                None,
            ),
        ];
        // A gateway each: a 429 or a 401 takes the only deployment out.
        for (reply, status, kind, retry_after) in cases {
            let server = MockServer::start().await;
            let g = gateway(&one_model(&server, "router_settings: {num_retries: 0}\n"));
            server.push(reply);
            let (got, headers, body) = answer(post(&g, &chat("gpt", false)).await).await;
            assert_eq!(got, status, "{body}");
            assert_eq!(body["error"]["type"], kind, "{body}");
            assert!(!body.to_string().contains(UPSTREAM_KEY), "{body}");
            assert_eq!(
                headers.get("retry-after").and_then(|v| v.to_str().ok()),
                retry_after,
                "{body}"
            );
            g.assert_no_secret();
        }
        // An upstream that cannot be reached: a 502 that does not name
        // where it is.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let g = gateway(&format!(
            "model_list:\n  - model_name: gpt\n    litellm_params: {{model: openai/x, api_base: \"http://{addr}/v1\", api_key: k}}\n\
             router_settings: {{num_retries: 0}}\ngeneral_settings: {{master_key: {MASTER}}}\n"
        ));
        let (got, _, body) = answer(post(&g, &chat("gpt", false)).await).await;
        assert_eq!(got, 502, "{body}");
        assert_eq!(body["error"]["type"], "api_error", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("could not be reached"), "{body}");
        assert!(!message.contains(&addr.port().to_string()), "{body}");
        assert!(g.log().contains("could not be reached"), "{}", g.log());
    });
}

fn open_calls_are_bounded() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.push(Reply::text(["held", "never"]).stall_after(1));
        let mut yaml = one_model(&server, "");
        yaml.push_str("  global_max_parallel_requests: 1\n");
        let g = gateway(&yaml);
        let held = post(&g, &chat("gpt", true)).await;
        let mut held = held.bytes_stream();
        let _ = held.next().await;
        let (status, headers, body) = answer(post(&g, &chat("gpt", true)).await).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "gateway_busy");
        assert_eq!(headers["retry-after"], "1");
        drop(held);
        // Once the first ends, a call goes through again.
        server.set_default(Reply::text(["free"]));
        let started = Instant::now();
        loop {
            let (status, _, _) = answer(post(&g, &chat("gpt", false)).await).await;
            if status == 200 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "still busy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

fn a_client_that_stalls_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.set_default(Reply::text(["ok"]));
        let g = spawn_with_args(&one_model(&server, ""), &[], &["--client-timeout", "1"])
            .unwrap_or_else(|(code, log)| panic!("exited ({code:?}): {log}"));
        // Reads until the gateway closes the connection: what it sent.
        async fn until_closed(tcp: &mut tokio::net::TcpStream) -> String {
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got));
            read.await
                .expect("the gateway closed the connection within 10 s")
                .ok();
            String::from_utf8_lossy(&got).into_owned()
        }
        let started = Instant::now();
        // Half a request's headers, then nothing.
        let mut half = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let _ = until_closed(&mut half).await;
        // A connection that never says a word.
        let mut mute = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        let _ = until_closed(&mut mute).await;
        // Headers, then half of the body they announce: a 408.
        let mut slow = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        let reply = until_closed(&mut slow).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("request_timeout"), "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        // And calls go on as before.
        let (status, _, body) = answer(post(&g, &chat("gpt", false)).await).await;
        assert_eq!(status, 200, "{body}");
    });
}

fn a_deployments_parallel_limit_queues_its_calls() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.push(Reply::text(["first ", "then ", "done"]).delay(Duration::from_millis(300)));
        server.set_default(Reply::text(["next"]));
        // With both timeouts, streams and whole answers go different ways
        // under the limit: each call must still take one place, not two.
        let g = gateway(&one_model(
            &server,
            "      max_parallel_requests: 1\n      timeout: 20\n      stream_timeout: 20\n",
        ));
        let within = |stream: bool| {
            let g = &g;
            async move {
                tokio::time::timeout(Duration::from_secs(10), post(g, &chat("gpt", stream)))
                    .await
                    .expect("the call was answered within 10 s")
            }
        };
        let first = within(true).await;
        let started = Instant::now();
        let (first, second) = tokio::join!(
            async {
                let events = events(first).await;
                (streamed_text(&events), Instant::now())
            },
            async {
                // Sent while the first streams: it waits for its place.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (status, _, body) = answer(within(false).await).await;
                (status, body, Instant::now())
            }
        );
        assert_eq!(first.0, "first then done");
        let (status, body, second_done) = second;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "next");
        // The first streams for 900 ms (three events 300 ms apart); the
        // second, sent at 100 ms, took its place once the first ended.
        assert!(
            second_done - started >= Duration::from_millis(600),
            "the second call ran beside the first: done after {:?}, the first after {:?}",
            second_done - started,
            first.1 - started
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // One after the other, each again.
        for _ in 0..3 {
            let (status, _, body) = answer(within(false).await).await;
            assert_eq!(status, 200, "{body}");
        }
    });
}

fn shutdown_lets_open_streams_finish() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.push(Reply::text(["slow ", "but ", "complete"]).delay(Duration::from_millis(300)));
        let mut g = gateway(&one_model(&server, ""));
        let r = post(&g, &chat("gpt", true)).await;
        g.terminate();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Not ready, and no new connections.
        let refused = client().get(g.url("/health/liveliness")).send().await;
        assert!(
            refused.is_err(),
            "a new connection was accepted during shutdown"
        );
        let events = events(r).await;
        assert_eq!(streamed_text(&events), "slow but complete");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let status = g
            .wait_exit(Duration::from_secs(5))
            .expect("it exits once the stream ended");
        assert!(status.success(), "{status:?}: {}", g.log());
        assert!(g.log().contains("shutting down"), "{}", g.log());
    });
}

fn the_config_is_checked_at_start() {
    let cases = [
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: bedrock/claude}\n",
            "bedrock",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_key: os.environ/NOT_SET_ANYWHERE}\n",
            "NOT_SET_ANYWHERE",
        ),
        (
            "router_settings: {routing_strategy: latency-based-routing}\nmodel_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n",
            "latency-based-routing",
        ),
        ("model_list: [\n", "YAML"),
    ];
    for (yaml, says) in cases {
        match spawn(yaml, &[]) {
            Ok(g) => panic!("started on a bad config: {}", g.log()),
            Err((code, log)) => {
                assert_eq!(code, Some(2), "{log}");
                assert!(log.contains(says), "{says}: {log}");
            }
        }
    }
    // An unsupported key: named, and the gateway runs.
    let g = gateway(
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n\
         litellm_settings: {success_callback: [langfuse]}\n",
    );
    let log = g.log();
    assert!(log.contains("litellm_settings.success_callback"), "{log}");
    assert!(log.contains("master_key is not set"), "{log}");
}

fn non_openai_parameters_follow_drop_params() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.set_default(Reply::text(["ok"]));
        let config = |drop: bool| {
            format!(
                "model_list:\n  - model_name: claude\n    litellm_params: {{model: anthropic/claude-x, api_base: \"{}\", api_key: k}}\n\
                 \x20 - model_name: gpt\n    litellm_params: {{model: openai/gpt-4o, api_base: \"{}\", api_key: k}}\n\
                 \x20 - model_name: gpt-alone\n    litellm_params: {{model: openai/gpt-4o, api_base: \"{}\", api_key: k}}\n\
                 router_settings: {{fallbacks: [{{gpt: [claude]}}]}}\n\
                 litellm_settings: {{drop_params: {drop}}}\ngeneral_settings: {{master_key: {MASTER}}}\n",
                server.anthropic_url(),
                server.openai_url(),
                server.openai_url()
            )
        };
        let with_seed = |model| {
            let mut body = chat(model, false);
            body["seed"] = json!(3);
            body
        };
        let g = gateway(&config(false));
        // Refused for Anthropic, and for a model that may fall back to it.
        for model in ["claude", "gpt"] {
            let (status, _, value) = answer(post(&g, &with_seed(model)).await).await;
            assert_eq!(status, 400, "{model}: {value}");
            assert_eq!(value["error"]["param"], "seed", "{model}");
        }
        assert_eq!(server.request_count(), 0);
        // Passed on where only OpenAI's wire can serve it.
        let (status, _, value) = answer(post(&g, &with_seed("gpt-alone")).await).await;
        assert_eq!(status, 200, "{value}");
        assert_eq!(server.requests()[0].json()["seed"], 3);
        drop(g);
        let g = gateway(&config(true));
        let (status, _, value) = answer(post(&g, &with_seed("claude")).await).await;
        assert_eq!(status, 200, "{value}");
        assert!(server.requests()[1].json().get("seed").is_none());
    });
}

/// Three gateways on one Redis, each given the same config.
/// `router` is more of `router_settings`, indented.
fn three_gateways(yaml: &str, router: &str) -> (redis_server::RedisServer, Vec<Gateway>) {
    let redis = redis_server::RedisServer::start();
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let yaml =
        format!("{yaml}router_settings:\n  redis_host: 127.0.0.1\n  redis_port: {port}\n{router}");
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    // Three debug builds, Redis, the upstream and 150 calls at once on two
    // cores: a Redis step can wait past the 50 ms default for a core, and
    // the gateway would rightly go on alone. These tests are about sharing
    // (outages are tests/redis.rs's), so the budget is LiteLLM's
    // REDIS_SOCKET_TIMEOUT of 1 s.
    let env = [
        ("LLM_TOWER_CREDENTIAL_KEY", key),
        ("REDIS_SOCKET_TIMEOUT", "1"),
    ];
    let gateways = (0..3).map(|_| gateway_with(&yaml, &env)).collect();
    (redis, gateways)
}

/// What each gateway logged, for a failure's message.
fn logs(gateways: &[Gateway]) -> String {
    gateways
        .iter()
        .enumerate()
        .map(|(i, g)| format!("--- gateway {i}:\n{}", g.log()))
        .collect()
}

fn three_gateways_keep_one_rpm_budget() {
    runtime().block_on(async {
        let server = MockServer::start().await;
        server.limit_requests(60);
        server.set_default(Reply::text(["ok"]));
        let yaml = format!(
            "model_list:\n  - model_name: gpt\n    litellm_params: {{model: openai/gpt-4o, api_base: \"{}\", api_key: k, rpm: 60}}\n\
             litellm_settings: {{request_timeout: 5}}\ngeneral_settings: {{master_key: {MASTER}}}\n",
            server.openai_url()
        );
        let (_redis, gateways) = three_gateways(&yaml, "");
        let started = Instant::now();
        let calls = (0..150).map(|i| {
            let g = &gateways[i % 3];
            async move { post(g, &chat("gpt", false)).await.status().as_u16() }
        });
        let statuses = futures_util::future::join_all(calls).await;
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(50), "took {elapsed:?}");
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        let logs = logs(&gateways);
        let sent = server.request_count();
        assert_eq!(server.rate_limited_count(), 0, "the upstream answered 429\n{logs}");
        // Never more than the budget. Fewer is possible: the provider's
        // rate-limit headers are taken in by 100 ms granules, and a call
        // booked in the granule an answer arrived in counts as not in that
        // answer's `remaining` even when it was (the books err towards
        // fewer calls, README "Many processes"). A loaded machine sees a
        // few such calls.
        assert!((45..=60).contains(&sent), "sent {sent}; statuses: {statuses:?}\n{logs}");
        assert_eq!(ok, sent, "{logs}");
        assert_eq!(limited, 150 - sent, "statuses: {statuses:?}\n{logs}");
        for g in &gateways {
            g.assert_no_secret();
        }
    });
}

fn three_gateways_share_cooldowns_and_credentials() {
    runtime().block_on(async {
        let busy = MockServer::start().await;
        busy.set_default(Reply::api_error(529, "overloaded_error", "Overloaded"));
        let fine = MockServer::start().await;
        fine.set_default(Reply::text(["ok"]));
        fine.accept_keys(["sk-fresh-from-command"]);
        let count = std::env::temp_dir().join(format!("llm-tower-gw-refresh-{}", std::process::id()));
        let _ = std::fs::remove_file(&count);
        let command = format!("echo x >> {}; sleep 0.2; echo sk-fresh-from-command", count.display());
        let yaml = format!(
            "model_list:\n\
             - model_name: claude\n  litellm_params: {{model: anthropic/claude-a, api_base: \"{}\", api_key: k}}\n\
             - model_name: claude\n  litellm_params:\n    model: anthropic/claude-b\n    api_base: \"{}\"\n    \
             api_key: os.environ/UPSTREAM_KEY\n    api_key_command: [sh, -c, \"{command}\"]\n\
             litellm_settings: {{num_retries: 1}}\n\
             general_settings: {{master_key: {MASTER}}}\n",
            busy.anthropic_url(),
            fine.anthropic_url()
        );
        let (_redis, gateways) = three_gateways(&yaml, "  cooldown_time: 60\n");
        // Cooldowns: allowed_fails defaults to 3; once the busy
        // deployment was cooled in one gateway, no gateway sends to it.
        let mut calls = 0;
        let g0 = &gateways[0];
        while busy.request_count() < 3 {
            calls += 1;
            assert!(calls < 200, "the busy deployment was never cooled");
            let (status, _, body) = answer(post(g0, &chat("claude", false)).await).await;
            assert_eq!(status, 200, "{body}");
        }
        let cooled = busy.request_count();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let others = (0..40).map(|i| {
            let g = &gateways[1 + i % 2];
            async move { answer(post(g, &chat("claude", false)).await).await.0 }
        });
        let statuses = futures_util::future::join_all(others).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        assert_eq!(
            busy.request_count(),
            cooled,
            "a cooled deployment was called\n{}",
            logs(&gateways)
        );
        // Credentials: every gateway met the 401 once; one ran the command.
        let runs = std::fs::read_to_string(&count).unwrap_or_default();
        assert_eq!(runs.lines().count(), 1, "the key command ran {} times", runs.lines().count());
        let _ = std::fs::remove_file(&count);
        for g in &gateways {
            g.assert_no_secret();
        }
    });
}

/// A Python with the `openai` package, in a venv under the target dir:
/// made (and the package installed from PyPI) on first use.
fn python_client() -> Result<PathBuf, String> {
    let python = redis_server::which("python3").ok_or("no python3 on PATH")?;
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let bin = venv.join("bin").join("python");
    let ready = venv.join(".installed");
    if ready.exists() {
        return Ok(bin);
    }
    let status = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !status.success() {
        return Err("python3 -m venv failed".into());
    }
    let install = Command::new(&bin)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "openai==3.63.0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !install.status.success() {
        return Err(format!(
            "pip install openai failed: {}",
            String::from_utf8_lossy(&install.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    std::fs::write(&ready, "").map_err(|e| e.to_string())?;
    Ok(bin)
}

const PYTHON_SCRIPT: &str = r#"
import json, os, sys
from openai import OpenAI
client = OpenAI(base_url=os.environ["GATEWAY_URL"], api_key=os.environ["GATEWAY_KEY"], max_retries=0)
text = ""
chunks = 0
for chunk in client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}):
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage.total_tokens
tools = [{"type": "function", "function": {"name": "get_weather", "parameters":
          {"type": "object", "properties": {"city": {"type": "string"}}}}}]
name, args = None, ""
for chunk in client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True):
    for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        name = call.function.name or name
        args += call.function.arguments or ""
whole = client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
models = [m.id for m in client.models.list()]
print(json.dumps({"text": text, "chunks": chunks, "usage": usage, "tool": name,
                  "args": json.loads(args), "whole": whole.choices[0].message.content,
                  "models": models}))
"#;

fn openai_python_client(python: Result<&PathBuf, &String>) -> Result<(), Failed> {
    let python = python.map_err(|e| Failed::from(e.as_str()))?.clone();
    runtime().block_on(async move {
        let server = MockServer::start().await;
        server.push(Reply::text(["Hello", " from", " Python"]));
        server.push(Reply::tool_call(
            "call_9",
            "get_weather",
            ["{\"city\":", "\"Oslo\"}"],
        ));
        server.push(Reply::text(["whole"]));
        let g = gateway(&one_model(&server, ""));
        let output = tokio::process::Command::new(&python)
            .args(["-c", PYTHON_SCRIPT])
            .env("GATEWAY_URL", g.url("/v1"))
            .env("GATEWAY_KEY", MASTER)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .map_err(|_| Failed::from("the Python client ran over 60 s"))?
            .map_err(|e| Failed::from(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(
                format!("python failed: {}", String::from_utf8_lossy(&output.stderr)).into(),
            );
        }
        let v: Value = serde_json::from_str(stdout.trim())
            .map_err(|e| Failed::from(format!("{e}: {stdout}")))?;
        assert_eq!(v["text"], "Hello from Python", "{v}");
        assert!(v["usage"].as_u64().unwrap_or(0) > 0, "{v}");
        assert_eq!(v["tool"], "get_weather", "{v}");
        assert_eq!(v["args"], json!({"city": "Oslo"}), "{v}");
        assert_eq!(v["whole"], "whole", "{v}");
        assert_eq!(v["models"], json!(["gpt"]), "{v}");
        Ok(())
    })
}
