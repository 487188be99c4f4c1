//! Load with faults: 1,000 concurrent calls per provider through the README's
//! recommended stack, layer for layer (tracing, `map_request`, total timeout,
//! fallback, refresh, retry, rate limit, stream timeouts, concurrency limit),
//! against the mock server, with faults on 10% of requests before output and
//! 1% after, the key expiring twice on the way, one call in 25 meeting a
//! primary that is down (overloaded on every attempt, so the fallback takes
//! it) and a request budget that makes calls wait.
//!
//! The server decides each request's fate from the call it belongs to and
//! its attempt number, and logs what it played. A model of the stack's
//! policies turns each call's log into the outcome it must have (the full
//! text, or the error class with exactly the text delivered before it) and
//! the number of requests it must have made; every call is checked against
//! it. Tokio's clock is paused: the timeouts and backoffs take no real time
//! and fire at the same points on a loaded machine as on an idle one.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_tower::mock::{MockServer, RecordedRequest, Reply};
use llm_tower::{
    Anthropic, ChatRequest, Credential, Error, FallbackLayer, Gemini, GenAiTraceLayer, Message,
    OpenAi, OpenAiResponses, RateLimitLayer, RefreshLayer, RetryPolicy,
    StreamConcurrencyLimitLayer, StreamTimeoutLayer, TransportRetryLayer,
};
use support::{Svc, drain, texts};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

const CALLS: usize = 1000;
/// Per thousand requests.
const BEFORE_OUTPUT: u64 = 100;
const AFTER_OUTPUT: u64 = 10;
/// The key expires when the server has seen this many requests, and again
/// this many later (once the new key is in use).
const EXPIRY_EVERY: usize = 400;
const WORDS: usize = 10;
/// `RetryPolicy::default()`'s.
const MAX_RETRIES: u32 = 2;
/// The stream-aware concurrency limit.
const OPEN_STREAMS: usize = 16;
/// One call in this many finds the primary down: a 529 on every attempt.
const DOWN_EVERY: usize = 25;
/// The rate limit's request budget: fewer than the calls and their retries
/// need, so that some wait for the window to move.
const REQUESTS_PER_MINUTE: u64 = 900;
/// The token budget: each call counts as its `max_tokens` (1,024) until its
/// usage comes in, and slots are given in order of arrival, so a budget the
/// burst overruns would book the last calls minutes ahead, past their
/// deadline. This one lets the request budget bind first.
const TOKENS_PER_MINUTE: u64 = 2_000_000;
/// The fallback's own key; it never expires.
const BACKUP_KEY: &str = "backup-key";
/// The fallback's model.
const BACKUP_MODEL: &str = "backup";

fn words() -> Vec<String> {
    (0..WORDS).map(|i| format!("t{i} ")).collect()
}

/// What the server played for one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Played {
    Healthy,
    /// 401: the key presented had expired.
    Expired,
    /// A fault before any delta, ending in this error class.
    Before(&'static str),
    /// A fault after this many deltas, ending in this error class.
    After(usize, &'static str),
}

/// What a call must end in.
#[derive(Debug, PartialEq)]
enum Outcome {
    Text(String),
    Failed(&'static str),
    Interrupted(String, &'static str),
}

/// The stack's policies, applied to what the server played for one call:
/// the outcome, and how many requests the primary and the fallback take to
/// get there.
fn model(played: &[Played], backup: &[Played]) -> (Outcome, usize, usize) {
    let (primary, needed) = model_primary(played);
    // The README's fallback takes over only when the primary's own retries
    // and refresh end in `Overloaded` before any output; it is called once,
    // with no retry of its own.
    if primary != Outcome::Failed("overloaded") {
        return (primary, needed, 0);
    }
    let outcome = match backup.first() {
        None => Outcome::Failed("(no fallback request)"),
        Some(Played::Healthy) => Outcome::Text(words().concat()),
        Some(Played::Before(class)) => Outcome::Failed(class),
        Some(Played::After(n, class)) => Outcome::Interrupted(words()[..*n].concat(), class),
        Some(Played::Expired) => Outcome::Failed("unauthorized"),
    };
    (outcome, needed, 1)
}

/// The primary's part: refresh, then retries.
fn model_primary(played: &[Played]) -> (Outcome, usize) {
    let words = words();
    let mut refreshed = false;
    let mut retries = 0;
    for (i, p) in played.iter().enumerate() {
        match *p {
            Played::Healthy => return (Outcome::Text(words.concat()), i + 1),
            Played::After(n, class) => {
                return (Outcome::Interrupted(words[..n].concat(), class), i + 1);
            }
            // The refresh layer retries once, through a fresh retry layer.
            Played::Expired if !refreshed => {
                refreshed = true;
                retries = 0;
            }
            Played::Expired => return (Outcome::Failed("unauthorized"), i + 1),
            Played::Before(class) if retries == MAX_RETRIES => {
                return (Outcome::Failed(class), i + 1);
            }
            Played::Before(_) => retries += 1,
        }
    }
    (Outcome::Failed("(more requests)"), played.len() + 1)
}

/// A well-mixed 64-bit hash (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The primary is down for this call.
fn down(call: usize) -> bool {
    call % DOWN_EVERY == 7
}

/// The fate of attempt `attempt` of call `call` (the fallback's one request
/// is attempt `FALLBACK`).
fn fate(call: usize, attempt: usize) -> (Reply, Played) {
    let h = mix(((call as u64) << 16) | attempt as u64);
    let roll = h % 1000;
    let pick = (h >> 20) as usize;
    let text = Reply::text(words());
    if roll < BEFORE_OUTPUT {
        let faults: [(Reply, &str); 9] = [
            (Reply::reset(), "transport"),
            (Reply::api_error(500, "server_error", "boom"), "server"),
            (
                Reply::api_error(429, "rate_limit_error", "slow down").header("retry-after", "1"),
                "rate_limited",
            ),
            (
                Reply::api_error(529, "overloaded_error", "busy"),
                "overloaded",
            ),
            (
                Reply::body(502, "text/html", "<h1>Bad Gateway</h1>"),
                "server",
            ),
            (text.clone().reset_after(0), "transport"),
            (text.clone().truncate_after(0), "transport"),
            (text.clone().malformed_after(0), "decode"),
            (text.clone().stall_after(0), "timeout"),
        ];
        let (reply, class) = faults[pick % faults.len()].clone();
        (reply, Played::Before(class))
    } else if roll < BEFORE_OUTPUT + AFTER_OUTPUT {
        let n = 1 + (pick >> 8) % (WORDS - 1);
        let faults: [(Reply, &str); 5] = [
            (text.clone().reset_after(n), "transport"),
            (text.clone().truncate_after(n), "transport"),
            (text.clone().malformed_after(n), "decode"),
            (
                text.clone()
                    .error_event_after(n, "overloaded_error", "busy"),
                "overloaded",
            ),
            (text.clone().stall_after(n), "timeout"),
        ];
        let (reply, class) = faults[pick % faults.len()].clone();
        (reply, Played::After(n, class))
    } else {
        (text, Played::Healthy)
    }
}

/// The attempt number the fallback's request draws its fate with.
const FALLBACK: usize = 1 << 12;

/// The server's side: the valid key, and what it played to each call.
#[derive(Default)]
struct Script {
    requests: usize,
    /// The valid key is `key-{generation}`.
    generation: usize,
    /// When the current key was first presented, in requests.
    in_use_since: Option<usize>,
    played: HashMap<usize, Vec<Played>>,
    /// What the fallback was played, by call.
    backup: HashMap<usize, Vec<Played>>,
}

fn key(generation: usize) -> String {
    format!("key-{generation}")
}

fn respond(script: &Mutex<Script>, req: &RecordedRequest) -> Reply {
    let body = String::from_utf8_lossy(&req.body);
    let call: usize = body
        .split("call-")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("every request names its call");
    let presented = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.header("x-api-key"))
        .or_else(|| req.header("x-goog-api-key"))
        .unwrap_or("")
        .to_owned();
    let to_backup = req.path.contains(BACKUP_MODEL) || req.json()["model"] == BACKUP_MODEL;
    let mut s = script.lock().unwrap();
    if to_backup {
        let (reply, played) = if presented == BACKUP_KEY {
            fate(call, FALLBACK)
        } else {
            (
                Reply::api_error(401, "authentication_error", "not the fallback's key"),
                Played::Expired,
            )
        };
        s.backup.entry(call).or_default().push(played);
        return reply;
    }
    s.requests += 1;
    let current = key(s.generation);
    if presented == current && s.in_use_since.is_none() {
        s.in_use_since = Some(s.requests);
    }
    // The key expires every EXPIRY_EVERY requests of its use.
    if s.in_use_since
        .is_some_and(|since| s.requests >= since + EXPIRY_EVERY)
    {
        s.generation += 1;
        s.in_use_since = None;
    }
    let attempt = s.played.get(&call).map_or(0, Vec::len);
    let (reply, played) = if presented != key(s.generation) {
        (
            Reply::api_error(401, "authentication_error", "expired key"),
            Played::Expired,
        )
    } else if down(call) {
        (
            Reply::api_error(529, "overloaded_error", "down"),
            Played::Before("overloaded"),
        )
    } else {
        fate(call, attempt)
    };
    s.played.entry(call).or_default().push(played);
    reply
}

#[derive(Clone, Copy, Debug)]
enum Provider {
    OpenAi,
    Responses,
    Anthropic,
    Gemini,
}

/// A provider of `kind` on `server`, for `model`, with `key` if any (the
/// primary's comes from the refresh layer).
fn provider(kind: Provider, server: &MockServer, model: &str, key: Option<&str>) -> Svc {
    macro_rules! build {
        ($ty:ident, $url:expr) => {{
            let mut builder = $ty::builder().base_url($url).model(model);
            if let Some(key) = key {
                builder = builder.api_key(key);
            }
            BoxCloneService::new(builder.build().unwrap())
        }};
    }
    match kind {
        Provider::OpenAi => build!(OpenAi, server.openai_url()),
        Provider::Responses => build!(OpenAiResponses, server.openai_url()),
        Provider::Anthropic => build!(Anthropic, server.anthropic_url()),
        Provider::Gemini => build!(Gemini, server.gemini_url()),
    }
}

/// The README's recommended stack, layer for layer and in its order. The
/// stream timeouts are shorter (a stall costs virtual time only, but three
/// of them must fit in the total with the rate limit's waits).
fn stack(
    kind: Provider,
    server: &MockServer,
    backup_server: &MockServer,
    script: Arc<Mutex<Script>>,
    refreshes: Arc<AtomicUsize>,
) -> Svc {
    // Sent as each provider takes its key.
    let credential = Credential::api_key;
    let refresh = RefreshLayer::new(move || {
        refreshes.fetch_add(1, Ordering::SeqCst);
        // Reads the key now valid, as a secrets store would hand it out.
        let secret = key(script.lock().unwrap().generation);
        async move { Ok::<_, std::io::Error>(credential(secret)) }
    })
    .initial(credential(key(0)));
    let backup = provider(kind, backup_server, BACKUP_MODEL, Some(BACKUP_KEY));
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(GenAiTraceLayer::new())
            .map_request(|mut req: ChatRequest| {
                req.max_tokens.get_or_insert(1024);
                req
            })
            .layer(StreamTimeoutLayer::new().total(Duration::from_secs(120)))
            .layer(FallbackLayer::new(backup).when(|e| matches!(e, Error::Overloaded { .. })))
            .layer(refresh)
            .layer(TransportRetryLayer::new(RetryPolicy::default()))
            .layer(
                RateLimitLayer::new()
                    .requests_per_minute(REQUESTS_PER_MINUTE)
                    .tokens_per_minute(TOKENS_PER_MINUTE),
            )
            .layer(
                StreamTimeoutLayer::new()
                    .first_event(Duration::from_secs(3))
                    .idle(Duration::from_secs(3)),
            )
            .layer(StreamConcurrencyLimitLayer::new(OPEN_STREAMS))
            .service(provider(kind, server, "m", None)),
    )
}

async fn load(provider: Provider) {
    let server = MockServer::start().await;
    let script = Arc::new(Mutex::new(Script::default()));
    let responder = script.clone();
    server.respond_with(move |req| respond(&responder, req));
    // The fallback's own server, so the primary's peak of open responses is
    // the concurrency limit's alone.
    let backup_server = MockServer::start().await;
    let responder = script.clone();
    backup_server.respond_with(move |req| respond(&responder, req));
    let refreshes = Arc::new(AtomicUsize::new(0));
    let svc = stack(
        provider,
        &server,
        &backup_server,
        script.clone(),
        refreshes.clone(),
    );

    let calls: Vec<_> = (0..CALLS)
        .map(|call| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let request = ChatRequest::new("").message(Message::user(format!("call-{call}")));
                match svc.oneshot(request).await {
                    Ok(stream) => drain(stream).await,
                    Err(e) => (Vec::new(), Some(e)),
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(CALLS);
    for call in calls {
        results.push(call.await.unwrap());
    }

    let script = script.lock().unwrap();
    let mut tally: HashMap<String, usize> = HashMap::new();
    let mut requests = 0;
    let mut fallbacks = 0;
    for (call, (events, error)) in results.into_iter().enumerate() {
        let played = &script.played[&call];
        let backup = script.backup.get(&call).map_or(&[][..], Vec::as_slice);
        let (want, needed, backup_needed) = model(played, backup);
        assert_eq!(
            (played.len(), backup.len()),
            (needed, backup_needed),
            "{provider:?} call {call}: the server saw {played:?}, then {backup:?}; got {error:?}"
        );
        requests += played.len() + backup.len();
        fallbacks += backup.len();
        let deltas = texts(&events);
        let got = match &error {
            None => Outcome::Text(deltas.concat()),
            Some(e) if deltas.is_empty() => Outcome::Failed(e.kind()),
            Some(e) => Outcome::Interrupted(deltas.concat(), e.kind()),
        };
        assert_eq!(
            got, want,
            "{provider:?} call {call}: played {played:?}, got {error:?}"
        );
        // Not only the same text: the same deltas, each once, in order.
        assert_eq!(deltas, words()[..deltas.len()], "{provider:?} call {call}");
        let label = match &got {
            Outcome::Text(_) => "complete".to_owned(),
            Outcome::Failed(k) => format!("failed: {k}"),
            Outcome::Interrupted(_, k) => format!("interrupted: {k}"),
        };
        *tally.entry(label).or_default() += 1;
    }
    assert_eq!(
        requests,
        server.request_count() + backup_server.request_count()
    );
    assert_eq!(fallbacks, backup_server.request_count());
    assert!(
        fallbacks >= CALLS / DOWN_EVERY,
        "every call whose primary was down went to the fallback ({fallbacks})"
    );
    // The request budget, from the server's side: never more than it in any
    // 60 seconds, and binding (more requests than it, so some waited).
    let mut sent: Vec<_> = server.requests().iter().map(|r| r.received_at).collect();
    sent.sort();
    let budget = REQUESTS_PER_MINUTE as usize;
    assert!(
        sent.len() > budget,
        "the budget binds: {} requests",
        sent.len()
    );
    for (i, t) in sent.iter().enumerate().skip(budget) {
        assert!(
            *t - sent[i - budget] >= Duration::from_secs(60),
            "{provider:?}: request {i} came {:?} after request {}, over the budget of {budget} a minute",
            *t - sent[i - budget],
            i - budget,
        );
    }
    let expiries = script.generation;
    assert_eq!(expiries, 2, "the key expired twice during the load");
    assert_eq!(
        refreshes.load(Ordering::SeqCst),
        expiries,
        "exactly one refresh per expiry"
    );
    assert!(
        server.peak_open_responses() <= OPEN_STREAMS,
        "{} responses open at once, over the concurrency limit of {OPEN_STREAMS}",
        server.peak_open_responses()
    );
    let mut tally: Vec<_> = tally.into_iter().collect();
    tally.sort();
    println!(
        "{provider:?}: {CALLS} calls, {requests} requests ({fallbacks} to the fallback), \
         {expiries} key expiries, peak {} open responses, last request {:?} after the first; \
         {tally:?}",
        server.peak_open_responses(),
        sent[sent.len() - 1] - sent[0],
    );
}

#[tokio::test(start_paused = true)]
async fn a_thousand_calls_with_faults_lose_nothing_and_repeat_nothing() {
    let started = std::time::Instant::now();
    let run = async {
        load(Provider::OpenAi).await;
        load(Provider::Responses).await;
        load(Provider::Anthropic).await;
        load(Provider::Gemini).await;
    };
    // Virtual time: every call is bounded by its 120 s total limit.
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the load finishes within its bounds");
    println!("took {:?} of real time", started.elapsed());
}
