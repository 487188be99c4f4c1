//! A refresh across processes: the credential on Redis, single-flight
//! under a lock with a lease.

use std::time::Duration;

use tokio::time::Instant;

use crate::BoxError;
use crate::redis::{OnOutage, SharedCredential, StoreError, Stored};

use super::{Obtained, Store};

/// How often a process waiting for another's refresh looks for it.
const POLL: Duration = Duration::from_millis(50);

impl Store {
    /// A credential other than the one this process holds, not expiring
    /// within `margin`: read from Redis if another process refreshed it,
    /// else fetched from the source by this process under the lock, and
    /// written back for the others.
    pub(super) async fn obtain_shared(
        &self,
        remote: &SharedCredential,
        margin: Duration,
    ) -> Result<Obtained, BoxError> {
        let known = self.lock().shared_id.clone();
        let newer =
            |s: &Stored| Some(&s.id) != known.as_ref() && !s.credential.expires_within(margin);
        // A holder that died frees the lock within its lease; past twice
        // that, something else is wrong.
        let give_up = crate::later_or_far(
            Instant::now(),
            remote
                .lease_time()
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(1)),
        );
        // Once another process is seen refreshing, a Redis that hiccups is
        // waited out (up to `give_up`) rather than refreshed around.
        let mut waiting = false;
        let lease = loop {
            match remote.read().await {
                Ok(Some(stored)) if newer(&stored) => return Ok(adopted(stored)),
                Ok(_) => {}
                Err(_) if waiting && Instant::now() < give_up => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => return self.without_redis(remote, e).await,
            }
            match remote.try_lock().await {
                Ok(Some(lease)) => break lease,
                Ok(None) | Err(_) if waiting && Instant::now() >= give_up => {
                    return Err(
                        "timed out waiting for another process to refresh the shared credential"
                            .into(),
                    );
                }
                Ok(None) => waiting = true,
                Err(_) if waiting => {}
                Err(e) => return self.without_redis(remote, e).await,
            }
            tokio::time::sleep(POLL).await;
        };
        // Under the lock: another process may have written just before.
        // Returning drops the lease, which frees the lock.
        match remote.read().await {
            Ok(Some(stored)) if newer(&stored) => return Ok(adopted(stored)),
            Ok(_) => {}
            Err(e) => return self.without_redis(remote, e).await,
        }
        // The lease bounds the fetch: past it another process may take the
        // lock and call the source too.
        let credential = match tokio::time::timeout(remote.lease_time(), self.source.fetch()).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(format!(
                    "the credential source took longer than the lease ({:?})",
                    remote.lease_time()
                )
                .into());
            }
        };
        match remote.publish(lease, &credential).await {
            Ok(Some((id, generation))) => {
                tracing::info!(generation, "credential refreshed and shared on Redis");
                Ok((credential, Some(id)))
            }
            Ok(None) => {
                tracing::warn!(
                    "the lease on the shared credential was lost during the refresh; \
                     using the new credential in this process only"
                );
                Ok((credential, None))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not share the refreshed credential");
                Ok((credential, None))
            }
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

/// A credential another process refreshed.
fn adopted(stored: Stored) -> Obtained {
    tracing::info!(
        generation = stored.generation,
        "credential read from Redis, refreshed by another process"
    );
    (stored.credential, Some(stored.id))
}
