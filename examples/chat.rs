//! A command-line client for OpenAI, Anthropic, Gemini and every
//! OpenAI-compatible server.
//!
//! ```text
//! cargo run --example chat -- [--provider NAME] [--base-url URL]
//!     [--model M] [--no-stream] [--max-retries N] [--first-event-timeout SECS]
//!     [--idle-timeout SECS] [--api-key-cmd CMD] [--json] PROMPT
//! ```
//!
//! NAME is `openai` (the default), `anthropic`, `gemini`, or a preset of an
//! OpenAI-compatible server: `xai`, `groq`, `together`, `openrouter`,
//! `deepseek`, `mistral`, `ollama`, `vllm`, `llamacpp` (these need
//! `--model`). `--base-url` is the API root: for Gemini
//! `https://generativelanguage.googleapis.com` unless given.
//!
//! Streams the answer's text to stdout as it arrives. The key comes from
//! `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY` or the preset's
//! variable (`GROQ_API_KEY`, …), or from `--api-key-cmd`, a shell command
//! whose trimmed output is the key, run again (once per call) when the
//! provider refuses the key. `--json` prints the folded answer as one JSON
//! object instead. On failure: exit code 1 and one line on stderr,
//! `error[CLASS]: message`, CLASS being `Error::kind()` (`unauthorized`,
//! `rate_limited`, `transport`, …).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use llm_tower::{
    Anthropic, ChatRequest, ChatStream, CompletionBuilder, Credential, Error, Gemini, Message,
    OpenAi, Preset, RefreshLayer, RetryPolicy, StreamEvent, StreamTimeoutLayer,
    TransportRetryLayer,
};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

const USAGE: &str = "usage: chat [--provider openai|anthropic|gemini|PRESET] [--base-url URL] [--model M] \
[--no-stream] [--max-retries N] [--first-event-timeout SECS] [--idle-timeout SECS] \
[--api-key-cmd CMD] [--json] PROMPT";

#[derive(Debug)]
struct Args {
    provider: String,
    base_url: Option<String>,
    model: Option<String>,
    stream: bool,
    max_retries: u32,
    first_event_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    api_key_cmd: Option<String>,
    json: bool,
    prompt: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        provider: "openai".into(),
        base_url: None,
        model: None,
        stream: true,
        max_retries: 2,
        first_event_timeout: None,
        idle_timeout: None,
        api_key_cmd: None,
        json: false,
        prompt: String::new(),
    };
    let mut prompt = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--provider" => args.provider = value("--provider")?,
            "--base-url" => args.base_url = Some(value("--base-url")?),
            "--model" => args.model = Some(value("--model")?),
            "--no-stream" => args.stream = false,
            "--max-retries" => {
                args.max_retries = value("--max-retries")?
                    .parse()
                    .map_err(|_| "--max-retries takes a whole number".to_owned())?;
            }
            "--first-event-timeout" => {
                args.first_event_timeout = Some(seconds(value("--first-event-timeout")?)?)
            }
            "--idle-timeout" => args.idle_timeout = Some(seconds(value("--idle-timeout")?)?),
            "--api-key-cmd" => args.api_key_cmd = Some(value("--api-key-cmd")?),
            "--json" => args.json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            "--" => prompt.extend(it.by_ref()),
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option {flag}\n{USAGE}"));
            }
            word => prompt.push(word.to_owned()),
        }
    }
    args.prompt = prompt.join(" ");
    if args.prompt.is_empty() {
        return Err(format!("no prompt\n{USAGE}"));
    }
    Ok(args)
}

/// Seconds, fractions allowed, as a duration.
fn seconds(text: String) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

/// Runs the key command and returns its trimmed output.
async fn run_key_cmd(cmd: String) -> Result<String, String> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .await
        .map_err(|e| format!("cannot run --api-key-cmd: {e}"))?;
    if !out.status.success() {
        return Err(format!("--api-key-cmd exited with {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

type ChatService = BoxCloneService<ChatRequest, ChatStream, Error>;

fn build(args: &Args) -> Result<ChatService, String> {
    let env_key = |name: &str| std::env::var(name).ok().filter(|k| !k.is_empty());
    let config_error = |e: Error| e.to_string();
    let model = |default: &str| args.model.clone().unwrap_or_else(|| default.to_owned());
    let service: ChatService = match args.provider.as_str() {
        "openai" => {
            let mut b = OpenAi::builder().model(model("gpt-4o-mini"));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            if let Some(k) = env_key("OPENAI_API_KEY") {
                b = b.api_key(k);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        "anthropic" => {
            let mut b = Anthropic::builder().model(model("claude-sonnet-4-5"));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            if let Some(k) = env_key("ANTHROPIC_API_KEY") {
                b = b.api_key(k);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        "gemini" => {
            let mut b = Gemini::builder().model(model("gemini-2.5-flash"));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            if let Some(k) = env_key("GEMINI_API_KEY") {
                b = b.api_key(k);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        other => {
            let preset = Preset::from_name(other).ok_or_else(|| {
                let presets: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown provider {other:?}: use openai, anthropic, gemini or one of {}",
                    presets.join(", ")
                )
            })?;
            let model = args
                .model
                .clone()
                .ok_or_else(|| format!("--provider {preset} needs --model"))?;
            let mut b = OpenAi::preset(preset).model(model);
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
    };
    // Timeouts inside the retry layer: a stream that stalls before output is
    // cut and sent again.
    let mut timeouts = StreamTimeoutLayer::new();
    if let Some(t) = args.first_event_timeout {
        timeouts = timeouts.first_event(t);
    }
    if let Some(t) = args.idle_timeout {
        timeouts = timeouts.idle(t);
    }
    let retry = TransportRetryLayer::new(RetryPolicy::default().max_retries(args.max_retries));
    let service = BoxCloneService::new(retry.layer(timeouts.layer(service)));
    let Some(cmd) = args.api_key_cmd.clone() else {
        return Ok(service);
    };
    // The command gives the key for the first call, and again once if the
    // provider refuses it.
    let refresh = RefreshLayer::new(move || {
        let cmd = cmd.clone();
        async move {
            // Sent the way each provider takes its key.
            Ok::<_, String>(Credential::api_key(run_key_cmd(cmd).await?))
        }
    });
    Ok(BoxCloneService::new(refresh.layer(service)))
}

async fn run(args: Args) -> Result<(), Error> {
    let service = build(&args).map_err(|message| Error::Config { message })?;
    let request = ChatRequest::new("")
        .message(Message::user(args.prompt.clone()))
        .stream(args.stream);
    let mut stream = service.oneshot(request).await?;
    let attempts = stream.meta().attempts;
    let mut builder = CompletionBuilder::default();
    let mut stdout = std::io::stdout().lock();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                if !args.json && builder.has_output() {
                    let _ = writeln!(stdout);
                }
                return Err(builder.interrupted(e));
            }
        };
        if !args.json
            && let StreamEvent::TextDelta { text } = &event
        {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
        builder.push(&event);
    }
    let completion = builder.finish();
    if args.json {
        let mut value = serde_json::to_value(&completion).unwrap_or_default();
        value["attempts"] = attempts.into();
        let _ = writeln!(stdout, "{value}");
    } else {
        let _ = writeln!(stdout);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the class, what happened, and the root cause.
            let mut line = format!("error[{}]: {e}", e.kind());
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let root = cause.to_string();
            if !line.contains(&root) {
                line = format!("{line}: {root}");
            }
            eprintln!("{}", line.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
