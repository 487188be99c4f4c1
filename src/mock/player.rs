//! A reply's body, played step by step: bytes, delays, stalls and resets.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Sleep;

use super::Shared;
use super::render::Step;

/// How long a body waits, before a scripted reset, for its data to be sent.
const FLUSH_BEFORE_RESET: std::time::Duration = std::time::Duration::from_millis(5);

/// A response body that plays its steps, waiting `delay` before each piece.
pub(super) struct MockBody {
    steps: VecDeque<Step>,
    delay: std::time::Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    reset: Arc<AtomicBool>,
    _open: Option<OpenResponse>,
}

impl MockBody {
    /// Plays `steps`, each after `delay`; a reset step sets `reset` for the
    /// connection. `open` counts the response as open while it lives.
    pub(super) fn new(
        steps: VecDeque<Step>,
        delay: Duration,
        reset: Arc<AtomicBool>,
        open: Option<OpenResponse>,
    ) -> Self {
        MockBody {
            steps,
            delay,
            sleep: None,
            reset,
            _open: open,
        }
    }
}

/// Counts a response as open while its body lives.
pub(super) struct OpenResponse(Arc<Shared>);

impl OpenResponse {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        let open = shared.open_responses.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_open_responses.fetch_max(open, Ordering::SeqCst);
        OpenResponse(shared.clone())
    }
}

impl Drop for OpenResponse {
    fn drop(&mut self) {
        self.0.open_responses.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ends the connection abortively.
#[derive(Debug)]
pub(super) struct ScriptedReset;

impl fmt::Display for ScriptedReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scripted reset")
    }
}

impl std::error::Error for ScriptedReset {}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = ScriptedReset;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ScriptedReset>>> {
        let this = &mut *self;
        loop {
            match this.steps.front() {
                None => return Poll::Ready(None),
                Some(Step::Stall) => return Poll::Pending,
                Some(Step::Reset) => {
                    // Pause first: hyper flushes what it buffered when the body
                    // is pending, so the client receives every event written
                    // before the reset (an RST discards unsent data).
                    let flush = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_BEFORE_RESET)));
                    if flush.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sleep = None;
                    this.reset.store(true, Ordering::SeqCst);
                    this.steps.clear();
                    return Poll::Ready(Some(Err(ScriptedReset)));
                }
                Some(Step::Data(_)) => {}
            }
            if !this.delay.is_zero() {
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.delay)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            if let Some(Step::Data(d)) = this.steps.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
        }
    }
}
