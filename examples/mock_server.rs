//! Runs the mock server in the foreground, for trying the `chat` example (or
//! any OpenAI / Anthropic client) against it.
//!
//! ```text
//! cargo run --example mock_server -- [--port PORT]
//! ```
//!
//! Every request gets a short streamed text answer in the format of the
//! endpoint it was sent to.

use llm_tower::mock::MockServer;

#[tokio::main]
async fn main() {
    let server = MockServer::start().await;
    println!("openai:    {}", server.openai_url());
    println!("anthropic: {}", server.anthropic_url());
    let _ = tokio::signal::ctrl_c().await;
    println!("{} requests served", server.request_count());
}
