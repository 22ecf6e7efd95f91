//! An agent that never yields cannot be stopped by dropping its future, but it must not hold
//! the run: on the multi-thread runtime the run still ends on time with its final event.
//! This is the one engine test on the real clock, because a spinning agent blocks a thread
//! and tokio's paused clock needs a single-threaded runtime; the deadlines are 100 ms.

use std::time::Duration;

use switchboard_engine::EngineConfig;
use switchboard_engine::testkit::{Scenario, SpinSwitch, Step, summary};
use switchboard_protocol::RunStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_spins_without_yielding_does_not_hold_the_run() {
    let switch = SpinSwitch::default();
    let config = EngineConfig {
        agent_timeout: Duration::from_millis(100),
        run_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let scenario = Scenario::new()
        .config(config)
        .agent("triage", vec![Step::Spin(switch.clone())])
        .agent("reporting", vec![Step::answer("answered without triage")]);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    switch.release();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(
        summary(&events),
        [
            "supervisor agent_started",
            "triage agent_started",
            "triage agent_error timeout",
            "triage agent_completed timed_out",
            "reporting agent_started",
            "reporting agent_completed completed",
            "supervisor agent_completed completed final",
        ]
    );
    assert!(outcome.duration < Duration::from_secs(5), "took {:?}", outcome.duration);
}
