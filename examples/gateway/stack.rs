//! The services the configuration describes: a provider per deployment
//! under its own layers, a pool per model name, and over each pool the
//! router's retries, fallbacks, deadline and trace.
//!
//! ```text
//! per model:       GenAiTraceLayer (span, the four GenAI histograms)
//!                  model name cleared (each deployment sends its own)
//!                  StreamTimeoutLayer total   router timeout: the whole call
//!                  FallbackLayer …            the fallbacks' pools, in order
//!                  TransportRetryLayer        num_retries, each to a deployment not yet tried
//!                  Pool                       allowed_fails, cooldown_time; cooldowns on Redis
//! per deployment:    RefreshLayer             api_key_command (single flight on Redis)
//!                    TransportRetryLayer      max_retries
//!                    RateLimitLayer           rpm, tpm (books on Redis), and the provider's headers
//!                    StreamConcurrencyLimit   max_parallel_requests
//!                    StreamTimeoutLayer       timeout (non-streaming), stream_timeout (streams)
//!                    provider
//! ```

use std::collections::HashMap;
use std::time::Duration;

use llm_tower::pool::Pool;
use llm_tower::redis::{CredentialKey, RedisStore};
use llm_tower::refresh::CommandSource;
use llm_tower::{
    Anthropic, AuthScheme, ChatRequest, ChatStream, Credential, Error, FallbackLayer, Gemini,
    GenAiTraceLayer, OpenAi, Preset, RateLimitLayer, RefreshLayer, RetryPolicy,
    StreamConcurrencyLimitLayer, StreamTimeoutLayer, TransportRetryLayer,
};
use opentelemetry::metrics::Meter;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder};

use crate::config::{Config, Deployment, ModelGroup, ProviderKind};

/// A service of the crate's shape, boxed.
pub type Chat = BoxCloneSyncService<ChatRequest, ChatStream, Error>;

/// What clients may call.
pub struct Models {
    /// By `model_name`.
    pub by_name: HashMap<String, Model>,
    /// The names in the order of the file, for `/v1/models`.
    pub names: Vec<String>,
}

/// One `model_name`.
pub struct Model {
    pub service: Chat,
    /// Whether every deployment speaks OpenAI's wire, so OpenAI-only
    /// parameters may be passed through.
    pub openai_wire: bool,
    pub owner: &'static str,
}

/// What the stacks share.
pub struct Shared<'a> {
    pub meter: &'a Meter,
    pub store: Option<&'a RedisStore>,
    pub credential_key: Option<&'a CredentialKey>,
}

/// How long a connection to a provider may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds every model's service.
pub fn build(config: &Config, shared: &Shared<'_>) -> Result<Models, String> {
    // Each model's pool under its retries: what a fallback calls too.
    let mut cores: HashMap<&str, Chat> = HashMap::new();
    for group in &config.models {
        cores.insert(&group.name, core(config, group, shared)?);
    }
    let mut by_name = HashMap::new();
    for group in &config.models {
        let mut service = cores[group.name.as_str()].clone();
        if let Some(chain) = config.router.fallbacks.get(&group.name) {
            // primary → chain[0] → chain[1] → …: each falls back to the rest.
            let mut rest: Option<Chat> = None;
            for name in chain.iter().rev() {
                let next = cores[name.as_str()].clone();
                rest = Some(match rest {
                    None => next,
                    Some(after) => Chat::new(fallback(after).layer(next)),
                });
            }
            if let Some(rest) = rest {
                service = Chat::new(fallback(rest).layer(service));
            }
        }
        let service = ServiceBuilder::new()
            .layer(GenAiTraceLayer::new().meter(shared.meter))
            // The span and the metrics name the model the client asked
            // for; each deployment then sends the model it serves.
            .map_request(|mut req: ChatRequest| {
                req.model = "".into();
                req
            })
            .layer(StreamTimeoutLayer::new().total(config.router.timeout))
            .service(service);
        let first = &group.deployments[0];
        // OpenAI-only parameters pass only when every deployment that may
        // serve the call speaks OpenAI's wire — its fallbacks' included.
        let chain = config.router.fallbacks.get(&group.name);
        let openai_wire = std::iter::once(&group.name)
            .chain(chain.into_iter().flatten())
            .filter_map(|name| config.models.iter().find(|g| &g.name == name))
            .flat_map(|g| &g.deployments)
            .all(|d| d.provider.is_openai_wire());
        by_name.insert(
            group.name.clone(),
            Model {
                service: Chat::new(service),
                openai_wire,
                owner: first.provider.owner(),
            },
        );
    }
    Ok(Models {
        by_name,
        names: config.models.iter().map(|g| g.name.clone()).collect(),
    })
}

/// Falls back on every failure but a request the client got wrong, which
/// would fail the same way anywhere.
fn fallback(secondary: Chat) -> FallbackLayer<Chat> {
    FallbackLayer::new(secondary).when(|e| {
        !matches!(e, Error::InvalidRequest { status, .. } if matches!(status.as_u16(), 400 | 413 | 422))
    })
}

/// A model's pool under the router's retries.
fn core(config: &Config, group: &ModelGroup, shared: &Shared<'_>) -> Result<Chat, String> {
    let mut pool = Pool::builder()
        .failures(config.router.allowed_fails, Duration::from_secs(60))
        .cooldown(config.router.cooldown)
        .meter(shared.meter);
    for d in &group.deployments {
        pool = pool.weighted_deployment(d.id.clone(), d.weight, deployment(d, shared)?);
    }
    if let Some(store) = shared.store {
        pool = pool.shared(store.cooldowns(&format!("model:{}", group.name)));
    }
    let pool = pool.build().map_err(|e| format!("{}: {e}", group.name))?;
    Ok(Chat::new(
        TransportRetryLayer::new(RetryPolicy::default().max_retries(config.router.num_retries))
            .layer(pool),
    ))
}

/// One deployment under its own layers.
fn deployment(d: &Deployment, shared: &Shared<'_>) -> Result<Chat, String> {
    let named = |e: Error| format!("deployment {}: {e}", d.id);
    let mut service = provider(d).map_err(named)?;
    // A non-streaming call is bounded by `timeout` (its one output event is
    // the whole answer); a stream's silences by `stream_timeout` (else
    // `timeout`), before its first output and between events — what both
    // mean to LiteLLM's HTTP client, which applies them per read.
    if d.timeout.is_some() || d.stream_timeout.is_some() {
        let whole = d.timeout.map(|t| StreamTimeoutLayer::new().first_event(t));
        let silence = d
            .stream_timeout
            .or(d.timeout)
            .map(|t| StreamTimeoutLayer::new().first_event(t).idle(t));
        let (whole, silence) = (
            match whole {
                Some(l) => Chat::new(l.layer(service.clone())),
                None => service.clone(),
            },
            match silence {
                Some(l) => Chat::new(l.layer(service.clone())),
                None => service,
            },
        );
        service = Chat::new(tower::steer::Steer::new(
            [whole, silence],
            |req: &ChatRequest, _: &[Chat]| usize::from(req.stream),
        ));
    }
    // Over the steer, not under it: `Steer` readies every service it holds
    // for each call, and a limit under it would take two permits per call
    // (one call at `max_parallel_requests: 1` would wait for ever).
    if let Some(n) = d.max_parallel_requests {
        service = Chat::new(StreamConcurrencyLimitLayer::new(n).layer(service));
    }
    let mut limit = RateLimitLayer::new().meter(shared.meter);
    if let Some(rpm) = d.rpm {
        limit = limit.requests_per_minute(rpm);
    }
    if let Some(tpm) = d.tpm {
        limit = limit.tokens_per_minute(tpm);
    }
    if let Some(store) = shared.store
        && (d.rpm.is_some() || d.tpm.is_some())
    {
        limit = limit.shared(store.books(&format!("deployment:{}", d.id)));
    }
    service = Chat::new(limit.layer(service));
    if let Some(n) = d.max_retries.filter(|n| *n > 0) {
        service = Chat::new(
            TransportRetryLayer::new(RetryPolicy::default().max_retries(n)).layer(service),
        );
    }
    if let Some(source) = key_source(d) {
        let mut refresh = RefreshLayer::new(source);
        if let Some(key) = &d.api_key {
            refresh = refresh.initial(credential_for(d, key.expose()));
        }
        if let Some(store) = shared.store {
            let Some(key) = shared.credential_key else {
                return Err(format!(
                    "deployment {}: credentials shared on Redis are sealed with a key: set {} \
                     to 64 hex digits (the same in every gateway)",
                    d.id,
                    crate::CREDENTIAL_KEY_ENV
                ));
            };
            refresh =
                refresh.shared(store.credential(&format!("deployment:{}", d.id), key.clone()));
        }
        service = Chat::new(refresh.layer(service));
    }
    Ok(service)
}

/// The command that gives a deployment's key, if it has one: its
/// `api_key_command`, or for Vertex AI with no key, Google's application
/// default credentials through `gcloud`.
fn key_source(d: &Deployment) -> Option<CommandSource> {
    let vertex = matches!(
        d.provider,
        ProviderKind::VertexGemini | ProviderKind::VertexAnthropic
    );
    match &d.api_key_command {
        Some(words) => {
            let (program, args) = words.split_first()?;
            Some(CommandSource::new(program).args(args).scheme(if vertex {
                AuthScheme::Bearer
            } else {
                AuthScheme::ApiKey
            }))
        }
        None if vertex && d.api_key.is_none() => Some(
            CommandSource::new("gcloud")
                .args(["auth", "print-access-token"])
                .valid_for(Duration::from_secs(55 * 60)),
        ),
        None => None,
    }
}

/// The key as the provider takes it.
fn credential_for(d: &Deployment, key: &str) -> Credential {
    match d.provider {
        ProviderKind::VertexGemini | ProviderKind::VertexAnthropic => Credential::bearer(key),
        _ => Credential::api_key(key),
    }
}

/// The provider service of one deployment.
fn provider(d: &Deployment) -> Result<Chat, Error> {
    let key = d.api_key.as_ref().map(|k| k.expose().to_owned());
    let mut base = d.api_base.clone();
    // The providers' builders are distinct types with the same methods.
    macro_rules! build {
        ($builder:expr) => {{
            let mut b = $builder.connect_timeout(CONNECT_TIMEOUT);
            if let Some(base) = base {
                b = b.base_url(base);
            }
            if let Some(key) = key {
                b = b.api_key(key);
            }
            Chat::new(b.build()?)
        }};
    }
    Ok(match d.provider {
        ProviderKind::OpenAi => build!(OpenAi::builder().model(&d.model)),
        ProviderKind::Azure => {
            // The resource's endpoint is the builder's own base.
            let endpoint = base.take().unwrap_or_default();
            let b = OpenAi::azure(endpoint);
            build!(match &d.api_version {
                Some(version) => b.azure_deployment(&d.model, version),
                None => b.model(&d.model),
            })
        }
        ProviderKind::Anthropic => build!(Anthropic::builder().model(&d.model)),
        ProviderKind::Gemini => build!(Gemini::builder().model(&d.model)),
        ProviderKind::VertexGemini => {
            let (project, location) = vertex_place(d);
            build!(Gemini::vertex(project, location).model(&d.model))
        }
        ProviderKind::VertexAnthropic => {
            let (project, location) = vertex_place(d);
            build!(Anthropic::vertex(project, location).model(&d.model))
        }
        ProviderKind::Preset(preset) => {
            // LiteLLM's Ollama base is the server's root; its
            // OpenAI-compatible API is under /v1.
            if preset == Preset::Ollama
                && let Some(b) = &mut base
                && !b.trim_end_matches('/').ends_with("/v1")
            {
                *b = format!("{}/v1", b.trim_end_matches('/'));
            }
            build!(OpenAi::preset(preset).model(&d.model))
        }
    })
}

fn vertex_place(d: &Deployment) -> (String, String) {
    (
        d.vertex_project.clone().unwrap_or_default(),
        d.vertex_location.clone().unwrap_or_default(),
    )
}
