//! A provider of one's own, for a wire format this crate does not ship:
//! "TinyLM", invented for this example. Only the public API is used.
//!
//! TinyLM's wire:
//!
//! - `POST {base}/v1/complete` with `x-tiny-key: <key>` and a body
//!   `{"model", "turns": [{"who": "user"|"bot"|"rules", "say"}], "limit", "stream"}`;
//! - streaming, server-sent events: `begin` (`{"id"}`), `piece` (the text
//!   itself, not JSON), `end` (`{"why": "natural"|"limit", "used": {"in", "out"}}`),
//!   and `oops` (`{"error": {"type", "message"}}`) when it fails mid-way;
//! - not streaming, one JSON body: `{"id", "text", "why", "used"}`.
//!
//! The example serves TinyLM from the crate's mock server, makes its first
//! answer a connection reset, and calls it through the retry layer: the
//! provider written here gets retries, classification and secret masking
//! like the built-in ones.
//!
//! ```text
//! cargo run --example custom_provider
//! ```

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use llm_tower::mock::{MockServer, Reply};
use llm_tower::provider::{Decode, Decoded, Provider, Wire};
use llm_tower::sse::Event;
use llm_tower::{
    ChatRequest, ContentPart, Error, Message, RetryPolicy, Role, StopReason, StreamEvent,
    TransportRetryLayer, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tower::{ServiceBuilder, ServiceExt};

/// TinyLM's request side.
struct TinyWire;

impl Wire for TinyWire {
    const NAME: &'static str = "tinylm";
    type Decoder = TinyDecoder;

    fn encode(&self, req: &ChatRequest, model: &str) -> Result<Map<String, Value>, Error> {
        let mut turns = Vec::new();
        for m in req.messages.iter() {
            let who = match m.role {
                Role::System => "rules",
                Role::User => "user",
                Role::Assistant => "bot",
            };
            let mut say = String::new();
            for part in &m.content {
                match part {
                    ContentPart::Text(t) => say.push_str(t),
                    // TinyLM reads text only: say so before sending anything.
                    _ => {
                        return Err(Error::Config {
                            message: "tinylm: only text content can be sent".into(),
                        });
                    }
                }
            }
            turns.push(json!({"who": who, "say": say}));
        }
        let mut body = Map::new();
        body.insert("model".into(), model.into());
        body.insert("turns".into(), turns.into());
        body.insert("limit".into(), req.max_tokens.unwrap_or(256).into());
        body.insert("stream".into(), req.stream.into());
        Ok(body)
    }

    fn uri(&self, endpoint: &Uri, _model: &str, _stream: bool) -> Result<Uri, Error> {
        Ok(endpoint.clone())
    }

    fn api_key_header(&self, key: &HeaderValue) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static("x-tiny-key"), key.clone())
    }

    fn decoder(&self) -> TinyDecoder {
        TinyDecoder
    }
}

/// TinyLM's answer side.
struct TinyDecoder;

#[derive(Deserialize)]
struct Begin {
    id: String,
}

#[derive(Deserialize)]
struct End {
    why: String,
    used: Used,
}

#[derive(Deserialize)]
struct Used {
    #[serde(rename = "in")]
    input: u64,
    out: u64,
}

#[derive(Deserialize)]
struct Whole {
    id: String,
    text: String,
    why: String,
    used: Used,
}

impl TinyDecoder {
    fn end(why: &str, used: Used, out: &mut Decoded) {
        out.push(StreamEvent::Usage(Usage {
            input_tokens: used.input,
            output_tokens: used.out,
            ..Usage::default()
        }));
        out.stop_reason(match why {
            "natural" => StopReason::EndTurn,
            "limit" => StopReason::MaxTokens,
            other => StopReason::Other(other.to_owned()),
        });
        out.end();
    }
}

impl Decode for TinyDecoder {
    fn event(&mut self, event: Event<'_>, out: &mut Decoded) {
        match event.event {
            "begin" => {
                if let Some(b) = out.json::<Begin>(event.data, "begin") {
                    out.start(Some(b.id), None);
                }
            }
            "piece" => out.push(StreamEvent::TextDelta {
                text: event.data.to_owned(),
            }),
            "end" => {
                if let Some(e) = out.json::<End>(event.data, "end") {
                    TinyDecoder::end(&e.why, e.used, out);
                }
            }
            // Classified as a status would be: `overloaded_error` is
            // `Error::Overloaded`, retried before output.
            "oops" => out.error_event(event.data, "oops"),
            // Events added to the format later are skipped.
            _ => {}
        }
    }

    fn body(&mut self, body: &str, out: &mut Decoded) {
        let Some(w) = out.json::<Whole>(body, "body") else {
            return;
        };
        out.start(Some(w.id), None);
        out.push(StreamEvent::TextDelta { text: w.text });
        TinyDecoder::end(&w.why, w.used, out);
    }
}

/// TinyLM's server side, for the example: the answer to one request.
fn tinylm(say: &str, stream: bool) -> Reply {
    let words: Vec<String> = say.split_inclusive(' ').map(str::to_owned).collect();
    let used = json!({"in": 12, "out": words.len()});
    if !stream {
        return Reply::body(
            200,
            "application/json",
            json!({"id": "t-1", "text": say, "why": "natural", "used": used}).to_string(),
        );
    }
    let mut events = vec!["event: begin\ndata: {\"id\":\"t-1\"}\n\n".to_owned()];
    events.extend(words.iter().map(|w| format!("event: piece\ndata: {w}\n\n")));
    events.push(format!(
        "event: end\ndata: {}\n\n",
        json!({"why": "natural", "used": used})
    ));
    Reply::sse(events)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    // TinyLM checks its own header: a wrong key is a 401, which the
    // provider classifies as `Error::Unauthorized`.
    server.respond_with(|req| {
        if req.header("x-tiny-key") != Some("tiny-secret") {
            return Reply::body(
                401,
                "application/json",
                r#"{"error":{"type":"authentication_error","message":"bad key"}}"#,
            );
        }
        let body = req.json();
        let stream = body["stream"].as_bool().unwrap_or(false);
        tinylm("Tiny models say small things.", stream)
    });
    // The first request finds the connection reset: the retry layer sends
    // it again, and the caller never sees it.
    server.push(Reply::reset());

    let tiny = Provider::builder(TinyWire)
        .base_url(server.url())
        .path("/v1/complete")
        .api_key("tiny-secret")
        .model("tiny-1")
        .build()?;
    println!("provider: {tiny:?}");
    let svc = ServiceBuilder::new()
        .layer(TransportRetryLayer::new(
            RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_secs(1)),
        ))
        .service(tiny.clone());

    let request = ChatRequest::new("").message(Message::user("Say something small."));
    let stream = svc.clone().oneshot(request.clone()).await?;
    let attempts = stream.meta().attempts;
    let answer = stream.completion().await?;
    println!(
        "streamed after {attempts} attempts: {:?} ({:?}, {} tokens out)",
        answer.text,
        answer.stop_reason,
        answer.usage.map_or(0, |u| u.output_tokens)
    );

    let whole = svc
        .oneshot(request.clone().stream(false))
        .await?
        .completion()
        .await?;
    println!("not streamed: {:?}", whole.text);

    // A wrong key: classified, and the key is not in the message.
    let wrong = Provider::builder(TinyWire)
        .base_url(server.url())
        .path("/v1/complete")
        .api_key("tiny-wrong")
        .model("tiny-1")
        .build()?;
    let err = wrong.oneshot(request).await.unwrap_err();
    println!("with a wrong key: {} ({})", err.kind(), err);
    assert!(matches!(err, Error::Unauthorized { .. }));
    Ok(())
}
