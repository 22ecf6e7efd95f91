//! A test kit for agent authors: scripted agents, tools and models, a sink that remembers, a
//! one-call way to run a plan, and a checker of the event contract (PROTOCOL.md section 3).
//!
//! ```
//! use serde_json::json;
//! use switchboard_engine::testkit::{Scenario, ScriptedTool, Step, ToolBehavior, summary};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! // A tool that hangs forever: 10 s later (on the paused clock: at once) the run is over.
//! let events = Scenario::new()
//!     .agent("triage", vec![Step::tool("search", json!({}))])
//!     .tool("search", ScriptedTool::new(ToolBehavior::Hang))
//!     .run("hello")
//!     .await;
//! assert_eq!(summary(&events), [
//!     "supervisor agent_started",
//!     "triage agent_started",
//!     "triage tool_executing search",
//!     "triage tool_completed search failed",
//!     "triage agent_error timeout",
//!     "triage agent_completed timed_out",
//!     "supervisor agent_error timeout",
//!     "supervisor agent_completed timed_out final",
//! ]);
//! # });
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard_protocol::{AgentName, Event, EventPayload, LogEntry, RunEnd, RunId, RunStatus, Seq, ThreadId, UserId};
use tokio::time::Instant;

use crate::agent::{Agent, AgentContext, AgentError, AgentOutput};
use crate::config::EngineConfig;
use crate::engine::{Engine, Plan, RunOutcome, RunRequest};
use crate::model::{Delta, DeltaStream, Model, ModelError, ModelRequest, ModelResponse, Usage};
use crate::sink::{DelayedEnd, EventSink, SinkError};
use crate::tool::{Tool, ToolError};

/// Counts how many futures were dropped before they finished: proof that work was really cancelled.
#[derive(Debug, Default, Clone)]
pub struct DropCounter(Arc<AtomicUsize>);

impl DropCounter {
    /// Futures dropped unfinished so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn guard(&self) -> DropGuard {
        DropGuard {
            counter: self.clone(),
            finished: false,
        }
    }
}

struct DropGuard {
    counter: DropCounter,
    finished: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.counter.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What a scripted tool does on a call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolBehavior {
    /// Returns this result at once.
    Ok(Value),
    /// Returns this result after a delay.
    Delay(Duration, Value),
    /// Never returns.
    Hang,
    /// Panics.
    Panic,
    /// Returns an error.
    Fail(String),
}

/// A list of behaviours played one per call, the last one repeating; counts calls and calls
/// dropped unfinished. Shared by the scripted tool and the scripted model.
#[derive(Debug)]
struct Script<B> {
    steps: Mutex<VecDeque<B>>,
    calls: AtomicUsize,
    dropped: DropCounter,
}

impl<B: Clone> Script<B> {
    fn new(steps: Vec<B>, what: &str) -> Self {
        assert!(!steps.is_empty(), "a scripted {what} needs at least one behaviour");
        Self {
            steps: Mutex::new(steps.into()),
            calls: AtomicUsize::new(0),
            dropped: DropCounter::default(),
        }
    }

    /// Counts a call and gives its behaviour.
    fn next(&self) -> B {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut steps = self.steps.lock().unwrap();
        if steps.len() > 1 {
            steps.pop_front().unwrap()
        } else {
            steps.front().cloned().unwrap()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A tool that plays a list of behaviours, one per call, repeating the last one.
#[derive(Debug)]
pub struct ScriptedTool {
    script: Script<ToolBehavior>,
}

impl ScriptedTool {
    /// A tool that always behaves the same.
    pub fn new(behavior: ToolBehavior) -> Arc<Self> {
        Self::sequence(vec![behavior])
    }

    /// A tool that behaves as listed, call after call, then repeats the last behaviour.
    pub fn sequence(script: Vec<ToolBehavior>) -> Arc<Self> {
        Arc::new(Self {
            script: Script::new(script, "tool"),
        })
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.script.calls()
    }

    /// Calls dropped before they finished.
    pub fn dropped(&self) -> usize {
        self.script.dropped.count()
    }
}

#[async_trait]
impl Tool for ScriptedTool {
    async fn call(&self, _parameters: Value) -> Result<Value, ToolError> {
        let mut guard = self.script.dropped.guard();
        let result = match self.script.next() {
            ToolBehavior::Ok(value) => Ok(value),
            ToolBehavior::Delay(delay, value) => {
                tokio::time::sleep(delay).await;
                Ok(value)
            }
            ToolBehavior::Hang => std::future::pending().await,
            ToolBehavior::Panic => panic!("scripted tool panic"),
            ToolBehavior::Fail(message) => Err(ToolError::Failed(message)),
        };
        guard.finished = true;
        result
    }
}

/// What a scripted model does on a call.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelBehavior {
    /// Answers this text at once.
    Reply(String),
    /// Answers after a delay.
    Delay(Duration, String),
    /// Never answers.
    Hang,
    /// Fails (retryable).
    Fail(String),
    /// Fails (retryable) after a delay; a stream is refused after it.
    FailAfter(Duration, String),
    /// Streams these pieces, one per interval (a complete call gets them joined).
    Chunks(Vec<String>, Duration),
    /// Streams these pieces, then hangs.
    HangAfter(Vec<String>),
    /// Streams these pieces, one per interval, then breaks off with this error (retryable); a
    /// complete call fails after the same time.
    BreakOff(Vec<String>, Duration, String),
}

/// A model that plays a list of behaviours, one per call, repeating the last one.
#[derive(Debug)]
pub struct ScriptedModel {
    name: String,
    script: Script<ModelBehavior>,
}

impl ScriptedModel {
    /// A model that always behaves the same.
    pub fn new(behavior: ModelBehavior) -> Arc<Self> {
        Self::sequence(vec![behavior])
    }

    /// A model that behaves as listed, then repeats the last behaviour.
    pub fn sequence(script: Vec<ModelBehavior>) -> Arc<Self> {
        Self::named("scripted", script)
    }

    /// A model with its own name that behaves as listed, then repeats the last behaviour.
    pub fn named(name: &str, script: Vec<ModelBehavior>) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            script: Script::new(script, "model"),
        })
    }

    /// A model that answers `ok`.
    pub fn ok() -> Arc<Self> {
        Self::new(ModelBehavior::Reply("ok".into()))
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.script.calls()
    }

    /// Calls (or streams) dropped before they finished.
    pub fn dropped(&self) -> usize {
        self.script.dropped.count()
    }
}

fn usage_of(request: &ModelRequest, text: &str) -> Usage {
    let words = |s: &str| s.split_whitespace().count() as u64;
    Usage {
        input_tokens: request.messages.iter().map(|m| words(&m.content)).sum(),
        output_tokens: words(text),
    }
}

#[async_trait]
impl Model for ScriptedModel {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let mut guard = self.script.dropped.guard();
        let text = match self.script.next() {
            ModelBehavior::Reply(text) => text,
            ModelBehavior::Delay(delay, text) => {
                tokio::time::sleep(delay).await;
                text
            }
            ModelBehavior::Hang | ModelBehavior::HangAfter(_) => std::future::pending().await,
            ModelBehavior::Fail(message) => {
                guard.finished = true;
                return Err(ModelError::transient(message));
            }
            ModelBehavior::FailAfter(delay, message) => {
                tokio::time::sleep(delay).await;
                guard.finished = true;
                return Err(ModelError::transient(message));
            }
            ModelBehavior::BreakOff(pieces, interval, message) => {
                tokio::time::sleep(interval * pieces.len() as u32).await;
                guard.finished = true;
                return Err(ModelError::transient(message));
            }
            ModelBehavior::Chunks(pieces, interval) => {
                tokio::time::sleep(interval * pieces.len() as u32).await;
                pieces.concat()
            }
        };
        guard.finished = true;
        Ok(ModelResponse {
            usage: usage_of(&request, &text),
            text,
        })
    }

    async fn stream(&self, request: ModelRequest) -> Result<DeltaStream, ModelError> {
        let (pieces, interval, hang, broken) = match self.script.next() {
            ModelBehavior::Reply(text) => (vec![text], Duration::ZERO, false, None),
            ModelBehavior::Delay(delay, text) => (vec![text], delay, false, None),
            ModelBehavior::Hang => (Vec::new(), Duration::ZERO, true, None),
            ModelBehavior::Fail(message) => return Err(ModelError::transient(message)),
            ModelBehavior::FailAfter(delay, message) => {
                let mut guard = self.script.dropped.guard();
                tokio::time::sleep(delay).await;
                guard.finished = true;
                return Err(ModelError::transient(message));
            }
            ModelBehavior::Chunks(pieces, interval) => (pieces, interval, false, None),
            ModelBehavior::HangAfter(pieces) => (pieces, Duration::ZERO, true, None),
            ModelBehavior::BreakOff(pieces, interval, message) => (pieces, interval, false, Some(message)),
        };
        let usage = usage_of(&request, &pieces.concat());
        let guard = Arc::new(Mutex::new(self.script.dropped.guard()));
        let end_guard = Arc::clone(&guard);
        let pieces = futures_util::stream::iter(pieces).then(move |piece| async move {
            tokio::time::sleep(interval).await;
            Ok(Delta::Text(piece))
        });
        let tail = futures_util::stream::once(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            end_guard.lock().unwrap().finished = true;
            match broken {
                Some(message) => Err(ModelError::transient(message)),
                None => Ok(Delta::Usage(usage)),
            }
        });
        let keep_guard = futures_util::stream::once(async move {
            drop(guard);
            None
        })
        .filter_map(|end: Option<Result<Delta, ModelError>>| async move { end });
        Ok(pieces.chain(tail).chain(keep_guard).boxed())
    }
}

/// Releases agents spinning in [`Step::Spin`].
#[derive(Debug, Clone, Default)]
pub struct SpinSwitch(Arc<std::sync::atomic::AtomicBool>);

impl SpinSwitch {
    /// Lets every agent spinning on this switch go on.
    pub fn release(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl PartialEq for SpinSwitch {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One step of a scripted agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `agent_thinking` with this text.
    Think(String),
    /// `partial_result` with this text.
    Partial(String),
    /// Calls a tool; a failure fails the agent.
    Tool(String, Value),
    /// Calls a tool and carries on whatever happens.
    TryTool(String, Value),
    /// Asks the model for a complete answer; a failure fails the agent.
    Ask(String),
    /// Streams a model answer as `partial_result`s and takes it as the agent's answer.
    StreamAnswer(String),
    /// Waits (on tokio's clock).
    Sleep(Duration),
    /// Waits forever, ignoring cancellation.
    Hang,
    /// Busy-waits without ever yielding until the switch is released (or 10 s of wall time
    /// pass). Use on a multi-thread runtime only.
    Spin(SpinSwitch),
    /// Panics.
    Panic,
    /// Fails with this sentence.
    Fail(String),
    /// Chooses the next agents (for the first agent of a plan).
    Plan(Vec<String>),
    /// Sets the answer; the names of missing agents are appended when there are any.
    Answer(String),
    /// Leaves behind a task that tries to narrate after this delay.
    NarrateLater(Duration),
}

impl Step {
    /// `Step::Tool` with a name.
    pub fn tool(name: &str, parameters: Value) -> Self {
        Step::Tool(name.to_owned(), parameters)
    }

    /// `Step::Think` with a text.
    pub fn think(text: &str) -> Self {
        Step::Think(text.to_owned())
    }

    /// `Step::Answer` with a text.
    pub fn answer(text: &str) -> Self {
        Step::Answer(text.to_owned())
    }

    /// `Step::Plan` from names.
    pub fn plan(names: &[&str]) -> Self {
        Step::Plan(names.iter().map(|n| (*n).to_owned()).collect())
    }
}

/// An agent that plays its steps in order.
#[derive(Debug, Clone)]
pub struct ScriptedAgent {
    steps: Vec<Step>,
}

impl ScriptedAgent {
    /// An agent with these steps.
    pub fn new(steps: Vec<Step>) -> Arc<Self> {
        Arc::new(Self { steps })
    }
}

#[async_trait]
impl Agent for ScriptedAgent {
    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        let mut output = AgentOutput::default();
        let mut results = Vec::new();
        for step in &self.steps {
            match step {
                Step::Think(text) => ctx.events.thinking(text.clone()).await,
                Step::Partial(text) => ctx.events.partial(text.clone()).await,
                Step::Tool(name, parameters) => results.push(ctx.tools.call(name, parameters.clone()).await?),
                Step::TryTool(name, parameters) => {
                    if let Ok(result) = ctx.tools.call(name, parameters.clone()).await {
                        results.push(result);
                    }
                }
                Step::Ask(prompt) => {
                    let response = ctx
                        .model
                        .complete(ModelRequest::new("scripted", prompt.clone()))
                        .await?;
                    results.push(Value::String(response.text));
                }
                Step::StreamAnswer(prompt) => {
                    let text = ctx.stream_answer(ModelRequest::new("scripted", prompt.clone())).await?;
                    output.answer = Some(text);
                }
                Step::Sleep(delay) => tokio::time::sleep(*delay).await,
                Step::Hang => std::future::pending::<()>().await,
                Step::Spin(switch) => {
                    let until = std::time::Instant::now() + Duration::from_secs(10);
                    while !switch.0.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                Step::Panic => panic!("scripted agent panic"),
                Step::Fail(message) => return Err(AgentError::Failed(message.clone())),
                Step::Plan(names) => {
                    let plan = names.iter().map(|n| AgentName::parse(n)).collect::<Result<_, _>>();
                    output.plan = Some(plan.map_err(|e| AgentError::Failed(e.to_string()))?);
                }
                Step::Answer(text) => {
                    let missing: Vec<String> = ctx.missing().iter().map(ToString::to_string).collect();
                    output.answer = Some(if missing.is_empty() {
                        text.clone()
                    } else {
                        format!("{text} (missing: {})", missing.join(", "))
                    });
                }
                Step::NarrateLater(delay) => {
                    let events = ctx.events.clone();
                    let delay = *delay;
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        events.thinking("too late").await;
                    });
                }
            }
        }
        output.data = json!({ "results": results });
        Ok(output)
    }
}

/// What a [`MemorySink`] does when asked to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkBehavior {
    /// Takes every event at once.
    #[default]
    Accept,
    /// Takes each batch of events after a delay (a long one is a store that stalls).
    Slow(Duration),
    /// Refuses every event.
    Fail,
}

/// An event published to a [`MemorySink`], with the (tokio) time it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// Whose event it is.
    pub user_id: UserId,
    /// The event.
    pub event: Event,
    /// When the sink took it.
    pub at: Instant,
}

/// A sink that keeps every event in memory, per user, numbering them as a store does.
#[derive(Debug, Default)]
pub struct MemorySink {
    published: Mutex<Vec<Published>>,
    last: Mutex<HashMap<UserId, Seq>>,
    ends: Mutex<HashMap<RunId, RunEnd>>,
    batches: Mutex<Vec<usize>>,
    behavior: Mutex<SinkBehavior>,
    /// How the first batches are answered, one each; then `behavior`.
    script: Mutex<std::collections::VecDeque<SinkBehavior>>,
    stored: tokio::sync::Notify,
    /// The runs whose end it was told is delayed, with the (tokio) time it was told.
    delayed: Mutex<Vec<(DelayedEnd, Instant)>>,
}

impl MemorySink {
    /// An empty sink that takes everything.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A sink that answers its first batches as `script` says, one each, then takes everything.
    pub fn scripted(script: Vec<SinkBehavior>) -> Arc<Self> {
        let sink = Self::default();
        *sink.script.lock().unwrap() = script.into();
        Arc::new(sink)
    }

    /// The runs whose end was told to be waiting ([`EventSink::end_delayed`]), with the
    /// (tokio) time each was told.
    pub fn delayed_ends(&self) -> Vec<(DelayedEnd, Instant)> {
        self.delayed.lock().unwrap().clone()
    }

    /// Changes how the sink answers from now on.
    pub fn set_behavior(&self, behavior: SinkBehavior) {
        *self.behavior.lock().unwrap() = behavior;
    }

    /// Waits until the final event of `run` is stored (however long a slow sink takes).
    pub async fn final_of(&self, run: &RunId) -> Event {
        loop {
            let stored = self.stored.notified();
            let found = self.events_of_run(run).into_iter().find(Event::is_final);
            if let Some(event) = found {
                return event;
            }
            stored.await;
        }
    }

    /// Everything published, in order.
    pub fn published(&self) -> Vec<Published> {
        self.published.lock().unwrap().clone()
    }

    /// The events of one user, in order.
    pub fn events_of(&self, user: &UserId) -> Vec<Event> {
        self.published()
            .into_iter()
            .filter(|p| &p.user_id == user)
            .map(|p| p.event)
            .collect()
    }

    /// The end handed with the run's final event, once it is stored.
    pub fn run_end(&self, run: &RunId) -> Option<RunEnd> {
        self.ends.lock().unwrap().get(run).cloned()
    }

    /// The size of every batch stored, in order.
    pub fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }

    /// The events of one run, in order.
    pub fn events_of_run(&self, run: &RunId) -> Vec<Event> {
        self.published()
            .into_iter()
            .filter(|p| &p.event.run_id == run)
            .map(|p| p.event)
            .collect()
    }
}

#[async_trait]
impl EventSink for MemorySink {
    async fn append(&self, batch: &[LogEntry]) -> Result<Vec<Seq>, SinkError> {
        let scripted = self.script.lock().unwrap().pop_front();
        let behavior = scripted.unwrap_or_else(|| *self.behavior.lock().unwrap());
        match behavior {
            SinkBehavior::Accept => {}
            SinkBehavior::Slow(delay) => tokio::time::sleep(delay).await,
            SinkBehavior::Fail => return Err(SinkError::Failed("scripted sink failure".into())),
        }
        let mut last = self.last.lock().unwrap();
        let mut published = self.published.lock().unwrap();
        self.batches.lock().unwrap().push(batch.len());
        let at = Instant::now();
        let mut stored = Vec::with_capacity(batch.len());
        for entry in batch {
            let seq = last.get(&entry.user_id).copied().unwrap_or(Seq::ZERO).next();
            last.insert(entry.user_id.clone(), seq);
            let event = entry.event.clone().numbered(seq);
            if let Some(end) = &entry.end {
                self.ends.lock().unwrap().insert(event.run_id.clone(), end.clone());
            }
            published.push(Published {
                user_id: entry.user_id.clone(),
                event,
                at,
            });
            stored.push(seq);
        }
        self.stored.notify_waiters();
        Ok(stored)
    }

    fn end_delayed(&self, end: &DelayedEnd) {
        self.delayed.lock().unwrap().push((end.clone(), Instant::now()));
    }
}

/// An agent of a scenario: its name, the agent, and the tools it may call (`None`: all).
type ScenarioAgent = (String, Arc<dyn Agent>, Option<Vec<String>>);

/// A whole test setup: agents, tools, model, plan and settings, run in one call.
#[derive(Clone)]
pub struct Scenario {
    config: EngineConfig,
    agents: Vec<ScenarioAgent>,
    tools: Vec<(String, Arc<dyn Tool>)>,
    model: Arc<dyn Model>,
    fallback_model: Option<Arc<dyn Model>>,
    plan: Option<Plan>,
    sink_script: Vec<SinkBehavior>,
    tier_observer: Option<Arc<dyn switchboard_protocol::TierObserver>>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("agents", &self.agents.iter().map(|a| &a.0).collect::<Vec<_>>())
            .field("plan", &self.plan)
            .finish()
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    /// No agents yet; default settings; a model that answers `ok`.
    pub fn new() -> Self {
        Self {
            config: EngineConfig::default(),
            agents: Vec::new(),
            tools: Vec::new(),
            model: ScriptedModel::ok(),
            fallback_model: None,
            plan: None,
            sink_script: Vec::new(),
            tier_observer: None,
        }
    }

    /// Tells `observer` of each model call (the engine's `observe_tiers`).
    pub fn observe_tiers(mut self, observer: Arc<dyn switchboard_protocol::TierObserver>) -> Self {
        self.tier_observer = Some(observer);
        self
    }

    /// Adds a scripted agent that may call every tool of the scenario.
    pub fn agent(self, name: &str, steps: Vec<Step>) -> Self {
        self.agent_impl(name, ScriptedAgent::new(steps), None)
    }

    /// Adds any agent, with the tools it may call (`None`: all of them).
    pub fn agent_impl(mut self, name: &str, agent: Arc<dyn Agent>, tools: Option<&[&str]>) -> Self {
        let tools = tools.map(|t| t.iter().map(|s| (*s).to_owned()).collect());
        self.agents.push((name.to_owned(), agent, tools));
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, name: &str, tool: Arc<dyn Tool>) -> Self {
        self.tools.push((name.to_owned(), tool));
        self
    }

    /// Sets the model.
    pub fn model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = model;
        self
    }

    /// Sets the model that answers when the model fails.
    pub fn fallback_model(mut self, model: Arc<dyn Model>) -> Self {
        self.fallback_model = Some(model);
        self
    }

    /// Sets the settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// How the sink of [`Scenario::run_with_outcome`] answers its first batches (a slow or
    /// stalling store), one each; then it takes everything.
    pub fn sink_script(mut self, script: Vec<SinkBehavior>) -> Self {
        self.sink_script = script;
        self
    }

    /// Sets the plan. Without one: the first agent added, then the others in the order added,
    /// with `reporting` last if there is one.
    pub fn plan(mut self, first: &str, stages: &[&str], last: Option<&str>) -> Self {
        self.plan = Some(Plan::new(first, stages, last).expect("valid agent names"));
        self
    }

    fn default_plan(&self) -> Plan {
        let names: Vec<&str> = self.agents.iter().map(|a| a.0.as_str()).collect();
        let last = names.iter().copied().find(|n| *n == "reporting");
        let first = names.first().copied().expect("a scenario needs at least one agent");
        let stages: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| *n != first && Some(*n) != last)
            .collect();
        Plan::new(first, &stages, last.filter(|l| *l != first)).expect("valid agent names")
    }

    /// Builds an engine whose events go to `sink`.
    pub fn engine(&self, sink: Arc<dyn EventSink>) -> Engine {
        let all_tools: Vec<&str> = self.tools.iter().map(|t| t.0.as_str()).collect();
        let mut builder = Engine::builder()
            .config(self.config.clone())
            .model(Arc::clone(&self.model))
            .plan(self.plan.clone().unwrap_or_else(|| self.default_plan()));
        if let Some(fallback) = &self.fallback_model {
            builder = builder.fallback_model(Arc::clone(fallback));
        }
        if let Some(observer) = &self.tier_observer {
            builder = builder.observe_tiers(Arc::clone(observer));
        }
        for (name, tool) in &self.tools {
            builder = builder.tool(name, Arc::clone(tool));
        }
        for (name, agent, tools) in &self.agents {
            let allowed: Vec<&str> = match tools {
                Some(list) => list.iter().map(String::as_str).collect(),
                None => all_tools.clone(),
            };
            builder = builder.agent(name, Arc::clone(agent), &allowed);
        }
        builder.build(sink).expect("the scenario builds an engine")
    }

    /// Runs one message to its end and returns the run's events.
    pub async fn run(&self, text: &str) -> Vec<Event> {
        self.run_with_outcome(text, None).await.0
    }

    /// Runs one message, cancelling it after `cancel_after` if given; returns the events (once
    /// the final one is stored, however long the sink stalls) and the outcome, and checks the
    /// contract on the way: the run ends by its deadline + 1 s, and its final event is stored
    /// by then unless the outcome says it was not.
    pub async fn run_with_outcome(&self, text: &str, cancel_after: Option<Duration>) -> (Vec<Event>, RunOutcome) {
        let sink = MemorySink::scripted(self.sink_script.clone());
        let engine = self.engine(sink.clone());
        let user = UserId::parse("usr_test").unwrap();
        let started = Instant::now();
        let handle = engine
            .start_run(RunRequest::new(user.clone(), ThreadId::generate(), text))
            .expect("the run starts");
        let run_id = handle.run_id.clone();
        if let Some(after) = cancel_after {
            let engine = engine.clone();
            let (user, run_id) = (user.clone(), run_id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = engine.cancel(&user, &run_id);
            });
        }
        let outcome = handle.outcome().await;
        let limit = started + self.config.run_timeout + Duration::from_secs(1);
        assert!(Instant::now() <= limit, "the run ended after its deadline + 1 s");
        let stored_final = tokio::time::timeout(Duration::from_secs(24 * 3600), sink.final_of(&run_id))
            .await
            .expect("the run's final event is stored in the end");
        let events = sink.events_of_run(&run_id);
        if let Some(final_event) = &outcome.final_event {
            assert_eq!(
                final_event, &stored_final,
                "the outcome's final event is the stored one"
            );
            let at = sink.published().iter().find(|p| &p.event == final_event).map(|p| p.at);
            assert!(
                at.is_some_and(|at| at <= limit),
                "the final event came after the run deadline + 1 s"
            );
        }
        if let Err(broken) = check_run(&events) {
            panic!("contract broken: {broken}\n{:#?}", summary(&events));
        }
        (events, outcome)
    }
}

/// The events in short: `agent type` plus what matters of the payload, one string each.
/// `tool_executing` adds the tool, `tool_completed` the tool and `ok`/`failed`, `agent_error`
/// the code, `agent_completed` the status (and `final`); narration is left out.
pub fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            !matches!(
                e.payload,
                EventPayload::AgentThinking(_) | EventPayload::PartialResult(_)
            )
        })
        .map(|e| {
            let head = format!("{} {}", e.agent_name, e.type_name());
            match &e.payload {
                EventPayload::ToolExecuting(t) => format!("{head} {}", t.tool_name),
                EventPayload::ToolCompleted(t) => {
                    format!("{head} {} {}", t.tool_name, if t.success { "ok" } else { "failed" })
                }
                EventPayload::AgentError(err) => format!("{head} {}", err.code.as_str()),
                EventPayload::AgentCompleted(c) if c.is_final => format!("{head} {} final", c.status.as_str()),
                EventPayload::AgentCompleted(c) => format!("{head} {}", c.status.as_str()),
                _ => head,
            }
        })
        .collect()
}

/// The texts of a run's `agent_thinking` events, in order.
pub fn thoughts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::AgentThinking(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect()
}

/// The pieces of a run's streamed answer (`partial_result` deltas), in order.
pub fn deltas(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::PartialResult(p) => Some(p.delta.clone()),
            _ => None,
        })
        .collect()
}

/// The final event's payload fields that tests look at.
pub fn final_status(events: &[Event]) -> Option<RunStatus> {
    events.iter().rev().find_map(|e| match &e.payload {
        EventPayload::AgentCompleted(c) if c.is_final => Some(c.status),
        _ => None,
    })
}

/// Checks the events of one run against every rule of PROTOCOL.md section 3 that can be seen
/// in the events themselves (the protocol crate's contract checker, as clients run it on their
/// streams: `StreamCheck::of_run`). Returns the first broken rule.
pub fn check_run(events: &[Event]) -> Result<(), String> {
    if events.is_empty() {
        return Err("the run has no events".into());
    }
    let mut check = switchboard_protocol::contract::StreamCheck::of_run();
    for event in events {
        check.feed_event(event);
    }
    match check.finish().first() {
        Some(problem) => Err(problem.to_string()),
        None => Ok(()),
    }
}

/// Checks that a user's events carry seq 1, 2, 3, ... with no gap and no duplicate.
pub fn check_gapless(events: &[Event]) -> Result<(), String> {
    for (index, event) in events.iter().enumerate() {
        let expected = index as u64 + 1;
        if event.seq.get() != expected {
            return Err(format!("event {index} has seq {} instead of {expected}", event.seq));
        }
    }
    Ok(())
}
