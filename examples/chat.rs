//! A command-line client for OpenAI (Chat Completions and the Responses
//! API), Anthropic, Gemini and every OpenAI-compatible server.
//!
//! ```text
//! cargo run --example chat -- [--provider NAME] [--base-url URL]
//!     [--model M] [--no-stream] [--max-retries N] [--timeout SECS]
//!     [--first-event-timeout SECS] [--idle-timeout SECS] [--api-key-cmd CMD]
//!     [--json] PROMPT...
//! ```
//!
//! `cargo run --example chat -- --help` lists every option.
//!
//! NAME is `openai` (the default), `openai-responses` (OpenAI's Responses
//! API, with the same key and `--base-url`), `azure` (Azure OpenAI's v1 API:
//! `--base-url https://{resource}.openai.azure.com --model {deployment}`,
//! key from `AZURE_OPENAI_API_KEY`), `anthropic`, `gemini`, or a preset of an
//! OpenAI-compatible server: `xai`, `groq`, `together`, `openrouter`,
//! `deepseek`, `mistral`, `ollama`, `vllm`, `llamacpp` (these need
//! `--model`), in any case. `--base-url` is the API root: for Gemini
//! `https://generativelanguage.googleapis.com` unless given.
//!
//! Streams the answer's text to stdout as it arrives. The key comes from
//! `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY` or the preset's
//! variable (`GROQ_API_KEY`, …), or from `--api-key-cmd`, a shell command
//! whose trimmed output is the key, run again (once per call) when the
//! provider refuses the key. When neither gives a key, a warning goes to
//! stderr (not for the presets of servers that run on this machine and take
//! no key by default: `ollama`, `vllm`, `llamacpp`).
//!
//! Nothing waits forever: the whole call is bounded by `--timeout` (600 s,
//! as in the official SDKs), the wait for the first output by
//! `--first-event-timeout` (120 s: reasoning models may think long before
//! they write) and each wait for the next event by `--idle-timeout` (60 s).
//! `0` turns a limit off. A stall before any output is retried (up to
//! `--max-retries`); the total deadline covers the retries.
//!
//! `--json` prints the folded answer as one JSON object on stdout instead.
//!
//! Exit codes: 0 on success; 2 for a usage error (unknown option, missing
//! prompt, a preset without `--model`, …); 1 when the call failed, with one
//! line on stderr, `error[CLASS]: message`, CLASS being `Error::kind()`
//! (`unauthorized`, `rate_limited`, `transport`, `timeout`, …), ending in
//! `(after N attempts)` when the call was sent more than once. With
//! `--json` that line is a JSON object instead, still on stderr (stdout only
//! ever holds an answer):
//! `{"error":{"kind":"timeout","message":"…","retryable":true,"attempts":1}}`,
//! with a `"partial"` completion when output had arrived before the failure.
//!
//! `RUST_LOG` turns on the library's tracing, to stderr: for example
//! `RUST_LOG=llm_tower=debug` shows each retry decision. Off by default.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use futures_util::StreamExt;
use llm_tower::{
    Anthropic, Attempts, ChatRequest, ChatStream, CompletionBuilder, Credential, Error, Gemini,
    Message, OpenAi, OpenAiResponses, Preset, RefreshLayer, RetryPolicy, StreamEvent,
    StreamTimeoutLayer, TransportRetryLayer,
};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

/// Ask a model one question and print its answer.
///
/// Streams the answer's text to stdout as it arrives. Exit code 0 on
/// success, 2 for a usage error, 1 when the call failed (with
/// `error[CLASS]: message` on stderr, or a JSON object there with --json).
#[derive(Debug, Parser)]
#[command(name = "chat", after_help = providers_help())]
struct Args {
    /// Who answers: openai, openai-responses, azure, anthropic, gemini or a preset (see PROVIDERS
    /// below), in any case.
    #[arg(long, value_name = "NAME", default_value = "openai", value_parser = parse_provider)]
    provider: Provider,

    /// The API root, instead of the provider's (e.g. http://127.0.0.1:8000/v1
    /// for a local OpenAI-compatible server).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,

    /// The model [default: gpt-4o-mini, claude-sonnet-4-5 or
    /// gemini-2.5-flash; required for a preset].
    #[arg(long, value_name = "M")]
    model: Option<String>,

    /// Ask for the whole answer at once instead of a stream.
    #[arg(long)]
    no_stream: bool,

    /// How many times a failed call is sent again (only failures before any
    /// output, and only retryable ones: connection errors, timeouts, 429,
    /// 5xx, ...).
    #[arg(long, value_name = "N", default_value_t = 2)]
    max_retries: u32,

    /// The longest the whole call may take, retries and stream included, in
    /// seconds (fractions allowed); 0 for no limit.
    #[arg(long, value_name = "SECS", default_value = "600", value_parser = parse_limit, allow_negative_numbers = true)]
    timeout: Limit,

    /// The longest wait for the answer's first output (text, reasoning, a
    /// tool call), per attempt, in seconds; 0 for no limit. A stall is
    /// retried.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_limit, allow_negative_numbers = true)]
    first_event_timeout: Limit,

    /// The longest wait for the stream's next event, in seconds; 0 for no
    /// limit.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_limit, allow_negative_numbers = true)]
    idle_timeout: Limit,

    /// A shell command whose trimmed output is the API key, run for the
    /// first call and again once if the provider refuses the key (instead of
    /// the provider's key variable).
    #[arg(long, value_name = "CMD")]
    api_key_cmd: Option<String>,

    /// Print the folded answer as one JSON object on stdout (and a failure
    /// as a JSON object on stderr).
    #[arg(long)]
    json: bool,

    /// The question; several words are joined with spaces. Put `--` before
    /// a prompt that starts with `-`.
    #[arg(value_name = "PROMPT", required = true)]
    prompt: Vec<String>,
}

/// Who answers.
#[derive(Debug, Clone, Copy)]
enum Provider {
    OpenAi,
    OpenAiResponses,
    Azure,
    Anthropic,
    Gemini,
    Preset(Preset),
}

impl Provider {
    /// The environment variable the key is read from, if the provider takes
    /// one.
    fn key_env(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi | Provider::OpenAiResponses => Some("OPENAI_API_KEY"),
            Provider::Azure => Some("AZURE_OPENAI_API_KEY"),
            Provider::Anthropic => Some("ANTHROPIC_API_KEY"),
            Provider::Gemini => Some("GEMINI_API_KEY"),
            Provider::Preset(p) => p.api_key_env(),
        }
    }

    /// Where the provider listens unless `--base-url` says otherwise.
    fn default_base_url(self) -> &'static str {
        match self {
            Provider::OpenAi | Provider::OpenAiResponses => "https://api.openai.com/v1",
            // Each resource has its own: --base-url is required.
            Provider::Azure => "",
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::Gemini => "https://generativelanguage.googleapis.com",
            Provider::Preset(p) => p.base_url(),
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::OpenAi => f.write_str("openai"),
            Provider::OpenAiResponses => f.write_str("openai-responses"),
            Provider::Azure => f.write_str("azure"),
            Provider::Anthropic => f.write_str("anthropic"),
            Provider::Gemini => f.write_str("gemini"),
            Provider::Preset(p) => write!(f, "{p}"),
        }
    }
}

/// Every provider name, in the order the help lists them.
fn all_providers() -> impl Iterator<Item = Provider> {
    [
        Provider::OpenAi,
        Provider::OpenAiResponses,
        Provider::Azure,
        Provider::Anthropic,
        Provider::Gemini,
    ]
    .into_iter()
    .chain(Preset::ALL.into_iter().map(Provider::Preset))
}

fn parse_provider(name: &str) -> Result<Provider, String> {
    match name.to_ascii_lowercase().as_str() {
        "openai" => Ok(Provider::OpenAi),
        "openai-responses" => Ok(Provider::OpenAiResponses),
        "azure" => Ok(Provider::Azure),
        "anthropic" => Ok(Provider::Anthropic),
        "gemini" => Ok(Provider::Gemini),
        other => Preset::from_name(other)
            .map(Provider::Preset)
            .ok_or_else(|| {
                let names: Vec<String> = all_providers().map(|p| p.to_string()).collect();
                format!("unknown provider; use one of {}", names.join(", "))
            }),
    }
}

/// The PROVIDERS table at the end of `--help`.
fn providers_help() -> String {
    let mut help = String::from("PROVIDERS (--provider NAME) and where their key comes from:\n");
    for provider in all_providers() {
        let key = match (provider, provider.key_env()) {
            (_, None) => "no key".to_owned(),
            (Provider::Preset(p), Some(var)) if is_local(p.base_url()) => {
                format!("{var}, if the server has one")
            }
            (_, Some(var)) => var.to_owned(),
        };
        let note = match provider {
            Provider::OpenAi => " (the default)".to_owned(),
            Provider::Azure => {
                "; needs --base-url https://{resource}.openai.azure.com and --model {deployment}"
                    .to_owned()
            }
            Provider::Preset(p) => format!(", at {}; needs --model", p.base_url()),
            _ => String::new(),
        };
        help.push_str(&format!("  {:<16} {key}{note}\n", provider.to_string()));
    }
    help.push_str(
        "\nInstead of the variable, --api-key-cmd may give the key. Without either, a \
         warning goes to stderr (not for ollama, vllm or llamacpp, which take no key by \
         default).\n\
         \nRUST_LOG turns on the library's tracing on stderr, e.g. RUST_LOG=llm_tower=debug \
         shows retries.",
    );
    help
}

/// A time limit; `None` is no limit.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<Duration>);

/// Seconds, fractions allowed; `0` is no limit.
fn parse_limit(text: &str) -> Result<Limit, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| "not a number of seconds".to_owned())?;
    if seconds == 0.0 {
        return Ok(Limit(None));
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .map(|d| Limit(Some(d)))
        .ok_or_else(|| "not a positive number of seconds (or 0 for no limit)".to_owned())
}

/// Whether a URL's host is this machine.
fn is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Exits with a usage error (code 2), the way clap does.
fn usage_error(kind: clap::error::ErrorKind, message: impl std::fmt::Display) -> ! {
    Args::command().error(kind, message).exit()
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

fn env_key(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|k| !k.is_empty())
}

fn build(args: &Args) -> Result<ChatService, String> {
    let config_error = |e: Error| e.to_string();
    let model = |default: &str| args.model.clone().unwrap_or_else(|| default.to_owned());
    let service: ChatService = match args.provider {
        Provider::OpenAi => {
            let mut b = OpenAi::builder().model(model("gpt-4o-mini"));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            if let Some(k) = env_key("OPENAI_API_KEY") {
                b = b.api_key(k);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        Provider::OpenAiResponses => {
            let mut b = OpenAiResponses::builder().model(model("gpt-5-mini"));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            if let Some(k) = env_key("OPENAI_API_KEY") {
                b = b.api_key(k);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        Provider::Azure => {
            // main checked that --base-url and --model are there; the key
            // comes from AZURE_OPENAI_API_KEY.
            let b = OpenAi::azure(args.base_url.clone().unwrap_or_default()).model(model(""));
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        Provider::Anthropic => {
            let mut b = Anthropic::builder().model(model("claude-sonnet-4-5"));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            if let Some(k) = env_key("ANTHROPIC_API_KEY") {
                b = b.api_key(k);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        Provider::Gemini => {
            let mut b = Gemini::builder().model(model("gemini-2.5-flash"));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            if let Some(k) = env_key("GEMINI_API_KEY") {
                b = b.api_key(k);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
        Provider::Preset(preset) => {
            // main checked that --model is there.
            let mut b = OpenAi::preset(preset).model(model(""));
            if let Some(url) = &args.base_url {
                b = b.base_url(url);
            }
            BoxCloneService::new(b.build().map_err(config_error)?)
        }
    };
    // First-event and idle timeouts inside the retry layer: a stream that
    // stalls before output is cut and sent again.
    let mut timeouts = StreamTimeoutLayer::new();
    if let Limit(Some(t)) = args.first_event_timeout {
        timeouts = timeouts.first_event(t);
    }
    if let Limit(Some(t)) = args.idle_timeout {
        timeouts = timeouts.idle(t);
    }
    let retry = TransportRetryLayer::new(RetryPolicy::default().max_retries(args.max_retries));
    let mut service = BoxCloneService::new(retry.layer(timeouts.layer(service)));
    if let Some(cmd) = args.api_key_cmd.clone() {
        // The command gives the key for the first call, and again once if
        // the provider refuses it.
        let refresh = RefreshLayer::new(move || {
            let cmd = cmd.clone();
            async move {
                // Sent the way each provider takes its key.
                Ok::<_, String>(Credential::api_key(run_key_cmd(cmd).await?))
            }
        });
        service = BoxCloneService::new(refresh.layer(service));
    }
    // The total deadline outermost: it covers retries and refreshes, and the
    // layers inside do not start a wait that would outlast it.
    if let Limit(Some(t)) = args.timeout {
        service = BoxCloneService::new(StreamTimeoutLayer::new().total(t).layer(service));
    }
    Ok(service)
}

async fn run(args: &Args, attempts: &Attempts) -> Result<(), Error> {
    let service = build(args).map_err(|message| Error::Config { message })?;
    let mut request = ChatRequest::new("")
        .message(Message::user(args.prompt.join(" ")))
        .stream(!args.no_stream);
    // Counts the requests sent, whatever the outcome.
    request.extensions.insert(attempts.clone());
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

/// One line: what happened, and the root cause.
fn error_message(e: &Error) -> String {
    let mut message = e.to_string();
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let root = cause.to_string();
    if !message.contains(&root) {
        message = format!("{message}: {root}");
    }
    message.replace('\n', " ")
}

/// Tracing to stderr, as `RUST_LOG` says; off without it.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::OFF.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit with 2, --help and --version with 0.
    let args = Args::parse();
    if args.prompt.iter().all(|word| word.trim().is_empty()) {
        usage_error(clap::error::ErrorKind::InvalidValue, "the prompt is empty");
    }
    if let Provider::Azure = args.provider {
        for (flag, missing) in [
            ("--base-url", args.base_url.is_none()),
            ("--model", args.model.is_none()),
        ] {
            if missing {
                usage_error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!("--provider azure needs {flag}"),
                );
            }
        }
    }
    if let (Provider::Preset(preset), None) = (args.provider, &args.model) {
        usage_error(
            clap::error::ErrorKind::MissingRequiredArgument,
            format!("--provider {preset} needs --model"),
        );
    }
    init_tracing();
    if let Some(var) = args.provider.key_env() {
        // A server that runs on this machine by default (Ollama, vLLM,
        // llama.cpp) usually takes no key; every other provider does,
        // wherever --base-url points (a proxy on localhost passes the key on).
        let local = is_local(args.provider.default_base_url());
        if args.api_key_cmd.is_none() && env_key(var).is_none() && !local {
            eprintln!(
                "warning: {var} is not set and no --api-key-cmd is given: calling {} without a key",
                args.provider
            );
        }
    }
    let attempts = Attempts::new();
    match run(&args, &attempts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let attempts = attempts.get();
            if args.json {
                let mut error = serde_json::json!({
                    "kind": e.kind(),
                    "message": error_message(&e),
                    "retryable": e.is_retryable(),
                    "attempts": attempts,
                });
                if let Some(partial) = e.partial() {
                    error["partial"] = serde_json::to_value(partial).unwrap_or_default();
                }
                eprintln!("{}", serde_json::json!({ "error": error }));
            } else {
                let tries = match attempts {
                    0 | 1 => String::new(),
                    n => format!(" (after {n} attempts)"),
                };
                eprintln!("error[{}]: {}{tries}", e.kind(), error_message(&e));
            }
            ExitCode::FAILURE
        }
    }
}
