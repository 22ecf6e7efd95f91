//! One node of several: [`RedisFanOut`] carries the events a node stores to the connections of
//! their users on every node, through Redis pub/sub (a channel per user, subscribed to by the
//! nodes where that user has connections). Redis is the fast path only: the log is the truth.
//! A message lost or late (Redis slow, down, or a subscription not yet in effect) is made good
//! by the watcher, which reads the newest seq of every user with connections here once a second,
//! in one query, and tells the connections of a user whose log went further than they were told
//! (`Live::Known`), so they read the rest from the store: at most about a second late, never
//! lost, never doubled (each connection delivers by seq, see `delivery`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_protocol::{ControlFrame, RunId, Seq, UserId};
use switchboard_redis::{Incoming, Pushed, Redis, Subscriber};
use switchboard_store::{EventRecord, Store, StoreError};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::fanout::{FanOut, LIVE_BUFFER, Live};
use crate::metrics::ViaLabel;

/// How often the watcher compares the log with what the connections were told.
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The most messages published in one round trip.
const PUBLISH_BATCH: usize = 512;

/// This node among the nodes: its name, and the names of its cluster's Redis channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// This node's name.
    pub(crate) id: String,
    /// The start of every channel and key of the cluster: `sb:{cluster}:`, the cluster being
    /// the database's own name, so that clusters sharing one Redis never mix.
    pub(crate) prefix: String,
}

impl Node {
    pub(crate) fn new(id: String, cluster: &str) -> Self {
        Self {
            id,
            prefix: format!("sb:{cluster}:"),
        }
    }

    /// A generated name: `node-` and 8 hex digits.
    pub(crate) fn generated_id() -> String {
        format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    }

    /// The channel of stop requests, which every node hears.
    fn stops_channel(&self) -> String {
        format!("{}stops", self.prefix)
    }

    /// The channel of `user`'s live events.
    fn user_channel(&self, user: &UserId) -> String {
        format!("{}user:{user}", self.prefix)
    }

    fn user_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix("user:")
    }
}

/// What one node tells the others of a user: `{node}\n` then `e{seq}\n{json}` (a stored event)
/// or `n{json}` (a notice, a control frame).
fn encode(node: &str, live: &Live) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(node.len() + 64);
    out.extend_from_slice(node.as_bytes());
    out.push(b'\n');
    match live {
        Live::Event(record) => {
            out.push(b'e');
            out.extend_from_slice(record.seq.to_string().as_bytes());
            out.push(b'\n');
            out.extend_from_slice(record.json.as_bytes());
        }
        Live::Notice(frame) => {
            out.push(b'n');
            out.extend_from_slice(serde_json::to_string(&**frame).ok()?.as_bytes());
        }
        Live::Known(_) => return None,
    }
    Some(out)
}

/// A message of `encode`: the node that sent it, and what it carries; `None` when it is not one.
fn decode(payload: &[u8]) -> Option<(&str, Live)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (node, rest) = text.split_once('\n')?;
    let live = match rest.as_bytes().first()? {
        b'e' => {
            let (seq, json) = rest[1..].split_once('\n')?;
            let seq = Seq::new(seq.parse().ok()?);
            Live::Event(Arc::new(EventRecord {
                seq,
                json: json.to_owned(),
            }))
        }
        b'n' => Live::Notice(Arc::new(serde_json::from_str::<ControlFrame>(&rest[1..]).ok()?)),
        _ => return None,
    };
    Some((node, live))
}

/// Asks every node to stop a run (the node that runs it does): `{user}\n{run}` on the stops
/// channel.
#[derive(Debug, Clone)]
pub(crate) struct ClusterStops {
    redis: Redis,
    channel: String,
}

impl ClusterStops {
    pub(crate) fn new(redis: Redis, node: &Node) -> Self {
        Self {
            redis,
            channel: node.stops_channel(),
        }
    }

    /// Asks the node that runs `run` of `user` to stop it.
    pub(crate) async fn ask(&self, user: &UserId, run: &RunId) -> Result<(), StoreError> {
        self.redis
            .publish(&[(self.channel.clone(), format!("{user}\n{run}").into_bytes())])
            .await
    }
}

/// A stop request of `ClusterStops::ask`; `None` when it is not one.
fn decode_stop(payload: &[u8]) -> Option<(UserId, RunId)> {
    let (user, run) = std::str::from_utf8(payload).ok()?.split_once('\n')?;
    Some((user.parse().ok()?, run.parse().ok()?))
}

/// A user's connections on this node: their channel, and the newest seq they were told of.
struct Listeners {
    sender: broadcast::Sender<Live>,
    told: Seq,
}

/// The fan-out between nodes. Tasks of its own (subscribing, publishing, receiving, watching)
/// run until `stop` is cancelled.
pub(crate) struct RedisFanOut {
    node: Node,
    users: Mutex<HashMap<UserId, Listeners>>,
    /// Users whose interest here changed, for the subscribing task.
    interest: mpsc::UnboundedSender<UserId>,
    /// Messages for the publishing task.
    outgoing: mpsc::UnboundedSender<(String, Vec<u8>)>,
    /// Counts what came from other nodes, by the way it came.
    from_other_nodes: Family<ViaLabel, Counter>,
    /// Where the stop requests heard go.
    stops: mpsc::UnboundedSender<(UserId, RunId)>,
}

impl std::fmt::Debug for RedisFanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFanOut").field("node", &self.node.id).finish()
    }
}

impl RedisFanOut {
    /// Starts the fan-out of `node` on Redis, watching `store`'s log; the stop requests it hears
    /// (of any run: the engine knows whether it runs here) come out of the receiver.
    pub(crate) fn start(
        node: Node,
        redis: Redis,
        subscriber: Subscriber,
        incoming: Incoming,
        store: Arc<dyn Store>,
        from_other_nodes: Family<ViaLabel, Counter>,
        stop: CancellationToken,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<(UserId, RunId)>) {
        let (interest, interests) = mpsc::unbounded_channel();
        let (outgoing, outgoings) = mpsc::unbounded_channel();
        let (stops, stop_requests) = mpsc::unbounded_channel();
        let fanout = Arc::new(Self {
            node,
            users: Mutex::new(HashMap::new()),
            interest,
            outgoing,
            from_other_nodes,
            stops,
        });
        let weak = Arc::downgrade(&fanout);
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(hear_stops(subscriber.clone(), fanout.node.stops_channel())),
        );
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(subscribe_all(weak.clone(), subscriber, interests)),
        );
        tokio::spawn(stop.clone().run_until_cancelled_owned(publish_all(redis, outgoings)));
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(receive_all(weak.clone(), incoming)),
        );
        tokio::spawn(stop.run_until_cancelled_owned(watch(weak, store)));
        (fanout, stop_requests)
    }

    /// Hands `live` to `user`'s connections here, and notes what they were told.
    fn deliver(&self, user: &UserId, live: Live) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(listeners) = users.get_mut(user) {
            if let Live::Event(record) = &live {
                listeners.told = listeners.told.max(record.seq);
            }
            let _ = listeners.sender.send(live);
        }
    }

    /// The users with connections here, and what each was told.
    fn listened(&self) -> Vec<(UserId, Seq)> {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.iter().map(|(user, l)| (user.clone(), l.told)).collect()
    }

    /// Tells `user`'s connections that the log reaches `last`, if they were told less.
    fn catch_up(&self, user: &UserId, last: Seq) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(listeners) = users.get_mut(user)
            && last > listeners.told
        {
            listeners.told = last;
            let _ = listeners.sender.send(Live::Known(last));
            self.from_other_nodes.get_or_create(&ViaLabel { via: "log" }).inc();
        }
    }

    fn wanted(&self, user: &UserId) -> bool {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).contains_key(user)
    }
}

impl FanOut for RedisFanOut {
    fn subscribe(&self, user: &UserId) -> broadcast::Receiver<Live> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let listeners = users.entry(user.clone()).or_insert_with(|| {
            let _ = self.interest.send(user.clone());
            Listeners {
                sender: broadcast::channel(LIVE_BUFFER).0,
                told: Seq::ZERO,
            }
        });
        listeners.sender.subscribe()
    }

    fn unsubscribe(&self, user: &UserId, receiver: broadcast::Receiver<Live>) {
        drop(receiver);
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.get(user).is_some_and(|l| l.sender.receiver_count() == 0) {
            users.remove(user);
            let _ = self.interest.send(user.clone());
        }
    }

    fn publish(&self, user: &UserId, live: Live) {
        if let Some(payload) = encode(&self.node.id, &live) {
            let _ = self.outgoing.send((self.node.user_channel(user), payload));
        }
        self.deliver(user, live);
    }
}

/// Keeps this node subscribed to the channels of the users with connections here, in the order
/// their interest changed (so a user who leaves and comes back ends subscribed).
async fn subscribe_all(
    fanout: std::sync::Weak<RedisFanOut>,
    subscriber: Subscriber,
    mut interests: mpsc::UnboundedReceiver<UserId>,
) {
    let mut subscribed: HashSet<UserId> = HashSet::new();
    while let Some(user) = interests.recv().await {
        let Some(fanout) = fanout.upgrade() else { return };
        let wanted = fanout.wanted(&user);
        let channel = fanout.node.user_channel(&user);
        drop(fanout);
        let done = match (wanted, subscribed.contains(&user)) {
            (true, false) => subscriber
                .subscribe(&channel)
                .await
                .map(|()| subscribed.insert(user.clone())),
            (false, true) => subscriber
                .unsubscribe(&channel)
                .await
                .map(|()| subscribed.remove(&user)),
            _ => Ok(true),
        };
        // The watcher delivers what a missing subscription misses; the subscription is tried
        // again the next time the user's interest changes.
        if let Err(error) = done {
            tracing::warn!(%error, %user, "cannot change a subscription in Redis; the log is read instead");
        }
    }
}

/// Subscribes to the stops channel, trying again every second until it took (after that the
/// connection subscribes again by itself after a reconnect).
async fn hear_stops(subscriber: Subscriber, channel: String) {
    while let Err(error) = subscriber.subscribe(&channel).await {
        tracing::warn!(%error, "cannot subscribe to the stop requests in Redis; trying again in a second");
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// Publishes the outgoing messages, as many at once as are waiting.
async fn publish_all(redis: Redis, mut outgoing: mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while outgoing.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        match redis.publish(&batch).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("publishing to Redis works again");
            }
            Ok(()) => {}
            // The other nodes read the log instead (the watcher): late, not lost.
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot publish events to Redis; other nodes read them from the log");
            }
            Err(_) => {}
        }
        batch.clear();
    }
}

/// Hands what the other nodes publish to the connections here.
async fn receive_all(fanout: std::sync::Weak<RedisFanOut>, mut incoming: Incoming) {
    let Some(stops) = fanout.upgrade().map(|f| f.node.stops_channel()) else {
        return;
    };
    while let Some(pushed) = incoming.next().await {
        let Some(fanout) = fanout.upgrade() else { return };
        match pushed {
            Pushed::Message { channel, payload } if channel == stops => match decode_stop(&payload) {
                Some(request) => {
                    let _ = fanout.stops.send(request);
                }
                None => tracing::warn!(%channel, "a stop request in Redis that no node writes; left alone"),
            },
            Pushed::Message { channel, payload } => {
                let Some(user) = fanout
                    .node
                    .user_of_channel(&channel)
                    .and_then(|u| u.parse::<UserId>().ok())
                else {
                    continue;
                };
                match decode(&payload) {
                    Some((node, _)) if node == fanout.node.id => {}
                    Some((_, live)) => {
                        fanout.from_other_nodes.get_or_create(&ViaLabel { via: "redis" }).inc();
                        fanout.deliver(&user, live);
                    }
                    None => tracing::warn!(%channel, "a message in Redis that no node writes; left alone"),
                }
            }
            Pushed::Disconnected => {
                tracing::warn!("the connection to Redis for events was lost; reading the log until it is back");
            }
            Pushed::Subscribed(_) => {}
        }
    }
}

/// Once a second: the newest seq of every user with connections here, in one query, against
/// what they were told.
async fn watch(fanout: std::sync::Weak<RedisFanOut>, store: Arc<dyn Store>) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(listened) = fanout.upgrade().map(|f| f.listened()) else {
            return;
        };
        if listened.is_empty() {
            continue;
        }
        let users: Vec<UserId> = listened.iter().map(|(user, _)| user.clone()).collect();
        match store.last_seqs(&users).await {
            Ok(lasts) => {
                let Some(fanout) = fanout.upgrade() else { return };
                for (user, last) in users.iter().zip(lasts) {
                    fanout.catch_up(user, last);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the users' newest seqs; trying again in a second"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_between_nodes_are_read_back_as_written_and_anything_else_is_refused() {
        let record = EventRecord {
            seq: Seq::new(42),
            json: "{\"seq\":42,\"type\":\"x\",\"text\":\"a\\nb\"}".to_owned(),
        };
        let payload = encode("node-a", &Live::Event(Arc::new(record.clone()))).unwrap();
        match decode(&payload) {
            Some(("node-a", Live::Event(back))) => assert_eq!(*back, record),
            other => panic!("{other:?}"),
        }
        assert!(encode("node-a", &Live::Known(Seq::new(3))).is_none());
        let (user, run) = (UserId::generate(), RunId::generate());
        assert_eq!(decode_stop(format!("{user}\n{run}").as_bytes()), Some((user, run)));
        assert_eq!(decode_stop(b"nobody\nnothing"), None);
        assert_eq!(decode_stop(b"no line"), None);
        for garbage in [
            &b""[..],
            b"node",
            b"node\n",
            b"node\nx1\n{}",
            b"node\ne-1\n{}",
            b"node\nn{",
            b"\xff\n",
        ] {
            assert!(decode(garbage).is_none(), "{garbage:?}");
        }
    }

    #[test]
    fn a_channel_names_its_cluster_and_user() {
        let node = Node::new("a".into(), "c1");
        let user = UserId::generate();
        let channel = node.user_channel(&user);
        assert_eq!(node.user_of_channel(&channel), Some(user.to_string().as_str()));
        assert_eq!(Node::new("a".into(), "c2").user_of_channel(&channel), None);
    }
}
