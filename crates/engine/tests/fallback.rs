//! The fallback model and the accounting of model calls, through the engine's API on tokio's
//! paused clock: whatever the model does (fails, hangs, breaks off mid-stream, has its circuit
//! open), the user is told why in a sentence and the run still answers; and every call, also one
//! cut off in flight, is on the final event with its time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_engine::testkit::{MemorySink, ModelBehavior, Scenario, ScriptedModel, Step, deltas, thoughts};
use switchboard_engine::{
    Agent, AgentContext, AgentError, AgentOutput, DeltaStream, EngineConfig, Model, ModelError, ModelRequest,
    ModelResponse, RunRequest, Usage,
};
use switchboard_protocol::{Event, EventPayload, RunStatus, ThreadId, UserId};

const S: fn(u64) -> Duration = Duration::from_secs;

/// (agent, model, success) of each model call on the final event.
fn calls(events: &[Event]) -> Vec<(String, String, bool)> {
    let Some(EventPayload::AgentCompleted(last)) = events.last().map(|e| &e.payload) else {
        panic!("no final event");
    };
    last.model_calls
        .iter()
        .map(|c| (c.agent.to_string(), c.model.clone(), c.success))
        .collect()
}

fn offline(text: &str) -> Arc<ScriptedModel> {
    ScriptedModel::named("offline", vec![ModelBehavior::Reply(text.into())])
}

fn asking(primary: Arc<ScriptedModel>, fallback: Arc<ScriptedModel>) -> Scenario {
    Scenario::new()
        .model(primary)
        .fallback_model(fallback)
        .agent("triage", vec![Step::Ask("classify".into()), Step::answer("done")])
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_is_told_and_the_fallback_answers() {
    let primary = ScriptedModel::named("gpt-x", vec![ModelBehavior::Fail("the server answered 500".into())]);
    let scenario = asking(primary.clone(), offline("{}"));
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(
        thoughts(&events),
        [
            "The language model (gpt-x) failed after 0 ms: the server answered 500; answering with the offline model instead."
        ]
    );
    assert_eq!(
        calls(&events),
        [
            ("triage".to_owned(), "gpt-x".to_owned(), false),
            ("triage".to_owned(), "offline".to_owned(), true)
        ]
    );
    assert_eq!(outcome.model_calls.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_model_is_given_up_at_its_deadline_and_the_fallback_answers_within_the_agents() {
    let primary = ScriptedModel::named("gpt-x", vec![ModelBehavior::Hang]);
    let scenario = asking(primary.clone(), offline("{}"));
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(
        thoughts(&events),
        ["The language model (gpt-x) did not answer within 20 s; answering with the offline model instead."]
    );
    assert_eq!(primary.dropped(), 1, "the hanging call was really dropped");
    assert_eq!(outcome.duration, S(20));
    let EventPayload::AgentCompleted(last) = &events.last().unwrap().payload else {
        panic!("no final event");
    };
    assert_eq!(last.timings.as_ref().unwrap().model_ms, 20_000);
    assert_eq!(last.model_calls[0].duration_ms, 20_000);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_sends_calls_straight_to_the_fallback() {
    let primary = ScriptedModel::named("gpt-x", vec![ModelBehavior::Fail("overloaded".into())]);
    let scenario = asking(primary.clone(), offline("{}"));
    let engine = scenario.engine(MemorySink::new());
    let alice = UserId::parse("usr_alice").unwrap();
    for _ in 0..5 {
        let outcome = engine
            .start_run(RunRequest::new(alice.clone(), ThreadId::generate(), "go"))
            .unwrap()
            .outcome()
            .await;
        assert_eq!(outcome.status, RunStatus::Completed, "the fallback answered");
    }
    assert_eq!(
        engine.breakers()[0].state,
        "open",
        "fallback answers do not hide the model's failures"
    );
    let outcome = engine
        .start_run(RunRequest::new(alice.clone(), ThreadId::generate(), "go"))
        .unwrap()
        .outcome()
        .await;
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(primary.calls(), 5, "the open circuit kept the call from the model");
    let EventPayload::AgentCompleted(last) = &outcome.final_event.unwrap().payload else {
        panic!("no final event");
    };
    assert_eq!(last.model_calls.len(), 1, "only the fallback was called");
    assert_eq!(last.model_calls[0].model, "offline");
}

#[tokio::test(start_paused = true)]
async fn a_stream_broken_off_midway_keeps_what_was_streamed_and_the_fallback_writes_the_answer() {
    let primary = ScriptedModel::named(
        "gpt-x",
        vec![ModelBehavior::HangAfter(vec!["Your ".into(), "costs ".into()])],
    );
    let fallback = ScriptedModel::named(
        "offline",
        vec![ModelBehavior::Chunks(
            vec!["The ".into(), "answer.".into()],
            Duration::ZERO,
        )],
    );
    let scenario = Scenario::new()
        .model(primary)
        .fallback_model(fallback)
        .agent("reporting", vec![Step::StreamAnswer("write".into())]);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(outcome.status, RunStatus::Completed);
    // Pieces that came at once are coalesced; the sentence about the fallback separates them.
    assert_eq!(deltas(&events), ["Your costs ", "\n\nThe answer."]);
    assert_eq!(outcome.answer.as_deref(), Some("Your costs \n\nThe answer."));
    assert_eq!(
        thoughts(&events),
        ["The language model (gpt-x) did not answer within 20 s; answering with the offline model instead."]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_refused_at_the_start_is_answered_by_the_fallback_alone() {
    let primary = ScriptedModel::named("gpt-x", vec![ModelBehavior::Fail("rate limited".into())]);
    let scenario = Scenario::new()
        .model(primary)
        .fallback_model(offline("All of it."))
        .agent("reporting", vec![Step::StreamAnswer("write".into())]);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(deltas(&events), ["All of it."]);
    assert_eq!(outcome.answer.as_deref(), Some("All of it."));
    assert_eq!(
        calls(&events),
        [
            ("reporting".to_owned(), "gpt-x".to_owned(), false),
            ("reporting".to_owned(), "offline".to_owned(), true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn when_the_fallback_fails_too_the_agent_fails_with_its_sentence() {
    let primary = ScriptedModel::named("gpt-x", vec![ModelBehavior::Fail("down".into())]);
    let fallback = ScriptedModel::named("offline", vec![ModelBehavior::Fail("also down".into())]);
    let scenario = asking(primary, fallback);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let errors: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::AgentError(err) if e.agent_name.as_str() == "triage" => Some(err.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        ["The triage agent failed after 0 ms: the language model (offline) failed after 0 ms: also down."]
    );
}

/// A model with a price: a dollar per thousand tokens either way.
struct Priced(Arc<ScriptedModel>);

#[async_trait]
impl Model for Priced {
    fn name(&self) -> &str {
        "priced"
    }

    fn cost_usd(&self, usage: Usage) -> Option<f64> {
        Some((usage.input_tokens + usage.output_tokens) as f64 / 1000.0)
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        self.0.complete(request).await
    }

    async fn stream(&self, request: ModelRequest) -> Result<DeltaStream, ModelError> {
        self.0.stream(request).await
    }
}

#[tokio::test(start_paused = true)]
async fn every_model_call_is_recorded_with_its_tokens_and_cost() {
    let model = Arc::new(Priced(ScriptedModel::new(ModelBehavior::Chunks(
        vec!["one two ".into(), "three".into()],
        Duration::from_millis(50),
    ))));
    let scenario = Scenario::new()
        .model(model)
        .agent("triage", vec![Step::Ask("classify this".into()), Step::answer("x")])
        .agent("reporting", vec![Step::StreamAnswer("write it all".into())]);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    let EventPayload::AgentCompleted(last) = &events.last().unwrap().payload else {
        panic!("no final event");
    };
    assert_eq!(last.model_calls, outcome.model_calls);
    let seen: Vec<String> = last
        .model_calls
        .iter()
        .map(|c| {
            format!(
                "{}: {} in, {} out, ${:?}, {} ms, success {}",
                c.agent, c.input_tokens, c.output_tokens, c.cost_usd, c.duration_ms, c.success
            )
        })
        .collect();
    // Scripted usage counts words: "scripted" + the prompt in, the answer out.
    assert_eq!(
        seen,
        [
            "triage: 3 in, 3 out, $Some(0.006), 100 ms, success true",
            "reporting: 4 in, 3 out, $Some(0.007), 100 ms, success true"
        ]
    );
    assert_eq!(last.timings.as_ref().unwrap().model_ms, 200);
}

/// Opens a stream, reads its first piece and drops the rest unread, then works on for a second.
struct DropsTheStream;

#[async_trait]
impl Agent for DropsTheStream {
    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        let mut stream = ctx.model.stream(ModelRequest::new("scripted", "write")).await?;
        let first = stream.next().await.transpose()?.unwrap_or_default();
        drop(stream);
        tokio::time::sleep(S(1)).await;
        Ok(AgentOutput {
            answer: Some(first),
            ..AgentOutput::default()
        })
    }
}

/// Leaves a model call running in a task of its own, then finishes after a second.
struct LeavesACallBehind;

#[async_trait]
impl Agent for LeavesACallBehind {
    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        let model = ctx.model.clone();
        tokio::spawn(async move { model.complete(ModelRequest::new("scripted", "classify")).await });
        tokio::time::sleep(S(1)).await;
        Ok(AgentOutput::default())
    }
}

/// A run's model calls as recorded, one case per way a call can end.
struct Recorded {
    name: &'static str,
    scenario: Scenario,
    cancel_after: Option<Duration>,
    status: RunStatus,
    /// (agent, model, success, duration in ms) of each call on the final event.
    calls: &'static [(&'static str, &'static str, bool, u64)],
    /// The final event's `timings.model_ms`.
    model_ms: u64,
}

#[tokio::test(start_paused = true)]
async fn every_model_call_is_recorded_with_its_time_however_it_ends() {
    let ms = Duration::from_millis;
    let config = |change: fn(&mut EngineConfig)| {
        let mut config = EngineConfig::default();
        change(&mut config);
        config
    };
    let ask_then_stream = |model: Arc<ScriptedModel>| {
        Scenario::new()
            .model(model)
            .agent("triage", vec![Step::Ask("classify".into())])
            .agent("reporting", vec![Step::StreamAnswer("write".into())])
    };
    let stream_only = |model: Arc<ScriptedModel>| {
        Scenario::new()
            .model(model)
            .agent("triage", vec![Step::plan(&[])])
            .agent("reporting", vec![Step::StreamAnswer("write".into())])
    };
    let cases = vec![
        Recorded {
            name: "the model hangs past the agent deadline",
            scenario: ask_then_stream(ScriptedModel::new(ModelBehavior::Hang))
                .config(config(|c| c.agent_timeout = S(2))),
            cancel_after: None,
            status: RunStatus::TimedOut,
            calls: &[
                ("triage", "scripted", false, 2_000),
                ("reporting", "scripted", false, 2_000),
            ],
            model_ms: 4_000,
        },
        Recorded {
            name: "the model hangs past the run deadline",
            scenario: ask_then_stream(ScriptedModel::sequence(vec![
                ModelBehavior::Delay(S(1), "{}".into()),
                ModelBehavior::Hang,
            ]))
            .config(config(|c| c.run_timeout = S(3))),
            cancel_after: None,
            status: RunStatus::TimedOut,
            calls: &[
                ("triage", "scripted", true, 1_000),
                ("reporting", "scripted", false, 2_000),
            ],
            model_ms: 3_000,
        },
        Recorded {
            name: "the run is cancelled while a call is in flight",
            scenario: ask_then_stream(ScriptedModel::new(ModelBehavior::Hang)),
            cancel_after: Some(ms(1_500)),
            status: RunStatus::Cancelled,
            calls: &[("triage", "scripted", false, 1_500)],
            model_ms: 1_500,
        },
        Recorded {
            name: "the model fails after a while",
            scenario: ask_then_stream(ScriptedModel::new(ModelBehavior::FailAfter(S(1), "overloaded".into()))),
            cancel_after: None,
            status: RunStatus::Failed,
            calls: &[
                ("triage", "scripted", false, 1_000),
                ("reporting", "scripted", false, 1_000),
            ],
            model_ms: 2_000,
        },
        Recorded {
            name: "a stream breaks off midway",
            scenario: stream_only(ScriptedModel::new(ModelBehavior::BreakOff(
                vec!["Your ".into(), "costs ".into()],
                ms(500),
                "connection reset".into(),
            ))),
            cancel_after: None,
            status: RunStatus::Failed,
            calls: &[("reporting", "scripted", false, 1_000)],
            model_ms: 1_000,
        },
        Recorded {
            name: "a stream hangs midway past the agent deadline",
            scenario: stream_only(ScriptedModel::new(ModelBehavior::HangAfter(vec!["Your ".into()])))
                .config(config(|c| c.agent_timeout = S(2))),
            cancel_after: None,
            status: RunStatus::TimedOut,
            calls: &[("reporting", "scripted", false, 2_000)],
            model_ms: 2_000,
        },
        Recorded {
            name: "the agent drops a stream it has not read to the end",
            scenario: Scenario::new()
                .model(ScriptedModel::new(ModelBehavior::Chunks(
                    vec!["Your ".into(), "costs".into()],
                    ms(500),
                )))
                .agent_impl("reporting", Arc::new(DropsTheStream), None),
            cancel_after: None,
            status: RunStatus::Completed,
            calls: &[("reporting", "scripted", false, 500)],
            model_ms: 500,
        },
        Recorded {
            name: "a call the agent leaves in flight ends with the agent's turn",
            scenario: Scenario::new()
                .model(ScriptedModel::new(ModelBehavior::Hang))
                .agent_impl("triage", Arc::new(LeavesACallBehind), None)
                .agent("reporting", vec![Step::Sleep(S(2)), Step::answer("done")]),
            cancel_after: None,
            status: RunStatus::Completed,
            calls: &[("triage", "scripted", false, 1_000)],
            model_ms: 1_000,
        },
        Recorded {
            name: "the model times out and the fallback hangs past the agent deadline",
            scenario: asking(
                ScriptedModel::named("gpt-x", vec![ModelBehavior::Hang]),
                ScriptedModel::named("offline", vec![ModelBehavior::Hang]),
            ),
            cancel_after: None,
            status: RunStatus::TimedOut,
            calls: &[("triage", "gpt-x", false, 20_000), ("triage", "offline", false, 5_000)],
            model_ms: 25_000,
        },
        Recorded {
            name: "a stream breaks off and the fallback's stream hangs past the agent deadline",
            scenario: Scenario::new()
                .model(ScriptedModel::named(
                    "gpt-x",
                    vec![ModelBehavior::BreakOff(vec!["Your ".into()], S(1), "reset".into())],
                ))
                .fallback_model(ScriptedModel::named(
                    "offline",
                    vec![ModelBehavior::HangAfter(vec!["The ".into()])],
                ))
                .agent("reporting", vec![Step::StreamAnswer("write".into())])
                .config(config(|c| c.agent_timeout = S(5))),
            cancel_after: None,
            status: RunStatus::TimedOut,
            calls: &[
                ("reporting", "gpt-x", false, 1_000),
                ("reporting", "offline", false, 4_000),
            ],
            model_ms: 5_000,
        },
    ];
    for case in cases {
        let (events, outcome) = case.scenario.run_with_outcome("go", case.cancel_after).await;
        let name = case.name;
        assert_eq!(outcome.status, case.status, "case: {name}");
        let Some(EventPayload::AgentCompleted(last)) = events.last().map(|e| &e.payload) else {
            panic!("no final event, case: {name}");
        };
        let calls: Vec<(&str, &str, bool, u64)> = last
            .model_calls
            .iter()
            .map(|c| (c.agent.as_str(), c.model.as_str(), c.success, c.duration_ms))
            .collect();
        assert_eq!(calls, case.calls, "case: {name}");
        assert_eq!(last.timings.as_ref().unwrap().model_ms, case.model_ms, "case: {name}");
        assert_eq!(outcome.model_calls, last.model_calls, "case: {name}");
    }
}
