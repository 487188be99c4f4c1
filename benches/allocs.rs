//! What the recommended layer stack allocates over the bare provider, per
//! short call and per streamed event: counted exactly by a counting global
//! allocator, so the figures do not depend on the machine or its load.
//!
//! The stack is the README's, layer for layer (`common::full_stack`), over
//! the in-process transport the `stack` bench uses. The transport's own
//! allocations (building the canned response) are in both columns alike.
//! Then each layer alone over the bare provider, for a short call: where the
//! stack's allocations come from.
//!
//! `cargo bench --bench allocs`; with `ALLOCS_WHERE=1`, where each
//! allocation of one call through the stack is made.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use llm_tower::{ChatRequest, Message, OpenAi};
use tower::ServiceExt;

use common::{Boxed, Canned, EVENTS, count_events, fixed_chunks, full_stack, openai_transcript};

/// Counts allocations (and reallocations, which copy) on every thread.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to `System` unchanged; the counters are
// atomics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        where_from();
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        where_from();
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

std::thread_local! {
    /// Whether this thread's allocations are being traced; off while a
    /// trace is taken, which allocates itself.
    static RECORD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static TRACES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes a backtrace of this allocation, when tracing.
fn where_from() {
    if RECORD.with(|r| r.replace(false)) {
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        TRACES.with(|t| t.borrow_mut().push(trace));
        RECORD.with(|r| r.set(true));
    }
}

/// `ALLOCS_WHERE=1 cargo bench --bench allocs`: one short call through
/// the README stack, each allocation with the two innermost frames that
/// made it and the first of the crate's: the profile behind the counts.
fn where_one_call_allocates() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let provider = OpenAi::builder()
        .model("gpt-4o-mini")
        .build_with(Canned::json(ANSWER))
        .expect("valid configuration");
    let full = full_stack(provider, 64);
    let run = || {
        rt.block_on(async {
            count_events(full.clone().oneshot(request(false)).await).await;
        })
    };
    run();
    RECORD.with(|r| r.set(true));
    run();
    RECORD.with(|r| r.set(false));
    let traces = TRACES.with(|t| t.take());
    println!("{} allocations in one short call:", traces.len());
    for trace in traces {
        let frames: Vec<&str> = trace
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("at "))
            .filter_map(|l| l.split_once(": ").map(|(_, name)| name))
            .filter(|f| {
                ![
                    "where_from",
                    "alloc::",
                    "__rust",
                    "core::ptr",
                    "<allocs::Counting",
                ]
                .iter()
                .any(|skip| f.contains(skip))
            })
            .collect();
        let ours = frames
            .iter()
            .find(|f| f.contains("llm_tower"))
            .unwrap_or(&"");
        println!(
            "{} | {ours}",
            frames
                .iter()
                .take(2)
                .copied()
                .collect::<Vec<_>>()
                .join(" < ")
        );
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1763000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#;

const CALLS: u64 = 1_000;

/// The model named in the request, or empty for the provider's default.
static MODEL: std::sync::Mutex<&str> = std::sync::Mutex::new("");

fn request(stream: bool) -> ChatRequest {
    let model = *MODEL.lock().expect("not poisoned");
    ChatRequest::new(model)
        .message(Message::user("Say hello."))
        .max_tokens(64)
        .stream(stream)
}

/// Allocations and bytes per call of `svc` over `calls` calls, after a
/// warm-up call (lazy statics, the runtime's first timer).
fn per_call(rt: &tokio::runtime::Runtime, svc: &Boxed, stream: bool, calls: u64) -> (f64, f64) {
    let run = || {
        rt.block_on(async {
            count_events(svc.clone().oneshot(request(stream)).await).await;
        })
    };
    run();
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..calls {
        run();
    }
    let a = ALLOCATIONS.load(Ordering::Relaxed) - a0;
    let b = BYTES.load(Ordering::Relaxed) - b0;
    (a as f64 / calls as f64, b as f64 / calls as f64)
}

fn main() {
    if std::env::var_os("ALLOCS_WHERE").is_some() {
        return where_one_call_allocates();
    }
    // `cargo test --benches` runs bench targets with `--bench` absent:
    // one quick pass then.
    let calls = if std::env::args().any(|a| a == "--bench") {
        CALLS
    } else {
        10
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    for (what, canned, stream, per) in [
        ("short call", Canned::json(ANSWER), false, 1.0),
        (
            "10,000-event stream, per event",
            Canned::sse(fixed_chunks(&openai_transcript(), 1024)),
            true,
            EVENTS as f64,
        ),
    ] {
        let provider = OpenAi::builder()
            .model("gpt-4o-mini")
            .build_with(canned)
            .expect("valid configuration");
        let bare = Boxed::new(provider.clone());
        let full = full_stack(provider, 64);
        let n = if stream { calls.min(20) } else { calls };
        let (ba, bb) = per_call(&rt, &bare, stream, n);
        let (fa, fb) = per_call(&rt, &full, stream, n);
        println!(
            "allocs/{what}: bare {:.2} allocations ({:.0} bytes), README stack {:.2} ({:.0} bytes): +{:.2} allocations, +{:.0} bytes",
            ba / per,
            bb / per,
            fa / per,
            fb / per,
            (fa - ba) / per,
            (fb - bb) / per
        );
    }
    // Each copy of a request for another layer's attempt copies its model
    // name: the one part of a request not shared between copies.
    *MODEL.lock().expect("not poisoned") = "gpt-4o-mini";
    let provider = OpenAi::builder()
        .build_with(Canned::json(ANSWER))
        .expect("valid configuration");
    let (ba, _) = per_call(&rt, &Boxed::new(provider.clone()), false, calls);
    let (fa, _) = per_call(&rt, &full_stack(provider, 64), false, calls);
    println!(
        "allocs/short call, model named in the request: bare {ba:.2} allocations, README stack {fa:.2}: +{:.2} allocations",
        fa - ba
    );
    *MODEL.lock().expect("not poisoned") = "";
    each_layer(&rt, calls);
}

/// Each layer of the README stack alone over the bare provider.
fn each_layer(rt: &tokio::runtime::Runtime, calls: u64) {
    let provider = OpenAi::builder()
        .model("gpt-4o-mini")
        .build_with(Canned::json(ANSWER))
        .expect("valid configuration");
    let (bare, _) = per_call(rt, &Boxed::new(provider.clone()), false, calls);
    let layers = common::each_layer(provider);
    for (name, svc) in layers {
        let (a, _) = per_call(rt, &svc, false, calls);
        println!(
            "allocs/short call, {name} alone: +{:.2} allocations",
            a - bare
        );
    }
}
