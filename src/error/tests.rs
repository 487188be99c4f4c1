use http::HeaderMap;
use serde_json::Value;

use super::*;
use crate::headers::tests::headers;

#[test]
fn classification_table() {
    /// status, body, headers -> kind, retryable
    type Case<'a> = (u16, &'a str, &'a [(&'static str, &'a str)], &'a str, bool);
    let cases: &[Case<'_>] = &[
        (
            401,
            r#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            &[],
            "unauthorized",
            false,
        ),
        (
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            &[],
            "unauthorized",
            false,
        ),
        (
            400,
            r#"{"error":{"message":"expired","type":"invalid_request_error","code":"token_expired"}}"#,
            &[],
            "unauthorized",
            false,
        ),
        (
            403,
            r#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#,
            &[],
            "forbidden",
            false,
        ),
        (
            429,
            r#"{"error":{"message":"slow","type":"requests","code":"rate_limit_exceeded"}}"#,
            &[],
            "rate_limited",
            true,
        ),
        (
            429,
            r#"{"error":{"message":"pay","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            &[],
            "rate_limited",
            false,
        ),
        (
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &[],
            "overloaded",
            true,
        ),
        (
            500,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &[],
            "overloaded",
            true,
        ),
        (503, "", &[], "overloaded", true),
        (
            500,
            r#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
            &[],
            "server",
            true,
        ),
        (
            502,
            "<html><title>502 Bad Gateway</title></html>",
            &[],
            "server",
            true,
        ),
        (
            400,
            r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
            &[],
            "invalid_request",
            false,
        ),
        (
            404,
            r#"{"type":"error","error":{"type":"not_found_error","message":"model"}}"#,
            &[],
            "invalid_request",
            false,
        ),
        (408, "", &[], "timeout", true),
        (409, "", &[], "invalid_request", true),
        (
            413,
            r#"{"type":"error","error":{"type":"request_too_large","message":"big"}}"#,
            &[],
            "invalid_request",
            false,
        ),
        (
            422,
            "{\"error\": \"unprocessable\"}",
            &[],
            "invalid_request",
            false,
        ),
        (500, "", &[("x-should-retry", "false")], "server", false),
        (
            400,
            "",
            &[("x-should-retry", "true")],
            "invalid_request",
            true,
        ),
        (
            429,
            r#"{"error":{"code":"insufficient_quota"}}"#,
            &[("x-should-retry", "true")],
            "rate_limited",
            true,
        ),
        (
            401,
            r#"{"error":{"code":401,"message":"API key not valid","status":"UNAUTHENTICATED"}}"#,
            &[],
            "unauthorized",
            false,
        ),
        (
            429,
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
            &[],
            "rate_limited",
            true,
        ),
    ];
    for (status, body, hs, kind, retryable) in cases {
        let e = Error::from_response(
            "p",
            StatusCode::from_u16(*status).unwrap(),
            &headers(hs),
            body.as_bytes(),
        );
        assert_eq!(
            (e.kind(), e.is_retryable()),
            (*kind, *retryable),
            "{status} {body} -> {e:?}"
        );
        assert_eq!(e.status().map(|s| s.as_u16()), Some(*status));
    }
}

#[test]
fn error_bodies_keep_what_the_provider_said() {
    let h = headers(&[("request-id", "req_h"), ("retry-after", "3")]);
    let e = Error::from_response(
        "anthropic",
        StatusCode::TOO_MANY_REQUESTS,
        &h,
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"},"request_id":"req_body"}"#,
    );
    let api = e.api_error().unwrap();
    assert_eq!(api.error_type(), Some("rate_limit_error"));
    assert_eq!(
        api.request_id(),
        Some("req_body"),
        "the body's id wins over the header's"
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(
        e.to_string(),
        "rate limited: anthropic answered 429 Too Many Requests (rate_limit_error): \
         Number of requests has exceeded your rate limit [request id req_body]"
    );
    // A long non-JSON body is cut to a snippet.
    let e = Error::from_response(
        "p",
        StatusCode::BAD_GATEWAY,
        &HeaderMap::new(),
        "é".repeat(10_000).as_bytes(),
    );
    assert!(e.api_error().unwrap().message().unwrap().len() <= 200);
}

#[test]
fn in_stream_errors() {
    let v: Value = serde_json::from_str(
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )
    .unwrap();
    let e = Error::from_event("anthropic", &v);
    assert!(matches!(e, Error::Overloaded { .. }));
    let api = e.api_error().unwrap();
    assert_eq!(api.status(), None);
    assert_eq!(api.provider(), "anthropic");
    assert_eq!(api.message(), Some("Overloaded"));
    assert!(e.to_string().starts_with("overloaded: anthropic"), "{e}");
    let v: Value =
        serde_json::from_str(r#"{"error":{"code":400,"message":"Token limit reached"}}"#).unwrap();
    assert_eq!(Error::from_event("openai", &v).kind(), "invalid_request");
    let v: Value = serde_json::from_str(r#"{"error":{"message":"mystery"}}"#).unwrap();
    assert_eq!(Error::from_event("openai", &v).kind(), "server");
}
