//! The event log: the one path by which events are stored and told. The engine's runs reach it
//! through its event queue ([`EventSink`]), crash recovery directly; both hand it [`LogEntry`]s,
//! and the store numbers them in the transaction that stores them. Once a batch is stored its
//! observers (the metrics) see each event, then the fan-out carries it to the user's live
//! connections: an event reaches a socket only after it is stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use switchboard_engine::{DelayedEnd, EventSink, SinkError};
use switchboard_protocol::{Control, ControlFrame, LogEntry, RunStatus, Seq, StoreDelayed, UserId};
use switchboard_store::{EventRecord, Store, StoreError, StoredEvent, Tier};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::fanout::{FanOut, Live};

/// Sees every event the log stored, once, in each user's seq order.
pub(crate) trait Observer: Send + Sync + 'static {
    /// `entry` is stored, with `seq`.
    fn stored(&self, entry: &LogEntry, seq: Seq);

    /// A batch of `events` was stored in one transaction that took `took`.
    fn batch_stored(&self, _events: usize, _took: Duration) {}

    /// The store refused one event that cannot be stored (its run is another node's now, or
    /// it is bad), which the engine gives up. (A larger batch refused is split and tried again.)
    fn refused(&self) {}
}

/// The store, the fan-out and the observers, as one log.
pub(crate) struct EventLog {
    store: Arc<dyn Store>,
    fanout: Arc<dyn FanOut>,
    observers: Vec<Arc<dyn Observer>>,
    /// Since when a batch has waited for the store (none: the last one was stored), for
    /// telling users how long the store has not answered.
    waiting_since: Mutex<Option<Instant>>,
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
            waiting_since: Mutex::new(None),
        }
    }

    /// Stores the entries in one transaction (the store gives each its seq), then tells the
    /// observers and the fan-out. Returns the seqs given, in the order of the entries. Once the
    /// store has answered, nothing here can fail: a panicking observer or fan-out is logged and
    /// passed over, so that a batch that is stored is never reported as failed (and stored again).
    pub(crate) async fn append_entries(&self, entries: &[LogEntry]) -> Result<Vec<Seq>, StoreError> {
        let started = Instant::now();
        self.waiting_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(started);
        let stored = self.store.append_events(entries).await;
        // Any answer but a slow or absent store's ends the wait (a batch it refuses is an answer).
        if !stored.as_ref().is_err_and(StoreError::is_unavailable) {
            *self.waiting_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        let stored = stored?;
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
                self.fanout.publish(&user_id, Live::Event(Arc::new(record)));
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
    pub(crate) fn subscribe(&self, user: &UserId) -> broadcast::Receiver<Live> {
        self.fanout.subscribe(user)
    }

    /// Ends a subscription.
    pub(crate) fn unsubscribe(&self, user: &UserId, receiver: broadcast::Receiver<Live>) {
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

/// How long the batch being stored must have waited for the store before a run's end that waits
/// is told to its user as the store being late.
const SLOW_STORE: Duration = Duration::from_millis(250);

/// The sentence a user is told when a run has ended but the store has not stored its end.
fn delayed_sentence(end: &DelayedEnd, tier: Tier, waited: Duration) -> String {
    let how = match end.status {
        RunStatus::Completed => "finished".to_owned(),
        status => format!("ended ({})", status.as_str().replace('_', " ")),
    };
    format!(
        "The run {how} after {:.1} s, but {tier} has not answered for {:.1} s: its last events are kept \
         and will be shown as soon as {tier} answers.",
        end.duration.as_secs_f64(),
        waited.as_secs_f64(),
    )
}

#[async_trait]
impl EventSink for EventLog {
    async fn append(&self, batch: &[LogEntry]) -> Result<Vec<Seq>, SinkError> {
        self.append_entries(batch).await.map_err(|error| {
            tracing::error!(%error, "events not stored");
            match error {
                // The batch holds something the store cannot take: trying it again cannot help.
                // (The engine splits a batch refused until the events refused are alone, and
                // gives those up.)
                StoreError::Corrupt(_) | StoreError::Conflict(_) => {
                    if let [_one] = batch {
                        for observer in &self.observers {
                            observer.refused();
                        }
                    }
                    SinkError::Refused(error.to_string())
                }
                StoreError::Backend(_)
                | StoreError::NotFound(_)
                | StoreError::TimedOut { .. }
                | StoreError::Unavailable { .. } => SinkError::Failed(error.to_string()),
            }
        })
    }

    /// Tells the user's connections (a notice, not an event) that the run has ended and how
    /// long the store has not answered.
    fn end_delayed(&self, end: &DelayedEnd) {
        let since = *self.waiting_since.lock().unwrap_or_else(|p| p.into_inner());
        let waited = since.map_or(Duration::ZERO, |since| since.elapsed());
        // A store that answers, with the end queued behind other batches (a busy server), is
        // not late: the end follows shortly, and "not answered for 0.0 s" would be false.
        if waited < SLOW_STORE {
            tracing::debug!(run_id = %end.run_id, ?waited, "a run's end waits behind other batches");
            return;
        }
        let tier = self.store.tier();
        let message = delayed_sentence(end, tier, waited);
        tracing::warn!(run_id = %end.run_id, user_id = %end.user_id, %message, "a run's end waits for the store");
        let notice = ControlFrame::now(Control::StoreDelayed(StoreDelayed {
            run_id: end.run_id.clone(),
            thread_id: end.thread_id.clone(),
            status: end.status,
            duration_ms: end.duration.as_millis() as u64,
            tier: tier.as_str().to_owned(),
            waited_ms: waited.as_millis() as u64,
            message,
        }));
        self.fanout.publish(&end.user_id, Live::Notice(Arc::new(notice)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{RunId, ThreadId};

    #[test]
    fn a_delayed_end_is_told_with_the_tier_and_the_wait() {
        let end = |status| DelayedEnd {
            user_id: UserId::generate(),
            run_id: RunId::generate(),
            thread_id: ThreadId::generate(),
            status,
            duration: Duration::from_millis(3_240),
        };
        let cases = [
            (
                RunStatus::Completed,
                Tier::Postgres,
                2_600,
                "The run finished after 3.2 s, but PostgreSQL has not answered for 2.6 s: its last events are \
                 kept and will be shown as soon as PostgreSQL answers.",
            ),
            (
                RunStatus::TimedOut,
                Tier::Sqlite,
                500,
                "The run ended (timed out) after 3.2 s, but SQLite has not answered for 0.5 s: its last events \
                 are kept and will be shown as soon as SQLite answers.",
            ),
        ];
        for (status, tier, waited, expected) in cases {
            assert_eq!(
                delayed_sentence(&end(status), tier, Duration::from_millis(waited)),
                expected
            );
        }
    }
}
