//! OpenAI-compatible presets: base URLs, keys from the environment, and what
//! each server accepts. One test, because it sets environment variables.

use llm_tower::mock::MockServer;
use llm_tower::{ChatRequest, Message, OpenAi, Preset};
use tower::ServiceExt;

#[tokio::test]
async fn presets_point_at_their_servers_with_their_keys() {
    for preset in Preset::ALL {
        let svc = OpenAi::preset(preset).model("m").build().unwrap();
        assert_eq!(
            svc.endpoint().to_string(),
            format!("{}/chat/completions", preset.base_url()),
            "{preset}"
        );
        assert_eq!(Preset::from_name(preset.name()), Some(preset));
        assert_eq!(
            Preset::from_name(&preset.name().to_uppercase()),
            Some(preset)
        );
    }
    assert_eq!(Preset::from_name("llama.cpp"), Some(Preset::LlamaCpp));
    assert_eq!(Preset::from_name("llama-cpp"), Some(Preset::LlamaCpp));
    assert_eq!(Preset::from_name("gpt"), None);

    let server = MockServer::start().await;
    let hello = || ChatRequest::new("").message(Message::user("hi"));
    // SAFETY: no other thread of this test binary reads the environment.
    unsafe { std::env::set_var("VLLM_API_KEY", "vllm-from-env") };
    let from_env = OpenAi::preset(Preset::Vllm)
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap();
    from_env.oneshot(hello()).await.unwrap();
    let explicit = OpenAi::preset(Preset::Vllm)
        .api_key("vllm-explicit")
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap();
    explicit.oneshot(hello()).await.unwrap();
    // SAFETY: as above.
    unsafe { std::env::remove_var("VLLM_API_KEY") };
    let without = OpenAi::preset(Preset::Vllm)
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap();
    without.oneshot(hello()).await.unwrap();
    let mistral = OpenAi::preset(Preset::Mistral)
        .base_url(server.openai_url())
        .model("m")
        .build()
        .unwrap();
    mistral.oneshot(hello()).await.unwrap();

    let requests = server.requests();
    let auth: Vec<_> = requests.iter().map(|r| r.header("authorization")).collect();
    assert_eq!(
        auth,
        [
            Some("Bearer vllm-from-env"),
            Some("Bearer vllm-explicit"),
            None,
            None
        ]
    );
    assert_eq!(requests[0].json()["stream_options"]["include_usage"], true);
    assert!(
        requests[3].json().get("stream_options").is_none(),
        "Mistral refuses stream_options"
    );
}
