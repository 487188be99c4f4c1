//! Azure OpenAI through the mock server: the v1 API and the deployment
//! style, keys in `api-key`, Entra ID tokens from a refresh layer in their
//! place, and the Responses API on the same resource.

use llm_tower::mock::{MockServer, Reply};
use llm_tower::{ChatRequest, Credential, Error, Message, OpenAi, OpenAiResponses, RefreshLayer};
use tower::{Layer, ServiceExt};

const KEY: &str = "az-SECRET-key-0001";

fn hello() -> ChatRequest {
    ChatRequest::new("").message(Message::user("hello"))
}

#[tokio::test]
async fn the_v1_api_names_the_deployment_as_the_model_and_sends_the_key_in_api_key() {
    let server = MockServer::start().await;
    server.accept_keys([KEY]);
    server.push(Reply::text(["Hi."]));
    let svc = OpenAi::azure(server.url())
        .api_key(KEY)
        .model("gpt-4o-prod")
        .build()
        .unwrap();
    assert_eq!(
        svc.endpoint().to_string(),
        format!("{}/openai/v1/chat/completions", server.url())
    );
    let answer = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(answer.text, "Hi.");
    let r = &server.requests()[0];
    assert_eq!(r.path, "/openai/v1/chat/completions");
    assert_eq!(r.header("api-key"), Some(KEY));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.json()["model"], "gpt-4o-prod");
}

#[tokio::test]
async fn the_deployment_style_puts_the_deployment_and_api_version_in_the_url() {
    let server = MockServer::start().await;
    server.accept_keys([KEY]);
    server.push(Reply::text(["Hi."]));
    // A trailing `/openai/v1` on the endpoint is the same resource.
    let svc = OpenAi::azure(format!("{}/openai/v1/", server.url()))
        .api_key(KEY)
        .azure_deployment("gpt-4o-prod", "2024-10-21")
        .build()
        .unwrap();
    svc.oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(
        r.path,
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(r.header("api-key"), Some(KEY));
    assert_eq!(
        r.json()["model"],
        "gpt-4o-prod",
        "the deployment is the default model"
    );
}

#[tokio::test]
async fn names_that_do_not_fit_in_a_path_are_refused_at_build() {
    for (deployment, version) in [("a/b", "2024-10-21"), ("dep", "2024 10"), ("", "v")] {
        let err = OpenAi::azure("https://contoso.openai.azure.com")
            .azure_deployment(deployment, version)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn an_entra_id_token_from_a_refresh_layer_replaces_the_key() {
    let server = MockServer::start().await;
    server.accept_keys(["entra-TOKEN-1"]);
    server.push(Reply::text(["Hi."]));
    let svc = OpenAi::azure(server.url())
        .api_key(KEY)
        .model("dep")
        .build()
        .unwrap();
    let refresh = RefreshLayer::new(|| async {
        Ok::<_, std::io::Error>(Credential::bearer("entra-TOKEN-1"))
    });
    refresh
        .layer(svc)
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.header("authorization"), Some("Bearer entra-TOKEN-1"));
    assert_eq!(
        r.header("api-key"),
        None,
        "the configured key is not sent too"
    );
}

#[tokio::test]
async fn a_key_from_a_refresh_layer_goes_in_api_key() {
    let server = MockServer::start().await;
    server.accept_keys(["az-ROTATED-2"]);
    server.push(Reply::text(["Hi."]));
    let svc = OpenAi::azure(server.url()).model("dep").build().unwrap();
    let mut req = hello();
    req.extensions.insert(Credential::api_key("az-ROTATED-2"));
    svc.oneshot(req).await.unwrap().completion().await.unwrap();
    assert_eq!(server.requests()[0].header("api-key"), Some("az-ROTATED-2"));
}

#[tokio::test]
async fn a_refused_key_is_unauthorized_and_never_shown() {
    let server = MockServer::start().await;
    server.accept_keys(["az-other"]);
    let builder = OpenAi::azure(server.url()).api_key(KEY).model("dep");
    assert!(!format!("{builder:?}").contains(KEY));
    let svc = builder.build().unwrap();
    assert!(!format!("{svc:?}").contains(KEY));
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(KEY), "{err}");
}

#[tokio::test]
async fn a_deployment_path_without_an_api_version_is_azures_404() {
    let server = MockServer::start().await;
    let svc = OpenAi::builder()
        .base_url(format!("{}/openai/deployments/dep", server.url()))
        .model("dep")
        .build()
        .unwrap();
    let err = svc.oneshot(hello()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    assert!(err.to_string().contains("Resource not found"), "{err}");
}

#[tokio::test]
async fn the_responses_api_on_the_same_resource() {
    let server = MockServer::start().await;
    server.accept_keys([KEY]);
    server.push(Reply::text(["Hi."]));
    let svc = OpenAiResponses::azure(server.url())
        .api_key(KEY)
        .model("gpt-5-mini-prod")
        .build()
        .unwrap();
    let answer = svc
        .oneshot(hello())
        .await
        .unwrap()
        .completion()
        .await
        .unwrap();
    assert_eq!(answer.text, "Hi.");
    let r = &server.requests()[0];
    assert_eq!(r.path, "/openai/v1/responses");
    assert_eq!(r.header("api-key"), Some(KEY));
    assert_eq!(r.json()["model"], "gpt-5-mini-prod");
}
