//! Gemini and Claude on Vertex AI through the mock server, with bearer
//! tokens from a refresh layer — and the command credential source that
//! gives them.

use std::time::Duration;

use llm_tower::mock::{MockServer, Reply};
use llm_tower::refresh::{CommandSource, CredentialSource};
use llm_tower::{Anthropic, AuthScheme, ChatRequest, Error, Gemini, Message, RefreshLayer};
use tower::{Layer, ServiceExt};

const TOKEN: &str = "ya29.VERTEX-token-0001";

fn hello(stream: bool) -> ChatRequest {
    ChatRequest::new("")
        .message(Message::user("hello"))
        .stream(stream)
}

/// A refresh layer whose source hands out [`TOKEN`] as a bearer token, by
/// running a program as `gcloud auth print-access-token` would be run.
fn gcloud_like() -> RefreshLayer {
    RefreshLayer::new(CommandSource::new("echo").args([TOKEN]))
}

#[tokio::test]
async fn gemini_on_vertex_puts_project_location_and_model_in_the_path() {
    let server = MockServer::start().await;
    server.accept_keys([TOKEN]);
    for stream in [true, false] {
        server.push(Reply::text(["Hi", " there."]));
        let svc = Gemini::vertex("my-proj", "us-central1")
            .base_url(server.url())
            .model("gemini-2.5-flash")
            .build()
            .unwrap();
        let answer = gcloud_like()
            .layer(svc)
            .oneshot(hello(stream))
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
        assert_eq!(answer.text, "Hi there.");
    }
    let requests = server.requests();
    let base =
        "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash";
    assert_eq!(
        requests[0].path,
        format!("{base}:streamGenerateContent?alt=sse")
    );
    assert_eq!(requests[1].path, format!("{base}:generateContent"));
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(r.header("x-goog-api-key"), None);
    }
}

#[tokio::test]
async fn claude_on_vertex_names_the_model_in_the_path_and_the_version_in_the_body() {
    let server = MockServer::start().await;
    server.accept_keys([TOKEN]);
    for stream in [true, false] {
        server.push(Reply::text(["Hi", " there."]));
        let svc = Anthropic::vertex("my-proj", "us-east5")
            .base_url(server.url())
            .model("claude-sonnet-4-5@20250929")
            .build()
            .unwrap();
        let answer = gcloud_like()
            .layer(svc)
            .oneshot(hello(stream))
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
        assert_eq!(answer.text, "Hi there.");
    }
    let requests = server.requests();
    let base = "/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929";
    assert_eq!(requests[0].path, format!("{base}:streamRawPredict"));
    assert_eq!(requests[1].path, format!("{base}:rawPredict"));
    for r in &requests {
        let body = r.json();
        assert_eq!(body["anthropic_version"], "vertex-2023-10-16");
        assert!(body.get("model").is_none(), "{body}");
        assert_eq!(body["stream"], r.path.ends_with("streamRawPredict"));
        assert_eq!(r.header("anthropic-version"), None);
        assert_eq!(r.header("x-api-key"), None);
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
}

#[tokio::test]
async fn the_global_location_and_names_that_do_not_fit_a_path() {
    let svc = Gemini::vertex("p", "global").model("m").build().unwrap();
    assert!(
        svc.endpoint()
            .to_string()
            .starts_with("https://aiplatform.googleapis.com/v1/projects/p/locations/global/"),
        "{}",
        svc.endpoint()
    );
    for (project, location) in [("a/b", "us-east5"), ("p", "us east"), ("", "x")] {
        let err = Anthropic::vertex(project, location).build().unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        let err = Gemini::vertex(project, location).build().unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
    }
    let server = MockServer::start().await;
    let svc = Anthropic::vertex("p", "us-east5")
        .base_url(server.url())
        .build()
        .unwrap();
    let err = svc
        .oneshot(ChatRequest::new("models/claude:x").message(Message::user("hi")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert_eq!(server.request_count(), 0, "nothing is sent");
}

#[tokio::test]
async fn the_command_source_trims_the_output_and_may_say_how_long_it_lasts() {
    let credential = CommandSource::new("echo")
        .args(["  tok-123  "])
        .valid_for(Duration::from_secs(3000))
        .fetch()
        .await
        .unwrap();
    assert_eq!(credential.expose_secret(), "tok-123");
    assert!(matches!(credential.scheme(), AuthScheme::Bearer));
    assert!(credential.expiry().is_some());
    let key = CommandSource::new("echo")
        .args(["k"])
        .scheme(AuthScheme::ApiKey)
        .fetch()
        .await
        .unwrap();
    assert!(!matches!(key.scheme(), AuthScheme::Bearer));
    assert!(key.expiry().is_none());
}

#[tokio::test]
async fn a_failing_command_is_an_error_that_never_shows_its_stdout() {
    let err = CommandSource::new("sh")
        .args([
            "-c",
            "echo sk-LEAKED-SECRET; echo 'ERROR: no active account' >&2; exit 3",
        ])
        .fetch()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"sh\""), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("ERROR: no active account"), "{err}");
    assert!(!err.contains("sk-LEAKED-SECRET"), "{err}");

    for (args, what) in [
        (&["-c", "exit 0"][..], "printed nothing"),
        (&["-c", "printf '\\377\\376'"][..], "not UTF-8"),
        (
            &["-c", "head -c 70000 /dev/zero | tr '\\0' a"][..],
            "more than 65536 bytes",
        ),
    ] {
        let err = CommandSource::new("sh")
            .args(args)
            .fetch()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{args:?}: {err}");
    }
    let err = CommandSource::new("/no/such/program")
        .fetch()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("could not start"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_command_that_hangs_is_killed_at_its_time_limit() {
    let err = CommandSource::new("sleep")
        .args(["30"])
        .timeout(Duration::from_secs(2))
        .fetch()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not finish within 2s"), "{err}");
}

#[tokio::test]
async fn through_the_refresh_layer_a_failing_command_fails_the_call_typed() {
    let server = MockServer::start().await;
    let svc = Gemini::vertex("p", "us-central1")
        .base_url(server.url())
        .model("m")
        .build()
        .unwrap();
    let err = RefreshLayer::new(CommandSource::new("sh").args(["-c", "exit 1"]))
        .layer(svc)
        .oneshot(hello(true))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refresh { .. }), "{err:?}");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn a_chatty_stderr_does_not_block_the_token_and_debug_hides_the_arguments() {
    let source = CommandSource::new("sh").args([
        "-c",
        "head -c 200000 /dev/zero | tr '\\0' e >&2; echo tok-after-noise",
    ]);
    assert!(!format!("{source:?}").contains("tok-after-noise"));
    let credential = source.fetch().await.unwrap();
    assert_eq!(credential.expose_secret(), "tok-after-noise");
}
