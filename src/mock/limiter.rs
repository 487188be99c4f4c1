//! The request limit the server can play: a sliding minute of accepted
//! requests, reported in the provider's own rate-limit headers.

use std::collections::VecDeque;
use std::time::Duration;

use super::dialect::Dialect;
use super::reply::Reply;

/// A provider's request limit, played by the server.
pub(super) struct RequestLimit {
    per_minute: usize,
    /// When the requests in the last minute were accepted.
    accepted: VecDeque<tokio::time::Instant>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl RequestLimit {
    pub(super) fn new(per_minute: usize) -> Self {
        RequestLimit {
            per_minute,
            accepted: VecDeque::new(),
        }
    }

    /// Counts a request arriving at `now`: the limit's state, and how long
    /// to wait when it is refused.
    pub(super) fn admit(&mut self, now: tokio::time::Instant) -> (LimitState, Option<Duration>) {
        while self.accepted.front().is_some_and(|&t| t + MINUTE <= now) {
            self.accepted.pop_front();
        }
        let refused = self.accepted.len() >= self.per_minute;
        let retry_after = refused.then(|| {
            self.accepted
                .front()
                .map_or(MINUTE, |&t| (t + MINUTE).saturating_duration_since(now))
        });
        if !refused {
            self.accepted.push_back(now);
        }
        let state = LimitState {
            limit: self.per_minute,
            remaining: self.per_minute.saturating_sub(self.accepted.len()),
            // Full again once the newest request leaves the window.
            reset: self.accepted.back().map_or(Duration::ZERO, |&t| {
                (t + MINUTE).saturating_duration_since(now)
            }),
        };
        (state, retry_after)
    }
}

/// The request limit's state, as a provider reports it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LimitState {
    limit: usize,
    remaining: usize,
    reset: Duration,
}

impl LimitState {
    pub(super) fn headers(self, dialect: Dialect, reply: Reply) -> Reply {
        let (limit, remaining) = (self.limit.to_string(), self.remaining.to_string());
        match dialect {
            Dialect::OpenAi | Dialect::Responses => reply
                .header("x-ratelimit-limit-requests", limit)
                .header("x-ratelimit-remaining-requests", remaining)
                .header("x-ratelimit-reset-requests", go_duration(self.reset)),
            Dialect::Anthropic => reply
                .header("anthropic-ratelimit-requests-limit", limit)
                .header("anthropic-ratelimit-requests-remaining", remaining)
                .header(
                    "anthropic-ratelimit-requests-reset",
                    humantime::format_rfc3339_millis(std::time::SystemTime::now() + self.reset)
                        .to_string(),
                ),
            Dialect::Gemini | Dialect::Other => reply,
        }
    }
}

/// A duration as Go prints it, to the millisecond, as OpenAI sends them:
/// `20ms`, `1.5s`, `6m0s`, `1h0m0s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        let frac = format!("{frac:03}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('s');
    out
}
