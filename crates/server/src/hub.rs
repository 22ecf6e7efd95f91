//! The engine's event sink: stores each event, then fans it out to the user's live
//! connections. Each user has a broadcast channel while someone listens; a connection that
//! falls behind reads what it missed back from the store (see `delivery`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use switchboard_engine::{EventSink, SinkError};
use switchboard_protocol::{Event, EventPayload, RunId, Seq, UserId};
use switchboard_store::{EventRecord, Store, StoreError};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::metrics::{Metrics, StatusLabel};

/// Live events a slow connection may fall behind by before it reads from the store instead.
const LIVE_BUFFER: usize = 256;

/// Stores and fans out events.
pub(crate) struct Hub {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    channels: Mutex<HashMap<UserId, broadcast::Sender<Arc<EventRecord>>>>,
    accepted: Mutex<HashMap<RunId, Instant>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("listening_users", &self.channels.lock().unwrap().len())
            .finish()
    }
}

impl Hub {
    /// A hub over `store`.
    pub(crate) fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            channels: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
        }
    }

    /// The store behind the hub.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Live events of `user` from now on.
    pub(crate) fn subscribe(&self, user: &UserId) -> broadcast::Receiver<Arc<EventRecord>> {
        let mut channels = self.channels.lock().unwrap();
        channels
            .entry(user.clone())
            .or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe()
    }

    /// Forgets the user's channel when nobody listens any more.
    pub(crate) fn unsubscribe(&self, user: &UserId, receiver: broadcast::Receiver<Arc<EventRecord>>) {
        drop(receiver);
        let mut channels = self.channels.lock().unwrap();
        if channels.get(user).is_some_and(|sender| sender.receiver_count() == 0) {
            channels.remove(user);
        }
    }

    /// Notes when a run was accepted, to measure the latency of its first event.
    pub(crate) fn accepted(&self, run: &RunId, at: Instant) {
        self.accepted.lock().unwrap().insert(run.clone(), at);
    }

    /// Forgets a run that did not start.
    pub(crate) fn forget(&self, run: &RunId) {
        self.accepted.lock().unwrap().remove(run);
    }

    /// The newest seq of `user`.
    pub(crate) async fn last_seq(&self, user: &UserId) -> Result<Seq, StoreError> {
        self.store.last_seq(user).await
    }

    fn observe(&self, event: &Event) {
        self.metrics.events_stored.inc();
        if let Some(at) = self.accepted.lock().unwrap().remove(&event.run_id) {
            self.metrics.first_event_latency.observe(at.elapsed().as_secs_f64());
        }
        if let EventPayload::AgentCompleted(done) = &event.payload
            && done.is_final
        {
            self.metrics
                .runs
                .get_or_create(&StatusLabel {
                    status: done.status.as_str().to_owned(),
                })
                .inc();
            self.metrics.run_duration.observe(done.duration_ms as f64 / 1000.0);
            self.metrics.model_calls(&done.model_calls);
        }
    }
}

#[async_trait]
impl EventSink for Hub {
    async fn last_seq(&self, user: &UserId) -> Result<Seq, SinkError> {
        self.store
            .last_seq(user)
            .await
            .map_err(|e| SinkError::Failed(e.to_string()))
    }

    async fn publish(&self, user: &UserId, event: &Event) -> Result<(), SinkError> {
        let record = self
            .store
            .append_event(user, event)
            .await
            .map_err(|e| SinkError::Failed(e.to_string()))?;
        self.observe(event);
        let sender = self.channels.lock().unwrap().get(user).cloned();
        if let Some(sender) = sender {
            // No receiver is fine: the event is in the store for whoever connects later.
            let _ = sender.send(Arc::new(record));
        }
        Ok(())
    }
}
