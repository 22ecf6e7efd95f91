//! Agents: the `Agent` trait, what an agent is given (`AgentContext`) and what it gives back.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_protocol::{AgentErrorCode, AgentName, AgentThinking, PartialResult, RunId, ThreadId, TraceId, UserId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{ModelCallError, ModelHandle, ModelRequest};
use crate::report::{Report, Reporter};
use crate::tool::{ToolCallError, Tools};

/// One agent of a run: triage, data, reporting, or any other registered one.
///
/// The engine runs `run` in a task of its own under the agent deadline; when the deadline passes
/// or the run is stopped the future is dropped. Agents need not watch `ctx.cancel` to be stopped,
/// but long computations should check it to stop promptly.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Does the agent's part of the run.
    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError>;

    /// What the agent is about to do, shown in its `agent_started`.
    fn task(&self, ctx: &AgentContext) -> String {
        let _ = ctx;
        "working on the request".to_owned()
    }
}

/// What a finished agent gives back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentOutput {
    /// Structured findings for later agents (and, from the last agent, the run's result).
    pub data: Value,
    /// From the first agent (triage): which agents should run next, in order.
    pub plan: Option<Vec<AgentName>>,
    /// The answer to the user, in Markdown (from the reporting agent).
    pub answer: Option<String>,
}

impl AgentOutput {
    /// Findings only.
    pub fn data(data: Value) -> Self {
        Self {
            data,
            ..Self::default()
        }
    }
}

/// Why an agent could not do its part; the text is a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// A tool call failed.
    #[error(transparent)]
    Tool(#[from] ToolCallError),
    /// A model call failed.
    #[error(transparent)]
    Model(#[from] ModelCallError),
    /// The agent gave up for a reason of its own.
    #[error("{0}")]
    Failed(String),
}

impl AgentError {
    /// The `agent_error` code this failure is reported with.
    pub fn code(&self) -> AgentErrorCode {
        match self {
            AgentError::Tool(e) => e.code(),
            AgentError::Model(ModelCallError::Timeout { .. }) => AgentErrorCode::Timeout,
            AgentError::Model(ModelCallError::CircuitOpen { .. }) => AgentErrorCode::CircuitOpen,
            AgentError::Model(ModelCallError::Failed { .. }) => AgentErrorCode::LlmError,
            AgentError::Failed(_) => AgentErrorCode::Internal,
        }
    }

    /// Whether sending the message again may help.
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Tool(e) => e.retryable(),
            AgentError::Model(ModelCallError::Failed { source, .. }) => source.retryable,
            AgentError::Model(_) => true,
            AgentError::Failed(_) => false,
        }
    }
}

/// How an earlier agent of the run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutcome {
    /// It finished with findings.
    Completed(AgentOutput),
    /// It failed, timed out or crashed.
    Failed {
        /// How it was reported.
        code: AgentErrorCode,
        /// The sentence that was reported.
        message: String,
    },
}

/// An earlier agent of the run and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// The agent.
    pub name: AgentName,
    /// How it ended.
    pub outcome: AgentOutcome,
}

/// The run an agent works for.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The run.
    pub run_id: RunId,
    /// The user who sent the message.
    pub user_id: UserId,
    /// The thread of the message.
    pub thread_id: ThreadId,
    /// The run's trace id.
    pub trace_id: TraceId,
    /// What the user wrote.
    pub request: String,
}

/// Everything an agent is given for one run.
#[derive(Debug, Clone)]
pub struct AgentContext {
    /// This agent's name.
    pub agent: AgentName,
    /// The run and the user's request.
    pub run: Arc<RunInfo>,
    /// The agents that ran before, in order.
    pub earlier: Arc<Vec<AgentRecord>>,
    /// Narration and partial answers.
    pub events: Events,
    /// The run's language model.
    pub model: ModelHandle,
    /// The tools this agent may call.
    pub tools: Tools,
    /// Cancelled when the run is stopped or this agent's deadline passes.
    pub cancel: CancellationToken,
    /// When this agent will be stopped.
    pub deadline: Instant,
}

impl AgentContext {
    /// The user's request.
    pub fn request(&self) -> &str {
        &self.run.request
    }

    /// The findings of an earlier agent that completed.
    pub fn output_of(&self, agent: &str) -> Option<&AgentOutput> {
        self.earlier.iter().rev().find_map(|r| match &r.outcome {
            AgentOutcome::Completed(output) if r.name.as_str() == agent => Some(output),
            _ => None,
        })
    }

    /// The earlier agents that failed: their part is missing.
    pub fn missing(&self) -> Vec<AgentName> {
        self.earlier
            .iter()
            .filter(|r| matches!(r.outcome, AgentOutcome::Failed { .. }))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Streams a model answer to the user as `partial_result` events and returns the whole text.
    pub async fn stream_answer(&self, request: ModelRequest) -> Result<String, ModelCallError> {
        let mut stream = self.model.stream(request).await?;
        let mut text = String::new();
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            if !piece.is_empty() {
                self.events.partial(piece.clone()).await;
                text.push_str(&piece);
            }
        }
        Ok(text)
    }
}

/// How an agent narrates its work. Events sent after the agent was closed are dropped.
#[derive(Debug, Clone)]
pub struct Events {
    pub(crate) reporter: Reporter,
}

impl Events {
    /// `agent_thinking` with a text.
    pub async fn thinking(&self, text: impl Into<String>) {
        self.reporter
            .send(Report::Thinking(AgentThinking {
                text: text.into(),
                step: None,
                progress: None,
            }))
            .await;
    }

    /// `agent_thinking` with a step number and a progress from 0 to 1 (clamped).
    pub async fn step(&self, text: impl Into<String>, step: u32, progress: f64) {
        let progress = if progress.is_finite() {
            progress.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.reporter
            .send(Report::Thinking(AgentThinking {
                text: text.into(),
                step: Some(step),
                progress: Some(progress),
            }))
            .await;
    }

    /// `partial_result`: the next piece of the answer.
    pub async fn partial(&self, delta: impl Into<String>) {
        self.reporter
            .send(Report::Partial(PartialResult { delta: delta.into() }))
            .await;
    }
}
