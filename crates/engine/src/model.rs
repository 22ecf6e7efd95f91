//! Language models: the `Model` trait that model clients implement, the handle agents call
//! it through (deadline, circuit breaker, time accounting), and the run's ledger of model calls.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::breaker::{CircuitBreaker, Permit};
use switchboard_protocol::{AgentName, AgentThinking, ModelCallUsage, OperationId, Tier, TierObserver};

use crate::report::{Report, Reporter, human, millis};

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

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// More text of the answer.
    Text(String),
    /// The tokens the whole call used, when the model tells (usually at the end).
    Usage(Usage),
}

/// A streamed answer, piece by piece.
pub type DeltaStream = BoxStream<'static, Result<Delta, ModelError>>;

/// A language model: the offline model, an OpenAI-compatible client, a scripted test model.
#[async_trait]
pub trait Model: Send + Sync + 'static {
    /// The model's name, as told to users (`offline`, `gpt-4o-mini`).
    fn name(&self) -> &str;

    /// What a call that used `usage` costs in US dollars, when the model's price is known.
    fn cost_usd(&self, usage: Usage) -> Option<f64> {
        let _ = usage;
        None
    }

    /// The whole answer at once.
    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError>;

    /// The answer piece by piece. By default, the complete answer as one piece.
    async fn stream(&self, request: ModelRequest) -> Result<DeltaStream, ModelError> {
        let response = self.complete(request).await?;
        let deltas = [Ok(Delta::Text(response.text)), Ok(Delta::Usage(response.usage))];
        Ok(futures_util::stream::iter(deltas).boxed())
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
/// model's circuit breaker, and accounted (time, tokens, cost) in the run's ledger of model
/// calls, also when it is cut off. When the model fails and a fallback model is configured, the
/// user is told why in a sentence and the fallback answers.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    pub(crate) model: Arc<dyn Model>,
    pub(crate) fallback: Option<Arc<dyn Model>>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) timeout: Duration,
    pub(crate) reporter: Reporter,
    pub(crate) ledger: Arc<ModelLedger>,
    pub(crate) turn: Turn,
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

    /// The whole answer at once; from the fallback model when the model fails.
    pub async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelCallError> {
        let error = match self.acquire() {
            Ok(permit) => match self.complete_with(&self.model, Some(permit), request.clone()).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            },
            Err(error) => error,
        };
        let Some(fallback) = &self.fallback else {
            return Err(error);
        };
        self.tell_fallback(&error, fallback.name()).await;
        self.complete_with(fallback, None, request).await
    }

    async fn complete_with(
        &self,
        model: &Arc<dyn Model>,
        permit: Option<Permit>,
        request: ModelRequest,
    ) -> Result<ModelResponse, ModelCallError> {
        let call = self.ledger.enter(self.turn, model);
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, model.complete(request)).await;
        let (result, usage) = match outcome {
            Ok(Ok(response)) => {
                let usage = response.usage;
                (Ok(response), usage)
            }
            Ok(Err(source)) => {
                let error = ModelCallError::Failed {
                    model: model.name().to_owned(),
                    after: started.elapsed(),
                    source,
                };
                (Err(error), Usage::default())
            }
            Err(_) => {
                let error = ModelCallError::Timeout {
                    model: model.name().to_owned(),
                    after: self.timeout,
                };
                (Err(error), Usage::default())
            }
        };
        if let Some(permit) = permit {
            if result.is_ok() {
                permit.success();
            } else {
                permit.failure();
            }
        }
        call.settle(usage, result.is_ok());
        result
    }

    /// Tells the user, in a sentence, that the model failed and the fallback answers instead.
    fn tell_fallback(&self, error: &ModelCallError, fallback: &str) -> impl Future<Output = ()> + Send + 'static {
        let reason = error.to_string();
        let mut chars = reason.chars();
        let reason: String = chars
            .next()
            .map(|first| first.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        let text = format!("{reason}; answering with the {fallback} model instead.");
        let reporter = self.reporter.clone();
        async move {
            reporter
                .send(Report::Thinking(AgentThinking {
                    text,
                    step: None,
                    progress: None,
                }))
                .await;
        }
    }

    /// The answer piece by piece; the model deadline covers the whole stream. When the model
    /// fails (before or during the stream) and a fallback is configured, the fallback's answer
    /// follows; text already streamed stays, separated from it by a blank line.
    pub async fn stream(&self, request: ModelRequest) -> Result<ModelStream, ModelCallError> {
        let mut stream = ModelStream {
            handle: self.clone(),
            model: Arc::clone(&self.model),
            inner: None,
            permit: None,
            call: None,
            started: Instant::now(),
            deadline: Instant::now() + self.timeout,
            usage: Usage::default(),
            fallback: self.fallback.clone().map(|model| (model, request.clone())),
            streamed: false,
        };
        let opened = match self.acquire() {
            Ok(permit) => {
                stream.permit = Some(permit);
                stream.open(request).await
            }
            Err(error) => Err(error),
        };
        match opened {
            Ok(()) => Ok(stream),
            Err(error) => stream.recover(error).await.map(|()| stream),
        }
    }
}

/// One agent's turn in the run's [`ModelLedger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Turn(usize);

/// The run's model calls, in the order they started, shared by the run's model handles and its
/// driver. A handle enters a call when it starts and settles it when it ends; when an agent's
/// turn ends (the agent returned, or its future was dropped at a deadline or a stop) the driver
/// settles what the turn left open, as failed and timed up to that moment. So a call cut off
/// in flight keeps its time, whatever order the agent's task is dropped in.
#[derive(Debug, Default)]
pub(crate) struct ModelLedger {
    state: Mutex<LedgerState>,
    /// Told of each call when it is settled.
    observer: Option<Arc<dyn TierObserver>>,
}

#[derive(Debug, Default)]
struct LedgerState {
    /// Each turn's agent, and whether the turn is still open.
    turns: Vec<(AgentName, bool)>,
    calls: Vec<LedgerEntry>,
}

#[derive(Debug)]
struct LedgerEntry {
    turn: usize,
    model: Arc<dyn Model>,
    started: Instant,
    settled: Option<Settled>,
    /// Its name for the observer.
    id: OperationId,
}

/// How a call ended.
#[derive(Debug, Clone, Copy)]
struct Settled {
    usage: Usage,
    duration: Duration,
    success: bool,
}

impl ModelLedger {
    /// A ledger that tells `observer` of each call as an operation of the model's tier.
    pub(crate) fn observed(observer: Option<Arc<dyn TierObserver>>) -> Self {
        Self {
            state: Mutex::default(),
            observer,
        }
    }

    /// Whether no call was entered.
    pub(crate) fn is_empty(&self) -> bool {
        self.state().calls.is_empty()
    }

    fn state(&self) -> MutexGuard<'_, LedgerState> {
        // The lock is also taken in drop guards: a poisoned one must not panic again.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens `agent`'s turn: its calls are entered from now until [`ModelLedger::end_turn`].
    pub(crate) fn begin_turn(&self, agent: &AgentName) -> Turn {
        let mut state = self.state();
        state.turns.push((agent.clone(), true));
        Turn(state.turns.len() - 1)
    }

    /// Enters a call of `model` that starts now. A call started after its turn ended (by a task
    /// the agent left behind) is not entered: like the agent's reports, it no longer reaches the run.
    fn enter(self: &Arc<Self>, turn: Turn, model: &Arc<dyn Model>) -> OpenCall {
        let mut state = self.state();
        let open = state.turns.get(turn.0).is_some_and(|(_, open)| *open);
        let index = open.then(|| {
            let id = OperationId::next();
            if let Some(observer) = &self.observer {
                observer.began(Tier::Model, id);
            }
            state.calls.push(LedgerEntry {
                turn: turn.0,
                model: Arc::clone(model),
                started: Instant::now(),
                settled: None,
                id,
            });
            state.calls.len() - 1
        });
        // A span for the call, under the agent's; it ends when the call is settled.
        let span = tracing::info_span!(
            "model",
            model = model.name(),
            input_tokens = tracing::field::Empty,
            output_tokens = tracing::field::Empty,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        OpenCall {
            ledger: Arc::clone(self),
            index,
            span: Some(span),
        }
    }

    /// Settles the call at `index`, timed up to now; a call already settled keeps how it ended.
    fn settle(&self, index: usize, usage: Usage, ended: Ended) {
        if let Some(entry) = self.state().calls.get_mut(index) {
            settle(entry, usage, ended, self.observer.as_deref());
        }
    }

    /// Ends a turn: the calls it left open are settled as failed, timed up to now.
    pub(crate) fn end_turn(&self, turn: Turn) {
        let mut state = self.state();
        if let Some((_, open)) = state.turns.get_mut(turn.0) {
            *open = false;
        }
        for entry in state.calls.iter_mut().filter(|entry| entry.turn == turn.0) {
            settle(entry, Usage::default(), Ended::CutOff, self.observer.as_deref());
        }
    }

    /// Ends every turn (settling what is open, as in [`ModelLedger::end_turn`]) and returns the
    /// run's calls in the order they started, with the time they took together.
    pub(crate) fn close(&self) -> (Vec<ModelCallUsage>, Duration) {
        let mut state = self.state();
        let state = &mut *state;
        for (_, open) in &mut state.turns {
            *open = false;
        }
        let mut total = Duration::ZERO;
        let calls = state
            .calls
            .iter_mut()
            .map(|entry| {
                let settled = settle(entry, Usage::default(), Ended::CutOff, self.observer.as_deref());
                total += settled.duration;
                ModelCallUsage {
                    agent: state.turns[entry.turn].0.clone(),
                    model: entry.model.name().to_owned(),
                    input_tokens: settled.usage.input_tokens,
                    output_tokens: settled.usage.output_tokens,
                    cost_usd: entry.model.cost_usd(settled.usage),
                    duration_ms: millis(settled.duration),
                    success: settled.success,
                }
            })
            .collect();
        (calls, total)
    }
}

/// How a model call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It answered.
    Answered,
    /// The model failed it (an error, a deadline, a stream that broke off).
    Failed,
    /// Its caller stopped waiting (a stop, the agent's end, a stream it left unread): not the
    /// model's failure.
    CutOff,
}

/// Settles `entry` unless it already is (and tells `observer`); returns how it ended.
fn settle(entry: &mut LedgerEntry, usage: Usage, ended: Ended, observer: Option<&dyn TierObserver>) -> Settled {
    if let Some(settled) = entry.settled {
        return settled;
    }
    let settled = Settled {
        usage,
        duration: entry.started.elapsed(),
        success: ended == Ended::Answered,
    };
    entry.settled = Some(settled);
    if let Some(observer) = observer {
        observer.operation(Tier::Model, Some(entry.id), settled.duration, ended == Ended::Failed);
    }
    settled
}

/// A call entered in the ledger and not yet settled by its handle. Dropped unsettled (the call's
/// future or stream was dropped), it settles the call as failed.
#[derive(Debug)]
struct OpenCall {
    ledger: Arc<ModelLedger>,
    /// `None` when the call was not entered, or once it is settled.
    index: Option<usize>,
    /// The call's span, until it is settled.
    span: Option<tracing::Span>,
}

impl OpenCall {
    fn settle(self, usage: Usage, success: bool) {
        self.end(usage, if success { Ended::Answered } else { Ended::Failed });
    }

    /// Its caller stopped waiting for it.
    fn cut_off(self, usage: Usage) {
        self.end(usage, Ended::CutOff);
    }

    fn end(mut self, usage: Usage, ended: Ended) {
        self.end_span(usage, ended == Ended::Answered);
        if let Some(index) = self.index.take() {
            self.ledger.settle(index, usage, ended);
        }
    }

    /// Records how the call ended on its span, and ends the span.
    fn end_span(&mut self, usage: Usage, success: bool) {
        if let Some(span) = self.span.take() {
            span.record("input_tokens", usage.input_tokens)
                .record("output_tokens", usage.output_tokens)
                .record("outcome", if success { "ok" } else { "failed" });
            if !success {
                span.record("otel.status_code", "ERROR");
            }
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.end_span(Usage::default(), false);
        if let Some(index) = self.index.take() {
            self.ledger.settle(index, Usage::default(), Ended::CutOff);
        }
    }
}

/// A model answer arriving piece by piece. Read it with [`ModelStream::next`].
pub struct ModelStream {
    handle: ModelHandle,
    model: Arc<dyn Model>,
    inner: Option<DeltaStream>,
    permit: Option<Permit>,
    /// The current model's call in the ledger, until it is settled.
    call: Option<OpenCall>,
    started: Instant,
    deadline: Instant,
    usage: Usage,
    /// The fallback model and the request for it, until it is used.
    fallback: Option<(Arc<dyn Model>, ModelRequest)>,
    /// Whether any text reached the reader.
    streamed: bool,
}

impl Drop for ModelStream {
    /// A stream dropped before its end (the agent stopped reading, or was cut off) ends its
    /// call as failed, with the tokens counted so far.
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.cut_off(self.usage);
        }
    }
}

impl std::fmt::Debug for ModelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStream")
            .field("model", &self.model.name())
            .field("open", &self.inner.is_some())
            .finish()
    }
}

impl ModelStream {
    /// The next piece; `None` at the end. After an error the stream is over.
    pub async fn next(&mut self) -> Option<Result<String, ModelCallError>> {
        loop {
            let inner = self.inner.as_mut()?;
            let error = match tokio::time::timeout_at(self.deadline, inner.next()).await {
                Ok(Some(Ok(Delta::Text(piece)))) => {
                    self.streamed |= !piece.is_empty();
                    return Some(Ok(piece));
                }
                Ok(Some(Ok(Delta::Usage(usage)))) => {
                    self.usage = usage;
                    continue;
                }
                Ok(None) => {
                    self.inner = None;
                    if let Some(permit) = self.permit.take() {
                        permit.success();
                    }
                    if let Some(call) = self.call.take() {
                        call.settle(self.usage, true);
                    }
                    return None;
                }
                Ok(Some(Err(source))) => self.fail(Some(source)),
                Err(_) => self.fail(None),
            };
            let streamed = self.streamed;
            if let Err(error) = self.recover(error).await {
                return Some(Err(error));
            }
            if streamed {
                return Some(Ok("\n\n".to_owned()));
            }
        }
    }

    /// Starts the current model's stream under a fresh deadline.
    async fn open(&mut self, request: ModelRequest) -> Result<(), ModelCallError> {
        self.call = Some(self.handle.ledger.enter(self.handle.turn, &self.model));
        self.started = Instant::now();
        self.deadline = self.started + self.handle.timeout;
        self.usage = Usage::default();
        match tokio::time::timeout_at(self.deadline, self.model.stream(request)).await {
            Ok(Ok(inner)) => {
                self.inner = Some(inner);
                Ok(())
            }
            Ok(Err(source)) => Err(self.fail(Some(source))),
            Err(_) => Err(self.fail(None)),
        }
    }

    /// After `error`: the fallback's stream when there is one left, else `error`.
    async fn recover(&mut self, error: ModelCallError) -> Result<(), ModelCallError> {
        let Some((fallback, request)) = self.fallback.take() else {
            return Err(error);
        };
        self.handle.tell_fallback(&error, fallback.name()).await;
        self.model = fallback;
        self.open(request).await
    }

    /// Ends the current model's call as failed: with `source`, or at the deadline without one.
    fn fail(&mut self, source: Option<ModelError>) -> ModelCallError {
        self.inner = None;
        if let Some(permit) = self.permit.take() {
            permit.failure();
        }
        if let Some(call) = self.call.take() {
            call.settle(self.usage, false);
        }
        let model = self.model.name().to_owned();
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
