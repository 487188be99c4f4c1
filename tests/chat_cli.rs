//! The `chat` example as a process: its help, exit codes and error lines.
//!
//! Runs the built example, `target/<profile>/examples/chat`. A plain
//! `cargo test` builds the examples before it runs the tests; with a target
//! filter (`cargo test --test chat_cli`) build it first:
//! `cargo build --example chat --all-features`.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use llm_tower::mock::{MockServer, Reply};
use tokio::process::Command;

mod support;

/// The longest any run may take before the test gives up on it.
const KILL_AFTER: Duration = Duration::from_secs(30);

/// The example's binary.
fn chat_exe() -> PathBuf {
    support::example_exe("chat")
}

/// Runs chat with `args`, keys set the way a test wants, and kills it if it
/// outlives [`KILL_AFTER`].
async fn chat(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut command = Command::new(chat_exe());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_remove("RUST_LOG");
    for var in [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GROQ_API_KEY",
        "AZURE_OPENAI_API_KEY",
    ] {
        command.env_remove(var);
    }
    command.env("OPENAI_API_KEY", "sk-test");
    for (name, value) in env {
        command.env(name, value);
    }
    let started = Instant::now();
    let child = command.spawn().expect("chat starts");
    match tokio::time::timeout(KILL_AFTER, child.wait_with_output()).await {
        Ok(output) => (output.expect("chat's output"), started.elapsed()),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => panic!("chat {args:?} still running after {KILL_AFTER:?}: killed"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one JSON object on stderr that says what failed.
fn json_error(output: &Output) -> serde_json::Value {
    let stderr = stderr(output);
    let line = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line on stderr: {stderr}"));
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(value["error"].is_object(), "{value}");
    value
}

#[tokio::test(flavor = "multi_thread")]
async fn help_lists_flags_providers_and_key_variables() {
    let (out, _) = chat(&["--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    for needle in [
        "--provider",
        "--base-url",
        "--model",
        "--no-stream",
        "--max-retries",
        "--timeout",
        "--first-event-timeout",
        "--idle-timeout",
        "--api-key-cmd",
        "--json",
        "PROMPT",
        "openai",
        "openai-responses",
        "azure",
        "AZURE_OPENAI_API_KEY",
        "anthropic",
        "gemini",
        "groq",
        "ollama",
        "llamacpp",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GROQ_API_KEY",
        "[default: 600]",
        "[default: 120]",
        "[default: 60]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    for preset in llm_tower::Preset::ALL {
        assert!(help.contains(preset.name()), "--help lacks {preset}");
        if let Some(var) = preset.api_key_env() {
            assert!(help.contains(var), "--help lacks {var}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2() {
    for args in [
        &["--no-such-flag", "hi"][..],
        &[][..],
        &["--provider", "nope", "hi"][..],
        &["--provider", "groq", "hi"][..], // a preset needs --model
        &["--provider", "azure", "--model", "dep", "hi"][..], // and azure --base-url
        &[
            "--provider",
            "azure",
            "--base-url",
            "https://x.openai.azure.com",
            "hi",
        ][..],
        &["--max-retries", "many", "hi"][..],
        &["--timeout", "-1", "hi"][..],
    ] {
        let (out, _) = chat(args, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_is_a_transport_error() {
    let args = [
        "--provider",
        "ANTHROPIC",
        "--base-url",
        "http://127.0.0.1:1",
        "--max-retries",
        "0",
        "hi",
    ];
    let (out, _) = chat(&args, &[("ANTHROPIC_API_KEY", "sk-ant-test")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.lines().any(|l| l.starts_with("error[transport]")),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    let mut json_args = args.to_vec();
    json_args.insert(0, "--json");
    let (out, _) = chat(&json_args, &[("ANTHROPIC_API_KEY", "sk-ant-test")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("error["), "{}", stderr(&out));
    let value = json_error(&out);
    assert_eq!(value["error"]["kind"], "transport", "{value}");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_warns_but_not_for_local_presets() {
    let server = MockServer::start().await;
    let openai_url = server.openai_url();
    let anthropic_url = server.anthropic_url();
    let warned = |out: &Output, var: &str| {
        stderr(out)
            .lines()
            .any(|l| l.starts_with("warning") && l.contains(var))
    };
    // A provider that takes a key warns without one, wherever it points:
    // the call still goes out (this server takes any key, or none).
    for (args, var) in [
        (
            vec![
                "--provider",
                "groq",
                "--model",
                "m",
                "--base-url",
                &openai_url,
            ],
            "GROQ_API_KEY",
        ),
        (
            vec!["--provider", "anthropic", "--base-url", &anthropic_url],
            "ANTHROPIC_API_KEY",
        ),
    ] {
        server.push(Reply::text(["ok"]));
        let mut args = args;
        args.push("hi");
        let (out, _) = chat(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(warned(&out, var), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "ok\n");
    }
    // The key variable set, or a key command given: no warning.
    server.push(Reply::text(["ok"]));
    let (out, _) = chat(
        &[
            "--provider",
            "groq",
            "--model",
            "m",
            "--base-url",
            &openai_url,
            "hi",
        ],
        &[("GROQ_API_KEY", "gsk-test")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    // The presets of servers that run here and take no key by default.
    for preset in ["Ollama", "vllm", "LLAMACPP"] {
        server.push(Reply::text(["ok"]));
        let args = [
            "--provider",
            preset,
            "--model",
            "m",
            "--base-url",
            &openai_url,
            "hi",
        ];
        let (out, _) = chat(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("warning"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(server.request_count(), 6);
}

/// A call that failed after its retries says how many requests it sent, in
/// the error line, in the JSON error, and (with `RUST_LOG`) as a warning.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_failure_says_how_many_attempts() {
    let server = MockServer::start().await;
    server.set_default(Reply::api_error(500, "server_error", "down"));
    let url = server.openai_url();
    let args = ["--max-retries", "2", "--base-url", &url, "hi"];
    let (out, _) = chat(&args, &[("RUST_LOG", "llm_tower=warn"), ("NO_COLOR", "1")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("error[server]"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.ends_with("(after 3 attempts)"), "{line}");
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains("failed after 3 attempts")),
        "{err}"
    );
    assert_eq!(server.request_count(), 3);

    let mut json_args = args.to_vec();
    json_args.insert(0, "--json");
    let (out, _) = chat(&json_args, &[]).await;
    assert_eq!(json_error(&out)["error"]["attempts"], 3);
    assert_eq!(server.request_count(), 6);

    // Not retried: one attempt, and the line says nothing of attempts.
    let (out, _) = chat(&["--max-retries", "0", "--base-url", &url, "hi"], &[]).await;
    let err = stderr(&out);
    assert!(err.starts_with("error[server]"), "{err}");
    assert!(!err.contains("attempts"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_responses_answers_from_the_mock_server_with_the_openai_key() {
    let server = MockServer::start().await;
    server.accept_keys(["sk-from-env"]);
    server.push(Reply::text(["Low", " tide", " at", " 12:25."]));
    let url = server.openai_url();
    let (out, _) = chat(
        &[
            "--provider",
            "openai-responses",
            "--base-url",
            &url,
            "--model",
            "gpt-5-mini",
            "When?",
        ],
        &[("OPENAI_API_KEY", "sk-from-env")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Low tide at 12:25.\n");
    let requests = server.requests();
    assert!(
        requests[0].path.ends_with("/v1/responses"),
        "{}",
        requests[0].path
    );
    let body = requests[0].json();
    assert_eq!(body["model"], "gpt-5-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["input"][0]["content"][0]["text"], "When?");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_sends_the_azure_key_to_the_resource_for_the_deployment() {
    let server = MockServer::start().await;
    server.accept_keys(["az-from-env"]);
    server.push(Reply::text(["Slack", " water."]));
    let url = server.url();
    let (out, _) = chat(
        &[
            "--provider",
            "azure",
            "--base-url",
            &url,
            "--model",
            "gpt-4o-prod",
            "Tide?",
        ],
        &[("AZURE_OPENAI_API_KEY", "az-from-env")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Slack water.\n");
    let r = &server.requests()[0];
    assert_eq!(r.path, "/openai/v1/chat/completions");
    assert_eq!(r.header("api-key"), Some("az-from-env"));
    assert_eq!(r.json()["model"], "gpt-4o-prod");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_from_the_mock_server() {
    let server = MockServer::start().await;
    server.push(Reply::text(["High", " tide", " at", " 06:12."]));
    let url = server.openai_url();
    let (out, _) = chat(&["--base-url", &url, "When", "is", "high", "tide?"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "High tide at 06:12.\n");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(
        server.requests()[0].json()["messages"][0]["content"],
        "When is high tide?"
    );

    server.push(Reply::text(["High", " tide"]));
    let (out, _) = chat(&["--json", "--no-stream", "--base-url", &url, "hi"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(value["text"], "High tide", "{value}");
    assert_eq!(value["attempts"], 1, "{value}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stall_before_output_times_out() {
    let server = MockServer::start().await;
    server.push(Reply::text(["never", " sent"]).stall_after(0));
    let url = server.openai_url();
    let (out, elapsed) = chat(
        &[
            "--first-event-timeout",
            "1",
            "--max-retries",
            "0",
            "--base-url",
            &url,
            "hi",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.lines().any(|l| l.starts_with("error[timeout]")),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_total_timeout_covers_retries() {
    let server = MockServer::start().await;
    server.set_default(Reply::text(["never"]).stall_after(0));
    let url = server.openai_url();
    // Each attempt would wait 1 s for its first event, and there are many:
    // the total deadline of 2 s ends it all.
    let (out, elapsed) = chat(
        &[
            "--json",
            "--timeout",
            "2",
            "--first-event-timeout",
            "1",
            "--max-retries",
            "50",
            "--base-url",
            &url,
            "hi",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(json_error(&out)["error"]["kind"], "timeout");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_turns_a_limit_off() {
    let server = MockServer::start().await;
    server.push(Reply::text(["slow", " but", " there"]).delay(Duration::from_millis(300)));
    let url = server.openai_url();
    let (out, _) = chat(
        &[
            "--timeout",
            "0",
            "--first-event-timeout",
            "0",
            "--idle-timeout",
            "0",
            "--base-url",
            &url,
            "hi",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "slow but there\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_log_shows_retries_on_stderr() {
    let server = MockServer::start().await;
    server.push(Reply::reset());
    server.push(Reply::text(["ok"]));
    let url = server.openai_url();
    let (out, _) = chat(
        &["--base-url", &url, "hi"],
        &[("RUST_LOG", "llm_tower=debug"), ("NO_COLOR", "1")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok\n");
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));
}
