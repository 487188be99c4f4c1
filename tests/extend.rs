//! The extension points, used as a user would, with the public API only: a
//! provider for a wire of one's own ([`Wire`], [`Decode`], [`Provider`]) and
//! a stream-aware layer ([`ChatStream::map_events`], [`ChatStream::hold`]);
//! and the two examples that show them, run as processes.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use llm_tower::mock::{MockServer, Reply};
use llm_tower::provider::{Decode, Decoded, Provider, Wire};
use llm_tower::sse::Event;
use llm_tower::{
    ChatRequest, ChatStream, Credential, Error, Message, ResponseMeta, RetryPolicy, StopReason,
    StreamEvent, TransportPhase, TransportRetryLayer,
};
use serde_json::{Map, Value, json};
use tower::{Layer, ServiceExt};

mod support;

/// A small wire: the body is `{"model", "prompt"}`; the answer is SSE with
/// `data: <text>` events, `event: stop` (data: the reason) and
/// `event: end`; errors as `event: fail` with an error object.
struct Line;

struct LineDecoder;

impl Wire for Line {
    const NAME: &'static str = "line";
    type Decoder = LineDecoder;

    fn encode(&self, req: &ChatRequest, model: &str) -> Result<Map<String, Value>, Error> {
        let prompt: String = req
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(|p| match p {
                llm_tower::ContentPart::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        if prompt.is_empty() {
            return Err(Error::Config {
                message: "line: nothing to say".into(),
            });
        }
        let mut body = Map::new();
        body.insert("model".into(), model.into());
        body.insert("prompt".into(), prompt.into());
        Ok(body)
    }

    fn api_key_header(&self, key: &HeaderValue) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static("line-key"), key.clone())
    }

    fn decoder(&self) -> LineDecoder {
        LineDecoder
    }
}

impl Decode for LineDecoder {
    fn event(&mut self, event: Event<'_>, out: &mut Decoded) {
        match event.event {
            "message" => {
                out.start(None, None);
                out.push(StreamEvent::TextDelta {
                    text: event.data.to_owned(),
                });
            }
            "stop" => out.stop_reason(match event.data {
                "done" => StopReason::EndTurn,
                other => StopReason::Other(other.to_owned()),
            }),
            "end" => out.end(),
            "fail" => out.error_event(event.data, "fail"),
            _ => {}
        }
    }

    fn body(&mut self, body: &str, out: &mut Decoded) {
        if let Some(v) = out.json::<Value>(body, "body") {
            out.start(None, None);
            out.push(StreamEvent::TextDelta {
                text: v["text"].as_str().unwrap_or_default().to_owned(),
            });
            out.end();
        }
    }
}

fn line_at(server: &MockServer, key: &str) -> Provider<Line> {
    Provider::builder(Line)
        .base_url(server.url())
        .path("/line")
        .api_key(key)
        .model("l-1")
        .build()
        .unwrap()
}

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

fn sse(events: &[&str]) -> Reply {
    Reply::sse(events.iter().map(|e| format!("{e}\n\n")))
}

#[tokio::test]
async fn a_provider_of_ones_own_sends_its_wire_and_decodes_its_answer() {
    let server = MockServer::start().await;
    server.push(sse(&[
        "data: Hel",
        "data: lo",
        "event: stop\ndata: done",
        "event: end\ndata:",
    ]));
    let line = line_at(&server, "line-secret");
    assert_eq!(
        line.endpoint().to_string(),
        format!("{}/line", server.url())
    );
    let stream = line.oneshot(hello()).await.unwrap();
    assert_eq!(stream.meta().provider, "line");
    assert_eq!(stream.meta().model, "l-1");
    let answer = stream.completion().await.unwrap();
    assert_eq!(answer.text, "Hello");
    assert_eq!(answer.stop_reason, Some(StopReason::EndTurn));

    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/line");
    assert_eq!(sent.header("line-key"), Some("line-secret"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.json(), json!({"model": "l-1", "prompt": "hello"}));
}

#[tokio::test]
async fn the_shared_ending_holds_for_a_wire_of_ones_own() {
    let server = MockServer::start().await;
    // Cut after the stop reason: whole.
    server.push(sse(&["data: a", "event: stop\ndata: done"]));
    // Cut before it: truncated, a transport error in the body phase.
    server.push(sse(&["data: a"]));
    let line = line_at(&server, "k");
    let whole = line.clone().oneshot(hello()).await.unwrap();
    assert_eq!(whole.completion().await.unwrap().text, "a");
    let cut = line.oneshot(hello()).await.unwrap();
    let err = cut.completion().await.unwrap_err();
    let Error::Interrupted { source, partial } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(partial.text, "a");
    assert!(
        matches!(
            **source,
            Error::Transport {
                provider: "line",
                phase: TransportPhase::Body,
                ..
            }
        ),
        "{source:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_layer_works_over_it_retries_and_classification_included() {
    let server = MockServer::start().await;
    server.push_all([
        Reply::reset(),
        sse(&[r#"event: fail
data: {"error":{"type":"overloaded_error","message":"busy"}}"#]),
        sse(&["data: ok", "event: end\ndata:"]),
    ]);
    let svc = TransportRetryLayer::new(
        RetryPolicy::default()
            .max_retries(3)
            .backoff(Duration::from_millis(10), Duration::from_millis(100)),
    )
    .layer(line_at(&server, "k"));
    let stream = svc.oneshot(hello()).await.unwrap();
    assert_eq!(stream.meta().attempts, 3);
    assert_eq!(stream.completion().await.unwrap().text, "ok");
    assert_eq!(server.request_count(), 3);

    // An error status in the OpenAI shape is classified by its type.
    server.push(Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "7"));
    let err = line_at(&server, "k").oneshot(hello()).await.unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_encoding_error_is_returned_before_anything_is_sent() {
    let server = MockServer::start().await;
    let err = line_at(&server, "k")
        .oneshot(ChatRequest::new(""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn a_supplied_credential_replaces_the_wires_own_key_header() {
    let server = MockServer::start().await;
    server.push_all([
        sse(&["data: ok", "event: end\ndata:"]),
        sse(&["data: ok", "event: end\ndata:"]),
    ]);
    // An API key goes where the wire says; a bearer token to
    // `Authorization`, and the configured key is not sent beside it.
    for credential in [Credential::api_key("fresh"), Credential::bearer("token")] {
        let mut req = hello();
        req.extensions.insert(credential);
        line_at(&server, "stale")
            .oneshot(req)
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
    }
    let sent = server.requests();
    assert_eq!(sent[0].header("line-key"), Some("fresh"));
    assert_eq!(sent[0].header("authorization"), None);
    assert_eq!(sent[1].header("line-key"), None);
    assert_eq!(sent[1].header("authorization"), Some("Bearer token"));
}

#[tokio::test]
async fn an_echoed_key_is_masked_and_debug_shows_none() {
    let server = MockServer::start().await;
    server.respond_with(|req| {
        let key = req.header("line-key").unwrap_or_default().to_owned();
        Reply::api_error(401, "authentication_error", format!("bad key {key}"))
    });
    let line = line_at(&server, "line-secret-123");
    let debug = format!("{line:?}");
    assert!(!debug.contains("line-secret-123"), "{debug}");
    let err = line.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("line-secret-123"), "{shown}");
}

#[tokio::test]
async fn made_up_text_on_a_path_no_provider_has_is_a_404() {
    let server = MockServer::start().await;
    let err = line_at(&server, "k").oneshot(hello()).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidRequest { status, .. } if status.as_u16() == 404),
        "{err:?}"
    );
    assert!(err.to_string().contains("no route for /line"), "{err}");
}

/// A stream-aware layer from the public API: doubles each text delta and
/// counts the answers alive.
#[tokio::test]
async fn a_layer_of_ones_own_wraps_events_and_holds_a_guard_until_the_end() {
    struct Alive(Arc<AtomicUsize>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let alive = Arc::new(AtomicUsize::new(0));
    let answer = || {
        ChatStream::from_events(
            ResponseMeta::new("test", "m"),
            vec![
                Ok(StreamEvent::TextDelta { text: "ab".into() }),
                Ok(StreamEvent::TextDelta { text: "c".into() }),
                Ok(StreamEvent::Done { stop_reason: None }),
            ],
        )
    };
    let wrap = |mut stream: ChatStream| {
        alive.fetch_add(1, Ordering::SeqCst);
        stream.hold(Alive(alive.clone()));
        stream.map_events(|events| {
            events.map(|item| match item {
                Ok(StreamEvent::TextDelta { text }) => Ok(StreamEvent::TextDelta {
                    text: text.repeat(2),
                }),
                other => other,
            })
        })
    };
    let mut stream = wrap(answer());
    assert_eq!(stream.meta().provider, "test", "the metadata stays outside");
    assert_eq!(alive.load(Ordering::SeqCst), 1);
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        if let StreamEvent::TextDelta { text: t } = event.unwrap() {
            text.push_str(&t);
        }
    }
    assert_eq!(text, "ababcc");
    assert_eq!(alive.load(Ordering::SeqCst), 0, "released at the end");
    // Dropped half way: released too.
    let mut stream = wrap(answer());
    stream.next().await;
    assert_eq!(alive.load(Ordering::SeqCst), 1);
    drop(stream);
    assert_eq!(alive.load(Ordering::SeqCst), 0, "released on drop");
}

async fn run_example(name: &str) -> String {
    let child = tokio::process::Command::new(support::example_exe(name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_remove("RUST_LOG")
        .spawn()
        .expect("the example starts");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} still running after 30 s: killed"))
        .expect("its output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_custom_provider_example_runs() {
    let out = run_example("custom_provider").await;
    assert!(
        out.contains(r#"streamed after 2 attempts: "Tiny models say small things." (Some(EndTurn), 5 tokens out)"#),
        "{out}"
    );
    assert!(
        out.contains(r#"not streamed: "Tiny models say small things.""#),
        "{out}"
    );
    assert!(out.contains("with a wrong key: unauthorized"), "{out}");
    assert!(
        !out.contains("tiny-secret") && !out.contains("tiny-wrong"),
        "{out}"
    );
}

#[tokio::test]
async fn the_redact_layer_example_runs() {
    let out = run_example("redact_layer").await;
    assert!(
        out.contains("text: Your account is [redacted]. Anything else?"),
        "{out}"
    );
    assert!(!out.contains("4012"), "{out}");
    assert!(out.ends_with("streaming: 0\n"), "{out}");
}
