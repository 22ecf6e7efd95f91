//! An OpenAI-compatible chat-completions client, as an engine [`Model`].
//!
//! `POST {base_url}/chat/completions`, whole answers or streamed as server-sent events. A call
//! that meets 429 or a 5xx answer (or no connection) is tried again after a growing, jittered
//! pause (or the server's `Retry-After`, when it is short); the engine's model deadline bounds
//! the whole call, retries included, and its circuit breaker counts the call once. Token counts
//! come from the server's `usage`, streamed ones too (`stream_options.include_usage`).

#[cfg(feature = "fake")]
pub mod fake;
mod sse;

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};
use switchboard_engine::{ChatRole, Delta, DeltaStream, Model, ModelError, ModelRequest, ModelResponse, Usage};

pub use sse::{SseError, SseParser};

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_mtok: f64,
    /// Per million answer tokens.
    pub output_per_mtok: f64,
}

/// How to reach the model.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The API's root, e.g. `https://api.openai.com/v1`; `/chat/completions` is added.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when given.
    pub api_key: Option<ApiKey>,
    /// The model to ask, e.g. `gpt-4o-mini`.
    pub model: String,
    /// Tries after the first when the server is overloaded or failing (default 2).
    pub max_retries: u32,
    /// The pause before the first retry; it doubles for each further one (default 500 ms).
    pub backoff: Duration,
    /// The model's price, to record what each call cost.
    pub price: Option<Price>,
}

/// An API key: never printed, not even in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

impl OpenAiConfig {
    /// A model at `base_url`, with the default retries and no price.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            max_retries: 2,
            backoff: Duration::from_millis(500),
            price: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The base URL is not an http(s) URL.
    #[error("the LLM base URL `{0}` is not an http:// or https:// URL")]
    BadUrl(String),
    /// No model name.
    #[error("an LLM base URL needs the model's name as well (--llm-model)")]
    NoModel,
    /// The HTTP client could not be built (no TLS roots, for one).
    #[error("the HTTP client for the LLM cannot be built: {0}")]
    Client(String),
}

/// The longest pause a server's `Retry-After` may ask for and still be waited for; past it the
/// call fails at once (the engine's model deadline is 20 s by default).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The largest whole (not streamed) answer read.
const MAX_BODY: usize = 4 << 20;

/// An OpenAI-compatible chat-completions model.
#[derive(Debug, Clone)]
pub struct OpenAiModel {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    host: String,
    config: OpenAiConfig,
}

impl OpenAiModel {
    /// Checks the configuration and builds the client.
    pub fn new(config: OpenAiConfig) -> Result<Self, ConfigError> {
        if config.model.trim().is_empty() {
            return Err(ConfigError::NoModel);
        }
        let bad_url = || ConfigError::BadUrl(config.base_url.clone());
        let base = reqwest::Url::parse(config.base_url.trim_end_matches('/')).map_err(|_| bad_url())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad_url());
        }
        let endpoint = reqwest::Url::parse(&format!("{}/chat/completions", base.as_str().trim_end_matches('/')))
            .map_err(|_| bad_url())?;
        let host = base.host_str().unwrap_or_default().to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(Self {
            http,
            endpoint,
            host,
            config,
        })
    }

    fn body(&self, request: &ModelRequest, stream: bool) -> Value {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    ChatRole::System => "system",
                    ChatRole::User => "user",
                    ChatRole::Assistant => "assistant",
                };
                json!({ "role": role, "content": m.content })
            })
            .collect();
        let mut body = json!({ "model": self.config.model, "messages": messages, "stream": stream });
        if let Some(max_tokens) = request.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        if request.json {
            body["response_format"] = json!({ "type": "json_object" });
        }
        if stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    /// Sends the request, trying again on 429, 5xx and failed connections; the answer has a
    /// success status.
    async fn send(&self, body: &Value) -> Result<reqwest::Response, ModelError> {
        let mut attempt = 0;
        loop {
            let mut request = self.http.post(self.endpoint.clone()).json(body);
            if let Some(key) = &self.config.api_key {
                request = request.bearer_auth(key.expose());
            }
            let (error, retry_after) = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => self.refusal(response).await,
                Err(error) => (
                    ModelError::transient(format!("{} could not be reached ({})", self.host, root_cause(&error))),
                    None,
                ),
            };
            let attempts = attempt + 1;
            let told = |error: ModelError| match attempts {
                1 => error,
                n => ModelError {
                    message: format!("{} (after {n} attempts)", error.message),
                    retryable: error.retryable,
                },
            };
            if !error.retryable || attempt >= self.config.max_retries {
                return Err(told(error));
            }
            let pause = match retry_after {
                Some(wait) if wait > MAX_RETRY_AFTER => {
                    return Err(told(ModelError::transient(format!(
                        "{}; it asks to wait {} s",
                        error.message,
                        wait.as_secs()
                    ))));
                }
                Some(wait) => wait,
                None => self.backoff(attempt),
            };
            tracing::info!(model = %self.config.model, attempt = attempts, error = %error, ?pause, "retrying the model call");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// The pause before retry `attempt` (0-based): the backoff doubled each time, with jitter
    /// (between half and all of it) so that clients refused together do not return together.
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self.config.backoff.saturating_mul(1 << attempt.min(10));
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// A non-success answer as an error (retryable for 429 and 5xx), with the server's
    /// `Retry-After` when it gave one in seconds.
    async fn refusal(&self, response: reqwest::Response) -> (ModelError, Option<Duration>) {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let detail = read_capped(response, 64 << 10)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
            .and_then(|body| body["error"]["message"].as_str().map(|m| shorten(m, 200)))
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        let message = format!("{} answered {}{detail}", self.host, status_text(status));
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        let error = if retryable {
            ModelError::transient(message)
        } else {
            ModelError::permanent(message)
        };
        (error, retry_after)
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The innermost cause of a transport error, which says what happened ("Connection refused").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Reads a whole body, refusing one larger than `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Vec<u8>, ModelError> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ModelError::transient(format!("the answer broke off ({})", root_cause(&e))))?;
        if body.len() + chunk.len() > cap {
            return Err(ModelError::permanent(format!("the answer is larger than {cap} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    Some(Usage {
        input_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// A whole chat completion: its text and usage.
fn completion(body: &[u8]) -> Result<ModelResponse, ModelError> {
    let malformed = |why: &str| ModelError::permanent(format!("the answer is not a chat completion ({why})"));
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed(&e.to_string()))?;
    let text = value["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| malformed("no choices[0].message.content"))?
        .to_owned();
    Ok(ModelResponse {
        text,
        usage: usage_of(&value).unwrap_or_default(),
    })
}

/// Reads a streamed completion: its text pieces, then its usage.
struct Chunks {
    bytes: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    ready: VecDeque<Result<Delta, ModelError>>,
    /// Nothing more will be read.
    over: bool,
    /// `[DONE]` came.
    done: bool,
    /// A choice said why it finished: the answer is whole.
    finished: bool,
}

impl Chunks {
    fn malformed(why: impl std::fmt::Display) -> ModelError {
        ModelError::permanent(format!("the stream is malformed ({why})"))
    }

    /// Takes one event's data.
    fn event(&mut self, data: &str) -> Result<(), ModelError> {
        if data == "[DONE]" {
            self.done = true;
            self.over = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(data).map_err(Self::malformed)?;
        if let Some(message) = value["error"]["message"].as_str() {
            return Err(ModelError::transient(format!(
                "the stream ended with an error ({})",
                shorten(message, 200)
            )));
        }
        if !value.is_object() {
            return Err(Self::malformed("an event is not a JSON object"));
        }
        if let Some(choice) = value["choices"].get(0) {
            if let Some(text) = choice["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                self.ready.push_back(Ok(Delta::Text(text.to_owned())));
            }
            if choice["finish_reason"].is_string() {
                self.finished = true;
            }
        }
        if let Some(usage) = usage_of(&value) {
            self.ready.push_back(Ok(Delta::Usage(usage)));
        }
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<Delta, ModelError>> {
        loop {
            if let Some(delta) = self.ready.pop_front() {
                return Some(delta);
            }
            if self.over {
                return None;
            }
            let outcome = match self.bytes.next().await {
                Some(Ok(bytes)) => self
                    .parser
                    .feed(&bytes)
                    .map_err(Self::malformed)
                    .and_then(|events| events.iter().try_for_each(|data| self.event(data))),
                Some(Err(error)) => Err(ModelError::transient(format!(
                    "the stream broke off ({})",
                    root_cause(&error)
                ))),
                None => self.end(),
            };
            if let Err(error) = outcome {
                // The text read before the error is still given, then the error ends the stream.
                self.over = true;
                self.ready.push_back(Err(error));
            }
        }
    }

    /// The body is over: takes an event no blank line closed; a stream that ends neither with
    /// `[DONE]` nor with a finished choice broke off.
    fn end(&mut self) -> Result<(), ModelError> {
        self.over = true;
        if let Some(data) = self.parser.finish().map_err(Self::malformed)? {
            self.event(&data)?;
        }
        if self.done || self.finished {
            Ok(())
        } else {
            Err(ModelError::transient("the stream broke off before its end"))
        }
    }
}

#[async_trait]
impl Model for OpenAiModel {
    fn name(&self) -> &str {
        &self.config.model
    }

    fn cost_usd(&self, usage: Usage) -> Option<f64> {
        let price = self.config.price?;
        Some(
            (usage.input_tokens as f64 * price.input_per_mtok + usage.output_tokens as f64 * price.output_per_mtok)
                / 1e6,
        )
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let response = self.send(&self.body(&request, false)).await?;
        completion(&read_capped(response, MAX_BODY).await?)
    }

    async fn stream(&self, request: ModelRequest) -> Result<DeltaStream, ModelError> {
        let response = self.send(&self.body(&request, true)).await?;
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            // A server that does not stream answers whole.
            let whole = completion(&read_capped(response, MAX_BODY).await?)?;
            let deltas = [Ok(Delta::Text(whole.text)), Ok(Delta::Usage(whole.usage))];
            return Ok(futures_util::stream::iter(deltas).boxed());
        }
        let chunks = Chunks {
            bytes: response.bytes_stream().boxed(),
            parser: SseParser::default(),
            ready: VecDeque::new(),
            over: false,
            done: false,
            finished: false,
        };
        Ok(futures_util::stream::unfold(chunks, |mut chunks| async move {
            chunks.next().await.map(|delta| (delta, chunks))
        })
        .boxed())
    }
}
