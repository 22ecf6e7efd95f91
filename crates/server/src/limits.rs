//! Per-user limits kept in memory: messages per minute and open connections.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_protocol::UserId;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

/// At most `limit` messages per user in any 60 s window.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: usize,
    recent: Mutex<HashMap<UserId, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// A limiter of `per_minute` messages.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            limit: per_minute as usize,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a message; `Err(wait)` when the user is over the limit (and it is not counted).
    pub(crate) fn check(&self, user: &UserId) -> Result<(), Duration> {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap();
        if recent.len() > 10_000 {
            recent.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        let times = recent.entry(user.clone()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            times.pop_front();
        }
        if times.len() >= self.limit {
            let oldest = *times.front().expect("the limit is at least 1");
            return Err(WINDOW - now.duration_since(oldest));
        }
        times.push_back(now);
        Ok(())
    }
}

/// Open connections per user.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: Mutex<HashMap<UserId, usize>>,
}

/// Holds one connection slot; frees it when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    connections: Arc<Connections>,
    user: UserId,
}

impl Connections {
    /// Takes a slot for `user`, unless the user already has `limit` connections.
    pub(crate) fn open(self: &Arc<Self>, user: &UserId, limit: usize) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap();
        let count = open.entry(user.clone()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            connections: Arc::clone(self),
            user: user.clone(),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap();
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}
