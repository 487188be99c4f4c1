use super::RetryPolicy;
use crate::guard::Guard;

/// A service whose transient failures before output are retried: the
/// [stream guard](crate::guard) with a [`RetryPolicy`].
pub type TransportRetry<S> = Guard<S, RetryPolicy>;

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
        Guard::new(inner, self.policy.clone())
    }
}
