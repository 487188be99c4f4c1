//! A refresh across processes: the credential on Redis, single-flight
//! under a lock with a lease.

use std::time::Duration;

use tokio::time::Instant;

use crate::BoxError;
use crate::redis::{OnOutage, SharedCredential, StoreError};

use super::{Obtained, Store};

/// How often a process waiting for another's refresh looks for it.
const POLL: Duration = Duration::from_millis(50);

impl Store {
    /// A credential newer than the one this process holds: read from Redis
    /// if another process refreshed it, else fetched from the source by
    /// this process under the lock, and written back for the others.
    pub(super) async fn obtain_shared(
        &self,
        remote: &SharedCredential,
    ) -> Result<Obtained, BoxError> {
        let known = self.lock().shared_generation;
        // A holder that died frees the lock within its lease; past twice
        // that, something else is wrong.
        let give_up = Instant::now() + remote.lease_time() * 2 + Duration::from_secs(1);
        loop {
            match remote.read().await {
                Ok(Some(stored)) if stored.generation > known => {
                    tracing::info!(
                        generation = stored.generation,
                        "credential read from Redis, refreshed by another process"
                    );
                    return Ok((stored.credential, Some(stored.generation)));
                }
                Ok(_) => {}
                Err(e) => return self.without_redis(remote, e).await,
            }
            let lease = match remote.try_lock().await {
                Ok(Some(lease)) => lease,
                Ok(None) if Instant::now() < give_up => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Ok(None) => {
                    return Err(
                        "timed out waiting for another process to refresh the shared credential"
                            .into(),
                    );
                }
                Err(e) => return self.without_redis(remote, e).await,
            };
            // Under the lock: another process may have written just before.
            let seen = match remote.read().await {
                Ok(Some(stored)) if stored.generation > known => {
                    remote.unlock(lease);
                    return Ok((stored.credential, Some(stored.generation)));
                }
                Ok(stored) => stored.map_or(0, |s| s.generation),
                Err(e) => {
                    remote.unlock(lease);
                    return self.without_redis(remote, e).await;
                }
            };
            let credential = match self.source.fetch().await {
                Ok(c) => c,
                Err(e) => {
                    remote.unlock(lease);
                    return Err(e);
                }
            };
            return match remote.publish(&lease, seen, &credential).await {
                Ok(Some(generation)) => Ok((credential, Some(generation))),
                Ok(None) => {
                    tracing::warn!(
                        "the lease on the shared credential expired during the refresh; \
                         using the new credential in this process only"
                    );
                    Ok((credential, None))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not share the refreshed credential");
                    Ok((credential, None))
                }
            };
        }
    }

    /// Redis is out: refresh alone, or fail, as the store says.
    async fn without_redis(
        &self,
        remote: &SharedCredential,
        error: StoreError,
    ) -> Result<Obtained, BoxError> {
        match remote.store().on_outage() {
            OnOutage::Refuse => Err(Box::new(error)),
            _ => {
                if error == StoreError::Decrypt {
                    tracing::warn!(
                        "the shared credential cannot be decrypted (do the processes share one key?); \
                         refreshing in this process only"
                    );
                }
                self.source.fetch().await.map(|c| (c, None))
            }
        }
    }
}
