//! Where events leave the engine: the [`EventSink`] (the server's event log) and the queue in
//! front of it.
//!
//! A run hands each event to the [`EventQueue`] and goes on: it waits only while the queue is
//! full (the store is behind), never for a commit, except for its final event, which it waits
//! for until its limit. One writer at a time takes everything queued, of every user, and hands
//! it to the sink as one batch; the sink numbers and stores the batch at once (one transaction)
//! and returns the events numbered. So the events of one user reach the sink in the order they
//! were queued, and `seq` is given in one place, the sink, when the event is stored.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use switchboard_protocol::{Event, LogEntry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
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

/// The destination of every event: the event log. The server backs it with its store (which
/// numbers the events) and its sockets.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Stores `batch` at once, all or nothing, giving each event the next `seq` of its user in
    /// the order given (and finishing the run of an entry that carries its `end`). Returns the
    /// events as stored, in the same order. The engine calls it for one batch at a time.
    async fn append(&self, batch: Vec<LogEntry>) -> Result<Vec<Event>, SinkError>;
}

/// Non-final events that may wait for the sink at once, over all runs. Past it, a run waits for
/// room before it goes on (up to its event limit).
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Events handed to the sink in one batch at most.
const MAX_BATCH: usize = 1024;

/// The answer to one queued event: it is stored (with its seq), or it is not.
#[derive(Debug)]
pub(crate) struct Receipt(oneshot::Receiver<Result<Event, SinkError>>);

impl Receipt {
    /// Waits until the event is stored (or refused).
    pub(crate) async fn stored(self) -> Result<Event, SinkError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(SinkError::Failed("the event writer stopped".into())))
    }
}

struct Queued {
    entry: LogEntry,
    reply: oneshot::Sender<Result<Event, SinkError>>,
    /// Its room in the queue, given back once the sink answered (none for final events).
    _room: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Pending {
    queued: Vec<Queued>,
    writing: bool,
}

/// The bounded queue in front of the sink, shared by every run of the engine.
pub(crate) struct EventQueue {
    sink: Arc<dyn EventSink>,
    room: Arc<Semaphore>,
    pending: Arc<Mutex<Pending>>,
}

impl EventQueue {
    pub(crate) fn new(sink: Arc<dyn EventSink>, capacity: usize) -> Self {
        Self {
            sink,
            room: Arc::new(Semaphore::new(capacity)),
            pending: Arc::default(),
        }
    }

    /// Queues an entry, waiting for room until `until` (a final event never waits: there is
    /// one per active run, so they are bounded by the runs). Cancel-safe: an entry is queued
    /// whole or not at all.
    pub(crate) async fn submit(&self, entry: LogEntry, until: Instant) -> Result<Receipt, SinkError> {
        let room = if entry.end.is_some() {
            None
        } else {
            let budget_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
            match tokio::time::timeout_at(until, Arc::clone(&self.room).acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_closed)) => return Err(SinkError::Failed("the event queue is closed".into())),
                Err(_) => return Err(SinkError::TimedOut(budget_ms)),
            }
        };
        let (reply, receipt) = oneshot::channel();
        let start_writer = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.queued.push(Queued {
                entry,
                reply,
                _room: room,
            });
            !std::mem::replace(&mut pending.writing, true)
        };
        if start_writer {
            tokio::spawn(write_all(Arc::clone(&self.sink), Arc::clone(&self.pending)));
        }
        Ok(Receipt(receipt))
    }
}

/// Hands batches to the sink until the queue is empty; only one runs at a time.
async fn write_all(sink: Arc<dyn EventSink>, pending: Arc<Mutex<Pending>>) {
    /// Lets the next entry start a writer again if this one panics or is dropped half-way.
    struct Writing<'a>(&'a Mutex<Pending>, bool);
    impl Drop for Writing<'_> {
        fn drop(&mut self) {
            if self.1 {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).writing = false;
            }
        }
    }
    let mut writing = Writing(&pending, true);
    loop {
        let batch: Vec<Queued> = {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.queued.is_empty() {
                pending.writing = false;
                writing.1 = false;
                return;
            }
            let take = pending.queued.len().min(MAX_BATCH);
            pending.queued.drain(..take).collect()
        };
        let (entries, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.entry, (q.reply, q._room))).unzip();
        let count = entries.len();
        match sink.append(entries).await {
            Ok(events) if events.len() == count => {
                for (event, (reply, _room)) in events.into_iter().zip(replies) {
                    let _ = reply.send(Ok(event));
                }
            }
            Ok(events) => {
                let error = SinkError::Failed(format!("the sink stored {} of {count} events", events.len()));
                for (reply, _room) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for (reply, _room) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
