//! Runs the mock server in the foreground, for trying the `chat` example (or
//! any OpenAI, Anthropic or Gemini client) against it.
//!
//! ```text
//! cargo run --example mock_server -- [--accept-key KEY]... [--stall-first N]
//! ```
//!
//! Every request gets a short streamed text answer in the format of the
//! endpoint it was sent to. With `--accept-key`, requests carrying another
//! key get a 401; with `--stall-first N`, the first N answers stall before
//! any output.

use llm_tower::mock::{MockServer, Reply};

#[tokio::main]
async fn main() {
    let mut keys = Vec::new();
    let mut stalls = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--accept-key", Some(k)) => keys.push(k),
            ("--stall-first", Some(n)) if n.parse::<usize>().is_ok() => {
                stalls = n.parse().unwrap_or(0)
            }
            _ => {
                eprintln!("usage: mock_server [--accept-key KEY]... [--stall-first N]");
                std::process::exit(2);
            }
        }
    }
    let server = MockServer::start().await;
    for _ in 0..stalls {
        server.push(Reply::text(["never sent"]).stall_after(0));
    }
    if !keys.is_empty() {
        server.accept_keys(keys);
    }
    println!("openai:    {}", server.openai_url());
    println!("anthropic: {}", server.anthropic_url());
    println!("gemini:    {}", server.gemini_url());
    let _ = tokio::signal::ctrl_c().await;
    println!("{} requests served", server.request_count());
}
