//! A credential shared on Redis: encrypted at rest, refreshed by one
//! process at a time under a lock with a lease.
//!
//! The hash `<prefix>:cred:{<name>}` holds the generation (a counter, in
//! the clear) and the credential sealed with XChaCha20-Poly1305 under the
//! key every process is given (a random 24-byte nonce per write, the key's
//! name as associated data, so a value copied to another name does not
//! open). `<prefix>:cred:{<name>}:lock` is the refresher's lease: whoever
//! sets it refreshes; it expires on its own if that process dies.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::Script;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use tokio::time::Instant;

use super::{RedisStore, StoreError};
use crate::Error;
use crate::auth::{AuthScheme, Credential};

/// The 256-bit key that seals shared credentials. Every process sharing a
/// credential needs the same one; keep it where you keep secrets (an
/// environment variable from a secret store). `Debug` never shows it.
#[derive(Clone)]
pub struct CredentialKey(chacha20poly1305::Key);

impl CredentialKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        CredentialKey(bytes.into())
    }

    /// A key from 64 hexadecimal digits (`openssl rand -hex 32` makes
    /// one).
    pub fn from_hex(hex: &str) -> Result<Self, Error> {
        let hex = hex.trim().as_bytes();
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut bytes = [0u8; 32];
        if hex.len() != 64 {
            return Err(Error::config(format!(
                "credential key: 64 hexadecimal digits expected, got {}",
                hex.len()
            )));
        }
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
                _ => {
                    return Err(Error::config("credential key: not a hexadecimal string"));
                }
            }
        }
        Ok(CredentialKey::from_bytes(bytes))
    }
}

impl fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

/// A credential shared on Redis, for
/// [`RefreshLayer::shared`](crate::RefreshLayer::shared). Made by
/// [`RedisStore::credential`].
#[derive(Clone)]
pub struct SharedCredential {
    store: RedisStore,
    key: String,
    lock: String,
    cipher: Arc<XChaCha20Poly1305>,
    lease: Duration,
}

impl fmt::Debug for SharedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCredential")
            .field("key", &self.key)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// A credential read from Redis: which one it is (a random id each write,
/// so that a Redis that lost its data and starts counting again is never
/// taken for an old one), its generation there (for logs), the credential.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) credential: Credential,
}

/// The right to refresh: the lock's token. Dropped unused (the refresh
/// failed, or its caller went away), it frees the lock in the background,
/// so that the others need not wait out the lease.
#[derive(Debug)]
pub(crate) struct Lease {
    token: String,
    shared: Option<SharedCredential>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let mut invocation = UNLOCK.prepare_invoke();
            invocation.key(&shared.lock).arg(&self.token);
            shared
                .store
                .spawn(move |mut c| async move { invocation.invoke_async::<()>(&mut c).await });
        }
    }
}

/// Writes a new credential if the lock is still the writer's, and frees
/// the lock. Returns the new generation, or 0 when the lease was lost.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') + 1
redis.call('HSET', KEYS[1], 'gen', gen, 'id', ARGV[3], 'sealed', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[2])
return gen
",
    )
});

/// Frees the lock if it is still the caller's.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// How long a shared credential is kept without a refresh.
const KEEP: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long, by default, one process may refresh before another may.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

#[derive(serde::Serialize, serde::Deserialize)]
struct Sealed {
    secret: String,
    /// `bearer`, `api_key`, or a header's name.
    scheme: String,
    /// When it expires, in ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
}

impl SharedCredential {
    pub(crate) fn new(store: RedisStore, name: &str, key: CredentialKey) -> Self {
        let key_name = store.key("cred", name);
        SharedCredential {
            lock: format!("{key_name}:lock"),
            key: key_name,
            cipher: Arc::new(XChaCha20Poly1305::new(&key.0)),
            store,
            lease: DEFAULT_LEASE,
        }
    }

    /// How long one process may take to refresh before another may take
    /// over (default [`DEFAULT_LEASE`], 30 s): longer than the source ever
    /// takes, short enough that a crashed refresher does not hold the
    /// others up for long. Between 1 ms and 30 days.
    pub fn lease(mut self, lease: Duration) -> Self {
        const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
        self.lease = lease.clamp(Duration::from_millis(1), MAX_LEASE);
        self
    }

    /// The store this credential is on.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    pub(crate) fn lease_time(&self) -> Duration {
        self.lease
    }

    /// The credential on Redis, if any.
    pub(crate) async fn read(&self) -> Result<Option<Stored>, StoreError> {
        let key = self.key.clone();
        let reply: (Option<u64>, Option<String>, Option<Vec<u8>>) = self
            .store
            .run(|mut c| async move {
                ::redis::cmd("HMGET")
                    .arg(key)
                    .arg("gen")
                    .arg("id")
                    .arg("sealed")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let (Some(generation), Some(id), Some(sealed)) = reply else {
            return Ok(None);
        };
        let credential = self.open(&sealed)?;
        Ok(Some(Stored {
            id,
            generation,
            credential,
        }))
    }

    /// Takes the lock, if free.
    pub(crate) async fn try_lock(&self) -> Result<Option<Lease>, StoreError> {
        let token = format!("{:032x}", random_u128());
        let lock = self.lock.clone();
        let lease = self.lease.as_millis().max(1) as u64;
        let reply: Option<String> = self
            .store
            .run(|mut c| {
                let token = token.clone();
                async move {
                    ::redis::cmd("SET")
                        .arg(lock)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(lease)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(reply.map(|_| Lease {
            token,
            shared: Some(self.clone()),
        }))
    }

    /// Writes `credential` for the others, under `lease`, which it frees.
    /// Its id and generation, or `None` if the lease was lost to another
    /// process.
    pub(crate) async fn publish(
        &self,
        mut lease: Lease,
        credential: &Credential,
    ) -> Result<Option<(String, u64)>, StoreError> {
        let sealed = self.seal(credential)?;
        let id = format!("{:032x}", random_u128());
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .key(&self.key)
            .key(&self.lock)
            .arg(&lease.token)
            .arg(sealed)
            .arg(&id)
            .arg(KEEP.as_millis() as u64);
        let generation: u64 = self
            .store
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        // Written, the lock went with it; lost, it is not ours to free.
        lease.shared = None;
        Ok((generation > 0).then_some((id, generation)))
    }

    fn seal(&self, credential: &Credential) -> Result<Vec<u8>, StoreError> {
        let scheme = match credential.scheme() {
            AuthScheme::Bearer => "bearer".to_owned(),
            AuthScheme::ApiKey => "api_key".to_owned(),
            AuthScheme::Header(name) => name.as_str().to_owned(),
        };
        let expires = credential.expiry().map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            let when = SystemTime::now() + left;
            when.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        let plain = serde_json::to_vec(&Sealed {
            secret: credential.expose_secret().to_owned(),
            scheme,
            expires,
        })
        .map_err(|e| StoreError::Redis(format!("a credential could not be written: {e}")))?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: self.key.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Redis("a credential could not be sealed".to_owned()))?;
        let mut out = Vec::with_capacity(nonce.len() + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> Result<Credential, StoreError> {
        const NONCE: usize = 24;
        if sealed.len() < NONCE {
            return Err(StoreError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: self.key.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Decrypt)?;
        let sealed: Sealed = serde_json::from_slice(&plain).map_err(|_| StoreError::Decrypt)?;
        let scheme = match sealed.scheme.as_str() {
            "bearer" => AuthScheme::Bearer,
            "api_key" => AuthScheme::ApiKey,
            name => AuthScheme::Header(
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| StoreError::Decrypt)?,
            ),
        };
        let mut credential = Credential::new(sealed.secret, scheme);
        if let Some(ms) = sealed.expires {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let left = Duration::from_millis(ms).saturating_sub(now);
            credential = credential.expires_at(crate::later_or_far(Instant::now(), left));
        }
        Ok(credential)
    }
}

/// A random token for the lock, from the OS.
pub(super) fn random_u128() -> u128 {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&nonce[..16]);
    u128::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(key: [u8; 32]) -> SharedCredential {
        let store = RedisStore::builder("redis://127.0.0.1:1/")
            .build()
            .expect("a Redis URL");
        store.credential("openai", CredentialKey::from_bytes(key))
    }

    #[test]
    fn sealed_credentials_open_only_with_their_key_and_name() {
        let a = shared([7; 32]);
        let secret = "sk-very-secret-token";
        let credential = Credential::bearer(secret).expires_in(Duration::from_secs(3600));
        let sealed = a.seal(&credential).unwrap();
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is not in the sealed bytes"
        );
        let opened = a.open(&sealed).unwrap();
        assert_eq!(opened.expose_secret(), secret);
        assert_eq!(opened.scheme(), &AuthScheme::Bearer);
        let left = opened.expiry().unwrap() - Instant::now();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        // Two seals of one credential differ (a fresh nonce each).
        assert_ne!(a.seal(&credential).unwrap(), sealed);
        // Another key, another name, a changed byte: none opens.
        assert_eq!(
            shared([8; 32]).open(&sealed).unwrap_err(),
            StoreError::Decrypt
        );
        let other = a
            .store
            .credential("anthropic", CredentialKey::from_bytes([7; 32]));
        assert_eq!(other.open(&sealed).unwrap_err(), StoreError::Decrypt);
        let mut changed = sealed.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(a.open(&changed).unwrap_err(), StoreError::Decrypt);
        assert_eq!(a.open(&[1, 2, 3]).unwrap_err(), StoreError::Decrypt);
    }

    #[test]
    fn keys_are_read_from_hex_and_never_shown() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let key = CredentialKey::from_hex(hex).unwrap();
        assert_eq!(format!("{key:?}"), "CredentialKey(..)");
        assert!(CredentialKey::from_hex("abc").is_err());
        assert!(CredentialKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
