//! Limits kept in memory: events per key in a sliding window (messages per user, failed logins
//! per email and per client address), and the admission of a connection (a WebSocket or an SSE
//! stream) under its user's limit until its token expires; and on a node of a cluster the
//! limits the nodes share, in Redis (`SharedLimits`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use switchboard_protocol::{ErrorCode, Timestamp, UserId};
use switchboard_redis::Redis;
use switchboard_store::StoreError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::error::ApiError;

/// Keys kept before expired ones are swept out.
const SWEEP_ABOVE: usize = 10_000;

/// At most `limit` events per key in any window of `window`.
#[derive(Debug)]
pub(crate) struct SlidingWindow<K> {
    limit: usize,
    window: Duration,
    recent: Mutex<HashMap<K, VecDeque<Instant>>>,
}

impl<K: Hash + Eq + Clone> SlidingWindow<K> {
    /// A window of `limit` events per `window`.
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit as usize,
            window,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an event of `key` unless it is over the limit (then it is not counted, and
    /// `Err(wait)` says how long until one of its events leaves the window); the event's instant,
    /// to `release` it with.
    pub(crate) fn acquire(&self, key: &K) -> Result<Instant, Duration> {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap();
        self.sweep(&mut recent, now);
        let times = recent.entry(key.clone()).or_default();
        self.over(times, now)?;
        times.push_back(now);
        Ok(now)
    }

    /// Uncounts the event of `key` that `acquire` counted at `at`.
    pub(crate) fn release(&self, key: &K, at: Instant) {
        let mut recent = self.recent.lock().unwrap();
        if let Some(times) = recent.get_mut(key)
            && let Some(index) = times.iter().rposition(|t| *t == at)
        {
            times.remove(index);
        }
    }

    /// Forgets the events of `key`.
    pub(crate) fn clear(&self, key: &K) {
        self.recent.lock().unwrap().remove(key);
    }

    fn over(&self, times: &mut VecDeque<Instant>, now: Instant) -> Result<(), Duration> {
        while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            times.pop_front();
        }
        if times.len() >= self.limit {
            let oldest = *times.front().expect("the limit is at least 1");
            return Err(self.window - now.duration_since(oldest));
        }
        Ok(())
    }

    fn sweep(&self, recent: &mut HashMap<K, VecDeque<Instant>>, now: Instant) {
        if recent.len() > SWEEP_ABOVE {
            recent.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < self.window));
        }
    }
}

/// Limits the nodes of a cluster share: places in Redis (`Redis::take_place`, a sorted set per
/// limit whose places run out by Redis's clock, so those of a node that died go by themselves).
/// A place this node holds for as long as something lasts (a connection, a run) is named after
/// this process, which keeps a key of its own alive in Redis: a set found full first frees the
/// places of processes whose key is gone, so a node that died holds nothing [`HOLDER_TTL`] after
/// it, rather than until its places' own time runs out (30 s for a connection's).
/// While Redis cannot be reached every limit falls back to the node's own, and the log says so
/// once, and once when they are shared again.
#[derive(Debug)]
pub(crate) struct SharedLimits {
    redis: Redis,
    prefix: String,
    /// This process among the holders of places: random, new at each start.
    holder: String,
    /// The start of every holder's key (`{prefix}holder:`); the key of one is this and its name.
    holders: String,
    falling_back: AtomicBool,
}

/// How long a process's key among the holders of places lasts unless renewed: a node silent
/// for this long (dead, or cut off from Redis) loses its held places to whoever finds a set full.
const HOLDER_TTL: Duration = Duration::from_secs(6);

/// How often a process renews its key among the holders.
const HOLDER_RENEWAL: Duration = Duration::from_secs(2);

/// What asking for a shared place gave.
#[derive(Debug)]
pub(crate) enum Shared {
    /// The place, given back when dropped (unless kept).
    Taken(Place),
    /// No place left; the first one is free after this.
    Full(Duration),
    /// Redis did not answer: the node's own limit is all there is.
    Unreachable,
}

/// A place taken in Redis: given back when dropped, unless `keep` leaves it to run out.
#[derive(Debug)]
pub(crate) struct Place {
    redis: Redis,
    key: String,
    member: String,
    kept: bool,
}

impl Place {
    /// Leaves the place to run out of time (an event counted in a window).
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }

    /// Holds the place for as long as the result lives, renewing it every `every` to run
    /// `ttl` on: so that the place of a node that died goes within `ttl`.
    pub(crate) fn renewed(self, ttl: Duration, every: Duration) -> Renewed {
        let stop = CancellationToken::new();
        let (redis, key, member) = (self.redis.clone(), self.key.clone(), self.member.clone());
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                match redis.renew_place(&key, ttl, &member).await {
                    Ok(true) => {}
                    // Lost (Redis started again): the connection goes on without a place.
                    Ok(false) => return,
                    Err(error) => tracing::debug!(%error, %key, "cannot renew a place in Redis; trying again"),
                }
            }
        }));
        Renewed {
            place: self,
            _stop: stop.drop_guard(),
        }
    }

    /// Gives the place back now and waits for Redis's answer (dropped, it is given back in
    /// the background); one Redis did not take back runs out by itself.
    pub(crate) async fn give_back(mut self) {
        self.kept = true;
        give_back(&self.redis, &self.key, &self.member).await;
    }
}

/// A place renewed until dropped; then it is given back.
#[derive(Debug)]
pub(crate) struct Renewed {
    _stop: tokio_util::sync::DropGuard,
    place: Place,
}

impl Renewed {
    /// Stops renewing the place and gives it back now, waiting for Redis's answer.
    pub(crate) async fn give_back(self) {
        let Renewed { _stop, place } = self;
        drop(_stop);
        place.give_back().await;
    }
}

/// How long a shared place of a connection runs without being renewed.
const CONNECTION_PLACE_TTL: Duration = Duration::from_secs(30);

/// How often an open connection renews its shared place.
const CONNECTION_PLACE_RENEWAL: Duration = Duration::from_secs(10);

impl Drop for Place {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let (redis, key, member) = (
            self.redis.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { give_back(&redis, &key, &member).await });
        }
    }
}

/// Gives place `member` of `key` back; one Redis does not take back runs out by itself.
async fn give_back(redis: &Redis, key: &str, member: &str) {
    if let Err(error) = redis.give_back(key, member).await {
        tracing::debug!(%error, %key, "cannot give a place back in Redis; it runs out by itself");
    }
}

impl SharedLimits {
    /// The shared limits of a node whose keys start with `prefix`; this process's key among the
    /// holders is set before the first place is taken, and renewed until `stop`.
    pub(crate) async fn start(redis: Redis, prefix: String, stop: CancellationToken) -> Self {
        let limits = Self {
            redis,
            holders: format!("{prefix}holder:"),
            prefix,
            holder: format!("{:016x}", rand_u128() as u64),
            falling_back: AtomicBool::new(false),
        };
        let (redis, key) = (limits.redis.clone(), format!("{}{}", limits.holders, limits.holder));
        if let Err(error) = redis.put(&key, "1", HOLDER_TTL).await {
            tracing::warn!(%error, "cannot tell Redis this node holds places; trying again");
        }
        tokio::spawn(stop.run_until_cancelled_owned(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + HOLDER_RENEWAL, HOLDER_RENEWAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(error) = redis.put(&key, "1", HOLDER_TTL).await {
                    tracing::debug!(%error, "cannot renew this node's key among the holders of places; trying again");
                }
            }
        }));
        limits
    }

    /// Gives every place of `name` back (in the background; they run out by themselves anyway).
    pub(crate) fn forget(&self, name: &str) {
        let (redis, key) = (self.redis.clone(), format!("{}limit:{name}", self.prefix));
        tokio::spawn(async move {
            if let Err(error) = redis.forget(&key).await {
                tracing::debug!(%error, %key, "cannot forget places in Redis; they run out by themselves");
            }
        });
    }

    /// A place among at most `limit` of `name`, for `ttl`, that counts whatever becomes of
    /// this node (an event in a window, such as a message or a failed login).
    pub(crate) async fn take(&self, name: &str, limit: usize, ttl: Duration) -> Shared {
        self.take_as(name, limit, ttl, false).await
    }

    /// A place among at most `limit` of `name`, for `ttl`, that this node holds while something
    /// of its own lasts (a connection, a run): it counts no longer than this node is alive.
    pub(crate) async fn hold(&self, name: &str, limit: usize, ttl: Duration) -> Shared {
        self.take_as(name, limit, ttl, true).await
    }

    async fn take_as(&self, name: &str, limit: usize, ttl: Duration, held: bool) -> Shared {
        let key = format!("{}limit:{name}", self.prefix);
        let (member, taken) = if held {
            let member = format!("{}/{:032x}", self.holder, rand_u128());
            let taken = self
                .redis
                .take_held_place(&key, limit, ttl, &member, (&self.holders, &self.holder))
                .await;
            (member, taken)
        } else {
            let member = format!("{:032x}", rand_u128());
            let taken = self.redis.take_place(&key, limit, ttl, &member).await;
            (member, taken)
        };
        match taken {
            Ok(full) => {
                if self.falling_back.swap(false, Ordering::Relaxed) {
                    tracing::info!("limits are shared through Redis again");
                }
                match full {
                    None => Shared::Taken(Place {
                        redis: self.redis.clone(),
                        key,
                        member,
                        kept: false,
                    }),
                    Some(wait) => Shared::Full(wait),
                }
            }
            Err(error) => {
                if !self.falling_back.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "limits fall back to this node's own until Redis answers again");
                }
                if matches!(error, StoreError::TimedOut { .. }) {
                    self.give_back_late(key, member, ttl);
                }
                Shared::Unreachable
            }
        }
    }

    /// A take that timed out may still reach Redis and take the place (a slow Redis runs it
    /// later): the place is given back, after it (the connection's commands run in order), until
    /// it would have run out by itself. Otherwise it would count against its user, who holds
    /// nothing, for its whole time.
    fn give_back_late(&self, key: String, member: String, ttl: Duration) {
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let until = Instant::now() + ttl;
            // Twice as long each time, so that a slow Redis is not asked ever more often.
            let mut wait = Duration::from_millis(500);
            while let Err(error) = redis.give_back(&key, &member).await {
                if Instant::now() + wait >= until {
                    tracing::debug!(%error, %key, "cannot give back a place a timed-out take may hold; it runs out by itself");
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }
}

/// A random number, for names of places.
fn rand_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// Failed logins, counted per email and per client address: past the limit, further attempts
/// for that email or from that address are refused until the window has passed. On a node of a
/// cluster they are counted across the nodes too (`SharedLimits`).
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    by_email: SlidingWindow<String>,
    by_address: SlidingWindow<IpAddr>,
    max_failures: usize,
    window: Duration,
    shared: Option<Arc<SharedLimits>>,
}

impl LoginThrottle {
    /// `max_failures` per email and per address within `window`.
    pub(crate) fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            by_email: SlidingWindow::new(max_failures, window),
            by_address: SlidingWindow::new(max_failures, window),
            max_failures: max_failures as usize,
            window,
            shared: None,
        }
    }

    /// Counts the failures across the nodes of a cluster too, in `shared`.
    pub(crate) fn with_shared_limits(mut self, shared: Arc<SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Starts a login attempt, counted as failed from now on (so that attempts sent at once
    /// cannot all get past the limit while their passwords are checked); `Err(wait)` when the
    /// email or the address has failed too often (on this node, or on any while Redis answers).
    pub(crate) async fn begin(&self, email: &str, address: Option<IpAddr>) -> Result<LoginAttempt<'_>, Duration> {
        let email = email_key(email);
        let at_email = self.by_email.acquire(&email)?;
        let at_address = match address.map(|address| (address, self.by_address.acquire(&address))) {
            None => None,
            Some((address, Ok(at))) => Some((address, at)),
            Some((_, Err(wait))) => {
                self.by_email.release(&email, at_email);
                return Err(wait);
            }
        };
        let mut attempt = LoginAttempt {
            throttle: self,
            email,
            at_email,
            at_address,
            shared: Vec::new(),
        };
        if let Some(shared) = &self.shared {
            let names = std::iter::once(format!("login:email:{}", attempt.email))
                .chain(address.map(|address| format!("login:address:{address}")));
            for name in names {
                match shared.take(&name, self.max_failures, self.window).await {
                    Shared::Taken(place) => attempt.shared.push((name, Some(place))),
                    Shared::Full(wait) => {
                        attempt.give_back();
                        return Err(wait);
                    }
                    Shared::Unreachable => {}
                }
            }
        }
        Ok(attempt)
    }
}

/// A login attempt, counted as failed unless it `succeeded`.
#[derive(Debug)]
pub(crate) struct LoginAttempt<'a> {
    throttle: &'a LoginThrottle,
    email: String,
    at_email: Instant,
    at_address: Option<(IpAddr, Instant)>,
    /// Its places among the cluster's counts (the email's first), kept when it failed.
    shared: Vec<(String, Option<Place>)>,
}

impl LoginAttempt<'_> {
    /// The password was right: the email's failures are forgotten, and this attempt does not
    /// count against the address (whose other failures stay: one account's password does not
    /// vouch for the guesses made from there).
    pub(crate) fn succeeded(mut self) {
        self.throttle.by_email.clear(&self.email);
        if let Some((address, at)) = self.at_address {
            self.throttle.by_address.release(&address, at);
        }
        for (n, (name, place)) in self.shared.iter_mut().enumerate() {
            let place = place.take();
            if n == 0
                && let Some(shared) = &self.throttle.shared
            {
                shared.forget(name);
            }
            // The address's place is given back as it drops.
            drop(place);
        }
    }

    /// Not tried after all (refused by a count): nothing of it counts.
    fn give_back(&mut self) {
        self.throttle.by_email.release(&self.email, self.at_email);
        if let Some((address, at)) = self.at_address.take() {
            self.throttle.by_address.release(&address, at);
        }
        for (_, place) in &mut self.shared {
            drop(place.take());
        }
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        // A failed attempt counts on every node until the window has passed.
        for (_, place) in &mut self.shared {
            if let Some(place) = place.take() {
                place.keep();
            }
        }
    }
}

/// Emails are compared without case, as the store does.
fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A connection admitted for a user: it holds the user's connection slot, and must end when its
/// token expires. Sockets and SSE streams are both admitted here, so one limit counts both.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The user's slot, freed when dropped.
    #[expect(dead_code, reason = "held for its Drop")]
    pub(crate) slot: ConnectionSlot,
    /// On a node of a cluster: its place among the user's connections on every node.
    #[expect(dead_code, reason = "held for its Drop")]
    pub(crate) shared: Option<Renewed>,
    /// When the token the connection was opened with expires.
    pub(crate) expires: Instant,
}

/// Admits a connection of `user` whose token expires at `token_exp` (seconds since the epoch),
/// or refuses it with 429 `too_many_connections`. On a node of a cluster the user's
/// connections on every node count (on this node's alone while Redis does not answer).
pub(crate) async fn admit(state: &AppState, user: &UserId, token_exp: i64) -> Result<Admission, ApiError> {
    let limit = state.config.max_connections_per_user;
    let too_many = || {
        state.metrics.error(ErrorCode::TooManyConnections);
        let message = format!("You already have {limit} open connections; close one first.");
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyConnections, message)
    };
    let Some(slot) = state.connections.open(user, limit) else {
        return Err(too_many());
    };
    let shared = match &state.shared_limits {
        None => None,
        Some(shared) => match shared
            .hold(&format!("connections:{user}"), limit, CONNECTION_PLACE_TTL)
            .await
        {
            Shared::Taken(place) => Some(place.renewed(CONNECTION_PLACE_TTL, CONNECTION_PLACE_RENEWAL)),
            Shared::Full(_) => return Err(too_many()),
            Shared::Unreachable => None,
        },
    };
    let left = (token_exp.saturating_mul(1000) - Timestamp::now().unix_millis()).max(0) as u64;
    Ok(Admission {
        slot,
        shared,
        expires: Instant::now() + Duration::from_millis(left),
    })
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
