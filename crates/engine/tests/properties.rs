//! Random plans of agents and tools, with random delays, failures, hangs, panics and
//! cancellations at random moments, and a store that is slow or stalls for longer than any
//! deadline: every generated run keeps every rule of PROTOCOL.md section 3, ends with exactly
//! one final event (stored by its deadline + 1 s unless the store stalled), and ends no later
//! than its deadline + 1 s.
//! Each case runs on a fresh current-thread runtime with tokio's paused clock.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use switchboard_engine::EngineConfig;
use switchboard_engine::testkit::{
    ModelBehavior, Scenario, ScriptedModel, ScriptedTool, SinkBehavior, Step, ToolBehavior,
};
use switchboard_protocol::RunStatus;

fn millis() -> impl Strategy<Value = Duration> {
    (0u64..40_000).prop_map(Duration::from_millis)
}

fn tool_behavior() -> impl Strategy<Value = ToolBehavior> {
    prop_oneof![
        3 => Just(ToolBehavior::Ok(json!({"ok": true}))),
        3 => millis().prop_map(|d| ToolBehavior::Delay(d, json!(1))),
        1 => Just(ToolBehavior::Hang),
        1 => Just(ToolBehavior::Panic),
        1 => Just(ToolBehavior::Fail("refused".into())),
    ]
}

fn model_behavior() -> impl Strategy<Value = ModelBehavior> {
    prop_oneof![
        3 => Just(ModelBehavior::Reply("answer".into())),
        2 => millis().prop_map(|d| ModelBehavior::Delay(d, "slow answer".into())),
        1 => Just(ModelBehavior::Hang),
        1 => Just(ModelBehavior::Fail("overloaded".into())),
        2 => (1usize..5, millis()).prop_map(|(n, d)| ModelBehavior::Chunks(vec!["piece ".into(); n], d / 4)),
        1 => Just(ModelBehavior::HangAfter(vec!["half".into()])),
    ]
}

/// A batch answered faster than this leaves the final event in time: at the deadline the
/// writer may be inside one batch, and the final event is in the next, within the 1 s grace.
const IN_TIME: Duration = Duration::from_millis(450);

/// How the store answers a batch: at once, slowly, stalling for longer than any deadline, or
/// failing (the batch is tried again 10 ms later, then after twice as long each time).
fn sink_behavior() -> impl Strategy<Value = SinkBehavior> {
    prop_oneof![
        6 => Just(SinkBehavior::Accept),
        1 => Just(SinkBehavior::Fail),
        3 => (0..IN_TIME.as_millis() as u64).prop_map(|ms| SinkBehavior::Slow(Duration::from_millis(ms))),
        1 => (1u64..200).prop_map(|secs| SinkBehavior::Slow(Duration::from_secs(secs))),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let tools = prop_oneof![Just("alpha"), Just("beta")];
    prop_oneof![
        3 => Just(Step::think("considering")),
        1 => Just(Step::Partial("draft".into())),
        4 => tools.clone().prop_map(|t| Step::tool(t, json!({"k": 1}))),
        2 => tools.prop_map(|t| Step::TryTool(t.into(), json!({}))),
        2 => Just(Step::Ask("question".into())),
        2 => millis().prop_map(Step::Sleep),
        1 => Just(Step::Hang),
        1 => Just(Step::Panic),
        1 => Just(Step::Fail("gave up".into())),
        1 => millis().prop_map(Step::NarrateLater),
    ]
}

fn agent_steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 0..6)
}

#[derive(Debug, Clone)]
struct Case {
    triage: Vec<Step>,
    stages: Vec<Vec<Step>>,
    reporting: Vec<Step>,
    alpha: Vec<ToolBehavior>,
    beta: Vec<ToolBehavior>,
    model: Vec<ModelBehavior>,
    cancel_after: Option<Duration>,
    config: EngineConfig,
    store: Vec<SinkBehavior>,
}

fn config() -> impl Strategy<Value = EngineConfig> {
    (1u64..15, 1u64..30, 5u64..70, 1u64..35).prop_map(|(tool, agent, run, model)| EngineConfig {
        tool_timeout: Duration::from_secs(tool),
        agent_timeout: Duration::from_secs(agent),
        run_timeout: Duration::from_secs(run),
        model_timeout: Duration::from_secs(model),
        breaker_failure_threshold: 3,
        ..EngineConfig::default()
    })
}

fn case() -> impl Strategy<Value = Case> {
    (
        agent_steps(),
        prop::collection::vec(agent_steps(), 0..4),
        prop_oneof![
            agent_steps().prop_map(|mut s| {
                s.push(Step::answer("done"));
                s
            }),
            Just(vec![Step::StreamAnswer("write".into())]),
            agent_steps(),
        ],
        prop::collection::vec(tool_behavior(), 1..4),
        prop::collection::vec(tool_behavior(), 1..4),
        prop::collection::vec(model_behavior(), 1..4),
        prop::option::weighted(0.3, (0u64..70_000).prop_map(Duration::from_millis)),
        config(),
        prop::collection::vec(sink_behavior(), 0..12),
    )
        .prop_map(
            |(triage, stages, reporting, alpha, beta, model, cancel_after, config, store)| Case {
                triage,
                stages,
                reporting,
                alpha,
                beta,
                model,
                cancel_after,
                config,
                store,
            },
        )
}

fn scenario(case: &Case) -> Scenario {
    let names: Vec<String> = (0..case.stages.len()).map(|i| format!("stage{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut scenario = Scenario::new()
        .config(case.config.clone())
        .model(ScriptedModel::sequence(case.model.clone()))
        .tool("alpha", ScriptedTool::sequence(case.alpha.clone()))
        .tool("beta", ScriptedTool::sequence(case.beta.clone()))
        .plan("triage", &name_refs, Some("reporting"))
        .agent("triage", case.triage.clone());
    for (name, steps) in names.iter().zip(&case.stages) {
        scenario = scenario.agent(name, steps.clone());
    }
    scenario
        .agent("reporting", case.reporting.clone())
        .sink_script(case.store.clone())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_generated_run_keeps_the_event_contract(case in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // `run_with_outcome` checks the contract of section 3 on the stored events (once the
        // final one is stored, however long the store stalled) and the deadline + 1 s bound.
        let (events, outcome) = runtime.block_on(scenario(&case).run_with_outcome("go", case.cancel_after));
        let limit = case.config.run_timeout + Duration::from_secs(1);
        prop_assert!(outcome.duration <= limit, "run took {:?}", outcome.duration);
        // Three failures in a row already wait 10 + 20 + 40 ms before the next try.
        let failures = case.store.iter().filter(|b| **b == SinkBehavior::Fail).count();
        let stalled = failures >= 3 || case.store.iter().any(|b| matches!(b, SinkBehavior::Slow(d) if *d > IN_TIME));
        match &outcome.final_event {
            Some(final_event) => prop_assert_eq!(Some(final_event), events.last()),
            None => prop_assert!(stalled, "the final event was not stored in time, and the store never stalled"),
        }
        prop_assert_eq!(events.iter().filter(|e| e.is_final()).count(), 1);
        if outcome.status == RunStatus::Completed {
            prop_assert!(outcome.answer.is_some());
        }
        if let Some(cancel_after) = case.cancel_after
            && outcome.duration > cancel_after
        {
            prop_assert_eq!(outcome.status, RunStatus::Cancelled);
        }
    }
}
