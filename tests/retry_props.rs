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
        Fault::Status(s) => Reply::api_error(
            s,
            if s == 400 {
                "invalid_request_error"
            } else {
                "api_error"
            },
            "scripted",
        ),
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Success { attempt: usize },
    Interrupted { attempt: usize, delivered: usize },
    Failed,
}

/// The retry rules, stated directly.
fn expected(script: &[Fault], max_retries: usize, stream: bool) -> (Outcome, usize) {
    for attempt in 0.. {
        let requests = attempt + 1;
        let fault = script.get(attempt).copied().unwrap_or(Fault::None);
        let retryable = match fault {
            Fault::None => return (Outcome::Success { attempt }, requests),
            Fault::Status(400) => false,
            Fault::Status(_) | Fault::ResetBeforeHeaders => true,
            Fault::ResetAfter(n) | Fault::TruncateAfter(n) | Fault::OverloadedAfter(n) => {
                if stream && n > 0 {
                    return (
                        Outcome::Interrupted {
                            attempt,
                            delivered: n,
                        },
                        requests,
                    );
                }
                true
            }
        };
        if !retryable || attempt >= max_retries {
            return (Outcome::Failed, requests);
        }
    }
    unreachable!()
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        2 => Just(Fault::None),
        1 => Just(Fault::ResetBeforeHeaders),
        2 => (0..DELTAS).prop_map(Fault::ResetAfter),
        1 => (0..DELTAS).prop_map(Fault::TruncateAfter),
        1 => (0..DELTAS).prop_map(Fault::OverloadedAfter),
        1 => prop_oneof![Just(500u16), Just(429), Just(503), Just(400)].prop_map(Fault::Status),
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
    match outcome {
        Outcome::Success { attempt } => {
            prop_assert!(error.is_none(), "{:?}", error);
            prop_assert_eq!(seen, deltas(attempt));
        }
        Outcome::Interrupted { attempt, delivered } => {
            prop_assert!(error.is_some());
            prop_assert_eq!(&seen[..], &deltas(attempt)[..delivered]);
        }
        Outcome::Failed => {
            prop_assert!(error.is_some());
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
