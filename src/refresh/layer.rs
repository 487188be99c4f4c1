//! [`RefreshLayer`]: the settings, and the layer that applies them.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Error;
use crate::auth::Credential;
use crate::engine::Engine;

use super::credential::CredentialSource;
use super::{Refresh, RefreshPolicy, Stamped, State, Store};

/// Applies [`Refresh`]. All services it builds, and their clones, share one
/// credential. See the [module docs](crate::refresh).
#[derive(Clone)]
pub struct RefreshLayer {
    pub(super) policy: RefreshPolicy,
}

impl RefreshLayer {
    /// Credentials come from `source`; the first call fetches one.
    pub fn new(source: impl CredentialSource) -> Self {
        RefreshLayer {
            policy: RefreshPolicy {
                store: Arc::new(Store {
                    source: Box::new(source),
                    state: Mutex::new(State::default()),
                    refresh_lock: tokio::sync::Mutex::new(()),
                    #[cfg(feature = "redis")]
                    remote: std::sync::OnceLock::new(),
                }),
                margin: Duration::from_secs(60),
                refresh_on: Arc::new(|e| matches!(e, Error::Unauthorized { .. })),
            },
        }
    }

    /// Starts with `credential` (one the host already holds) instead of
    /// fetching on the first call.
    pub fn initial(self, credential: Credential) -> Self {
        match Stamped::new(credential) {
            Ok(stamped) => self.policy.store.lock().current = Some(Arc::new(stamped)),
            Err(e) => tracing::warn!(error = %e, "ignoring the initial credential"),
        }
        self
    }

    /// Refreshes a credential that expires within `margin` before sending
    /// with it (default 60 s).
    pub fn margin(mut self, margin: Duration) -> Self {
        self.policy.margin = margin;
        self
    }

    /// Which failures before output trigger a refresh and one retry (default:
    /// [`Error::Unauthorized`]). For example, to include 403:
    ///
    /// ```
    /// # use llm_tower::{Credential, RefreshLayer};
    /// # use llm_tower::Error;
    /// # let layer = RefreshLayer::new(|| async { Ok::<_, std::io::Error>(Credential::bearer("t")) });
    /// let layer = layer.refresh_on(|e| matches!(e, Error::Unauthorized { .. } | Error::Forbidden { .. }));
    /// ```
    pub fn refresh_on(
        mut self,
        predicate: impl Fn(&Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.policy.refresh_on = Arc::new(predicate);
        self
    }

    /// Shares the credential with every process that uses the same
    /// [`SharedCredential`](crate::redis::SharedCredential) (feature
    /// `redis`). A refresh is single-flight across them: one process takes
    /// a lock with a lease and calls the source; the others wait for the
    /// new credential and read it, never calling the source themselves. A
    /// process that dies mid-refresh loses its lease, and the next waiter
    /// refreshes. The credential is encrypted at rest with the key the
    /// [`SharedCredential`](crate::redis::SharedCredential) was made with.
    ///
    /// The lease ([`SharedCredential::lease`](crate::redis::SharedCredential::lease),
    /// 30 s by default) also bounds the source: a fetch that takes longer
    /// fails, since another process may by then take the lock and call the
    /// source too. Like the credential, the sharing belongs to this layer and
    /// to every clone of it (they share one credential).
    ///
    /// While Redis is out, the store's [`OnOutage`](crate::redis::OnOutage)
    /// decides: refresh alone from the source (the default), or fail the
    /// refresh. A process that already waits for another's refresh waits a
    /// Redis hiccup out rather than calling the source itself.
    #[cfg(feature = "redis")]
    pub fn shared(self, credential: crate::redis::SharedCredential) -> Self {
        if self.policy.store.remote.set(credential).is_err() {
            tracing::warn!(
                "RefreshLayer::shared: the credential is already shared; keeping the first"
            );
        }
        self
    }

    /// How many credentials the source has produced so far.
    pub fn generation(&self) -> u64 {
        self.policy.store.lock().generation
    }
}

impl fmt::Debug for RefreshLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshLayer")
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S> tower::Layer<S> for RefreshLayer {
    type Service = Refresh<S>;

    fn layer(&self, inner: S) -> Refresh<S> {
        Refresh {
            engine: Engine::new(inner, self.policy.clone()),
        }
    }
}
