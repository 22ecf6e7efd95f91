//! Where events leave the engine, and the one place that numbers them.
//!
//! Every event of a user gets its `seq` in [`Sequencer::publish`], under that user's lock, so the
//! sink sees each user's events in seq order with no gap, whatever runs are active.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use switchboard_protocol::{AgentName, Event, EventPayload, RunId, Seq, ThreadId, Timestamp, TraceId, UserId};
use tokio::time::Instant;

/// A sink could not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink failed; the event is not stored.
    #[error("the event store failed: {0}")]
    Failed(String),
    /// The sink did not answer in time; the event counts as not stored.
    #[error("the event store did not answer within {0} ms")]
    TimedOut(u64),
}

/// The destination of every event. The server backs it with its store and its sockets.
///
/// `publish` must be atomic: when it returns an error (or is dropped because it took too long)
/// the event must not be kept, because the engine gives the same seq to the next event.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// The newest seq already published for `user` (`Seq::ZERO` when none).
    async fn last_seq(&self, user: &UserId) -> Result<Seq, SinkError>;

    /// Takes one event of `user`. Events of one user arrive one at a time, in seq order.
    async fn publish(&self, user: &UserId, event: &Event) -> Result<(), SinkError>;
}

/// The identity of a run, shared by all its events.
#[derive(Debug, Clone)]
pub(crate) struct RunIds {
    pub(crate) user_id: UserId,
    pub(crate) run_id: RunId,
    pub(crate) thread_id: ThreadId,
    pub(crate) trace_id: TraceId,
}

type UserSeq = Arc<tokio::sync::Mutex<Option<Seq>>>;

struct UserEntry {
    active_runs: usize,
    seq: UserSeq,
}

/// Per-user numbering and the count of active runs. A user's entry lives while it has active
/// runs; afterwards its last seq is read back from the sink, so memory follows active users only.
pub(crate) struct Sequencer {
    sink: Arc<dyn EventSink>,
    users: Mutex<HashMap<UserId, UserEntry>>,
}

impl Sequencer {
    pub(crate) fn new(sink: Arc<dyn EventSink>) -> Self {
        Self {
            sink,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new active run of `user`, unless the user already has `limit`.
    pub(crate) fn enter(&self, user: &UserId, limit: usize) -> Result<(), usize> {
        let mut users = self.users.lock().unwrap();
        let entry = users.entry(user.clone()).or_insert_with(|| UserEntry {
            active_runs: 0,
            seq: Arc::new(tokio::sync::Mutex::new(None)),
        });
        if entry.active_runs >= limit {
            return Err(entry.active_runs);
        }
        entry.active_runs += 1;
        Ok(())
    }

    /// Ends an active run of `user`; the last one frees the user's entry.
    pub(crate) fn leave(&self, user: &UserId) {
        let mut users = self.users.lock().unwrap();
        if let Some(entry) = users.get_mut(user) {
            entry.active_runs = entry.active_runs.saturating_sub(1);
            if entry.active_runs == 0 {
                users.remove(user);
            }
        }
    }

    pub(crate) fn active_runs(&self, user: &UserId) -> usize {
        self.users.lock().unwrap().get(user).map_or(0, |e| e.active_runs)
    }

    pub(crate) fn tracked_users(&self) -> usize {
        self.users.lock().unwrap().len()
    }

    /// Numbers the event and hands it to the sink, giving up at `until`.
    /// The user's seq only advances when the sink took the event.
    pub(crate) async fn publish(
        &self,
        ids: &RunIds,
        agent: &AgentName,
        payload: EventPayload,
        until: Instant,
    ) -> Result<Event, SinkError> {
        let seq_lock = {
            let users = self.users.lock().unwrap();
            match users.get(&ids.user_id) {
                Some(entry) => Arc::clone(&entry.seq),
                None => return Err(SinkError::Failed("the run is no longer active".into())),
            }
        };
        let budget_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        let attempt = async {
            let mut last = seq_lock.lock().await;
            // Forget the cached seq until the sink confirms: if this call fails or is dropped
            // half-way (the event may or may not be stored), the next one asks the sink again.
            let previous = match last.take() {
                Some(seq) => seq,
                None => self.sink.last_seq(&ids.user_id).await?,
            };
            let event = Event {
                seq: previous.next(),
                run_id: ids.run_id.clone(),
                thread_id: ids.thread_id.clone(),
                agent_name: agent.clone(),
                timestamp: Timestamp::now(),
                trace_id: ids.trace_id.clone(),
                payload,
            };
            self.sink.publish(&ids.user_id, &event).await?;
            *last = Some(event.seq);
            Ok(event)
        };
        match tokio::time::timeout_at(until, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::TimedOut(budget_ms)),
        }
    }
}
