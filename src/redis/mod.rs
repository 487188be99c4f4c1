//! State shared by many processes on Redis (or Valkey): rate-limit books,
//! pool cooldowns and credentials. Needs the `redis` feature.
//!
//! A gateway runs as several processes on one API key. Each process's
//! [`RateLimitLayer`](crate::RateLimitLayer) knows only its own calls, so
//! N processes would send N times the budget; each
//! [`Pool`](crate::Pool) would keep sending to a deployment that another
//! process already saw fail; and two processes refreshing a rotating OAuth
//! token at once would make one of them fail. A [`RedisStore`] gives them
//! one set of books:
//!
//! - [`RedisStore::books`] → [`RateLimitLayer::shared`](crate::RateLimitLayer::shared):
//!   every call is booked by one atomic step on Redis (a Lua script, on
//!   Redis's clock), so the processes together never exceed a budget in
//!   any 60 s and never book past what the provider last reported;
//! - [`RedisStore::cooldowns`] → [`PoolBuilder::shared`](crate::pool::PoolBuilder::shared):
//!   a deployment one process cools down is out for all of them;
//! - [`RedisStore::credential`] → [`RefreshLayer::shared`](crate::RefreshLayer::shared):
//!   one process refreshes, under a lock with a lease, and the others read
//!   the new credential, which is encrypted at rest.
//!
//! **Redis slow or down.** Every step has a time budget
//! ([`step_timeout`](RedisStoreBuilder::step_timeout), 50 ms by default).
//! Past it, or on any error, the store is *out*: a warning is logged once,
//! [`outages`](RedisStore::outages) counts it, and for the next
//! [`retry_after`](RedisStoreBuilder::retry_after) (1 s) no step even
//! tries Redis. What a layer does meanwhile is [`OnOutage`]: by default it
//! keeps going on its own local state, or it refuses the call. One step
//! then tries again; when it succeeds the store is back, and says so.
//! Nothing waits on Redis longer than a step's budget, but the first
//! connection, which has [`CONNECT_TIMEOUT`] (1 s) of its own, and a new
//! pool's first calls, which wait as long at most for the cooldowns other
//! processes already set. Writes nobody waits for (a cooldown to publish,
//! a usage correction) have that longer budget too: a busy moment does not
//! lose them.
//!
//! ```no_run
//! use std::time::Duration;
//! use llm_tower::redis::{CredentialKey, RedisStore};
//! use llm_tower::{Credential, OpenAi, RateLimitLayer, RefreshLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("gateway")
//!     .step_timeout(Duration::from_millis(50))
//!     .build()?;
//! let key = CredentialKey::from_hex(&std::env::var("LLM_TOWER_CREDENTIAL_KEY")?)?;
//!
//! let openai = OpenAi::builder().model("gpt-4o-mini").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(
//!         RefreshLayer::new(|| async { Ok::<_, std::io::Error>(Credential::bearer("fetched")) })
//!             .shared(store.credential("openai", key)),
//!     )
//!     .layer(
//!         RateLimitLayer::new()
//!             .requests_per_minute(500)
//!             .shared(store.books("openai-org-1")),
//!     )
//!     .service(openai);
//! # let _ = service;
//! # Ok(())
//! # }
//! ```
//!
//! Keys are `<prefix>:<kind>:{<namespace>...}:...`: each set of books sits
//! in one hash slot, and every key expires on its own once nothing in it
//! matters. The URL's password never appears in `Debug`, logs or errors.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::Error;

mod books;
mod cooldown;
mod credential;

pub use books::SharedBooks;
pub(crate) use books::{Booked, RemoteBooking};
pub use cooldown::SharedCooldowns;
pub(crate) use credential::Stored;
pub use credential::{CredentialKey, DEFAULT_LEASE, SharedCredential};

/// What a layer does while Redis is out (slow past its budget, or down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnOutage {
    /// Go on with this process's own state: its local rate-limit books,
    /// its own cooldowns, a credential refresh of its own. Calls go on;
    /// the processes together may exceed a budget until Redis is back.
    #[default]
    Local,
    /// Refuse: a call that needs a booking fails at once with a local
    /// [`Error::Overloaded`] (error type `shared_state_unavailable`), and a
    /// refresh with [`Error::Refresh`] whose source is a [`StoreError`].
    Refuse,
}

/// Why a step on Redis did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis is out: an earlier step failed, and the store waits before it
    /// tries again.
    #[error("shared state on Redis is unavailable (retrying shortly)")]
    Unavailable,
    /// The step took longer than its budget.
    #[error("shared state on Redis: no answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("shared state on Redis: {0}")]
    Redis(String),
    /// A credential read from Redis could not be decrypted (the processes'
    /// keys differ, or the value was changed).
    #[error("shared credential on Redis cannot be decrypted with this key")]
    Decrypt,
}

/// A Redis (or Valkey) that several processes share. Cheap to clone: the
/// clones share one connection. See the [module docs](self).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: ::redis::Client,
    prefix: Box<str>,
    step: Duration,
    retry_after: Duration,
    on_outage: OnOutage,
    /// Made on first use, inside the runtime; it reconnects by itself.
    connection: tokio::sync::OnceCell<ConnectionManager>,
    circuit: Mutex<Circuit>,
    outages: AtomicU64,
    fallbacks: AtomicU64,
}

/// Whether Redis is out, and when to try it again.
#[derive(Debug, Default)]
struct Circuit {
    out: bool,
    retry_at: Option<Instant>,
}

/// Settings for a [`RedisStore`].
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    step: Duration,
    retry_after: Duration,
    on_outage: OnOutage,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("step_timeout", &self.step)
            .field("retry_after", &self.retry_after)
            .field("on_outage", &self.on_outage)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RedisStore")
            .field("prefix", &i.prefix)
            .field("step_timeout", &i.step)
            .field("on_outage", &i.on_outage)
            .field("available", &self.is_available())
            .finish_non_exhaustive()
    }
}

/// The first connection's time budget (or the step's, if longer).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Each step's time budget, by default.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_millis(50);

impl RedisStore {
    /// A store at `url` (`redis://[:password@]host:port/db`, or
    /// `redis+unix:///path`). Nothing connects until the first step.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "llm-tower".to_owned(),
            step: DEFAULT_STEP_TIMEOUT,
            retry_after: Duration::from_secs(1),
            on_outage: OnOutage::Local,
        }
    }

    /// The rate-limit books of one budget (an API key, an organisation, a
    /// deployment), shared by every process that names it: each model
    /// called under it has its own books, as locally.
    pub fn books(&self, namespace: &str) -> SharedBooks {
        SharedBooks::new(self.clone(), namespace)
    }

    /// The cooldowns of one pool's deployments, shared by every process
    /// that names it.
    pub fn cooldowns(&self, namespace: &str) -> SharedCooldowns {
        SharedCooldowns::new(self.clone(), namespace)
    }

    /// A credential shared by every process that names it, encrypted with
    /// `key` (every process must have the same key).
    pub fn credential(&self, name: &str, key: CredentialKey) -> SharedCredential {
        SharedCredential::new(self.clone(), name, key)
    }

    /// Whether the last step reached Redis (or none was tried yet).
    pub fn is_available(&self) -> bool {
        !crate::lock(&self.inner.circuit).out
    }

    /// How many times Redis went out (slow past a step's budget, or down).
    pub fn outages(&self) -> u64 {
        self.inner.outages.load(Ordering::Relaxed)
    }

    /// How many steps went without Redis: answered from local state, or
    /// refused, by [`OnOutage`].
    pub fn fallbacks(&self) -> u64 {
        self.inner.fallbacks.load(Ordering::Relaxed)
    }

    /// What to do while Redis is out.
    pub fn on_outage(&self) -> OnOutage {
        self.inner.on_outage
    }

    /// A key under this store's prefix: `<prefix>:<kind>:{<namespace>}`,
    /// the braces a hash tag so that one namespace's keys share a slot.
    pub(crate) fn key(&self, kind: &str, namespace: &str) -> String {
        format!("{}:{kind}:{{{namespace}}}", self.inner.prefix)
    }

    pub(crate) fn client(&self) -> &::redis::Client {
        &self.inner.client
    }

    /// What a cold start, or a step nobody waits for, may take:
    /// [`CONNECT_TIMEOUT`], or a step's budget if longer.
    pub(crate) fn connect_budget(&self) -> Duration {
        CONNECT_TIMEOUT.max(self.inner.step)
    }

    pub(crate) fn retry_after(&self) -> Duration {
        self.inner.retry_after
    }

    /// Runs one step on Redis, within its budget. While Redis is out, fails
    /// at once with [`StoreError::Unavailable`], but for one step every
    /// [`retry_after`](RedisStoreBuilder::retry_after).
    pub(crate) async fn run<T, F, Fut>(&self, step: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        self.run_within(self.inner.step, step).await
    }

    /// [`run`](Self::run) with a budget of its own for the step.
    async fn run_within<T, F, Fut>(&self, step_budget: Duration, step: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        if !self.admit() {
            self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable);
        }
        let budget = self.connect_budget();
        let connection = match tokio::time::timeout(budget, self.connection()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.went_out(&e);
                return Err(e);
            }
            Err(_) => {
                let e = StoreError::Timeout(budget);
                self.went_out(&e);
                return Err(e);
            }
        };
        let error = match tokio::time::timeout(step_budget, step(connection)).await {
            Ok(Ok(value)) => {
                self.came_back();
                return Ok(value);
            }
            Ok(Err(e)) => StoreError::Redis(e.to_string()),
            Err(_) => StoreError::Timeout(step_budget),
        };
        self.went_out(&error);
        Err(error)
    }

    /// Whether a step may try Redis now.
    fn admit(&self) -> bool {
        let mut c = crate::lock(&self.inner.circuit);
        if !c.out {
            return true;
        }
        let now = Instant::now();
        match c.retry_at {
            Some(at) if at > now => false,
            // This step tries; the others wait for another interval.
            _ => {
                c.retry_at = Some(crate::later_or_far(now, self.inner.retry_after));
                true
            }
        }
    }

    /// The connection, made on first use. Connecting has a budget of its
    /// own, [`CONNECT_TIMEOUT`] or the step's if longer (the caller bounds
    /// the whole wait by it): a cold start is not a slow Redis. Steps that
    /// come meanwhile wait for the same connection.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let budget = self.connect_budget();
        let epoch = self.outages();
        let connect = async {
            // Steps that queued behind a connection that failed do not
            // each try again: the store went out meanwhile.
            if self.outages() != epoch {
                return Err(StoreError::Unavailable);
            }
            // The manager retries a lost connection by itself; each step's
            // own budget bounds how long anything waits for it.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(budget))
                .set_response_timeout(None)
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(self.inner.retry_after);
            let manager =
                ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
                    .map_err(|e| StoreError::Redis(e.to_string()))?;
            let mut probe = manager.clone();
            match tokio::time::timeout(budget, ::redis::cmd("PING").query_async::<()>(&mut probe))
                .await
            {
                Ok(Ok(())) => Ok(manager),
                Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
                Err(_) => Err(StoreError::Timeout(budget)),
            }
        };
        self.inner
            .connection
            .get_or_try_init(|| connect)
            .await
            .cloned()
    }

    fn went_out(&self, error: &StoreError) {
        self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
        let mut c = crate::lock(&self.inner.circuit);
        c.retry_at = Some(crate::later_or_far(Instant::now(), self.inner.retry_after));
        if !c.out {
            c.out = true;
            drop(c);
            self.inner.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error = %error,
                on_outage = ?self.inner.on_outage,
                retry_after_ms = self.inner.retry_after.as_millis() as u64,
                "Redis is out: going on without shared state until it is back"
            );
        }
    }

    fn came_back(&self) {
        let mut c = crate::lock(&self.inner.circuit);
        if c.out {
            c.out = false;
            c.retry_at = None;
            drop(c);
            tracing::info!("Redis is back: shared state again");
        }
    }

    /// Runs `step` on Redis in the background (a write nobody waits for),
    /// if there is a runtime to run it. Nobody waiting, its budget is the
    /// connect budget, not a step's: a busy moment does not lose a write
    /// (a cooldown the other processes must hear of, a usage correction).
    pub(crate) fn spawn<F, Fut>(&self, step: F)
    where
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = ::redis::RedisResult<()>> + Send + 'static,
    {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        handle.spawn(async move {
            let _ = store.run_within(store.connect_budget(), step).await;
        });
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `llm-tower`): one per application
    /// sharing a Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Each step's time budget (default [`DEFAULT_STEP_TIMEOUT`], 50 ms).
    /// A step past it counts as an outage.
    pub fn step_timeout(mut self, budget: Duration) -> Self {
        self.step = budget;
        self
    }

    /// While Redis is out, how long before a step tries it again (default
    /// 1 s). Steps meanwhile fail at once, without a round trip.
    pub fn retry_after(mut self, interval: Duration) -> Self {
        self.retry_after = interval;
        self
    }

    /// What layers do while Redis is out (default [`OnOutage::Local`]).
    pub fn on_outage(mut self, on_outage: OnOutage) -> Self {
        self.on_outage = on_outage;
        self
    }

    /// The store. Fails on a URL that is not a Redis URL, or a budget or
    /// interval of zero or over an hour; connects on the first step.
    pub fn build(self) -> Result<RedisStore, Error> {
        let client = ::redis::Client::open(self.url.as_str()).map_err(|e| {
            // The error may quote the URL, password and all: say only why.
            Error::config(format!("redis: not a Redis URL ({:?})", e.kind()))
        })?;
        const HOUR: Duration = Duration::from_secs(3600);
        if self.step.is_zero()
            || self.retry_after.is_zero()
            || self.step > HOUR
            || self.retry_after > HOUR
        {
            return Err(Error::config(
                "redis: the step timeout and the retry interval must be more than zero and at most an hour",
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::config(format!(
                "redis: the key prefix {:?} must be non-empty, without braces",
                self.prefix
            )));
        }
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                prefix: self.prefix.into(),
                step: self.step,
                retry_after: self.retry_after,
                on_outage: self.on_outage,
                connection: tokio::sync::OnceCell::new(),
                circuit: Mutex::new(Circuit::default()),
                outages: AtomicU64::new(0),
                fallbacks: AtomicU64::new(0),
            }),
        })
    }
}

/// The error of a call refused because Redis is out and the layer must not
/// go on without it ([`OnOutage::Refuse`]).
pub(crate) fn refused(what: &str, store: &RedisStore) -> Error {
    let retry_after = Some(store.retry_after());
    Error::Overloaded {
        retry_after,
        error: Box::new(crate::ApiError {
            provider: "redis",
            error_type: Some("shared_state_unavailable".to_owned()),
            message: Some(format!(
                "{what}: shared state on Redis is unavailable, and this layer refuses without it"
            )),
            retry_after,
            local: true,
            ..crate::ApiError::default()
        }),
    }
}
