//! Deadlines on an answer's events: what a timeout layer puts on a stream
//! instead of wrapping it. Every timeout layer over one answer shares the
//! one [`Cut`] (the nearest of their limits wins), so the answer has one
//! timer, and no event takes a hop per timeout layer.

use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::call::CallHandle;
use crate::{Error, StreamEvent, TimeoutPhase};

/// When an answer must have started, must end, and how long it may pause.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// The first output event by then.
    pub(crate) first: Option<Instant>,
    /// The end of the stream by then.
    pub(crate) total: Option<Instant>,
    /// The longest wait for the next event, once output has begun (or from
    /// the head on, with no first-event limit).
    pub(crate) idle: Option<Duration>,
}

impl Limits {
    /// The nearer of each limit: both sets applied at once.
    fn and(self, other: Limits) -> Limits {
        use crate::nearer;
        Limits {
            first: nearer(self.first, other.first),
            total: nearer(self.total, other.total),
            idle: nearer(self.idle, other.idle),
        }
    }
}

pin_project! {
    /// An answer's deadlines and its one timer.
    ///
    /// The timer is moved lazily: a stream delivering events steadily only
    /// notes when each wait starts, and the timer, still set for an earlier
    /// deadline, is pushed back when it fires early — at most once per idle
    /// period, not once per event.
    #[derive(Debug)]
    pub(crate) struct Cut {
        limits: Limits,
        // The deadline of the current wait, and its phase.
        deadline: Option<(Instant, TimeoutPhase)>,
        // An event was delivered since `deadline` was computed.
        delivered: bool,
        // An output event was delivered: the first-event limit is met.
        output: bool,
        // Made when first needed, moved with `reset` rather than made
        // again. Set at or before `deadline`.
        #[pin]
        sleep: Option<Sleep>,
        // The waker the timer holds since it was last polled.
        timer_waker: Option<Waker>,
        // Who answered, for the error.
        provider: &'static str,
        // Recorded in the call's context as the head's timer, which a
        // timeout layer outside may rely on until output begins.
        armed: Option<ArmedIn>,
    }
}

/// A [`Cut`]'s record in its call's context, taken out when the cut is
/// dropped.
#[derive(Debug)]
struct ArmedIn {
    call: CallHandle,
    id: usize,
}

impl ArmedIn {
    fn release(mut self, current: Option<&Waker>) {
        self.call.disarm(self.id, current);
        // No cut is at address 0: there is nothing left for `drop` to do.
        self.id = 0;
    }
}

impl Drop for ArmedIn {
    fn drop(&mut self) {
        if self.id != 0 {
            self.call.disarm(self.id, None);
        }
    }
}

impl Cut {
    /// Deadlines `limits`, the timer set for `head` if given (a layer's
    /// timer before the answer's head, which goes on with the answer).
    pub(crate) fn new(limits: Limits, head: Option<Instant>) -> Self {
        Cut {
            limits,
            deadline: next_deadline(limits.first, limits.total, None),
            // With no first-event limit, the idle one counts from the
            // head: the first wait starts one.
            delivered: limits.first.is_none(),
            output: false,
            sleep: head.map(tokio::time::sleep_until),
            timer_waker: None,
            provider: "unknown",
            armed: None,
        }
    }

    /// Records this cut's timer in `call`'s context as the head's, due by
    /// `at`, unless another is recorded: a timeout layer outside whose
    /// deadline is later then needs no timer of its own.
    pub(crate) fn arm(self: Pin<&mut Self>, call: &CallHandle, at: Instant) {
        // Its address, stable while it is pinned, is its identity there.
        let id = std::ptr::from_ref::<Cut>(&*self) as usize;
        if call.arm(id, at) {
            *self.project().armed = Some(ArmedIn {
                call: call.clone(),
                id,
            });
        }
    }

    /// Output began: the timer no longer serves the head.
    fn disarm(self: Pin<&mut Self>, current: Option<&Waker>) {
        if let Some(armed) = self.project().armed.take() {
            armed.release(current);
        }
    }

    /// Before the head: `Ready` once the timer fired.
    pub(crate) fn poll_head(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let Some(sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        poll_timer(sleep, this.timer_waker, this.armed.as_ref(), cx)
    }

    /// The limits.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Names the provider that answered.
    pub(crate) fn answered_by(self: Pin<&mut Self>, provider: &'static str) {
        *self.project().provider = provider;
    }

    /// Adds `limits` (the nearer of each applies).
    pub(crate) fn and(self: Pin<&mut Self>, limits: Limits) {
        let this = self.project();
        *this.limits = this.limits.and(limits);
        *this.deadline = next_deadline(this.limits.first, this.limits.total, None);
        // The next wait starts from the merged limits: the first-event one
        // until output, the idle one from then on.
        *this.delivered = true;
    }

    /// Output reached the caller some other way (events put in front).
    pub(super) fn output_delivered(mut self: Pin<&mut Self>, current: &Waker) {
        self.as_mut().disarm(Some(current));
        let this = self.project();
        *this.delivered = true;
        *this.output = true;
    }

    /// An item came from the stream, to the task behind `current`.
    pub(super) fn saw(
        mut self: Pin<&mut Self>,
        item: &Result<StreamEvent, Error>,
        current: &Waker,
    ) {
        let output = item.as_ref().is_ok_and(StreamEvent::is_output);
        if output && self.armed.is_some() {
            self.as_mut().disarm(Some(current));
        }
        let this = self.project();
        *this.delivered = true;
        *this.output |= output;
    }

    /// The stream is waiting: `Ready` with the error once a deadline passed.
    pub(super) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Error> {
        let mut this = self.project();
        let limits = *this.limits;
        if *this.delivered {
            // A new wait. Before output with a first-event limit, that
            // limit still governs; otherwise the idle period counts from now.
            *this.delivered = false;
            if *this.output || limits.first.is_none() {
                let idle = limits.idle.and_then(|d| crate::later(Instant::now(), d));
                *this.deadline = next_deadline(None, limits.total, idle);
            }
        }
        let Some((at, phase)) = *this.deadline else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        // Set just above when it was not: `None` cannot happen here.
        let Some(mut sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        if sleep.deadline() > at {
            // The deadline came nearer (an idle limit shorter than what was
            // left of the first-event one).
            sleep.as_mut().reset(at);
            *this.timer_waker = None;
        }
        loop {
            ready!(poll_timer(
                sleep.as_mut(),
                this.timer_waker,
                this.armed.as_ref(),
                cx
            ));
            if sleep.deadline() >= at {
                break;
            }
            // It fired for an earlier deadline: move it to this one.
            sleep.as_mut().reset(at);
            *this.timer_waker = None;
        }
        Poll::Ready(Error::Timeout {
            provider: this.provider,
            phase,
        })
    }
}

/// Polls `sleep`, `Ready` once it fired. A timer that has not fired and
/// holds a waker for this task (`timer_waker`, the one it was last polled
/// with) has nothing new to say: polling it again would only swap wakers.
/// Which task it wakes is noted, and told to the call's context when the
/// timer serves the head there (`armed`).
fn poll_timer(
    sleep: Pin<&mut Sleep>,
    timer_waker: &mut Option<Waker>,
    armed: Option<&ArmedIn>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if !sleep.is_elapsed()
        && timer_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
    {
        return Poll::Pending;
    }
    if sleep.poll(cx).is_pending() {
        *timer_waker = Some(cx.waker().clone());
        if let Some(armed) = armed {
            armed.call.armed_wakes(armed.id, cx.waker());
        }
        return Poll::Pending;
    }
    Poll::Ready(())
}

/// The deadline that applies now, and its phase: before the first output
/// (no idle deadline yet), the nearer of the first-event and total ones.
pub(crate) fn next_deadline(
    first: Option<Instant>,
    total: Option<Instant>,
    idle_from_now: Option<Instant>,
) -> Option<(Instant, TimeoutPhase)> {
    let per_event = match idle_from_now {
        Some(at) => Some((at, TimeoutPhase::Idle)),
        None => first.map(|at| (at, TimeoutPhase::FirstEvent)),
    };
    match (per_event, total) {
        (Some((at, phase)), Some(t)) if at <= t => Some((at, phase)),
        (_, Some(t)) => Some((t, TimeoutPhase::Total)),
        (per_event, None) => per_event,
    }
}
