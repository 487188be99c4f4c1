//! Provider services: a [`ChatRequest`] in, an HTTP exchange with the
//! provider, a [`ChatStream`] out.
//!
//! Each provider is a `Service<ChatRequest, Response = ChatStream, Error =
//! Error>` that is `Clone`, generic over its HTTP transport (default
//! [`ReqwestTransport`]):
//!
//! - [`OpenAi`]: Chat Completions, and every OpenAI-compatible server through
//!   its base URL (vLLM, Ollama, llama.cpp, gateways), with [`Preset`]s for
//!   the common ones.
//! - [`Anthropic`]: Messages, with an API key or an OAuth bearer token.
//! - [`Gemini`]: Google's Generative Language API.
//!
//! ```no_run
//! use llm_tower::{ChatRequest, Message, OpenAi};
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), llm_tower::Error> {
//! let openai = OpenAi::builder()
//!     .api_key(std::env::var("OPENAI_API_KEY").unwrap_or_default())
//!     .model("gpt-4o-mini")
//!     .build()?;
//! let answer = openai
//!     .oneshot(ChatRequest::new("").message(Message::user("Say hi")))
//!     .await?
//!     .completion()
//!     .await?;
//! println!("{}", answer.text);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use futures_core::Stream;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Uri};
use http_body::Body;
use pin_project_lite::pin_project;
use serde_json::{Map, Value};

use crate::auth::{AuthHeader, Credential, SuppliedCredential, secret_header};
use crate::chat::{ChatRequest, ChatStream, ResponseMeta, StreamEvent};
use crate::error::{BoxError, DecodeError, Error, TimeoutPhase, TransportPhase, snippet};
use crate::headers::{RateLimitInfo, request_id_header};
use crate::redact::Secrets;
use crate::sse::{Event, SseDecoder, SseError};
use crate::transport::{RequestBody, ReqwestTransport};

mod anthropic;
mod gemini;
mod openai;

pub use anthropic::{Anthropic, AnthropicBuilder};
pub use gemini::{Gemini, GeminiBuilder};
pub use openai::{OpenAi, OpenAiBuilder, Preset};

/// Where decoded events wait until the caller polls for them.
type Queue = VecDeque<Result<StreamEvent, Error>>;

/// The headers a managed credential replaces: `Authorization`, then the API
/// key headers (Anthropic's, which [`Credential::api_key`] stands for, and
/// Gemini's).
///
/// [`Credential::api_key`]: crate::Credential::api_key
const AUTH_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-goog-api-key"];

/// How much of an error response's body is read to classify it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The most tool calls, or content blocks, one answer may open. Wire
/// indices are mapped to dense positions below it, so no number a server
/// sends sizes an allocation; past it the answer fails with
/// [`DecodeError::TooManyParts`].
pub const MAX_PARTS: usize = 1024;

/// Applies `patch` to `target` as a JSON merge patch (RFC 7386): objects
/// merge key by key, `null` removes a key, anything else replaces.
pub(crate) fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => match target.get_mut(k) {
                Some(Value::Object(t)) => merge_patch(t, p),
                _ => {
                    let mut fresh = Map::new();
                    merge_patch(&mut fresh, p);
                    target.insert(k.clone(), Value::Object(fresh));
                }
            },
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// `x` as the decimal a person wrote: `0.2f32` is sent as `0.2`, not as the
/// `0.20000000298023224` its widening to `f64` gives. Not a number: `null`.
pub(crate) fn decimal(x: f32) -> Value {
    // f32's Display is the shortest text that reads back as the same f32.
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The error for an answer past [`MAX_PARTS`].
pub(crate) fn too_many(provider: &'static str, what: &'static str) -> crate::Error {
    crate::Error::decode(
        provider,
        crate::DecodeError::TooManyParts {
            what,
            limit: MAX_PARTS,
        },
    )
}

/// One provider's wire format.
pub(crate) trait Wire: Send + Sync + 'static {
    const NAME: &'static str;

    /// The body, with the request's model resolved and `extra` merged in by
    /// the caller.
    fn encode_body(&self, req: &ChatRequest, model: &str) -> Map<String, Value>;

    /// Where the request goes: the configured endpoint, unless the model or
    /// the mode is part of the path.
    fn uri(&self, common: &Common, _model: &str, _stream: bool) -> Result<Uri, Error> {
        Ok(common.endpoint.clone())
    }

    /// How this provider sends an API key whose value is `value` (see
    /// [`Credential::api_key`](crate::Credential::api_key)).
    fn api_key_header(&self, value: &HeaderValue) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static("x-api-key"), value.clone())
    }

    /// A decoder for one response.
    fn decoder(&self) -> Decoder;
}

/// The decoder of each provider, as one type: the response future names no
/// provider-specific type and dispatch stays static.
#[derive(Debug)]
pub(crate) enum Decoder {
    OpenAi(openai::OpenAiDecoder),
    Anthropic(anthropic::AnthropicDecoder),
    Gemini(gemini::GeminiDecoder),
}

macro_rules! dispatch {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Decoder::OpenAi($d) => $e,
            Decoder::Anthropic($d) => $e,
            Decoder::Gemini($d) => $e,
        }
    };
}

impl WireDecoder for Decoder {
    fn event(&mut self, event: Event<'_>, out: &mut Queue) {
        dispatch!(self, d => d.event(event, out))
    }
    fn body(&mut self, body: &[u8], out: &mut Queue) {
        dispatch!(self, d => d.body(body, out))
    }
    fn is_done(&self) -> bool {
        dispatch!(self, d => d.is_done())
    }
    fn finish(&mut self, out: &mut Queue) {
        dispatch!(self, d => d.finish(out))
    }
}

/// Turns one response's SSE events (or its one JSON body) into
/// [`StreamEvent`]s.
pub(crate) trait WireDecoder: Send + 'static {
    /// One server-sent event.
    fn event(&mut self, event: Event<'_>, out: &mut Queue);
    /// The whole body of a non-streaming response.
    fn body(&mut self, body: &[u8], out: &mut Queue);
    /// Whether the stream's terminator was seen; reading stops there.
    fn is_done(&self) -> bool;
    /// The body ended: a stream that had not finished was truncated.
    fn finish(&mut self, out: &mut Queue);
}

/// Configuration every provider shares.
#[derive(Clone)]
pub(crate) struct Common {
    pub(crate) endpoint: Uri,
    pub(crate) model: String,
    /// Authentication and extra headers, sent on every request. Secret values
    /// are marked sensitive.
    pub(crate) headers: HeaderMap,
    pub(crate) max_event_size: usize,
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: values may be credentials.
        f.debug_struct("Common")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("max_event_size", &self.max_event_size)
            .finish()
    }
}

/// The machinery shared by provider services: encode, send, classify, decode.
pub(crate) struct Client<W, S> {
    pub(crate) wire: Arc<W>,
    pub(crate) common: Arc<Common>,
    pub(crate) transport: S,
}

impl<W, S: Clone> Clone for Client<W, S> {
    fn clone(&self) -> Self {
        Client {
            wire: self.wire.clone(),
            common: self.common.clone(),
            transport: self.transport.clone(),
        }
    }
}

impl<W: Wire, S> Client<W, S> {
    fn encode(&self, req: &ChatRequest) -> Result<(http::Request<RequestBody>, String), Error> {
        let model = if req.model.is_empty() {
            self.common.model.clone()
        } else {
            req.model.clone()
        };
        if model.is_empty() {
            return Err(Error::config(format!(
                "no model: the request names none and the {} service has no default",
                W::NAME
            )));
        }
        let mut body = self.wire.encode_body(req, &model);
        merge_patch(&mut body, &req.extra);
        let bytes = serde_json::to_vec(&Value::Object(body))
            .map_err(|e| Error::config(format!("cannot encode the request: {e}")))?;
        let uri = self.wire.uri(&self.common, &model, req.stream)?;
        let mut http_req = http::Request::post(uri)
            .body(RequestBody::new(Bytes::from(bytes)))
            .map_err(|e| Error::config(format!("cannot build the request: {e}")))?;
        let headers = http_req.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static(if req.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        for (k, v) in &self.common.headers {
            headers.insert(k.clone(), v.clone());
        }
        // A managed credential (read now, at send time) or one stamped on this
        // request replaces the configured key.
        let credential = match req.extensions.get::<SuppliedCredential>() {
            Some(supplied) => supplied.header(),
            None => match req.extensions.get::<Credential>() {
                Some(c) => Some(c.header_pair()?),
                None => None,
            },
        };
        if let Some(header) = credential {
            for auth in AUTH_HEADERS {
                headers.remove(auth);
            }
            let (name, value) = match header {
                AuthHeader::ApiKey(value) => self.wire.api_key_header(&value),
                AuthHeader::Named(name, value) => (name, value),
            };
            headers.insert(name, value);
        }
        Ok((http_req, model))
    }
}

impl<W, S, B> tower::Service<ChatRequest> for Client<W, S>
where
    W: Wire,
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = ChatStream;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.transport
            .poll_ready(cx)
            .map_err(|e| transport_error(W::NAME, TransportPhase::Connect, e.into()))
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let (http_req, model) = match self.encode(&req) {
            Ok(r) => r,
            Err(e) => {
                return ResponseFuture {
                    state: State::Failed { error: Some(e) },
                };
            }
        };
        let attempt = req
            .extensions
            .get::<crate::call::Attempts>()
            .map_or(1, crate::call::Attempts::bump);
        if let Some(called) = req.extensions.get::<crate::call::Called>() {
            called.set(W::NAME);
        }
        let secrets = Secrets::of(http_req.headers());
        ResponseFuture {
            state: State::Waiting {
                future: self.transport.call(http_req),
                ctx: Some(CallCtx {
                    provider: W::NAME,
                    model,
                    attempt,
                    stream: req.stream,
                    max_event_size: self.common.max_event_size,
                    decoder: self.wire.decoder(),
                    secrets,
                }),
            },
        }
    }
}

struct CallCtx {
    provider: &'static str,
    model: String,
    /// This request's number among the attempts of its logical call.
    attempt: u32,
    stream: bool,
    max_event_size: usize,
    decoder: Decoder,
    /// What the request carried that an error must not repeat.
    secrets: Secrets,
}

pin_project! {
    /// The response future of a provider service: resolves once the response
    /// head has arrived (after reading and classifying the body of an error
    /// response).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Failed { error: Option<Error> },
        Waiting { #[pin] future: F, ctx: Option<CallCtx> },
        ReadingError {
            #[pin] body: ErrorBody,
            provider: &'static str,
            secrets: Secrets,
            status: StatusCode,
            headers: HeaderMap,
            buf: Vec<u8>,
        },
        Done,
    }
}

/// The body of an error response, type-erased so the future names one type
/// whatever the transport's body.
type ErrorBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

impl fmt::Debug for CallCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallCtx")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<ChatStream, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let e = error.take().unwrap_or_else(|| {
                        Error::config("response future polled after completion")
                    });
                    this.state.set(State::Done);
                    return Poll::Ready(Err(e));
                }
                StateProj::Waiting { future, ctx } => {
                    let result = ready!(future.poll(cx));
                    let Some(ctx) = ctx.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::config(
                            "response future polled after completion",
                        )));
                    };
                    let response = match result {
                        Ok(r) => r,
                        Err(e) => {
                            this.state.set(State::Done);
                            let e =
                                transport_error(ctx.provider, TransportPhase::Request, e.into());
                            return Poll::Ready(Err(e));
                        }
                    };
                    let (parts, body) = response.into_parts();
                    if parts.status.is_success() {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(success(ctx, parts, body)));
                    }
                    let body: ErrorBody = Box::pin(http_body_util::BodyExt::map_err(
                        MapData { inner: body },
                        Into::into,
                    ));
                    this.state.set(State::ReadingError {
                        body,
                        provider: ctx.provider,
                        secrets: ctx.secrets,
                        status: parts.status,
                        headers: parts.headers,
                        buf: Vec::new(),
                    });
                }
                StateProj::ReadingError {
                    mut body,
                    provider,
                    secrets,
                    status,
                    headers,
                    buf,
                } => {
                    // A body that fails or runs long still leaves the status and
                    // headers, which classify the error on their own.
                    let complete = match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                                buf.extend_from_slice(&data[..data.len().min(room)]);
                            }
                            buf.len() >= MAX_ERROR_BODY
                        }
                        Some(Err(_)) | None => true,
                    };
                    if complete {
                        let mut e = Error::from_response(provider, *status, headers, buf);
                        secrets.error(&mut e);
                        this.state.set(State::Done);
                        return Poll::Ready(Err(e));
                    }
                }
                StateProj::Done => {
                    return Poll::Ready(Err(Error::config(
                        "response future polled after completion",
                    )));
                }
            }
        }
    }
}

fn success<B>(ctx: CallCtx, parts: http::response::Parts, body: B) -> ChatStream
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mode = if content_type.starts_with("text/html") {
        Mode::Reject {
            content_type,
            buf: Vec::new(),
        }
    } else if !ctx.stream || content_type.starts_with("application/json") {
        // A server may answer a streaming request with one JSON body: an
        // error object, or the whole answer when it ignores `stream`.
        Mode::Json { buf: Vec::new() }
    } else {
        Mode::Sse {
            sse: SseDecoder::with_max_event_size(ctx.max_event_size),
        }
    };
    let request_id = request_id_header(&parts.headers).map(str::to_owned);
    let rate_limit = RateLimitInfo::from_headers(&parts.headers, SystemTime::now());
    let meta = ResponseMeta {
        provider: ctx.provider,
        model: ctx.model,
        status: parts.status,
        request_id,
        headers: parts.headers,
        attempts: ctx.attempt,
        rate_limit,
    };
    ChatStream::new(
        meta,
        EventStream {
            body,
            mode,
            decoder: ctx.decoder,
            queue: VecDeque::new(),
            provider: ctx.provider,
            max_event_size: ctx.max_event_size,
            secrets: ctx.secrets,
            finished: false,
        },
    )
}

enum Mode {
    Sse { sse: SseDecoder },
    Json { buf: Vec<u8> },
    Reject { content_type: String, buf: Vec<u8> },
}

pin_project! {
    /// A response body decoded into events.
    struct EventStream<B, D> {
        #[pin]
        body: B,
        mode: Mode,
        decoder: D,
        queue: Queue,
        provider: &'static str,
        max_event_size: usize,
        secrets: Secrets,
        finished: bool,
    }
}

impl<B, D> Stream for EventStream<B, D>
where
    B: Body,
    B::Error: Into<BoxError>,
    D: WireDecoder,
{
    type Item = Result<StreamEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(mut item) = this.queue.pop_front() {
                if let Err(e) = &mut item {
                    // An error ends the stream; nothing decoded after it counts.
                    *this.finished = true;
                    this.queue.clear();
                    this.secrets.error(e);
                }
                return Poll::Ready(Some(item));
            }
            if *this.finished {
                return Poll::Ready(None);
            }
            if this.decoder.is_done() {
                *this.finished = true;
                drain_ready(this.body.as_mut(), cx);
                continue;
            }
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        let bytes = data.copy_to_bytes(data.remaining());
                        feed(
                            this.mode,
                            this.decoder,
                            this.queue,
                            this.provider,
                            *this.max_event_size,
                            &bytes,
                        );
                    }
                }
                Some(Err(e)) => {
                    let e = transport_error(this.provider, TransportPhase::Body, e.into());
                    this.queue.push_back(Err(e));
                }
                None => {
                    finish(this.mode, this.decoder, this.queue, this.provider);
                    *this.finished = true;
                }
            }
        }
    }
}

/// After the terminator, reads what is already there (usually the end of the
/// body) so the connection can go back to the pool, without waiting for more.
fn drain_ready<B: Body>(mut body: Pin<&mut B>, cx: &mut Context<'_>) {
    for _ in 0..4 {
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

fn feed<D: WireDecoder>(
    mode: &mut Mode,
    decoder: &mut D,
    queue: &mut Queue,
    provider: &'static str,
    max_event_size: usize,
    bytes: &[u8],
) {
    match mode {
        Mode::Sse { sse } => {
            let _ = sse.feed(bytes, |item| match item {
                Ok(event) => {
                    if !decoder.is_done() {
                        decoder.event(event, queue);
                    }
                }
                Err(SseError::EventTooLarge { limit }) => {
                    queue.push_back(Err(Error::decode(
                        provider,
                        DecodeError::EventTooLarge { limit },
                    )));
                }
            });
        }
        Mode::Json { buf } => {
            if buf.len() + bytes.len() > max_event_size {
                buf.clear();
                queue.push_back(Err(Error::decode(
                    provider,
                    DecodeError::EventTooLarge {
                        limit: max_event_size,
                    },
                )));
            } else {
                buf.extend_from_slice(bytes);
            }
        }
        Mode::Reject { content_type, buf } => {
            buf.extend_from_slice(&bytes[..bytes.len().min(256)]);
            if buf.len() >= 200 {
                queue.push_back(Err(reject(provider, content_type, buf)));
            }
        }
    }
}

fn finish<D: WireDecoder>(
    mode: &mut Mode,
    decoder: &mut D,
    queue: &mut Queue,
    provider: &'static str,
) {
    match mode {
        Mode::Sse { sse } => {
            sse.finish(|item| {
                if let Ok(event) = item
                    && !decoder.is_done()
                {
                    decoder.event(event, queue);
                }
            });
            decoder.finish(queue);
        }
        Mode::Json { buf } => {
            let body = std::mem::take(buf);
            decoder.body(&body, queue);
        }
        Mode::Reject { content_type, buf } => {
            queue.push_back(Err(reject(provider, content_type, buf)))
        }
    }
}

fn reject(provider: &'static str, content_type: &str, buf: &[u8]) -> Error {
    Error::decode(
        provider,
        DecodeError::UnexpectedContentType {
            content_type: content_type.to_owned(),
            snippet: snippet(buf),
        },
    )
}

/// The error for a body that ended before the provider's terminator.
pub(crate) fn truncated(provider: &'static str) -> Error {
    Error::Transport {
        provider,
        phase: TransportPhase::Body,
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the stream ended before its terminator",
        )),
    }
}

/// Classifies a transport failure by what it is (a timeout, a refused
/// connection), falling back to the phase it happened in.
pub(crate) fn transport_error(
    provider: &'static str,
    phase: TransportPhase,
    err: BoxError,
) -> Error {
    let mut connect = false;
    let mut timeout = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            connect |= r.is_connect();
            timeout |= r.is_timeout();
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => connect = true,
                std::io::ErrorKind::TimedOut => timeout = true,
                _ => {}
            }
        } else if e.is::<tower::timeout::error::Elapsed>() {
            timeout = true;
        }
        source = e.source();
    }
    match (timeout, connect) {
        (true, true) => Error::Timeout {
            provider,
            phase: TimeoutPhase::Connect,
        },
        (true, false) => Error::Timeout {
            provider,
            phase: TimeoutPhase::Total,
        },
        (false, true) => Error::Transport {
            provider,
            phase: TransportPhase::Connect,
            source: err,
        },
        (false, false) => Error::Transport {
            provider,
            phase,
            source: err,
        },
    }
}

pin_project! {
    /// Normalizes any body's data to `Bytes`.
    struct MapData<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for MapData<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx).map(|f| {
            f.map(|r| r.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
        })
    }
}

/// Parses `base` + `path` into the endpoint URI.
pub(crate) fn endpoint(provider: &str, base: &str, path: &str) -> Result<Uri, Error> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::config(format!("{provider}: invalid base URL {base:?}: {e}")))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(Error::config(format!(
            "{provider}: base URL {base:?} needs a scheme and a host"
        )));
    }
    Ok(uri)
}

/// Settings every provider builder has.
#[derive(Clone)]
pub(crate) struct CommonBuilder {
    pub(crate) base_url: String,
    pub(crate) model: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) transport: crate::transport::ReqwestTransportBuilder,
    pub(crate) max_event_size: usize,
}

impl fmt::Debug for CommonBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonBuilder")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("max_event_size", &self.max_event_size)
            .finish_non_exhaustive()
    }
}

impl CommonBuilder {
    pub(crate) fn new(base_url: &str) -> Self {
        CommonBuilder {
            base_url: base_url.to_owned(),
            model: String::new(),
            headers: Vec::new(),
            transport: crate::transport::ReqwestTransport::builder(),
            max_event_size: crate::sse::DEFAULT_MAX_EVENT_SIZE,
        }
    }

    /// The shared configuration, with `auth` headers first so that extra
    /// headers may override them.
    pub(crate) fn common(
        &self,
        provider: &str,
        path: &str,
        auth: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Common, Error> {
        let mut headers = HeaderMap::new();
        for (k, v) in auth {
            headers.insert(k, v);
        }
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| Error::config(format!("{provider}: invalid header name {k:?}")))?;
            // Extra headers may carry credentials of a gateway: keep them
            // out of Debug output too.
            let value = secret_header(provider, v).map_err(|_| {
                Error::config(format!("{provider}: invalid value for header {k:?}"))
            })?;
            headers.insert(name, value);
        }
        Ok(Common {
            endpoint: endpoint(provider, &self.base_url, path)?,
            model: self.model.clone(),
            headers,
            max_event_size: self.max_event_size,
        })
    }
}

/// The builder methods every provider has.
macro_rules! common_builder_methods {
    () => {
        /// The API root, e.g. `http://127.0.0.1:8000/v1` for an
        /// OpenAI-compatible server.
        pub fn base_url(mut self, url: impl Into<String>) -> Self {
            self.common.base_url = url.into();
            self
        }

        /// The model used when a request names none.
        pub fn model(mut self, model: impl Into<String>) -> Self {
            self.common.model = model.into();
            self
        }

        /// A header sent on every request (`OpenAI-Organization`,
        /// `anthropic-beta`, a gateway's key…). Its value is treated as a
        /// secret: left out of `Debug` output, and masked where an error
        /// message from the server repeats it.
        pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.common.headers.push((name.into(), value.into()));
            self
        }

        /// How long opening a connection may take with the default transport
        /// (default 5 s).
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.common.transport = self.common.transport.connect_timeout(timeout);
            self
        }

        /// How long a whole exchange may take with the default transport,
        /// body included (default: no limit; streams of long generations run
        /// for minutes — prefer the LLM-level stream timeouts).
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.common.transport = self.common.transport.timeout(timeout);
            self
        }

        /// The largest server-sent event (or non-streaming body) accepted, in
        /// bytes (default 4 MiB); a larger one ends the stream with
        /// [`DecodeError::EventTooLarge`](crate::DecodeError::EventTooLarge).
        pub fn max_event_size(mut self, bytes: usize) -> Self {
            self.common.max_event_size = bytes;
            self
        }
    };
}
pub(crate) use common_builder_methods;

/// The `Service` implementation of a provider type wrapping a [`Client`].
macro_rules! provider_service {
    ($name:ident) => {
        impl<S, B> tower::Service<$crate::ChatRequest> for $name<S>
        where
            S: tower::Service<
                    http::Request<$crate::transport::RequestBody>,
                    Response = http::Response<B>,
                >,
            S::Error: Into<$crate::BoxError>,
            B: http_body::Body + Send + 'static,
            B::Error: Into<$crate::BoxError>,
        {
            type Response = $crate::ChatStream;
            type Error = $crate::Error;
            type Future = $crate::provider::ResponseFuture<S::Future>;

            fn poll_ready(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), $crate::Error>> {
                self.client.poll_ready(cx)
            }

            fn call(&mut self, req: $crate::ChatRequest) -> Self::Future {
                self.client.call(req)
            }
        }

        impl<S> $name<S> {
            /// The HTTP transport.
            pub fn get_ref(&self) -> &S {
                &self.client.transport
            }

            /// The HTTP transport, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.client.transport
            }

            /// The HTTP transport, consuming the service.
            pub fn into_inner(self) -> S {
                self.client.transport
            }

            /// The model used when a request names none.
            pub fn default_model(&self) -> &str {
                &self.client.common.model
            }

            /// The URL requests are sent to.
            pub fn endpoint(&self) -> &http::Uri {
                &self.client.common.endpoint
            }
        }

        impl<S: Clone> Clone for $name<S> {
            fn clone(&self) -> Self {
                $name {
                    client: self.client.clone(),
                }
            }
        }

        impl<S> std::fmt::Debug for $name<S> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("common", &self.client.common)
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use provider_service;

/// The default transport, built from a builder's settings.
pub(crate) fn default_transport(common: &CommonBuilder) -> Result<ReqwestTransport, Error> {
    common.transport.clone().build()
}
