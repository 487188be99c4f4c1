//! What the SSE decoder holds while it skips what is over its limit: its
//! own test binary, so that the counting allocator sees no other test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use llm_tower::sse::SseDecoder;

/// Counts the bytes live on the heap, and the most there were.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes live above what was live when `f` started.
fn peak_growth(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// Megabytes of invalid UTF-8 with no line end, and a line that never
/// ends: under a 1 KiB limit, the decoder holds about the limit, however
/// much arrives, and decodes the next event.
#[test]
fn what_is_over_the_limit_is_skipped_not_held() {
    let garbage = vec![0xFFu8; 64 * 1024];
    let letters = vec![b'x'; 64 * 1024];
    for (what, chunk) in [("invalid UTF-8", &garbage), ("one long line", &letters)] {
        let mut d = SseDecoder::with_max_event_size(1024);
        let mut errors = 0;
        let mut data = String::new();
        let grew = peak_growth(|| {
            d.feed(b"data: ", |_| {}).unwrap();
            for _ in 0..64 {
                let _ = d.feed(chunk, |e| {
                    assert!(e.is_err());
                    errors += 1;
                });
            }
            d.feed(b"\n\ndata: ok\n\n", |e| data = e.unwrap().data.to_owned())
                .unwrap();
        });
        assert_eq!((errors, data.as_str()), (1, "ok"), "{what}");
        // 4 MiB went through; the decoder kept at most a few limits' worth.
        assert!(grew < 16 * 1024, "{what}: the heap grew by {grew} bytes");
    }
}
