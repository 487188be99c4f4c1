//! The wire traits: what one provider's format is, as the shared client sees
//! it — how a request is encoded ([`Wire`]) and how an answer decodes to
//! events ([`Decode`], writing into [`Decoded`]).

use std::collections::VecDeque;

use http::Uri;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::chat::{ChatRequest, StopReason, StreamEvent};
use crate::error::{DecodeError, Error};
use crate::sse::Event;

use super::MAX_PARTS;
use super::body::truncated;

/// One provider's wire format: how a [`ChatRequest`] is sent, and the
/// [`Decode`]r of what comes back.
///
/// Everything else — the credential and extra headers, `extra` merged into
/// the body, the transport, error statuses and their bodies, SSE framing,
/// size limits, masking echoed secrets, the answer's metadata — is the
/// shared client's, so a [`Provider`](super::Provider) over a `Wire` of
/// one's own behaves as the built-in providers do under every layer. See
/// `examples/custom_provider.rs`.
pub trait Wire: Send + Sync + 'static {
    /// The provider's name, as errors, [`ResponseMeta`](crate::ResponseMeta)
    /// and traces give it.
    const NAME: &'static str;

    /// The decoder of one answer.
    type Decoder: Decode;

    /// The JSON body for `req`, whose model (the request's, else the
    /// service's default) is `model`. The caller then merges
    /// [`ChatRequest::extra`] into it. A request this format cannot express
    /// is an error here (an [`Error::Config`] naming what is missing), and
    /// nothing is sent.
    fn encode(&self, req: &ChatRequest, model: &str) -> Result<Map<String, Value>, Error>;

    /// Where the request goes, given the configured `endpoint` (base URL and
    /// path): by default the endpoint itself. A format that names the model
    /// or the mode in the path builds it here.
    fn uri(&self, endpoint: &Uri, model: &str, stream: bool) -> Result<Uri, Error> {
        let _ = (model, stream);
        Ok(endpoint.clone())
    }

    /// The header an API key travels in, given its value (already marked
    /// sensitive): by default `Authorization: Bearer {key}`. Used for the
    /// builder's key and for a [`Credential::api_key`](crate::Credential::api_key)
    /// a layer supplies.
    fn api_key_header(&self, key: &HeaderValue) -> (HeaderName, HeaderValue) {
        bearer(key)
    }

    /// A decoder for one answer.
    fn decoder(&self) -> Self::Decoder;
}

/// `Authorization: Bearer {key}`, marked sensitive.
pub(super) fn bearer(key: &HeaderValue) -> (HeaderName, HeaderValue) {
    let mut bearer = Vec::with_capacity(7 + key.len());
    bearer.extend_from_slice(b"Bearer ");
    bearer.extend_from_slice(key.as_bytes());
    // A valid value after a valid prefix is a valid value: the fallback
    // (the key as it came) is unreachable.
    let mut value = HeaderValue::from_bytes(&bearer).unwrap_or_else(|_| key.clone());
    value.set_sensitive(true);
    (http::header::AUTHORIZATION, value)
}

/// Turns one answer — its server-sent events, or its one JSON body — into
/// [`StreamEvent`]s, written into a [`Decoded`].
///
/// The decoder says how the answer starts ([`Decoded::start`]), what it
/// holds ([`Decoded::push`]), why it stopped ([`Decoded::stop_reason`]) and
/// where it ends ([`Decoded::end`], at the format's terminator); an error
/// ([`Decoded::fail`]) ends it too. A body that ends first is handled for
/// every decoder alike: whole if the stop reason was seen, else a truncated
/// stream ([`Error::Transport`] in phase `Body`, retryable before output).
pub trait Decode: Send + 'static {
    /// One server-sent event. Not called once the answer has ended.
    fn event(&mut self, event: Event<'_>, out: &mut Decoded);

    /// The whole body of a non-streaming answer (or of a streaming request
    /// a server answered with one JSON body): lossily UTF-8, trimmed, never
    /// empty (an empty body is a truncated answer).
    fn body(&mut self, body: &str, out: &mut Decoded);

    /// The body ended before [`Decoded::end`] or an error: a last chance to
    /// write what the decoder held back. By default nothing.
    fn finish(&mut self, out: &mut Decoded) {
        let _ = out;
    }
}

/// What a [`Decode`]r has made of an answer so far: the events waiting for
/// the caller, and whether the answer started, why it stopped, and whether it
/// ended.
#[derive(Debug)]
pub struct Decoded {
    queue: VecDeque<Result<StreamEvent, Error>>,
    provider: &'static str,
    started: bool,
    stop_reason: Option<StopReason>,
    done: bool,
    failed: bool,
}

impl Decoded {
    pub(crate) fn new(provider: &'static str) -> Self {
        Decoded {
            queue: VecDeque::new(),
            provider,
            started: false,
            stop_reason: None,
            done: false,
            failed: false,
        }
    }

    /// The provider's name, for errors.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// The answer starts: [`StreamEvent::MessageStart`] with its id and
    /// model, the first time only.
    pub fn start(&mut self, id: Option<String>, model: Option<String>) {
        if !self.started {
            self.started = true;
            self.queue
                .push_back(Ok(StreamEvent::MessageStart { id, model }));
        }
    }

    /// An event of the answer, delivered in order. The start and the end
    /// have their own methods ([`start`](Self::start), [`end`](Self::end)):
    /// push neither `MessageStart` nor `Done` here.
    pub fn push(&mut self, event: StreamEvent) {
        self.queue.push_back(Ok(event));
    }

    /// Why generation stopped, as the format said it; [`end`](Self::end)
    /// reports it in [`StreamEvent::Done`]. A body cut after this is whole.
    pub fn stop_reason(&mut self, reason: StopReason) {
        self.stop_reason = Some(reason);
    }

    /// Whether the stop reason was seen.
    pub fn has_stop_reason(&self) -> bool {
        self.stop_reason.is_some()
    }

    /// The answer ended: [`StreamEvent::Done`] with the stop reason. Nothing
    /// is decoded after it.
    pub fn end(&mut self) {
        if !self.done {
            self.done = true;
            self.queue.push_back(Ok(StreamEvent::Done {
                stop_reason: self.stop_reason.take(),
            }));
        }
    }

    /// Whether the answer ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The answer failed with `error`: the caller sees it after the events
    /// before it, and nothing after it.
    pub fn fail(&mut self, error: Error) {
        self.failed = true;
        self.queue.push_back(Err(error));
    }

    /// Whether the answer failed.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// `text` parsed as JSON; when it is not, the answer fails with a
    /// [`DecodeError::Json`] naming `context` (an event's name, `"body"`)
    /// and `None` comes back.
    pub fn json<'a, T: Deserialize<'a>>(&mut self, text: &'a str, context: &str) -> Option<T> {
        match serde_json::from_str(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(Error::json(self.provider, context, text, e));
                None
            }
        }
    }

    /// The answer failed with the error object `data` that arrived inside
    /// it (an `error` event, an error chunk), classified as a status error
    /// would be: `rate_limit_error`, `overloaded_error`, a numeric `code`…
    /// Text that is not JSON fails as a [`DecodeError::Json`].
    pub fn error_event(&mut self, data: &str, context: &str) {
        self.fail(Error::from_event_data(self.provider, context, data));
    }

    /// The answer failed because it opens more than
    /// [`MAX_PARTS`](super::MAX_PARTS) of `what` (`"tool calls"`,
    /// `"content blocks"`): [`DecodeError::TooManyParts`].
    pub fn too_many(&mut self, what: &'static str) {
        self.fail(Error::decode(
            self.provider,
            DecodeError::TooManyParts {
                what,
                limit: MAX_PARTS,
            },
        ));
    }

    /// The body ended: unless the answer ended or failed, it ends now if the
    /// stop reason was seen, and is truncated otherwise.
    pub(super) fn close(&mut self) {
        if !self.done && !self.failed {
            if self.stop_reason.is_some() {
                self.end();
            } else {
                self.fail(truncated(self.provider));
            }
        }
    }

    pub(super) fn pop(&mut self) -> Option<Result<StreamEvent, Error>> {
        self.queue.pop_front()
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }
}
