//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use llm_tower::mock::MockServer;
use llm_tower::transport::RequestBody;
use llm_tower::{Anthropic, ChatRequest, ChatStream, Error, OpenAi, StreamEvent};
use tower::util::BoxCloneService;

/// An LLM-level service, boxed.
pub type Svc = BoxCloneService<ChatRequest, ChatStream, Error>;

/// `service` behind `layer`, boxed.
pub fn boxed<L, S>(layer: L, service: S) -> Svc
where
    L: tower::Layer<S>,
    L::Service:
        tower::Service<ChatRequest, Response = ChatStream, Error = Error> + Clone + Send + 'static,
    <L::Service as tower::Service<ChatRequest>>::Future: Send + 'static,
{
    BoxCloneService::new(layer.layer(service))
}

/// An OpenAI service for the mock server, default model `m`.
pub fn openai_at(server: &MockServer) -> OpenAi {
    OpenAi::builder()
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap()
}

/// An Anthropic service for the mock server, default model `m`.
pub fn anthropic_at(server: &MockServer) -> Anthropic {
    Anthropic::builder()
        .base_url(server.anthropic_url())
        .model("m")
        .build()
        .unwrap()
}

/// A Gemini service for the mock server, default model `m`.
pub fn gemini_at(server: &MockServer) -> llm_tower::Gemini {
    llm_tower::Gemini::builder()
        .base_url(server.gemini_url())
        .model("m")
        .build()
        .unwrap()
}

/// Reads a transcript written for these tests, from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

pub type FixtureBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// An in-process HTTP transport: answers every request with one canned
/// response whose body arrives in pieces of `chunk` bytes. No socket.
#[derive(Clone)]
pub struct FixtureTransport {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub chunk: usize,
    pub seen: Arc<Mutex<Vec<http::Request<Bytes>>>>,
}

impl FixtureTransport {
    pub fn sse(body: impl Into<Bytes>, chunk: usize) -> Self {
        FixtureTransport {
            status: 200,
            content_type: "text/event-stream",
            body: body.into(),
            chunk,
            seen: Arc::default(),
        }
    }
}

impl tower::Service<http::Request<RequestBody>> for FixtureTransport {
    type Response = http::Response<FixtureBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RequestBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(body))
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.seen
            .lock()
            .unwrap()
            .push(http::Request::from_parts(parts, body));
        let frames: Vec<_> = (0..self.body.len())
            .step_by(self.chunk.max(1))
            .map(|i| {
                Ok(Frame::data(
                    self.body
                        .slice(i..self.body.len().min(i + self.chunk.max(1))),
                ))
            })
            .collect();
        let resp = http::Response::builder()
            .status(self.status)
            .header("content-type", self.content_type)
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        std::future::ready(Ok(resp))
    }
}

/// Every event of a stream, and the error that ended it, if any.
/// `request` through `service`, folded into its completion: a call the
/// test expects to succeed.
pub async fn complete<S>(service: S, request: ChatRequest) -> llm_tower::Completion
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = Error>,
{
    use tower::ServiceExt;
    let stream = service.oneshot(request).await.expect("an answer");
    stream.completion().await.expect("a whole answer")
}

pub async fn drain(mut stream: ChatStream) -> (Vec<StreamEvent>, Option<Error>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => {
                assert!(
                    stream.next().await.is_none(),
                    "a stream ends after its error"
                );
                return (events, Some(e));
            }
        }
    }
    (events, None)
}

/// The text deltas of `events`, in order.
pub fn texts(events: &[StreamEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// The chunk sizes a transcript is decoded at: byte by byte, across every
/// boundary, and whole.
pub const CHUNKS: [usize; 5] = [1, 3, 7, 64, 1 << 20];

/// `run` at each of [`CHUNKS`]: every size must give the same events and the
/// same error (by its text) as the first, whose result comes back.
pub async fn each_chunking<F, Fut>(what: &str, run: F) -> (Vec<StreamEvent>, Option<Error>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (Vec<StreamEvent>, Option<Error>)>,
{
    let (first, first_err) = run(CHUNKS[0]).await;
    for c in &CHUNKS[1..] {
        let (events, err) = run(*c).await;
        assert_eq!(events, first, "{what} at {c}-byte chunks");
        assert_eq!(
            err.as_ref().map(ToString::to_string),
            first_err.as_ref().map(ToString::to_string),
            "{what} at {c}-byte chunks"
        );
    }
    (first, first_err)
}

/// Every tracing event's fields, as `name=value` text, captured while the
/// returned guard lives: on this thread ([`Captured::start`]), or on every
/// thread of the process ([`Captured::everywhere`]).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<String>>>);

/// The captures that also take what threads without a subscriber of their
/// own emit (a multi-threaded runtime's workers, blocking-pool threads).
static EVERYWHERE: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

impl Captured {
    /// Starts capturing on this thread.
    ///
    /// tracing caches each callsite's interest process-wide, and while only
    /// one dispatcher is registered it computes that interest against the
    /// default of whichever thread reaches the callsite first — a parallel
    /// test's thread without a subscriber would cache `never` for everyone.
    /// A second, always-interested dispatcher kept alive meanwhile makes the
    /// interest the union of both.
    pub fn start() -> (Captured, Capturing) {
        use tracing_subscriber::layer::SubscriberExt;
        let captured = Captured::default();
        let anchor = tracing::Dispatch::new(
            tracing_subscriber::registry().with(CaptureLayer(Captured::default())),
        );
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(CaptureLayer(captured.clone())),
        );
        tracing::callsite::rebuild_interest_cache();
        (
            captured,
            Capturing {
                _guard: guard,
                _anchor: anchor,
                everywhere: None,
            },
        )
    }

    /// Starts capturing on this thread and on every thread that has no
    /// subscriber of its own: what a "no secret in any output" check needs.
    /// Other tests' threads of that kind are captured too, so use it for
    /// checks that more events cannot break.
    pub fn everywhere() -> (Captured, Capturing) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let fan_out = tracing_subscriber::registry().with(CaptureLayer(FanOut));
            tracing::subscriber::set_global_default(fan_out)
                .expect("no other global subscriber in the tests");
        });
        let (captured, mut capturing) = Captured::start();
        EVERYWHERE.lock().unwrap().push(captured.clone());
        capturing.everywhere = Some(captured.clone());
        (captured, capturing)
    }

    /// As [`Captured::everywhere`], this thread's spans also exported
    /// through `tracer` (an OpenTelemetry SDK pipeline), as
    /// `tracing-opentelemetry` exports them.
    pub fn everywhere_exporting(tracer: opentelemetry_sdk::trace::Tracer) -> (Captured, Capturing) {
        use tracing_subscriber::layer::SubscriberExt;
        // The global fan-out, and the anchor that keeps interest computed
        // for every thread (see `start`).
        drop(Captured::everywhere());
        let captured = Captured::default();
        let anchor = tracing::Dispatch::new(
            tracing_subscriber::registry().with(CaptureLayer(Captured::default())),
        );
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::registry()
                .with(CaptureLayer(captured.clone()))
                .with(tracing_opentelemetry::layer().with_tracer(tracer)),
        );
        tracing::callsite::rebuild_interest_cache();
        EVERYWHERE.lock().unwrap().push(captured.clone());
        (
            captured.clone(),
            Capturing {
                _guard: guard,
                _anchor: anchor,
                everywhere: Some(captured),
            },
        )
    }

    pub fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}

/// Capturing lasts as long as this lives.
pub struct Capturing {
    _guard: tracing::subscriber::DefaultGuard,
    _anchor: tracing::Dispatch,
    everywhere: Option<Captured>,
}

impl Drop for Capturing {
    fn drop(&mut self) {
        if let Some(c) = self.everywhere.take() {
            EVERYWHERE
                .lock()
                .unwrap()
                .retain(|other| !Arc::ptr_eq(&other.0, &c.0));
        }
    }
}

/// Where a capturing layer writes.
trait Sink {
    fn push_line(&self, line: String);
}

impl Sink for Captured {
    fn push_line(&self, line: String) {
        self.push(line);
    }
}

/// The process-wide subscriber's sink: every capture started with
/// [`Captured::everywhere`].
#[derive(Clone, Copy)]
struct FanOut;

impl Sink for FanOut {
    fn push_line(&self, line: String) {
        for c in EVERYWHERE.lock().unwrap().iter() {
            c.push(line.clone());
        }
    }
}

/// Fields as `name=value` text.
struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

/// The layer that writes what it sees to its sink.
struct CaptureLayer<K>(K);

impl<S, K> tracing_subscriber::Layer<S> for CaptureLayer<K>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    K: Sink + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let within = ctx.event_span(event).map(|s| s.name()).unwrap_or("-");
        let mut f = Fields(format!("{} [in {within}] ", event.metadata().level()));
        event.record(&mut f);
        self.0.push_line(f.0);
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields(String::new());
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(f) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(f);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions()
                .get::<Fields>()
                .map(|f| f.0.clone())
                .unwrap_or_default();
            self.0.push_line(format!("CLOSED {} {fields}", span.name()));
        }
    }
}

/// A built example's binary: the tests run from `target/<profile>/deps`,
/// the examples are in `target/<profile>/examples`. A plain `cargo test`
/// builds the examples before it runs the tests; with a target filter
/// (`cargo test --test chat_cli`) build them first (`cargo build --examples
/// --all-features`). An example older than its source is refused, so that
/// an old build is never tested.
pub fn example_exe(name: &str) -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let exe = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let rebuild = format!(
        "run `cargo build --example {name} --all-features` (or a plain `cargo test`, \
         which builds the examples) first"
    );
    let built = std::fs::metadata(&exe)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {rebuild}", exe.display()));
    let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let single = examples.join(format!("{name}.rs"));
    // An example of one file, or a folder of them (`examples/gateway/`).
    let sources: Vec<std::path::PathBuf> = match std::fs::read_dir(examples.join(name)) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => vec![single],
    };
    for source in sources {
        let Ok(changed) = std::fs::metadata(&source).and_then(|m| m.modified()) else {
            continue;
        };
        assert!(
            built >= changed,
            "{} is older than {}: {rebuild}",
            exe.display(),
            source.display()
        );
    }
    exe
}
