//! [`Pool`]: one service over several deployments of a model — keys,
//! regions, Azure resources, providers — that sends each call where it costs
//! least and will not be refused, takes failing deployments out for a
//! cooldown, and may hedge a slow call before its first output.
//!
//! - **The pick**: power of two choices among the deployments that take
//!   calls, by *open streams* per unit of weight (a stream counts until it
//!   ends or is dropped, not until its head arrives), divided by the share
//!   of their rate limits the deployments last reported left. A deployment
//!   that reported nothing left is not picked before its reset.
//! - **Cooldowns**: a 429 takes a deployment out for its `retry-after` (else
//!   the cooldown); overload, 5xx, transport failures, timeouts and broken
//!   answers take it out after a number of them within a window (default 3
//!   in 60 s, and at least half of its calls there) for the cooldown (default 30 s, doubled by each failed probe up
//!   to 5 min); 401 and 403 take it out until
//!   [`Pool::credential_changed`]. After a cooldown one probe call decides.
//!   Failures are read from the [`Error`] classes, and only failures before
//!   output count: the pool reads each answer up to its first output event
//!   (as the retry layer does) to know.
//! - **When every deployment is out** the call fails at once with
//!   [`Error::Overloaded`] whose `retry_after` is when the first is back, so
//!   a [`TransportRetryLayer`](crate::TransportRetryLayer) above waits
//!   exactly that long. Under a retry layer, a retried attempt goes to a
//!   deployment the call has not tried, when one takes calls.
//! - **Hedging** (off by default): a call with no output after
//!   [`hedge_after`](PoolBuilder::hedge_after) starts a second attempt on
//!   another deployment; the first to deliver output wins and the other is
//!   dropped, connection and all. Output from both cannot happen: the pool
//!   resolves with one primed answer. Hedges are bounded by a budget (by
//!   default 10% of calls).
//!
//! [`ResponseMeta::deployment`](crate::ResponseMeta::deployment) says which
//! deployment answered; [`Pool::status`] gives each one's state for
//! metrics; every cooldown, probe and hedge is a `tracing` event.
//!
//! Why not `tower::balance::p2c`: its load is read from services that stay
//! ready between calls, and `tower::load`'s pending-request count ends when
//! the response future resolves — for an LLM, at the head, while the stream
//! that costs the deployment goes on for minutes. Here the load lives as
//! long as the stream, and the pick also reads the deployment's cooldown and
//! reported headroom, which a `Load` value cannot carry.
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::{OpenAi, Pool};
//!
//! let east = OpenAi::azure("https://contoso-east.openai.azure.com").model("gpt-4o").build()?;
//! let west = OpenAi::azure("https://contoso-west.openai.azure.com").model("gpt-4o").build()?;
//! let pool = Pool::builder()
//!     .deployment("east", east)
//!     .weighted_deployment("west", 2, west)
//!     .failures(3, Duration::from_secs(60))
//!     .cooldown(Duration::from_secs(30))
//!     .hedge_after(Duration::from_secs(5))
//!     .build()?;
//! assert_eq!(pool.status().len(), 2);
//! # Ok::<(), llm_tower::Error>(())
//! ```

mod future;
mod health;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;
use tower::util::BoxCloneService;

use crate::error::ApiError;
use crate::{ChatRequest, ChatStream, Error, RateLimitInfo};

pub use future::ResponseFuture;
pub use health::Health;
use health::{Breaker, Outcome, Standing};

/// A deployment's service, boxed.
type Svc = BoxCloneService<ChatRequest, ChatStream, Error>;

/// One service over several deployments. See the [module docs](self).
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    deployments: Vec<Deployment>,
    breaker: Breaker,
    hedge: Option<Hedge>,
    /// Calls, and hedges started, for the hedge budget.
    calls: AtomicU64,
    hedges: AtomicU64,
    /// The pick's random state (xorshift).
    rng: AtomicU64,
    /// The cooldowns on Redis, shared with other processes, and whether
    /// this pool listens to them yet.
    #[cfg(feature = "redis")]
    remote: Option<Remote>,
    #[cfg(feature = "otel")]
    instruments: std::sync::OnceLock<Instruments>,
}

/// The pool's instruments (feature `otel`): counters here, gauges read by
/// the meter's callbacks.
#[cfg(feature = "otel")]
struct Instruments {
    cooldowns: opentelemetry::metrics::Counter<u64>,
    hedges: opentelemetry::metrics::Counter<u64>,
    _open: opentelemetry::metrics::ObservableGauge<u64>,
    _available: opentelemetry::metrics::ObservableGauge<u64>,
}

/// A pool's cooldowns on Redis.
#[cfg(feature = "redis")]
struct Remote {
    cooldowns: crate::redis::SharedCooldowns,
    /// This pool's mark on what it publishes.
    origin: u64,
    /// Whether it listens yet.
    listening: std::sync::atomic::AtomicBool,
    /// Set once the listener has read the cooldowns already running (or
    /// failed to): until then a call waits for it, within a bound.
    synced: tokio::sync::watch::Sender<bool>,
}

struct Deployment {
    name: Arc<str>,
    weight: f64,
    /// Cloned for each call (a boxed service is `Send`, not `Sync`).
    service: Mutex<Svc>,
    standing: Mutex<Standing>,
}

#[derive(Debug, Clone, Copy)]
struct Hedge {
    after: Duration,
    budget: f64,
}

/// A deployment's state, for metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeploymentStatus {
    /// Its name.
    pub name: Arc<str>,
    /// Whether it takes calls.
    pub health: Health,
    /// Streams it is serving now.
    pub open_streams: usize,
    /// Requests its last rate-limit headers said were left.
    pub remaining_requests: Option<u64>,
    /// Tokens its last rate-limit headers said were left.
    pub remaining_tokens: Option<u64>,
}

impl Pool {
    /// Configures a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            deployments: Vec::new(),
            breaker: Breaker {
                failures: 3,
                window: Duration::from_secs(60),
                failure_rate: 0.5,
                cooldown: Duration::from_secs(30),
                max_cooldown: Duration::from_secs(300),
            },
            hedge: None,
            budget: 0.1,
            #[cfg(feature = "redis")]
            remote: None,
            #[cfg(feature = "otel")]
            meter: None,
        }
    }

    /// Each deployment's state, in the order they were added.
    pub fn status(&self) -> Vec<DeploymentStatus> {
        self.shared
            .deployments
            .iter()
            .map(|d| {
                let s = crate::lock(&d.standing);
                let (remaining_requests, remaining_tokens) = s.headroom.remaining();
                DeploymentStatus {
                    name: d.name.clone(),
                    health: s.health,
                    open_streams: s.open,
                    remaining_requests,
                    remaining_tokens,
                }
            })
            .collect()
    }

    /// Hedges started so far.
    pub fn hedges(&self) -> u64 {
        self.shared.hedges.load(Ordering::Relaxed)
    }

    /// The credential of deployment `name` changed: if it was locked out by
    /// a refused credential, its next call probes. Whether `name` is one of
    /// the pool's deployments.
    pub fn credential_changed(&self, name: &str) -> bool {
        let Some(d) = self.shared.deployments.iter().find(|d| &*d.name == name) else {
            return false;
        };
        let mut s = crate::lock(&d.standing);
        if s.health == Health::Locked {
            s.health = Health::CoolingDown {
                until: Instant::now(),
            };
        }
        true
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("deployments", &self.status())
            .field("breaker", &self.shared.breaker)
            .field("hedge", &self.shared.hedge)
            .finish()
    }
}

/// Builds a [`Pool`].
pub struct PoolBuilder {
    deployments: Vec<(String, u32, Svc)>,
    breaker: Breaker,
    hedge: Option<Duration>,
    budget: f64,
    #[cfg(feature = "redis")]
    remote: Option<crate::redis::SharedCooldowns>,
    #[cfg(feature = "otel")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field(
                "deployments",
                &self
                    .deployments
                    .iter()
                    .map(|(n, w, _)| (n, w))
                    .collect::<Vec<_>>(),
            )
            .field("breaker", &self.breaker)
            .field("hedge", &self.hedge)
            .field("budget", &self.budget)
            .finish()
    }
}

impl PoolBuilder {
    /// Adds a deployment named `name` (for metrics and
    /// [`ResponseMeta::deployment`](crate::ResponseMeta::deployment)), of
    /// weight 1: any service of this crate's shape — a provider, or a
    /// provider under its own layers.
    pub fn deployment<S>(self, name: impl Into<String>, service: S) -> Self
    where
        S: Service<ChatRequest, Response = ChatStream, Error = Error> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        self.weighted_deployment(name, 1, service)
    }

    /// Adds a deployment that takes `weight` times the open streams of one
    /// of weight 1 at equal cost.
    pub fn weighted_deployment<S>(
        mut self,
        name: impl Into<String>,
        weight: u32,
        service: S,
    ) -> Self
    where
        S: Service<ChatRequest, Response = ChatStream, Error = Error> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        self.deployments
            .push((name.into(), weight, BoxCloneService::new(service)));
        self
    }

    /// `n` failures within `window` take a deployment out (default 3 in
    /// 60 s), if they are at least the [failure rate](Self::failure_rate)
    /// of its calls in that window.
    pub fn failures(mut self, n: u32, window: Duration) -> Self {
        self.breaker.failures = n;
        self.breaker.window = window;
        self
    }

    /// The share of a deployment's recent calls that must have failed for
    /// its failures to take it out (default 0.5): a busy deployment that
    /// fails now and then stays in; one that fails most calls goes out.
    pub fn failure_rate(mut self, share: f64) -> Self {
        self.breaker.failure_rate = share;
        self
    }

    /// How long a deployment stays out (default 30 s); each failed probe
    /// doubles it, up to `max(cooldown, 5 min)`.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker.cooldown = cooldown;
        self.breaker.max_cooldown = cooldown.max(Duration::from_secs(300));
        self
    }

    /// Starts a second attempt on another deployment when a call has no
    /// output after `delay` (off by default).
    pub fn hedge_after(mut self, delay: Duration) -> Self {
        self.hedge = Some(delay);
        self
    }

    /// Hedges at most this share of calls (default 0.1: 10% more
    /// requests at most).
    pub fn hedge_budget(mut self, share: f64) -> Self {
        self.budget = share;
        self
    }

    /// Shares the cooldowns with every process whose pool uses the same
    /// [`SharedCooldowns`](crate::redis::SharedCooldowns) (feature `redis`):
    /// a deployment one process cools down — its breaker tripped, a 429, a
    /// failed probe — is out for the others as long, from the moment they
    /// hear of it (a Redis message, within milliseconds). Deployments are
    /// matched by name. Each process still sends its own probe when the
    /// cooldown ends; a credential refused (locked) stays a process's own.
    /// While Redis is out each process cools down on its own.
    ///
    /// Built inside a tokio runtime, the pool listens at once (else from
    /// its first call); calls made before it has read the cooldowns already
    /// running wait for that read, at most
    /// [`CONNECT_TIMEOUT`](crate::redis::CONNECT_TIMEOUT).
    #[cfg(feature = "redis")]
    pub fn shared(mut self, cooldowns: crate::redis::SharedCooldowns) -> Self {
        self.remote = Some(cooldowns);
        self
    }

    /// Records the pool's state with `meter` (feature `otel`):
    /// `llm_tower.pool.open_streams` and `llm_tower.pool.available` (1 when
    /// a deployment takes calls, 0 while it is out), gauges per
    /// `llm_tower.deployment`; `llm_tower.pool.cooldowns`, a counter of the
    /// cooldowns begun, by deployment; `llm_tower.pool.hedges`, a counter of
    /// hedged calls.
    #[cfg(feature = "otel")]
    pub fn meter(mut self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter.clone());
        self
    }

    /// Builds the pool: at least one deployment, distinct names, weights
    /// of at least 1, at least one failure, a budget from 0 to 1.
    pub fn build(self) -> Result<Pool, Error> {
        if self.deployments.is_empty() {
            return Err(Error::config("pool: no deployments"));
        }
        for (i, (name, weight, _)) in self.deployments.iter().enumerate() {
            if self.deployments[..i].iter().any(|(n, _, _)| n == name) {
                return Err(Error::config(format!(
                    "pool: two deployments named {name:?}"
                )));
            }
            if *weight == 0 {
                return Err(Error::config(format!(
                    "pool: deployment {name:?} has weight 0"
                )));
            }
        }
        if self.breaker.failures == 0 {
            return Err(Error::config("pool: failures must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.breaker.failure_rate) {
            return Err(Error::config(format!(
                "pool: failure rate {} is not a share from 0 to 1",
                self.breaker.failure_rate
            )));
        }
        if !(0.0..=1.0).contains(&self.budget) {
            return Err(Error::config(format!(
                "pool: hedge budget {} is not a share from 0 to 1",
                self.budget
            )));
        }
        let breaker = self.breaker;
        #[cfg(feature = "otel")]
        let meter = self.meter;
        let pool = Pool {
            shared: Arc::new(Shared {
                deployments: self
                    .deployments
                    .into_iter()
                    .map(|(name, weight, service)| Deployment {
                        name: name.into(),
                        weight: f64::from(weight),
                        service: Mutex::new(service),
                        standing: Mutex::new(Standing::new(&breaker)),
                    })
                    .collect(),
                breaker,
                hedge: self.hedge.map(|after| Hedge {
                    after,
                    budget: self.budget,
                }),
                calls: AtomicU64::new(0),
                hedges: AtomicU64::new(0),
                rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
                #[cfg(feature = "redis")]
                remote: self.remote.map(|cooldowns| Remote {
                    cooldowns,
                    origin: crate::redis::SharedCooldowns::origin(),
                    listening: std::sync::atomic::AtomicBool::new(false),
                    synced: tokio::sync::watch::Sender::new(false),
                }),
                #[cfg(feature = "otel")]
                instruments: std::sync::OnceLock::new(),
            }),
        };
        #[cfg(feature = "otel")]
        if let Some(meter) = meter {
            let _ = pool
                .shared
                .instruments
                .set(Instruments::new(&meter, &pool.shared));
        }
        // Built inside the runtime (as a server builds its stack): listen
        // from now on, so that the first calls know the cooldowns other
        // processes already set. Otherwise the first call starts it.
        #[cfg(feature = "redis")]
        pool.shared.listen();
        Ok(pool)
    }
}

impl Shared {
    fn id(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// A number from 0 to `n - 1` (n > 0).
    fn random(&self, n: usize) -> usize {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % n as u64) as usize
    }

    /// Two distinct positions from 0 to `n - 1` drawn at random (the same
    /// one twice when `n` is 1; n > 0).
    fn draw_two(&self, n: usize) -> (usize, usize) {
        if n == 1 {
            return (0, 0);
        }
        let x = self.random(n);
        (x, (x + 1 + self.random(n - 1)) % n)
    }

    /// Picks a deployment for a call and counts the call on it: power of two
    /// choices among those that take calls and are not `never`, those
    /// `avoid` says to avoid left out while another takes calls. `Err` with
    /// the soonest time one is back when none takes calls.
    fn pick(
        &self,
        avoid: impl Fn(usize) -> bool,
        never: impl Fn(usize) -> bool,
    ) -> Result<usize, Option<Instant>> {
        let now = Instant::now();
        if let Some(chosen) = self.pick_two(&avoid, &never, now) {
            return Ok(chosen);
        }
        // A racing call may take the one picked (its probe): look again.
        for _ in 0..4 {
            let mut soonest: Option<Instant> = None;
            let mut open = Vec::with_capacity(self.deployments.len());
            for (i, d) in self.deployments.iter().enumerate() {
                if never(i) {
                    continue;
                }
                let s = crate::lock(&d.standing);
                match s.admits(now) {
                    Ok(_) => open.push((i, s.cost(d.weight, now))),
                    Err(back) => soonest = crate::nearer(soonest, back),
                }
            }
            if open.is_empty() {
                return Err(soonest);
            }
            if open.iter().any(|(i, _)| !avoid(*i)) {
                open.retain(|(i, _)| !avoid(*i));
            }
            let (x, y) = self.draw_two(open.len());
            let chosen = cheaper(open[x], open[y]);
            let d = &self.deployments[chosen];
            let mut s = crate::lock(&d.standing);
            if let Ok(probe) = s.admits(now) {
                s.start(probe);
                if probe {
                    tracing::info!(
                        deployment = &*d.name,
                        "probing a deployment after its cooldown"
                    );
                }
                return Ok(chosen);
            }
        }
        Err(None)
    }

    /// The common case without a scan: two deployments drawn at random both
    /// take calls (and are not to be avoided); the cheaper is counted and
    /// returned. `None` when the draw says nothing, for the full pick.
    fn pick_two(
        &self,
        avoid: &impl Fn(usize) -> bool,
        never: &impl Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        let (x, y) = self.draw_two(self.deployments.len());
        let cost = |i: usize| {
            if avoid(i) || never(i) {
                return None;
            }
            let d = &self.deployments[i];
            let s = crate::lock(&d.standing);
            // A probe is the full pick's to hand out.
            matches!(s.admits(now), Ok(false)).then(|| s.cost(d.weight, now))
        };
        let chosen = cheaper((x, cost(x)?), (y, cost(y)?));
        let mut s = crate::lock(&self.deployments[chosen].standing);
        matches!(s.admits(now), Ok(false)).then(|| {
            s.start(false);
            chosen
        })
    }

    /// Records how a call sent to deployment `index` went, and the
    /// rate-limit `report` of its answer (else of its `error`).
    fn record(
        &self,
        index: usize,
        outcome: Outcome,
        report: Option<&RateLimitInfo>,
        error: Option<&Error>,
    ) {
        let d = &self.deployments[index];
        let now = Instant::now();
        let report = report.or_else(|| {
            error
                .and_then(Error::api_error)
                .and_then(ApiError::rate_limit)
        });
        let changed = {
            let mut s = crate::lock(&d.standing);
            if let Some(info) = report {
                s.headroom.update(info, now);
            }
            s.record(outcome, &self.breaker, now)
        };
        match changed {
            Some(Health::CoolingDown { until }) => {
                let length = until.saturating_duration_since(now);
                tracing::warn!(
                    llm_tower.event = "cooldown",
                    deployment = &*d.name,
                    cooldown_ms = i64::try_from(length.as_millis()).unwrap_or(i64::MAX),
                    error = error.map(tracing::field::display),
                    "deployment cooling down"
                );
                #[cfg(feature = "redis")]
                if let Some(remote) = &self.remote
                    && !length.is_zero()
                {
                    remote.cooldowns.publish(remote.origin, &d.name, length);
                }
                #[cfg(feature = "otel")]
                if let Some(i) = self.instruments.get() {
                    i.cooldowns.add(
                        1,
                        &[opentelemetry::KeyValue::new(
                            "llm_tower.deployment",
                            d.name.to_string(),
                        )],
                    );
                }
            }
            Some(Health::InService) => {
                tracing::info!(deployment = &*d.name, "deployment back in service");
            }
            Some(Health::Locked) => tracing::warn!(
                deployment = &*d.name,
                error = error.map(tracing::field::display),
                "deployment out until its credential changes"
            ),
            Some(Health::Probing) | None => {}
        }
    }

    /// Listens to the cooldowns other processes publish, from when the pool
    /// is built inside a runtime (or else its first call), for as long as
    /// the pool lives.
    #[cfg(feature = "redis")]
    fn listen(self: &Arc<Self>) {
        let Some(remote) = &self.remote else {
            return;
        };
        if remote.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        let names = self.deployments.iter().map(|d| d.name.clone()).collect();
        let apply = Arc::downgrade(self);
        let alive = Arc::downgrade(self);
        let synced = remote.synced.clone();
        let spawned = remote.cooldowns.listen(
            remote.origin,
            names,
            move |name, length| {
                if let Some(shared) = apply.upgrade() {
                    shared.cooled_elsewhere(name, length);
                }
            },
            move || {
                synced.send_replace(true);
            },
            move || alive.strong_count() > 0,
        );
        if !spawned {
            // No runtime here: the next call tries again.
            remote.listening.store(false, Ordering::Release);
        }
    }

    /// Until the listener has read the cooldowns other processes set
    /// before this pool listened: a wait for it, bounded by the store's
    /// connect budget (a cold start), after which the call goes on with
    /// what this process knows.
    #[cfg(feature = "redis")]
    pub(super) fn sync(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        let remote = self.remote.as_ref()?;
        if *remote.synced.borrow() || !remote.listening.load(Ordering::Acquire) {
            return None;
        }
        let mut synced = remote.synced.subscribe();
        let bound = remote.cooldowns.store().connect_budget();
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(bound, synced.wait_for(|s| *s)).await;
        }))
    }

    /// Another process cooled deployment `name` down for `length`.
    #[cfg(feature = "redis")]
    fn cooled_elsewhere(&self, name: &str, length: Duration) {
        let Some(d) = self.deployments.iter().find(|d| &*d.name == name) else {
            return;
        };
        let now = Instant::now();
        let until = crate::later_or_far(now, length);
        if crate::lock(&d.standing).cool_until(until) {
            tracing::info!(
                deployment = name,
                cooldown_ms = length.as_millis() as u64,
                "deployment cooling down: another process saw it fail"
            );
        }
    }

    /// Counts a hedged call.
    fn hedged(&self) {
        self.hedges.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "otel")]
        if let Some(i) = self.instruments.get() {
            i.hedges.add(1, &[]);
        }
    }

    /// The error of a call no deployment takes.
    fn exhausted(&self, soonest: Option<Instant>) -> Error {
        let retry_after = soonest.map(|t| t.saturating_duration_since(Instant::now()));
        let message = match retry_after {
            Some(d) => format!(
                "all {} deployments are out; the first is back in {d:?}",
                self.deployments.len()
            ),
            None => format!(
                "all {} deployments are out (probing, or refusing their credentials)",
                self.deployments.len()
            ),
        };
        Error::Overloaded {
            retry_after,
            error: Box::new(ApiError {
                provider: "pool",
                error_type: Some("no_deployment".into()),
                message: Some(message),
                retry_after,
                local: true,
                ..ApiError::default()
            }),
        }
    }

    /// Whether the budget allows one more hedge.
    fn may_hedge(&self, budget: f64) -> bool {
        let calls = self.calls.load(Ordering::Relaxed) as f64;
        let hedges = self.hedges.load(Ordering::Relaxed) as f64;
        hedges < budget * calls
    }
}

#[cfg(feature = "otel")]
impl Instruments {
    fn new(meter: &opentelemetry::metrics::Meter, shared: &Arc<Shared>) -> Self {
        use opentelemetry::KeyValue;
        // A value per deployment, read from its standing now.
        let each = |shared: &std::sync::Weak<Shared>, read: fn(&Standing, Instant) -> u64| {
            let mut points = Vec::new();
            if let Some(shared) = shared.upgrade() {
                let now = Instant::now();
                for d in &shared.deployments {
                    let value = read(&crate::lock(&d.standing), now);
                    points.push((
                        value,
                        KeyValue::new("llm_tower.deployment", d.name.to_string()),
                    ));
                }
            }
            points
        };
        fn open(s: &Standing, _: Instant) -> u64 {
            s.open as u64
        }
        fn available(s: &Standing, now: Instant) -> u64 {
            u64::from(s.admits(now).is_ok())
        }
        let (weak_open, weak_available) = (Arc::downgrade(shared), Arc::downgrade(shared));
        Instruments {
            cooldowns: meter
                .u64_counter("llm_tower.pool.cooldowns")
                .with_unit("{cooldown}")
                .with_description("Cooldowns begun, by deployment.")
                .build(),
            hedges: meter
                .u64_counter("llm_tower.pool.hedges")
                .with_unit("{call}")
                .with_description("Calls hedged on a second deployment.")
                .build(),
            _open: meter
                .u64_observable_gauge("llm_tower.pool.open_streams")
                .with_unit("{stream}")
                .with_description("Streams each deployment is serving.")
                .with_callback(move |observer| {
                    for (value, attribute) in each(&weak_open, open) {
                        observer.observe(value, &[attribute]);
                    }
                })
                .build(),
            _available: meter
                .u64_observable_gauge("llm_tower.pool.available")
                .with_unit("1")
                .with_description("1 when a deployment takes calls, 0 while it is out.")
                .with_callback(move |observer| {
                    for (value, attribute) in each(&weak_available, available) {
                        observer.observe(value, &[attribute]);
                    }
                })
                .build(),
        }
    }
}

/// The cheaper of two (deployment, cost) candidates; the first on a tie.
fn cheaper(a: (usize, f64), b: (usize, f64)) -> usize {
    if b.1 < a.1 { b.0 } else { a.0 }
}

/// A call's count on the deployment serving it, held by its stream: the
/// deployment's open streams drop when the stream ends or is dropped.
struct Open {
    shared: Arc<Shared>,
    index: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut s = crate::lock(&self.shared.deployments[self.index].standing);
        s.open = s.open.saturating_sub(1);
    }
}

impl Service<ChatRequest> for Pool {
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture;

    /// Always ready: the deployment is picked, and readied, in the call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChatRequest) -> ResponseFuture {
        ResponseFuture::new(self.shared.clone(), req)
    }
}
