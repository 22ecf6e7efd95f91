//! Fan-out: how a stored event reaches the live connections of its user. [`LocalFanOut`] is
//! the in-process broadcast of one server; `cluster::RedisFanOut`, between nodes, implements
//! the same trait. A fan-out only carries events the log has stored: a connection that misses one
//! (it lagged, or the fan-out lost it) reads it back from the store (see `delivery`). Beside
//! them it carries notices (control frames for the user's connections, such as
//! `store_delayed`), which are not stored: one that is missed is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_protocol::{ControlFrame, Seq, UserId};
use switchboard_store::EventRecord;
use tokio::sync::broadcast;

/// Live events a slow connection may fall behind by before it reads from the store instead.
pub(crate) const LIVE_BUFFER: usize = 256;

/// What a fan-out carries to a user's connections.
#[derive(Debug, Clone)]
pub(crate) enum Live {
    /// A stored event.
    Event(Arc<EventRecord>),
    /// A notice, stored nowhere.
    Notice(Arc<ControlFrame>),
    /// The user's log reaches this seq (a fan-out between nodes says so when it learnt it from
    /// the log, not from the events): a connection told less reads the rest from the store.
    Known(Seq),
}

/// Carries stored events to the connections of their user.
pub(crate) trait FanOut: Send + Sync + 'static {
    /// Live events of `user` from now on.
    fn subscribe(&self, user: &UserId) -> broadcast::Receiver<Live>;
    /// Ends a subscription; the user's channel goes when nobody listens any more.
    fn unsubscribe(&self, user: &UserId, receiver: broadcast::Receiver<Live>);
    /// Hands a stored event (or a notice) of `user` to whoever listens (nobody is fine: an
    /// event is in the store).
    fn publish(&self, user: &UserId, live: Live);
}

/// The in-process fan-out: a broadcast channel per user while someone listens.
#[derive(Debug, Default)]
pub(crate) struct LocalFanOut {
    channels: Mutex<HashMap<UserId, broadcast::Sender<Live>>>,
}

impl FanOut for LocalFanOut {
    fn subscribe(&self, user: &UserId) -> broadcast::Receiver<Live> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(user.clone())
            .or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe()
    }

    fn unsubscribe(&self, user: &UserId, receiver: broadcast::Receiver<Live>) {
        drop(receiver);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.get(user).is_some_and(|sender| sender.receiver_count() == 0) {
            channels.remove(user);
        }
    }

    fn publish(&self, user: &UserId, live: Live) {
        let sender = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned();
        if let Some(sender) = sender {
            let _ = sender.send(live);
        }
    }
}
