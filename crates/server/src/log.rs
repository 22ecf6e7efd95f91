//! The event log: the one path by which events are stored and told. The engine's runs reach it
//! through its event queue ([`EventSink`]), crash recovery directly; both hand it [`LogEntry`]s,
//! and the store numbers them in the transaction that stores them. Once a batch is stored its
//! observers (the metrics) see each event, then the fan-out carries it to the user's live
//! connections: an event reaches a socket only after it is stored.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_engine::{EventSink, SinkError};
use switchboard_protocol::{LogEntry, Seq, UserId};
use switchboard_store::{EventRecord, Store, StoreError, StoredEvent};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::fanout::FanOut;

/// Sees every event the log stored, once, in each user's seq order.
pub(crate) trait Observer: Send + Sync + 'static {
    /// `entry` is stored, with `seq`.
    fn stored(&self, entry: &LogEntry, seq: Seq);

    /// A batch of `events` was stored in one transaction that took `took`.
    fn batch_stored(&self, _events: usize, _took: Duration) {}
}

/// The store, the fan-out and the observers, as one log.
pub(crate) struct EventLog {
    store: Arc<dyn Store>,
    fanout: Arc<dyn FanOut>,
    observers: Vec<Arc<dyn Observer>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// A log over `store`, telling `fanout` and `observers` of what it stored.
    pub(crate) fn new(store: Arc<dyn Store>, fanout: Arc<dyn FanOut>, observers: Vec<Arc<dyn Observer>>) -> Self {
        Self {
            store,
            fanout,
            observers,
        }
    }

    /// Stores the entries in one transaction (the store gives each its seq), then tells the
    /// observers and the fan-out. Returns the seqs given, in the order of the entries. Once the
    /// store has answered, nothing here can fail: a panicking observer or fan-out is logged and
    /// passed over, so that a batch that is stored is never reported as failed (and stored again).
    pub(crate) async fn append_entries(&self, entries: &[LogEntry]) -> Result<Vec<Seq>, StoreError> {
        let started = Instant::now();
        let stored = self.store.append_events(entries).await?;
        let took = started.elapsed();
        // Stored from here on: nothing below may fail the batch (it would be stored again).
        if stored.len() != entries.len() {
            tracing::error!(
                stored = stored.len(),
                events = entries.len(),
                "the store answered for a different number of events"
            );
        }
        let batch = || {
            for observer in &self.observers {
                observer.batch_stored(stored.len(), took);
            }
        };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(batch)).is_err() {
            tracing::error!("an observer of a stored batch panicked");
        }
        let mut seqs = Vec::with_capacity(stored.len());
        for (entry, StoredEvent { user_id, record }) in entries.iter().zip(stored) {
            let seq = record.seq;
            let tell = || {
                for observer in &self.observers {
                    observer.stored(entry, seq);
                }
                self.fanout.publish(&user_id, Arc::new(record));
            };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(tell)).is_err() {
                tracing::error!(%seq, user_id = %user_id, "telling of a stored event panicked");
            }
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// The store behind the log.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Live events of `user` from now on.
    pub(crate) fn subscribe(&self, user: &UserId) -> broadcast::Receiver<Arc<EventRecord>> {
        self.fanout.subscribe(user)
    }

    /// Ends a subscription.
    pub(crate) fn unsubscribe(&self, user: &UserId, receiver: broadcast::Receiver<Arc<EventRecord>>) {
        self.fanout.unsubscribe(user, receiver);
    }

    /// The newest seq of `user`.
    pub(crate) async fn last_seq(&self, user: &UserId) -> Result<Seq, StoreError> {
        self.store.last_seq(user).await
    }

    /// The user's stored events after `after`, at most `limit`.
    pub(crate) async fn events_after(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.store.events_after(user, after, limit).await
    }
}

#[async_trait]
impl EventSink for EventLog {
    async fn append(&self, batch: &[LogEntry]) -> Result<Vec<Seq>, SinkError> {
        self.append_entries(batch).await.map_err(|error| {
            tracing::error!(%error, "events not stored");
            match error {
                // The batch holds something the store cannot take: trying it again cannot help.
                StoreError::Corrupt(_) | StoreError::Conflict(_) => SinkError::Refused(error.to_string()),
                StoreError::Backend(_)
                | StoreError::NotFound(_)
                | StoreError::TimedOut { .. }
                | StoreError::Unavailable { .. } => SinkError::Failed(error.to_string()),
            }
        })
    }
}
