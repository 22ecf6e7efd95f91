//! One run, from the supervisor's `agent_started` to its one final `agent_completed`.
//!
//! The driver is the supervisor: it runs the plan's agents one after another, each in a task of
//! its own under its deadline, and is the only writer of the run's events. Its loop consumes a
//! closed set of inputs: a stop request, a deadline, a report from the agent, the agent's end.
//! [`RunLog`] checks every event against the contract of PROTOCOL.md section 3 before it is
//! queued for the event log (which numbers it), and a safety net closes the run if the driver
//! itself fails. The driver waits for the log only when its queue is full and for the final
//! event, which is due by the final limit whatever the store does.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Map, Value};
use switchboard_protocol::{
    AgentCompleted, AgentError as AgentErrorEvent, AgentErrorCode, AgentName, AgentStarted, AgentThinking, Event,
    EventPayload, LogEntry, ModelCallUsage, NewEvent, PartialResult, RunStatus, RunTimings, Tier, TierTimes, Timestamp,
    ToolCompleted,
};
use tokio::task::JoinError;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::agent::{AgentContext, AgentError, AgentOutcome, AgentOutput, AgentRecord, Events, RunInfo};
use crate::closing::{Closing, OpenRun};
use crate::engine::{Inner, Reservation, RunControl, RunOutcome, RunRequest, StopReason};
use crate::model::{ModelHandle, ModelLedger};
use crate::report::{Report, Reporter, human, millis};
use crate::sink::{DelayedEnd, END_NOTICE_AFTER, Gate, Receipt, SinkError};
use crate::tool::Tools;

/// The final event comes at most this long after the run deadline.
pub(crate) const FINAL_GRACE: Duration = Duration::from_secs(1);
/// Time kept back, before the final event's limit, for publishing the final event itself.
const FINAL_RESERVE: Duration = Duration::from_millis(250);
/// Pieces of the answer that arrive within this long of the first one go out as one
/// `partial_result`: fewer, larger events for the same text.
const COALESCE: Duration = Duration::from_millis(5);
/// A coalesced `partial_result` goes out at this size at the latest.
const COALESCE_BYTES: usize = 4096;

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error("event refused by the run contract: {0}")]
    Contract(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

struct OpenTool {
    agent: AgentName,
    tool_name: String,
    started: Instant,
}

#[derive(Default)]
struct LogState {
    open_agents: Vec<AgentName>,
    open_tools: HashMap<String, OpenTool>,
    started: bool,
    final_sent: bool,
    store_time: Duration,
}

/// The identity of a run, shared by all its events.
#[derive(Debug, Clone)]
struct RunIds {
    user_id: switchboard_protocol::UserId,
    run_id: switchboard_protocol::RunId,
    thread_id: switchboard_protocol::ThreadId,
    trace_id: switchboard_protocol::TraceId,
}

/// The run's events as published so far, and the rules every next one must keep.
pub(crate) struct RunLog {
    engine: Arc<Inner>,
    ids: RunIds,
    state: Mutex<LogState>,
    /// The run's place among the active runs: given back once its final event is queued (so a
    /// client that sees the final event may start its next run at once), or when the run ends.
    place: Mutex<Option<Reservation>>,
    /// A run started held: the gate its events pass.
    gate: Option<Arc<Gate>>,
}

impl RunLog {
    /// Checks `payload` against the contract, then queues it for the event log, waiting for room
    /// until `until`. A final event comes with the run's `answer`.
    async fn publish(
        &self,
        agent: &AgentName,
        payload: EventPayload,
        answer: Option<String>,
        until: Instant,
    ) -> Result<Option<Receipt>, PublishError> {
        self.admit(agent, &payload).map_err(PublishError::Contract)?;
        let event = NewEvent {
            run_id: self.ids.run_id.clone(),
            thread_id: self.ids.thread_id.clone(),
            agent_name: agent.clone(),
            timestamp: Timestamp::now(),
            trace_id: self.ids.trace_id.clone(),
            payload,
        };
        let entry = LogEntry::new(self.ids.user_id.clone(), event, answer);
        let started = Instant::now();
        let queued = self.engine.events.submit(entry, self.gate.as_ref(), until).await;
        self.state.lock().unwrap().store_time += started.elapsed();
        Ok(queued?)
    }

    /// Publishes the run's final event and waits, until `until`, for it to be stored: every
    /// event of the run queued before it is stored by then too.
    async fn publish_final(
        &self,
        done: AgentCompleted,
        answer: Option<String>,
        until: Instant,
    ) -> Result<Event, PublishError> {
        let (status, duration) = (done.status, Duration::from_millis(done.duration_ms));
        let receipt = self
            .publish(
                &AgentName::supervisor(),
                EventPayload::AgentCompleted(done),
                answer,
                until,
            )
            .await?;
        self.release_place();
        let receipt = receipt.ok_or_else(|| PublishError::Contract("a final event without its receipt".into()))?;
        let budget_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        let stored = receipt.stored();
        tokio::pin!(stored);
        // The run has ended; if its end is not stored soon (or by its limit), the sink may tell
        // the user so.
        let notice_at = (Instant::now() + END_NOTICE_AFTER).min(until);
        if let Ok(stored) = tokio::time::timeout_at(notice_at, &mut stored).await {
            return Ok(stored?);
        }
        // Told even when the run's limit leaves no time to wait (the event may be stored later
        // all the same); not for a run still held, which its user does not know of yet (and
        // which may never be).
        if !self.gate.as_ref().is_some_and(|gate| gate.is_held()) {
            let ids = &self.ids;
            self.engine.events.sink().end_delayed(&DelayedEnd {
                user_id: ids.user_id.clone(),
                run_id: ids.run_id.clone(),
                thread_id: ids.thread_id.clone(),
                status,
                duration,
            });
        }
        match tokio::time::timeout_at(until, stored).await {
            Ok(stored) => Ok(stored?),
            Err(_) => Err(SinkError::TimedOut(budget_ms).into()),
        }
    }

    /// The contract of section 3, applied to the next event.
    fn admit(&self, agent: &AgentName, payload: &EventPayload) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        if state.final_sent {
            return Err(format!("{} after the final event", payload.type_name()));
        }
        let current = state.open_agents.last().cloned();
        match payload {
            EventPayload::AgentStarted(_) => {
                let supervisor = AgentName::supervisor();
                let ok = match &current {
                    None => !state.started && *agent == supervisor,
                    Some(top) => *top == supervisor && *agent != supervisor,
                };
                if !ok {
                    return Err(format!("{agent} cannot start here"));
                }
                state.started = true;
                state.open_agents.push(agent.clone());
            }
            EventPayload::AgentCompleted(completed) => {
                if current.as_ref() != Some(agent) {
                    return Err(format!("{agent} completes but is not the open agent"));
                }
                if state.open_tools.values().any(|t| &t.agent == agent) {
                    return Err(format!("{agent} completes with tool calls open"));
                }
                let is_supervisor = *agent == AgentName::supervisor();
                if completed.is_final != is_supervisor {
                    return Err("only the supervisor's completion is final".to_owned());
                }
                state.open_agents.pop();
                state.final_sent = completed.is_final;
            }
            EventPayload::ToolExecuting(call) => {
                if current.as_ref() != Some(agent) || state.open_tools.contains_key(&call.tool_call_id) {
                    return Err(format!("tool call {} cannot start here", call.tool_call_id));
                }
                state.open_tools.insert(
                    call.tool_call_id.clone(),
                    OpenTool {
                        agent: agent.clone(),
                        tool_name: call.tool_name.clone(),
                        started: Instant::now(),
                    },
                );
            }
            EventPayload::ToolCompleted(done) => match state.open_tools.get(&done.tool_call_id) {
                Some(open) if &open.agent == agent => {
                    state.open_tools.remove(&done.tool_call_id);
                }
                _ => return Err(format!("tool call {} was not open", done.tool_call_id)),
            },
            EventPayload::AgentThinking(_) | EventPayload::PartialResult(_) | EventPayload::AgentError(_) => {
                if current.as_ref() != Some(agent) {
                    return Err(format!("{agent} is not the open agent"));
                }
            }
        }
        Ok(())
    }

    /// Gives the run's place among the active runs back.
    pub(crate) fn release_place(&self) {
        drop(self.take_place());
    }

    /// Takes the run's place out of it (none once given back).
    pub(crate) fn take_place(&self) -> Option<Reservation> {
        self.place.lock().unwrap().take()
    }

    /// Tool calls of `agent` still open: `(call id, tool name, started)`.
    fn open_tools_of(&self, agent: &AgentName) -> Vec<(String, String, Instant)> {
        let state = self.state.lock().unwrap();
        let mut open: Vec<_> = state
            .open_tools
            .iter()
            .filter(|(_, t)| &t.agent == agent)
            .map(|(id, t)| (id.clone(), t.tool_name.clone(), t.started))
            .collect();
        open.sort_by_key(|(_, _, started)| *started);
        open
    }

    fn store_time(&self) -> Duration {
        self.state.lock().unwrap().store_time
    }

    /// Closes whatever is open and publishes a failed final event, with the run's model calls
    /// (`model_calls`, taking `model_time`). Used only when the driver itself failed, so the run
    /// still ends with its one final event.
    async fn close_abnormally(
        &self,
        cause: Abnormal,
        elapsed: Duration,
        until: Instant,
        model_calls: &[ModelCallUsage],
        model_time: Duration,
        tiers: &TierTimes,
    ) -> Option<Event> {
        let open = {
            let state = self.state.lock().unwrap();
            let mut tools: Vec<_> = state
                .open_tools
                .iter()
                .map(|(id, t)| (t.started, (id.clone(), t.tool_name.clone(), t.agent.clone())))
                .collect();
            tools.sort_by_key(|(started, _)| *started);
            OpenRun {
                agents: state.open_agents.clone(),
                tools: tools.into_iter().map(|(_, tool)| tool).collect(),
                started: state.started,
                finished: state.final_sent,
            }
        };
        let closing = Closing {
            code: cause.code,
            status: cause.status,
            why: cause.why,
            elapsed,
        };
        for (agent, payload) in open.closing_events(closing) {
            match payload {
                EventPayload::AgentCompleted(mut done) if done.is_final => {
                    done.model_calls = model_calls.to_vec();
                    if let Some(timings) = &mut done.timings {
                        timings.model_ms = millis(model_time);
                        timings.tiers = tier_millis(tiers, !model_calls.is_empty(), model_time);
                    }
                    return self.publish_final(done, None, until).await.ok();
                }
                payload => {
                    let _ = self.publish(&agent, payload, None, until).await;
                }
            }
        }
        None
    }
}

fn started_payload(task: &str) -> EventPayload {
    EventPayload::AgentStarted(AgentStarted { task: task.to_owned() })
}

fn tool_failed(call_id: String, tool_name: String, elapsed: Duration, error: String) -> EventPayload {
    EventPayload::ToolCompleted(ToolCompleted {
        tool_call_id: call_id,
        tool_name,
        success: false,
        results: Value::Null,
        duration_ms: millis(elapsed),
        error: Some(error),
    })
}

fn error_payload(
    code: AgentErrorCode,
    message: String,
    retryable: bool,
    elapsed: Duration,
    timeout: Option<Duration>,
) -> EventPayload {
    EventPayload::AgentError(AgentErrorEvent {
        code,
        message,
        retryable,
        elapsed_ms: millis(elapsed),
        timeout_ms: timeout.map(millis),
    })
}

/// `agent_completed` of a sub-agent (not final: no timings, nothing missing, no model calls).
fn agent_completed(status: RunStatus, duration: Duration, result: Option<Value>) -> AgentCompleted {
    AgentCompleted {
        status,
        duration_ms: millis(duration),
        result,
        is_final: false,
        timings: None,
        missing: Vec::new(),
        model_calls: Vec::new(),
    }
}

/// Why the whole run must end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunStop {
    Stopped(StopReason),
    Deadline,
}

/// How one agent's turn ended: the inputs of the driver's loop that end it.
enum Ending {
    Joined(Result<Result<AgentOutput, AgentError>, JoinError>),
    Deadline,
    Stopped(StopReason),
}

/// A failure to be reported as `agent_error` followed by a failed `agent_completed`.
struct Failure {
    code: AgentErrorCode,
    status: RunStatus,
    message: String,
    retryable: bool,
    timeout: Option<Duration>,
}

pub(crate) struct RunDriver {
    engine: Arc<Inner>,
    log: Arc<RunLog>,
    info: Arc<RunInfo>,
    control: Arc<RunControl>,
    accepted: Instant,
    run_deadline: Instant,
    final_limit: Instant,
    records: Vec<AgentRecord>,
    /// The run's model calls, shared with the agents' model handles.
    ledger: Arc<ModelLedger>,
    tool_time: Duration,
    agent_times: Vec<(AgentName, Duration)>,
    call_ids: Arc<AtomicU64>,
    stop: Option<RunStop>,
    queue_time: Duration,
    /// Pieces of the answer not yet published, and when they are due.
    partial: Option<(String, Instant)>,
    /// The time the run spends in each tier (its tasks carry it).
    tiers: TierTimes,
}

impl RunDriver {
    pub(crate) fn new(
        engine: Arc<Inner>,
        request: RunRequest,
        trace_id: switchboard_protocol::TraceId,
        control: Arc<RunControl>,
        accepted: Instant,
        place: Reservation,
        gate: Option<Arc<Gate>>,
    ) -> Self {
        let ids = RunIds {
            user_id: request.user_id.clone(),
            run_id: request.run_id.clone(),
            thread_id: request.thread_id.clone(),
            trace_id: trace_id.clone(),
        };
        let run_deadline = accepted + engine.config.run_timeout;
        let tiers = place.tiers();
        let ledger = Arc::new(ModelLedger::observed(engine.tier_observer.clone()));
        Self {
            log: Arc::new(RunLog {
                engine: Arc::clone(&engine),
                ids,
                state: Mutex::new(LogState::default()),
                place: Mutex::new(Some(place)),
                gate,
            }),
            info: Arc::new(RunInfo {
                run_id: request.run_id,
                user_id: request.user_id,
                thread_id: request.thread_id,
                trace_id,
                request: request.text,
            }),
            engine,
            control,
            accepted,
            run_deadline,
            final_limit: run_deadline + FINAL_GRACE,
            records: Vec::new(),
            ledger,
            tool_time: Duration::ZERO,
            agent_times: Vec::new(),
            call_ids: Arc::new(AtomicU64::new(0)),
            stop: None,
            queue_time: Duration::ZERO,
            partial: None,
            tiers,
        }
    }

    /// The run's log (which holds its place).
    pub(crate) fn log(&self) -> Arc<RunLog> {
        Arc::clone(&self.log)
    }

    /// Drives the run and guarantees its one final event by the final limit, whatever happens
    /// inside: a panic or a hang of the driver ends in a failed final event.
    pub(crate) async fn run_to_end(self) -> RunOutcome {
        let engine = Arc::clone(&self.engine);
        let log = Arc::clone(&self.log);
        let ledger = Arc::clone(&self.ledger);
        let (accepted, run_deadline, final_limit) = (self.accepted, self.run_deadline, self.final_limit);
        let (run_id, user_id) = (self.info.run_id.clone(), self.info.user_id.clone());
        let span = tracing::info_span!(
            "run",
            run_id = %run_id,
            user_id = %user_id,
            thread_id = %self.info.thread_id,
            trace_id = %self.info.trace_id,
            status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // Kept to record the run's status on it when it ends (and so, for an exporter, to end it
        // then).
        let run_span = span.clone();
        let tiers = self.tiers.clone();
        let guarded = tokio::time::timeout_at(
            final_limit,
            tiers.clone().scope(AssertUnwindSafe(self.drive()).catch_unwind()),
        );
        let outcome = match tracing::Instrument::instrument(guarded, span).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_panic)) => {
                tracing::error!(%run_id, "the run driver panicked");
                let cause = Abnormal {
                    why: "the engine failed",
                    code: AgentErrorCode::Internal,
                    status: RunStatus::Failed,
                };
                abnormal_outcome(&log, &ledger, &tiers, cause, accepted, final_limit).await
            }
            Err(_) => {
                tracing::error!(%run_id, "the run driver overran its limit");
                let timed_out = Instant::now() >= run_deadline;
                let cause = Abnormal {
                    why: "the event store did not keep up",
                    code: if timed_out {
                        AgentErrorCode::Timeout
                    } else {
                        AgentErrorCode::Internal
                    },
                    status: if timed_out {
                        RunStatus::TimedOut
                    } else {
                        RunStatus::Failed
                    },
                };
                // Past the limit already: a late final event is better than none.
                abnormal_outcome(&log, &ledger, &tiers, cause, accepted, Instant::now() + FINAL_RESERVE).await
            }
        };
        run_span.record("status", outcome.status.as_str());
        if outcome.status != RunStatus::Completed {
            run_span.record("otel.status_code", "ERROR");
        }
        drop(run_span);
        engine.finish(&run_id);
        log.release_place();
        outcome
    }

    /// The deadline for publishing a non-final event.
    fn event_limit(&self) -> Instant {
        (Instant::now() + self.engine.config.sink_timeout).min(self.final_limit - FINAL_RESERVE)
    }

    /// Queues a non-final event; the run goes on without waiting for it to be stored.
    async fn emit(&self, agent: &AgentName, payload: EventPayload) {
        if let Err(error) = self.log.publish(agent, payload, None, self.event_limit()).await {
            tracing::error!(%agent, %error, "event not published");
        }
    }

    async fn drive(mut self) -> RunOutcome {
        self.queue_time = self.accepted.elapsed();
        let supervisor = AgentName::supervisor();
        let request = self.info.request.clone();
        self.emit(&supervisor, started_payload(&request)).await;

        let plan = self.engine.plan.clone();
        self.run_agent(&plan.first).await;
        let mut pending: Vec<AgentName> = Vec::new();
        if self.stop.is_none() {
            pending = self.stages_after_first(&plan);
            let last = plan.last.iter();
            let names: Vec<&str> = pending.iter().chain(last).map(AgentName::as_str).collect();
            if !names.is_empty() {
                let text = format!("Plan: {}.", names.join(" → "));
                self.emit(
                    &supervisor,
                    EventPayload::AgentThinking(AgentThinking {
                        text,
                        step: None,
                        progress: None,
                    }),
                )
                .await;
            }
            pending.extend(plan.last.iter().cloned());
        }
        pending.reverse();
        while self.stop.is_none() {
            let Some(next) = pending.pop() else { break };
            self.run_agent(&next).await;
        }
        pending.reverse();
        self.finish(pending).await
    }

    /// The stages the first agent chose (registered agents other than first and last, once
    /// each), or the plan's default stages when it chose none.
    fn stages_after_first(&self, plan: &crate::engine::Plan) -> Vec<AgentName> {
        let chosen = match self.records.first().map(|r| &r.outcome) {
            Some(AgentOutcome::Completed(AgentOutput { plan: Some(chosen), .. })) => chosen.clone(),
            _ => return plan.stages.clone(),
        };
        let mut stages: Vec<AgentName> = Vec::new();
        for name in chosen {
            let usable = self.engine.agents.contains_key(&name)
                && name != plan.first
                && Some(&name) != plan.last.as_ref()
                && name != AgentName::supervisor()
                && !stages.contains(&name);
            if usable {
                stages.push(name);
            } else {
                tracing::warn!(agent = %name, "the plan names an agent that cannot run; skipped");
            }
        }
        stages
    }

    /// One agent's turn: `agent_started`, its work under its deadline, `agent_completed`.
    async fn run_agent(&mut self, name: &AgentName) {
        let Some(entry) = self.engine.agents.get(name) else {
            return;
        };
        let (agent, tools) = (Arc::clone(&entry.agent), Arc::clone(&entry.tools));
        let config = &self.engine.config;
        let started = Instant::now();
        let agent_deadline = (started + config.agent_timeout).min(self.run_deadline);
        let cancel = self.control.token().child_token();
        let (reporter, mut reports) = Reporter::channel();
        let turn = self.ledger.begin_turn(name);
        let ctx = AgentContext {
            agent: name.clone(),
            run: Arc::clone(&self.info),
            earlier: Arc::new(self.records.clone()),
            events: Events {
                reporter: reporter.clone(),
            },
            model: ModelHandle {
                model: Arc::clone(&self.engine.model),
                fallback: self.engine.fallback_model.clone(),
                breaker: Arc::clone(&self.engine.model_breaker),
                timeout: config.model_timeout,
                reporter: reporter.clone(),
                ledger: Arc::clone(&self.ledger),
                turn,
            },
            tools: Tools {
                allowed: tools,
                timeout: config.tool_timeout,
                reporter,
                call_ids: Arc::clone(&self.call_ids),
            },
            cancel: cancel.clone(),
            deadline: agent_deadline,
        };
        let task = std::panic::catch_unwind(AssertUnwindSafe(|| agent.task(&ctx)))
            .unwrap_or_else(|_| "working on the request".to_owned());
        self.emit(name, started_payload(&task)).await;

        // The agent's task is a span of its own under the run's: the spans it opens (model and
        // tool calls, the tiers they touch) are carried into the task with it.
        let agent_span = tracing::info_span!(
            "agent",
            name = %name,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let agent_work = tracing::Instrument::instrument(async move { agent.run(ctx).await }, agent_span.clone());
        let mut work = AbortOnDropHandle::new(tokio::spawn(TierTimes::carried(agent_work)));
        let control = Arc::clone(&self.control);
        let ending = loop {
            let partial_due = self.partial.as_ref().map(|(_, due)| *due);
            tokio::select! {
                biased;
                reason = control.stopped() => break Ending::Stopped(reason),
                () = tokio::time::sleep_until(agent_deadline) => break Ending::Deadline,
                () = tokio::time::sleep_until(partial_due.unwrap_or(agent_deadline)), if partial_due.is_some() => {
                    self.flush_partial(name).await;
                }
                Some(report) = reports.recv() => self.on_report(name, report).await,
                joined = &mut work => break Ending::Joined(joined),
            }
        };
        // Close the agent: nothing it sends from now on reaches the stream; what it sent
        // before is published. Its model calls still in flight end here, as failed: the task
        // may be dropped only later, so this does not wait for the calls' own drop guards.
        cancel.cancel();
        work.abort();
        self.ledger.end_turn(turn);
        reports.close();
        while let Ok(report) = reports.try_recv() {
            self.on_report(name, report).await;
        }
        self.flush_partial(name).await;
        let elapsed = started.elapsed();
        let failure = self.failure_of(name, &ending, elapsed);
        let dropped_because = match &failure {
            Some(f) => f.message.clone(),
            None => format!("The {name} agent finished without waiting for it."),
        };
        for (call_id, tool_name, tool_started) in self.log.open_tools_of(name) {
            let tool_elapsed = tool_started.elapsed();
            self.tool_time += tool_elapsed;
            let error = format!(
                "The {tool_name} call was dropped after {}. {dropped_because}",
                human(tool_elapsed)
            );
            self.emit(name, tool_failed(call_id, tool_name, tool_elapsed, error))
                .await;
        }
        self.agent_times.push((name.clone(), elapsed));
        let record = match (ending, failure) {
            (Ending::Joined(Ok(Ok(output))), None) => {
                let result = (!output.data.is_null()).then(|| output.data.clone());
                self.emit(
                    name,
                    EventPayload::AgentCompleted(agent_completed(RunStatus::Completed, elapsed, result)),
                )
                .await;
                AgentOutcome::Completed(output)
            }
            (_, failure) => {
                let failure = failure.unwrap_or_else(|| Failure {
                    code: AgentErrorCode::Internal,
                    status: RunStatus::Failed,
                    message: format!("The {name} agent ended in an unexpected way."),
                    retryable: false,
                    timeout: None,
                });
                let error = error_payload(
                    failure.code,
                    failure.message.clone(),
                    failure.retryable,
                    elapsed,
                    failure.timeout,
                );
                self.emit(name, error).await;
                self.emit(
                    name,
                    EventPayload::AgentCompleted(agent_completed(failure.status, elapsed, None)),
                )
                .await;
                AgentOutcome::Failed {
                    code: failure.code,
                    message: failure.message,
                }
            }
        };
        match &record {
            AgentOutcome::Completed(_) => agent_span.record("outcome", "ok"),
            AgentOutcome::Failed { code, .. } => agent_span
                .record("outcome", code.as_str())
                .record("otel.status_code", "ERROR"),
        };
        self.records.push(AgentRecord {
            name: name.clone(),
            outcome: record,
        });
    }

    /// Turns the end of an agent's turn into the failure to report, if it failed; notes when
    /// the whole run must stop.
    fn failure_of(&mut self, name: &AgentName, ending: &Ending, elapsed: Duration) -> Option<Failure> {
        let took = human(elapsed);
        let config = &self.engine.config;
        Some(match ending {
            Ending::Joined(Ok(Ok(_))) => return None,
            Ending::Joined(Ok(Err(error))) => {
                let code = error.code();
                Failure {
                    code,
                    status: if code == AgentErrorCode::Timeout {
                        RunStatus::TimedOut
                    } else {
                        RunStatus::Failed
                    },
                    message: format!("The {name} agent failed after {took}: {error}."),
                    retryable: error.retryable(),
                    timeout: match error {
                        AgentError::Tool(crate::tool::ToolCallError::Timeout { after, .. })
                        | AgentError::Model(crate::model::ModelCallError::Timeout { after, .. }) => Some(*after),
                        _ => None,
                    },
                }
            }
            Ending::Joined(Err(_)) => Failure {
                code: AgentErrorCode::Internal,
                status: RunStatus::Failed,
                message: format!("The {name} agent crashed after {took}."),
                retryable: false,
                timeout: None,
            },
            Ending::Deadline if Instant::now() >= self.run_deadline => {
                self.stop = Some(RunStop::Deadline);
                Failure {
                    code: AgentErrorCode::Timeout,
                    status: RunStatus::TimedOut,
                    message: format!(
                        "The {name} agent was stopped after {took} because the run reached its {} deadline.",
                        human(config.run_timeout)
                    ),
                    retryable: true,
                    timeout: Some(config.run_timeout),
                }
            }
            Ending::Deadline => Failure {
                code: AgentErrorCode::Timeout,
                status: RunStatus::TimedOut,
                message: format!(
                    "The {name} agent did not finish within its {} deadline and was stopped.",
                    human(config.agent_timeout)
                ),
                retryable: true,
                timeout: Some(config.agent_timeout),
            },
            Ending::Stopped(reason) => {
                self.stop = Some(RunStop::Stopped(*reason));
                let (code, status, why) = match reason {
                    StopReason::Cancelled => (AgentErrorCode::Cancelled, RunStatus::Cancelled, "the run was cancelled"),
                    StopReason::Interrupted => (
                        AgentErrorCode::Interrupted,
                        RunStatus::Interrupted,
                        "the server is shutting down",
                    ),
                };
                Failure {
                    code,
                    status,
                    message: format!("The {name} agent was stopped after {took} because {why}."),
                    retryable: matches!(reason, StopReason::Interrupted),
                    timeout: None,
                }
            }
        })
    }

    async fn on_report(&mut self, agent: &AgentName, report: Report) {
        let payload = match report {
            Report::ToolTime(spent) => {
                self.tool_time += spent;
                return;
            }
            Report::Partial(partial) => {
                match &mut self.partial {
                    Some((text, _)) => text.push_str(&partial.delta),
                    None => self.partial = Some((partial.delta, Instant::now() + COALESCE)),
                }
                if self
                    .partial
                    .as_ref()
                    .is_some_and(|(text, _)| text.len() >= COALESCE_BYTES)
                {
                    self.flush_partial(agent).await;
                }
                return;
            }
            Report::Thinking(thinking) => EventPayload::AgentThinking(thinking),
            Report::ToolStarted(call) => EventPayload::ToolExecuting(call),
            Report::ToolFinished(done) => EventPayload::ToolCompleted(done),
        };
        // Whatever the agent reports next follows the pieces of the answer before it.
        self.flush_partial(agent).await;
        self.emit(agent, payload).await;
    }

    /// Publishes the pieces of the answer gathered so far as one `partial_result`.
    async fn flush_partial(&mut self, agent: &AgentName) {
        if let Some((delta, _)) = self.partial.take() {
            self.emit(agent, EventPayload::PartialResult(PartialResult { delta }))
                .await;
        }
    }

    /// The supervisor's end: its error when the run failed, then the final event.
    async fn finish(self, not_reached: Vec<AgentName>) -> RunOutcome {
        let supervisor = AgentName::supervisor();
        // A run still held (its message is being stored) ends once it is released, so that its
        // final event counts the time its user waited, and the store's share of it.
        if let Some(gate) = &self.log.gate {
            gate.unheld(self.final_limit - FINAL_RESERVE).await;
        }
        let elapsed = self.accepted.elapsed();
        let took = human(elapsed);
        // Late stop requests (after the last agent) do not change a finished run.
        let mut missing: Vec<AgentName> = self
            .records
            .iter()
            .filter(|r| matches!(r.outcome, AgentOutcome::Failed { .. }))
            .map(|r| r.name.clone())
            .collect();
        missing.extend(not_reached);
        let answering = self.records.iter().rev().find_map(|r| match &r.outcome {
            AgentOutcome::Completed(output @ AgentOutput { answer: Some(_), .. }) => Some(output.clone()),
            _ => None,
        });
        let last_failure = self.records.iter().rev().find_map(|r| match &r.outcome {
            AgentOutcome::Failed { code, message } => Some((*code, message.clone())),
            AgentOutcome::Completed(_) => None,
        });
        let missing_text = if missing.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = missing.iter().map(AgentName::as_str).collect();
            format!(" Missing: {}.", names.join(", "))
        };
        let (status, failure) = match (self.stop, &answering) {
            (Some(RunStop::Stopped(StopReason::Cancelled)), _) => (
                RunStatus::Cancelled,
                Some((
                    AgentErrorCode::Cancelled,
                    format!("The run was cancelled after {took}."),
                    false,
                    None,
                )),
            ),
            (Some(RunStop::Stopped(StopReason::Interrupted)), _) => (
                RunStatus::Interrupted,
                Some((
                    AgentErrorCode::Interrupted,
                    format!("The run was interrupted after {took} because the server is shutting down."),
                    true,
                    None,
                )),
            ),
            (Some(RunStop::Deadline), _) => {
                let timeout = self.engine.config.run_timeout;
                (
                    RunStatus::TimedOut,
                    Some((
                        AgentErrorCode::Timeout,
                        format!(
                            "The run did not finish within its {} deadline.{missing_text}",
                            human(timeout)
                        ),
                        true,
                        Some(timeout),
                    )),
                )
            }
            (None, Some(_)) => (RunStatus::Completed, None),
            (None, None) => {
                let (code, cause) =
                    last_failure.unwrap_or((AgentErrorCode::Internal, "No agent wrote an answer.".to_owned()));
                let status = if code == AgentErrorCode::Timeout {
                    RunStatus::TimedOut
                } else {
                    RunStatus::Failed
                };
                let message = format!("The run ended after {took} without an answer. {cause}{missing_text}");
                (status, Some((code, message, code != AgentErrorCode::Internal, None)))
            }
        };
        if let Some((code, message, retryable, timeout)) = failure {
            let payload = error_payload(code, message, retryable, elapsed, timeout);
            self.emit(&supervisor, payload).await;
        }
        let (answer, result) = match answering {
            Some(output) => {
                let mut result = match output.data {
                    Value::Object(map) => map,
                    Value::Null => Map::new(),
                    other => Map::from_iter([("data".to_owned(), other)]),
                };
                let text = output.answer.unwrap_or_default();
                result.insert("text".to_owned(), Value::String(text.clone()));
                (Some(text), Some(Value::Object(result)))
            }
            None => (None, None),
        };
        let result = if status == RunStatus::Completed { result } else { None };
        let answer = if status == RunStatus::Completed { answer } else { None };
        let duration = self.accepted.elapsed();
        let (model_calls, model_time) = self.ledger.close();
        let timings = self.timings(duration, model_time);
        let done = AgentCompleted {
            is_final: true,
            timings: Some(timings),
            missing: missing.clone(),
            model_calls: model_calls.clone(),
            ..agent_completed(status, duration, result.clone())
        };
        let final_event = match self.log.publish_final(done, answer.clone(), self.final_limit).await {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::error!(%error, "final event not published");
                None
            }
        };
        tracing::info!(status = status.as_str(), duration_ms = millis(duration), "run finished");
        RunOutcome {
            status,
            answer,
            result,
            missing,
            model_calls,
            duration,
            final_event,
        }
    }

    fn timings(&self, total: Duration, model_time: Duration) -> RunTimings {
        let mut agents = std::collections::BTreeMap::new();
        for (name, spent) in &self.agent_times {
            *agents.entry(name.to_string()).or_insert(0) += millis(*spent);
        }
        let tiers = tier_millis(&self.tiers, !self.ledger.is_empty(), model_time);
        RunTimings {
            queue_ms: millis(self.queue_time),
            store_ms: millis(self.log.store_time()),
            model_ms: millis(model_time),
            tools_ms: millis(self.tool_time),
            agents,
            total_ms: millis(total),
            tiers,
        }
    }
}

/// A run's `timings.tiers`: the time of each tier it touched, the model's being the ledger's
/// (its calls, those cut off included) when it called the model.
fn tier_millis(tiers: &TierTimes, called_the_model: bool, model_time: Duration) -> BTreeMap<String, u64> {
    let mut millis_of = tiers.millis();
    if called_the_model {
        millis_of.insert(Tier::Model.as_str().to_owned(), millis(model_time));
    }
    millis_of
}

/// Why the safety net closes a run.
#[derive(Debug, Clone, Copy)]
struct Abnormal {
    why: &'static str,
    code: AgentErrorCode,
    status: RunStatus,
}

async fn abnormal_outcome(
    log: &RunLog,
    ledger: &ModelLedger,
    tiers: &TierTimes,
    cause: Abnormal,
    accepted: Instant,
    until: Instant,
) -> RunOutcome {
    let duration = accepted.elapsed();
    let (model_calls, model_time) = ledger.close();
    let final_event = log
        .close_abnormally(cause, duration, until, &model_calls, model_time, tiers)
        .await;
    RunOutcome {
        status: cause.status,
        answer: None,
        result: None,
        missing: Vec::new(),
        model_calls,
        duration,
        final_event,
    }
}
