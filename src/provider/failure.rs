//! Transport failures classified by what they are, then by phase.

use crate::error::{BoxError, Error, TimeoutPhase, TransportPhase};
use crate::transport::TransportError;

/// Classifies a transport failure by what it is (a timeout, a refused
/// connection), falling back to the phase it happened in.
pub(super) fn transport_error(
    provider: &'static str,
    phase: TransportPhase,
    err: BoxError,
) -> Error {
    let mut connect = false;
    let mut timeout = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<TransportError>() {
            connect |= r.is_connect();
            timeout |= r.is_timeout();
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => connect = true,
                std::io::ErrorKind::TimedOut => timeout = true,
                _ => {}
            }
        } else if e.is::<tower::timeout::error::Elapsed>() {
            timeout = true;
        }
        source = e.source();
    }
    match (timeout, connect) {
        (true, true) => Error::Timeout {
            provider,
            phase: TimeoutPhase::Connect,
        },
        (true, false) => Error::Timeout {
            provider,
            phase: TimeoutPhase::Total,
        },
        (false, true) => Error::Transport {
            provider,
            phase: TransportPhase::Connect,
            source: err,
        },
        (false, false) => Error::Transport {
            provider,
            phase,
            source: err,
        },
    }
}
