//! The shipped plan end to end through the engine, with the offline model.

use std::sync::Arc;
use std::time::Duration;

use switchboard_agents::{OfflineModel, register};
use switchboard_engine::testkit::{MemorySink, check_run, summary};
use switchboard_engine::{Engine, RunRequest};
use switchboard_protocol::{EventPayload, RunStatus, ThreadId, UserId};

#[tokio::test(start_paused = true)]
async fn a_cost_question_is_classified_and_answered_without_invented_figures() {
    let sink = MemorySink::new();
    let engine = register(Engine::builder())
        .model(Arc::new(OfflineModel::new(Duration::from_millis(50))))
        .build(sink.clone())
        .unwrap();
    let user = UserId::parse("usr_a").unwrap();
    let text = "How can we cut our LLM costs on gpt-4o below $500?";
    let outcome = engine
        .start_run(RunRequest::new(user.clone(), ThreadId::generate(), text))
        .unwrap()
        .outcome()
        .await;
    let events = sink.events_of(&user);
    check_run(&events).unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(
        summary(&events),
        [
            "supervisor agent_started",
            "triage agent_started",
            "triage tool_executing extract_entities",
            "triage tool_completed extract_entities ok",
            "triage agent_completed completed",
            "reporting agent_started",
            "reporting agent_completed completed",
            "supervisor agent_completed completed final",
        ]
    );
    let answer = outcome.answer.unwrap();
    assert!(answer.contains("**a cost question**"), "{answer}");
    assert!(answer.contains("models: gpt-4o; budgets: $500"), "{answer}");
    assert!(answer.contains("cannot give figures"), "{answer}");
    let streamed: String = events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::PartialResult(p) => Some(p.delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, answer, "the answer arrives as partial results");
    assert!(events.iter().filter(|e| e.type_name() == "partial_result").count() > 5);
    let timings = match &events.last().unwrap().payload {
        EventPayload::AgentCompleted(done) => done.timings.clone().unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(timings.model_ms, 100, "two model calls of 50 ms");
}
