//! Language models: the `Model` trait that model clients implement, and the handle agents call
//! it through (deadline, circuit breaker, time accounting).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::breaker::{CircuitBreaker, Permit};
use crate::report::{Report, Reporter, Stage, human};

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One message of a model request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// What it says.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: ChatRole::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: ChatRole::User,
            content: content.into(),
        }
    }
}

/// A request to a model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Upper bound on the answer's length.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Ask for a JSON object as answer.
    pub json: bool,
}

impl ModelRequest {
    /// A request with a system prompt and one user message.
    pub fn new(system: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            messages: vec![ChatMessage::system(system), ChatMessage::user(user)],
            ..Self::default()
        }
    }
}

/// Tokens a call used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
}

/// A model's complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelResponse {
    /// The text.
    pub text: String,
    /// Tokens used, when the model says.
    pub usage: Usage,
}

/// A model failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again later may help.
    pub retryable: bool,
}

impl ModelError {
    /// A failure that may pass (overload, network).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that will not pass by itself (bad request, bad key).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Pieces of text as the model writes them.
pub type TextStream = BoxStream<'static, Result<String, ModelError>>;

/// A language model: the offline model, an OpenAI-compatible client, a scripted test model.
#[async_trait]
pub trait Model: Send + Sync + 'static {
    /// The model's name, as told to users (`offline`, `gpt-4o-mini`).
    fn name(&self) -> &str;

    /// The whole answer at once.
    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError>;

    /// The answer piece by piece. By default, the complete answer as one piece.
    async fn stream(&self, request: ModelRequest) -> Result<TextStream, ModelError> {
        let response = self.complete(request).await?;
        Ok(futures_util::stream::once(async move { Ok(response.text) }).boxed())
    }
}

/// A model call failed; the text is a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelCallError {
    /// The call ran past the model deadline and was dropped.
    #[error("the language model ({model}) did not answer within {}", human(*.after))]
    Timeout {
        /// The model's name.
        model: String,
        /// The deadline.
        after: Duration,
    },
    /// The model answered with an error.
    #[error("the language model ({model}) failed after {}: {source}", human(*.after))]
    Failed {
        /// The model's name.
        model: String,
        /// Time until the failure.
        after: Duration,
        /// The model's error.
        source: ModelError,
    },
    /// The breaker refused the call.
    #[error("the language model ({model}) failed {threshold} times in a row, so calls to it are paused for another {}", human(*.retry_in))]
    CircuitOpen {
        /// The model's name.
        model: String,
        /// Failures that opened the circuit.
        threshold: u32,
        /// Time until a trial call.
        retry_in: Duration,
    },
}

/// How agents call the run's model: each call bounded by the model deadline, counted by the
/// model's circuit breaker, and accounted in the run's timings.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    pub(crate) model: Arc<dyn Model>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) timeout: Duration,
    pub(crate) reporter: Reporter,
}

impl std::fmt::Debug for dyn Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({})", self.name())
    }
}

impl ModelHandle {
    /// The model's name.
    pub fn name(&self) -> &str {
        self.model.name()
    }

    fn acquire(&self) -> Result<Permit, ModelCallError> {
        self.breaker
            .try_acquire()
            .map_err(|refused| ModelCallError::CircuitOpen {
                model: self.name().to_owned(),
                threshold: refused.threshold,
                retry_in: refused.retry_in,
            })
    }

    /// The whole answer at once.
    pub async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelCallError> {
        let permit = self.acquire()?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.model.complete(request)).await;
        self.reporter.send(Report::Spent(Stage::Model, started.elapsed())).await;
        match outcome {
            Ok(Ok(response)) => {
                permit.success();
                Ok(response)
            }
            Ok(Err(source)) => {
                permit.failure();
                Err(ModelCallError::Failed {
                    model: self.name().to_owned(),
                    after: started.elapsed(),
                    source,
                })
            }
            Err(_) => {
                permit.failure();
                Err(ModelCallError::Timeout {
                    model: self.name().to_owned(),
                    after: self.timeout,
                })
            }
        }
    }

    /// The answer piece by piece; the model deadline covers the whole stream.
    pub async fn stream(&self, request: ModelRequest) -> Result<ModelStream, ModelCallError> {
        let permit = self.acquire()?;
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut stream = ModelStream {
            handle: self.clone(),
            inner: None,
            permit: Some(permit),
            started,
            deadline,
        };
        match tokio::time::timeout_at(deadline, self.model.stream(request)).await {
            Ok(Ok(inner)) => {
                stream.inner = Some(inner);
                Ok(stream)
            }
            Ok(Err(source)) => Err(stream.fail(Some(source)).await),
            Err(_) => Err(stream.fail(None).await),
        }
    }
}

/// A model answer arriving piece by piece. Read it with [`ModelStream::next`].
pub struct ModelStream {
    handle: ModelHandle,
    inner: Option<TextStream>,
    permit: Option<Permit>,
    started: Instant,
    deadline: Instant,
}

impl std::fmt::Debug for ModelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStream")
            .field("model", &self.handle.name())
            .field("open", &self.inner.is_some())
            .finish()
    }
}

impl ModelStream {
    /// The next piece; `None` at the end. After an error the stream is over.
    pub async fn next(&mut self) -> Option<Result<String, ModelCallError>> {
        let inner = self.inner.as_mut()?;
        match tokio::time::timeout_at(self.deadline, inner.next()).await {
            Ok(Some(Ok(piece))) => Some(Ok(piece)),
            Ok(None) => {
                self.inner = None;
                if let Some(permit) = self.permit.take() {
                    permit.success();
                }
                self.account().await;
                None
            }
            Ok(Some(Err(source))) => Some(Err(self.fail(Some(source)).await)),
            Err(_) => Some(Err(self.fail(None).await)),
        }
    }

    /// Accounts the stream's time; takes no borrow across the await, so the stream need not be `Sync`.
    fn account(&self) -> impl Future<Output = ()> + Send + 'static {
        let reporter = self.handle.reporter.clone();
        let spent = self.started.elapsed();
        async move { reporter.send(Report::Spent(Stage::Model, spent)).await }
    }

    async fn fail(&mut self, source: Option<ModelError>) -> ModelCallError {
        self.inner = None;
        if let Some(permit) = self.permit.take() {
            permit.failure();
        }
        self.account().await;
        let model = self.handle.name().to_owned();
        match source {
            Some(source) => ModelCallError::Failed {
                model,
                after: self.started.elapsed(),
                source,
            },
            None => ModelCallError::Timeout {
                model,
                after: self.handle.timeout,
            },
        }
    }
}
