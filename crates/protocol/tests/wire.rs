//! The wire types against the JSON shapes of PROTOCOL.md: each case is one line of data.

use serde_json::{Value, json};
use switchboard_protocol::{ClientFrame, ErrorCode, ServerFrame};

/// Parses `frame` as a server frame, checks its type name, and checks that writing it back gives the
/// same JSON.
fn check_server(frame: Value, type_name: &str) {
    let parsed: ServerFrame =
        serde_json::from_value(frame.clone()).unwrap_or_else(|e| panic!("{type_name} did not parse: {e}\n{frame:#}"));
    assert_eq!(parsed.type_name(), type_name);
    assert_eq!(
        serde_json::to_value(&parsed).unwrap(),
        frame,
        "round trip of {type_name}"
    );
}

fn event(kind: &str, payload: Value) -> Value {
    json!({"type": kind, "seq": 42, "run_id": "run_1f2e", "thread_id": "thr_9a",
           "agent_name": "triage", "timestamp": "2026-11-22T22:29:32.123Z",
           "trace_id": "0123456789abcdef0123456789abcdef", "payload": payload})
}

fn control(kind: &str, payload: Value) -> Value {
    json!({"type": kind, "timestamp": "2026-11-22T22:29:32.123Z", "payload": payload})
}

#[test]
fn every_run_event_round_trips() {
    let cases = [
        ("agent_started", json!({"task": "classify the request"})),
        ("agent_thinking", json!({"text": "looking", "step": 2, "progress": 0.5})),
        ("agent_thinking", json!({"text": "looking"})),
        (
            "tool_executing",
            json!({"tool_call_id": "call_1", "tool_name": "search", "parameters": {"q": "x"}}),
        ),
        (
            "tool_completed",
            json!({"tool_call_id": "call_1", "tool_name": "search", "success": true, "results": [1, 2], "duration_ms": 12}),
        ),
        (
            "tool_completed",
            json!({"tool_call_id": "call_1", "tool_name": "search", "success": false, "results": null, "duration_ms": 10000, "error": "timed out"}),
        ),
        ("partial_result", json!({"delta": "Your spend"})),
        (
            "agent_error",
            json!({"code": "timeout", "message": "The data agent did not finish within 25 s.", "retryable": true, "elapsed_ms": 25000, "timeout_ms": 25000}),
        ),
        (
            "agent_error",
            json!({"code": "circuit_open", "message": "m", "retryable": true, "elapsed_ms": 1}),
        ),
        (
            "agent_error",
            json!({"code": "llm_error", "message": "m", "retryable": false, "elapsed_ms": 1}),
        ),
        (
            "agent_completed",
            json!({"status": "completed", "duration_ms": 5, "final": false}),
        ),
        (
            "agent_completed",
            json!({"status": "completed", "duration_ms": 5, "final": true,
            "result": {"text": "# Answer"}, "missing": ["data"],
            "timings": {"queue_ms": 0, "store_ms": 1, "model_ms": 2, "tools_ms": 3, "agents": {"triage": 4}, "total_ms": 9}}),
        ),
        (
            "agent_completed",
            json!({"status": "timed_out", "duration_ms": 60000, "final": true}),
        ),
        (
            "agent_completed",
            json!({"status": "interrupted", "duration_ms": 1, "final": true}),
        ),
    ];
    for (kind, payload) in cases {
        check_server(event(kind, payload.clone()), kind);
        check_written_before_its_seq(event(kind, payload));
    }
}

/// The event's JSON written before the log gives it its seq (`NewEvent::to_json`), then numbered,
/// is exactly the JSON of the numbered event, for any seq.
fn check_written_before_its_seq(frame: Value) {
    let event: switchboard_protocol::Event = serde_json::from_value(frame).unwrap();
    let new = switchboard_protocol::NewEvent {
        run_id: event.run_id.clone(),
        thread_id: event.thread_id.clone(),
        agent_name: event.agent_name.clone(),
        timestamp: event.timestamp,
        trace_id: event.trace_id.clone(),
        payload: event.payload.clone(),
    };
    let unnumbered = new.to_json().unwrap();
    for seq in [1, 42, u64::MAX] {
        let numbered = switchboard_protocol::Event {
            seq: switchboard_protocol::Seq::new(seq),
            ..event.clone()
        };
        assert_eq!(
            unnumbered.numbered(numbered.seq),
            serde_json::to_string(&numbered).unwrap()
        );
    }
}

#[test]
fn every_control_frame_round_trips() {
    let cases = [
        (
            "connection_established",
            json!({"connection_id": "conn_1", "user_id": "usr_1", "protocol": "switchboard.v1",
            "server_time": "2026-11-22T22:29:32.123Z", "heartbeat_interval_ms": 25000, "last_seq": 0}),
        ),
        (
            "message_accepted",
            json!({"client_message_id": "c1", "message_id": "msg_1", "thread_id": "thr_1", "run_id": "run_1"}),
        ),
        (
            "message_accepted",
            json!({"client_message_id": null, "message_id": "msg_1", "thread_id": "thr_1", "run_id": "run_1"}),
        ),
        (
            "heartbeat",
            json!({"server_time": "2026-11-22T22:29:32.123Z", "last_seq": 7}),
        ),
        ("pong", json!({})),
        (
            "error",
            json!({"code": "thread_not_found", "message": "No such thread.", "ref": "c1"}),
        ),
        ("error", json!({"code": "invalid_json", "message": "m"})),
        (
            "thread_history",
            json!({"thread_id": "thr_1", "messages": [
            {"id": "msg_1", "role": "user", "text": "hi", "run_id": "run_1", "created_at": "2026-11-22T22:29:32.123Z"},
            {"id": "msg_2", "role": "assistant", "text": "hello", "run_id": null, "created_at": "2026-11-22T22:29:33.000Z"}]}),
        ),
        ("resumed", json!({"from_seq": 3, "to_seq": 9})),
    ];
    for (kind, payload) in cases {
        check_server(control(kind, payload), kind);
    }
}

#[test]
fn server_frames_with_bad_fields_are_refused() {
    let cases = [
        event("agent_started", json!({})),
        event(
            "agent_error",
            json!({"code": "melted", "message": "m", "retryable": true, "elapsed_ms": 1}),
        ),
        json!({"type": "agent_started", "seq": 1, "run_id": "thr_wrongprefix", "thread_id": "thr_9a", "agent_name": "triage",
               "timestamp": "2026-11-22T22:29:32.123Z", "trace_id": "0123456789abcdef0123456789abcdef", "payload": {"task": "t"}}),
        control("pong", json!({}))
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.remove("timestamp");
                Value::Object(o)
            })
            .unwrap(),
    ];
    for frame in cases {
        assert!(
            serde_json::from_value::<ServerFrame>(frame.clone()).is_err(),
            "accepted {frame}"
        );
    }
}

/// Parses a client frame and compares it with the expected frame (as JSON) or error code.
fn check_client(input: &str, expected: Result<Value, ErrorCode>) {
    let got = ClientFrame::parse(input)
        .map(|f| serde_json::to_value(f).unwrap())
        .map_err(|e| e.code);
    assert_eq!(got, expected, "input: {input}");
}

#[test]
fn client_frames_parse_or_get_the_right_error_code() {
    use ErrorCode::*;
    let cases: Vec<(&str, Result<Value, ErrorCode>)> = vec![
        (
            r#"{"type":"user_message","payload":{"text":"hi"}}"#,
            Ok(json!({"type":"user_message","payload":{"text":"hi"}})),
        ),
        (
            r#"{"type":"user_message","payload":{"text":"hi","thread_id":"thr_1","client_message_id":"c1","extra":1}}"#,
            Ok(json!({"type":"user_message","payload":{"text":"hi","thread_id":"thr_1","client_message_id":"c1"}})),
        ),
        (
            r#"{"type":"stop_agent","payload":{"run_id":"run_1"}}"#,
            Ok(json!({"type":"stop_agent","payload":{"run_id":"run_1"}})),
        ),
        (
            r#"{"type":"resume","payload":{"after_seq":5}}"#,
            Ok(json!({"type":"resume","payload":{"after_seq":5}})),
        ),
        (
            r#"{"type":"get_thread_history","payload":{"thread_id":"thr_1"}}"#,
            Ok(json!({"type":"get_thread_history","payload":{"thread_id":"thr_1"}})),
        ),
        (r#"{"type":"ping"}"#, Ok(json!({"type":"ping","payload":{}}))),
        (
            r#"{"type":"ping","payload":{}}"#,
            Ok(json!({"type":"ping","payload":{}})),
        ),
        ("not json", Err(InvalidJson)),
        ("[1,2]", Err(InvalidJson)),
        (r#"{"payload":{}}"#, Err(InvalidJson)),
        (r#"{"type":5}"#, Err(InvalidJson)),
        (r#"{"type":"dance","payload":{}}"#, Err(UnknownType)),
        (r#"{"type":"user_message"}"#, Err(InvalidPayload)),
        (r#"{"type":"user_message","payload":{"text":7}}"#, Err(InvalidPayload)),
        (r#"{"type":"user_message","payload":"hi"}"#, Err(InvalidPayload)),
        (
            r#"{"type":"user_message","payload":{"text":"hi","thread_id":"run_1"}}"#,
            Err(InvalidPayload),
        ),
        (r#"{"type":"stop_agent","payload":{}}"#, Err(InvalidPayload)),
        (r#"{"type":"resume","payload":{"after_seq":-1}}"#, Err(InvalidPayload)),
    ];
    for (input, expected) in cases {
        check_client(input, expected);
    }
}

#[test]
fn error_messages_quote_only_a_short_piece_of_a_long_frame() {
    let long = "x".repeat(10_000);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"type": "resume", "payload": {"after_seq": long}}),
            "expected u64",
        ),
        (
            json!({"type": "user_message", "payload": {"text": "hi", "thread_id": format!("thr_{long}")}}),
            "not a valid thread id",
        ),
        (json!({"type": long, "payload": 1}), "must be a JSON object"),
        (json!({"type": long}), "unknown frame type"),
    ];
    for (frame, expected) in cases {
        let error = ClientFrame::parse(&frame.to_string()).unwrap_err();
        assert!(
            error.message.chars().count() <= 512 && error.message.contains(expected),
            "{} characters, expected `{expected}`: {}",
            error.message.chars().count(),
            error.message
        );
    }
}

#[test]
fn an_event_written_before_its_seq_is_the_json_of_the_numbered_event() {
    use switchboard_protocol::{
        AgentCompleted, AgentName, AgentThinking, EventPayload, NewEvent, RunId, RunStatus, Seq, ThreadId, Timestamp,
        TraceId,
    };
    let payloads = [
        EventPayload::AgentThinking(AgentThinking {
            text: "Reading \"30 days\" of calls…\n".into(),
            step: Some(2),
            progress: None,
        }),
        EventPayload::AgentCompleted(AgentCompleted {
            status: RunStatus::Completed,
            duration_ms: 1200,
            result: Some(json!({"text": "done", "nested": {"a": [1, 2]}})),
            is_final: true,
            timings: None,
            missing: Vec::new(),
            model_calls: Vec::new(),
        }),
    ];
    for payload in payloads {
        let event = NewEvent {
            run_id: RunId::generate(),
            thread_id: ThreadId::generate(),
            agent_name: AgentName::supervisor(),
            timestamp: Timestamp::now(),
            trace_id: TraceId::generate(),
            payload,
        };
        let unnumbered = event.to_json().unwrap();
        for seq in [1, 42, u64::MAX] {
            let expected = serde_json::to_string(&event.clone().numbered(Seq::new(seq))).unwrap();
            assert_eq!(unnumbered.numbered(Seq::new(seq)), expected);
        }
    }
}
