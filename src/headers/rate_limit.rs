//! What providers' response headers say about the caller's rate limits.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The rate-limit state a provider reported with a response, in one shape
/// for every provider.
///
/// Read from OpenAI's headers (and every compatible server's that copies
/// them) — `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as
/// durations such as `6m0s`, `1.5s` or `20ms` — and from Anthropic's —
/// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`,
/// resets as RFC 3339 times. Found on [`ResponseMeta::rate_limit`] and, for a
/// refused call, on [`ApiError::rate_limit`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use llm_tower::RateLimitInfo;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-limit-requests", "60".parse().unwrap());
/// headers.insert("x-ratelimit-remaining-requests", "59".parse().unwrap());
/// headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
/// headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
///
/// let info = RateLimitInfo::from_headers(&headers, SystemTime::now()).unwrap();
/// let requests = info.requests.unwrap();
/// assert_eq!((requests.limit, requests.remaining), (Some(60), Some(59)));
/// assert_eq!(requests.reset, Some(Duration::from_secs(1)));
/// assert_eq!(info.tokens.unwrap().reset, Some(Duration::from_secs(360)));
/// ```
///
/// [`ResponseMeta::rate_limit`]: crate::ResponseMeta::rate_limit
/// [`ApiError::rate_limit`]: crate::ApiError::rate_limit
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// Requests.
    pub requests: Option<Quota>,
    /// Tokens, input and output counted together: OpenAI's token limit, and
    /// Anthropic's `tokens` headers, which report whichever of its token
    /// limits is the most restrictive.
    pub tokens: Option<Quota>,
    /// Input tokens (Anthropic).
    pub input_tokens: Option<Quota>,
    /// Output tokens (Anthropic).
    pub output_tokens: Option<Quota>,
}

/// One limit's state, as of the response that reported it. Each field is
/// `None` when its header was absent or unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quota {
    /// The most the limit allows per period.
    pub limit: Option<u64>,
    /// What is left of it now.
    pub remaining: Option<u64>,
    /// How long, from the response, until the limit is back to its full
    /// value. Anthropic sends a time: it is read against the local clock, or
    /// against the response's `Date` when the two disagree by more than two
    /// seconds (a badly set clock).
    pub reset: Option<Duration>,
}

/// Which limit a header is about.
#[derive(Clone, Copy)]
enum Which {
    Requests,
    Tokens,
    Input,
    Output,
}

/// Which field of a limit a header gives.
#[derive(Clone, Copy)]
enum Field {
    Limit,
    Remaining,
    Reset,
}

/// Beyond this, a local clock that disagrees with the server's `Date` is
/// taken to be wrong (`Date` has one-second resolution).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);

impl RateLimitInfo {
    /// Reads the rate-limit headers of a response received at `now`, or
    /// `None` when there are none. Unreadable values are left out.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitInfo> {
        let mut info = RateLimitInfo::default();
        let mut found = false;
        // One pass over the headers, matching on prefixes, rather than a
        // hashed lookup for each of sixteen names: this runs on every
        // response.
        for (name, value) in headers {
            let name = name.as_str();
            let (family, rest) = if let Some(rest) = name.strip_prefix("x-ratelimit-") {
                (Family::OpenAi, rest)
            } else if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
                (Family::Anthropic, rest)
            } else {
                continue;
            };
            let Some((which, field)) = family.split(rest) else {
                continue;
            };
            let Ok(value) = value.to_str() else { continue };
            let value = value.trim();
            let quota = info.slot(which).get_or_insert_with(Quota::default);
            match field {
                Field::Limit => quota.limit = value.parse().ok(),
                Field::Remaining => quota.remaining = value.parse().ok(),
                Field::Reset => {
                    quota.reset = match family {
                        Family::OpenAi => parse_duration(value),
                        Family::Anthropic => parse_reset_time(value, headers, now),
                    }
                }
            }
            found = true;
        }
        found.then_some(info)
    }

    /// The limits as `(requests, tokens, input tokens, output tokens)`, in a
    /// fixed order.
    pub(crate) fn quotas(&self) -> [Option<Quota>; 4] {
        [
            self.requests,
            self.tokens,
            self.input_tokens,
            self.output_tokens,
        ]
    }

    fn slot(&mut self, which: Which) -> &mut Option<Quota> {
        match which {
            Which::Requests => &mut self.requests,
            Which::Tokens => &mut self.tokens,
            Which::Input => &mut self.input_tokens,
            Which::Output => &mut self.output_tokens,
        }
    }
}

#[derive(Clone, Copy)]
enum Family {
    /// `x-ratelimit-{field}-{which}`.
    OpenAi,
    /// `anthropic-ratelimit-{which}-{field}`.
    Anthropic,
}

impl Family {
    fn split(self, rest: &str) -> Option<(Which, Field)> {
        let which = |s: &str| match s {
            "requests" => Some(Which::Requests),
            "tokens" => Some(Which::Tokens),
            "input-tokens" => Some(Which::Input),
            "output-tokens" => Some(Which::Output),
            _ => None,
        };
        let field = |s: &str| match s {
            "limit" => Some(Field::Limit),
            "remaining" => Some(Field::Remaining),
            "reset" => Some(Field::Reset),
            _ => None,
        };
        match self {
            Family::OpenAi => {
                let (f, w) = rest.split_once('-')?;
                Some((which(w)?, field(f)?))
            }
            Family::Anthropic => {
                let (w, f) = rest.rsplit_once('-')?;
                Some((which(w)?, field(f)?))
            }
        }
    }
}

/// A duration as Go prints one (`6m0s`, `1.5s`, `20ms`, `1h2m3.5s`, `0s`),
/// which OpenAI sends; plain seconds (`1.5`) too, which some compatible
/// servers send.
pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.parse::<f64>() {
        // Negative, infinite or not a number: no duration.
        return Duration::try_from_secs_f64(secs).ok();
    }
    humantime::parse_duration(value).ok()
}

/// An RFC 3339 time, as the duration from `now` until it (zero once past).
fn parse_reset_time(value: &str, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let at = humantime::parse_rfc3339_weak(value).ok()?;
    // Trust the local clock unless the server's `Date` shows it is off.
    let server_now = headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let now = match server_now {
        Some(date) if skew(date, now) > MAX_CLOCK_SKEW => date,
        _ => now,
    };
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn skew(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::headers;

    fn quota(limit: u64, remaining: u64, reset_ms: u64) -> Option<Quota> {
        Some(Quota {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(Duration::from_millis(reset_ms)),
        })
    }

    #[test]
    fn openai_headers() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-request-id", "req_1"),
        ]);
        let info = RateLimitInfo::from_headers(&h, SystemTime::now()).unwrap();
        assert_eq!(info.requests, quota(60, 59, 1000));
        assert_eq!(info.tokens, quota(150_000, 149_984, 360_000));
        assert_eq!((info.input_tokens, info.output_tokens), (None, None));
    }

    #[test]
    fn anthropic_headers() {
        let now = humantime::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2025-01-01T00:00:01Z"),
            ("anthropic-ratelimit-tokens-limit", "48000"),
            ("anthropic-ratelimit-tokens-remaining", "47000"),
            ("anthropic-ratelimit-tokens-reset", "2025-01-01T00:00:02.5Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2025-01-01T00:00:02+00:00",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "8000"),
            // Already past: nothing to wait for.
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2024-12-31T23:59:59Z",
            ),
            ("retry-after", "1"),
        ]);
        let info = RateLimitInfo::from_headers(&h, now).unwrap();
        assert_eq!(info.requests, quota(50, 49, 1000));
        assert_eq!(info.tokens, quota(48_000, 47_000, 2500));
        assert_eq!(info.input_tokens, quota(40_000, 39_000, 2000));
        assert_eq!(info.output_tokens, quota(8000, 8000, 0));
    }

    #[test]
    fn a_wrong_local_clock_is_corrected_by_date() {
        let server = humantime::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        let h = headers(&[
            ("date", "Wed, 01 Jan 2025 00:00:00 GMT"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2025-01-01T00:00:05Z"),
        ]);
        let reset = |now| {
            RateLimitInfo::from_headers(&h, now)
                .unwrap()
                .requests
                .unwrap()
                .reset
        };
        // An hour slow or fast: the server's clock is used.
        let hour = Duration::from_secs(3600);
        assert_eq!(reset(server - hour), Some(Duration::from_secs(5)));
        assert_eq!(reset(server + hour), Some(Duration::from_secs(5)));
        // Within the skew allowed, the local clock (finer than `Date`) wins.
        assert_eq!(
            reset(server + Duration::from_millis(1500)),
            Some(Duration::from_millis(3500))
        );
    }

    #[test]
    fn durations_as_openai_and_compatible_servers_send_them() {
        for (text, ms) in [
            ("6m0s", 360_000),
            ("1.5s", 1500),
            ("20ms", 20),
            ("1h2m3.5s", 3_723_500),
            ("0s", 0),
            ("7.66s", 7660),
            ("2m59.56s", 179_560),
            ("1.5", 1500),
            ("0", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("500µs"), Some(Duration::from_micros(500)));
        for bad in ["", "-1s", "soon", "NaN", "inf", "-1", "1e400"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn partial_and_unreadable_headers() {
        assert_eq!(
            RateLimitInfo::from_headers(&headers(&[("x-request-id", "r")]), SystemTime::now()),
            None
        );
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "many"),
            ("x-ratelimit-reset-requests", "later"),
            ("x-ratelimit-limit-tokens", "100"),
            ("anthropic-ratelimit-requests-reset", "tomorrow"),
            // Not ours: ignored.
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-limit-widgets", "10"),
            ("anthropic-ratelimit-unified-reset", "1700000000"),
        ]);
        let info = RateLimitInfo::from_headers(&h, SystemTime::now()).unwrap();
        assert_eq!(info.requests, Some(Quota::default()));
        assert_eq!(
            info.tokens,
            Some(Quota {
                limit: Some(100),
                ..Quota::default()
            })
        );
    }

    /// Every duration the mock server prints as OpenAI does reads back the
    /// same, to the millisecond.
    #[cfg(feature = "mock")]
    #[test]
    fn go_durations_read_back() {
        use proptest::prelude::*;
        proptest!(|(ms in 0u64..200_000_000)| {
            let d = Duration::from_millis(ms);
            let text = crate::mock::go_duration(d);
            prop_assert_eq!(parse_duration(&text), Some(d), "{}", text);
        });
    }
}
