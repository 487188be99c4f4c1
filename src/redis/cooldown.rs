//! A pool's cooldowns on Redis: a deployment cooled down by one process is
//! out for all of them.
//!
//! A cooldown is written twice: as a key that expires with it
//! (`<prefix>:cool:{<namespace>}:<deployment>`), for a process that starts
//! or reconnects to read, and as a message on the channel
//! `<prefix>:cool:{<namespace>}`, which every process of the pool listens
//! to and applies at once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::RedisStore;

/// The cooldowns of one pool's deployments, on Redis, for
/// [`PoolBuilder::shared`](crate::pool::PoolBuilder::shared). Made by
/// [`RedisStore::cooldowns`].
#[derive(Clone)]
pub struct SharedCooldowns {
    store: RedisStore,
    channel: Arc<str>,
}

impl fmt::Debug for SharedCooldowns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCooldowns")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// How often a listener with nothing to hear checks that its pool is still
/// there.
const LIVENESS: Duration = Duration::from_secs(5);

impl SharedCooldowns {
    pub(crate) fn new(store: RedisStore, namespace: &str) -> Self {
        SharedCooldowns {
            channel: store.key("cool", namespace).into(),
            store,
        }
    }

    /// The store these cooldowns are on.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    fn key(&self, deployment: &str) -> String {
        format!("{}:{deployment}", self.channel)
    }

    /// A mark for one pool's messages, so that it does not hear its own
    /// cooldowns back.
    pub(crate) fn origin() -> u64 {
        super::credential::random_u128() as u64
    }

    /// Tells every process that `deployment` is out for `length`, from the
    /// pool marked `origin`, in the background.
    pub(crate) fn publish(&self, origin: u64, deployment: &str, length: Duration) {
        let ms = length.as_millis().clamp(1, 1 << 53) as u64;
        let key = self.key(deployment);
        let channel = self.channel.clone();
        let message = format!("{ms}|{origin:x}|{deployment}");
        self.store.spawn(move |mut c| async move {
            ::redis::pipe()
                .cmd("SET")
                .arg(key)
                .arg(1)
                .arg("PX")
                .arg(ms)
                .ignore()
                .cmd("PUBLISH")
                .arg(&*channel)
                .arg(message)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        });
    }

    /// Listens, in the background, for the cooldowns other pools publish
    /// (not those marked `origin`): `apply(deployment, length)` for each,
    /// and for those already running whenever it (re)connects; `synced()`
    /// once those are applied, or the try to read them failed. Stops once
    /// `alive` says the pool is gone. Reconnects by itself. `false` when
    /// there is no runtime to listen on.
    pub(crate) fn listen(
        &self,
        origin: u64,
        deployments: Vec<Arc<str>>,
        apply: impl Fn(&str, Duration) + Send + Sync + 'static,
        synced: impl Fn() + Send + Sync + 'static,
        alive: impl Fn() -> bool + Send + Sync + 'static,
    ) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let this = self.clone();
        handle.spawn(async move {
            while alive() {
                let heard = this
                    .listen_once(origin, &deployments, &apply, &synced, &alive)
                    .await;
                // Calls waiting for the first read go on without it.
                synced();
                if let Err(e) = heard {
                    tracing::debug!(error = %e, "pool cooldowns: listener lost Redis; retrying");
                }
                tokio::time::sleep(this.store.retry_after()).await;
            }
        });
        true
    }

    async fn listen_once(
        &self,
        origin: u64,
        deployments: &[Arc<str>],
        apply: &(impl Fn(&str, Duration) + Send + Sync),
        synced: &(impl Fn() + Send + Sync),
        alive: &(impl Fn() -> bool + Send + Sync),
    ) -> Result<(), String> {
        let budget = self.store.connect_budget();
        let pubsub = tokio::time::timeout(budget, self.store.client().get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (mut sink, mut messages) = pubsub.split();
        tokio::time::timeout(budget, sink.subscribe(&*self.channel))
            .await
            .map_err(|_| "subscribe timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        // What was published before this listener was there.
        let keys: Vec<String> = deployments.iter().map(|d| self.key(d)).collect();
        let running: Vec<i64> = self
            .store
            .run(|mut c| async move {
                let mut pipe = ::redis::pipe();
                for key in keys {
                    pipe.cmd("PTTL").arg(key);
                }
                pipe.query_async(&mut c).await
            })
            .await
            .map_err(|e| e.to_string())?;
        for (deployment, ms) in deployments.iter().zip(running) {
            if ms > 0 {
                apply(deployment, Duration::from_millis(ms as u64));
            }
        }
        synced();
        loop {
            if !alive() {
                return Ok(());
            }
            match tokio::time::timeout(LIVENESS, messages.next()).await {
                Ok(Some(message)) => {
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    let mut fields = payload.splitn(3, '|');
                    if let (Some(ms), Some(from), Some(deployment)) =
                        (fields.next(), fields.next(), fields.next())
                        && let Ok(ms) = ms.parse::<u64>()
                        && u64::from_str_radix(from, 16) != Ok(origin)
                    {
                        apply(deployment, Duration::from_millis(ms));
                    }
                }
                Ok(None) => return Err("connection closed".to_owned()),
                // Quiet: make sure the connection still answers (a half-open
                // one would hear nothing for ever).
                Err(_) => match tokio::time::timeout(budget, sink.ping::<String>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("ping timed out".to_owned()),
                },
            }
        }
    }
}
