//! Gapless delivery of one user's events to one connection (a socket or an SSE stream):
//! replay from the store, then live events, with no gap and no duplicate, whatever the order in
//! which live events and replay pages arrive.
//!
//! The subscription is taken before the store is read, so nothing published in between is
//! missed; live events at or below what was sent are skipped; a gap (a lagging receiver, or a
//! live event ahead of the replay) is filled from the store, where every event is before it is
//! broadcast.

use std::collections::VecDeque;
use std::sync::Arc;

use switchboard_protocol::{Seq, UserId};
use switchboard_store::{EventRecord, StoreError};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::fanout::Live;
use crate::log::EventLog;

/// Events read from the store per page.
const PAGE: usize = 256;

/// What a connection sends next: a stored event, in seq order, or a notice.
#[derive(Debug, Clone)]
pub(crate) enum Delivered {
    /// A stored event.
    Event(Arc<EventRecord>),
    /// A notice, stored nowhere.
    Notice(Arc<switchboard_protocol::ControlFrame>),
}

/// The delivery state of one connection.
pub(crate) struct Delivery {
    log: Arc<EventLog>,
    user: UserId,
    live: Option<broadcast::Receiver<Live>>,
    /// The newest seq handed out.
    sent: Seq,
    /// The newest seq known to be stored.
    known: Seq,
    backlog: VecDeque<Arc<EventRecord>>,
    /// Live events were dropped for this connection: what the store holds must be re-read.
    stale: bool,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("sent", &self.sent)
            .field("known", &self.known)
            .finish()
    }
}

impl Delivery {
    /// Starts delivering `user`'s events after `after` (none: only new ones). Returns the
    /// delivery and the user's newest seq at this moment.
    pub(crate) async fn start(log: Arc<EventLog>, user: UserId, after: Option<Seq>) -> Result<(Self, Seq), StoreError> {
        let live = log.subscribe(&user);
        let last = match log.last_seq(&user).await {
            Ok(last) => last,
            Err(error) => {
                log.unsubscribe(&user, live);
                return Err(error);
            }
        };
        let delivery = Self {
            log,
            user,
            live: Some(live),
            sent: after.unwrap_or(last).min(last),
            known: last,
            backlog: VecDeque::new(),
            stale: false,
        };
        Ok((delivery, last))
    }

    /// Replays from `after` again (the `resume` frame); returns the newest seq known.
    pub(crate) async fn resume(&mut self, after: Seq) -> Result<Seq, StoreError> {
        self.known = self.known.max(self.log.last_seq(&self.user).await?);
        self.sent = after.min(self.known);
        self.backlog.clear();
        Ok(self.known)
    }

    /// The newest seq known to be stored.
    pub(crate) fn known(&self) -> Seq {
        self.known
    }

    /// The next event, in seq order, or a notice as it comes. Cancel-safe: state changes only
    /// between awaits.
    pub(crate) async fn next(&mut self) -> Result<Delivered, StoreError> {
        loop {
            if self.stale {
                self.known = self.known.max(self.log.last_seq(&self.user).await?);
                self.stale = false;
            }
            if let Some(record) = self.backlog.pop_front() {
                if record.seq == self.sent.next() {
                    self.sent = record.seq;
                    return Ok(Delivered::Event(record));
                }
                continue;
            }
            if self.sent < self.known {
                let page = self.log.events_after(&self.user, self.sent, PAGE).await?;
                if page.is_empty() {
                    // The store knows less than we thought (cannot happen with a consistent
                    // store): wait for live events rather than spin.
                    self.known = self.sent;
                }
                self.backlog.extend(page.into_iter().map(Arc::new));
                continue;
            }
            let Some(live) = self.live.as_mut() else {
                return std::future::pending().await;
            };
            match live.recv().await {
                Ok(Live::Event(record)) => {
                    self.known = self.known.max(record.seq);
                    if record.seq == self.sent.next() {
                        self.sent = record.seq;
                        return Ok(Delivered::Event(record));
                    }
                }
                Ok(Live::Notice(frame)) => return Ok(Delivered::Notice(frame)),
                Ok(Live::Known(last)) => self.known = self.known.max(last),
                Err(RecvError::Lagged(_)) => self.stale = true,
                Err(RecvError::Closed) => self.live = None,
            }
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            self.log.unsubscribe(&self.user, live);
        }
    }
}
