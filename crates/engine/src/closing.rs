//! Closing a run that cannot go on (the engine failed, or the server stopped or crashed): from
//! what is still open, the events that end it by the contract: a failed `tool_completed` for each
//! open tool call, `agent_error` + `agent_completed` for each open agent, innermost first, the
//! supervisor's last with `final: true`.

use std::time::Duration;

use serde_json::Value;
use switchboard_protocol::{
    AgentCompleted, AgentError, AgentErrorCode, AgentName, AgentStarted, Event, EventPayload, RunStatus, RunTimings,
    ToolCompleted,
};

use crate::report::{human, millis};

/// What is open in a run: its agents (outermost first) and its tool calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenRun {
    /// Open agents, the supervisor first.
    pub agents: Vec<AgentName>,
    /// Open tool calls: `(tool_call_id, tool_name, agent)`, in the order they started.
    pub tools: Vec<(String, String, AgentName)>,
    /// Whether the run's first event was published.
    pub started: bool,
    /// Whether its final event was published.
    pub finished: bool,
}

/// Why and how a run is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing<'a> {
    /// The `agent_error` code.
    pub code: AgentErrorCode,
    /// The final status.
    pub status: RunStatus,
    /// The cause, completing "… because {why}".
    pub why: &'a str,
    /// How long the run had been going.
    pub elapsed: Duration,
}

impl OpenRun {
    /// What is open after these events of one run.
    pub fn from_events(events: &[Event]) -> Self {
        let mut open = OpenRun::default();
        for event in events {
            open.record(&event.agent_name, &event.payload);
        }
        open
    }

    /// Takes one more event into account.
    pub fn record(&mut self, agent: &AgentName, payload: &EventPayload) {
        match payload {
            EventPayload::AgentStarted(_) => {
                self.started = true;
                self.agents.push(agent.clone());
            }
            EventPayload::AgentCompleted(done) => {
                if let Some(index) = self.agents.iter().rposition(|a| a == agent) {
                    self.agents.truncate(index);
                }
                self.finished |= done.is_final;
            }
            EventPayload::ToolExecuting(call) => {
                self.tools
                    .push((call.tool_call_id.clone(), call.tool_name.clone(), agent.clone()));
            }
            EventPayload::ToolCompleted(done) => self.tools.retain(|(id, _, _)| *id != done.tool_call_id),
            EventPayload::AgentThinking(_) | EventPayload::PartialResult(_) | EventPayload::AgentError(_) => {}
        }
    }

    /// The events that close the run; empty when it is already finished.
    pub fn closing_events(&self, closing: Closing<'_>) -> Vec<(AgentName, EventPayload)> {
        if self.finished {
            return Vec::new();
        }
        let supervisor = AgentName::supervisor();
        let mut events = Vec::new();
        let mut agents = self.agents.clone();
        if !self.started {
            events.push((
                supervisor.clone(),
                EventPayload::AgentStarted(AgentStarted { task: String::new() }),
            ));
        }
        // The supervisor's completion is the run's final event: it closes the run even when its
        // start is missing from what was stored.
        if agents.first() != Some(&supervisor) {
            agents.insert(0, supervisor.clone());
        }
        let took = human(closing.elapsed);
        for agent in agents.iter().rev() {
            for (call_id, tool_name, _) in self.tools.iter().filter(|(_, _, a)| a == agent) {
                events.push((
                    agent.clone(),
                    EventPayload::ToolCompleted(ToolCompleted {
                        tool_call_id: call_id.clone(),
                        tool_name: tool_name.clone(),
                        success: false,
                        results: Value::Null,
                        duration_ms: 0,
                        error: Some(format!("The {tool_name} call was dropped because {}.", closing.why)),
                    }),
                ));
            }
            let is_final = *agent == supervisor;
            let message = if is_final {
                format!("The run was stopped after {took} because {}.", closing.why)
            } else {
                format!("The {agent} agent was stopped after {took} because {}.", closing.why)
            };
            events.push((
                agent.clone(),
                EventPayload::AgentError(AgentError {
                    code: closing.code,
                    message,
                    retryable: matches!(closing.code, AgentErrorCode::Interrupted | AgentErrorCode::Timeout),
                    elapsed_ms: millis(closing.elapsed),
                    timeout_ms: None,
                }),
            ));
            events.push((
                agent.clone(),
                EventPayload::AgentCompleted(AgentCompleted {
                    status: closing.status,
                    duration_ms: millis(closing.elapsed),
                    result: None,
                    is_final,
                    timings: is_final.then(|| RunTimings {
                        total_ms: millis(closing.elapsed),
                        ..RunTimings::default()
                    }),
                    missing: Vec::new(),
                    model_calls: Vec::new(),
                }),
            ));
        }
        events
    }
}
