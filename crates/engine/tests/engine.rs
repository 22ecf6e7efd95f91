//! The engine through its API, on tokio's paused clock: cancellation, limits, isolation,
//! shutdown, circuit breakers, the sink, the sentences users read and the timings.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_engine::testkit::{
    MemorySink, ModelBehavior, Scenario, ScriptedModel, ScriptedTool, SinkBehavior, Step, ToolBehavior, check_gapless,
    check_run, deltas, final_status, summary,
};
use switchboard_engine::{
    BuildError, END_NOTICE_AFTER, Engine, EngineConfig, EventSink, Plan, RunRequest, SinkError, StartError,
};
use switchboard_protocol::{AgentErrorCode, Event, EventPayload, LogEntry, RunStatus, ThreadId, UserId};

const S: fn(u64) -> Duration = Duration::from_secs;

fn user(name: &str) -> UserId {
    UserId::parse(&format!("usr_{name}")).unwrap()
}

fn request(user: &UserId) -> RunRequest {
    RunRequest::new(user.clone(), ThreadId::generate(), "hello")
}

fn errors(events: &[Event]) -> Vec<(String, AgentErrorCode, String)> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::AgentError(err) => Some((e.agent_name.to_string(), err.code, err.message.clone())),
            _ => None,
        })
        .collect()
}

fn hanging() -> Scenario {
    Scenario::new()
        .agent("triage", vec![Step::tool("search", json!({}))])
        .tool("search", ScriptedTool::new(ToolBehavior::Hang))
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_the_tool_call_and_ends_the_run_as_cancelled() {
    let search = ScriptedTool::new(ToolBehavior::Delay(S(5), json!(1)));
    let scenario = Scenario::new()
        .agent("triage", vec![Step::tool("search", json!({}))])
        .agent("reporting", vec![Step::answer("never")])
        .tool("search", search.clone());
    let (events, outcome) = scenario.run_with_outcome("go", Some(S(1))).await;
    assert_eq!(
        summary(&events),
        [
            "supervisor agent_started",
            "triage agent_started",
            "triage tool_executing search",
            "triage tool_completed search failed",
            "triage agent_error cancelled",
            "triage agent_completed cancelled",
            "supervisor agent_error cancelled",
            "supervisor agent_completed cancelled final",
        ]
    );
    assert_eq!(outcome.status, RunStatus::Cancelled);
    assert_eq!(outcome.duration, S(1));
    assert_eq!(search.dropped(), 1, "the tool's future was dropped, not left running");
    let messages = errors(&events);
    assert_eq!(
        messages[0].2,
        "The triage agent was stopped after 1 s because the run was cancelled."
    );
    assert_eq!(messages[1].2, "The run was cancelled after 1 s.");
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_a_model_call_in_flight() {
    let model = ScriptedModel::new(ModelBehavior::Hang);
    let scenario = Scenario::new()
        .model(model.clone())
        .agent("triage", vec![Step::Ask("classify".into())]);
    let (_, outcome) = scenario.run_with_outcome("go", Some(Duration::from_millis(300))).await;
    assert_eq!(outcome.status, RunStatus::Cancelled);
    assert_eq!(model.dropped(), 1);
}

#[tokio::test(start_paused = true)]
async fn failure_sentences_name_the_agent_the_tool_and_the_time() {
    let events = hanging().run("go").await;
    let messages: Vec<String> = errors(&events).into_iter().map(|e| e.2).collect();
    assert_eq!(
        messages,
        [
            "The triage agent failed after 10 s: the search tool did not answer within 10 s.",
            "The run ended after 10 s without an answer. The triage agent failed after 10 s: the search tool did not answer within 10 s. Missing: triage.",
        ]
    );
    let timeout_ms = events.iter().find_map(|e| match &e.payload {
        EventPayload::AgentError(err) => err.timeout_ms,
        _ => None,
    });
    assert_eq!(timeout_ms, Some(10_000));
    let tool_error = events.iter().find_map(|e| match &e.payload {
        EventPayload::ToolCompleted(t) => t.error.clone(),
        _ => None,
    });
    assert_eq!(
        tool_error.as_deref(),
        Some("The search tool did not answer within 10 s")
    );

    let slow_agent = Scenario::new().agent("data", vec![Step::Sleep(S(30))]).run("go").await;
    assert_eq!(
        errors(&slow_agent)[0].2,
        "The data agent did not finish within its 25 s deadline and was stopped."
    );
}

#[tokio::test(start_paused = true)]
async fn a_completed_run_carries_the_answer_the_missing_parts_and_the_timings() {
    let scenario = Scenario::new()
        .model(ScriptedModel::new(ModelBehavior::Chunks(
            vec!["Cut ".into(), "costs ".into(), "now.".into()],
            Duration::from_millis(100),
        )))
        .tool(
            "search",
            ScriptedTool::new(ToolBehavior::Delay(S(2), json!({"rows": 1}))),
        )
        .agent("triage", vec![Step::tool("search", json!({}))])
        .agent("data", vec![Step::Fail("the data is gone".into())])
        .agent("reporting", vec![Step::StreamAnswer("write".into())]);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(deltas(&events), ["Cut ", "costs ", "now."]);
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(outcome.answer.as_deref(), Some("Cut costs now."));
    assert_eq!(outcome.result.as_ref().unwrap()["text"], "Cut costs now.");
    assert_eq!(outcome.missing.iter().map(|m| m.as_str()).collect::<Vec<_>>(), ["data"]);
    let EventPayload::AgentCompleted(last) = &events.last().unwrap().payload else {
        panic!("no final event");
    };
    let timings = last.timings.as_ref().unwrap();
    assert_eq!(timings.tools_ms, 2000);
    assert_eq!(timings.model_ms, 300);
    assert_eq!(timings.agents["triage"], 2000);
    assert_eq!(timings.agents["reporting"], 300);
    assert_eq!(timings.total_ms, 2300);
    assert_eq!(last.missing.iter().map(|m| m.as_str()).collect::<Vec<_>>(), ["data"]);
}

#[tokio::test(start_paused = true)]
async fn nothing_an_agent_leaves_behind_reaches_the_stream() {
    let scenario = Scenario::new()
        .agent("triage", vec![Step::NarrateLater(S(1)), Step::answer("quick")])
        .agent("reporting", vec![Step::Sleep(S(3)), Step::answer("done")]);
    let events = scenario.run("go").await;
    let late = events
        .iter()
        .any(|e| matches!(&e.payload, EventPayload::AgentThinking(t) if t.text == "too late"));
    assert!(!late, "a task left behind by triage narrated after triage ended");
}

#[tokio::test(start_paused = true)]
async fn a_user_may_have_three_active_runs_and_another_user_is_not_affected() {
    let sink = MemorySink::new();
    let engine = hanging().engine(sink.clone());
    let (alice, bob) = (user("alice"), user("bob"));
    let handles: Vec<_> = (0..3).map(|_| engine.start_run(request(&alice)).unwrap()).collect();
    assert_eq!(
        engine.start_run(request(&alice)).unwrap_err(),
        StartError::TooManyActiveRuns { limit: 3 }
    );
    let bob_run = engine.start_run(request(&bob)).unwrap();
    assert_eq!(engine.active_runs_of(&alice), 3);
    assert_eq!(engine.active_runs_of(&bob), 1);
    for handle in handles {
        handle.outcome().await;
    }
    bob_run.outcome().await;
    assert!(
        engine.start_run(request(&alice)).is_ok(),
        "a slot is free again once runs end"
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_servers_limit_a_run_is_refused_at_once() {
    let config = EngineConfig {
        max_active_runs: 2,
        ..EngineConfig::default()
    };
    let engine = hanging().config(config).engine(MemorySink::new());
    let first = engine.start_run(request(&user("a"))).unwrap();
    engine.start_run(request(&user("b"))).unwrap();
    assert_eq!(
        engine.start_run(request(&user("c"))).unwrap_err(),
        StartError::Busy { limit: 2 }
    );
    engine.cancel(&user("a"), &first.run_id).unwrap();
    first.outcome().await;
    assert!(engine.start_run(request(&user("c"))).is_ok(), "a slot is free again");
}

#[tokio::test(start_paused = true)]
async fn each_users_events_go_to_that_user_only_gapless_across_runs() {
    let sink = MemorySink::new();
    let scenario = Scenario::new()
        .agent(
            "triage",
            vec![
                Step::think("a"),
                Step::Sleep(Duration::from_millis(5)),
                Step::think("b"),
            ],
        )
        .agent("reporting", vec![Step::answer("done")]);
    let engine = scenario.engine(sink.clone());
    let users: Vec<UserId> = ["ann", "ben", "cy"].iter().map(|n| user(n)).collect();
    let mut handles = Vec::new();
    for round in 0..3 {
        for u in &users {
            let handle = engine.start_run(request(u)).unwrap();
            handles.push((u.clone(), handle.run_id.clone(), handle));
        }
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut runs = Vec::new();
    for (u, run_id, handle) in handles {
        assert_eq!(handle.outcome().await.status, RunStatus::Completed);
        runs.push((u, run_id));
    }
    for u in &users {
        let events = sink.events_of(u);
        check_gapless(&events).unwrap();
        for (owner, run_id) in &runs {
            let of_run: Vec<Event> = events.iter().filter(|e| &e.run_id == run_id).cloned().collect();
            if owner == u {
                check_run(&of_run).unwrap();
            } else {
                assert!(of_run.is_empty(), "{u} received events of {owner}'s run");
            }
        }
    }
    let published = sink.published();
    assert!(
        published
            .iter()
            .all(|p| runs.iter().any(|(u, r)| u == &p.user_id && r == &p.event.run_id))
    );
}

#[tokio::test(start_paused = true)]
async fn seq_continues_from_what_the_sink_already_holds() {
    let sink = MemorySink::new();
    let scenario = Scenario::new().agent("reporting", vec![Step::answer("hi")]);
    let alice = user("alice");
    let first = scenario.engine(sink.clone());
    first.start_run(request(&alice)).unwrap().outcome().await;
    let second = scenario.engine(sink.clone());
    second.start_run(request(&alice)).unwrap().outcome().await;
    check_gapless(&sink.events_of(&alice)).unwrap();
    assert_eq!(sink.events_of(&alice).len(), 8);
}

#[tokio::test(start_paused = true)]
async fn finished_runs_leave_no_state_behind() {
    let sink = MemorySink::new();
    let scenario = Scenario::new()
        .agent("triage", vec![Step::tool("search", json!({}))])
        .agent("reporting", vec![Step::answer("ok")])
        .tool("search", ScriptedTool::new(ToolBehavior::Ok(json!(1))));
    let engine = scenario.engine(sink.clone());
    for batch in 0..20 {
        let handles: Vec<_> = (0..50)
            .map(|i| engine.start_run(request(&user(&format!("u{batch}_{i}")))).unwrap())
            .collect();
        for handle in handles {
            handle.outcome().await;
        }
    }
    assert_eq!(engine.active_runs(), 0);
    assert_eq!(engine.tracked_users(), 0);
    assert_eq!(sink.published().len(), 1000 * 9);
}

#[tokio::test(start_paused = true)]
async fn cancel_finds_only_the_users_own_active_runs() {
    let engine = hanging().engine(MemorySink::new());
    let (alice, mallory) = (user("alice"), user("mallory"));
    let handle = engine.start_run(request(&alice)).unwrap();
    let run_id = handle.run_id.clone();
    assert!(
        engine.cancel(&mallory, &run_id).is_err(),
        "another user's run is not found"
    );
    assert!(engine.is_active(&alice, &run_id));
    engine.cancel(&alice, &run_id).unwrap();
    assert_eq!(handle.outcome().await.status, RunStatus::Cancelled);
    assert!(engine.cancel(&alice, &run_id).is_err(), "a finished run is not active");
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_short_runs_finish_and_interrupts_the_rest_after_the_grace_period() {
    let sink = MemorySink::new();
    let scenario = Scenario::new()
        .agent("triage", vec![Step::Sleep(S(2)), Step::tool("search", json!({}))])
        .tool(
            "search",
            ScriptedTool::sequence(vec![ToolBehavior::Ok(json!(1)), ToolBehavior::Hang]),
        )
        .agent("reporting", vec![Step::answer("ok")]);
    let engine = scenario.engine(sink.clone());
    let short = engine.start_run(request(&user("a"))).unwrap();
    let long = engine.start_run(request(&user("b"))).unwrap();
    let started = tokio::time::Instant::now();
    engine.shutdown(S(5)).await;
    assert_eq!(
        started.elapsed(),
        S(5),
        "shutdown waited for the grace period, then interrupted"
    );
    assert_eq!(short.outcome().await.status, RunStatus::Completed);
    let long_outcome = long.outcome().await;
    assert_eq!(long_outcome.status, RunStatus::Interrupted);
    let events = sink.events_of(&user("b"));
    assert_eq!(
        summary(&events)[3..],
        [
            "triage tool_completed search failed",
            "triage agent_error interrupted",
            "triage agent_completed interrupted",
            "supervisor agent_error interrupted",
            "supervisor agent_completed interrupted final",
        ]
    );
    assert_eq!(
        engine.start_run(request(&user("c"))).unwrap_err(),
        StartError::ShuttingDown
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_no_active_runs_returns_at_once() {
    let engine = hanging().engine(MemorySink::new());
    let started = tokio::time::Instant::now();
    engine.shutdown(S(10)).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_tool_circuit_opens_after_five_failures_and_a_trial_call_closes_it() {
    let mut behaviors = vec![ToolBehavior::Fail("503".into()); 5];
    behaviors.push(ToolBehavior::Ok(json!("fine")));
    let flaky = ScriptedTool::sequence(behaviors);
    let try_call = || Step::TryTool("billing".into(), json!({}));
    let scenario = Scenario::new()
        .agent(
            "triage",
            vec![
                try_call(),
                try_call(),
                try_call(),
                try_call(),
                try_call(),
                Step::tool("billing", json!({})),
            ],
        )
        .tool("billing", flaky.clone());
    let sink = MemorySink::new();
    let engine = scenario.engine(sink.clone());
    let alice = user("alice");
    let outcome = engine.start_run(request(&alice)).unwrap().outcome().await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(flaky.calls(), 5, "the sixth call failed fast without reaching the tool");
    let events = sink.events_of(&alice);
    let error = &errors(&events)[0];
    assert_eq!(error.1, AgentErrorCode::CircuitOpen);
    assert_eq!(
        error.2,
        "The triage agent failed after 0 ms: the billing tool failed 5 times in a row, so calls to it are paused for another 30 s."
    );
    let state = |engine: &Engine| {
        engine
            .breakers()
            .into_iter()
            .find(|b| b.name == "tool:billing")
            .unwrap()
            .state
    };
    assert_eq!(state(&engine), "open");
    tokio::time::advance(S(29)).await;
    assert_eq!(state(&engine), "open");
    tokio::time::advance(S(1)).await;
    assert_eq!(state(&engine), "half_open");
    engine.start_run(request(&alice)).unwrap().outcome().await;
    assert_eq!(
        flaky.calls(),
        11,
        "the trial call reached the tool, succeeded, and the rest followed"
    );
    assert_eq!(state(&engine), "closed");
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_reopens_the_model_circuit_and_a_successful_one_closes_it() {
    let mut behaviors = vec![ModelBehavior::Fail("overloaded".into()); 6];
    behaviors.push(ModelBehavior::Reply("fine".into()));
    let model = ScriptedModel::sequence(behaviors);
    let scenario = Scenario::new()
        .model(model.clone())
        .agent("triage", vec![Step::Ask("x".into())]);
    let engine = scenario.engine(MemorySink::new());
    let alice = user("alice");
    let run = async || engine.start_run(request(&alice)).unwrap().outcome().await.status;
    for _ in 0..5 {
        assert_eq!(run().await, RunStatus::Failed);
    }
    assert_eq!(engine.breakers()[0].name, "model");
    assert_eq!(engine.breakers()[0].state, "open");
    run().await;
    assert_eq!(model.calls(), 5, "the open circuit refused the call");
    tokio::time::advance(S(30)).await;
    run().await;
    assert_eq!(model.calls(), 6, "one trial call went through and failed");
    assert_eq!(engine.breakers()[0].state, "open");
    tokio::time::advance(S(30)).await;
    run().await;
    assert_eq!(model.calls(), 7);
    assert_eq!(engine.breakers()[0].state, "closed");
}

#[tokio::test(start_paused = true)]
async fn a_slow_sink_still_gets_the_final_event_within_the_deadline_plus_one_second() {
    let sink = MemorySink::new();
    sink.set_behavior(SinkBehavior::Slow(Duration::from_millis(200)));
    let config = EngineConfig {
        run_timeout: S(3),
        ..EngineConfig::default()
    };
    let scenario = Scenario::new().config(config).agent("triage", vec![Step::Hang]);
    let engine = scenario.engine(sink.clone());
    let started = tokio::time::Instant::now();
    let outcome = engine.start_run(request(&user("a"))).unwrap().outcome().await;
    assert_eq!(outcome.status, RunStatus::TimedOut);
    let last = sink.published().last().cloned().unwrap();
    assert!(last.event.is_final());
    assert!(last.at - started <= S(4), "final at {:?}", last.at - started);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_sink_cannot_keep_a_run_alive_past_its_limit() {
    let sink = MemorySink::new();
    sink.set_behavior(SinkBehavior::Slow(S(3600)));
    let engine = Scenario::new()
        .agent("reporting", vec![Step::answer("hi")])
        .engine(sink.clone());
    let started = tokio::time::Instant::now();
    let outcome = engine.start_run(request(&user("a"))).unwrap().outcome().await;
    assert!(outcome.final_event.is_none());
    assert!(
        started.elapsed() <= S(62),
        "the run ended after {:?}",
        started.elapsed()
    );
    assert_eq!(engine.active_runs(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_end_waits_for_a_slow_store_tells_its_sink_half_a_second_after_it_ended() {
    // The store takes 5 s for each batch: the run's answer is ready at once, its end waits.
    let sink = MemorySink::new();
    sink.set_behavior(SinkBehavior::Slow(S(5)));
    let engine = Scenario::new()
        .agent("reporting", vec![Step::answer("hi")])
        .engine(sink.clone());
    let alice = user("alice");
    let started = tokio::time::Instant::now();
    let handle = engine.start_run(request(&alice)).unwrap();
    let run_id = handle.run_id.clone();
    let outcome = handle.outcome().await;
    assert_eq!(outcome.status, RunStatus::Completed);
    let delayed = sink.delayed_ends();
    assert_eq!(delayed.len(), 1, "told once: {delayed:?}");
    let (end, told) = &delayed[0];
    assert_eq!(
        (&end.user_id, &end.run_id, end.status),
        (&alice, &run_id, RunStatus::Completed)
    );
    assert!(
        *told - started <= END_NOTICE_AFTER + Duration::from_millis(50),
        "told {:?} after the start",
        *told - started
    );
    assert!(
        outcome.final_event.is_some(),
        "stored in the end, within the run's limit"
    );

    // A store that answers at once: nobody is told anything.
    sink.set_behavior(SinkBehavior::Accept);
    engine.start_run(request(&alice)).unwrap().outcome().await;
    assert_eq!(sink.delayed_ends().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_does_not_hang_the_run_and_loses_nothing_once_it_recovers() {
    let sink = MemorySink::new();
    sink.set_behavior(SinkBehavior::Fail);
    let engine = Scenario::new()
        .agent("reporting", vec![Step::answer("hi")])
        .engine(sink.clone());
    let alice = user("alice");
    let first = engine.start_run(request(&alice)).unwrap();
    let first_run = first.run_id.clone();
    let started = tokio::time::Instant::now();
    let outcome = first.outcome().await;
    assert!(outcome.final_event.is_none(), "the store refused everything");
    assert!(started.elapsed() <= S(61), "the run ended by its limit");
    assert_eq!(engine.active_runs(), 0);
    assert!(sink.published().is_empty());
    // The store answers again: the first run's events, tried again, are stored before the
    // second run's, each once, in order.
    sink.set_behavior(SinkBehavior::Accept);
    let second = engine.start_run(request(&alice)).unwrap();
    let second_run = second.run_id.clone();
    assert_eq!(second.outcome().await.status, RunStatus::Completed);
    check_gapless(&sink.events_of(&alice)).unwrap();
    for run in [&first_run, &second_run] {
        let events = sink.events_of_run(run);
        check_run(&events).unwrap();
        assert_eq!(final_status(&events), Some(RunStatus::Completed));
    }
    assert!(sink.events_of(&alice)[0].run_id == first_run);
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_panics_is_tried_again_and_the_events_behind_it_are_not_stranded() {
    let sink = Arc::new(PanickingOnce {
        inner: MemorySink::new(),
        panicked: std::sync::atomic::AtomicBool::new(false),
    });
    let engine = Scenario::new()
        .agent("reporting", vec![Step::answer("hi")])
        .engine(sink.clone());
    let outcome = engine.start_run(request(&user("a"))).unwrap().outcome().await;
    assert_eq!(outcome.status, RunStatus::Completed);
    let events = sink.inner.events_of(&user("a"));
    check_gapless(&events).unwrap();
    check_run(&events).unwrap();
    assert_eq!(outcome.final_event.as_ref(), events.last());
}

/// A sink whose first batch panics.
struct PanickingOnce {
    inner: Arc<MemorySink>,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl EventSink for PanickingOnce {
    async fn append(&self, batch: &[LogEntry]) -> Result<Vec<switchboard_protocol::Seq>, SinkError> {
        if !self.panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("scripted store panic");
        }
        self.inner.append(batch).await
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_the_store_refuses_is_given_up_alone_and_the_rest_are_stored() {
    let sink = Arc::new(Refusing {
        inner: MemorySink::new(),
        wrong_count: false,
    });
    let engine = Scenario::new()
        .agent(
            "reporting",
            vec![
                Step::think("fine"),
                Step::think("poison"),
                Step::think("also fine"),
                Step::answer("hi"),
            ],
        )
        .engine(sink.clone());
    let outcome = engine.start_run(request(&user("a"))).unwrap().outcome().await;
    assert_eq!(outcome.status, RunStatus::Completed);
    let events = sink.inner.events_of(&user("a"));
    check_gapless(&events).unwrap();
    check_run(&events).unwrap();
    let thoughts = switchboard_engine::testkit::thoughts(&events);
    assert!(thoughts.contains(&"fine".to_owned()) && thoughts.contains(&"also fine".to_owned()));
    assert!(
        !thoughts.contains(&"poison".to_owned()),
        "the refused event is given up"
    );
    assert_eq!(outcome.final_event.as_ref(), events.last());
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_answers_for_too_few_events_is_not_asked_again() {
    // Whatever it stored stays stored once: asking again would store events twice.
    let sink = Arc::new(Refusing {
        inner: MemorySink::new(),
        wrong_count: true,
    });
    let engine = Scenario::new()
        .agent("reporting", vec![Step::answer("hi")])
        .engine(sink.clone());
    let outcome = engine.start_run(request(&user("a"))).unwrap().outcome().await;
    let stored = sink.inner.published();
    let batches = sink.inner.batches();
    assert_eq!(stored.len(), batches.iter().sum::<usize>(), "no batch was stored twice");
    check_gapless(&sink.inner.events_of(&user("a"))).unwrap();
    assert_eq!(engine.active_runs(), 0);
    drop(outcome);
}

/// A sink that refuses every batch holding a thought "poison" (as a store refuses data it cannot
/// take), or, with `wrong_count`, answers for one event fewer than it stored.
struct Refusing {
    inner: Arc<MemorySink>,
    wrong_count: bool,
}

#[async_trait::async_trait]
impl EventSink for Refusing {
    async fn append(&self, batch: &[LogEntry]) -> Result<Vec<switchboard_protocol::Seq>, SinkError> {
        let poisoned = batch
            .iter()
            .any(|e| matches!(&e.event.payload, EventPayload::AgentThinking(t) if t.text == "poison"));
        if poisoned {
            return Err(SinkError::Refused("a poisoned event".into()));
        }
        let mut seqs = self.inner.append(batch).await?;
        if self.wrong_count {
            seqs.pop();
        }
        Ok(seqs)
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_on_a_store_that_does_not_answer() {
    let sink = MemorySink::scripted(vec![SinkBehavior::Slow(S(3600))]);
    let engine = Scenario::new()
        .agent("reporting", vec![Step::answer("hi")])
        .engine(sink.clone());
    let handle = engine.start_run(request(&user("a"))).unwrap();
    assert!(handle.outcome().await.final_event.is_none());
    let started = tokio::time::Instant::now();
    engine.shutdown(S(30)).await;
    assert_eq!(
        started.elapsed(),
        S(2),
        "shutdown waited `sink_timeout` for the store, no longer"
    );
    assert!(sink.published().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_queued_events_to_be_stored() {
    // The store takes 62 s for its first batch: the run ends at its limit (61 s) without its
    // final event stored; shutdown waits (up to `sink_timeout`, 2 s) until it is.
    let sink = MemorySink::scripted(vec![SinkBehavior::Slow(S(62))]);
    let engine = Scenario::new()
        .agent("reporting", vec![Step::think("writing"), Step::answer("hi")])
        .engine(sink.clone());
    let handle = engine.start_run(request(&user("a"))).unwrap();
    let outcome = handle.outcome().await;
    assert!(outcome.final_event.is_none());
    engine.shutdown(S(30)).await;
    let events = sink.events_of(&user("a"));
    check_run(&events).unwrap();
    assert_eq!(
        final_status(&events),
        Some(RunStatus::Completed),
        "stored before shutdown returned"
    );
}

#[tokio::test(start_paused = true)]
async fn pieces_of_the_answer_within_a_few_milliseconds_go_out_as_one_partial_result() {
    let chunks = |gap: u64| {
        ModelBehavior::Chunks(
            vec!["Cut ".into(), "costs ".into(), "now.".into()],
            Duration::from_millis(gap),
        )
    };
    let run = async |gap: u64| {
        let scenario = Scenario::new()
            .model(ScriptedModel::new(chunks(gap)))
            .agent("reporting", vec![Step::StreamAnswer("write".into())]);
        let (events, outcome) = scenario.run_with_outcome("go", None).await;
        assert_eq!(outcome.answer.as_deref(), Some("Cut costs now."));
        deltas(&events)
    };
    assert_eq!(run(1).await, ["Cut costs now."], "1 ms apart: one event");
    assert_eq!(run(0).await, ["Cut costs now."], "at once: one event");
    assert_eq!(run(20).await, ["Cut ", "costs ", "now."], "20 ms apart: one each");
}

#[tokio::test(start_paused = true)]
async fn a_reservation_holds_its_place_until_dropped_or_its_run_ends() {
    let config = EngineConfig {
        max_active_runs: 3,
        max_active_runs_per_user: 2,
        ..EngineConfig::default()
    };
    let engine = Scenario::new()
        .agent("reporting", vec![Step::answer("hi")])
        .config(config)
        .engine(MemorySink::new());
    let (alice, bob) = (user("alice"), user("bob"));
    let first = engine.reserve(&alice).unwrap();
    let second = engine.reserve(&alice).unwrap();
    assert_eq!(
        engine.reserve(&alice).unwrap_err(),
        StartError::TooManyActiveRuns { limit: 2 },
        "reserved places count before any run starts"
    );
    let third = engine.reserve(&bob).unwrap();
    assert_eq!(engine.reserve(&bob).unwrap_err(), StartError::Busy { limit: 3 });
    assert_eq!((engine.active_runs(), engine.active_runs_of(&alice)), (3, 2));
    drop(second);
    assert_eq!(
        engine.active_runs_of(&alice),
        1,
        "a dropped reservation gives its place back"
    );
    let run = first
        .start(
            ThreadId::generate(),
            switchboard_protocol::RunId::generate(),
            "hello".into(),
        )
        .unwrap();
    assert_eq!(
        engine.active_runs_of(&alice),
        1,
        "the run holds the reservation's place"
    );
    run.outcome().await;
    drop(third);
    assert_eq!((engine.active_runs(), engine.tracked_users()), (0, 0));
    engine.shutdown(S(1)).await;
    assert_eq!(engine.reserve(&alice).unwrap_err(), StartError::ShuttingDown);
}

#[tokio::test(start_paused = true)]
async fn the_run_end_goes_to_the_log_with_the_final_event_as_typed_data() {
    let sink = MemorySink::new();
    let engine = Scenario::new()
        .agent("triage", vec![Step::Fail("no triage today".into())])
        .agent("reporting", vec![Step::answer("Cut costs.")])
        .engine(sink.clone());
    let outcome = engine.start_run(request(&user("a"))).unwrap().outcome().await;
    let final_event = outcome.final_event.clone().unwrap();
    let end = sink.run_end(&final_event.run_id).unwrap();
    assert_eq!(end.status, RunStatus::Completed);
    assert_eq!(end.answer, outcome.answer);
    assert!(end.answer.as_deref().is_some_and(|a| a.starts_with("Cut costs.")));
    assert_eq!(end.duration_ms, outcome.duration.as_millis() as u64);
    assert_eq!(end.model_calls, outcome.model_calls);
    let EventPayload::AgentCompleted(done) = &final_event.payload else {
        panic!("the final event is agent_completed");
    };
    assert_eq!(end.timings, done.timings);

    let cancelled = hanging().engine(sink.clone());
    let handle = cancelled.start_run(request(&user("b"))).unwrap();
    let run_id = handle.run_id.clone();
    cancelled.cancel(&user("b"), &run_id).unwrap();
    handle.outcome().await;
    let end = sink.run_end(&run_id).unwrap();
    assert_eq!((end.status, end.answer), (RunStatus::Cancelled, None));
}

#[tokio::test(start_paused = true)]
async fn a_run_does_not_wait_for_each_event_to_be_stored_and_runs_share_batches() {
    // Every batch takes the store 1 s: a run that waited for each of its events would take
    // about 8 s. It waits only for its final event: the first batch, then the rest in one.
    let sink = MemorySink::new();
    sink.set_behavior(SinkBehavior::Slow(S(1)));
    let engine = Scenario::new()
        .agent("triage", vec![Step::think("looking"), Step::answer("quick")])
        .agent("reporting", vec![Step::think("writing"), Step::answer("done")])
        .engine(sink.clone());
    let users: Vec<UserId> = (0..20).map(|i| user(&format!("u{i}"))).collect();
    let handles: Vec<_> = users.iter().map(|u| engine.start_run(request(u)).unwrap()).collect();
    for handle in handles {
        let outcome = handle.outcome().await;
        assert_eq!(outcome.status, RunStatus::Completed);
        assert!(outcome.duration <= S(2), "the run took {:?}", outcome.duration);
    }
    for u in &users {
        let events = sink.events_of(u);
        check_gapless(&events).unwrap();
        check_run(&events).unwrap();
    }
    let batches = sink.batches();
    assert_eq!(batches.iter().sum::<usize>(), 20 * 9);
    assert!(batches.len() <= 3, "20 runs' events went in {} batches", batches.len());
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_pushes_back_and_a_stalled_store_still_cannot_keep_a_run_past_its_limit() {
    // The store stalls; the run narrates more events than the queue holds. It waits for room
    // (up to its event limit each time), gives up the events that find none, and ends by its
    // deadline + 1 s; its final event is stored when the store comes back.
    let sink = MemorySink::scripted(vec![SinkBehavior::Slow(S(3600))]);
    let config = EngineConfig {
        run_timeout: S(10),
        ..EngineConfig::default()
    };
    let chatty = vec![Step::think("again"); 5000];
    let engine = Scenario::new()
        .config(config)
        .agent("reporting", [chatty, vec![Step::answer("done")]].concat())
        .engine(sink.clone());
    let started = tokio::time::Instant::now();
    let handle = engine.start_run(request(&user("a"))).unwrap();
    let run_id = handle.run_id.clone();
    let outcome = handle.outcome().await;
    assert!(
        started.elapsed() <= S(11),
        "the run ended after {:?}",
        started.elapsed()
    );
    assert!(outcome.final_event.is_none(), "the store has not stored it yet");
    assert_eq!(engine.active_runs(), 0);
    let stored_final = sink.final_of(&run_id).await;
    let events = sink.events_of_run(&run_id);
    check_gapless(&events).unwrap();
    assert_eq!(events.last(), Some(&stored_final));
    assert_eq!(events.iter().filter(|e| e.is_final()).count(), 1);
    assert!(events.len() < 5000, "events that found no room were given up");
}

#[tokio::test(start_paused = true)]
async fn a_run_id_cannot_be_started_twice_while_active() {
    let engine = hanging().engine(MemorySink::new());
    let first = request(&user("a"));
    engine.start_run(first.clone()).unwrap();
    assert!(matches!(engine.start_run(first), Err(StartError::DuplicateRun(_))));
}

#[test]
fn building_an_engine_refuses_inconsistent_setups() {
    let agent = || switchboard_engine::testkit::ScriptedAgent::new(vec![]);
    let model = || ScriptedModel::ok() as Arc<dyn switchboard_engine::Model>;
    let plan = |first: &str| Plan::new(first, &[], None).unwrap();
    let build = |b: switchboard_engine::EngineBuilder| b.build(MemorySink::new()).map(|_| ()).unwrap_err();
    let cases: Vec<(switchboard_engine::EngineBuilder, BuildError)> = vec![
        (
            Engine::builder().plan(plan("a")).agent("a", agent(), &[]),
            BuildError::NoModel,
        ),
        (
            Engine::builder().model(model()).agent("a", agent(), &[]),
            BuildError::NoPlan,
        ),
        (
            Engine::builder()
                .model(model())
                .plan(plan("b"))
                .agent("a", agent(), &[]),
            BuildError::UnknownAgent("b".into()),
        ),
        (
            Engine::builder()
                .model(model())
                .plan(plan("a"))
                .agent("a", agent(), &["nope"]),
            BuildError::UnknownTool {
                agent: "a".into(),
                tool: "nope".into(),
            },
        ),
        (
            Engine::builder()
                .model(model())
                .plan(plan("a"))
                .agent("a", agent(), &[])
                .agent("a", agent(), &[]),
            BuildError::Duplicate("a".into()),
        ),
        (
            Engine::builder()
                .model(model())
                .plan(plan("a"))
                .agent("a", agent(), &[])
                .config(EngineConfig {
                    run_timeout: Duration::ZERO,
                    ..EngineConfig::default()
                }),
            BuildError::Config(switchboard_engine::ConfigError {
                key: "run_timeout",
                reason: "must be greater than zero",
            }),
        ),
    ];
    for (builder, expected) in cases {
        assert_eq!(build(builder), expected);
    }
    assert!(
        Engine::builder()
            .model(model())
            .plan(plan("a"))
            .agent("Bad Name", agent(), &[])
            .build(MemorySink::new())
            .is_err()
    );
}

/// Cuts a real run's events after `keep` of them, closes the rest with `OpenRun`, and checks
/// that the result keeps the contract.
#[tokio::test(start_paused = true)]
async fn closing_a_run_at_any_point_keeps_the_contract() {
    use switchboard_engine::{Closing, OpenRun};
    let scenario = Scenario::new()
        .agent(
            "triage",
            vec![Step::think("a"), Step::tool("search", json!({})), Step::plan(&["data"])],
        )
        .agent(
            "data",
            vec![Step::tool("search", json!({})), Step::tool("search", json!({}))],
        )
        .agent("reporting", vec![Step::answer("done")])
        .tool("search", ScriptedTool::new(ToolBehavior::Ok(json!(1))));
    let full = scenario.run("go").await;
    for keep in 0..full.len() {
        let mut events: Vec<Event> = full[..keep].to_vec();
        let closing = Closing {
            code: AgentErrorCode::Interrupted,
            status: RunStatus::Interrupted,
            why: "the server stopped",
            elapsed: S(3),
        };
        let template = full[0].clone();
        for (agent, payload) in OpenRun::from_events(&events).closing_events(closing) {
            let seq = switchboard_protocol::Seq::new(events.len() as u64 + 1);
            events.push(Event {
                seq,
                agent_name: agent,
                payload,
                ..template.clone()
            });
        }
        check_run(&events).unwrap_or_else(|e| panic!("cut after {keep}: {e}"));
        assert_eq!(final_status(&events), Some(RunStatus::Interrupted));
    }
    assert!(
        OpenRun::from_events(&full)
            .closing_events(Closing {
                code: AgentErrorCode::Interrupted,
                status: RunStatus::Interrupted,
                why: "x",
                elapsed: S(1),
            })
            .is_empty(),
        "a finished run needs no closing"
    );
}

/// A tool that reads from a "database": one PostgreSQL operation of 150 ms, timed by the
/// tier's clock as a backend times its operations.
struct DatabaseTool(switchboard_protocol::TierClock);

#[async_trait::async_trait]
impl switchboard_engine::Tool for DatabaseTool {
    async fn call(&self, _parameters: serde_json::Value) -> Result<serde_json::Value, switchboard_engine::ToolError> {
        let query = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok::<_, ()>(json!({"rows": 3}))
        };
        Ok(self.0.time("query", query, |_| true).await.unwrap())
    }
}

#[derive(Debug, Default)]
struct ModelCalls(std::sync::Mutex<Vec<(switchboard_protocol::Tier, Duration, bool)>>);

impl switchboard_protocol::TierObserver for ModelCalls {
    fn began(&self, _tier: switchboard_protocol::Tier, _id: switchboard_protocol::OperationId) {}
    fn operation(
        &self,
        tier: switchboard_protocol::Tier,
        id: Option<switchboard_protocol::OperationId>,
        took: Duration,
        failed: bool,
    ) {
        assert!(id.is_some(), "a model call is told when it begins");
        self.0.lock().unwrap().push((tier, took, failed));
    }
}

#[tokio::test(start_paused = true)]
async fn a_model_call_cut_off_by_a_stop_is_not_told_as_the_model_s_failure_but_one_past_its_deadline_is() {
    use switchboard_protocol::Tier;
    let calls = Arc::new(ModelCalls::default());
    let scenario = Scenario::new()
        .model(ScriptedModel::new(ModelBehavior::Hang))
        .agent("triage", vec![Step::Ask("classify".into())])
        .observe_tiers(calls.clone());
    let (_, outcome) = scenario.run_with_outcome("go", Some(Duration::from_millis(300))).await;
    assert_eq!(outcome.status, RunStatus::Cancelled);
    assert_eq!(
        *calls.0.lock().unwrap(),
        [(Tier::Model, Duration::from_millis(300), false)]
    );

    let calls = Arc::new(ModelCalls::default());
    let scenario = Scenario::new()
        .model(ScriptedModel::new(ModelBehavior::Hang))
        .agent("triage", vec![Step::Ask("classify".into())])
        .observe_tiers(calls.clone());
    scenario.run("go").await;
    let seen = calls.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].2, "a call past the model's deadline is its failure: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn the_final_timings_say_how_long_the_run_spent_in_each_tier_its_message_s_storing_included() {
    use switchboard_protocol::{Tier, TierClock};
    let calls = Arc::new(ModelCalls::default());
    let scenario = Scenario::new()
        .model(ScriptedModel::new(ModelBehavior::Delay(
            Duration::from_millis(300),
            "Cut costs.".into(),
        )))
        .tool("lookup", Arc::new(DatabaseTool(TierClock::new(Tier::Postgres))))
        .agent(
            "triage",
            vec![Step::tool("lookup", json!({})), Step::tool("lookup", json!({}))],
        )
        .agent("reporting", vec![Step::StreamAnswer("write".into())])
        .observe_tiers(calls.clone());
    let sink = MemorySink::new();
    let engine = scenario.engine(sink.clone());
    let user = user("tiers");
    let place = engine.reserve(&user).unwrap();
    // What the server does for the run before it starts (storing its message) counts too.
    let store = TierClock::new(Tier::Postgres);
    let accept = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, ()>(())
    };
    place
        .tiers()
        .scope(store.time("accept", accept, |_| true))
        .await
        .unwrap();
    let run = place
        .start(
            ThreadId::generate(),
            switchboard_protocol::RunId::generate(),
            "go".into(),
        )
        .unwrap();
    let run_id = run.run_id.clone();
    let outcome = run.outcome().await;
    assert_eq!(outcome.status, RunStatus::Completed);
    let done = sink.final_of(&run_id).await;
    let EventPayload::AgentCompleted(done) = &done.payload else {
        panic!("no final event");
    };
    let timings = done.timings.as_ref().unwrap();
    assert_eq!(
        timings.tiers,
        std::collections::BTreeMap::from([("postgres".to_owned(), 320), ("model".to_owned(), 300)])
    );
    assert_eq!(timings.model_ms, 300);
    assert_eq!(
        *calls.0.lock().unwrap(),
        [(Tier::Model, Duration::from_millis(300), false)],
        "the observer is told of each model call as it ends"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_that_touched_no_tier_has_no_tiers_in_its_timings() {
    let events = Scenario::new()
        .agent("triage", vec![Step::think("nothing to look up")])
        .run("go")
        .await;
    let EventPayload::AgentCompleted(done) = &events.last().unwrap().payload else {
        panic!("no final event");
    };
    assert!(done.timings.as_ref().unwrap().tiers.is_empty());
}

/// A scenario whose triage asks the model (100 ms a call) and whose reporting answers.
fn asking(model: Arc<ScriptedModel>) -> Scenario {
    Scenario::new()
        .agent("triage", vec![Step::Ask("what is asked?".into())])
        .agent("reporting", vec![Step::answer("done")])
        .model(model)
}

#[tokio::test(start_paused = true)]
async fn a_held_run_calls_its_model_at_once_and_is_seen_only_once_released() {
    let model = ScriptedModel::new(ModelBehavior::Delay(Duration::from_millis(100), "ok".into()));
    let sink = MemorySink::new();
    let engine = asking(model.clone()).engine(sink.clone());
    let (alice, bob) = (user("alice"), user("bob"));
    let held_request = request(&alice);
    let started_at = tokio::time::Instant::now();
    let (handle, held) = engine
        .reserve(&alice)
        .unwrap()
        .start_held(held_request.thread_id, held_request.run_id, held_request.text)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(model.calls(), 1, "the model is called before the run is released");
    assert!(sink.events_of(&alice).is_empty(), "nothing of a held run is stored");
    // Another user's run is not held back by it.
    let bob_run = engine.start_run(request(&bob)).unwrap();
    assert_eq!(bob_run.outcome().await.status, RunStatus::Completed);
    assert!(sink.events_of(&alice).is_empty());
    // The held run has ended meanwhile (its final event waits, unstored): released, everything
    // is stored, in order, once.
    let released_at = tokio::time::Instant::now();
    held.release();
    let outcome = handle.outcome().await;
    assert_eq!(outcome.status, RunStatus::Completed);
    assert!(
        outcome.duration >= released_at - started_at,
        "a run that ends held ends once released: {:?}",
        outcome.duration
    );
    let events = sink.events_of(&alice);
    check_run(&events).unwrap();
    check_gapless(&events).unwrap();
    assert_eq!(
        summary(&events),
        [
            "supervisor agent_started",
            "triage agent_started",
            "triage agent_completed completed",
            "reporting agent_started",
            "reporting agent_completed completed",
            "supervisor agent_completed completed final",
        ]
    );
    assert_eq!(engine.active_runs_of(&alice), 0);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_held_run_drops_its_calls_stores_nothing_and_gives_its_place_back() {
    let model = ScriptedModel::new(ModelBehavior::Delay(S(5), "ok".into()));
    let sink = MemorySink::new();
    let engine = asking(model.clone()).engine(sink.clone());
    let alice = user("alice");
    let mut handles = Vec::new();
    for _ in 0..3 {
        let held_request = request(&alice);
        let (handle, held) = engine
            .reserve(&alice)
            .unwrap()
            .start_held(held_request.thread_id, held_request.run_id, held_request.text)
            .unwrap();
        handles.push((handle, held));
    }
    assert_eq!(
        engine.reserve(&alice).unwrap_err(),
        StartError::TooManyActiveRuns { limit: 3 },
        "a held run holds its place"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(model.calls(), 3);
    let (first, held) = handles.remove(0);
    let run_id = first.run_id.clone();
    held.abandon();
    // Dropping a held run abandons it too.
    let (second, held) = handles.remove(0);
    drop(held);
    assert_eq!(engine.active_runs_of(&alice), 1, "their places are given back at once");
    assert!(
        engine.cancel(&alice, &run_id).is_err(),
        "an abandoned run is not active"
    );
    for abandoned in [first, second] {
        let outcome = abandoned.outcome().await;
        assert_eq!(
            (outcome.status, outcome.final_event),
            (RunStatus::Interrupted, None),
            "an abandoned run has no final event"
        );
    }
    assert_eq!(model.dropped(), 2, "the model calls of abandoned runs are dropped");
    // A third, abandoned keeping its place: the place starts another run, stored whole.
    let kept_request = request(&alice);
    let (kept, held) = engine
        .reserve(&alice)
        .unwrap()
        .start_held(kept_request.thread_id.clone(), kept_request.run_id, kept_request.text)
        .unwrap();
    let place = held.abandon_keeping_place().expect("a held run has its place");
    assert_eq!(engine.active_runs_of(&alice), 2, "the place is kept");
    assert_eq!(kept.outcome().await.final_event, None);
    let again = request(&alice);
    let again_run = again.run_id.clone();
    let restarted = place.start(again.thread_id, again.run_id, again.text).unwrap();
    assert_eq!(restarted.outcome().await.status, RunStatus::Completed);
    // The last, released late, is stored whole; the abandoned ones never.
    let (third, held) = handles.remove(0);
    let third_run = third.run_id.clone();
    held.release();
    assert_eq!(third.outcome().await.status, RunStatus::Completed);
    tokio::time::sleep(S(60)).await;
    let events = sink.events_of(&alice);
    check_run(&sink.events_of_run(&third_run)).unwrap();
    check_run(&sink.events_of_run(&again_run)).unwrap();
    check_gapless(&events).unwrap();
    assert!(
        events.iter().all(|e| e.run_id == third_run || e.run_id == again_run),
        "{:#?}",
        summary(&events)
    );
}
