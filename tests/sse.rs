//! Property tests of the SSE decoder: any chunking of the same bytes yields
//! the same events, and those events are what a direct, whole-input reading
//! of the WHATWG rules gives.

use llm_tower::sse::{SseDecoder, SseError};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Event {
        event: String,
        data: String,
        id: String,
    },
    TooLarge,
}

fn decode(chunks: &[&[u8]], limit: usize) -> (Vec<Item>, Option<u64>) {
    let mut d = SseDecoder::with_max_event_size(limit);
    let mut out = Vec::new();
    let mut push = |r: Result<llm_tower::sse::Event<'_>, SseError>| {
        out.push(match r {
            Ok(e) => Item::Event {
                event: e.event.into(),
                data: e.data.into(),
                id: e.id.into(),
            },
            Err(_) => Item::TooLarge,
        })
    };
    for c in chunks {
        let _ = d.feed(c, &mut push);
    }
    d.finish(&mut push);
    (out, d.retry())
}

/// The standard read literally, on the whole input at once: strip one BOM,
/// decode UTF-8 lossily, split lines on CRLF, CR or LF, apply the field
/// rules; at the end, a pending event is dispatched (this crate's one
/// leniency).
fn reference(input: &[u8]) -> (Vec<Item>, Option<u64>) {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let text = String::from_utf8_lossy(input);
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut current));
            }
            '\n' => lines.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines.push(String::new());

    let (mut out, mut data, mut event, mut id, mut retry) = (
        Vec::new(),
        String::new(),
        String::new(),
        String::new(),
        None,
    );
    for line in lines {
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                out.push(Item::Event {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event.clone()
                    },
                    data: data.clone(),
                    id: id.clone(),
                });
            }
            data.clear();
            event.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (line.clone(), String::new()),
        };
        match name.as_str() {
            "data" => {
                data.push_str(&value);
                data.push('\n');
            }
            "event" => event = value,
            "id" if !value.contains('\0') => id = value,
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(v) = value.parse() {
                    retry = Some(v);
                }
            }
            _ => {}
        }
    }
    (out, retry)
}

/// The documented limit, read on the whole input at once: an event is
/// reported as too large when the data it has gathered (each `data` value
/// and its line feed) plus the line being read (any field, comments too)
/// pass `limit` bytes; it is then skipped up to the blank line that ends
/// it. Everything else follows the standard, as in [`reference`].
fn reference_limited(input: &[u8], limit: usize) -> Vec<Item> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                lines.push(&input[start..i]);
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            b'\n' => {
                lines.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < input.len() {
        lines.push(&input[start..]);
    }
    lines.push(b"");

    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (mut out, mut data, mut event, mut id) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut skipping = false;
    for line in lines {
        if skipping {
            if line.is_empty() {
                skipping = false;
                data.clear();
                event.clear();
            }
            continue;
        }
        if data.len() + line.len() > limit {
            out.push(Item::TooLarge);
            skipping = true;
            data.clear();
            event.clear();
            continue;
        }
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                out.push(Item::Event {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        text(&event)
                    },
                    data: text(&data),
                    id: text(&id),
                });
            }
            data.clear();
            event.clear();
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let v = &line[at + 1..];
                (&line[..at], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            b"event" => event = value.to_vec(),
            b"id" if !value.contains(&0) => id = value.to_vec(),
            _ => {}
        }
    }
    out
}

/// Inputs made of the pieces that matter to the grammar.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(&b"data"[..]),
        Just(&b"data: "[..]),
        Just(&b"event: "[..]),
        Just(&b"id: "[..]),
        Just(&b"retry: "[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"\n"[..]),
        Just(&b"\n\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"x"[..]),
        Just(&b"12"[..]),
        Just(&b"\0"[..]),
        Just("é🌊".as_bytes()),
        Just(&b"\xFF"[..]),
        Just(&b"\xC3"[..]),
        Just(&b"\xEF\xBB\xBF"[..]),
        Just(&b"{\"a\":1}"[..]),
    ];
    prop::collection::vec(token, 0..60).prop_map(|ts| ts.concat())
}

fn split_at(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push(input[start..c].to_vec());
        start = c;
    }
    out.push(input[start..].to_vec());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_chunking_matches_the_reference(input in sse_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let chunks = split_at(&input, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(decode(&refs, usize::MAX), reference(&input));
    }

    #[test]
    fn the_size_limit_does_what_it_says_whatever_the_chunking(
        input in sse_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        limit in 1usize..40,
    ) {
        let want = reference_limited(&input, limit);
        let chunks = split_at(&input, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(&decode(&refs, limit).0, &want);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&decode(&bytes, limit).0, &want);
        // No event delivered is larger than the limit.
        for item in &want {
            if let Item::Event { data, .. } = item {
                let lossy = data.contains(char::REPLACEMENT_CHARACTER);
                prop_assert!(data.len() <= limit || lossy, "{} bytes", data.len());
            }
        }
    }

    #[test]
    fn a_limit_above_the_input_changes_nothing(input in sse_bytes()) {
        prop_assert_eq!(reference_limited(&input, input.len()), reference(&input).0);
        prop_assert_eq!(decode(&[&input], input.len()).0, reference(&input).0);
    }
}

#[test]
fn an_empty_chunk_between_cr_and_lf_changes_nothing() {
    let (events, _) = decode(&[b"data: a\r", b"", b"\ndata: b\n\n"], 64);
    assert_eq!(
        events,
        [Item::Event {
            event: "message".into(),
            data: "a\nb".into(),
            id: String::new()
        }]
    );
}

/// The CPU time this thread has used: unlike the wall clock, it does not
/// count the time the thread waited for a core, so a loaded machine does
/// not skew a comparison of two runs.
#[cfg(unix)]
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Unix libc defines.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Feeds one line of `kib` KiB in 1 KiB chunks and returns the least CPU
/// time of five runs.
fn time_one_long_line(kib: usize) -> std::time::Duration {
    let chunk = vec![b'x'; 1024];
    (0..5)
        .map(|_| {
            let started = thread_cpu();
            let mut d = SseDecoder::with_max_event_size(64 << 20);
            d.feed(b"data: ", |_| {}).unwrap();
            for _ in 0..kib {
                d.feed(&chunk, |_| panic!("no event yet")).unwrap();
            }
            let mut len = 0;
            d.feed(b"\n\n", |e| len = e.unwrap().data.len()).unwrap();
            assert_eq!(len, kib << 10);
            thread_cpu().saturating_sub(started)
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn a_long_line_costs_linear_time() {
    // A line arriving in 1 KiB chunks with no line end. Eight times the
    // bytes costs about eight times the CPU if each chunk is scanned once;
    // a decoder that rescans what it holds costs 64 times. The factor of 24
    // leaves room for noise and still tells the two apart.
    let small = time_one_long_line(256);
    let large = time_one_long_line(2048);
    let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-9);
    assert!(
        ratio < 24.0,
        "8x the bytes took {ratio:.1}x the time ({small:?} → {large:?})"
    );
}

#[test]
fn invalid_utf8_does_not_stall() {
    // Megabytes of garbage with no line end, under a limit: one error, then
    // decoding resumes at the next event.
    let mut d = SseDecoder::with_max_event_size(1024);
    let garbage = vec![0xFFu8; 64 * 1024];
    let mut errors = 0;
    for _ in 0..64 {
        let _ = d.feed(&garbage, |e| {
            assert!(e.is_err());
            errors += 1;
        });
    }
    let mut data = String::new();
    d.feed(b"\n\ndata: ok\n\n", |e| data = e.unwrap().data.to_owned())
        .unwrap();
    assert_eq!((errors, data.as_str()), (1, "ok"));
}

/// `retry` takes ASCII digits only (the standard's rule): a sign, a space
/// inside, an underscore or nothing at all leave the last value as it was,
/// although Rust's integer parser would take `+5`.
#[test]
fn retry_takes_digits_only() {
    for (input, expected) in [
        (&b"retry: 15\n\n"[..], Some(15)),
        (b"retry: 15\nretry: +5\n\n", Some(15)),
        (b"retry: -1\n\n", None),
        (b"retry: 1_0\n\n", None),
        (b"retry: 1 0\n\n", None),
        (b"retry:\n\n", None),
        (b"retry: 99999999999999999999999\n\n", None),
    ] {
        let (_, retry) = decode(&[input], 1 << 20);
        assert_eq!(retry, expected, "{:?}", String::from_utf8_lossy(input));
        assert_eq!(reference(input).1, expected, "the reference agrees");
    }
}

/// A line cut between chunks counts whole against the limit: its start
/// (held from the first chunk) and its end, on top of the data gathered.
#[test]
fn a_line_cut_between_chunks_counts_whole_against_the_limit() {
    let first = format!("data: {}\n", "x".repeat(40));
    let second = format!("data: {}\n\n", "y".repeat(55));
    let input = format!("{first}{second}");
    // 41 bytes of data, then a 61-byte line: 102 > 100.
    let (cut_at, limit) = (first.len() + 30, 100);
    let bytes = input.as_bytes();
    let want = reference_limited(bytes, limit);
    assert_eq!(want, [Item::TooLarge]);
    assert_eq!(decode(&[&bytes[..cut_at], &bytes[cut_at..]], limit).0, want);
    // One byte more of room and the event is whole.
    assert!(matches!(
        &decode(&[&bytes[..cut_at], &bytes[cut_at..]], 102).0[..],
        [Item::Event { data, .. }] if data.len() == 96
    ));
}
