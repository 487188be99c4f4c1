//! StreamConcurrencyLimit holds its permit for the life of the stream.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{ChatRequest, Message, StreamConcurrencyLimitLayer};
use support::{boxed, openai_at};
use tower::ServiceExt;

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

fn slow() -> Reply {
    Reply::text(["a", "b", "c", "d", "e"]).delay(Duration::from_millis(100))
}

#[tokio::test(start_paused = true)]
async fn at_most_two_streams_are_open_at_once() {
    let server = MockServer::start().await;
    server.set_default(slow());
    let svc = boxed(StreamConcurrencyLimitLayer::new(2), openai_at(&server));
    let done = futures_util::future::join_all(
        (0..5).map(|_| async { svc.clone().oneshot(hello()).await?.completion().await }),
    )
    .await;
    assert!(
        done.iter()
            .all(|c| c.as_ref().is_ok_and(|c| c.text == "abcde"))
    );
    assert_eq!(server.request_count(), 5);
    assert_eq!(server.peak_open_responses(), 2);
}

/// The trap this layer exists for: tower's limit frees its permit when the
/// head arrives, so every stream runs at once.
#[tokio::test(start_paused = true)]
async fn towers_own_limit_lets_all_streams_run() {
    let server = MockServer::start().await;
    server.set_default(slow());
    let svc = boxed(
        tower::limit::ConcurrencyLimitLayer::new(2),
        openai_at(&server),
    );
    let done = futures_util::future::join_all(
        (0..5).map(|_| async { svc.clone().oneshot(hello()).await?.completion().await }),
    )
    .await;
    assert!(done.iter().all(Result::is_ok));
    assert_eq!(server.peak_open_responses(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_permit_returns_when_the_stream_ends_or_is_dropped() {
    let server = MockServer::start().await;
    let svc = boxed(StreamConcurrencyLimitLayer::new(1), openai_at(&server));

    // Ended, but the stream object is still alive: the slot is free.
    let mut first = svc.clone().oneshot(hello()).await.unwrap();
    while first.next().await.is_some() {}
    let second = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(hello())).await;
    assert!(
        second.is_ok(),
        "the slot came back at the end of the stream"
    );
    drop(second);

    // Dropped mid-stream: the slot is free.
    server.push(Reply::text(["x", "y"]).stall_after(1));
    let mut stalled = svc.clone().oneshot(hello()).await.unwrap();
    let _ = stalled.next().await;
    let blocked = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(hello())).await;
    assert!(blocked.is_err(), "the stalled stream holds the only slot");
    drop(stalled);
    let freed = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(hello())).await;
    assert!(freed.is_ok(), "dropping the stream gives the slot back");
    drop(freed);

    // Failed, but the stream object is still alive: the slot is free.
    server.push(Reply::text(["x", "y"]).reset_after(1));
    let mut failed = svc.clone().oneshot(hello()).await.unwrap();
    let mut saw_error = false;
    while let Some(item) = failed.next().await {
        saw_error |= item.is_err();
    }
    assert!(saw_error, "the reset ends the stream with an error");
    let after_error =
        tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(hello())).await;
    assert!(after_error.is_ok(), "a failed stream gives the slot back");
    drop(failed);
}
