//! The engine: registered agents, tools and model, the plan, and the runs in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use switchboard_protocol::{
    AgentName, Event, IdError, ModelCallUsage, RunId, RunStatus, ThreadId, TierObserver, TierTimes, TraceId, UserId,
};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::Agent;
use crate::breaker::{BreakerSnapshot, CircuitBreaker};
use crate::config::{ConfigError, EngineConfig};
use crate::model::Model;
use crate::run::{RunDriver, RunLog};
use crate::sink::{EventQueue, EventSink, Gate, QUEUE_CAPACITY};
use crate::tool::{Tool, ToolEntry, ToolRegistry};

/// Which agents a run goes through: `first` (triage) chooses among `stages`, `last` (reporting)
/// always runs at the end and writes the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Runs first; its output's `plan` picks the stages.
    pub first: AgentName,
    /// The stages that run when the first agent gives no plan (or fails), in order.
    pub stages: Vec<AgentName>,
    /// Runs last, whatever happened before.
    pub last: Option<AgentName>,
}

impl Plan {
    /// A plan from names; fails on a name that is not a valid agent name.
    pub fn new(first: &str, stages: &[&str], last: Option<&str>) -> Result<Self, IdError> {
        Ok(Self {
            first: AgentName::parse(first)?,
            stages: stages.iter().map(|s| AgentName::parse(s)).collect::<Result<_, _>>()?,
            last: last.map(AgentName::parse).transpose()?,
        })
    }
}

/// The engine could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A name is not a valid agent name.
    #[error(transparent)]
    InvalidName(#[from] IdError),
    /// No model was given.
    #[error("no language model was given to the engine")]
    NoModel,
    /// No plan was given.
    #[error("no plan was given to the engine")]
    NoPlan,
    /// The plan names an agent that is not registered.
    #[error("the plan names the agent `{0}`, which is not registered")]
    UnknownAgent(String),
    /// An agent is given a tool that is not registered.
    #[error("the agent `{agent}` is given the tool `{tool}`, which is not registered")]
    UnknownTool {
        /// The agent.
        agent: String,
        /// The tool.
        tool: String,
    },
    /// Two agents or two tools share a name.
    #[error("`{0}` is registered twice")]
    Duplicate(String),
}

/// A run could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The user already has the maximum number of active runs.
    #[error("you already have {limit} active runs; wait for one to finish or stop one")]
    TooManyActiveRuns {
        /// The limit.
        limit: usize,
    },
    /// The server already runs as many runs as it may.
    #[error("the server is at its limit of {limit} active runs; try again in a moment")]
    Busy {
        /// The limit.
        limit: usize,
    },
    /// A run with this id is already active.
    #[error("the run {0} is already active")]
    DuplicateRun(RunId),
    /// The engine is shutting down.
    #[error("the server is shutting down and takes no new runs")]
    ShuttingDown,
}

/// No active run with that id belongs to that user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no active run {0}")]
pub struct RunNotFound(pub RunId);

/// What starts a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// Whose run it is: its events go to this user only.
    pub user_id: UserId,
    /// The thread of the message.
    pub thread_id: ThreadId,
    /// The run's id (chosen by the caller, so it can be stored before the run starts).
    pub run_id: RunId,
    /// What the user wrote.
    pub text: String,
}

impl RunRequest {
    /// A request with a fresh run id.
    pub fn new(user_id: UserId, thread_id: ThreadId, text: impl Into<String>) -> Self {
        Self {
            user_id,
            thread_id,
            run_id: RunId::generate(),
            text: text.into(),
        }
    }
}

/// How a run ended, for the caller that started it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The final status.
    pub status: RunStatus,
    /// The answer, when the run produced one.
    pub answer: Option<String>,
    /// The final event's `result`.
    pub result: Option<Value>,
    /// Agents whose part is missing.
    pub missing: Vec<AgentName>,
    /// The run's language-model calls (also on the final event).
    pub model_calls: Vec<ModelCallUsage>,
    /// The run's duration.
    pub duration: Duration,
    /// The final event as published (none if the sink refused it).
    pub final_event: Option<Event>,
}

/// A started run.
#[derive(Debug)]
pub struct RunHandle {
    /// The run.
    pub run_id: RunId,
    /// Its trace id.
    pub trace_id: TraceId,
    pub(crate) outcome: oneshot::Receiver<RunOutcome>,
}

impl RunHandle {
    /// Waits for the run's end.
    pub async fn outcome(self) -> RunOutcome {
        // The driver always sends an outcome; a dropped sender would mean the runtime is
        // shutting down, which is an interruption from the caller's point of view.
        self.outcome.await.unwrap_or(RunOutcome {
            status: RunStatus::Interrupted,
            answer: None,
            result: None,
            missing: Vec::new(),
            model_calls: Vec::new(),
            duration: Duration::ZERO,
            final_event: None,
        })
    }
}

/// Why a run is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Cancelled,
    Interrupted,
}

/// The stop switch of one run.
#[derive(Debug, Default)]
pub(crate) struct RunControl {
    token: CancellationToken,
    reason: OnceLock<StopReason>,
}

impl RunControl {
    pub(crate) fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub(crate) async fn stopped(&self) -> StopReason {
        self.token.cancelled().await;
        *self.reason.get().unwrap_or(&StopReason::Cancelled)
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

pub(crate) struct AgentEntry {
    pub(crate) agent: Arc<dyn Agent>,
    pub(crate) tools: Arc<ToolRegistry>,
}

pub(crate) struct ActiveRun {
    user_id: UserId,
    control: Arc<RunControl>,
}

pub(crate) struct Inner {
    pub(crate) config: EngineConfig,
    pub(crate) plan: Plan,
    pub(crate) agents: HashMap<AgentName, AgentEntry>,
    pub(crate) model: Arc<dyn Model>,
    pub(crate) fallback_model: Option<Arc<dyn Model>>,
    pub(crate) model_breaker: Arc<CircuitBreaker>,
    tool_breakers: Vec<Arc<CircuitBreaker>>,
    pub(crate) events: EventQueue,
    admitted: Mutex<Admitted>,
    runs: Mutex<HashMap<RunId, ActiveRun>>,
    accepting: AtomicBool,
    tracker: TaskTracker,
    /// Told of each model call (the model's tier).
    pub(crate) tier_observer: Option<Arc<dyn TierObserver>>,
}

/// The runs admitted (reserved or running), in all and per user. A user's entry lives while it
/// has some, so memory follows active users, not runs served.
#[derive(Default)]
struct Admitted {
    total: usize,
    per_user: HashMap<UserId, usize>,
}

impl Inner {
    /// Forgets a run that has published its final event (its place is given back when its
    /// reservation is dropped).
    pub(crate) fn finish(&self, run_id: &RunId) {
        self.runs.lock().unwrap().remove(run_id);
    }

    fn release(&self, user: &UserId) {
        let mut admitted = self.admitted.lock().unwrap();
        admitted.total = admitted.total.saturating_sub(1);
        if let Some(count) = admitted.per_user.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                admitted.per_user.remove(user);
            }
        }
    }
}

/// A place among the engine's active runs, for one user: the one admission of a run. The
/// server takes it before it stores a message, so that a message the limits refuse leaves
/// nothing behind, and starts the run with it; dropped unused, it gives the place back.
pub struct Reservation {
    inner: Arc<Inner>,
    user_id: UserId,
    /// Held with the place and dropped when it is given back (a place elsewhere, such as a
    /// cluster's, that ends with the run).
    held: Vec<Box<dyn Send + Sync>>,
    /// The time the run spends in each tier, from its admission on.
    tiers: TierTimes,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("user_id", &self.user_id).finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.release(&self.user_id);
    }
}

impl Reservation {
    /// Holds `guard` with the place: it is dropped when the place is given back (when the run's
    /// final event is queued, or when the reservation is dropped unstarted).
    pub fn hold(&mut self, guard: impl Send + Sync + 'static) {
        self.held.push(Box::new(guard));
    }

    /// Whose place it is.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The time the run spends in each tier, from its admission on: what the caller does for
    /// the run before it starts (such as storing its message) counts for it when done under
    /// these times ([`TierTimes::scope`]), and is in the run's final `timings.tiers`.
    pub fn tiers(&self) -> TierTimes {
        self.tiers.clone()
    }

    /// Starts the reserved run; its events go to the sink under the reservation's user. The run
    /// holds the place until its final event.
    pub fn start(self, thread_id: ThreadId, run_id: RunId, text: String) -> Result<RunHandle, StartError> {
        self.launch(thread_id, run_id, text, None).map(|(handle, ..)| handle)
    }

    /// Starts the reserved run before what it depends on is stored (its message), so that its
    /// first model call need not wait for the store: it runs at once, but none of its events
    /// reaches the sink until [`HeldRun::release`]. [`HeldRun::abandon`] (or dropping the
    /// [`HeldRun`]) ends it as if it had never started: its calls are dropped, none of its events
    /// is ever stored, not even a final one, and its place is given back (its handle's outcome
    /// is then `interrupted`, without a final event).
    pub fn start_held(
        self,
        thread_id: ThreadId,
        run_id: RunId,
        text: String,
    ) -> Result<(RunHandle, HeldRun), StartError> {
        let inner = Arc::clone(&self.inner);
        let gate = Arc::new(Gate::default());
        let (handle, task, log) = self.launch(thread_id, run_id.clone(), text, Some(Arc::clone(&gate)))?;
        let held = HeldRun {
            inner,
            run_id,
            gate,
            task,
            log,
            released: false,
        };
        Ok((handle, held))
    }

    fn launch(
        self,
        thread_id: ThreadId,
        run_id: RunId,
        text: String,
        gate: Option<Arc<Gate>>,
    ) -> Result<(RunHandle, AbortHandle, Arc<RunLog>), StartError> {
        let inner = Arc::clone(&self.inner);
        if !inner.accepting.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown);
        }
        let accepted = Instant::now();
        let control = Arc::new(RunControl::default());
        {
            let mut runs = inner.runs.lock().unwrap();
            if runs.contains_key(&run_id) {
                return Err(StartError::DuplicateRun(run_id));
            }
            runs.insert(
                run_id.clone(),
                ActiveRun {
                    user_id: self.user_id.clone(),
                    control: Arc::clone(&control),
                },
            );
        }
        let trace_id = TraceId::generate();
        let (tx, rx) = oneshot::channel();
        let handle = RunHandle {
            run_id: run_id.clone(),
            trace_id: trace_id.clone(),
            outcome: rx,
        };
        let request = RunRequest {
            user_id: self.user_id.clone(),
            thread_id,
            run_id,
            text,
        };
        let driver = RunDriver::new(Arc::clone(&inner), request, trace_id, control, accepted, self, gate);
        let log = driver.log();
        let task = inner.tracker.spawn(async move {
            // The run gives its place back when its final event is queued, at the latest when
            // it ends: before the caller learns the outcome.
            let outcome = driver.run_to_end().await;
            let _ = tx.send(outcome);
        });
        Ok((handle, task.abort_handle(), log))
    }
}

/// A run started with [`Reservation::start_held`] whose events are held: released, they go to
/// the sink in order; abandoned (or dropped), the run ends unseen.
pub struct HeldRun {
    inner: Arc<Inner>,
    run_id: RunId,
    gate: Arc<Gate>,
    task: AbortHandle,
    /// Holds the run's place.
    log: Arc<RunLog>,
    released: bool,
}

impl std::fmt::Debug for HeldRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldRun").field("run_id", &self.run_id).finish()
    }
}

impl HeldRun {
    /// The run's events go to the sink from now on, those it published while held first.
    pub fn release(mut self) {
        self.released = true;
        self.inner.events.release(&self.gate);
    }

    /// Ends the run as if it had never started (what dropping it does).
    pub fn abandon(self) {}

    /// Ends the run as [`HeldRun::abandon`] does, but hands its place back to the caller, to
    /// start another run with: places held elsewhere with it (a cluster's) are not given back,
    /// so a new reservation cannot find them taken in the meantime.
    pub fn abandon_keeping_place(mut self) -> Option<Reservation> {
        self.released = true;
        self.stop()
    }

    /// Stops the run, drops its events, and takes its place out of it.
    fn stop(&mut self) -> Option<Reservation> {
        // Stopped first, so that nothing it does after is stored; its events dropped; its place
        // out of it now, not when its task is dropped, so that the user's next message finds
        // it free.
        self.task.abort();
        self.inner.events.abandon(&self.gate);
        self.inner.finish(&self.run_id);
        self.log.take_place()
    }
}

impl Drop for HeldRun {
    fn drop(&mut self) {
        if !self.released {
            drop(self.stop());
        }
    }
}

/// The execution engine. Cheap to clone; all clones drive the same runs.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("active_runs", &self.active_runs())
            .field("plan", &self.inner.plan)
            .finish()
    }
}

/// Collects agents, tools, the model and the plan.
#[derive(Default)]
pub struct EngineBuilder {
    config: EngineConfig,
    model: Option<Arc<dyn Model>>,
    fallback_model: Option<Arc<dyn Model>>,
    agents: Vec<(String, Arc<dyn Agent>, Vec<String>)>,
    tools: Vec<(String, Arc<dyn Tool>)>,
    plan: Option<Plan>,
    tier_observer: Option<Arc<dyn TierObserver>>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("agents", &self.agents.iter().map(|a| &a.0).collect::<Vec<_>>())
            .field("tools", &self.tools.iter().map(|t| &t.0).collect::<Vec<_>>())
            .finish()
    }
}

impl EngineBuilder {
    /// The settings (defaults otherwise).
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The language model every agent uses.
    pub fn model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// The model that answers when the model fails (times out, errs, or its circuit is open);
    /// the user is told why. Its calls do not count in the model's circuit breaker.
    pub fn fallback_model(mut self, model: Arc<dyn Model>) -> Self {
        self.fallback_model = Some(model);
        self
    }

    /// Registers an agent with the tools it may call.
    pub fn agent(mut self, name: &str, agent: Arc<dyn Agent>, tools: &[&str]) -> Self {
        self.agents
            .push((name.to_owned(), agent, tools.iter().map(|t| (*t).to_owned()).collect()));
        self
    }

    /// Registers a tool.
    pub fn tool(mut self, name: &str, tool: Arc<dyn Tool>) -> Self {
        self.tools.push((name.to_owned(), tool));
        self
    }

    /// The plan every run follows.
    pub fn plan(mut self, plan: Plan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// Tells `observer` of each model call as an operation of the model's tier: how long it
    /// took and whether it failed.
    pub fn observe_tiers(mut self, observer: Arc<dyn TierObserver>) -> Self {
        self.tier_observer = Some(observer);
        self
    }

    /// Checks everything and builds the engine; its events go to `sink`.
    pub fn build(self, sink: Arc<dyn EventSink>) -> Result<Engine, BuildError> {
        self.config.validate()?;
        let model = self.model.ok_or(BuildError::NoModel)?;
        let plan = self.plan.ok_or(BuildError::NoPlan)?;
        let (threshold, cooldown) = (self.config.breaker_failure_threshold, self.config.breaker_cooldown);

        let mut tools: ToolRegistry = HashMap::new();
        for (name, tool) in self.tools {
            let breaker = CircuitBreaker::new(format!("tool:{name}"), threshold, cooldown);
            if tools.insert(name.clone(), ToolEntry { tool, breaker }).is_some() {
                return Err(BuildError::Duplicate(name));
            }
        }
        let mut agents = HashMap::new();
        for (name, agent, allowed) in self.agents {
            let agent_name = AgentName::parse(&name)?;
            let mut own = ToolRegistry::new();
            for tool in allowed {
                let entry = tools.get(&tool).ok_or_else(|| BuildError::UnknownTool {
                    agent: name.clone(),
                    tool: tool.clone(),
                })?;
                own.insert(tool, entry.clone());
            }
            let entry = AgentEntry {
                agent,
                tools: Arc::new(own),
            };
            if agents.insert(agent_name, entry).is_some() {
                return Err(BuildError::Duplicate(name));
            }
        }
        let named = std::iter::once(&plan.first).chain(&plan.stages).chain(&plan.last);
        for name in named {
            if !agents.contains_key(name) {
                return Err(BuildError::UnknownAgent(name.to_string()));
            }
        }
        let tool_breakers = tools.values().map(|t| Arc::clone(&t.breaker)).collect();
        Ok(Engine {
            inner: Arc::new(Inner {
                model_breaker: CircuitBreaker::new("model", threshold, cooldown),
                config: self.config,
                plan,
                agents,
                model,
                fallback_model: self.fallback_model,
                tool_breakers,
                events: EventQueue::new(sink, QUEUE_CAPACITY),
                admitted: Mutex::default(),
                runs: Mutex::new(HashMap::new()),
                accepting: AtomicBool::new(true),
                tracker: TaskTracker::new(),
                tier_observer: self.tier_observer,
            }),
        })
    }
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The settings in force.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Admits a run of `user`: a place among the active runs, refused when the engine is
    /// shutting down, the user has `max_active_runs_per_user` or the server `max_active_runs`.
    pub fn reserve(&self, user: &UserId) -> Result<Reservation, StartError> {
        let inner = &self.inner;
        if !inner.accepting.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown);
        }
        let config = &inner.config;
        let mut admitted = inner.admitted.lock().unwrap();
        if admitted.total >= config.max_active_runs {
            return Err(StartError::Busy {
                limit: config.max_active_runs,
            });
        }
        let mine = admitted.per_user.get(user).copied().unwrap_or(0);
        if mine >= config.max_active_runs_per_user {
            return Err(StartError::TooManyActiveRuns {
                limit: config.max_active_runs_per_user,
            });
        }
        admitted.total += 1;
        admitted.per_user.insert(user.clone(), mine + 1);
        Ok(Reservation {
            inner: Arc::clone(inner),
            user_id: user.clone(),
            held: Vec::new(),
            tiers: TierTimes::default(),
        })
    }

    /// Starts a run (a reservation and its start in one step); its events go to the sink under
    /// the request's user.
    pub fn start_run(&self, request: RunRequest) -> Result<RunHandle, StartError> {
        self.reserve(&request.user_id)?
            .start(request.thread_id, request.run_id, request.text)
    }

    /// Stops an active run of `user`: its model and tool calls are dropped at once and it ends
    /// as `cancelled`. Another user's run is not found.
    pub fn cancel(&self, user: &UserId, run_id: &RunId) -> Result<(), RunNotFound> {
        let runs = self.inner.runs.lock().unwrap();
        match runs.get(run_id) {
            Some(run) if &run.user_id == user => {
                run.control.stop(StopReason::Cancelled);
                Ok(())
            }
            _ => Err(RunNotFound(run_id.clone())),
        }
    }

    /// Whether `run_id` is an active run of `user`.
    pub fn is_active(&self, user: &UserId, run_id: &RunId) -> bool {
        matches!(self.inner.runs.lock().unwrap().get(run_id), Some(run) if &run.user_id == user)
    }

    /// Stops taking runs, lets active runs finish for `grace`, then ends the rest as
    /// `interrupted`. Returns when every run has ended and the events queued are stored, or,
    /// when the store does not answer, `sink_timeout` after the last run ended.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.accepting.store(false, Ordering::SeqCst);
        inner.tracker.close();
        if tokio::time::timeout(grace, inner.tracker.wait()).await.is_err() {
            let runs = inner.runs.lock().unwrap();
            tracing::info!(active = runs.len(), "grace period over; interrupting active runs");
            for run in runs.values() {
                run.control.stop(StopReason::Interrupted);
            }
        }
        inner.tracker.wait().await;
        if !inner.events.drain(Instant::now() + inner.config.sink_timeout).await {
            tracing::error!("the event store did not take the last events before shutdown");
        }
    }

    /// Runs admitted and not ended (reserved or in flight).
    pub fn active_runs(&self) -> usize {
        self.inner.admitted.lock().unwrap().total
    }

    /// Runs admitted and not ended of one user.
    pub fn active_runs_of(&self, user: &UserId) -> usize {
        self.inner
            .admitted
            .lock()
            .unwrap()
            .per_user
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    /// Users whose state the engine holds (those with active runs).
    pub fn tracked_users(&self) -> usize {
        self.inner.admitted.lock().unwrap().per_user.len()
    }

    /// The state of every circuit breaker: the model's first, then the tools' by name.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        let mut tools: Vec<_> = self.inner.tool_breakers.iter().map(|b| b.snapshot()).collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        std::iter::once(self.inner.model_breaker.snapshot())
            .chain(tools)
            .collect()
    }
}
