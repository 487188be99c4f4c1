//! Runs the mock server in the foreground, for trying the `chat` example (or
//! any OpenAI / Anthropic client) against it.
//!
//! ```text
//! cargo run --example mock_server -- [--accept-key KEY]...
//! ```
//!
//! Every request gets a short streamed text answer in the format of the
//! endpoint it was sent to. With `--accept-key`, requests carrying another
//! key get a 401.

use llm_tower::mock::MockServer;

#[tokio::main]
async fn main() {
    let mut keys = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--accept-key", Some(k)) => keys.push(k),
            _ => {
                eprintln!("usage: mock_server [--accept-key KEY]...");
                std::process::exit(2);
            }
        }
    }
    let server = MockServer::start().await;
    if !keys.is_empty() {
        server.accept_keys(keys);
    }
    println!("openai:    {}", server.openai_url());
    println!("anthropic: {}", server.anthropic_url());
    let _ = tokio::signal::ctrl_c().await;
    println!("{} requests served", server.request_count());
}
