//! Where events leave the engine: the [`EventSink`] (the server's event log) and the queue in
//! front of it.
//!
//! A run hands each event to the [`EventQueue`] and goes on: it waits only while the queue is
//! full (the store is behind), never for a commit, except for its final event, which it waits
//! for until its limit. One writer at a time takes everything queued, of every user, and hands
//! it to the sink as one batch; the sink numbers and stores the batch at once (one transaction)
//! and answers with the seqs. So the events of one user reach the sink in the order they were
//! queued, and `seq` is given in one place, the sink, when the event is stored. A batch that
//! fails is tried again until it is taken: nothing queued is lost or stored twice, and a store
//! that is down holds the events (not the runs, which end by their limits) until it is back.
//! The events of a run started held (its message is still being stored) wait in the queue,
//! passed over by the writer, until the run is released, and are dropped if it is abandoned.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use switchboard_protocol::{Event, EventPayload, LogEntry, RunId, RunStatus, Seq, ThreadId, UserId};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
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
    /// The sink refused what it was given (it cannot be stored as it is, now or later); the
    /// events are not stored, and trying them again cannot help.
    #[error("the event store refused the events: {0}")]
    Refused(String),
}

/// The destination of every event: the event log. The server backs it with its store (which
/// numbers the events) and its sockets.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Stores `batch` at once, all or nothing, giving each event the next `seq` of its user in
    /// the order given (and finishing the run of an entry that carries its `end`). Returns the
    /// seqs given, in the same order. The engine calls it for one batch at a time.
    async fn append(&self, batch: &[LogEntry]) -> Result<Vec<Seq>, SinkError>;

    /// A run's final event has waited [`END_NOTICE_AFTER`] to be stored and is still not: the
    /// run has ended, but its user cannot see that until the sink stores it. The sink may tell
    /// the user now, some other way. Called once per run at most, while the event still waits.
    fn end_delayed(&self, _end: &DelayedEnd) {}
}

/// How long a run's final event may wait to be stored before its sink is told
/// ([`EventSink::end_delayed`]): well within the second after its deadline that a run has to
/// show its end.
pub const END_NOTICE_AFTER: Duration = Duration::from_millis(500);

/// A run that has ended while its final event waits to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayedEnd {
    /// Whose run.
    pub user_id: UserId,
    /// The run.
    pub run_id: RunId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// How it ended.
    pub status: RunStatus,
    /// How long it took.
    pub duration: Duration,
}

/// Events that may wait for the sink at once, over all runs. Past it, a run waits for room
/// before it goes on (up to its event limit); then narration is given up, while the events that
/// make up the run's structure are queued all the same, so the stored log keeps the contract.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Events handed to the sink in one batch at most.
const MAX_BATCH: usize = 1024;
/// The first wait before a failed batch is tried again; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The answer to one queued event: it is stored (with its seq), or it is not.
#[derive(Debug)]
pub(crate) struct Receipt(oneshot::Receiver<Event>);

impl Receipt {
    /// Waits until the event is stored.
    pub(crate) async fn stored(self) -> Result<Event, SinkError> {
        self.0
            .await
            .map_err(|_| SinkError::Failed("the event writer stopped".into()))
    }
}

/// Whether the events of a run started before what it depends on was stored (its message) may
/// go to the sink: held until the run is released, then open; or abandoned, when its events are
/// dropped unstored. Changed under the queue's lock only, so that the writer sees one state for
/// every event of the run while it takes a batch.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: AtomicU8,
    /// Told when the run is released or abandoned.
    changed: Notify,
}

const HELD: u8 = 0;
const OPEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Gate {
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Whether the run is held still.
    pub(crate) fn is_held(&self) -> bool {
        self.state() == HELD
    }

    /// Waits until the run is no longer held, or `until`.
    pub(crate) async fn unheld(&self, until: Instant) {
        loop {
            let changed = self.changed.notified();
            if !self.is_held() || tokio::time::timeout_at(until, changed).await.is_err() {
                return;
            }
        }
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.changed.notify_waiters();
    }
}

struct Queued {
    entry: LogEntry,
    /// For the events of a held run: its gate.
    gate: Option<Arc<Gate>>,
    /// For a final event: its run waits to learn that it is stored.
    reply: Option<oneshot::Sender<Event>>,
    /// Its room in the queue, given back once it is stored (none for an event queued past the
    /// bound, or a final event).
    _room: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Pending {
    queued: VecDeque<Queued>,
    writing: bool,
}

/// The bounded queue in front of the sink, shared by every run of the engine.
pub(crate) struct EventQueue {
    sink: Arc<dyn EventSink>,
    room: Arc<Semaphore>,
    pending: Arc<Mutex<Pending>>,
    /// Told whenever the writer finds the queue empty.
    drained: Arc<Notify>,
}

impl Queued {
    fn held(&self) -> bool {
        self.gate.as_ref().is_some_and(|gate| gate.is_held())
    }
}

impl Pending {
    /// The next batch for the sink: the first [`MAX_BATCH`] events of runs that are not held,
    /// in the order queued; the events of held runs stay queued, in their order.
    fn take_batch(&mut self) -> Vec<Queued> {
        let mut batch = Vec::new();
        let mut kept = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some(queued) = self.queued.pop_front() else { break };
            if queued.held() {
                kept.push(queued);
            } else {
                batch.push(queued);
            }
        }
        for queued in kept.into_iter().rev() {
            self.queued.push_front(queued);
        }
        batch
    }

    /// Whether a writer is to be started: something is queued and none is writing (it is then
    /// counted as writing).
    fn start_writer(&mut self) -> bool {
        !self.queued.is_empty() && !std::mem::replace(&mut self.writing, true)
    }
}

impl EventQueue {
    pub(crate) fn new(sink: Arc<dyn EventSink>, capacity: usize) -> Self {
        Self {
            sink,
            room: Arc::new(Semaphore::new(capacity)),
            pending: Arc::default(),
            drained: Arc::default(),
        }
    }

    /// Queues an entry, waiting for room until `until`. A final event never waits (there is one
    /// per run) and is the only one with a receipt (the only one a run waits for); past `until`,
    /// narration (`agent_thinking`, `partial_result`) is given up and any other event is queued
    /// past the bound. The entry of a run with a `gate` waits in the queue while the run is held,
    /// and is dropped once it is abandoned. Cancel-safe: an entry is queued whole or not at all.
    pub(crate) async fn submit(
        &self,
        entry: LogEntry,
        gate: Option<&Arc<Gate>>,
        until: Instant,
    ) -> Result<Option<Receipt>, SinkError> {
        let is_final = entry.end.is_some();
        let room = if is_final {
            None
        } else if let Ok(permit) = Arc::clone(&self.room).try_acquire_owned() {
            Some(permit)
        } else {
            let budget_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
            match tokio::time::timeout_at(until, Arc::clone(&self.room).acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                _ if is_narration(&entry.event.payload) => return Err(SinkError::TimedOut(budget_ms)),
                _ => None,
            }
        };
        let (reply, receipt) = if is_final {
            let (reply, receipt) = oneshot::channel();
            (Some(reply), Some(Receipt(receipt)))
        } else {
            (None, None)
        };
        let queued = Queued {
            entry,
            gate: gate.cloned(),
            reply,
            _room: room,
        };
        let start_writer = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if gate.is_some_and(|gate| gate.state() == ABANDONED) {
                // Dropped unstored (outside the lock), its receipt answered "not stored".
                drop(pending);
                drop(queued);
                return Ok(receipt);
            }
            let held = queued.held();
            pending.queued.push_back(queued);
            !held && pending.start_writer()
        };
        if start_writer {
            self.spawn_writer();
        }
        Ok(receipt)
    }

    fn spawn_writer(&self) {
        let writer = Writer {
            sink: Arc::clone(&self.sink),
            pending: Arc::clone(&self.pending),
            drained: Arc::clone(&self.drained),
        };
        tokio::spawn(writer.write_all());
    }

    /// Lets the events of the held run of `gate` go to the sink, those queued first.
    pub(crate) fn release(&self, gate: &Gate) {
        let start_writer = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            gate.set(OPEN);
            pending.start_writer()
        };
        if start_writer {
            self.spawn_writer();
        }
    }

    /// Drops the events of the held run of `gate`, queued and to come, unstored.
    pub(crate) fn abandon(&self, gate: &Arc<Gate>) {
        let dropped: VecDeque<Queued> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            gate.set(ABANDONED);
            let (dropped, kept) = std::mem::take(&mut pending.queued)
                .into_iter()
                .partition(|queued| queued.gate.as_ref().is_some_and(|own| Arc::ptr_eq(own, gate)));
            pending.queued = kept;
            if pending.queued.is_empty() && !pending.writing {
                self.drained.notify_waiters();
            }
            dropped
        };
        drop(dropped);
    }

    /// The sink the queue writes to.
    pub(crate) fn sink(&self) -> &Arc<dyn EventSink> {
        &self.sink
    }

    /// Waits until everything queued so far is stored, or `until`. True when it is.
    pub(crate) async fn drain(&self, until: Instant) -> bool {
        loop {
            let drained = self.drained.notified();
            {
                let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if pending.queued.is_empty() && !pending.writing {
                    return true;
                }
            }
            if tokio::time::timeout_at(until, drained).await.is_err() {
                return false;
            }
        }
    }
}

/// Narration: the events a run may lose without breaking the contract.
fn is_narration(payload: &EventPayload) -> bool {
    matches!(payload, EventPayload::AgentThinking(_) | EventPayload::PartialResult(_))
}

/// Hands batches to the sink until the queue is empty; only one runs at a time.
struct Writer {
    sink: Arc<dyn EventSink>,
    pending: Arc<Mutex<Pending>>,
    drained: Arc<Notify>,
}

impl Writer {
    async fn write_all(self) {
        /// Lets the next entry start a writer again if this one is dropped half-way (the
        /// runtime shuts down).
        struct Writing<'a>(&'a Mutex<Pending>, bool);
        impl Drop for Writing<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.lock().unwrap_or_else(|p| p.into_inner()).writing = false;
                }
            }
        }
        let mut writing = Writing(&self.pending, true);
        loop {
            let batch: Vec<Queued> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let batch = pending.take_batch();
                if batch.is_empty() {
                    // Nothing, or only the events of held runs (a release starts a writer).
                    pending.writing = false;
                    writing.1 = false;
                    if pending.queued.is_empty() {
                        self.drained.notify_waiters();
                    }
                    return;
                }
                batch
            };
            let (entries, waiting): (Vec<LogEntry>, Vec<_>) =
                batch.into_iter().map(|q| (q.entry, (q.reply, q._room, q.gate))).unzip();
            let seqs = self.store(&entries).await;
            for ((entry, seq), (reply, _room, _gate)) in entries.into_iter().zip(seqs).zip(waiting) {
                // A run that gave up waiting is fine: the event is stored all the same. An event
                // the sink refused drops its reply: its run learns that it is not stored.
                if let (Some(seq), Some(reply)) = (seq, reply.filter(|reply| !reply.is_closed())) {
                    let _ = reply.send(entry.event.numbered(seq));
                }
            }
        }
    }

    /// Stores one batch, trying again (with a growing wait) until the sink takes it: a failed
    /// batch stored nothing, so trying it again can neither lose nor repeat an event, and the
    /// events behind it wait, in order. A panic in the sink counts as a failure. A batch the
    /// sink refuses is halved until the events it refuses are alone; those are given up (their
    /// seq is `None`), the others stored in order, so one bad event cannot stop every user's log.
    async fn store(&self, batch: &[LogEntry]) -> Vec<Option<Seq>> {
        let mut wait = RETRY_FIRST;
        loop {
            let attempt = AssertUnwindSafe(self.sink.append(batch)).catch_unwind().await;
            let error = match attempt {
                Ok(Ok(seqs)) => {
                    // Stored already: trying again would store them twice. A sink that answers
                    // with too few seqs breaks its contract; the events it gave none for count as
                    // not stored.
                    if seqs.len() != batch.len() {
                        tracing::error!(
                            seqs = seqs.len(),
                            events = batch.len(),
                            "the sink answered with the wrong number of seqs"
                        );
                    }
                    let mut seqs: Vec<Option<Seq>> = seqs.into_iter().map(Some).collect();
                    seqs.resize(batch.len(), None);
                    return seqs;
                }
                Ok(Err(SinkError::Refused(reason))) if batch.len() == 1 => {
                    tracing::error!(%reason, user_id = %batch[0].user_id, "an event the store refused is given up");
                    return vec![None];
                }
                Ok(Err(SinkError::Refused(_))) => {
                    let (left, right) = batch.split_at(batch.len() / 2);
                    let mut seqs = Box::pin(self.store(left)).await;
                    seqs.extend(Box::pin(self.store(right)).await);
                    return seqs;
                }
                Ok(Err(error)) => error,
                Err(_panic) => SinkError::Failed("the sink panicked".into()),
            };
            tracing::error!(%error, events = batch.len(), retry_in_ms = wait.as_millis() as u64, "events not stored; trying again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }
}
