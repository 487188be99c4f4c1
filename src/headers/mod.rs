//! What the providers' response headers say, read into types: the
//! server's `retry-after` hint in its three forms, the request id, and the
//! rate-limit state ([`RateLimitInfo`]).
//!
//! It sits at the bottom of the crate: errors, providers and the rate-limit
//! layer read headers through it.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

mod rate_limit;

pub use rate_limit::{Quota, RateLimitInfo};

/// The provider's request id from response headers: OpenAI's
/// `x-request-id`, else Anthropic's `request-id`.
pub(crate) fn request_id_header(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, "x-request-id").or_else(|| header_str(headers, "request-id"))
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// The server's hint of how long to wait: `retry-after-ms` (milliseconds,
/// fractions allowed), then `retry-after` as seconds (fractions allowed) or as
/// an HTTP date relative to `now`. Zero, negative or unparsable values are
/// ignored.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let positive = |secs: f64| {
        (secs.is_finite() && secs > 0.0)
            .then(|| Duration::try_from_secs_f64(secs).ok())
            .flatten()
    };
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Some(d) = positive(ms / 1000.0)
    {
        return Some(d);
    }
    let value = header_str(headers, "retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return positive(secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    date.duration_since(now).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;

    /// A header map of `pairs`, for tests.
    pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after-ms", "1500.5")]), now),
            Some(Duration::from_micros(1_500_500))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "0.25")]), now),
            Some(Duration::from_millis(250))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(30))
        );
        // retry-after-ms wins over retry-after.
        assert_eq!(
            parse_retry_after(
                &headers(&[("retry-after-ms", "10"), ("retry-after", "5")]),
                now
            ),
            Some(Duration::from_millis(10))
        );
        // An unusable retry-after-ms falls back to retry-after.
        assert_eq!(
            parse_retry_after(
                &headers(&[("retry-after-ms", "soon"), ("retry-after", "5")]),
                now
            ),
            Some(Duration::from_secs(5))
        );
        for bad in ["0", "-3", "NaN", "inf", "tomorrow", ""] {
            assert_eq!(
                parse_retry_after(&headers(&[("retry-after", bad)]), now),
                None,
                "{bad}"
            );
        }
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &past)]), now),
            None
        );
    }
}
