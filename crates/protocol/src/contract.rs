//! The event contract of PROTOCOL.md (sections 2, 3 and 5) as a client sees it on one
//! connection: `StreamCheck` is fed every frame of a socket, in order, and lists every problem it
//! finds, each once and as its own entry: a gap in `seq`, a duplicate, an event out of order,
//! events of a run out of its order rules, a second final event, or (at `finish`) a run that
//! never got its final event. No I/O and no clock: the load test feeds it live frames, the tests
//! recorded ones.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::{
    AgentName, Control, ErrorCode, Event, EventPayload, RunId, RunStatus, Seq, ServerFrame, ThreadId, TraceId,
};
use serde_json::Value;

/// One way a stream broke the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Events are missing: `next` came where `expected` was due.
    Gap {
        /// The seq that was due.
        expected: Seq,
        /// The seq that came.
        next: Seq,
    },
    /// An event came a second time.
    Duplicate {
        /// Its seq.
        seq: Seq,
    },
    /// An event came after a later one, never seen before (a gap filled late).
    OutOfOrder {
        /// Its seq.
        seq: Seq,
        /// The newest seq before it.
        after: Seq,
    },
    /// An event of a run came before the `message_accepted` that started the run.
    BeforeAccepted {
        /// The run.
        run: RunId,
    },
    /// An event of a run that no message of this connection started, on a connection whose
    /// user has no other connection.
    UnknownRun {
        /// The run.
        run: RunId,
    },
    /// An event of a run carries another thread or trace than the run's.
    OtherRun {
        /// The run the event names.
        run: RunId,
        /// The event's seq.
        seq: Seq,
        /// What differs.
        what: &'static str,
    },
    /// The run's first event is not the supervisor's `agent_started`.
    FirstEvent {
        /// The run.
        run: RunId,
        /// The type of its first event.
        kind: &'static str,
        /// The agent of its first event.
        agent: AgentName,
    },
    /// Agents do not nest: a start, an end or a step where the open agent is another.
    Nesting {
        /// The run.
        run: RunId,
        /// The event's seq.
        seq: Seq,
        /// What happened, a sentence.
        detail: String,
    },
    /// A `tool_completed` without its `tool_executing`, or an agent that ends with a tool open.
    ToolPairing {
        /// The run.
        run: RunId,
        /// The event's seq.
        seq: Seq,
        /// What happened, a sentence.
        detail: String,
    },
    /// An agent ended with a failure no `agent_error` told.
    UntoldFailure {
        /// The run.
        run: RunId,
        /// The agent.
        agent: AgentName,
        /// How it ended.
        status: RunStatus,
    },
    /// A completed run's final event has no `result.text`.
    NoAnswer {
        /// The run.
        run: RunId,
    },
    /// A second final event of a run.
    SecondFinal {
        /// The run.
        run: RunId,
        /// The second final event's seq.
        seq: Seq,
    },
    /// An event of a run after its final event.
    AfterFinal {
        /// The run.
        run: RunId,
        /// The event's seq.
        seq: Seq,
    },
    /// A run started on this connection never got its final event.
    MissingFinal {
        /// The run.
        run: RunId,
    },
    /// An `agent_error` whose message is not a sentence (at least 10 characters, ending with a
    /// full stop): every failure is told to the user as one.
    NotASentence {
        /// The run.
        run: RunId,
        /// The event's seq.
        seq: Seq,
        /// The message.
        message: String,
    },
    /// A final event without `timings`.
    NoTimings {
        /// The run.
        run: RunId,
    },
}

impl Problem {
    /// A short stable name of the kind of problem, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Gap { .. } => "gap",
            Problem::Duplicate { .. } => "duplicate",
            Problem::OutOfOrder { .. } => "out_of_order",
            Problem::BeforeAccepted { .. } => "before_accepted",
            Problem::UnknownRun { .. } => "unknown_run",
            Problem::OtherRun { .. } => "other_run",
            Problem::FirstEvent { .. } => "first_event",
            Problem::Nesting { .. } => "nesting",
            Problem::ToolPairing { .. } => "tool_pairing",
            Problem::UntoldFailure { .. } => "untold_failure",
            Problem::NoAnswer { .. } => "no_answer",
            Problem::SecondFinal { .. } => "second_final",
            Problem::AfterFinal { .. } => "after_final",
            Problem::MissingFinal { .. } => "missing_final",
            Problem::NotASentence { .. } => "not_a_sentence",
            Problem::NoTimings { .. } => "no_timings",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Gap { expected, next } => {
                write!(
                    f,
                    "seq {next} came where {expected} was due: events {expected}..{next} (excluded) are missing"
                )
            }
            Problem::Duplicate { seq } => write!(f, "the event with seq {seq} came twice"),
            Problem::OutOfOrder { seq, after } => write!(f, "the event with seq {seq} came after seq {after}"),
            Problem::BeforeAccepted { run } => {
                write!(f, "events of run {run} came before its message_accepted")
            }
            Problem::UnknownRun { run } => write!(f, "events of run {run} came, which no message of this user started"),
            Problem::OtherRun { run, seq, what } => {
                write!(
                    f,
                    "the event with seq {seq} of run {run} carries another {what} than the run's"
                )
            }
            Problem::FirstEvent { run, kind, agent } => write!(
                f,
                "run {run} began with {kind} of {agent}, not agent_started of supervisor"
            ),
            Problem::Nesting { run, seq, detail } => write!(f, "run {run}, seq {seq}: {detail}"),
            Problem::ToolPairing { run, seq, detail } => write!(f, "run {run}, seq {seq}: {detail}"),
            Problem::UntoldFailure { run, agent, status } => write!(
                f,
                "in run {run}, {agent} ended {} with no agent_error before it",
                status.as_str()
            ),
            Problem::NoAnswer { run } => write!(f, "run {run} completed without result.text"),
            Problem::SecondFinal { run, seq } => write!(f, "run {run} got a second final event (seq {seq})"),
            Problem::AfterFinal { run, seq } => write!(f, "run {run} got an event (seq {seq}) after its final event"),
            Problem::MissingFinal { run } => write!(f, "run {run} never got its final event"),
            Problem::NotASentence { run, seq, message } => {
                write!(
                    f,
                    "run {run}, seq {seq}: the agent_error message {message:?} is not a sentence"
                )
            }
            Problem::NoTimings { run } => write!(f, "the final event of run {run} has no timings"),
        }
    }
}

/// What the checker knows of one run.
#[derive(Debug)]
struct RunState {
    /// The thread `message_accepted` named (none for a run another connection started).
    accepted_thread: Option<ThreadId>,
    /// The thread and trace of its first event.
    first: Option<(ThreadId, TraceId)>,
    /// Whether the rules of a whole run apply: its first event was seen, and no gap since.
    whole: bool,
    /// The open agents, outermost first.
    open: Vec<AgentName>,
    /// Open tool calls by id, with their agent.
    tools: HashMap<String, (AgentName, String)>,
    /// The agent whose `agent_error` was the run's previous event.
    told: Option<AgentName>,
    /// Whether its final event came.
    ended: bool,
    /// Whether it is taken to be the run of a message whose storing the server could not
    /// confirm (`store_unavailable`): it must end like one this connection started.
    adopted: bool,
}

impl RunState {
    fn new(accepted_thread: Option<ThreadId>) -> Self {
        Self {
            accepted_thread,
            first: None,
            whole: true,
            open: Vec::new(),
            tools: HashMap::new(),
            told: None,
            ended: false,
            adopted: false,
        }
    }
}

/// The checker of one connection's stream.
#[derive(Debug)]
pub struct StreamCheck {
    /// Whether other connections of the same user may start runs (their events come here too).
    shared: bool,
    /// The newest seq seen (or the `last_seq` the connection began after).
    last: Option<Seq>,
    /// Every seq seen.
    seen: HashSet<Seq>,
    runs: HashMap<RunId, RunState>,
    problems: Vec<Problem>,
    /// Messages the server answered with `store_unavailable`: each may have been stored after
    /// all, and its run start later without a `message_accepted` (the server starts the run of
    /// a message stored once the store answers again).
    uncertain: usize,
    /// Fed the events of one run only (the engine's tests): their seqs rise, with the other
    /// runs' between them, and the first event's run is the one started here.
    one_run: bool,
}

impl StreamCheck {
    /// A checker for a connection whose user has no other connection (every run on it was
    /// started by it), or, with `shared`, one of several connections of one user.
    pub fn new(shared: bool) -> Self {
        Self {
            shared,
            last: None,
            seen: HashSet::new(),
            runs: HashMap::new(),
            problems: Vec::new(),
            uncertain: 0,
            one_run: false,
        }
    }

    /// A checker of the events of one run, fed with [`StreamCheck::feed_event`]: every rule of a
    /// run applies (its first event, the order rules, one final event, and at `finish` a final
    /// event at all); seqs must rise but may skip (the user's other runs); an event of another
    /// run is a problem.
    pub fn of_run() -> Self {
        Self {
            one_run: true,
            ..Self::new(false)
        }
    }

    /// Takes the next event of the stream (as [`StreamCheck::feed`] takes an event's frame).
    pub fn feed_event(&mut self, event: &Event) {
        self.event(event);
    }

    /// Takes the next frame of the stream.
    pub fn feed(&mut self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Event(event) => self.event(event),
            ServerFrame::Control(control) => match &control.body {
                Control::ConnectionEstablished(established) if self.last.is_none() => {
                    self.last = Some(established.last_seq);
                }
                Control::Resumed(resumed) => self.last = Some(resumed.from_seq),
                Control::Error(error) if error.code == ErrorCode::StoreUnavailable && error.reference.is_some() => {
                    self.uncertain += 1;
                }
                Control::MessageAccepted(accepted) => match self.runs.get_mut(&accepted.run_id) {
                    // The same client_message_id sent again is answered with the same run (also
                    // the run of a message whose storing was uncertain, when it is sent again).
                    Some(run) if run.accepted_thread.is_some() || run.adopted => {}
                    Some(run) => {
                        run.accepted_thread = Some(accepted.thread_id.clone());
                        self.problems.push(Problem::BeforeAccepted {
                            run: accepted.run_id.clone(),
                        });
                    }
                    None => {
                        self.runs
                            .insert(accepted.run_id.clone(), RunState::new(Some(accepted.thread_id.clone())));
                    }
                },
                _ => {}
            },
        }
    }

    /// The newest seq seen (or the `last_seq` the connection began after): where a new
    /// connection resumes the stream.
    pub fn last_seq(&self) -> Option<Seq> {
        self.last
    }

    /// `messages` sent on a connection that was lost before they were answered: each may have
    /// started a run, which comes without `message_accepted` on the next connection.
    pub fn unanswered(&mut self, messages: usize) {
        self.uncertain += messages;
    }

    /// The problems found so far.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The end of the stream: every problem, with a `MissingFinal` for each run this connection
    /// started that did not end.
    pub fn finish(mut self) -> Vec<Problem> {
        let mut missing: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, r)| (r.accepted_thread.is_some() || r.adopted) && !r.ended)
            .map(|(id, _)| id.clone())
            .collect();
        missing.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        self.problems
            .extend(missing.into_iter().map(|run| Problem::MissingFinal { run }));
        self.problems
    }

    fn event(&mut self, event: &Event) {
        // The user's stream: seq +1 each time, nothing twice.
        if !self.seen.insert(event.seq) {
            self.problems.push(Problem::Duplicate { seq: event.seq });
            return;
        }
        match self.last {
            Some(last) if event.seq <= last => {
                self.problems.push(Problem::OutOfOrder {
                    seq: event.seq,
                    after: last,
                });
            }
            Some(last) if event.seq != last.next() && !self.one_run => {
                self.problems.push(Problem::Gap {
                    expected: last.next(),
                    next: event.seq,
                });
                // Which runs the missing events belonged to is unknown: the order rules of
                // the runs open now no longer apply (their final events still must come).
                for run in self.runs.values_mut() {
                    run.whole = false;
                }
            }
            _ => {}
        }
        self.last = Some(self.last.map_or(event.seq, |last| last.max(event.seq)));
        self.run_event(event);
    }

    fn run_event(&mut self, event: &Event) {
        let shared = self.shared;
        let problems = &mut self.problems;
        let run_id = &event.run_id;
        let uncertain = &mut self.uncertain;
        let first_of_one = self.one_run && self.runs.is_empty();
        let run = self.runs.entry(run_id.clone()).or_insert_with(|| {
            let mut run = RunState::new(None);
            if first_of_one {
                run.accepted_thread = Some(event.thread_id.clone());
            } else if *uncertain > 0 && !shared {
                // On a connection of its own, an unannounced run is that of a message whose
                // storing was uncertain (on a shared one, it may be another connection's).
                *uncertain -= 1;
                run.adopted = true;
            } else if !shared {
                problems.push(Problem::UnknownRun { run: run_id.clone() });
            }
            run
        });
        let seq = event.seq;
        if run.ended {
            problems.push(if event.is_final() {
                Problem::SecondFinal {
                    run: run_id.clone(),
                    seq,
                }
            } else {
                Problem::AfterFinal {
                    run: run_id.clone(),
                    seq,
                }
            });
            return;
        }
        match &run.first {
            None => {
                let opening =
                    matches!(event.payload, EventPayload::AgentStarted(_)) && is_supervisor(&event.agent_name);
                if !opening {
                    if (run.accepted_thread.is_some() || run.adopted) && run.whole {
                        problems.push(Problem::FirstEvent {
                            run: run_id.clone(),
                            kind: event.type_name(),
                            agent: event.agent_name.clone(),
                        });
                    }
                    // Seen from its middle (another connection's run, or after a gap).
                    run.whole = false;
                }
                run.first = Some((event.thread_id.clone(), event.trace_id.clone()));
            }
            Some((thread, trace)) => {
                let what = if *thread != event.thread_id {
                    Some("thread")
                } else if *trace != event.trace_id {
                    Some("trace")
                } else {
                    None
                };
                if let Some(what) = what {
                    problems.push(Problem::OtherRun {
                        run: run_id.clone(),
                        seq,
                        what,
                    });
                }
            }
        }
        if run.accepted_thread.as_ref().is_some_and(|t| *t != event.thread_id) {
            problems.push(Problem::OtherRun {
                run: run_id.clone(),
                seq,
                what: "thread",
            });
        }
        if let EventPayload::AgentCompleted(done) = &event.payload
            && done.is_final
        {
            run.ended = true;
            if done.timings.is_none() {
                problems.push(Problem::NoTimings { run: run_id.clone() });
            }
            if done.status == RunStatus::Completed
                && done
                    .result
                    .as_ref()
                    .and_then(|r| r.get("text"))
                    .and_then(Value::as_str)
                    .is_none()
            {
                problems.push(Problem::NoAnswer { run: run_id.clone() });
            }
        }
        if run.whole {
            order_rules(run, event, problems);
        }
        if let EventPayload::AgentError(error) = &event.payload
            && (error.message.chars().count() < 10 || !error.message.ends_with('.'))
        {
            problems.push(Problem::NotASentence {
                run: run_id.clone(),
                seq,
                message: error.message.clone(),
            });
        }
        run.told = match &event.payload {
            EventPayload::AgentError(_) => Some(event.agent_name.clone()),
            _ => None,
        };
    }
}

fn is_supervisor(agent: &AgentName) -> bool {
    agent.as_str() == "supervisor"
}

/// The order rules of PROTOCOL.md section 3 (1, 3 and 4) for an event of a run seen whole.
fn order_rules(run: &mut RunState, event: &Event, problems: &mut Vec<Problem>) {
    let agent = &event.agent_name;
    let (run_id, seq) = (&event.run_id, event.seq);
    let nesting = |detail: String| Problem::Nesting {
        run: run_id.clone(),
        seq,
        detail,
    };
    let top = run.open.last();
    let open_here = top == Some(agent);
    match &event.payload {
        EventPayload::AgentStarted(_) => {
            let allowed = match top {
                None => is_supervisor(agent) && run.open.is_empty(),
                Some(top) => is_supervisor(top) && !is_supervisor(agent),
            };
            if !allowed {
                let inside = top.map_or_else(|| "after the supervisor ended".to_owned(), |t| format!("inside {t}"));
                problems.push(nesting(format!("{agent} started {inside}")));
            }
            run.open.push(agent.clone());
        }
        EventPayload::AgentCompleted(done) => {
            if !open_here {
                problems.push(nesting(format!("{agent} completed while it was not the open agent")));
            }
            if run.tools.values().any(|(a, _)| a == agent) {
                problems.push(Problem::ToolPairing {
                    run: run_id.clone(),
                    seq,
                    detail: format!("{agent} completed with a tool call still open"),
                });
            }
            if done.is_final != is_supervisor(agent) {
                problems.push(nesting(format!(
                    "agent_completed of {agent} has final: {}",
                    done.is_final
                )));
            }
            if done.status != RunStatus::Completed && run.told.as_ref() != Some(agent) {
                problems.push(Problem::UntoldFailure {
                    run: run_id.clone(),
                    agent: agent.clone(),
                    status: done.status,
                });
            }
            if let Some(at) = run.open.iter().rposition(|a| a == agent) {
                run.open.truncate(at);
            }
        }
        EventPayload::ToolExecuting(call) => {
            if !open_here {
                problems.push(nesting(format!("{agent} called {} while not open", call.tool_name)));
            }
            if run
                .tools
                .insert(call.tool_call_id.clone(), (agent.clone(), call.tool_name.clone()))
                .is_some()
            {
                problems.push(Problem::ToolPairing {
                    run: run_id.clone(),
                    seq,
                    detail: format!("tool call id {} was used twice", call.tool_call_id),
                });
            }
        }
        EventPayload::ToolCompleted(done) => match run.tools.remove(&done.tool_call_id) {
            Some((of, name)) if of == *agent && name == done.tool_name => {}
            Some((of, name)) if of == *agent => problems.push(Problem::ToolPairing {
                run: run_id.clone(),
                seq,
                detail: format!(
                    "tool_completed {} names the tool {}, but its tool_executing named {name}",
                    done.tool_call_id, done.tool_name
                ),
            }),
            _ => problems.push(Problem::ToolPairing {
                run: run_id.clone(),
                seq,
                detail: format!(
                    "tool_completed {} of {agent} has no tool_executing of that agent before it",
                    done.tool_call_id
                ),
            }),
        },
        EventPayload::AgentThinking(_) | EventPayload::PartialResult(_) | EventPayload::AgentError(_) => {
            if !open_here {
                problems.push(nesting(format!(
                    "{} of {agent} while it was not open",
                    event.type_name()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RUN_A: &str = "run_00000000000000000000000000000001";
    const RUN_B: &str = "run_00000000000000000000000000000002";

    fn frame(value: Value) -> ServerFrame {
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
    }

    fn control(kind: &str, payload: Value) -> Value {
        json!({"type": kind, "timestamp": "2026-12-02T08:00:00.000Z", "payload": payload})
    }

    fn event(seq: u64, run: &str, agent: &str, kind: &str, payload: Value) -> Value {
        json!({
            "type": kind, "seq": seq, "run_id": run, "thread_id": format!("thr_{}", &run[4..]),
            "agent_name": agent, "timestamp": "2026-12-02T08:00:00.000Z",
            "trace_id": format!("{:0>32}", &run[4..]), "payload": payload,
        })
    }

    fn accepted(run: &str) -> Value {
        control(
            "message_accepted",
            json!({"client_message_id": null, "message_id": format!("msg_{}", &run[4..]),
                   "thread_id": format!("thr_{}", &run[4..]), "run_id": run}),
        )
    }

    /// A run as the server records it: accepted, then seven events from `first_seq` on.
    fn run(run: &str, first_seq: u64) -> Vec<Value> {
        let s = first_seq;
        vec![
            accepted(run),
            event(s, run, "supervisor", "agent_started", json!({"task": "answer"})),
            event(s + 1, run, "triage", "agent_started", json!({"task": "classify"})),
            event(
                s + 2,
                run,
                "triage",
                "agent_thinking",
                json!({"text": "Reading the request."}),
            ),
            event(
                s + 3,
                run,
                "triage",
                "tool_executing",
                json!({"tool_call_id": "call_1", "tool_name": "extract_entities", "parameters": {}}),
            ),
            event(
                s + 4,
                run,
                "triage",
                "tool_completed",
                json!({"tool_call_id": "call_1", "tool_name": "extract_entities", "success": true,
                       "results": {}, "duration_ms": 1}),
            ),
            event(
                s + 5,
                run,
                "triage",
                "agent_completed",
                json!({"status": "completed", "duration_ms": 3, "final": false}),
            ),
            event(
                s + 6,
                run,
                "supervisor",
                "agent_completed",
                json!({"status": "completed", "duration_ms": 5, "final": true, "result": {"text": "Done."},
                       "timings": {"queue_ms": 0, "store_ms": 0, "model_ms": 0, "tools_ms": 1,
                                   "agents": {"triage": 3}, "total_ms": 5}}),
            ),
        ]
    }

    fn established(last_seq: u64) -> Value {
        control(
            "connection_established",
            json!({"connection_id": "conn_00000000000000000000000000000001",
                   "user_id": "usr_00000000000000000000000000000001", "protocol": "switchboard.v1",
                   "server_time": "2026-12-02T08:00:00.000Z", "heartbeat_interval_ms": 25000,
                   "last_seq": last_seq}),
        )
    }

    /// Two runs one after the other on a connection that began after seq 10.
    fn recorded() -> Vec<Value> {
        let mut stream = vec![established(10)];
        stream.extend(run(RUN_A, 11));
        stream.extend(run(RUN_B, 18));
        stream
    }

    fn check(stream: &[Value]) -> Vec<Problem> {
        let mut checker = StreamCheck::new(false);
        for value in stream {
            checker.feed(&frame(value.clone()));
        }
        checker.finish()
    }

    fn kinds(problems: &[Problem]) -> Vec<&'static str> {
        problems.iter().map(Problem::kind).collect()
    }

    #[test]
    fn a_clean_stream_has_no_problems() {
        assert_eq!(check(&recorded()), vec![]);
    }

    #[test]
    fn a_missing_event_is_one_gap() {
        let mut stream = recorded();
        // Run A's thinking (seq 13).
        stream.remove(4);
        assert_eq!(
            check(&stream),
            vec![Problem::Gap {
                expected: Seq::new(13),
                next: Seq::new(14)
            }]
        );
    }

    #[test]
    fn an_event_sent_twice_is_one_duplicate() {
        let mut stream = recorded();
        // Run B's tool_executing (seq 21), again right after itself.
        let again = stream[13].clone();
        stream.insert(14, again);
        assert_eq!(check(&stream), vec![Problem::Duplicate { seq: Seq::new(21) }]);
    }

    #[test]
    fn a_run_of_a_message_whose_storing_was_uncertain_may_come_unannounced_but_must_end() {
        let refused = control(
            "error",
            json!({"code": "store_unavailable", "ref": "lt-0-1",
                   "message": "PostgreSQL did not answer within 2.0 s, so the message may not have been accepted; send it again in a moment."}),
        );
        // Run A's events without its message_accepted: the server stored the message after all.
        let mut stream = vec![established(10), refused.clone()];
        stream.extend(run(RUN_A, 11).into_iter().skip(1));
        assert_eq!(check(&stream), vec![]);
        // Cut off before its final event: missing, as any run of this connection.
        stream.pop();
        assert_eq!(kinds(&check(&stream)), ["missing_final"]);
        // One uncertain message explains one run, not two.
        let mut stream = vec![established(10), refused];
        stream.extend(run(RUN_A, 11).into_iter().skip(1));
        stream.extend(run(RUN_B, 18).into_iter().skip(1));
        assert_eq!(kinds(&check(&stream)), ["unknown_run"]);
    }

    /// Feeds the events (not the controls) of `stream` to a checker of one run.
    fn check_one_run(stream: &[Value]) -> Vec<Problem> {
        let mut checker = StreamCheck::of_run();
        for value in stream {
            if let ServerFrame::Event(event) = frame(value.clone()) {
                checker.feed_event(&event);
            }
        }
        checker.finish()
    }

    #[test]
    fn one_run_s_events_may_skip_seqs_but_must_keep_every_rule_of_a_run() {
        // Seqs 11 to 17, with other runs' events between: 11, 13, 15, ...
        let mut skipping = run(RUN_A, 11);
        for (n, value) in skipping.iter_mut().skip(1).enumerate() {
            value["seq"] = json!(11 + 2 * n as u64);
        }
        assert_eq!(check_one_run(&skipping), vec![]);

        let mut stream = run(RUN_A, 11);
        stream.extend(run(RUN_B, 18));
        assert_eq!(kinds(&check_one_run(&stream)), ["unknown_run"], "another run's events");

        let mut unfinished = run(RUN_A, 11);
        unfinished.pop();
        assert_eq!(kinds(&check_one_run(&unfinished)), ["missing_final"]);

        let mut untimed = run(RUN_A, 11);
        untimed.last_mut().unwrap()["payload"]
            .as_object_mut()
            .unwrap()
            .remove("timings");
        assert_eq!(kinds(&check_one_run(&untimed)), ["no_timings"]);

        let mut middle = run(RUN_A, 11);
        middle.remove(1);
        assert_eq!(kinds(&check_one_run(&middle)), ["first_event"]);
    }

    #[test]
    fn a_tool_completed_must_name_the_tool_its_tool_executing_named() {
        let mut stream = recorded();
        // Run A's tool_completed (seq 15) names another tool.
        stream[6]["payload"]["tool_name"] = json!("search");
        let problems = check(&stream);
        assert_eq!(kinds(&problems), ["tool_pairing"], "{problems:?}");
        assert!(
            problems[0]
                .to_string()
                .contains("names the tool search, but its tool_executing named extract_entities")
        );
    }

    #[test]
    fn an_adopted_run_must_begin_with_the_supervisor() {
        let refused = control(
            "error",
            json!({"code": "store_unavailable", "ref": "lt-0-1", "message": "PostgreSQL did not answer within 2.0 s."}),
        );
        let mut stream = vec![established(10), refused];
        // Run A from its second event on.
        stream.extend(run(RUN_A, 11).into_iter().skip(2).map(|mut e| {
            e["seq"] = json!(e["seq"].as_u64().unwrap() - 1);
            e
        }));
        assert_eq!(kinds(&check(&stream)), ["first_event"]);
    }

    #[test]
    fn an_agent_error_that_is_not_a_sentence_is_a_problem() {
        let mut stream = vec![established(10)];
        stream.extend(run(RUN_A, 11));
        // Triage fails instead of completing: told, but in a word.
        stream[7] = event(
            16,
            RUN_A,
            "triage",
            "agent_error",
            json!({"code": "tool_error", "message": "boom", "retryable": false, "elapsed_ms": 3}),
        );
        stream.insert(
            8,
            event(
                17,
                RUN_A,
                "triage",
                "agent_completed",
                json!({"status": "failed", "duration_ms": 3, "final": false}),
            ),
        );
        stream[9]["seq"] = json!(18);
        let problems = check(&stream);
        assert_eq!(kinds(&problems), ["not_a_sentence"], "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            format!("run {RUN_A}, seq 16: the agent_error message \"boom\" is not a sentence")
        );
    }

    #[test]
    fn a_run_without_its_final_event_is_reported_at_the_end() {
        let mut stream = recorded();
        stream.pop();
        assert_eq!(
            check(&stream),
            vec![Problem::MissingFinal {
                run: RunId::parse(RUN_B).unwrap()
            }]
        );
    }

    #[test]
    fn a_gap_a_duplicate_and_a_missing_final_are_three_problems() {
        let mut stream = recorded();
        stream.pop();
        let again = stream[13].clone();
        stream.insert(14, again);
        stream.remove(4);
        assert_eq!(kinds(&check(&stream)), vec!["gap", "duplicate", "missing_final"]);
    }

    #[test]
    fn a_seq_that_does_not_follow_the_connections_last_seq_is_a_gap() {
        let mut stream = recorded();
        stream[0] = established(7);
        assert_eq!(
            check(&stream),
            vec![Problem::Gap {
                expected: Seq::new(8),
                next: Seq::new(11)
            }]
        );
    }

    #[test]
    fn order_rules_are_checked_per_run() {
        type Change = Box<dyn Fn(&mut Vec<Value>)>;
        let cases: Vec<(&str, Change, Vec<&str>)> = vec![
            (
                "an event after the final one",
                Box::new(|s| {
                    let last = s.len() - 1;
                    let mut late = s[last - 2].clone();
                    late["seq"] = json!(25);
                    s.push(late);
                }),
                vec!["after_final"],
            ),
            (
                "a second final event",
                Box::new(|s| {
                    let mut again = s[s.len() - 1].clone();
                    again["seq"] = json!(25);
                    s.push(again);
                }),
                vec!["second_final"],
            ),
            (
                "a tool completed that never started",
                Box::new(|s| {
                    s[4]["type"] = json!("tool_completed");
                    s[4]["payload"] = json!({"tool_call_id": "call_9", "tool_name": "x", "success": true,
                                              "results": null, "duration_ms": 0});
                }),
                vec!["tool_pairing"],
            ),
            (
                "a failure without agent_error",
                Box::new(|s| s[7]["payload"]["status"] = json!("failed")),
                vec!["untold_failure"],
            ),
            (
                "a run that does not begin with the supervisor",
                Box::new(|s| s[2]["agent_name"] = json!("triage")),
                vec!["first_event"],
            ),
            (
                "an event of a run never accepted here",
                Box::new(|s| {
                    s.push(event(
                        25,
                        "run_00000000000000000000000000000003",
                        "supervisor",
                        "agent_started",
                        json!({"task": "?"}),
                    ));
                }),
                vec!["unknown_run"],
            ),
            (
                "an event carrying another thread",
                Box::new(|s| s[5]["thread_id"] = json!("thr_00000000000000000000000000000009")),
                vec!["other_run", "other_run"],
            ),
        ];
        for (name, change, expected) in cases {
            let mut stream = recorded();
            change(&mut stream);
            assert_eq!(kinds(&check(&stream)), expected, "{name}");
        }
    }

    #[test]
    fn a_shared_stream_allows_runs_of_other_connections_seen_from_their_middle() {
        let mut stream = vec![established(12)];
        // Another connection's run A, joined at seq 13; then this connection's run B.
        stream.extend(run(RUN_A, 11).into_iter().skip(3));
        stream.extend(run(RUN_B, 18));
        let mut checker = StreamCheck::new(true);
        for value in &stream {
            checker.feed(&frame(value.clone()));
        }
        assert_eq!(checker.finish(), vec![]);
    }
}
