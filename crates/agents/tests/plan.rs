//! The shipped plan end to end through the engine, with the offline model.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_agents::{OfflineModel, register};
use switchboard_engine::testkit::{MemorySink, check_run, summary};
use switchboard_engine::{Engine, RunRequest};
use switchboard_protocol::{EventPayload, RunStatus, ThreadId, UserId};
use switchboard_store::{AnalyticsStore, StoreError, Summary, SummaryBuilder, TimeRange, WorkloadEvent};

/// An analytics store that says the user has `0` calls uploaded.
struct Uploaded(u64);

#[async_trait]
impl AnalyticsStore for Uploaded {
    async fn insert_workload_events(&self, _: &UserId, _: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        Err(StoreError::Backend("read-only in this test".into()))
    }
    async fn workload_event_count(&self, _: &UserId) -> Result<u64, StoreError> {
        Ok(self.0)
    }
    async fn workload_summary(&self, _: &UserId, _: TimeRange) -> Result<Summary, StoreError> {
        SummaryBuilder::default().finish()
    }
}

async fn answer(uploaded: u64, text: &str) -> String {
    let sink = MemorySink::new();
    let engine = register(Engine::builder(), Arc::new(Uploaded(uploaded)))
        .model(Arc::new(OfflineModel::default()))
        .build(sink.clone())
        .unwrap();
    let user = UserId::parse("usr_a").unwrap();
    let outcome = engine
        .start_run(RunRequest::new(user, ThreadId::generate(), text))
        .unwrap()
        .outcome()
        .await;
    assert_eq!(outcome.status, RunStatus::Completed);
    outcome.answer.unwrap()
}

#[tokio::test(start_paused = true)]
async fn without_data_the_answer_says_what_to_send_and_with_data_it_says_what_is_not_built() {
    let none = answer(0, "How can we cut our LLM costs?").await;
    for expected in [
        "I have no usage data of yours",
        "POST /api/workload-events",
        "application/x-ndjson",
        "\"input_tokens\": 1200",
    ] {
        assert!(none.contains(expected), "missing `{expected}` in:\n{none}");
    }
    let some = answer(3, "How can we cut our LLM costs?").await;
    assert!(some.contains("You have uploaded 3 model calls."), "{some}");
    assert!(some.contains("so I give none rather than guess"), "{some}");
    assert!(!some.contains("POST /api/workload-events"), "{some}");
}

#[tokio::test(start_paused = true)]
async fn a_cost_question_is_classified_and_answered_without_invented_figures() {
    let sink = MemorySink::new();
    let engine = register(Engine::builder(), Arc::new(Uploaded(0)))
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
            "triage tool_executing workload_overview",
            "triage tool_completed workload_overview ok",
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
