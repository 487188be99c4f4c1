//! A stream-aware layer of one's own, with the public API only: it removes a
//! pattern (a customer's account number, say) from every text delta of an
//! answer — also where the pattern is split across deltas — and counts the
//! answers still streaming, however each one ends.
//!
//! Two pieces of the API make it possible:
//!
//! - [`ChatStream::map_events`] puts a stream of one's own between the
//!   answer's events and the caller, keeping the metadata outside;
//! - [`ChatStream::hold`] keeps a value (here a guard that counts) alive
//!   until the stream ends, fails or is dropped.
//!
//! ```text
//! cargo run --example redact_layer
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use futures_util::{Stream, StreamExt};
use llm_tower::Events;
use llm_tower::mock::{MockServer, Reply};
use llm_tower::{ChatRequest, ChatStream, Error, Message, OpenAi, StreamEvent};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// What replaces the pattern.
const MASK: &str = "[redacted]";

/// Removes `pattern` from the text of every answer.
#[derive(Clone, Debug)]
pub struct RedactLayer {
    pattern: Arc<str>,
    streaming: Arc<AtomicUsize>,
}

impl RedactLayer {
    /// Removes `pattern` (not empty) from answers' text.
    pub fn new(pattern: &str) -> Self {
        assert!(!pattern.is_empty(), "an empty pattern matches everywhere");
        RedactLayer {
            pattern: pattern.into(),
            streaming: Arc::default(),
        }
    }

    /// How many answers through this layer are still streaming.
    pub fn streaming(&self) -> usize {
        self.streaming.load(Ordering::SeqCst)
    }
}

impl<S> Layer<S> for RedactLayer {
    type Service = Redact<S>;

    fn layer(&self, inner: S) -> Redact<S> {
        Redact {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RedactLayer`] makes.
#[derive(Clone, Debug)]
pub struct Redact<S> {
    inner: S,
    layer: RedactLayer,
}

impl<S> Service<ChatRequest> for Redact<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<ChatStream, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let answer = self.inner.call(req);
        let layer = self.layer.clone();
        Box::pin(async move {
            let mut stream = answer.await?;
            stream.hold(Streaming::new(&layer.streaming));
            let pattern = layer.pattern;
            Ok(stream.map_events(move |events| Redacting::new(events, pattern)))
        })
    }
}

/// Counts one answer while it lives.
struct Streaming(Arc<AtomicUsize>);

impl Streaming {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Streaming(count.clone())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The answer's events with the pattern removed from their text. Text that
/// could still be the start of the pattern waits for the next delta; any
/// other event (or the end) lets it go first.
struct Redacting {
    events: Events,
    pattern: Arc<str>,
    /// Text not delivered yet: its end may be the pattern's beginning.
    pending: String,
    ready: VecDeque<Result<StreamEvent, Error>>,
    ended: bool,
}

impl Redacting {
    fn new(events: Events, pattern: Arc<str>) -> Self {
        Redacting {
            events,
            pattern,
            pending: String::new(),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    /// Masks what is whole in `pending`, and delivers all of it but the
    /// longest end that begins the pattern (or everything, at `flush`).
    fn release(&mut self, flush: bool) {
        if self.pending.contains(&*self.pattern) {
            self.pending = self.pending.replace(&*self.pattern, MASK);
        }
        let keep = if flush {
            0
        } else {
            (1..self.pattern.len())
                .rev()
                .find(|&n| {
                    self.pending.len() >= n
                        && self.pending.is_char_boundary(self.pending.len() - n)
                        && self
                            .pattern
                            .starts_with(&self.pending[self.pending.len() - n..])
                })
                .unwrap_or(0)
        };
        let text = self.pending.split_off(self.pending.len() - keep);
        let text = std::mem::replace(&mut self.pending, text);
        if !text.is_empty() {
            self.ready.push_back(Ok(StreamEvent::TextDelta { text }));
        }
    }
}

impl Stream for Redacting {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(this.events.poll_next_unpin(cx)) {
                Some(Ok(StreamEvent::TextDelta { text })) => {
                    this.pending.push_str(&text);
                    this.release(false);
                }
                Some(other) => {
                    this.release(true);
                    this.ready.push_back(other);
                }
                None => {
                    this.release(true);
                    this.ended = true;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    // The account number arrives cut in three deltas.
    server.push(Reply::text([
        "Your account is 4012-",
        "8888-",
        "1881. ",
        "Anything else?",
    ]));
    let openai = OpenAi::builder()
        .base_url(server.openai_url())
        .api_key("sk-mock")
        .model("gpt-mock")
        .build()?;
    let redact = RedactLayer::new("4012-8888-1881");
    let svc = ServiceBuilder::new().layer(redact.clone()).service(openai);

    let mut stream = svc
        .oneshot(ChatRequest::new("").message(Message::user("What is my account?")))
        .await?;
    println!("streaming: {}", redact.streaming());
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        if let StreamEvent::TextDelta { text: delta } = event? {
            println!("delta: {delta:?}");
            text.push_str(&delta);
        }
    }
    println!("text: {text}");
    println!("streaming: {}", redact.streaming());
    assert_eq!(text, "Your account is [redacted]. Anything else?");
    assert_eq!(redact.streaming(), 0);
    Ok(())
}
