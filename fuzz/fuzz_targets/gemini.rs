//! The Gemini decoder (streaming and not) over whatever a server may send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_tower::Gemini;
use llm_tower_fuzz::{Canned, MAX_EVENT_SIZE, check};

fuzz_target!(|data: &[u8]| {
    let Some(canned) = Canned::from_fuzz(data) else {
        return;
    };
    let stream = data[0] & 0x80 == 0;
    let service = Gemini::builder()
        .model("m")
        .api_key("sk-fuzz")
        .max_event_size(MAX_EVENT_SIZE)
        .build_with(canned)
        .expect("a valid configuration");
    check(service, stream);
});
