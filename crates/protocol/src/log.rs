//! What the event log is handed: an event before it has its `seq`, and the run's end as typed
//! data. Not wire types themselves (the wire carries the [`Event`] the log makes of them), but
//! the vocabulary the engine, the store and the server share, so that none of them has to
//! re-read an event's JSON to learn what it says.

use serde::Serialize;

use crate::{AgentCompleted, AgentName, Event, EventPayload, ModelCallUsage, RunId, RunStatus, RunTimings, Seq};
use crate::{ThreadId, Timestamp, TraceId, UserId};

/// An event before the event log numbers it: all of [`Event`] but its `seq`, which the log gives
/// it in the transaction that stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The run the event belongs to.
    pub run_id: RunId,
    /// The thread of the run.
    pub thread_id: ThreadId,
    /// The agent that produced the event.
    pub agent_name: AgentName,
    /// When the event was produced.
    pub timestamp: Timestamp,
    /// The run's trace id.
    pub trace_id: TraceId,
    /// The event's type and payload.
    pub payload: EventPayload,
}

impl NewEvent {
    /// The event as JSON, written once before the log numbers it (and outside whatever lock
    /// the log holds while it does); [`UnnumberedJson::numbered`] then puts the seq in.
    pub fn to_json(&self) -> serde_json::Result<UnnumberedJson> {
        let view = WireView {
            seq: Seq::ZERO,
            run_id: &self.run_id,
            thread_id: &self.thread_id,
            agent_name: &self.agent_name,
            timestamp: &self.timestamp,
            trace_id: &self.trace_id,
            payload: &self.payload,
        };
        let json = serde_json::to_string(&view)?;
        match json.strip_prefix(UnnumberedJson::PREFIX) {
            Some(rest) => Ok(UnnumberedJson(rest.to_owned())),
            None => Err(<serde_json::Error as serde::ser::Error>::custom(
                "an event's JSON does not begin with its seq",
            )),
        }
    }

    /// The event with its seq.
    pub fn numbered(self, seq: Seq) -> Event {
        Event {
            seq,
            run_id: self.run_id,
            thread_id: self.thread_id,
            agent_name: self.agent_name,
            timestamp: self.timestamp,
            trace_id: self.trace_id,
            payload: self.payload,
        }
    }
}

/// An event borrowed, serialized field for field as [`Event`] is (`seq` first).
#[derive(Serialize)]
struct WireView<'a> {
    seq: Seq,
    run_id: &'a RunId,
    thread_id: &'a ThreadId,
    agent_name: &'a AgentName,
    timestamp: &'a Timestamp,
    trace_id: &'a TraceId,
    #[serde(flatten)]
    payload: &'a EventPayload,
}

/// An event's JSON before it has its seq: all that follows `{"seq":N,` (seq comes first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnnumberedJson(String);

impl UnnumberedJson {
    const PREFIX: &'static str = "{\"seq\":0,";

    /// The JSON of the event with `seq`, exactly as `serde_json` writes the numbered [`Event`].
    pub fn numbered(&self, seq: Seq) -> String {
        let mut json = String::with_capacity(self.0.len() + 28);
        json.push_str("{\"seq\":");
        json.push_str(&seq.get().to_string());
        json.push(',');
        json.push_str(&self.0);
        json
    }
}

/// How a run ended, handed to the log together with its final event, so that the run's record
/// (status, duration, timings, model calls) and the assistant's answer are stored in the same
/// transaction as the event.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// The final status.
    pub status: RunStatus,
    /// The run's duration.
    pub duration_ms: u64,
    /// Where the run's time went.
    pub timings: Option<RunTimings>,
    /// The run's language-model calls.
    pub model_calls: Vec<ModelCallUsage>,
    /// The agents whose part of the answer is missing.
    pub missing: Vec<AgentName>,
    /// The assistant's answer, stored as a message of the thread (completed runs only).
    pub answer: Option<String>,
}

impl RunEnd {
    /// The end that a final `agent_completed` tells, with the answer the run wrote (if any).
    pub fn of(done: &AgentCompleted, answer: Option<String>) -> Self {
        Self {
            status: done.status,
            duration_ms: done.duration_ms,
            timings: done.timings.clone(),
            model_calls: done.model_calls.clone(),
            missing: done.missing.clone(),
            answer: answer.filter(|_| done.status == RunStatus::Completed),
        }
    }
}

/// A random name of one [`LogEntry`], given when it is made: a store whose commits can be
/// left in doubt (a networked one, whose answer may be lost after it committed) tells by it
/// that a batch tried again was stored already, and stores it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryKey(u128);

impl EntryKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().as_u128())
    }

    /// The key as a number.
    pub fn get(self) -> u128 {
        self.0
    }

    /// One key for a whole batch, from its entries' keys in order: another batch (other
    /// entries, or the same in another order) gets another key, but for chance.
    pub fn of_batch(entries: &[LogEntry]) -> Self {
        // FNV-1a over the keys' bytes, 128-bit.
        const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
        let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        for entry in entries {
            for byte in entry.key.0.to_le_bytes() {
                hash ^= u128::from(byte);
                hash = hash.wrapping_mul(PRIME);
            }
        }
        Self(hash)
    }
}

/// One event for a user's log; a final event comes with its run's end.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its random name (see [`EntryKey`]).
    pub key: EntryKey,
    /// Whose log.
    pub user_id: UserId,
    /// The event.
    pub event: NewEvent,
    /// The run's end: set exactly when the event is the run's final one.
    pub end: Option<RunEnd>,
}

impl LogEntry {
    /// An entry for `user`'s log; a final event gets its run's end from its payload, with
    /// `answer` (the run's answer; ignored unless the run completed).
    pub fn new(user_id: UserId, event: NewEvent, answer: Option<String>) -> Self {
        let end = match &event.payload {
            EventPayload::AgentCompleted(done) if done.is_final => Some(RunEnd::of(done, answer)),
            _ => None,
        };
        Self {
            key: EntryKey::generate(),
            user_id,
            event,
            end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentStarted;

    fn entry() -> LogEntry {
        let event = NewEvent {
            run_id: RunId::generate(),
            thread_id: ThreadId::generate(),
            agent_name: AgentName::supervisor(),
            timestamp: Timestamp::now(),
            trace_id: TraceId::generate(),
            payload: EventPayload::AgentStarted(AgentStarted { task: "t".into() }),
        };
        LogEntry::new(UserId::generate(), event, None)
    }

    #[test]
    fn a_batch_key_names_its_entries_in_their_order() {
        let (a, b, c) = (entry(), entry(), entry());
        let key = |batch: &[&LogEntry]| EntryKey::of_batch(&batch.iter().map(|e| (*e).clone()).collect::<Vec<_>>());
        assert_eq!(key(&[&a, &b]), key(&[&a, &b]), "the same batch tried again");
        let others = [key(&[&a]), key(&[&b, &a]), key(&[&a, &c]), key(&[&a, &b, &c]), key(&[])];
        for other in others {
            assert_ne!(key(&[&a, &b]), other);
        }
        assert_ne!(a.key, entry().key, "every entry gets a key of its own");
    }
}
