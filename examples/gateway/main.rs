//! An OpenAI-compatible gateway built from the crate, that reads LiteLLM's
//! proxy `config.yaml`.
//!
//! ```text
//! cargo run --release --example gateway -- --config FILE [--host H] [--port P]
//!     [--grace SECS] [--client-timeout SECS]
//! ```
//!
//! Serves `POST /v1/chat/completions` (and `/chat/completions`), streaming
//! or not, in OpenAI's wire format, translated to whichever provider serves
//! the model; `GET /v1/models`; `GET /health/liveliness` and
//! `/health/readiness`; `GET /metrics` in Prometheus's text format (the
//! GenAI client histograms, the pools' and rate limits' instruments, the
//! gateway's requests).
//!
//! The README's "Gateway" section lists the keys of `config.yaml` it reads
//! and what each becomes. Keys it does not read are named in a warning at
//! start; a value it cannot honour stops it with an error (exit code 2).
//!
//! `--port 0` takes a free port; the address is on stderr: `listening on
//! http://ADDR`. On SIGTERM or Ctrl-C it stops accepting and lets open
//! streams finish for `--grace` seconds (default 30). A client has
//! `--client-timeout` seconds (default 30) to send a request's headers, and
//! as long for its body.
//! `RUST_LOG` sets what is logged to stderr (default `warn,gateway=info`).
//! With `router_settings.redis_host`, shared credentials are sealed with
//! the key in `LLM_TOWER_CREDENTIAL_KEY` (64 hex digits, the same for every
//! gateway).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use llm_tower::redis::{CredentialKey, RedisStore};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;

mod config;
mod openai;
mod server;
mod stack;

/// Where the key that seals credentials on Redis comes from.
pub const CREDENTIAL_KEY_ENV: &str = "LLM_TOWER_CREDENTIAL_KEY";

/// An OpenAI-compatible gateway that reads LiteLLM's config.yaml.
#[derive(Debug, Parser)]
#[command(name = "gateway")]
struct Args {
    /// LiteLLM's proxy configuration (model_list, router_settings,
    /// litellm_settings, general_settings).
    #[arg(long, value_name = "FILE")]
    config: std::path::PathBuf,

    /// The address to listen on.
    #[arg(long, value_name = "H", default_value = "0.0.0.0")]
    host: String,

    /// The port to listen on; 0 for any free one.
    #[arg(long, value_name = "P", default_value_t = 4000)]
    port: u16,

    /// After SIGTERM or Ctrl-C, how long open streams may take to finish,
    /// in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    grace: f64,

    /// How long a client may take to send a request's headers, and then its
    /// body, in seconds; a kept-alive connection idle as long is closed.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    client_timeout: f64,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,gateway=info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let grace = match Duration::try_from_secs_f64(args.grace) {
        Ok(d) => d,
        Err(_) => {
            eprintln!("error: --grace: not a number of seconds");
            return ExitCode::from(2);
        }
    };
    let client_timeout = match Duration::try_from_secs_f64(args.client_timeout) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => d,
        _ => {
            eprintln!("error: --client-timeout: not a number of seconds above 0 and at most 3600");
            return ExitCode::from(2);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let config = match config::load(&args.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !config.ignored.is_empty() {
        tracing::warn!(
            keys = %config.ignored.join(", "),
            "config: these keys are not supported by this gateway and are ignored"
        );
    }
    let app = match start(&config, client_timeout) {
        Ok(app) => Arc::new(app),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if config.master_key.is_none() {
        tracing::warn!(
            "general_settings.master_key is not set: anyone who can reach the port may call"
        );
    }
    let addr = format!("{}:{}", args.host, args.port);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local: SocketAddr = listener
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    tracing::info!(
        models = %config.models.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", "),
        redis = config.redis.is_some(),
        "listening on http://{local}"
    );
    match server::serve(listener, app, grace).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds what the server serves from the configuration.
fn start(config: &config::Config, client_timeout: Duration) -> Result<server::App, String> {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(|e| format!("metrics: {e}"))?;
    let provider = SdkMeterProvider::builder().with_reader(exporter).build();
    let meter = provider.meter("llm-tower-gateway");
    let store = match &config.redis {
        Some(r) => Some(
            match r.step_timeout {
                Some(t) => RedisStore::builder(r.url()).step_timeout(t),
                None => RedisStore::builder(r.url()),
            }
            .build()
            .map_err(|e| format!("router_settings.redis_*: {e}"))?,
        ),
        None => None,
    };
    let credential_key = match std::env::var(CREDENTIAL_KEY_ENV) {
        Ok(hex) if !hex.is_empty() => Some(
            CredentialKey::from_hex(hex.trim())
                .map_err(|_| format!("{CREDENTIAL_KEY_ENV}: not 64 hex digits"))?,
        ),
        _ => None,
    };
    let models = stack::build(
        config,
        &stack::Shared {
            meter: &meter,
            store: store.as_ref(),
            credential_key: credential_key.as_ref(),
        },
    )?;
    Ok(server::App::new(
        config,
        models,
        store,
        registry,
        provider,
        &meter,
        client_timeout,
    ))
}
