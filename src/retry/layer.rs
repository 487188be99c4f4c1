use std::task::{Context, Poll};

use super::RetryPolicy;
use crate::engine::{self, Engine};
use crate::{ChatRequest, ChatStream, Error};

/// A service whose transient failures before output are retried: the
/// [attempt engine](crate::engine) with a [`RetryPolicy`].
///
/// Its own type, not an alias of the engine, so that a compiler error about
/// the service under it (say, one that is not `Clone`) names this type.
#[derive(Debug, Clone)]
pub struct TransportRetry<S> {
    engine: Engine<S, RetryPolicy>,
}

impl<S> TransportRetry<S> {
    /// `inner`, retried by `policy`.
    pub const fn new(inner: S, policy: RetryPolicy) -> Self {
        TransportRetry {
            engine: Engine::new(inner, policy),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        self.engine.policy()
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

impl<S> tower::Service<ChatRequest> for TransportRetry<S>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error> + Clone,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = engine::ResponseFuture<S, RetryPolicy>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.engine.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        self.engine.call(request)
    }
}

/// Applies [`TransportRetry`] to a service. See the [module docs](super).
#[derive(Debug, Clone, Default)]
pub struct TransportRetryLayer {
    policy: RetryPolicy,
}

impl TransportRetryLayer {
    /// A layer retrying by `policy`.
    pub const fn new(policy: RetryPolicy) -> Self {
        TransportRetryLayer { policy }
    }
}

impl<S> tower::Layer<S> for TransportRetryLayer {
    type Service = TransportRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TransportRetry::new(inner, self.policy.clone())
    }
}
