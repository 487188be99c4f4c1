//! Property: for random fault scripts, the caller never sees an output event
//! twice, what it sees is a prefix of one attempt's output, and the number
//! of requests is exactly what the retry rules give.

mod support;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{ChatRequest, Message, RetryPolicy, TransportRetryLayer};
use proptest::prelude::*;
use support::{anthropic_at, boxed, drain, openai_at, texts};
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    ResetBeforeHeaders,
    ResetAfter(usize),
    TruncateAfter(usize),
    OverloadedAfter(usize),
    Status(u16),
}

const DELTAS: usize = 4;

fn deltas(attempt: usize) -> Vec<String> {
    (0..DELTAS).map(|k| format!("[a{attempt}.{k}]")).collect()
}

fn reply(fault: Fault, attempt: usize) -> Reply {
    let text = Reply::text(deltas(attempt));
    match fault {
        Fault::None => text,
        Fault::ResetBeforeHeaders => Reply::reset(),
        Fault::ResetAfter(n) => text.reset_after(n),
        Fault::TruncateAfter(n) => text.truncate_after(n),
        Fault::OverloadedAfter(n) => text.error_event_after(n, "overloaded_error", "Overloaded"),
        Fault::Status(s) => Reply::api_error(s, status_type(s), "scripted"),
    }
}

/// The error type a provider sends with each status.
fn status_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Every status a provider answers with, and the class it stands for.
const STATUSES: [(u16, &str); 14] = [
    (400, "invalid_request"),
    (401, "unauthorized"),
    (403, "forbidden"),
    (404, "invalid_request"),
    (408, "timeout"),
    (409, "invalid_request"),
    (413, "invalid_request"),
    (422, "invalid_request"),
    (429, "rate_limited"),
    (500, "server"),
    (502, "server"),
    (503, "overloaded"),
    (504, "server"),
    (529, "overloaded"),
];

/// The class of the error a fault ends its attempt with. A non-streaming
/// body with a fault in it is cut in its middle (the mock cannot put an
/// error event inside one JSON body): a reset there is a transport error, a
/// clean end leaves JSON that does not parse.
fn class(fault: Fault, stream: bool) -> &'static str {
    match fault {
        Fault::None => "none",
        Fault::TruncateAfter(_) | Fault::OverloadedAfter(_) if !stream => "decode",
        Fault::ResetBeforeHeaders | Fault::ResetAfter(_) | Fault::TruncateAfter(_) => "transport",
        Fault::OverloadedAfter(_) => "overloaded",
        Fault::Status(s) => STATUSES
            .iter()
            .find(|(st, _)| *st == s)
            .map_or("?", |(_, c)| c),
    }
}

/// What the official SDKs retry: 408, 409, 429 and 5xx.
fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500..=599)
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Success {
        attempt: usize,
    },
    Interrupted {
        attempt: usize,
        delivered: usize,
        class: &'static str,
    },
    Failed {
        class: &'static str,
    },
}

/// The retry rules, stated directly.
fn expected(script: &[Fault], max_retries: usize, stream: bool) -> (Outcome, usize) {
    for attempt in 0.. {
        let requests = attempt + 1;
        let fault = script.get(attempt).copied().unwrap_or(Fault::None);
        let retryable = match fault {
            Fault::None => return (Outcome::Success { attempt }, requests),
            Fault::Status(s) => retryable_status(s),
            Fault::ResetBeforeHeaders => true,
            Fault::ResetAfter(n) | Fault::TruncateAfter(n) | Fault::OverloadedAfter(n) => {
                if stream && n > 0 {
                    return (
                        Outcome::Interrupted {
                            attempt,
                            delivered: n,
                            class: class(fault, stream),
                        },
                        requests,
                    );
                }
                true
            }
        };
        if !retryable || attempt >= max_retries {
            return (
                Outcome::Failed {
                    class: class(fault, stream),
                },
                requests,
            );
        }
    }
    unreachable!()
}

/// Faults at every position: before the head, after 0 to all `DELTAS`
/// deltas (the last one: after every delta, before the end), and every
/// status.
fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        2 => Just(Fault::None),
        1 => Just(Fault::ResetBeforeHeaders),
        2 => (0..=DELTAS).prop_map(Fault::ResetAfter),
        1 => (0..=DELTAS).prop_map(Fault::TruncateAfter),
        1 => (0..=DELTAS).prop_map(Fault::OverloadedAfter),
        2 => prop::sample::select(&STATUSES[..]).prop_map(|(s, _)| Fault::Status(s)),
    ]
}

async fn run(
    script: Vec<Fault>,
    max_retries: usize,
    stream: bool,
    anthropic: bool,
) -> Result<(), TestCaseError> {
    let server = MockServer::start().await;
    for attempt in 0..=max_retries {
        server.push(reply(
            script.get(attempt).copied().unwrap_or(Fault::None),
            attempt,
        ));
    }
    let policy = RetryPolicy::default().max_retries(max_retries as u32);
    let retry = TransportRetryLayer::new(policy);
    let svc = if anthropic {
        boxed(retry, anthropic_at(&server))
    } else {
        boxed(retry, openai_at(&server))
    };
    let req = ChatRequest::new("")
        .message(Message::user("hi"))
        .stream(stream);
    let (events, error) = match svc.oneshot(req).await {
        Ok(s) => drain(s).await,
        Err(e) => (Vec::new(), Some(e)),
    };
    // Each scripted delta is a bracketed token; a non-streaming answer
    // delivers them all in one text delta.
    let joined = texts(&events).concat();
    let seen: Vec<String> = joined.split_inclusive(']').map(str::to_owned).collect();

    // Never twice, and a prefix of one attempt's output.
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    prop_assert_eq!(
        unique.len(),
        seen.len(),
        "a delta was delivered twice: {:?}",
        seen
    );
    if let Some(first) = seen.first() {
        let attempt: usize = first[2..first.find('.').unwrap()].parse().unwrap();
        prop_assert_eq!(
            &seen[..],
            &deltas(attempt)[..seen.len()],
            "not a prefix of attempt {}",
            attempt
        );
    }

    let (outcome, requests) = expected(&script, max_retries, stream);
    prop_assert_eq!(
        server.request_count(),
        requests,
        "requests for {:?}",
        outcome
    );
    let kind = error.as_ref().map(llm_tower::Error::kind);
    match outcome {
        Outcome::Success { attempt } => {
            prop_assert!(error.is_none(), "{:?}", error);
            prop_assert_eq!(seen, deltas(attempt));
        }
        Outcome::Interrupted {
            attempt,
            delivered,
            class,
        } => {
            prop_assert_eq!(kind, Some(class), "{:?}", error);
            prop_assert_eq!(&seen[..], &deltas(attempt)[..delivered]);
        }
        Outcome::Failed { class } => {
            prop_assert_eq!(kind, Some(class), "{:?}", error);
            prop_assert!(seen.is_empty(), "{:?}", seen);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn output_is_never_repeated(
        script in prop::collection::vec(fault(), 0..5),
        max_retries in 0usize..4,
        stream: bool,
        anthropic: bool,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run(script, max_retries, stream, anthropic))?;
    }
}
