//! The SSE decoder: no panic on any input, and the same events whatever the
//! chunk boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_tower::sse::SseDecoder;

#[derive(Debug, PartialEq)]
enum Item {
    Event(String, String, String),
    TooLarge,
}

fn decode(limit: usize, chunks: &[&[u8]]) -> Vec<Item> {
    let mut out = Vec::new();
    let mut push = |item: Result<llm_tower::sse::Event<'_>, _>| {
        out.push(match item {
            Ok(e) => Item::Event(e.event.to_owned(), e.data.to_owned(), e.id.to_owned()),
            Err(_) => Item::TooLarge,
        })
    };
    let mut decoder = SseDecoder::with_max_event_size(limit);
    for chunk in chunks {
        let _ = decoder.feed(chunk, &mut push);
    }
    decoder.finish(&mut push);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    // A small limit half the time, so the skipping path is reached.
    let limit = if seed & 1 == 0 { 64 } else { 1 << 20 };
    let whole = decode(limit, &[input]);
    // The same bytes in pieces of 1 to 16 bytes, lengths from the seed.
    let mut pieces = Vec::new();
    let mut rest = input;
    let mut state = u32::from(seed) | 1;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 16 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        pieces.push(piece);
        rest = tail;
    }
    assert_eq!(whole, decode(limit, &pieces));
});
