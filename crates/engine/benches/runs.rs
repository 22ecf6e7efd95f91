//! Engine throughput: 100 000 runs of a five-agent plan (triage, data, optimization, actions,
//! reporting) whose agents are instant and make two tool calls each. Prints runs per second,
//! events per second and the engine's overhead per event, measured against a baseline in the
//! same process that builds and publishes the same events with no engine in between.
//!
//! `cargo bench -p switchboard-engine --bench runs` (set `RUNS=N` to change the count).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use switchboard_engine::testkit::ScriptedModel;
use switchboard_engine::{
    Agent, AgentContext, AgentError, AgentOutput, Engine, EventSink, Plan, RunRequest, SinkError, Tool, ToolError,
};
use switchboard_protocol::{
    AgentCompleted, AgentName, AgentStarted, EntryKey, EventPayload, LogEntry, NewEvent, RunId, RunStatus, Seq,
    ThreadId, Timestamp, ToolCompleted, ToolExecuting, TraceId, UserId,
};

const AGENTS: [&str; 5] = ["triage", "data", "optimization", "actions", "reporting"];
const USERS: usize = 2_000;
const IN_FLIGHT: usize = 512;

/// Counts events; keeps nothing.
#[derive(Default)]
struct CountingSink {
    events: AtomicU64,
}

#[async_trait]
impl EventSink for CountingSink {
    async fn append(&self, batch: &[LogEntry]) -> Result<Vec<Seq>, SinkError> {
        self.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        std::hint::black_box(batch);
        Ok(vec![Seq::ZERO; batch.len()])
    }
}

struct Echo;

#[async_trait]
impl Tool for Echo {
    async fn call(&self, parameters: Value) -> Result<Value, ToolError> {
        Ok(json!({ "echo": parameters }))
    }
}

struct Instant2Tools {
    plan: bool,
    answer: bool,
}

#[async_trait]
impl Agent for Instant2Tools {
    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        let first = ctx.tools.call("lookup", json!({ "q": 1 })).await?;
        let second = ctx.tools.call("compute", json!({ "q": 2 })).await?;
        Ok(AgentOutput {
            data: json!({ "first": first, "second": second }),
            plan: self.plan.then(|| {
                ["data", "optimization", "actions"]
                    .iter()
                    .map(|n| AgentName::parse(n).unwrap())
                    .collect()
            }),
            answer: self.answer.then(|| "done".to_owned()),
        })
    }
}

fn engine(sink: Arc<CountingSink>) -> Engine {
    let config = switchboard_engine::EngineConfig {
        max_active_runs: IN_FLIGHT,
        ..switchboard_engine::EngineConfig::default()
    };
    let mut builder = Engine::builder()
        .config(config)
        .model(ScriptedModel::ok())
        .tool("lookup", Arc::new(Echo))
        .tool("compute", Arc::new(Echo))
        .plan(Plan::new("triage", &["data", "optimization", "actions"], Some("reporting")).unwrap());
    for name in AGENTS {
        let agent = Instant2Tools {
            plan: name == "triage",
            answer: name == "reporting",
        };
        builder = builder.agent(name, Arc::new(agent), &["lookup", "compute"]);
    }
    builder.build(sink).unwrap()
}

async fn run_engine(runs: usize) -> (Duration, u64) {
    let sink = Arc::new(CountingSink::default());
    let engine = engine(sink.clone());
    let users: Vec<UserId> = (0..USERS)
        .map(|i| UserId::parse(&format!("usr_{i}")).unwrap())
        .collect();
    let threads: Vec<ThreadId> = (0..USERS).map(|_| ThreadId::generate()).collect();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..runs {
        let permit = Arc::clone(&semaphore).acquire_owned().await.unwrap();
        let request = RunRequest::new(users[i % USERS].clone(), threads[i % USERS].clone(), "cut costs");
        let handle = engine.start_run(request).expect("under the per-user limit");
        tasks.spawn(async move {
            let outcome = handle.outcome().await;
            assert_eq!(outcome.status, RunStatus::Completed);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    (started.elapsed(), sink.events.load(Ordering::Relaxed))
}

/// The same events, built and published in the same order by one task per run, with no
/// engine: what any implementation must at least spend.
async fn run_baseline(runs: usize) -> (Duration, u64) {
    let sink = Arc::new(CountingSink::default());
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..runs {
        let permit = Arc::clone(&semaphore).acquire_owned().await.unwrap();
        let sink = Arc::clone(&sink);
        tasks.spawn(async move {
            let user = UserId::parse(&format!("usr_{}", i % USERS)).unwrap();
            let (run_id, thread_id, trace_id) = (RunId::generate(), ThreadId::generate(), TraceId::generate());
            let publish = async |agent: &str, payload: EventPayload| {
                let event = NewEvent {
                    run_id: run_id.clone(),
                    thread_id: thread_id.clone(),
                    agent_name: AgentName::parse(agent).unwrap(),
                    timestamp: Timestamp::now(),
                    trace_id: trace_id.clone(),
                    payload,
                };
                let entry = LogEntry {
                    key: EntryKey::generate(),
                    user_id: user.clone(),
                    event,
                    end: None,
                };
                sink.append(&[entry]).await.unwrap();
            };
            let started = |task: &str| EventPayload::AgentStarted(AgentStarted { task: task.into() });
            let completed = |result: Option<Value>, is_final: bool| {
                EventPayload::AgentCompleted(AgentCompleted {
                    status: RunStatus::Completed,
                    duration_ms: 0,
                    result,
                    is_final,
                    timings: None,
                    missing: Vec::new(),
                    model_calls: Vec::new(),
                })
            };
            publish("supervisor", started("cut costs")).await;
            for agent in AGENTS {
                publish(agent, started("working")).await;
                let mut results = Vec::new();
                for (n, tool) in ["lookup", "compute"].iter().enumerate() {
                    let call_id = format!("call_{n}");
                    let parameters = json!({ "q": n });
                    let executing = ToolExecuting {
                        tool_call_id: call_id.clone(),
                        tool_name: (*tool).into(),
                        parameters: parameters.clone(),
                    };
                    publish(agent, EventPayload::ToolExecuting(executing)).await;
                    let result = Echo.call(parameters).await.unwrap();
                    results.push(result.clone());
                    let done = ToolCompleted {
                        tool_call_id: call_id,
                        tool_name: (*tool).into(),
                        success: true,
                        results: result,
                        duration_ms: 0,
                        error: None,
                    };
                    publish(agent, EventPayload::ToolCompleted(done)).await;
                }
                publish(agent, completed(Some(json!(results)), false)).await;
            }
            publish("supervisor", completed(Some(json!({"text": "done"})), true)).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    (started.elapsed(), sink.events.load(Ordering::Relaxed))
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "engine benchmark: {runs} runs of a five-agent plan, two instant tool calls per agent, {IN_FLIGHT} runs in flight, {cores} cores"
    );
    // Warm up both paths once so that allocation pools and the scheduler are in their steady state.
    runtime.block_on(run_engine(runs / 20 + 1));
    runtime.block_on(run_baseline(runs / 20 + 1));
    let (engine_time, engine_events) = runtime.block_on(run_engine(runs));
    let (base_time, base_events) = runtime.block_on(run_baseline(runs));
    let per_event = |time: Duration, events: u64| time.as_secs_f64() * 1e6 / events as f64;
    println!("| path | runs/s | events/s | µs per event (wall) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, time, events) in [
        ("engine", engine_time, engine_events),
        ("baseline (no engine)", base_time, base_events),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            runs as f64 / time.as_secs_f64(),
            events as f64 / time.as_secs_f64(),
            per_event(time, events)
        );
    }
    println!(
        "engine overhead per event: {:.2} µs ({} events per run; the engine's events include the plan narration)",
        per_event(engine_time, engine_events) - per_event(base_time, base_events),
        engine_events / runs as u64
    );
}
