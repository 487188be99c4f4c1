//! OpenAI's Chat Completions wire, both ways: a client's request into a
//! [`ChatRequest`], the answer's events into `chat.completion` chunks (or
//! one `chat.completion`), and every failure into OpenAI's error body with
//! the status an OpenAI client acts on.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use llm_tower::{
    ChatRequest, Completion, ContentPart, Effort, Error, Image, Message, Reasoning, ResponseFormat,
    Role, StopReason, StreamEvent, Tool, ToolChoice, Usage,
};
use serde::Serialize;
use serde_json::{Map, Value};

/// A failure the gateway answers itself, in OpenAI's shape.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<String>,
    pub param: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &str,
        message: impl Into<String>,
    ) -> Failure {
        Failure {
            status,
            kind,
            code: Some(code.to_owned()),
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    fn param(mut self, param: &str) -> Failure {
        self.param = Some(param.to_owned());
        self
    }

    /// `{"error": {...}}`.
    pub fn body(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        serde_json::to_string(&Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        })
        .unwrap_or_default()
    }

    /// `retry-after` (whole seconds, rounded up) and `retry-after-ms`, when
    /// known.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(d) = self.retry_after {
            let ms = d.as_millis().max(1);
            let secs = ms.div_ceil(1000);
            h.insert("retry-after", HeaderValue::from(secs as u64));
            h.insert("retry-after-ms", HeaderValue::from(ms as u64));
        }
        h
    }
}

/// What a failed call becomes for the client.
pub fn failure(e: &Error) -> Failure {
    let e = match e {
        Error::Interrupted { source, .. } => source.as_ref(),
        other => other,
    };
    let upstream = e
        .api_error()
        .and_then(|a| a.message())
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    let (status, kind) = match e {
        Error::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "authentication_error"),
        Error::Forbidden { .. } => (StatusCode::FORBIDDEN, "permission_error"),
        Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        // Every deployment of the model is cooling down: LiteLLM's answer
        // too, so clients back off for the retry-after.
        Error::Overloaded { error, .. } if error.provider() == "pool" => {
            (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
        }
        Error::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error"),
        Error::Server { .. } | Error::Decode { .. } | Error::Transport { .. } => {
            (StatusCode::BAD_GATEWAY, "api_error")
        }
        Error::InvalidRequest { status, .. } => (*status, "invalid_request_error"),
        Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Error::Refresh { .. } => (StatusCode::BAD_GATEWAY, "api_error"),
        Error::Closed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "api_error"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
    };
    let message = match e {
        Error::Unauthorized { .. } | Error::Forbidden { .. } => {
            format!("the provider refused the gateway's credential: {upstream}")
        }
        Error::InvalidRequest { .. } | Error::RateLimited { .. } | Error::Overloaded { .. } => {
            upstream
        }
        // Their text names what the client has no business knowing (the
        // upstream's address, the key command and its output): the log
        // has it.
        Error::Transport { .. } => {
            tracing::warn!(error = %e, "the provider could not be reached");
            format!("The provider could not be reached ({}).", e.kind())
        }
        Error::Refresh { .. } => {
            tracing::warn!(error = %e, "the deployment's credential could not be refreshed");
            "The gateway could not refresh its credential for the provider.".to_owned()
        }
        other => other.to_string(),
    };
    Failure {
        status,
        kind,
        code: Some(
            e.api_error()
                .and_then(|a| a.code())
                .unwrap_or(e.kind())
                .to_owned(),
        ),
        param: None,
        message,
        retry_after: e.retry_after(),
    }
}

/// A client's request, read.
pub struct Parsed {
    /// The `model` it names.
    pub model: String,
    pub request: ChatRequest,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Parameters with no place in [`ChatRequest`] that only OpenAI's wire
/// takes: passed through to OpenAI-compatible deployments, dropped or
/// refused for others.
const ADVISORY: [&str; 3] = ["user", "metadata", "store"];

/// Reads a request body. `openai_wire`: whether every deployment of the
/// model speaks OpenAI's wire; `drop_params`: whether parameters another
/// provider does not take are dropped (else refused).
pub fn parse(
    body: &[u8],
    openai_wire: impl Fn(&str) -> Option<bool>,
    drop_params: bool,
) -> Result<Parsed, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut body) = value else {
        return Err(Failure::invalid("the body is not a JSON object"));
    };
    let model = match body.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(_) => return Err(Failure::invalid("`model` is not a string").param("model")),
        None => return Err(Failure::invalid("`model` is required").param("model")),
    };
    let Some(openai_wire) = openai_wire(&model) else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "The model `{model}` does not exist on this gateway; GET /v1/models lists them."
            ),
        )
        .param("model"));
    };
    let mut req = ChatRequest::new(model.as_str());
    // OpenAI's default: the whole answer at once.
    req.stream = false;
    let messages = match body.remove("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(Failure::invalid("`messages` is empty").param("messages"));
        }
        Some(_) => return Err(Failure::invalid("`messages` is not a list").param("messages")),
        None => return Err(Failure::invalid("`messages` is required").param("messages")),
    };
    req = req.messages(
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| message(m).map_err(|e| e.param(&format!("messages[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let mut include_usage = false;
    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "stream" => req.stream = value.as_bool().ok_or_else(|| not_a("stream", "boolean"))?,
            "stream_options" => {
                include_usage = value
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            }
            "max_tokens" | "max_completion_tokens" => {
                let n = value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| not_a(&key, "positive integer"))?;
                req.max_tokens = Some(n);
            }
            "temperature" => req.temperature = Some(float(&value, &key)?),
            "top_p" => req.top_p = Some(float(&value, &key)?),
            "n" => {
                if value.as_u64() != Some(1) {
                    return Err(Failure::invalid("only n = 1 is supported").param("n"));
                }
            }
            "stop" => {
                req.stop = match value {
                    Value::String(s) => vec![s],
                    Value::Array(a) => a
                        .into_iter()
                        .map(|s| match s {
                            Value::String(s) => Ok(s),
                            _ => Err(not_a("stop", "string or list of strings")),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(not_a("stop", "string or list of strings")),
                }
            }
            "tools" => {
                let Value::Array(tools) = value else {
                    return Err(not_a("tools", "list"));
                };
                req = req.tools(tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?);
            }
            "tool_choice" => req.tool_choice = Some(tool_choice(&value)?),
            "response_format" => req.response_format = response_format(&value)?,
            "reasoning_effort" => {
                let effort = match value.as_str() {
                    Some("minimal") => Effort::Minimal,
                    Some("low") => Effort::Low,
                    Some("medium") => Effort::Medium,
                    Some("high") => Effort::High,
                    Some("none") => continue,
                    _ => return Err(not_a("reasoning_effort", "minimal, low, medium or high")),
                };
                req.reasoning = Some(Reasoning::effort(effort));
            }
            "prompt_cache_key" => {
                req.prompt_cache_key = Some(
                    value
                        .as_str()
                        .ok_or_else(|| not_a(&key, "string"))?
                        .to_owned(),
                )
            }
            other => {
                if openai_wire {
                    req = req.extra(other, value);
                } else if !(drop_params || ADVISORY.contains(&other)) {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "unsupported_parameter",
                        format!(
                            "`{other}` is not supported by the provider of `{model}`; set \
                             litellm_settings.drop_params: true to drop such parameters"
                        ),
                    )
                    .param(other));
                }
            }
        }
    }
    Ok(Parsed {
        model,
        request: req,
        include_usage,
    })
}

fn not_a(param: &str, what: &str) -> Failure {
    Failure::invalid(format!("`{param}` is not a {what}")).param(param)
}

fn float(v: &Value, param: &str) -> Result<f32, Failure> {
    v.as_f64()
        .filter(|f| f.is_finite() && (0.0..=100.0).contains(f))
        .map(|f| f as f32)
        .ok_or_else(|| not_a(param, "number"))
}

/// The text of a `content` that is a string or a list of text parts.
fn text_of(content: &Value) -> Result<String, Failure> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => return Err(Failure::invalid("only text parts are accepted here")),
                }
            }
            Ok(text)
        }
        _ => Err(Failure::invalid(
            "`content` is not a string or a list of parts",
        )),
    }
}

fn message(m: &Value) -> Result<Message, Failure> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").unwrap_or(&Value::Null);
    match role {
        "system" | "developer" => Ok(Message::system(text_of(content)?)),
        "user" => match content {
            Value::Array(parts) => Ok(Message::new(
                Role::User,
                parts.iter().map(user_part).collect::<Result<_, _>>()?,
            )),
            other => Ok(Message::user(text_of(other)?)),
        },
        "assistant" => {
            let mut parts = Vec::new();
            let text = text_of(content)?;
            if !text.is_empty() {
                parts.push(ContentPart::Text(text));
            }
            if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
                let Value::Array(calls) = calls else {
                    return Err(Failure::invalid("`tool_calls` is not a list"));
                };
                for call in calls {
                    let id = call.get("id").and_then(Value::as_str);
                    let f = call.get("function");
                    let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                    let args = f
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let (Some(id), Some(name)) = (id, name) else {
                        return Err(Failure::invalid(
                            "a tool call needs an id and a function name",
                        ));
                    };
                    let arguments = if args.trim().is_empty() {
                        Value::Object(Map::new())
                    } else {
                        serde_json::from_str(args).map_err(|_| {
                            Failure::invalid("a tool call's arguments are not valid JSON")
                        })?
                    };
                    parts.push(ContentPart::ToolUse {
                        id: id.to_owned(),
                        name: name.to_owned(),
                        arguments,
                    });
                }
            }
            Ok(Message::new(Role::Assistant, parts))
        }
        "tool" => {
            let id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| Failure::invalid("a tool message needs `tool_call_id`"))?;
            Ok(Message::tool_result(id, text_of(content)?))
        }
        "" => Err(Failure::invalid("a message has no `role`")),
        other => Err(Failure::invalid(format!(
            "the role `{other}` is not supported"
        ))),
    }
}

fn user_part(part: &Value) -> Result<ContentPart, Failure> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => match part.get("text") {
            Some(Value::String(t)) => Ok(ContentPart::Text(t.clone())),
            _ => Err(Failure::invalid("a text part has no `text`")),
        },
        Some("image_url") => {
            let url = part
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| Failure::invalid("an image part has no `image_url.url`"))?;
            Ok(ContentPart::Image(match url.strip_prefix("data:") {
                Some(rest) => {
                    let (media_type, data) = rest
                        .split_once(";base64,")
                        .ok_or_else(|| Failure::invalid("a data: image URL is not base64"))?;
                    Image::Base64 {
                        media_type: media_type.to_owned(),
                        data: data.to_owned(),
                    }
                }
                None => Image::Url(url.to_owned()),
            }))
        }
        Some(other) => Err(Failure::invalid(format!(
            "content parts of type `{other}` are not supported"
        ))),
        None => Err(Failure::invalid("a content part has no `type`")),
    }
}

fn tool(t: &Value) -> Result<Tool, Failure> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(Failure::invalid("only tools of type `function` are supported").param("tools"));
    }
    let f = t.get("function").unwrap_or(&Value::Null);
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::invalid("a tool has no `function.name`").param("tools"))?;
    let parameters = f
        .get("parameters")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
    let mut tool = Tool::new(name, "", parameters);
    tool.description = f
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(tool)
}

fn tool_choice(v: &Value) -> Result<ToolChoice, Failure> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(not_a("tool_choice", "auto, none, required or a function")),
        },
        Value::Object(_) => v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Tool(n.to_owned()))
            .ok_or_else(|| not_a("tool_choice", "auto, none, required or a function")),
        _ => Err(not_a("tool_choice", "auto, none, required or a function")),
    }
}

fn response_format(v: &Value) -> Result<Option<ResponseFormat>, Failure> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::Json)),
        Some("json_schema") => {
            let s = v.get("json_schema").unwrap_or(&Value::Null);
            let name = s.get("name").and_then(Value::as_str).unwrap_or("response");
            let schema = s
                .get("schema")
                .cloned()
                .ok_or_else(|| not_a("response_format", "json_schema with a `schema`"))?;
            let strict = s.get("strict").and_then(Value::as_bool).unwrap_or(false);
            Ok(Some(
                ResponseFormat::json_schema(name, schema).strict(strict),
            ))
        }
        _ => Err(not_a(
            "response_format",
            "text, json_object or json_schema format",
        )),
    }
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(stop: Option<&StopReason>, tool_calls: bool) -> &'static str {
    match stop {
        Some(StopReason::MaxTokens) => "length",
        Some(StopReason::ToolUse) => "tool_calls",
        Some(StopReason::ContentFilter) | Some(StopReason::Refusal) => "content_filter",
        _ if tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// OpenAI's `usage`.
#[derive(Serialize)]
pub struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl From<&Usage> for UsageOut {
    fn from(u: &Usage) -> UsageOut {
        // Both count every token read, cached ones included.
        let prompt = u.input_tokens;
        UsageOut {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt.saturating_add(u.output_tokens),
            prompt_tokens_details: u
                .cache_read_input_tokens
                .map(|cached_tokens| PromptDetails { cached_tokens }),
            completion_tokens_details: u
                .reasoning_tokens
                .map(|reasoning_tokens| CompletionDetails { reasoning_tokens }),
        }
    }
}

/// One `chat.completion` from a folded answer.
pub fn completion_body(id: &str, created: u64, model: &str, c: &Completion) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: [Choice<'a>; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<UsageOut>,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: Msg<'a>,
        finish_reason: &'static str,
        logprobs: Option<()>,
    }
    #[derive(Serialize)]
    struct Msg<'a> {
        role: &'static str,
        content: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        refusal: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<CallOut<'a>>,
    }
    let tool_calls: Vec<CallOut<'_>> = c
        .tool_calls
        .iter()
        .map(|t| CallOut {
            index: None,
            id: Some(&t.id),
            kind: Some("function"),
            function: FunctionOut {
                name: Some(&t.name),
                arguments: &t.raw_arguments,
            },
        })
        .collect();
    let body = Body {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [Choice {
            index: 0,
            message: Msg {
                role: "assistant",
                content: (!c.text.is_empty() || c.tool_calls.is_empty()).then_some(c.text.as_str()),
                refusal: (!c.refusal.is_empty()).then_some(c.refusal.as_str()),
                reasoning_content: (!c.thinking.is_empty()).then_some(c.thinking.as_str()),
                tool_calls,
            },
            finish_reason: finish_reason(c.stop_reason.as_ref(), !c.tool_calls.is_empty()),
            logprobs: None,
        }],
        usage: c.usage.as_ref().map(UsageOut::from),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

#[derive(Serialize)]
struct CallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// Writes a stream's events as `chat.completion.chunk`s.
pub struct Chunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Whether the opening chunk (the role) went out.
    opened: bool,
    tool_calls: bool,
    finished: bool,
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
    logprobs: Option<()>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[CallOut<'a>; 1]>,
}

impl Chunks {
    pub fn new(id: String, created: u64, model: String, include_usage: bool) -> Chunks {
        Chunks {
            id,
            created,
            model,
            include_usage,
            opened: false,
            tool_calls: false,
            finished: false,
            usage: None,
        }
    }

    /// Appends the SSE lines for `event` to `out`.
    pub fn push(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        let delta = match event {
            StreamEvent::MessageStart { id: Some(id), .. } if !self.opened => {
                self.id = format!("chatcmpl-{}", id.trim_start_matches("chatcmpl-"));
                return;
            }
            StreamEvent::TextDelta { text } => Delta {
                content: Some(text),
                ..Delta::default()
            },
            StreamEvent::ThinkingDelta { text } => Delta {
                reasoning_content: Some(text),
                ..Delta::default()
            },
            StreamEvent::RefusalDelta { text } => Delta {
                refusal: Some(text),
                ..Delta::default()
            },
            StreamEvent::ToolCallStart { index, id, name } => {
                self.tool_calls = true;
                Delta {
                    tool_calls: Some([CallOut {
                        index: Some(*index),
                        id: Some(id),
                        kind: Some("function"),
                        function: FunctionOut {
                            name: Some(name),
                            arguments: "",
                        },
                    }]),
                    ..Delta::default()
                }
            }
            StreamEvent::ToolCallDelta { index, arguments } => Delta {
                tool_calls: Some([CallOut {
                    index: Some(*index),
                    id: None,
                    kind: None,
                    function: FunctionOut {
                        name: None,
                        arguments,
                    },
                }]),
                ..Delta::default()
            },
            StreamEvent::Usage(u) => {
                self.usage = Some(*u);
                return;
            }
            StreamEvent::Done { stop_reason } => {
                self.open(out);
                let reason = finish_reason(stop_reason.as_ref(), self.tool_calls);
                self.finished = true;
                self.write(out, Delta::default(), Some(reason), None);
                return;
            }
            _ => return,
        };
        self.open(out);
        self.write(out, delta, None, None);
    }

    /// The end of a stream that ended well: the finish (if the provider
    /// gave none), the usage when asked for, `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.open(out);
        if !self.finished {
            self.finished = true;
            let reason = finish_reason(None, self.tool_calls);
            self.write(out, Delta::default(), Some(reason), None);
        }
        if self.include_usage {
            let usage = UsageOut::from(&self.usage.take().unwrap_or_default());
            let chunk = Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage: Some(usage),
            };
            sse(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn open(&mut self, out: &mut Vec<u8>) {
        if !self.opened {
            self.opened = true;
            let delta = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            self.write(out, delta, None, None);
        }
    }

    fn write(
        &self,
        out: &mut Vec<u8>,
        delta: Delta<'_>,
        finish: Option<&'static str>,
        usage: Option<UsageOut>,
    ) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
            usage,
        };
        sse(out, &chunk);
    }
}

/// `data: {json}\n\n`.
pub fn sse(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    // Writing to a Vec cannot fail, and the types here serialize.
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}

/// The in-stream error event of a stream that failed after output.
pub fn error_event(out: &mut Vec<u8>, e: &Error) {
    let f = failure(e);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(f.body().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(body: Value, openai_wire: bool) -> Parsed {
        parse(body.to_string().as_bytes(), |_| Some(openai_wire), false)
            .unwrap_or_else(|f| panic!("{}", f.body()))
    }

    #[test]
    fn a_request_with_tools_and_history_reads() {
        let p = parse_ok(
            serde_json::json!({
                "model": "m",
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_completion_tokens": 100,
                "messages": [
                    {"role": "developer", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "hi"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "42"}
                ],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "seed": 7
            }),
            true,
        );
        assert!(p.include_usage);
        assert!(p.request.stream);
        assert_eq!(p.request.max_tokens, Some(100));
        assert_eq!(p.request.messages.len(), 4);
        assert_eq!(p.request.tools[0].name, "f");
        assert_eq!(p.request.tool_choice, Some(ToolChoice::Tool("f".into())));
        assert_eq!(p.request.extra["seed"], 7);
    }

    #[test]
    fn openai_only_parameters_are_refused_or_dropped_for_other_providers() {
        let body =
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":1,"user":"u"}"#;
        let f = parse(body, |_| Some(false), false).err().unwrap();
        assert_eq!(f.param.as_deref(), Some("seed"));
        let p = parse(body, |_| Some(false), true).ok().unwrap();
        assert!(p.request.extra.is_empty());
    }

    #[test]
    fn bad_requests_name_their_fault() {
        for (body, status, says) in [
            (&b"{not json"[..], 400, "not valid JSON"),
            (b"[]", 400, "not a JSON object"),
            (br#"{"messages":[]}"#, 400, "`model` is required"),
            (
                br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
                404,
                "does not exist",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
                400,
                "n = 1",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                400,
                "max_tokens",
            ),
            (b"\xff\xfe", 400, "not valid JSON"),
        ] {
            let f = parse(body, |m| (m == "m").then_some(true), false)
                .err()
                .unwrap();
            assert_eq!(f.status.as_u16(), status, "{}", f.body());
            assert!(f.body().contains(says), "{}", f.body());
        }
    }

    #[test]
    fn a_stream_becomes_openai_chunks() {
        let mut c = Chunks::new("chatcmpl-x".into(), 1, "m".into(), true);
        let mut out = Vec::new();
        for e in [
            StreamEvent::MessageStart {
                id: Some("abc".into()),
                model: None,
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{}".into(),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 2,
                ..Usage::default()
            }),
            StreamEvent::Done {
                stop_reason: Some(StopReason::ToolUse),
            },
        ] {
            c.push(&e, &mut out);
        }
        c.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\n\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].contains(r#""role":"assistant""#));
        assert!(lines[1].contains(r#""id":"chatcmpl-abc""#));
        assert!(lines[1].contains(r#""name":"f""#));
        assert!(lines[3].contains(r#""finish_reason":"tool_calls""#));
        assert!(lines[4].contains(r#""total_tokens":5"#));
        assert_eq!(lines[5], "data: [DONE]");
    }
}
