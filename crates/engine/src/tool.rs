//! Tools: the `Tool` trait, and the handle through which agents call the tools they may use.
//! The handle, not the agent, writes `tool_executing` and `tool_completed`, applies the tool
//! deadline and the tool's circuit breaker, and runs the tool in a task of its own so that a
//! panic or a hang stays inside the tool.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_protocol::{AgentErrorCode, TierTimes, ToolCompleted, ToolExecuting};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::breaker::CircuitBreaker;
use crate::report::{Report, Reporter, human, millis};

/// A tool failed in a way it knows about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The parameters do not fit the tool.
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// The tool could not do its work.
    #[error("{0}")]
    Failed(String),
}

/// Something an agent can call: JSON parameters in, JSON result out.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// Does the work.
    async fn call(&self, parameters: Value) -> Result<Value, ToolError>;
}

/// A tool call did not give a result; the text is a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolCallError {
    /// The agent asked for a tool it was not given.
    #[error("the {tool} tool is not available to this agent")]
    NotAllowed {
        /// The tool's name.
        tool: String,
    },
    /// The parameters were not a JSON object.
    #[error("the {tool} tool was called with parameters that are not a JSON object")]
    NotAnObject {
        /// The tool's name.
        tool: String,
    },
    /// The call ran past the tool deadline and was dropped.
    #[error("the {tool} tool did not answer within {}", human(*.after))]
    Timeout {
        /// The tool's name.
        tool: String,
        /// The deadline.
        after: Duration,
    },
    /// The tool returned an error.
    #[error("the {tool} tool failed after {}: {source}", human(*.after))]
    Failed {
        /// The tool's name.
        tool: String,
        /// Time until the failure.
        after: Duration,
        /// The tool's error.
        source: ToolError,
    },
    /// The tool panicked.
    #[error("the {tool} tool crashed after {}", human(*.after))]
    Panicked {
        /// The tool's name.
        tool: String,
        /// Time until the crash.
        after: Duration,
    },
    /// The breaker refused the call.
    #[error("the {tool} tool failed {threshold} times in a row, so calls to it are paused for another {}", human(*.retry_in))]
    CircuitOpen {
        /// The tool's name.
        tool: String,
        /// Failures that opened the circuit.
        threshold: u32,
        /// Time until a trial call.
        retry_in: Duration,
    },
}

impl ToolCallError {
    /// The `agent_error` code this failure is reported with.
    pub fn code(&self) -> AgentErrorCode {
        match self {
            ToolCallError::Timeout { .. } => AgentErrorCode::Timeout,
            ToolCallError::CircuitOpen { .. } => AgentErrorCode::CircuitOpen,
            ToolCallError::Panicked { .. } | ToolCallError::NotAllowed { .. } | ToolCallError::NotAnObject { .. } => {
                AgentErrorCode::Internal
            }
            ToolCallError::Failed { .. } => AgentErrorCode::ToolError,
        }
    }

    /// Whether trying again may help.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ToolCallError::Timeout { .. } | ToolCallError::CircuitOpen { .. } | ToolCallError::Failed { .. }
        )
    }
}

/// A registered tool with its breaker.
#[derive(Clone)]
pub(crate) struct ToolEntry {
    pub(crate) tool: Arc<dyn Tool>,
    pub(crate) breaker: Arc<CircuitBreaker>,
}

pub(crate) type ToolRegistry = HashMap<String, ToolEntry>;

/// The tools one agent may call, bound to its run.
#[derive(Clone)]
pub struct Tools {
    pub(crate) allowed: Arc<ToolRegistry>,
    pub(crate) timeout: Duration,
    pub(crate) reporter: Reporter,
    pub(crate) call_ids: Arc<AtomicU64>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.allowed.keys().collect();
        names.sort();
        f.debug_struct("Tools").field("allowed", &names).finish()
    }
}

impl Tools {
    /// The names of the tools this agent may call.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.allowed.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Calls a tool: `tool_executing`, the call bounded by the tool deadline, `tool_completed`.
    pub async fn call(&self, name: &str, parameters: Value) -> Result<Value, ToolCallError> {
        let Some(entry) = self.allowed.get(name) else {
            return Err(ToolCallError::NotAllowed { tool: name.to_owned() });
        };
        if !parameters.is_object() {
            return Err(ToolCallError::NotAnObject { tool: name.to_owned() });
        }
        let call_id = format!("call_{}", self.call_ids.fetch_add(1, Ordering::Relaxed) + 1);
        // Under the agent's span; the tool's task carries it, so what the tool opens is its child.
        let span = tracing::info_span!(
            "tool",
            name,
            call_id = %call_id,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        self.reporter
            .send(Report::ToolStarted(ToolExecuting {
                tool_call_id: call_id.clone(),
                tool_name: name.to_owned(),
                parameters: parameters.clone(),
            }))
            .await;
        let started = Instant::now();
        let outcome = match entry.breaker.try_acquire() {
            Err(refused) => Err(ToolCallError::CircuitOpen {
                tool: name.to_owned(),
                threshold: refused.threshold,
                retry_in: refused.retry_in,
            }),
            Ok(permit) => {
                let tool = Arc::clone(&entry.tool);
                let work = tracing::Instrument::instrument(async move { tool.call(parameters).await }, span.clone());
                let task = AbortOnDropHandle::new(tokio::spawn(TierTimes::carried(work)));
                let outcome = match tokio::time::timeout(self.timeout, task).await {
                    Ok(Ok(Ok(value))) => Ok(value),
                    Ok(Ok(Err(source))) => Err(ToolCallError::Failed {
                        tool: name.to_owned(),
                        after: started.elapsed(),
                        source,
                    }),
                    Ok(Err(_join_error)) => Err(ToolCallError::Panicked {
                        tool: name.to_owned(),
                        after: started.elapsed(),
                    }),
                    Err(_) => Err(ToolCallError::Timeout {
                        tool: name.to_owned(),
                        after: self.timeout,
                    }),
                };
                match &outcome {
                    Ok(_) => permit.success(),
                    Err(_) => permit.failure(),
                }
                outcome
            }
        };
        match &outcome {
            Ok(_) => span.record("outcome", "ok"),
            Err(error) => span
                .record("outcome", error.code().as_str())
                .record("otel.status_code", "ERROR"),
        };
        drop(span);
        let elapsed = started.elapsed();
        let completed = match &outcome {
            Ok(value) => ToolCompleted {
                tool_call_id: call_id,
                tool_name: name.to_owned(),
                success: true,
                results: value.clone(),
                duration_ms: millis(elapsed),
                error: None,
            },
            Err(error) => ToolCompleted {
                tool_call_id: call_id,
                tool_name: name.to_owned(),
                success: false,
                results: Value::Null,
                duration_ms: millis(elapsed),
                error: Some(capitalize(&error.to_string())),
            },
        };
        self.reporter.send(Report::ToolTime(elapsed)).await;
        self.reporter.send(Report::ToolFinished(completed)).await;
        outcome
    }
}

/// The sentence with its first letter in upper case.
pub(crate) fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
