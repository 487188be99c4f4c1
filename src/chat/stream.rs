use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use futures_core::Stream;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cut::{Cut, Limits};
use super::{ContentPart, Message, Role, StopReason, StreamEvent, Usage};
use crate::Error;
use crate::headers::RateLimitInfo;

type BoxEventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, Error>> + Send>>;

/// The answer to every call: a stream of [`StreamEvent`]s plus the response's
/// metadata.
///
/// A non-streaming call yields the same events, decoded from one JSON body, so
/// layers and callers handle one shape. Fold it with
/// [`completion`](ChatStream::completion), or read it event by event as a
/// [`Stream`]. Dropping it cancels the call.
pub struct ChatStream {
    // Boxed: every layer hands the stream up by value, and the metadata
    // (headers, rate-limit report) is most of its size; a small
    // `ChatStream` keeps each layer's response future and each hand-over
    // small.
    meta: Box<ResponseMeta>,
    events: Events,
}

/// A [`ChatStream`]'s events without its metadata: what a layer's stream
/// wraps (see [`ChatStream::map_events`]). Small, so each wrapping layer
/// adds one short hop per event, not a whole `ChatStream` with placeholder
/// metadata. Values [held](ChatStream::hold) before the wrap stay with it.
pub struct Events {
    /// Events to deliver before `events`: what a retrying layer held back
    /// while it could still retry. A queue here, rather than another boxed
    /// wrapper per layer, keeps each event one virtual call away.
    prefix: VecDeque<StreamEvent>,
    events: BoxEventStream,
    /// What a layer keeps alive while the answer streams (a concurrency
    /// slot): released when the stream ends or fails, or is dropped. Held
    /// here rather than by a wrapping stream, which would cost every event
    /// another hop; each value in one box with those held before it.
    held: Option<Box<dyn Send>>,
    /// The deadlines timeout layers put on these events: checked while
    /// `events` is waiting, in place of a wrapping stream per layer.
    cut: Option<Pin<Box<Cut>>>,
    /// What layers watch the source's items with (see
    /// [`ChatStream::observe`]), each in one box with those before it.
    observer: Option<Observer>,
}

impl Events {
    fn new<S>(events: S) -> Events
    where
        S: Stream<Item = Result<StreamEvent, Error>> + Send + 'static,
    {
        Events {
            prefix: VecDeque::new(),
            events: Box::pin(events),
            held: None,
            cut: None,
            observer: None,
        }
    }
}

type Observer = Box<dyn FnMut(&Result<StreamEvent, Error>) + Send>;

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("prefix", &self.prefix)
            .field("held", &self.held.is_some())
            .field("cut", &self.cut)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Stream for Events {
    type Item = Result<StreamEvent, Error>;

    // Inlined into the stream of the layer that wraps it: a pass-through
    // when nothing was prepended, which should cost that layer no call.
    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(e) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(e)));
        }
        let item = match self.events.as_mut().poll_next(cx) {
            Poll::Ready(item) => item,
            Poll::Pending => {
                let Some(cut) = self.cut.as_mut() else {
                    return Poll::Pending;
                };
                let error = Err(ready!(cut.as_mut().poll_expired(cx)));
                // A deadline passed: the answer is dropped, connection and
                // all, and nothing follows the error.
                self.events = Box::pin(futures_util::stream::empty());
                self.cut = None;
                self.held = None;
                if let Some(observe) = self.observer.as_mut() {
                    observe(&error);
                }
                return Poll::Ready(Some(error));
            }
        };
        match &item {
            Some(item) => {
                if let Some(cut) = self.cut.as_mut() {
                    cut.as_mut().saw(item, cx.waker());
                }
                if let Some(observe) = self.observer.as_mut() {
                    observe(item);
                }
                if item.is_err() {
                    // Nothing follows an error.
                    self.held = None;
                }
            }
            None => self.held = None,
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (mut lo, hi) = self.events.size_hint();
        if self.cut.is_some() {
            // A deadline may pass before the next event: then one error
            // takes the place of what was left, so at least one item of a
            // stream that has any; never more than the stream has.
            lo = lo.min(1);
        }
        let n = self.prefix.len();
        (lo.saturating_add(n), hi.and_then(|h| h.checked_add(n)))
    }
}

/// What is known about an answer besides its events.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResponseMeta {
    /// The provider that answered (`"openai"`, `"anthropic"`, …).
    pub provider: &'static str,
    /// The model the request named (the answer's `MessageStart` says which
    /// model actually answered).
    pub model: String,
    /// The HTTP status of the response head.
    pub status: StatusCode,
    /// The provider's request id, from the response headers.
    pub request_id: Option<String>,
    /// The response headers (rate-limit state, server timing, …).
    pub headers: HeaderMap,
    /// How many attempts the call took, counting the one that answered.
    pub attempts: u32,
    /// What the provider's rate-limit headers said, if it sent any.
    pub rate_limit: Option<RateLimitInfo>,
    /// The [`Pool`](crate::Pool) deployment that answered, when a pool
    /// picked one.
    pub deployment: Option<std::sync::Arc<str>>,
    /// Where the answer came from, as the tracing conventions name it.
    pub(crate) endpoint: Option<std::sync::Arc<crate::call::Endpoint>>,
}

impl ResponseMeta {
    /// Metadata for an answer from `provider` to a request for `model`, with
    /// status 200, no headers and one attempt.
    pub fn new(provider: &'static str, model: impl Into<String>) -> Self {
        ResponseMeta {
            provider,
            model: model.into(),
            status: StatusCode::OK,
            request_id: None,
            headers: HeaderMap::new(),
            attempts: 1,
            rate_limit: None,
            deployment: None,
            endpoint: None,
        }
    }
}

impl ChatStream {
    /// Wraps a stream of events.
    pub fn new<S>(meta: ResponseMeta, events: S) -> Self
    where
        S: Stream<Item = Result<StreamEvent, Error>> + Send + 'static,
    {
        ChatStream {
            meta: Box::new(meta),
            events: Events::new(events),
        }
    }

    /// A stream that yields `events` and ends: handy for test doubles of an
    /// LLM-level service.
    pub fn from_events(meta: ResponseMeta, events: Vec<Result<StreamEvent, Error>>) -> Self {
        ChatStream::new(meta, futures_util::stream::iter(events))
    }

    /// The response's metadata.
    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The response's metadata, for layers that add to it.
    pub fn meta_mut(&mut self) -> &mut ResponseMeta {
        &mut self.meta
    }

    /// The same answer, its events passed through `f`: what a stream-aware
    /// layer does to watch, change, hold back or cut them (a timeout, a
    /// filter, a meter). The metadata stays on the outside, where
    /// [`meta`](Self::meta) reads it.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use llm_tower::{ChatStream, ResponseMeta, StreamEvent};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), llm_tower::Error> {
    /// let stream = ChatStream::from_events(
    ///     ResponseMeta::new("test", "m"),
    ///     vec![Ok(StreamEvent::TextDelta { text: "hello".into() })],
    /// );
    /// let shouting = stream.map_events(|events| {
    ///     events.map(|item| match item {
    ///         Ok(StreamEvent::TextDelta { text }) => {
    ///             Ok(StreamEvent::TextDelta { text: text.to_uppercase() })
    ///         }
    ///         other => other,
    ///     })
    /// });
    /// assert_eq!(shouting.completion().await?.text, "HELLO");
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_events<S>(self, f: impl FnOnce(Events) -> S) -> ChatStream
    where
        S: Stream<Item = Result<StreamEvent, Error>> + Send + 'static,
    {
        ChatStream {
            meta: self.meta,
            events: Events::new(f(self.events)),
        }
    }

    /// The same answer, each item `f` is shown as it comes, once: what a
    /// layer that only watches (the rate limit's accounting) uses instead
    /// of a wrapping stream, costing each item a call rather than a hop.
    ///
    /// `f` sees what the events' source yields from now on, and an expiry
    /// of their deadlines; events a layer above puts back in front after
    /// reading them (a retrying layer's held events) are not shown twice.
    /// Events already waiting in front now are shown too: then `f` watches
    /// through a wrapping stream.
    pub(crate) fn observe<F>(mut self, mut f: F) -> ChatStream
    where
        F: FnMut(&Result<StreamEvent, Error>) + Send + 'static,
    {
        if !self.events.prefix.is_empty() {
            return self.map_events(|events| events.inspect(move |item| f(item)));
        }
        self.events.observer = Some(match self.events.observer.take() {
            Some(mut before) => Box::new(move |item| {
                before(item);
                f(item);
            }),
            None => Box::new(f),
        });
        self
    }

    /// Puts `cut`'s deadlines on the events; with deadlines on them
    /// already (a timeout layer inside), the nearer of each applies, under
    /// the one timer already set.
    pub(crate) fn cut_by(&mut self, mut cut: Pin<Box<Cut>>, current: &Waker) {
        match self.events.cut.as_mut() {
            Some(existing) => existing.as_mut().and(cut.limits()),
            None => {
                cut.as_mut().answered_by(self.meta.provider);
                if self.primed() {
                    // Output already waits in front: the first-event limit
                    // is met, as it would be once the caller reads it.
                    cut.as_mut().output_delivered(current);
                }
                self.events.cut = Some(cut);
            }
        }
    }

    /// Puts `limits` on the events: merged into the deadlines already on
    /// them, with no new timer or allocation, when a timeout layer inside
    /// put some; else as [`cut_by`](Self::cut_by) a new cut.
    pub(crate) fn limit_by(&mut self, limits: Limits, current: &Waker) {
        match self.events.cut.as_mut() {
            Some(existing) => existing.as_mut().and(limits),
            None => self.cut_by(Box::pin(Cut::new(limits, None)), current),
        }
    }

    /// Keeps `value` alive until the stream ends, fails or is dropped, then
    /// drops it: how a layer ties a slot, a permit or a guard to the life
    /// of the answer rather than of the response future (as
    /// [`StreamConcurrencyLimit`](crate::limit::StreamConcurrencyLimit) does). No
    /// extra hop per event.
    pub fn hold(&mut self, value: impl Send + 'static) {
        let before = self.events.held.take();
        self.events.held = Some(Box::new((before, value)));
    }

    /// Puts `events` in front of what is left to deliver, in order: how a
    /// layer that held events back (while it could still retry) gives them
    /// to the caller.
    pub fn prepend(
        &mut self,
        events: impl IntoIterator<Item = StreamEvent, IntoIter: DoubleEndedIterator>,
    ) {
        for e in events.into_iter().rev() {
            self.events.prefix.push_front(e);
        }
    }

    /// [`prepend`](Self::prepend) for events already in a `Vec`: when
    /// nothing waits in front, the `Vec`'s buffer becomes the queue, with
    /// no copy and no allocation.
    pub(crate) fn prepend_vec(&mut self, events: Vec<StreamEvent>) {
        if self.events.prefix.is_empty() {
            self.events.prefix = VecDeque::from(events);
        } else {
            self.prepend(events);
        }
    }

    /// Whether an output event already waits in front: a layer inside
    /// primed the answer.
    pub(crate) fn primed(&self) -> bool {
        self.events.prefix.iter().any(StreamEvent::is_output)
    }

    /// Reads every event and folds them into a [`Completion`].
    ///
    /// A failure before any output event returns that error. A failure after
    /// output returns [`Error::Interrupted`] carrying everything received so
    /// far, so nothing already generated is lost.
    pub async fn completion(mut self) -> Result<Completion, Error> {
        let mut builder = CompletionBuilder::default();
        while let Some(item) = self.next().await {
            match item {
                Ok(event) => builder.push(&event),
                Err(source) => return Err(builder.interrupted(source)),
            }
        }
        Ok(builder.finish())
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent, Error>;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// An answer folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Completion {
    /// The provider's id for the answer.
    pub id: Option<String>,
    /// The model that answered.
    pub model: Option<String>,
    /// The text, concatenated.
    pub text: String,
    /// The visible reasoning, concatenated.
    pub thinking: String,
    /// The signature over the reasoning, where the provider sends one.
    pub thinking_signature: Option<String>,
    /// Encrypted reasoning blocks, in order.
    pub redacted_thinking: Vec<String>,
    /// A refusal's text (OpenAI `refusal`).
    pub refusal: String,
    /// The tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped.
    pub stop_reason: Option<StopReason>,
    /// The last usage reported.
    pub usage: Option<Usage>,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ToolCall {
    /// The provider's id for the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, parsed. `{}` when the model sent none; `null` when what
    /// it sent is not valid JSON (cut off by the token limit, say) — the text
    /// is in `raw_arguments`.
    pub arguments: Value,
    /// The arguments exactly as streamed.
    pub raw_arguments: String,
}

impl Completion {
    /// The answer as an assistant message, to append to the conversation
    /// before sending tool results back.
    pub fn to_message(&self) -> Message {
        let mut content = Vec::new();
        // A signature alone (Gemini signs a function call, not a thought)
        // must go back too.
        if !self.thinking.is_empty() || self.thinking_signature.is_some() {
            content.push(ContentPart::Thinking {
                text: self.thinking.clone(),
                signature: self.thinking_signature.clone(),
            });
        }
        content.extend(
            self.redacted_thinking
                .iter()
                .map(|data| ContentPart::RedactedThinking { data: data.clone() }),
        );
        if !self.text.is_empty() {
            content.push(ContentPart::Text(self.text.clone()));
        }
        content.extend(self.tool_calls.iter().map(|c| ContentPart::ToolUse {
            id: c.id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        }));
        Message::new(Role::Assistant, content)
    }
}

/// Folds events into a [`Completion`] as they arrive, for callers that read a
/// [`ChatStream`] event by event and still want the whole answer at the end.
///
/// ```
/// use llm_tower::{CompletionBuilder, StreamEvent};
///
/// let mut b = CompletionBuilder::default();
/// b.push(&StreamEvent::TextDelta { text: "Hel".into() });
/// b.push(&StreamEvent::TextDelta { text: "lo".into() });
/// assert_eq!(b.finish().text, "Hello");
/// ```
#[derive(Debug, Default)]
pub struct CompletionBuilder {
    completion: Completion,
    saw_output: bool,
    /// The events' tool-call indices, by position in `tool_calls`.
    tool_index: super::DenseIndex,
}

impl CompletionBuilder {
    /// Adds one event.
    pub fn push(&mut self, event: &StreamEvent) {
        self.saw_output |= event.is_output();
        let c = &mut self.completion;
        match event {
            StreamEvent::MessageStart { id, model } => {
                c.id.clone_from(id);
                c.model.clone_from(model);
            }
            StreamEvent::TextDelta { text } => c.text.push_str(text),
            StreamEvent::ThinkingDelta { text } => c.thinking.push_str(text),
            StreamEvent::ThinkingSignature { signature } => {
                c.thinking_signature = Some(signature.clone());
            }
            StreamEvent::RedactedThinking { data } => c.redacted_thinking.push(data.clone()),
            StreamEvent::RefusalDelta { text } => c.refusal.push_str(text),
            StreamEvent::ToolCallStart { index, id, name } => {
                // Every start carries its own id and name: no limit is
                // needed for the positions to stay within what was sent.
                let Ok((position, new)) = self.tool_index.insert(*index as u64, usize::MAX) else {
                    return;
                };
                if new {
                    c.tool_calls.push(ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: Value::Null,
                        raw_arguments: String::new(),
                    });
                } else if let Some(call) = c.tool_calls.get_mut(position) {
                    call.id.clone_from(id);
                    call.name.clone_from(name);
                }
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(call) = self
                    .tool_index
                    .get(*index as u64)
                    .and_then(|p| c.tool_calls.get_mut(p))
                {
                    call.raw_arguments.push_str(arguments);
                }
            }
            StreamEvent::Usage(u) => c.usage = Some(*u),
            StreamEvent::Done { stop_reason } => c.stop_reason.clone_from(stop_reason),
        }
    }

    /// Whether any output event has been added.
    pub fn has_output(&self) -> bool {
        self.saw_output
    }

    /// The completion so far, with tool-call arguments parsed.
    pub fn finish(mut self) -> Completion {
        for call in &mut self.completion.tool_calls {
            call.arguments = if call.raw_arguments.trim().is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(&call.raw_arguments).unwrap_or(Value::Null)
            };
        }
        self.completion
    }

    /// The error a caller should see for `source` arriving now: `source` itself
    /// before any output, [`Error::Interrupted`] with the partial completion
    /// after.
    pub fn interrupted(self, source: Error) -> Error {
        if self.saw_output && !matches!(source, Error::Interrupted { .. }) {
            Error::Interrupted {
                partial: Box::new(self.finish()),
                source: Box::new(source),
            }
        } else {
            source
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt;

    use super::*;

    fn text(t: &str) -> StreamEvent {
        StreamEvent::TextDelta { text: t.into() }
    }

    /// What `observe` was shown, and the stream it watches.
    fn watched(stream: ChatStream) -> (ChatStream, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let stream = stream.observe(move |item| {
            let shown = match item {
                Ok(StreamEvent::TextDelta { text }) => text.clone(),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("error: {e}"),
            };
            crate::lock(&log).push(shown);
        });
        (stream, seen)
    }

    #[tokio::test]
    async fn an_observer_sees_each_item_once_even_when_a_layer_above_puts_it_back() {
        let source = ChatStream::from_events(
            ResponseMeta::new("test", "m"),
            vec![Ok(text("a")), Ok(text("b"))],
        );
        let (mut stream, seen) = watched(source);
        // What a retrying layer above does: read until output, put it back.
        let first = stream.next().await.unwrap().unwrap();
        stream.prepend([first]);
        let texts: Vec<_> = stream.map(|i| format!("{:?}", i.unwrap())).collect().await;
        assert_eq!(texts.len(), 2);
        assert_eq!(*crate::lock(&seen), ["a", "b"]);
    }

    #[tokio::test]
    async fn an_observer_added_with_events_in_front_sees_them_too() {
        let mut source =
            ChatStream::from_events(ResponseMeta::new("test", "m"), vec![Ok(text("b"))]);
        source.prepend([text("a")]);
        let (stream, seen) = watched(source);
        assert_eq!(stream.count().await, 2);
        assert_eq!(*crate::lock(&seen), ["a", "b"]);
    }

    #[tokio::test]
    async fn events_say_how_many_are_left_and_what_they_hold() {
        let mut stream = ChatStream::from_events(
            ResponseMeta::new("test", "m"),
            vec![Ok(text("b")), Ok(text("c"))],
        );
        assert_eq!(stream.size_hint(), (2, Some(2)));
        stream.prepend([text("a")]);
        assert_eq!(stream.size_hint(), (3, Some(3)));
        // With deadlines on them, one error may take the place of the rest.
        let limits = Limits::default();
        stream.cut_by(Box::pin(Cut::new(limits, None)), Waker::noop());
        assert_eq!(stream.size_hint(), (2, Some(3)));
        let shown = format!("{:?}", stream.events);
        assert!(shown.contains("prefix") && shown.contains("cut"), "{shown}");
        assert_eq!(stream.count().await, 3);
    }

    #[tokio::test]
    async fn observers_run_in_the_order_they_were_added() {
        let source = ChatStream::from_events(ResponseMeta::new("test", "m"), vec![Ok(text("x"))]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let (one, two) = (order.clone(), order.clone());
        let stream = source
            .observe(move |_| crate::lock(&one).push(1))
            .observe(move |_| crate::lock(&two).push(2));
        assert_eq!(stream.count().await, 1);
        assert_eq!(*crate::lock(&order), [1, 2]);
    }
}
