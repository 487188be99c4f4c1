//! The books' scheduling, without a clock: every time is an offset from `t0`.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::books::{Booking, Books, LIMITS, Refusal, amounts};
use super::estimate;
use crate::headers::{Quota, RateLimitInfo};
use crate::{ChatRequest, ContentPart, Image, Message, Role, Tool};

const NONE: [Option<u64>; LIMITS] = [None; LIMITS];

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn rpm(n: u64) -> [Option<u64>; LIMITS] {
    [Some(n), None, None, None]
}

/// A call of one request and no tokens.
fn one() -> [u64; LIMITS] {
    amounts(0, 0)
}

fn offset(t0: Instant, b: &Booking) -> f64 {
    (b.at - t0).as_secs_f64()
}

fn requests(limit: Option<u64>, remaining: u64, reset: f64) -> RateLimitInfo {
    RateLimitInfo {
        requests: Some(Quota {
            limit,
            remaining: Some(remaining),
            reset: Some(secs(reset)),
        }),
        ..RateLimitInfo::default()
    }
}

#[test]
fn a_request_budget_is_a_sliding_window() {
    let t0 = Instant::now();
    let mut books = Books::default();
    let slots: Vec<f64> = (0..30)
        .map(|_| offset(t0, &books.book(&rpm(10), one(), t0, None).unwrap()))
        .collect();
    assert_eq!(&slots[..10], &[0.0; 10]);
    assert_eq!(&slots[10..20], &[60.0; 10]);
    assert_eq!(&slots[20..], &[120.0; 10]);
}

#[test]
fn slots_follow_arrival_order() {
    let t0 = Instant::now();
    let mut books = Books::default();
    let budget = [None, Some(1000), None, None];
    // A big call waits for room; a small one behind it does not overtake.
    let a = books.book(&budget, amounts(900, 0), t0, None).unwrap();
    let b = books.book(&budget, amounts(900, 0), t0, None).unwrap();
    let c = books.book(&budget, amounts(10, 0), t0, None).unwrap();
    assert_eq!(
        (offset(t0, &a), offset(t0, &b), offset(t0, &c)),
        (0.0, 60.0, 60.0)
    );
}

#[test]
fn a_call_bigger_than_the_budget_waits_for_an_empty_window() {
    let t0 = Instant::now();
    let mut books = Books::default();
    let budget = [None, None, None, Some(8000)];
    let a = books.book(&budget, amounts(0, 100), t0, None).unwrap();
    let b = books.book(&budget, amounts(0, 20_000), t0, None).unwrap();
    let c = books.book(&budget, amounts(0, 100), t0, None).unwrap();
    assert_eq!(offset(t0, &a), 0.0);
    assert_eq!(offset(t0, &b), 60.0);
    assert_eq!(offset(t0, &c), 120.0);
}

#[test]
fn zero_remaining_waits_for_the_reset() {
    let t0 = Instant::now();
    let mut books = Books::default();
    books.absorb(&requests(None, 0, 2.0), t0);
    let b = books.book(&NONE, one(), t0, None).unwrap();
    assert_eq!(offset(t0, &b), 2.0);
    // With no limit given, nothing is known past the reset.
    let b = books.book(&NONE, one(), t0, None).unwrap();
    assert_eq!(offset(t0, &b), 2.0);
}

#[test]
fn a_report_is_followed_as_a_token_bucket() {
    let t0 = Instant::now();
    // OpenAI's documented example: 59 of 60 left, full again in 1 s — so
    // one request back per second.
    let mut books = Books::default();
    books.absorb(&requests(Some(60), 59, 1.0), t0);
    let slots: Vec<f64> = (0..62)
        .map(|_| offset(t0, &books.book(&NONE, one(), t0, None).unwrap()))
        .collect();
    assert!(slots[..59].iter().all(|&s| s == 0.0), "{slots:?}");
    for (i, &s) in slots[59..].iter().enumerate() {
        assert!((s - (i + 1) as f64).abs() < 1e-6, "{slots:?}");
    }

    // None left of 10, full in 2 s: nothing before the reset, then the
    // bucket is full.
    let mut books = Books::default();
    books.absorb(&requests(Some(10), 0, 2.0), t0);
    let slots: Vec<f64> = (0..11)
        .map(|_| offset(t0, &books.book(&NONE, one(), t0, None).unwrap()))
        .collect();
    assert!(slots[..10].iter().all(|&s| s == 2.0), "{slots:?}");
    assert!((slots[10] - 2.2).abs() < 1e-6, "{slots:?}");
}

#[test]
fn a_report_does_not_count_calls_booked_after_it() {
    let t0 = Instant::now();
    let mut books = Books::default();
    // Three calls booked ahead, at the reset 10 s away.
    books.absorb(&requests(None, 0, 10.0), t0);
    for _ in 0..3 {
        books.book(&NONE, one(), t0, None).unwrap();
    }
    // A report at 1 s says 5 left for the next 30 s: the three booked ahead
    // are not in it yet, and take three of them.
    let t1 = t0 + secs(1.0);
    books.absorb(&requests(None, 5, 30.0), t1);
    let slots: Vec<f64> = (0..3)
        .map(|_| offset(t0, &books.book(&NONE, one(), t1, None).unwrap()))
        .collect();
    assert_eq!(slots, [10.0, 10.0, 31.0]);
}

#[test]
fn deadline_refuses_at_once_and_books_nothing() {
    let t0 = Instant::now();
    let mut books = Books::default();
    books.book(&rpm(1), one(), t0, None).unwrap();
    let deadline = Some(t0 + secs(10.0));
    assert_eq!(
        books.book(&rpm(1), one(), t0, deadline).unwrap_err(),
        Refusal::Deadline { wait: secs(60.0) }
    );
    // The refused call took no slot.
    let b = books.book(&rpm(1), one(), t0, None).unwrap();
    assert_eq!(offset(t0, &b), 60.0);
    // A call that can start now starts, whatever its deadline.
    let mut books = Books::default();
    assert!(books.book(&rpm(1), one(), t0, Some(t0)).is_ok());
}

#[test]
fn a_zero_budget_refuses_every_call() {
    let t0 = Instant::now();
    let mut books = Books::default();
    let budget = [None, None, None, Some(0)];
    for need in [amounts(10, 5), amounts(10, 0)] {
        assert_eq!(
            books.book(&budget, need, t0, None).unwrap_err(),
            Refusal::ZeroBudget
        );
    }
    assert_eq!(books.entries(), 0);
}

#[test]
fn a_cancelled_booking_gives_its_room_back() {
    let t0 = Instant::now();
    let mut books = Books::default();
    books.absorb(&requests(None, 1, 30.0), t0);
    let a = books.book(&rpm(2), one(), t0, None).unwrap();
    books.cancel(&a);
    let b = books.book(&rpm(2), one(), t0, None).unwrap();
    let c = books.book(&rpm(2), one(), t0, None).unwrap();
    // `b` took the one request left before the reset, `c` waits for it.
    assert_eq!((offset(t0, &b), offset(t0, &c)), (0.0, 30.0));
}

#[test]
fn usage_corrects_the_estimate() {
    let t0 = Instant::now();
    let budget = [None, None, None, Some(1000)];
    let mut books = Books::default();
    let mut a = books.book(&budget, amounts(50, 600), t0, None).unwrap();
    // Without the correction, 600 + 600 > 1000.
    let mut uncorrected = Books::default();
    uncorrected
        .book(&budget, amounts(50, 600), t0, None)
        .unwrap();
    let late = uncorrected
        .book(&budget, amounts(50, 600), t0, None)
        .unwrap();
    assert_eq!(offset(t0, &late), 60.0);
    // It wrote 30 tokens.
    books.correct(&mut a, 50, 30, t0 + secs(2.0));
    // A second report replaces the first; it does not add to it.
    books.correct(&mut a, 50, 40, t0 + secs(2.0));
    let b = books
        .book(&budget, amounts(50, 600), t0 + secs(2.0), None)
        .unwrap();
    assert_eq!(offset(t0, &b), 2.0);
}

#[test]
fn usage_beyond_the_window_is_charged_when_it_comes() {
    let t0 = Instant::now();
    let budget = [None, None, None, Some(1000)];
    let mut books = Books::default();
    let mut a = books.book(&budget, amounts(0, 0), t0, None).unwrap();
    // A long answer: 900 tokens, reported after 90 s.
    let t1 = t0 + secs(90.0);
    books.correct(&mut a, 0, 900, t1);
    // Reported twice: only the growth is charged again.
    books.correct(&mut a, 0, 950, t1);
    let b = books.book(&budget, amounts(0, 50), t1, None).unwrap();
    assert_eq!(offset(t0, &b), 90.0);
    let c = books.book(&budget, amounts(0, 200), t1, None).unwrap();
    assert_eq!(offset(t0, &c), 150.0);
}

#[test]
fn a_429_pauses_every_call_including_those_already_waiting() {
    let t0 = Instant::now();
    let mut books = Books::default();
    books.absorb(&requests(None, 1, 60.0), t0);
    books.book(&NONE, one(), t0, None).unwrap();
    let waiting = books.book(&NONE, one(), t0, None).unwrap();
    assert_eq!(offset(t0, &waiting), 60.0);
    // A 429 at 1 s asks for 100 s.
    let t1 = t0 + secs(1.0);
    books.rate_limited(Some(secs(100.0)), t1);
    let new = books.book(&NONE, one(), t1, None).unwrap();
    assert_eq!(offset(t0, &new), 101.0);
    // The call that was waiting wakes at 60 s and is booked again, after
    // the pause.
    let t60 = t0 + secs(60.0);
    let again = books.recheck(&waiting, &NONE, t60, None).unwrap().unwrap();
    assert_eq!(offset(t0, &again), 101.0);
    // One booked after the pause began is not disturbed by it.
    assert!(books.recheck(&new, &NONE, t0 + secs(101.0), None).is_none());
    // And a wait past the deadline is refused.
    let mut books = Books::default();
    let w = books.book(&rpm(1), one(), t0, None).unwrap();
    books.rate_limited(Some(secs(100.0)), t0);
    assert_eq!(
        books.recheck(&w, &rpm(1), t0, Some(t0 + secs(5.0))),
        Some(Err(Refusal::Deadline { wait: secs(100.0) }))
    );
}

#[test]
fn a_429_without_a_delay_backs_off_doubling_until_an_answer() {
    let t0 = Instant::now();
    let mut books = Books::default();
    let mut waits = Vec::new();
    for _ in 0..8 {
        books.rate_limited(None, t0);
        waits.push(offset(t0, &books.book(&NONE, one(), t0, None).unwrap()));
    }
    assert_eq!(waits, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0, 32.0]);
    books.succeeded();
    books.rate_limited(None, t0 + secs(100.0));
    let b = books.book(&NONE, one(), t0 + secs(100.0), None).unwrap();
    assert_eq!(offset(t0, &b), 101.0);
}

#[test]
fn absurd_reports_are_bounded() {
    let t0 = Instant::now();
    let mut books = Books::default();
    books.absorb(&requests(Some(1), 0, 1e12), t0);
    books.rate_limited(Some(Duration::MAX), t0);
    let b = books.book(&NONE, one(), t0, None).unwrap();
    assert_eq!(offset(t0, &b), super::books::MAX_WAIT.as_secs_f64());
    let b = books
        .book(&NONE, amounts(u64::MAX, u64::MAX), t0, None)
        .unwrap();
    assert!(offset(t0, &b) <= super::books::MAX_WAIT.as_secs_f64());
}

#[test]
fn the_log_is_bounded_however_fast_calls_come() {
    let t0 = Instant::now();
    let mut books = Books::default();
    let budget = [Some(u64::MAX), Some(u64::MAX), None, None];
    // 200,000 calls over 20 s, 100 µs apart, with usage reported for each.
    for i in 0..200_000u64 {
        let now = t0 + Duration::from_micros(100 * i);
        let mut b = books.book(&budget, amounts(100, 100), now, None).unwrap();
        assert_eq!(b.at, now);
        books.correct(&mut b, 90, 10, now);
    }
    // One entry per millisecond, not per call.
    assert!(books.entries() <= 20_001, "{}", books.entries());
}

#[test]
fn idle_books_are_recognised() {
    let t0 = Instant::now();
    let mut books = Books::default();
    assert!(books.is_idle(t0));
    books.book(&rpm(1), one(), t0, None).unwrap();
    assert!(!books.is_idle(t0 + secs(59.0)));
    assert!(books.is_idle(t0 + secs(60.0)));
}

#[test]
fn a_json_estimate_never_counts_less_than_the_json() {
    use serde_json::json;
    for value in [
        json!(["a", "b", "c"]),
        json!({"k": ["x", "y"], "n": null, "t": true}),
        json!([[], [[]], {}]),
        json!({"city": "Paris", "days": [1, 2, 3]}),
        json!({"a": {"b": {"c": ["deep", "er"]}}}),
    ] {
        let real = serde_json::to_string(&value).unwrap().len() as u64;
        let estimate = super::estimate::json_len(&value, 0);
        assert!(
            (real..=2 * real + 16).contains(&estimate),
            "{value}: {estimate} for {real} bytes"
        );
    }
}

#[test]
fn past_the_model_cap_only_idle_books_are_dropped() {
    use tower::Layer;
    let limit = super::RateLimitLayer::new()
        .requests_per_minute(10)
        .layer(());
    let shared = &limit.shared;
    // The first model's books live apart and are never dropped.
    let _first = shared.books("first");
    // Paused by a 429: not idle, though nothing holds its books now.
    crate::lock(&shared.books("paused")).rate_limited(Some(secs(30.0)), Instant::now());
    // Held by a call in flight: kept, idle or not.
    let held = shared.books("held");
    for i in 0..super::MAX_IDLE_MODELS {
        drop(shared.books(&format!("idle-{i}")));
    }
    let models = crate::lock(&shared.models);
    assert!(
        models.contains_key("paused"),
        "a paused model's pause was forgotten"
    );
    assert!(models.contains_key("held"));
    assert!(
        models.len() < super::MAX_IDLE_MODELS,
        "idle books were kept: {} models",
        models.len()
    );
    drop(held);
}

#[test]
fn estimate_counts_text_images_tools_and_max_tokens() {
    let text = "x".repeat(400);
    let req = ChatRequest::new("m")
        .message(Message::system("y".repeat(40)))
        .message(Message::user(text))
        .max_tokens(256);
    // 440 bytes / 4 + 4 per message.
    assert_eq!(estimate(&req), (118, 256));

    let req = ChatRequest::new("m").message(Message::new(
        Role::User,
        vec![
            ContentPart::Image(Image::Url("https://example.com/cat.png".into())),
            ContentPart::Text("abcd".into()),
        ],
    ));
    assert_eq!(estimate(&req), (1005, 0));

    let tool = Tool::new(
        "weather",
        "Get the weather",
        serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    );
    let with_tool = ChatRequest::new("m")
        .message(Message::user("hi"))
        .tool(tool);
    let (input, _) = estimate(&with_tool);
    let schema_bytes =
        7 + 15 + r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.len();
    let expected = 4 + (2 + schema_bytes as u64).div_ceil(4);
    assert!(input.abs_diff(expected) <= 4, "{input} vs about {expected}");

    // A tool call the assistant made counts its id, name and arguments.
    let arguments = serde_json::json!({"city": "Paris", "days": 3});
    let call = ChatRequest::new("m").message(Message::new(
        Role::Assistant,
        vec![ContentPart::ToolUse {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: arguments.clone(),
        }],
    ));
    let bytes = 6 + 7 + super::estimate::json_len(&arguments, 0);
    assert_eq!(estimate(&call), (4 + bytes.div_ceil(4), 0));

    // A schema deeper than any real one is estimated, not recursed into.
    let mut deep = serde_json::json!(1);
    for _ in 0..1000 {
        deep = serde_json::json!([deep]);
    }
    let req = ChatRequest::new("m").tool(Tool::new("t", "", deep));
    assert!(estimate(&req).0 > 0);
}

proptest! {
    /// Whatever the arrivals and amounts, slots come in arrival order, no
    /// earlier than the arrival, and no 60 s window holds more than the
    /// budget of any limit (for calls within the budget).
    #[test]
    fn slots_never_exceed_a_budget(
        calls in prop::collection::vec((0u64..5_000, 0u64..400, 0u64..400), 1..120),
        budget in (1u64..8, 100u64..1500, 50u64..800),
    ) {
        let t0 = Instant::now();
        let budget = [Some(budget.0), None, Some(budget.1), Some(budget.2)];
        let mut books = Books::default();
        let mut now = t0;
        let mut booked: Vec<(Instant, [u64; LIMITS])> = Vec::new();
        for (gap_ms, input, output) in calls {
            now += Duration::from_millis(gap_ms);
            let input = input.min(budget[2].unwrap());
            let output = output.min(budget[3].unwrap());
            let need = amounts(input, output);
            let b = books.book(&budget, need, now, None).unwrap();
            prop_assert!(b.at >= now);
            if let Some(last) = booked.last() {
                prop_assert!(b.at >= last.0);
            }
            booked.push((b.at, need));
        }
        for (i, &(start, _)) in booked.iter().enumerate() {
            let mut sum = [0u64; LIMITS];
            for &(at, need) in &booked[i..] {
                if at >= start + Duration::from_secs(60) {
                    break;
                }
                for d in 0..LIMITS {
                    sum[d] += need[d];
                }
            }
            for d in 0..LIMITS {
                if let Some(b) = budget[d] {
                    prop_assert!(sum[d] <= b, "limit {d}: {} > {b} from {start:?}", sum[d]);
                }
            }
        }
    }

    /// What OpenAI and Anthropic document about a report: `remaining` calls
    /// may go now, and the bucket is full again (`limit`) at `reset`
    /// (Anthropic: replenished continuously until then). So, stated from
    /// the documents and not from the books' own formula:
    /// - what is left is used at once, and no more than that goes at once;
    /// - by any time `t` before the reset, no more than `remaining` plus a
    ///   share of what was spent in proportion to `t / reset` has gone (no
    ///   refill faster than one that ends full at the reset);
    /// - no more than `limit` go before the reset, and none of the first
    ///   `limit` calls waits past it (the bucket is full by then).
    #[test]
    fn slots_follow_a_report(
        limit in 1u64..100,
        spent in 0u64..100,
        reset_ms in 1u64..120_000,
        calls in 1usize..300,
    ) {
        let t0 = Instant::now();
        let remaining = limit.saturating_sub(spent);
        let mut books = Books::default();
        books.absorb(&requests(Some(limit), remaining, reset_ms as f64 / 1000.0), t0);
        let slots: Vec<Instant> = (0..calls)
            .map(|_| books.book(&NONE, one(), t0, None).unwrap().at)
            .collect();
        let reset = t0 + Duration::from_millis(reset_ms);

        let at_once = slots.iter().filter(|&&s| s == t0).count() as u64;
        prop_assert_eq!(at_once, remaining.min(calls as u64), "what is left, at once");

        let spent = limit - remaining;
        for &s in slots.iter().filter(|&&s| s > t0 && s < reset) {
            let by_then = slots.iter().filter(|&&x| x <= s).count() as u64;
            let share = spent as f64 * (s - t0).as_secs_f64() / (reset_ms as f64 / 1000.0);
            prop_assert!(
                by_then as f64 <= remaining as f64 + share + 1e-6,
                "{by_then} calls by {:?}, allowed {remaining} + {share:.3}",
                s - t0
            );
        }

        let before_reset = slots.iter().filter(|&&s| s < reset).count() as u64;
        prop_assert!(before_reset <= limit);
        for (n, &s) in slots.iter().enumerate().take(limit as usize) {
            prop_assert!(s <= reset, "call {n} waits past the reset, to {:?}", s - t0);
        }
    }
}
