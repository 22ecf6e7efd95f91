//! Every failure path of a run, on tokio's paused clock: each case is one line of data, a
//! scenario and the run's events in short (see `testkit::summary`). `Scenario::run` also checks
//! every rule of PROTOCOL.md section 3 and the deadline + 1 s bound on each case.

use std::time::Duration;

use serde_json::json;
use switchboard_engine::EngineConfig;
use switchboard_engine::testkit::{ModelBehavior, Scenario, ScriptedModel, ScriptedTool, Step, ToolBehavior, summary};

const S: fn(u64) -> Duration = Duration::from_secs;

fn tool(behavior: ToolBehavior) -> std::sync::Arc<ScriptedTool> {
    ScriptedTool::new(behavior)
}

fn ok() -> ToolBehavior {
    ToolBehavior::Ok(json!({"rows": 3}))
}

fn call(name: &str) -> Step {
    Step::tool(name, json!({"q": "spend"}))
}

/// Triage, then the given agent steps as `data`, then reporting answering.
fn with_data(data: Vec<Step>) -> Scenario {
    Scenario::new()
        .agent("triage", vec![Step::think("reading"), Step::plan(&["data"])])
        .agent("data", data)
        .agent("reporting", vec![Step::answer("Here is what I found")])
}

async fn check(name: &str, scenario: Scenario, expected: &[&str]) {
    let events = scenario.run("how can we cut our LLM costs?").await;
    assert_eq!(summary(&events), expected, "case: {name}");
}

const HAPPY: &[&str] = &[
    "supervisor agent_started",
    "triage agent_started",
    "triage agent_completed completed",
    "data agent_started",
    "data tool_executing search",
    "data tool_completed search ok",
    "data agent_completed completed",
    "reporting agent_started",
    "reporting agent_completed completed",
    "supervisor agent_completed completed final",
];

#[tokio::test(start_paused = true)]
async fn each_failure_path_ends_the_run_with_the_events_the_contract_names() {
    let tool_timeout_alone = Scenario::new()
        .agent("triage", vec![call("search")])
        .tool("search", tool(ToolBehavior::Hang));
    check(
        "a tool that hangs forever, alone",
        tool_timeout_alone,
        &[
            "supervisor agent_started",
            "triage agent_started",
            "triage tool_executing search",
            "triage tool_completed search failed",
            "triage agent_error timeout",
            "triage agent_completed timed_out",
            "supervisor agent_error timeout",
            "supervisor agent_completed timed_out final",
        ],
    )
    .await;

    check(
        "the happy path",
        with_data(vec![call("search")]).tool("search", tool(ok())),
        HAPPY,
    )
    .await;

    let missing_data = |status: &'static str, code: &'static str| -> Vec<String> {
        [
            "supervisor agent_started",
            "triage agent_started",
            "triage agent_completed completed",
            "data agent_started",
            "data tool_executing search",
            "data tool_completed search failed",
        ]
        .iter()
        .map(ToString::to_string)
        .chain([
            format!("data agent_error {code}"),
            format!("data agent_completed {status}"),
        ])
        .chain(
            [
                "reporting agent_started",
                "reporting agent_completed completed",
                "supervisor agent_completed completed final",
            ]
            .iter()
            .map(ToString::to_string),
        )
        .collect()
    };
    let cases: Vec<(&str, ToolBehavior, Vec<String>)> = vec![
        (
            "a tool hangs, reporting still answers",
            ToolBehavior::Hang,
            missing_data("timed_out", "timeout"),
        ),
        (
            "a tool fails",
            ToolBehavior::Fail("disk full".into()),
            missing_data("failed", "tool_error"),
        ),
        ("a tool panics", ToolBehavior::Panic, missing_data("failed", "internal")),
        (
            "a tool is slower than its deadline",
            ToolBehavior::Delay(S(11), json!(1)),
            missing_data("timed_out", "timeout"),
        ),
    ];
    for (name, behavior, expected) in cases {
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        check(
            name,
            with_data(vec![call("search")]).tool("search", tool(behavior)),
            &expected,
        )
        .await;
    }

    let agent_cases: Vec<(&str, Step, &str, &str)> = vec![
        (
            "an agent hangs ignoring cancellation",
            Step::Hang,
            "timeout",
            "timed_out",
        ),
        ("an agent panics", Step::Panic, "internal", "failed"),
        ("an agent fails", Step::Fail("no data".into()), "internal", "failed"),
        (
            "an agent sleeps past its deadline",
            Step::Sleep(S(26)),
            "timeout",
            "timed_out",
        ),
    ];
    for (name, step, code, status) in agent_cases {
        let expected = [
            "supervisor agent_started".to_owned(),
            "triage agent_started".into(),
            "triage agent_completed completed".into(),
            "data agent_started".into(),
            format!("data agent_error {code}"),
            format!("data agent_completed {status}"),
            "reporting agent_started".into(),
            "reporting agent_completed completed".into(),
            "supervisor agent_completed completed final".into(),
        ];
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        check(name, with_data(vec![Step::think("working"), step]), &expected).await;
    }
}

#[tokio::test(start_paused = true)]
async fn model_failures_are_told_as_llm_errors_or_timeouts() {
    let config = EngineConfig {
        model_timeout: S(5),
        ..EngineConfig::default()
    };
    let cases: Vec<(&str, ModelBehavior, &str, &str)> = vec![
        ("the model hangs", ModelBehavior::Hang, "timeout", "timed_out"),
        (
            "the model fails",
            ModelBehavior::Fail("overloaded".into()),
            "llm_error",
            "failed",
        ),
        (
            "the model is slower than its deadline",
            ModelBehavior::Delay(S(6), "late".into()),
            "timeout",
            "timed_out",
        ),
        (
            "the model stream hangs midway",
            ModelBehavior::HangAfter(vec!["a".into()]),
            "timeout",
            "timed_out",
        ),
    ];
    for (name, behavior, code, status) in cases {
        let scenario = Scenario::new()
            .config(config.clone())
            .model(ScriptedModel::new(behavior))
            .agent("triage", vec![Step::plan(&[])])
            .agent("reporting", vec![Step::StreamAnswer("write".into())]);
        let expected = [
            "supervisor agent_started".to_owned(),
            "triage agent_started".into(),
            "triage agent_completed completed".into(),
            "reporting agent_started".into(),
            format!("reporting agent_error {code}"),
            format!("reporting agent_completed {status}"),
            format!("supervisor agent_error {code}"),
            format!("supervisor agent_completed {status} final"),
        ];
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        check(name, scenario, &expected).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_run_deadline_stops_the_working_agent_and_skips_the_rest() {
    let slow = || vec![Step::Sleep(S(20))];
    let scenario = Scenario::new()
        .agent("triage", vec![Step::plan(&["data", "optimization", "actions"])])
        .agent("data", slow())
        .agent("optimization", slow())
        .agent("actions", slow())
        .agent("reporting", vec![Step::answer("done")]);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(
        summary(&events),
        [
            "supervisor agent_started",
            "triage agent_started",
            "triage agent_completed completed",
            "data agent_started",
            "data agent_completed completed",
            "optimization agent_started",
            "optimization agent_completed completed",
            "actions agent_started",
            "actions agent_error timeout",
            "actions agent_completed timed_out",
            "supervisor agent_error timeout",
            "supervisor agent_completed timed_out final",
        ]
    );
    assert_eq!(outcome.duration, S(60));
    let names: Vec<&str> = outcome.missing.iter().map(|m| m.as_str()).collect();
    assert_eq!(names, ["actions", "reporting"]);
}

#[tokio::test(start_paused = true)]
async fn the_plan_follows_the_first_agents_choice_and_falls_back_when_it_fails() {
    let all = |triage: Vec<Step>| {
        Scenario::new()
            .plan("triage", &["data", "optimization"], Some("reporting"))
            .agent("triage", triage)
            .agent("data", vec![])
            .agent("optimization", vec![])
            .agent("reporting", vec![Step::answer("ok")])
    };
    let started = |events: Vec<switchboard_protocol::Event>| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.type_name() == "agent_started")
            .map(|e| e.agent_name.to_string())
            .collect()
    };
    let cases: Vec<(&str, Vec<Step>, &[&str])> = vec![
        (
            "a chosen subset",
            vec![Step::plan(&["optimization"])],
            &["supervisor", "triage", "optimization", "reporting"],
        ),
        (
            "a chosen order",
            vec![Step::plan(&["optimization", "data"])],
            &["supervisor", "triage", "optimization", "data", "reporting"],
        ),
        (
            "unknown, repeated and reserved names are skipped",
            vec![Step::plan(&["nosuch", "data", "data", "reporting", "triage"])],
            &["supervisor", "triage", "data", "reporting"],
        ),
        (
            "an empty plan goes straight to reporting",
            vec![Step::plan(&[])],
            &["supervisor", "triage", "reporting"],
        ),
        (
            "no plan runs the default stages",
            vec![],
            &["supervisor", "triage", "data", "optimization", "reporting"],
        ),
        (
            "a failed triage runs the default stages",
            vec![Step::Fail("confused".into())],
            &["supervisor", "triage", "data", "optimization", "reporting"],
        ),
    ];
    for (name, triage, expected) in cases {
        assert_eq!(started(all(triage).run("x").await), expected, "case: {name}");
    }
}
