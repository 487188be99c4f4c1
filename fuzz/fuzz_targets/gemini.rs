//! The Gemini decoder (streaming and not) over whatever a server may send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_tower::Gemini;
use llm_tower_fuzz::{MAX_EVENT_SIZE, provider};

fuzz_target!(|data: &[u8]| {
    provider(data, |canned| {
        Gemini::builder()
            .model("m")
            .api_key("fuzz-key")
            .max_event_size(MAX_EVENT_SIZE)
            .build_with(canned)
            .expect("a valid configuration")
    });
});
