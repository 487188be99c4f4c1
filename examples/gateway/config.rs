//! The part of LiteLLM's proxy `config.yaml` that maps onto the crate, read
//! into typed settings.
//!
//! Every key is either read, or named in a warning at start (LiteLLM has
//! hundreds; most are about its database, UI and callbacks). A value that
//! cannot be honoured — a provider the crate does not speak, a routing
//! strategy it does not have, a negative timeout, an unset environment
//! variable — stops the gateway with an error that names the key, rather
//! than running with a default the user did not ask for.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use llm_tower::Preset;
use serde_json::{Map, Value};

/// The gateway's settings.
#[derive(Debug)]
pub struct Config {
    /// The models clients may name, in the order of the file.
    pub models: Vec<ModelGroup>,
    pub router: RouterSettings,
    /// `general_settings.master_key`: without it, anyone who reaches the
    /// port may call.
    pub master_key: Option<Secret>,
    /// `router_settings.redis_*`: books, cooldowns and credentials shared
    /// with every gateway on the same Redis.
    pub redis: Option<RedisSettings>,
    /// `general_settings.max_request_size_mb`.
    pub max_request_bytes: usize,
    /// `general_settings.global_max_parallel_requests`: open calls at once.
    pub max_parallel_requests: usize,
    /// `litellm_settings.drop_params`: OpenAI parameters a provider does not
    /// take are dropped rather than refused.
    pub drop_params: bool,
    /// Keys the gateway does not read, by their path.
    pub ignored: Vec<String>,
}

/// Several deployments of one `model_name`: a pool.
#[derive(Debug)]
pub struct ModelGroup {
    pub name: String,
    pub deployments: Vec<Deployment>,
}

/// One entry of `model_list`.
#[derive(Debug)]
pub struct Deployment {
    /// `model_info.id`, or the model name and the entry's place among its
    /// group: the same in every process that reads the same file, so it
    /// names the deployment's books on Redis.
    pub id: String,
    pub provider: ProviderKind,
    /// The model as the provider names it (`litellm_params.model` after its
    /// `provider/`).
    pub model: String,
    pub api_base: Option<String>,
    pub api_key: Option<Secret>,
    /// `litellm_params.api_key_command` (this gateway's own): a program and
    /// its arguments whose output is the key, run again when the provider
    /// refuses it.
    pub api_key_command: Option<Vec<String>>,
    pub api_version: Option<String>,
    pub vertex_project: Option<String>,
    pub vertex_location: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The whole call (non-streaming) — `litellm_params.timeout`.
    pub timeout: Option<Duration>,
    /// The longest silence of a stream, before its first output and between
    /// events — `litellm_params.stream_timeout`.
    pub stream_timeout: Option<Duration>,
    /// Retries against this deployment alone, under the router's.
    pub max_retries: Option<u32>,
    pub max_parallel_requests: Option<usize>,
    pub weight: u32,
}

/// Who serves a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
    VertexGemini,
    VertexAnthropic,
    Preset(Preset),
}

impl ProviderKind {
    /// Whether the provider speaks OpenAI's Chat Completions, so that
    /// OpenAI's own parameters may be passed through.
    pub fn is_openai_wire(self) -> bool {
        matches!(
            self,
            ProviderKind::OpenAi | ProviderKind::Azure | ProviderKind::Preset(_)
        )
    }

    /// The `owned_by` of `/v1/models`.
    pub fn owner(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Azure => "azure",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::VertexGemini | ProviderKind::VertexAnthropic => "vertex_ai",
            ProviderKind::Preset(p) => p.name(),
        }
    }
}

/// `router_settings` and `litellm_settings`, merged (the router's win).
#[derive(Debug)]
pub struct RouterSettings {
    /// Retries across the pool, each to a deployment the call has not
    /// tried when one takes calls.
    pub num_retries: u32,
    /// The whole call, retries and fallbacks included.
    pub timeout: Duration,
    /// Failures in a minute that take a deployment out: one more than
    /// `allowed_fails` when it is set (LiteLLM's rule), else 3 — with at
    /// least half its calls failing, near LiteLLM's default rule (more
    /// than half of at least 5 calls).
    pub allowed_fails: u32,
    pub cooldown: Duration,
    /// `model_name` → the models to try, in order, when it fails.
    pub fallbacks: HashMap<String, Vec<String>>,
}

/// Where the shared state lives.
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    pub password: Option<Secret>,
    /// Each Redis step's budget, from `REDIS_SOCKET_TIMEOUT` (seconds, as
    /// LiteLLM reads it for redis-py's `socket_timeout`); `None`: the
    /// library's default.
    pub step_timeout: Option<Duration>,
}

impl RedisSettings {
    /// The `redis://` URL, password included.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.password {
            Some(p) => format!(
                "redis://:{}@{host}:{}/",
                percent_encode(p.expose()),
                self.port
            ),
            None => format!("redis://{host}:{}/", self.port),
        }
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password)
            .field("step_timeout", &self.step_timeout)
            .finish()
    }
}

/// A key or password: never shown.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why the configuration cannot be used.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// LiteLLM's defaults where this gateway keeps them, and its own where
/// LiteLLM's would let a call hang (its `request_timeout` is 6,000 s).
pub const DEFAULT_NUM_RETRIES: u32 = 2;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_ALLOWED_FAILS: u32 = 3;
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_REQUEST_MB: f64 = 10.0;
pub const DEFAULT_MAX_PARALLEL: usize = 1024;
/// The largest file read as a configuration.
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// The environment variable LiteLLM passes to redis-py as `socket_timeout`
/// (its `REDIS_*` mapping): here, each Redis step's budget.
pub const REDIS_SOCKET_TIMEOUT: &str = "REDIS_SOCKET_TIMEOUT";
/// Where no deployment of a group sets `weight`, LiteLLM's shuffle weighs
/// them by `rpm`, else by `tpm`: so does the pool, when every deployment of
/// the group sets it (a deployment without it has no weight to give).
fn weigh_by_limits(group: &mut ModelGroup) {
    let limits: [fn(&Deployment) -> Option<u64>; 2] = [|d| d.rpm, |d| d.tpm];
    for limit in limits {
        if let Some(weights) = group
            .deployments
            .iter()
            .map(limit)
            .collect::<Option<Vec<u64>>>()
        {
            for (d, w) in group.deployments.iter_mut().zip(weights) {
                d.weight = u32::try_from(w).unwrap_or(u32::MAX).max(1);
            }
            return;
        }
    }
}

/// The longest step budget taken: a call may wait that long on Redis.
const MAX_REDIS_STEP: Duration = Duration::from_secs(10);

/// Reads `path`. `env` is the process's environment (a parameter, so tests
/// can give their own).
pub fn load(
    path: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError(format!(
            "{} is {} bytes; a configuration may have at most {MAX_CONFIG_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    parse(&text, env).map_err(|ConfigError(m)| ConfigError(format!("{}: {m}", path.display())))
}

/// Reads a configuration from its text.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let root: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        // No snippet of the source in the error: the line at fault may hold
        // a key or a password written in the clear.
        serde_saphyr::from_str_with_options(text, serde_saphyr::options! { with_snippet: false })
            .map_err(|e| ConfigError(format!("not valid YAML: {e}")))?
    };
    let Value::Object(root) = root else {
        return Err(ConfigError("the top level is not a mapping".into()));
    };
    let mut reader = Reader {
        ignored: Vec::new(),
        env_overlay: BTreeMap::new(),
        env,
    };
    // `environment_variables:` sets variables for `os.environ/NAME`.
    if let Some(vars) = root.get("environment_variables") {
        let vars = as_map(vars, "environment_variables")?;
        for (name, value) in vars {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(ConfigError(format!(
                        "environment_variables.{name}: not a string"
                    )));
                }
            };
            reader.env_overlay.insert(name.clone(), value);
        }
    }
    reader.unread(
        &root,
        "",
        &[
            "model_list",
            "router_settings",
            "litellm_settings",
            "general_settings",
            "environment_variables",
        ],
    );

    let empty = Map::new();
    let router = match root.get("router_settings") {
        Some(v) => as_map(v, "router_settings")?,
        None => &empty,
    };
    let litellm = match root.get("litellm_settings") {
        Some(v) => as_map(v, "litellm_settings")?,
        None => &empty,
    };
    let general = match root.get("general_settings") {
        Some(v) => as_map(v, "general_settings")?,
        None => &empty,
    };
    reader.unread(
        router,
        "router_settings.",
        &[
            "routing_strategy",
            "num_retries",
            "timeout",
            "allowed_fails",
            "cooldown_time",
            "fallbacks",
            "redis_host",
            "redis_port",
            "redis_password",
        ],
    );
    reader.unread(
        litellm,
        "litellm_settings.",
        &["num_retries", "request_timeout", "fallbacks", "drop_params"],
    );
    reader.unread(
        general,
        "general_settings.",
        &[
            "master_key",
            "max_request_size_mb",
            "global_max_parallel_requests",
        ],
    );

    if let Some(strategy) = router.get("routing_strategy") {
        let strategy = reader.string(strategy, "router_settings.routing_strategy")?;
        match strategy.as_str() {
            // The pool's pick — the fewest open streams per unit of weight,
            // weighed by the headroom each deployment last reported — is
            // what these ask for: spread by load, respect the limits.
            "simple-shuffle" | "least-busy" | "usage-based-routing" | "usage-based-routing-v2" => {}
            other => {
                return Err(ConfigError(format!(
                    "router_settings.routing_strategy: {other:?} is not supported; this gateway \
                     routes by open streams and reported headroom (simple-shuffle, least-busy, \
                     usage-based-routing and usage-based-routing-v2 are all served that way)"
                )));
            }
        }
    }
    let pick = |key: &str| router.get(key).or_else(|| litellm.get(key));
    let num_retries = match pick("num_retries") {
        Some(v) => reader.count(v, "num_retries")?,
        None => DEFAULT_NUM_RETRIES,
    };
    let timeout = match router
        .get("timeout")
        .map(|v| (v, "router_settings.timeout"))
        .or_else(|| {
            litellm
                .get("request_timeout")
                .map(|v| (v, "litellm_settings.request_timeout"))
        }) {
        Some((v, key)) => reader.seconds(v, key)?,
        None => DEFAULT_TIMEOUT,
    };
    let allowed_fails = match router.get("allowed_fails") {
        Some(v) => reader
            .count(v, "router_settings.allowed_fails")?
            .saturating_add(1),
        None => DEFAULT_ALLOWED_FAILS,
    };
    let cooldown = match router.get("cooldown_time") {
        Some(v) => reader.seconds(v, "router_settings.cooldown_time")?,
        None => DEFAULT_COOLDOWN,
    };
    let mut fallbacks = HashMap::new();
    for (section, map) in [("litellm_settings", litellm), ("router_settings", router)] {
        if let Some(v) = map.get("fallbacks") {
            for (from, to) in reader.fallbacks(v, &format!("{section}.fallbacks"))? {
                fallbacks.insert(from, to);
            }
        }
    }
    let drop_params = match litellm.get("drop_params") {
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ConfigError(
                "litellm_settings.drop_params: not true or false".into(),
            ));
        }
        None => false,
    };

    let master_key = match general.get("master_key") {
        Some(Value::Null) | None => None,
        Some(v) => {
            let key = reader.string(v, "general_settings.master_key")?;
            if key.is_empty() {
                return Err(ConfigError("general_settings.master_key is empty".into()));
            }
            Some(Secret(key))
        }
    };
    let max_request_bytes = match general.get("max_request_size_mb") {
        Some(v) => {
            let mb = reader.number(v, "general_settings.max_request_size_mb")?;
            if !(mb > 0.0 && mb <= 1024.0) {
                return Err(ConfigError(
                    "general_settings.max_request_size_mb: not between 0 and 1024".into(),
                ));
            }
            (mb * 1024.0 * 1024.0) as usize
        }
        None => (DEFAULT_MAX_REQUEST_MB * 1024.0 * 1024.0) as usize,
    };
    let max_parallel_requests = match general.get("global_max_parallel_requests") {
        Some(v) => {
            let n = reader.count(v, "general_settings.global_max_parallel_requests")?;
            if n == 0 {
                return Err(ConfigError(
                    "general_settings.global_max_parallel_requests: 0 would refuse every call"
                        .into(),
                ));
            }
            n as usize
        }
        None => DEFAULT_MAX_PARALLEL,
    };

    let redis = match router.get("redis_host") {
        None | Some(Value::Null) => {
            if router.contains_key("redis_port") || router.contains_key("redis_password") {
                return Err(ConfigError(
                    "router_settings: redis_port or redis_password without redis_host".into(),
                ));
            }
            None
        }
        Some(host) => {
            let host = reader.string(host, "router_settings.redis_host")?;
            let port = match router.get("redis_port") {
                Some(v) => {
                    let p = reader.count(v, "router_settings.redis_port")?;
                    u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                        ConfigError("router_settings.redis_port: not a port".into())
                    })?
                }
                None => 6379,
            };
            let password = match router.get("redis_password") {
                None | Some(Value::Null) => None,
                Some(v) => Some(Secret(reader.string(v, "router_settings.redis_password")?))
                    .filter(|s| !s.0.is_empty()),
            };
            let step_timeout = match reader.env_var(REDIS_SOCKET_TIMEOUT) {
                None => None,
                Some(v) => {
                    let path = format!("environment variable {REDIS_SOCKET_TIMEOUT}");
                    let t = reader.seconds(&Value::String(v), &path)?;
                    if t > MAX_REDIS_STEP {
                        return Err(ConfigError(format!(
                            "{path}: at most {} s (a call may wait that long on Redis)",
                            MAX_REDIS_STEP.as_secs()
                        )));
                    }
                    Some(t)
                }
            };
            Some(RedisSettings {
                host,
                port,
                password,
                step_timeout,
            })
        }
    };

    let list = match root.get("model_list") {
        Some(Value::Array(list)) => list,
        Some(Value::Null) | None => {
            return Err(ConfigError(
                "model_list is missing: no model to serve".into(),
            ));
        }
        Some(_) => return Err(ConfigError("model_list: not a list".into())),
    };
    let mut models: Vec<ModelGroup> = Vec::new();
    // The groups where some deployment sets `weight`.
    let mut weighted: Vec<String> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let path = format!("model_list[{i}]");
        let (name, deployment) = reader.deployment(entry, &path, &models)?;
        if entry
            .get("litellm_params")
            .and_then(|p| p.get("weight"))
            .is_some_and(|w| !w.is_null())
        {
            weighted.push(name.clone());
        }
        match models.iter_mut().find(|g| g.name == name) {
            Some(group) => group.deployments.push(deployment),
            None => models.push(ModelGroup {
                name,
                deployments: vec![deployment],
            }),
        }
    }
    if models.is_empty() {
        return Err(ConfigError("model_list is empty: no model to serve".into()));
    }
    for group in &mut models {
        if !weighted.contains(&group.name) {
            weigh_by_limits(group);
        }
    }
    for (from, to) in &fallbacks {
        for name in std::iter::once(from).chain(to) {
            if !models.iter().any(|g| &g.name == name) {
                return Err(ConfigError(format!(
                    "fallbacks: {name:?} is not a model_name of model_list"
                )));
            }
        }
        if to.contains(from) {
            return Err(ConfigError(format!(
                "fallbacks: {from:?} falls back to itself"
            )));
        }
    }

    Ok(Config {
        models,
        router: RouterSettings {
            num_retries,
            timeout,
            allowed_fails,
            cooldown,
            fallbacks,
        },
        master_key,
        redis,
        max_request_bytes,
        max_parallel_requests,
        drop_params,
        ignored: reader.ignored,
    })
}

struct Reader<'e> {
    ignored: Vec<String>,
    env_overlay: BTreeMap<String, String>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

fn as_map<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, ConfigError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ConfigError(format!("{path}: not a mapping"))),
    }
}

impl Reader<'_> {
    /// Notes the keys of `map` that are not `known`.
    fn unread(&mut self, map: &Map<String, Value>, prefix: &str, known: &[&str]) {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.ignored.push(format!("{prefix}{key}"));
            }
        }
    }

    /// An environment variable, `environment_variables` first; `None` when
    /// unset or empty.
    fn env_var(&self, name: &str) -> Option<String> {
        self.env_overlay
            .get(name)
            .cloned()
            .or_else(|| (self.env)(name))
            .filter(|v| !v.trim().is_empty())
    }

    /// A string, with `os.environ/NAME` read from the environment.
    fn string(&self, v: &Value, path: &str) -> Result<String, ConfigError> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(ConfigError(format!("{path}: not a string"))),
        };
        match s.strip_prefix("os.environ/") {
            Some(name) => self
                .env_overlay
                .get(name)
                .cloned()
                .or_else(|| (self.env)(name))
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{path}: the environment variable {name} is not set"
                    ))
                }),
            None => Ok(s),
        }
    }

    /// A number, or a string that holds one (`os.environ/` included).
    fn number(&self, v: &Value, path: &str) -> Result<f64, ConfigError> {
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(_) => self.string(v, path)?.trim().parse::<f64>().ok(),
            _ => None,
        };
        n.filter(|n| n.is_finite())
            .ok_or_else(|| ConfigError(format!("{path}: not a number")))
    }

    /// A whole number of 0 or more that fits a `u32`.
    fn count(&self, v: &Value, path: &str) -> Result<u32, ConfigError> {
        let n = self.number(v, path)?;
        if n < 0.0 || n.fract() != 0.0 || n > f64::from(u32::MAX) {
            return Err(ConfigError(format!(
                "{path}: not a whole number from 0 to {}",
                u32::MAX
            )));
        }
        Ok(n as u32)
    }

    /// Seconds, fractions allowed, more than 0 and at most a day.
    fn seconds(&self, v: &Value, path: &str) -> Result<Duration, ConfigError> {
        let s = self.number(v, path)?;
        if !(s > 0.0 && s <= 86_400.0) {
            return Err(ConfigError(format!(
                "{path}: not a number of seconds above 0 and at most 86400"
            )));
        }
        Ok(Duration::from_secs_f64(s))
    }

    /// `[{from: [to, ...]}, ...]`.
    fn fallbacks(&self, v: &Value, path: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let Value::Array(list) = v else {
            return Err(ConfigError(format!("{path}: not a list")));
        };
        let mut out = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let map = as_map(item, &format!("{path}[{i}]"))?;
            for (from, to) in map {
                let to = match to {
                    Value::Array(names) => names
                        .iter()
                        .map(|n| self.string(n, &format!("{path}[{i}].{from}")))
                        .collect::<Result<Vec<_>, _>>()?,
                    Value::String(name) => vec![name.clone()],
                    _ => {
                        return Err(ConfigError(format!(
                            "{path}[{i}].{from}: not a list of model names"
                        )));
                    }
                };
                out.push((from.clone(), to));
            }
        }
        Ok(out)
    }

    fn deployment(
        &mut self,
        entry: &Value,
        path: &str,
        groups: &[ModelGroup],
    ) -> Result<(String, Deployment), ConfigError> {
        let entry = as_map(entry, path)?;
        self.unread(
            entry,
            &format!("{path}."),
            &["model_name", "litellm_params", "model_info"],
        );
        let name = match entry.get("model_name") {
            Some(v) => self.string(v, &format!("{path}.model_name"))?,
            None => return Err(ConfigError(format!("{path}: no model_name"))),
        };
        if name.is_empty() {
            return Err(ConfigError(format!("{path}.model_name is empty")));
        }
        let params_path = format!("{path}.litellm_params");
        let params = match entry.get("litellm_params") {
            Some(v) => as_map(v, &params_path)?,
            None => return Err(ConfigError(format!("{path}: no litellm_params"))),
        };
        let mut id = None;
        if let Some(info) = entry.get("model_info") {
            let info = as_map(info, &format!("{path}.model_info"))?;
            // The rest of model_info is metadata LiteLLM keeps for its UI.
            if let Some(v) = info.get("id") {
                id = Some(self.string(v, &format!("{path}.model_info.id"))?);
            }
        }
        let p = |key: &str| format!("{params_path}.{key}");
        self.unread(
            params,
            &format!("{params_path}."),
            &[
                "model",
                "custom_llm_provider",
                "api_base",
                "api_key",
                "api_key_command",
                "api_version",
                "vertex_project",
                "vertex_location",
                "rpm",
                "tpm",
                "timeout",
                "stream_timeout",
                "max_retries",
                "max_parallel_requests",
                "weight",
            ],
        );
        let full = match params.get("model") {
            Some(v) => self.string(v, &p("model"))?,
            None => return Err(ConfigError(format!("{params_path}: no model"))),
        };
        let custom = match params.get("custom_llm_provider") {
            Some(v) => Some(self.string(v, &p("custom_llm_provider"))?),
            None => None,
        };
        let (provider_name, model) = match (&custom, full.split_once('/')) {
            // As LiteLLM does: the provider's own prefix is not part of the
            // model's name (`openai/gpt-4o` with `custom_llm_provider:
            // openai` is `gpt-4o`); any other prefix is.
            (Some(c), Some((prefix, rest))) if prefix == c => (c.clone(), rest.to_owned()),
            (Some(c), _) => (c.clone(), full.clone()),
            (None, Some((provider, model))) => (provider.to_owned(), model.to_owned()),
            (None, None) => (infer_provider(&full, &p("model"))?.to_owned(), full.clone()),
        };
        if model.is_empty() {
            return Err(ConfigError(format!(
                "{}: no model after the provider",
                p("model")
            )));
        }
        let provider = provider_kind(&provider_name, &model, &p("model"))?;
        let opt_string = |this: &Self, key: &str| -> Result<Option<String>, ConfigError> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => this.string(v, &p(key)).map(Some),
            }
        };
        let mut api_base = opt_string(self, "api_base")?;
        let mut api_version = opt_string(self, "api_version")?;
        let mut api_key = opt_string(self, "api_key")?.filter(|k| !k.is_empty());
        // Where LiteLLM reads a provider's settings from the environment,
        // so does the gateway.
        if api_key.is_none() {
            let var = match provider {
                ProviderKind::OpenAi => Some("OPENAI_API_KEY"),
                ProviderKind::Azure => Some("AZURE_API_KEY"),
                ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
                ProviderKind::Gemini => Some("GEMINI_API_KEY"),
                ProviderKind::Preset(p) => p.api_key_env(),
                ProviderKind::VertexGemini | ProviderKind::VertexAnthropic => None,
            };
            api_key = var.and_then(|v| self.env_var(v));
        }
        if provider == ProviderKind::Azure {
            api_base = api_base.or_else(|| self.env_var("AZURE_API_BASE"));
            api_version = api_version.or_else(|| self.env_var("AZURE_API_VERSION"));
            if api_base.is_none() {
                return Err(ConfigError(format!(
                    "{}: an azure/ deployment needs its resource's endpoint (or AZURE_API_BASE)",
                    p("api_base")
                )));
            }
        }
        if let Some(base) = &api_base
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(ConfigError(format!(
                "{}: not an http(s) URL",
                p("api_base")
            )));
        }
        let api_key_command = match params.get("api_key_command") {
            None | Some(Value::Null) => None,
            Some(Value::Array(words)) => Some(
                words
                    .iter()
                    .map(|w| self.string(w, &p("api_key_command")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(v) => Some(
                self.string(v, &p("api_key_command"))?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            ),
        };
        if api_key_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(ConfigError(format!("{}: empty", p("api_key_command"))));
        }
        let (vertex_project, vertex_location) = match provider {
            ProviderKind::VertexGemini | ProviderKind::VertexAnthropic => {
                let project = opt_string(self, "vertex_project")?
                    .or_else(|| self.env_var("VERTEXAI_PROJECT"))
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "{}: a vertex_ai/ deployment needs its project (or VERTEXAI_PROJECT)",
                            p("vertex_project")
                        ))
                    })?;
                let location = opt_string(self, "vertex_location")?
                    .or_else(|| self.env_var("VERTEXAI_LOCATION"))
                    .unwrap_or_else(|| "us-central1".to_owned());
                (Some(project), Some(location))
            }
            _ => {
                for key in ["vertex_project", "vertex_location"] {
                    if params.contains_key(key) {
                        self.ignored.push(p(key));
                    }
                }
                (None, None)
            }
        };
        let limit = |this: &Self, key: &str| -> Result<Option<u64>, ConfigError> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => this.count(v, &p(key)).map(|n| Some(u64::from(n))),
            }
        };
        let seconds = |this: &Self, key: &str| -> Result<Option<Duration>, ConfigError> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => this.seconds(v, &p(key)).map(Some),
            }
        };
        let max_retries = match params.get("max_retries") {
            None | Some(Value::Null) => None,
            Some(v) => Some(self.count(v, &p("max_retries"))?),
        };
        let max_parallel_requests = match params.get("max_parallel_requests") {
            None | Some(Value::Null) => None,
            Some(v) => match self.count(v, &p("max_parallel_requests"))? {
                0 => {
                    return Err(ConfigError(format!(
                        "{}: 0 would refuse every call",
                        p("max_parallel_requests")
                    )));
                }
                n => Some(n as usize),
            },
        };
        let weight = match params.get("weight") {
            None | Some(Value::Null) => 1,
            Some(v) => match self.count(v, &p("weight"))? {
                0 => {
                    return Err(ConfigError(format!(
                        "{}: 0 would never be picked",
                        p("weight")
                    )));
                }
                n => n,
            },
        };
        let place = groups
            .iter()
            .find(|g| g.name == name)
            .map_or(0, |g| g.deployments.len());
        let deployment = Deployment {
            id: id.unwrap_or_else(|| format!("{name}#{place}")),
            provider,
            model,
            api_base,
            api_key: api_key.map(Secret),
            api_key_command,
            api_version,
            vertex_project,
            vertex_location,
            rpm: limit(self, "rpm")?,
            tpm: limit(self, "tpm")?,
            timeout: seconds(self, "timeout")?,
            stream_timeout: seconds(self, "stream_timeout")?,
            max_retries,
            max_parallel_requests,
            weight,
        };
        Ok((name, deployment))
    }
}

/// LiteLLM's guess for a model named without its provider.
fn infer_provider(model: &str, path: &str) -> Result<&'static str, ConfigError> {
    let openai = ["gpt-", "o1", "o3", "o4", "chatgpt-"];
    if openai.iter().any(|p| model.starts_with(p)) {
        Ok("openai")
    } else if model.starts_with("claude-") {
        Ok("anthropic")
    } else {
        Err(ConfigError(format!(
            "{path}: {model:?} names no provider; write it as provider/model \
             (openai/, azure/, anthropic/, gemini/, vertex_ai/, …)"
        )))
    }
}

/// The provider a `provider/` prefix names.
fn provider_kind(name: &str, model: &str, path: &str) -> Result<ProviderKind, ConfigError> {
    Ok(match name {
        "openai" => ProviderKind::OpenAi,
        "azure" => ProviderKind::Azure,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        "vertex_ai" | "vertex_ai_beta" if model.starts_with("claude") => {
            ProviderKind::VertexAnthropic
        }
        "vertex_ai" | "vertex_ai_beta" => ProviderKind::VertexGemini,
        "groq" => ProviderKind::Preset(Preset::Groq),
        "xai" => ProviderKind::Preset(Preset::XAi),
        "together_ai" => ProviderKind::Preset(Preset::Together),
        "openrouter" => ProviderKind::Preset(Preset::OpenRouter),
        "deepseek" => ProviderKind::Preset(Preset::DeepSeek),
        "mistral" => ProviderKind::Preset(Preset::Mistral),
        "ollama" | "ollama_chat" => ProviderKind::Preset(Preset::Ollama),
        "hosted_vllm" => ProviderKind::Preset(Preset::Vllm),
        other => {
            return Err(ConfigError(format!(
                "{path}: the provider {other:?} is not supported; supported: openai (and any \
                 OpenAI-compatible server through api_base), azure, anthropic, gemini, vertex_ai, \
                 groq, xai, together_ai, openrouter, deepseek, mistral, ollama, ollama_chat, \
                 hosted_vllm"
            )));
        }
    })
}

/// Percent-encodes what a URL's userinfo cannot hold as is.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-env".to_owned())
    }

    #[test]
    fn a_litellm_config_reads() {
        let c = parse(
            r#"
model_list:
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/KEY, rpm: 60}
  - model_name: gpt
    litellm_params: {model: azure/prod, api_base: "https://x.openai.azure.com", api_key: k, api_version: "2024-10-21"}
  - model_name: claude
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: k}
    model_info: {id: c1, mode: chat}
router_settings:
  num_retries: 1
  fallbacks: [{gpt: [claude]}]
  enable_pre_call_checks: true
general_settings: {master_key: sk-master}
"#,
            &env,
        )
        .unwrap();
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models[0].deployments.len(), 2);
        assert_eq!(
            c.models[0].deployments[0]
                .api_key
                .as_ref()
                .unwrap()
                .expose(),
            "sk-env"
        );
        assert_eq!(c.models[0].deployments[1].id, "gpt#1");
        assert_eq!(c.models[1].deployments[0].id, "c1");
        assert_eq!(c.router.num_retries, 1);
        assert_eq!(c.router.fallbacks["gpt"], ["claude"]);
        assert_eq!(c.ignored, ["router_settings.enable_pre_call_checks"]);
        assert!(!format!("{c:?}").contains("sk-master"));
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error() {
        for (yaml, says) in [
            (
                "model_list: [{model_name: a, litellm_params: {model: bedrock/x}}]",
                "bedrock",
            ),
            (
                "model_list: [{model_name: a, litellm_params: {model: openai/x, api_key: os.environ/NOPE}}]",
                "NOPE is not set",
            ),
            (
                "model_list: [{model_name: a, litellm_params: {model: openai/x, timeout: -1}}]",
                "timeout",
            ),
            (
                "model_list: [{model_name: a, litellm_params: {model: mystery}}]",
                "names no provider",
            ),
            (
                "model_list: [{model_name: a, litellm_params: {model: openai/x}}]\nrouter_settings: {routing_strategy: latency-based-routing}",
                "latency-based-routing",
            ),
            (
                "model_list: [{model_name: a, litellm_params: {model: openai/x}}]\nrouter_settings: {fallbacks: [{a: [b]}]}",
                "\"b\"",
            ),
            ("model_list: []", "empty"),
            (
                "model_list: [{model_name: a, litellm_params: {model: openai/x}}]\nrouter_settings: {redis_port: 99999, redis_host: h}",
                "redis_port",
            ),
            ("{", "YAML"),
        ] {
            let e = parse(yaml, &env).unwrap_err().0;
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn the_shuffle_weighs_by_weight_else_rpm_else_tpm() {
        let weights = |entries: &str| {
            let c = parse(&format!("model_list:\n{entries}"), &env).unwrap();
            c.models[0]
                .deployments
                .iter()
                .map(|d| d.weight)
                .collect::<Vec<_>>()
        };
        let entry = |params: &str| {
            format!("  - model_name: m\n    litellm_params: {{model: openai/x, {params}}}\n")
        };
        let two = |a: &str, b: &str| format!("{}{}", entry(a), entry(b));
        assert_eq!(weights(&two("rpm: 900", "rpm: 100")), [900, 100]);
        assert_eq!(
            weights(&two("tpm: 5000", "tpm: 1000, rpm: 3")),
            [5000, 1000]
        );
        assert_eq!(weights(&two("rpm: 900, weight: 1", "rpm: 100")), [1, 1]);
        assert_eq!(weights(&two("weight: 3", "rpm: 100")), [3, 1]);
        assert_eq!(weights(&two("rpm: 900", "api_key: k")), [1, 1]);
        assert_eq!(weights(&two("rpm: 0", "rpm: 4294967295")), [1, u32::MAX]);
    }

    #[test]
    fn custom_llm_provider_drops_its_own_prefix_only() {
        let model = |params: &str| {
            let yaml = format!("model_list: [{{model_name: m, litellm_params: {{{params}}}}}]");
            parse(&yaml, &env).unwrap().models[0].deployments[0]
                .model
                .clone()
        };
        assert_eq!(
            model("model: openai/gpt-4o, custom_llm_provider: openai"),
            "gpt-4o"
        );
        assert_eq!(
            model(
                "model: meta-llama/Llama-3.1-8B, custom_llm_provider: hosted_vllm, api_base: \"http://h\""
            ),
            "meta-llama/Llama-3.1-8B"
        );
        assert_eq!(
            model("model: gpt-4o, custom_llm_provider: openai"),
            "gpt-4o"
        );
    }

    #[test]
    fn allowed_fails_counts_the_failures_let_through() {
        let fails = |router: &str| {
            let yaml = format!(
                "model_list: [{{model_name: a, litellm_params: {{model: openai/x}}}}]\n{router}"
            );
            parse(&yaml, &env).unwrap().router.allowed_fails
        };
        assert_eq!(fails(""), DEFAULT_ALLOWED_FAILS);
        assert_eq!(fails("router_settings: {allowed_fails: 0}"), 1);
        assert_eq!(fails("router_settings: {allowed_fails: 3}"), 4);
    }

    #[test]
    fn a_yaml_error_shows_no_part_of_the_source() {
        for yaml in [
            "general_settings:\n  master_key: \"sk-master-1234\n  other: [\n",
            "model_list:\n\t- model_name: a\n  api_key: sk-upstream-5678 {\n",
            "router_settings: {redis_password: hunter2-secret, redis_host: h\n",
        ] {
            let e = parse(yaml, &env).unwrap_err().0;
            assert!(e.contains("YAML"), "{e}");
            for secret in ["sk-master-1234", "sk-upstream-5678", "hunter2-secret"] {
                assert!(!e.contains(secret), "{yaml:?} → {e}");
            }
        }
    }

    #[test]
    fn redis_socket_timeout_sets_the_step_budget() {
        let yaml = "model_list: [{model_name: a, litellm_params: {model: openai/x}}]\n\
                    router_settings: {redis_host: h}";
        let with = |value: &'static str| {
            move |name: &str| (name == REDIS_SOCKET_TIMEOUT).then(|| value.to_owned())
        };
        let budget = |c: Config| c.redis.and_then(|r| r.step_timeout);
        assert_eq!(budget(parse(yaml, &env).unwrap()), None);
        assert_eq!(
            budget(parse(yaml, &with("0.25")).unwrap()),
            Some(Duration::from_millis(250))
        );
        // The config's own environment_variables count too.
        let overlay = format!("{yaml}\nenvironment_variables: {{REDIS_SOCKET_TIMEOUT: \"2\"}}");
        assert_eq!(
            budget(parse(&overlay, &env).unwrap()),
            Some(Duration::from_secs(2))
        );
        for bad in ["0", "-1", "soon", "60", "NaN"] {
            let e = parse(yaml, &with(bad)).unwrap_err().0;
            assert!(e.contains(REDIS_SOCKET_TIMEOUT), "{bad}: {e}");
        }
    }

    #[test]
    fn the_redis_url_hides_nothing_it_needs_and_escapes_the_password() {
        let r = RedisSettings {
            host: "::1".into(),
            port: 6380,
            password: Some(Secret("p@ss/w".into())),
            step_timeout: None,
        };
        assert_eq!(r.url(), "redis://:p%40ss%2Fw@[::1]:6380/");
        assert!(!format!("{r:?}").contains("p@ss"));
    }
}
