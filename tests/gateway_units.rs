//! The unit tests of the gateway example's config reader and OpenAI wire
//! (`examples/gateway/{config,openai}.rs`, compiled here as modules).
//!
//! Here rather than as the example's own tests: an example built as a test
//! is not built as the program `tests/gateway.rs` runs.

#[allow(dead_code)]
#[path = "../examples/gateway/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../examples/gateway/openai.rs"]
mod openai;
