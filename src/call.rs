//! What travels with one call, read by the providers and written by the
//! layers: the call's [`Deadline`], its [`Attempts`] counter, which
//! provider it reached, and which deployments of a pool it tried.
//!
//! A user puts a `Deadline` or an `Attempts` in the request's extensions;
//! the layers keep theirs in the request's [`CallContext`], one shared
//! value per logical call that every attempt's copy of the request points
//! to, so a copy for another attempt costs no allocation.
//!
//! It sits at the bottom of the crate: providers and layers import from
//! here, never the other way round.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;

use tokio::time::Instant;

use crate::ChatRequest;

/// What the layers share about one logical call, across its attempts and
/// the copies of its request: made by the first layer that needs it,
/// shared by every clone of the request after that.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallContext(Option<Arc<Shared>>);

#[derive(Debug)]
struct Shared {
    /// Requests sent, counted by the providers.
    count: AtomicU32,
    /// The caller's counter, from the request's extensions, kept in step.
    caller: Option<Attempts>,
    /// The provider the call was sent to first.
    called: OnceLock<&'static str>,
    /// Where the call was sent last.
    endpoint: Mutex<Option<Arc<Endpoint>>>,
    /// The nearest deadline a layer set.
    deadline: Mutex<Option<Instant>>,
    /// The highest attempt count a failure was reported with.
    reported: AtomicU32,
    /// The deployments a pool sent this call to, as (pool, deployment).
    tried: Mutex<Vec<(usize, usize)>>,
    /// The versions of the credentials the call's attempts were last sent
    /// with, one per refresh layer's call.
    credentials: Mutex<CredentialsSent>,
    /// A timer a timeout layer set for the call's head, which a timeout
    /// layer outside it may rely on instead of setting one of its own.
    armed: Mutex<Option<Armed>>,
}

/// The credential versions a call's attempts were last sent with, by the
/// refresh layer's call that supplied them (its token): a few at once, for
/// the refresh layers of a pool's hedged attempts. Past that the oldest is
/// forgotten, and its layer takes the current credential as the one sent.
#[derive(Debug, Default)]
struct CredentialsSent {
    slots: [Option<(u64, u64)>; 4],
    next: usize,
}

/// A token for one refresh layer's call, unique in the process: what the
/// versions of the credentials it supplied are recorded under.
pub(crate) fn credential_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A timeout layer's timer for a call's head, as the call's context knows
/// it.
#[derive(Debug)]
struct Armed {
    /// Which timer: the address of the deadlines it serves.
    id: usize,
    /// It fires by then.
    at: Instant,
    /// What it wakes when it fires: a layer outside relies on it only if
    /// that is its own task, since a timer whose future that task does not
    /// poll (a layer between runs it elsewhere, or has not called it yet)
    /// wakes nothing it waits on.
    wakes: Option<Waker>,
    /// The task of a layer outside that relies on it, woken when it goes.
    waiter: Option<Waker>,
}

impl ChatRequest {
    /// The call's context, made if the request has none yet.
    pub(crate) fn call(&mut self) -> CallHandle {
        let Self {
            call, extensions, ..
        } = self;
        let shared = call.0.get_or_insert_with(|| {
            Arc::new(Shared {
                count: AtomicU32::new(0),
                caller: extensions.get::<Attempts>().cloned(),
                called: OnceLock::new(),
                endpoint: Mutex::new(None),
                deadline: Mutex::new(None),
                reported: AtomicU32::new(0),
                tried: Mutex::new(Vec::new()),
                credentials: Mutex::default(),
                armed: Mutex::new(None),
            })
        });
        CallHandle(shared.clone())
    }

    /// The call's context, if a layer made one.
    pub(crate) fn call_handle(&self) -> Option<CallHandle> {
        self.call.0.clone().map(CallHandle)
    }

    /// The nearest deadline: the caller's or one a layer set.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let set = self.call.0.as_ref().and_then(|s| s.deadline());
        let given = self.extensions.get::<Deadline>().map(|d| d.0);
        crate::nearer(set, given)
    }

    /// Counts the request about to be sent, returning the count with it;
    /// `1` when nothing counts for this call.
    pub(crate) fn count_attempt(&self) -> u32 {
        match &self.call.0 {
            Some(shared) => shared.bump(),
            None => self.extensions.get::<Attempts>().map_or(1, Attempts::bump),
        }
    }

    /// Notes that the call was sent to `provider`, at `endpoint`.
    pub(crate) fn called(&self, provider: &'static str, endpoint: &Arc<Endpoint>) {
        if let Some(shared) = &self.call.0 {
            let _ = shared.called.set(provider);
            *crate::lock(&shared.endpoint) = Some(endpoint.clone());
        }
    }
}

impl Shared {
    fn deadline(&self) -> Option<Instant> {
        *crate::lock(&self.deadline)
    }

    fn bump(&self) -> u32 {
        if let Some(caller) = &self.caller {
            caller.bump();
        }
        self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }
}

/// Where a provider sends its calls, as OpenTelemetry's GenAI conventions
/// name it: the provider (`gen_ai.provider.name`: `openai`,
/// `azure.ai.openai`, `gcp.vertex_ai`, …) and the server's address and
/// port. Worked out once, when the provider is built.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The provider's wire (`openai`, `anthropic`, `gemini`, …).
    pub(crate) wire: &'static str,
    pub(crate) provider: &'static str,
    pub(crate) address: Box<str>,
    pub(crate) port: u16,
}

impl Endpoint {
    /// The endpoint of `uri`, for a provider whose wire is named `wire`.
    pub(crate) fn of(wire: &'static str, uri: &http::Uri) -> Endpoint {
        let address = uri.host().unwrap_or("").trim_matches(['[', ']']);
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        let host = address.to_ascii_lowercase();
        let on = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        let provider = if on("openai.azure.com") || on("cognitiveservices.azure.com") {
            "azure.ai.openai"
        } else if on("services.ai.azure.com") || on("inference.ai.azure.com") {
            "azure.ai.inference"
        } else if on("aiplatform.googleapis.com") || host.ends_with("-aiplatform.googleapis.com") {
            "gcp.vertex_ai"
        } else if on("generativelanguage.googleapis.com") {
            "gcp.gemini"
        } else if on("groq.com") {
            "groq"
        } else if on("deepseek.com") {
            "deepseek"
        } else if on("mistral.ai") {
            "mistral_ai"
        } else if on("x.ai") {
            "x_ai"
        } else if on("perplexity.ai") {
            "perplexity"
        } else if on("amazonaws.com") && host.contains("bedrock") {
            "aws.bedrock"
        } else {
            // The wire format's flavour, as the conventions say to name an
            // OpenAI-compatible server: by what it speaks.
            match wire {
                "openai" | "openai-responses" => "openai",
                "gemini" => "gcp.gemini",
                other => other,
            }
        };
        Endpoint {
            wire,
            provider,
            address: address.into(),
            port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that counts its wakes.
    struct Counter(AtomicU32);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicU32::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn each_refresh_call_finds_the_version_it_sent() {
        let call = ChatRequest::new("m").call();
        let (a, b) = (credential_token(), credential_token());
        assert_ne!(a, b);
        assert_eq!(call.credential_sent(a), None);
        // A hedged attempt sent by another refresh layer's call does not
        // hide what this one sent.
        call.sent_credential(a, 1);
        call.sent_credential(b, 2);
        call.sent_credential(a, 3);
        assert_eq!(call.credential_sent(a), Some(3));
        assert_eq!(call.credential_sent(b), Some(2));
        // Past four at once, the oldest is forgotten.
        let more: Vec<u64> = (0..3).map(|_| credential_token()).collect();
        for t in &more {
            call.sent_credential(*t, 7);
        }
        assert_eq!(call.credential_sent(a), None);
        assert_eq!(call.credential_sent(b), Some(2));
        assert!(more.iter().all(|t| call.credential_sent(*t) == Some(7)));
    }

    #[test]
    fn a_head_timer_is_relied_on_while_it_serves_and_its_going_wakes_who_relied() {
        let call = ChatRequest::new("m").call();
        let now = Instant::now();
        let soon = now + std::time::Duration::from_secs(3);
        let later = now + std::time::Duration::from_secs(10);
        let (woken, waker) = counter();

        assert!(!call.armed_by(later), "nothing recorded yet");
        assert!(call.arm(1, soon));
        assert!(!call.arm(2, now), "one timer is recorded at a time");
        assert!(call.armed_by(later) && !call.armed_by(now));
        // Not before it runs, and then only from the task it wakes.
        assert!(!call.rely(later, now, &waker));
        let (_, other) = counter();
        call.armed_wakes(1, &other);
        assert!(!call.rely(later, now, &waker));
        call.armed_wakes(1, &waker);
        // A deadline sooner than the timer's cannot rely on it, nor can
        // anyone once it is due.
        assert!(!call.rely(now, now, &waker));
        assert!(!call.rely(later, soon, &waker));
        assert!(call.rely(later, now, &waker));
        // Another task may not rely on it too: one waiter is kept.
        call.armed_wakes(1, &other);
        assert!(!call.rely(later, now, &other));
        call.armed_wakes(1, &waker);

        // Gone: the waiter is woken, unless it is the task doing it.
        call.disarm(2, None);
        assert_eq!(woken.0.load(Ordering::Relaxed), 0, "not the recorded timer");
        call.disarm(1, Some(&waker));
        assert_eq!(woken.0.load(Ordering::Relaxed), 0, "the waiter's own task");
        assert!(!call.rely(later, now, &waker), "no timer left to rely on");

        assert!(call.arm(3, soon));
        call.armed_wakes(3, &waker);
        assert!(call.rely(later, now, &waker));
        call.disarm(3, Some(&other));
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);

        // A layer whose head came relies on nothing any more.
        assert!(call.arm(4, soon));
        call.armed_wakes(4, &waker);
        assert!(call.rely(later, now, &waker));
        call.stop_relying(&waker);
        call.disarm(4, None);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn endpoints_are_named_as_the_conventions_name_providers() {
        let of = |wire, url: &str| {
            let e = Endpoint::of(wire, &url.parse().unwrap());
            (e.provider, e.address.to_string(), e.port)
        };
        assert_eq!(
            of("openai", "https://api.openai.com/v1"),
            ("openai", "api.openai.com".into(), 443)
        );
        assert_eq!(
            of("openai", "https://my-res.openai.azure.com/openai"),
            ("azure.ai.openai", "my-res.openai.azure.com".into(), 443)
        );
        assert_eq!(
            of("gemini", "https://us-central1-aiplatform.googleapis.com/v1").0,
            "gcp.vertex_ai"
        );
        assert_eq!(
            of("anthropic", "https://aiplatform.googleapis.com/v1").0,
            "gcp.vertex_ai"
        );
        assert_eq!(
            of("gemini", "https://generativelanguage.googleapis.com/v1beta").0,
            "gcp.gemini"
        );
        assert_eq!(of("openai", "https://api.groq.com/openai/v1").0, "groq");
        assert_eq!(of("anthropic", "https://api.anthropic.com").0, "anthropic");
        // An OpenAI-compatible server is named by what it speaks.
        assert_eq!(
            of("openai-responses", "http://127.0.0.1:8000/v1"),
            ("openai", "127.0.0.1".into(), 8000)
        );
        assert_eq!(
            of("openai", "http://[::1]:8080/v1"),
            ("openai", "::1".into(), 8080)
        );
        assert_eq!(of("openai", "http://localhost/v1").2, 80);
        // Look-alikes are not the provider.
        assert_eq!(
            of("openai", "https://evil-openai.azure.com.example/v1").0,
            "openai"
        );
    }
}

/// A layer's hold on one call's [`CallContext`].
#[derive(Debug, Clone)]
pub(crate) struct CallHandle(Arc<Shared>);

impl CallHandle {
    /// The requests sent so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// The provider the call was sent to, or `"unknown"` before it was.
    pub(crate) fn provider(&self) -> &'static str {
        self.0.called.get().copied().unwrap_or("unknown")
    }

    /// Where the call was sent last, once it was.
    pub(crate) fn endpoint(&self) -> Option<Arc<Endpoint>> {
        crate::lock(&self.0.endpoint).clone()
    }

    /// Whether a failure after `attempts` requests is news: no failure of
    /// this call was reported with as many yet.
    pub(crate) fn first_report(&self, attempts: u32) -> bool {
        self.0.reported.fetch_max(attempts, Ordering::Relaxed) < attempts
    }

    /// Notes that pool `pool` sent this call to its deployment `index`.
    pub(crate) fn tried(&self, pool: usize, index: usize) {
        crate::lock(&self.0.tried).push((pool, index));
    }

    /// Whether pool `pool` sent this call to its deployment `index` before.
    pub(crate) fn has_tried(&self, pool: usize, index: usize) -> bool {
        crate::lock(&self.0.tried).contains(&(pool, index))
    }

    /// Notes that an attempt was sent with version `version` of the
    /// credential supplied under `token`.
    pub(crate) fn sent_credential(&self, token: u64, version: u64) {
        let mut sent = crate::lock(&self.0.credentials);
        let CredentialsSent { slots, next } = &mut *sent;
        let slot = match slots
            .iter()
            .position(|s| s.is_some_and(|(t, _)| t == token))
        {
            Some(i) => i,
            None => {
                let i = *next;
                *next = (i + 1) % slots.len();
                i
            }
        };
        slots[slot] = Some((token, version));
    }

    /// The version of the credential supplied under `token` that was sent
    /// last, if the call still has it on record.
    pub(crate) fn credential_sent(&self, token: u64) -> Option<u64> {
        crate::lock(&self.0.credentials)
            .slots
            .iter()
            .flatten()
            .find(|(t, _)| *t == token)
            .map(|&(_, version)| version)
    }

    /// Records timer `id`, firing by `at`, as the one a layer outside may
    /// rely on, unless another is recorded: whether it was.
    pub(crate) fn arm(&self, id: usize, at: Instant) -> bool {
        let mut armed = crate::lock(&self.0.armed);
        if armed.is_some() {
            return false;
        }
        *armed = Some(Armed {
            id,
            at,
            wakes: None,
            waiter: None,
        });
        true
    }

    /// Timer `id` was set to wake `waker`'s task.
    pub(crate) fn armed_wakes(&self, id: usize, waker: &Waker) {
        if let Some(a) = crate::lock(&self.0.armed).as_mut().filter(|a| a.id == id) {
            a.wakes = Some(waker.clone());
        }
    }

    /// Timer `id` no longer serves the head (it is gone, or the answer's
    /// output began): the layer relying on it, if any, is woken to set its
    /// own, unless it is `current`'s task, which polls it next anyway.
    pub(crate) fn disarm(&self, id: usize, current: Option<&Waker>) {
        let waiter = {
            let mut armed = crate::lock(&self.0.armed);
            match armed.as_ref() {
                Some(a) if a.id == id => armed.take().and_then(|a| a.waiter),
                _ => None,
            }
        };
        if let Some(w) = waiter
            && !current.is_some_and(|c| w.will_wake(c))
        {
            w.wake();
        }
    }

    /// Whether a timer recorded here fires by `at`, later than `now`, and
    /// wakes `waker`'s task, so that a layer of that task whose head
    /// deadline is `at` may wait on it, woken by `waker` if it goes first.
    /// No when another task relies on it.
    pub(crate) fn rely(&self, at: Instant, now: Instant, waker: &Waker) -> bool {
        let mut armed = crate::lock(&self.0.armed);
        let Some(a) = armed.as_mut().filter(|a| {
            a.at <= at && a.at > now && a.wakes.as_ref().is_some_and(|w| w.will_wake(waker))
        }) else {
            return false;
        };
        match &a.waiter {
            Some(w) => w.will_wake(waker),
            None => {
                a.waiter = Some(waker.clone());
                true
            }
        }
    }

    /// Whether a timer recorded here fires by `at`: checked when the
    /// call is made, before anything waits.
    pub(crate) fn armed_by(&self, at: Instant) -> bool {
        crate::lock(&self.0.armed)
            .as_ref()
            .is_some_and(|a| a.at <= at)
    }

    /// The head came: the task behind `waker` relies on no timer here now.
    pub(crate) fn stop_relying(&self, waker: &Waker) {
        if let Some(a) = crate::lock(&self.0.armed).as_mut()
            && a.waiter.as_ref().is_some_and(|w| w.will_wake(waker))
        {
            a.waiter = None;
        }
    }

    /// Sets the deadline to `at`, unless one nearer is set.
    pub(crate) fn limit(&self, at: Instant) {
        let mut deadline = crate::lock(&self.0.deadline);
        *deadline = crate::nearer(*deadline, Some(at));
    }
}

/// When a call must be over, carried in [`ChatRequest::extensions`].
///
/// Layers that wait respect it: a retry whose wait would end after the
/// deadline is not attempted; the failure is returned at once.
///
/// ```
/// use llm_tower::{ChatRequest, Deadline};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut req = ChatRequest::new("m");
/// req.extensions.insert(Deadline::after(Duration::from_secs(30)));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub tokio::time::Instant);

impl Deadline {
    /// The deadline `timeout` from now; a timeout too long for the clock
    /// (`Duration::MAX`) is decades away.
    pub fn after(timeout: std::time::Duration) -> Self {
        Deadline(crate::later_or_far(tokio::time::Instant::now(), timeout))
    }

    /// The time left, zero once passed.
    pub fn remaining(&self) -> std::time::Duration {
        self.0
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// Counts the HTTP requests one logical call sent, across every layer
/// (retries, a credential refresh, a fallback), carried in
/// [`ChatRequest::extensions`]: each provider counts the request it sends.
///
/// A successful call reports the count as
/// [`ResponseMeta::attempts`](crate::ResponseMeta::attempts). To know it
/// whatever the outcome — a call that failed after its retries, say — put
/// one in the request before the call and read it after: clones share the
/// count. Use a fresh one per call.
///
/// ```
/// use llm_tower::mock::{MockServer, Reply};
/// use llm_tower::{RetryPolicy, TransportRetryLayer};
/// use llm_tower::{Attempts, ChatRequest, Message, OpenAi};
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let server = MockServer::start().await;
/// server.set_default(Reply::api_error(500, "server_error", "down"));
/// let provider = OpenAi::builder().base_url(server.openai_url()).build().unwrap();
/// let svc = TransportRetryLayer::new(RetryPolicy::default().max_retries(2)).layer(provider);
///
/// let attempts = Attempts::new();
/// let mut req = ChatRequest::new("gpt-4o-mini").message(Message::user("hi"));
/// req.extensions.insert(attempts.clone());
/// let err = svc.oneshot(req).await.unwrap_err();
/// eprintln!("{err} (after {} attempts)", attempts.get());
/// assert_eq!(attempts.get(), 3);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Attempts(Arc<AtomicU32>);

impl Attempts {
    /// A counter at zero.
    pub fn new() -> Self {
        Attempts::default()
    }

    /// The requests sent so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more attempt; returns the count including it.
    pub(crate) fn bump(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }
}
