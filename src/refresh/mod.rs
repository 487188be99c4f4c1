//! Refresh credentials on 401 and retry once, single-flight across callers.
//!
//! [`RefreshLayer`] takes a [`CredentialSource`] — a closure returning a
//! future, or a type implementing the trait — and manages one credential
//! shared by every service it builds and their clones:
//!
//! - every request carries the current credential, read when the request is
//!   *sent* (not when the call started), so a call that waited in a limiter
//!   or a buffer never sends a key that was replaced meanwhile; providers
//!   send it instead of their configured key;
//! - a credential that says when it expires is refreshed before it does
//!   (within a configurable margin, default 60 s), so requests never meet the
//!   401;
//! - on [`Error::Unauthorized`] before any output (or any error the
//!   [`refresh_on`](RefreshLayer::refresh_on) predicate selects), the call
//!   is retried **once** with a fresh credential. Refresh is single-flight
//!   with a generation counter: callers that failed on the same stale
//!   credential share one refresh; a caller whose credential was already
//!   replaced retries with the new one without refreshing again;
//! - if the refresh fails, the caller gets the original error and the
//!   refresh error is logged (`tracing::warn!`); if the retried call is
//!   refused again, the caller gets that second error unchanged.
//!
//! It is the [attempt engine](crate::engine) with a refresh policy: a 401 sent
//! as an error event inside a stream is handled like one in the response
//! head, and nothing is retried after output.
//!
//! ```
//! use llm_tower::mock::{MockServer, Reply};
//! use llm_tower::{Credential, RefreshLayer};
//! use llm_tower::{ChatRequest, Message, OpenAi};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let server = MockServer::start().await;
//! server.accept_keys(["fresh-token"]);
//!
//! let openai = OpenAi::builder().base_url(server.openai_url()).model("m").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(
//!         RefreshLayer::new(|| async { Ok::<_, std::io::Error>(Credential::bearer("fresh-token")) })
//!             .initial(Credential::bearer("stale-token")),
//!     )
//!     .service(openai);
//!
//! let answer = service.oneshot(ChatRequest::new("").message(Message::user("hi"))).await?;
//! assert_eq!(answer.meta().attempts, 2); // a 401 with the stale token, then success
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::engine::{Engine, Policy};
use crate::{BoxError, ChatRequest, ChatStream, Error};

mod command;
mod credential;
#[cfg(feature = "redis")]
mod shared;

use crate::auth::Credential;
use crate::auth::{AuthHeader, CredentialSupply, SuppliedCredential};
use crate::call::{CallHandle, credential_token};
pub use command::CommandSource;
pub use credential::{CredentialFuture, CredentialSource};

pub(crate) mod layer;

use layer::RefreshLayer;

type Classifier = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// A service whose requests carry a managed credential, refreshed on 401.
/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Refresh<S> {
    engine: Engine<S, RefreshPolicy>,
}

impl<S> Refresh<S> {
    /// `inner`, its requests carrying `layer`'s credential (shared with
    /// every service of that layer and their clones).
    pub fn new(inner: S, layer: RefreshLayer) -> Self {
        Refresh {
            engine: Engine::new(inner, layer.policy),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.engine.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.engine.get_mut()
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.engine.into_inner()
    }
}

impl<S> tower::Service<ChatRequest> for Refresh<S>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.engine.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        ResponseFuture {
            inner: self.engine.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`Refresh`]: the [attempt engine](crate::engine)'s.
    pub struct ResponseFuture<S>
    where
        S: tower::Service<ChatRequest>,
    {
        #[pin]
        inner: crate::engine::ResponseFuture<S, RefreshPolicy>,
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: tower::Service<ChatRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

/// The [`Policy`] of [`Refresh`]: fetch a credential the call cannot be
/// sent with, stamp the credential handle, refresh once on the chosen errors.
#[derive(Clone)]
pub(crate) struct RefreshPolicy {
    store: Arc<Store>,
    margin: Duration,
    refresh_on: Classifier,
}

impl fmt::Debug for RefreshPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshPolicy")
            .field("margin", &self.margin)
            .field("generation", &self.store.lock().generation)
            .finish_non_exhaustive()
    }
}

/// What [`RefreshPolicy`] remembers for one call.
#[derive(Debug)]
pub(crate) struct CallState {
    /// Where the provider records the generation of the credential the last
    /// attempt was sent with, and under what.
    record: Option<(CallHandle, u64)>,
    refreshed: bool,
}

impl Policy for RefreshPolicy {
    type State = CallState;
    type Wait = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn start(&self, request: &ChatRequest) -> CallState {
        CallState {
            record: request.call_handle().map(|call| (call, credential_token())),
            refreshed: false,
        }
    }

    fn before_first(&self, _state: &mut CallState, _request: &ChatRequest) -> Option<Self::Wait> {
        let seen = {
            let state = self.store.lock();
            let usable = state
                .current
                .as_ref()
                .is_some_and(|c| !c.credential.expires_within(self.margin));
            if usable {
                return None;
            }
            state.generation
        };
        // Fetch (or renew) before sending. A credential close to expiry is
        // still worth sending if the fetch fails; with none at all there is
        // nothing to send.
        let store = self.store.clone();
        let margin = self.margin;
        Some(Box::pin(async move {
            match store.clone().refresh(seen, margin).await {
                Err(e) if store.lock().current.is_none() => Err(e),
                _ => Ok(()),
            }
        }))
    }

    fn prepare(&self, state: &mut CallState, request: &mut ChatRequest) {
        request.credential = Some(SuppliedCredential::new(
            self.store.clone(),
            state.record.clone(),
        ));
    }

    fn on_failure(&self, state: &mut CallState, error: &Error) -> Option<Self::Wait> {
        if state.refreshed || !(self.refresh_on)(error) {
            return None;
        }
        state.refreshed = true;
        let sent = state
            .record
            .as_ref()
            .and_then(|(call, token)| call.credential_sent(*token));
        // The inner service never read our credential (not one of ours, or
        // a refresh layer inside supplied its own), or its record was pushed
        // out by more hedged attempts than the call keeps: treat the
        // current credential as the refused one.
        let used = sent.unwrap_or_else(|| self.store.lock().generation);
        tracing::info!(
            llm_tower.event = "refresh",
            reason = error.kind(),
            generation = i64::try_from(used).unwrap_or(i64::MAX),
            "credential refused; refreshing and retrying once"
        );
        let store = self.store.clone();
        let margin = self.margin;
        Some(Box::pin(async move { store.refresh(used, margin).await }))
    }
}

/// A credential with its header ready to send.
struct Stamped {
    credential: Credential,
    header: AuthHeader,
}

impl Stamped {
    fn new(credential: Credential) -> Result<Self, Error> {
        let header = credential.header_pair()?;
        Ok(Stamped { credential, header })
    }
}

#[derive(Default)]
struct State {
    current: Option<Arc<Stamped>>,
    /// Bumped by every successful refresh.
    generation: u64,
    /// Bumped by every refresh that ran to a failure. A fetch dropped
    /// before it ended (its caller timed out or went away) is no failure:
    /// the next waiter fetches.
    failures: u64,
    last_error: Option<Arc<BoxError>>,
    /// Which credential on Redis the current one is (none: not read or
    /// written there), when it is shared.
    #[cfg(feature = "redis")]
    shared_id: Option<String>,
}

/// The credential shared by every service of one layer.
struct Store {
    source: Box<dyn CredentialSource>,
    state: Mutex<State>,
    /// Held while the source runs: the single flight.
    refresh_lock: tokio::sync::Mutex<()>,
    /// The credential on Redis, shared with other processes.
    #[cfg(feature = "redis")]
    remote: std::sync::OnceLock<crate::redis::SharedCredential>,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Makes sure the credential is newer than generation `seen`: refreshes
    /// unless another caller already did, or tried and failed while this
    /// one waited.
    async fn refresh(self: Arc<Self>, seen: u64, margin: Duration) -> Result<(), Error> {
        let failures_before = self.lock().failures;
        let _flight = self.refresh_lock.lock().await;
        {
            let state = self.lock();
            if state.generation != seen {
                return Ok(());
            }
            if state.failures != failures_before {
                let source = state.last_error.clone().map_or_else(
                    || BoxError::from("a concurrent credential refresh failed"),
                    SharedError::boxed,
                );
                return Err(Error::Refresh { source });
            }
        }
        let fetched = match self.obtain(margin).await {
            Ok((credential, shared)) => Stamped::new(credential)
                .map(|s| (s, shared))
                .map_err(|e| Box::new(e) as BoxError),
            Err(e) => Err(e),
        };
        let mut state = self.lock();
        match fetched {
            Ok((stamped, _shared)) => {
                state.current = Some(Arc::new(stamped));
                state.generation += 1;
                state.last_error = None;
                #[cfg(feature = "redis")]
                if _shared.is_some() {
                    state.shared_id = _shared;
                }
                tracing::info!(generation = state.generation, "credential refreshed");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "credential refresh failed");
                let e = Arc::new(e);
                state.failures += 1;
                state.last_error = Some(e.clone());
                Err(Error::Refresh {
                    source: SharedError::boxed(e),
                })
            }
        }
    }
}

/// A fresh credential, and which one on Redis it is when it is shared.
type Obtained = (Credential, Option<String>);

impl Store {
    /// A fresh credential: from the source, or, when it is shared, from
    /// Redis if another process refreshed it, else from the source by this
    /// process alone.
    async fn obtain(&self, _margin: Duration) -> Result<Obtained, BoxError> {
        #[cfg(feature = "redis")]
        if let Some(remote) = self.remote.get() {
            return self.obtain_shared(remote, _margin).await;
        }
        self.source.fetch().await.map(|c| (c, None))
    }
}

/// A refresh error, shared by the callers that waited on the same refresh.
#[derive(Debug)]
struct SharedError(Arc<BoxError>);

impl SharedError {
    /// The error for one caller: a copy of a typed error this crate made
    /// (Redis out, with [`OnOutage::Refuse`](crate::redis::OnOutage)), so
    /// that the caller can downcast it; else the shared one.
    fn boxed(e: Arc<BoxError>) -> BoxError {
        #[cfg(feature = "redis")]
        if let Some(store) = e.downcast_ref::<crate::redis::StoreError>() {
            return Box::new(store.clone());
        }
        Box::new(SharedError(e))
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What [`RefreshPolicy`] puts in each request: providers read the current
/// credential from the store when they send, and record which generation
/// they sent.
impl CredentialSupply for Store {
    fn current(&self) -> Option<(AuthHeader, u64)> {
        let state = self.lock();
        let stamped = state.current.as_ref()?;
        Some((stamped.header.clone(), state.generation))
    }
}
