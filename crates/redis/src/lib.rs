//! Switchboard's nodes on Redis: [`Redis`] runs commands (publishing to channels, the state the
//! nodes share), [`Subscriber`] and [`Incoming`] subscribe to channels and receive what is
//! published on them. Both sit on `redis`'s `ConnectionManager` (RESP3, multiplexed), which
//! reconnects by itself and subscribes again to every channel after a reconnect. Every operation
//! runs under a deadline ([`RedisOptions::timeout`]); its errors name Redis and `host:port/db`,
//! never the password.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushKind, RedisError, Value};
use switchboard_store::{StoreError, Tier, TierClock, TierObserver};
use tokio::sync::mpsc;

/// How a [`Redis`] uses its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOptions {
    /// The deadline of every operation, and of opening a connection.
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(500),
        }
    }
}

/// Commands to one Redis server. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Redis {
    commands: ConnectionManager,
    place: String,
    timeout: Duration,
    /// Times every operation (Redis's tier); shared with the [`Subscriber`].
    clock: TierClock,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("address", &self.place).finish()
    }
}

/// Subscribes to channels and leaves them; what they carry arrives at [`Incoming`]. Cheap to
/// clone.
#[derive(Clone)]
pub struct Subscriber {
    manager: ConnectionManager,
    place: String,
    timeout: Duration,
    clock: TierClock,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("address", &self.place).finish()
    }
}

/// What arrives on the subscribing connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// A message published on a channel subscribed to.
    Message {
        /// The channel.
        channel: String,
        /// What was published.
        payload: Vec<u8>,
    },
    /// The connection was lost: messages published meanwhile are lost. The connection comes
    /// back by itself, subscribed again to every channel ([`Pushed::Subscribed`] says when).
    Disconnected,
    /// A subscription took effect (after `subscribe`, or again after a reconnect).
    Subscribed(String),
}

/// The messages of the channels subscribed to, in the order the server sent them.
#[derive(Debug)]
pub struct Incoming(mpsc::UnboundedReceiver<redis::PushInfo>);

impl Incoming {
    /// The next message or change of the connection; `None` once the subscriber is gone.
    pub async fn next(&mut self) -> Option<Pushed> {
        loop {
            let push = self.0.recv().await?;
            // Taken, not copied: a message's payload is an event, on the path of every one.
            let text = |value: Value| match value {
                Value::BulkString(bytes) => Some(bytes),
                Value::SimpleString(text) => Some(text.into_bytes()),
                _ => None,
            };
            let name = |bytes: Vec<u8>| {
                String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            };
            let mut data = push.data.into_iter();
            let pushed = match push.kind {
                PushKind::Disconnection => Some(Pushed::Disconnected),
                PushKind::Message => match (data.next(), data.next(), data.next()) {
                    (Some(channel), Some(payload), None) => {
                        text(channel)
                            .zip(text(payload))
                            .map(|(channel, payload)| Pushed::Message {
                                channel: name(channel),
                                payload,
                            })
                    }
                    _ => None,
                },
                PushKind::Subscribe => data
                    .next()
                    .and_then(text)
                    .map(|channel| Pushed::Subscribed(name(channel))),
                _ => None,
            };
            if let Some(pushed) = pushed {
                return Some(pushed);
            }
        }
    }
}

/// Connects to the server of `url` (`redis://[user][:password@]host:port[/db]`): a connection
/// for commands and one for subscriptions, both checked with a `PING`. The errors name Redis,
/// the address and what failed, never the password.
pub async fn connect(url: &str, options: RedisOptions) -> Result<(Redis, Subscriber, Incoming), StoreError> {
    if options.timeout.is_zero() {
        return Err(StoreError::Backend(
            "invalid Redis options: timeout must be longer than 0".into(),
        ));
    }
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError::Backend(format!("invalid Redis URL ({:?})", e.kind())))?;
    let place = format!("{}/{}", info.addr(), info.redis_settings().db());
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    // Without TCP_NODELAY (off by default in `redis`) a command written while another's reply
    // is awaited on the multiplexed connection (a PUBLISH beside a limit's script) waits for
    // that reply's ACK: Nagle's algorithm, on the path of every event between nodes.
    let info = info
        .set_redis_settings(settings)
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = Client::open(info).map_err(|e| unavailable(&place, &e))?;
    let config = || {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            // A command while the server is gone fails within its deadline; the connection is
            // tried again on the next one.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200))
    };
    let open = |config: ConnectionManagerConfig| {
        let (client, place) = (client.clone(), place.clone());
        async move {
            tokio::time::timeout(options.timeout * 2, client.get_connection_manager_with_config(config))
                .await
                .map_err(|_| StoreError::Unavailable {
                    tier: Tier::Redis,
                    reason: format!(
                        "cannot connect to {place}: it did not answer within {} ms",
                        (options.timeout * 2).as_millis()
                    ),
                })?
                .map_err(|e| unavailable(&place, &e))
        }
    };
    let commands = open(config()).await?;
    let (pushes, incoming) = mpsc::unbounded_channel();
    let manager = open(config().set_push_sender(pushes).set_automatic_resubscription()).await?;
    let clock = TierClock::new(Tier::Redis);
    let redis = Redis {
        commands,
        place: place.clone(),
        timeout: options.timeout,
        clock: clock.clone(),
    };
    redis.ping().await?;
    let subscriber = Subscriber {
        manager,
        place,
        timeout: options.timeout,
        clock,
    };
    subscriber.ping().await?;
    Ok((redis, subscriber, Incoming(incoming)))
}

/// Redis cannot be reached (or refused the connection): what failed, at `place`.
fn unavailable(place: &str, error: &RedisError) -> StoreError {
    StoreError::Unavailable {
        tier: Tier::Redis,
        reason: format!("{place}: {error}"),
    }
}

/// What an error of an operation at `place` means for its caller.
fn operation_error(place: &str, timeout: Duration, error: &RedisError) -> StoreError {
    if error.is_timeout() {
        StoreError::TimedOut {
            tier: Tier::Redis,
            after: timeout,
        }
    } else if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped() {
        unavailable(place, error)
    } else {
        StoreError::Backend(format!("Redis at {place}: {error}"))
    }
}

/// Runs `work` under `timeout`, timed by `clock`.
async fn within<T>(
    clock: &TierClock,
    place: &str,
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    let work = async {
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result.map_err(|e| operation_error(place, timeout, &e)),
            Err(_) => Err(StoreError::TimedOut {
                tier: Tier::Redis,
                after: timeout,
            }),
        }
    };
    clock.time("command", work, StoreError::is_unavailable).await
}

impl Redis {
    /// `host:port/db`, for messages.
    pub fn address(&self) -> &str {
        &self.place
    }

    /// The deadline of each operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Tells `observer` how long each operation takes, this one's and its [`Subscriber`]'s (the
    /// first observer stays).
    pub fn observe(&self, observer: &Arc<dyn TierObserver>) {
        self.clock.observe(Arc::clone(observer));
    }

    /// Runs `command` under the deadline.
    pub async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.commands.clone();
        within(
            &self.clock,
            &self.place,
            self.timeout,
            command.query_async(&mut connection),
        )
        .await
    }

    /// Runs `script` with `keys` and `args` under the deadline (loaded on the server the first
    /// time).
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.commands.clone();
        within(
            &self.clock,
            &self.place,
            self.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
    }

    /// `PING`, answered `PONG`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let answer: String = self.run(&redis::cmd("PING")).await?;
        if answer != "PONG" {
            return Err(StoreError::Corrupt(format!(
                "Redis at {}: PING answered {answer:?}",
                self.place
            )));
        }
        Ok(())
    }

    /// Sets `key` to `value` for `ttl`, set before or not.
    pub async fn put(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value).arg("PX").arg(ttl.as_millis().max(1) as u64);
        self.run::<()>(&set).await
    }

    /// Sets `key` to `value` for `ttl` unless it is set; whether it was.
    pub async fn put_new(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .arg("NX");
        Ok(self.run::<Option<String>>(&set).await?.is_some())
    }

    /// Takes `key`'s value (it is gone after), if it is set; at most one caller gets it.
    pub async fn take(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut take = redis::cmd("GETDEL");
        take.arg(key);
        self.run(&take).await
    }

    /// Takes a place `member` in the set `key` of at most `limit` places, for `ttl` (by the
    /// server's clock; places past their time are gone): `None` when it was taken, `Some(wait)`
    /// when the set is full, `wait` being how long until its first place is out of time.
    pub async fn take_place(
        &self,
        key: &str,
        limit: usize,
        ttl: Duration,
        member: &str,
    ) -> Result<Option<Duration>, StoreError> {
        self.take_place_of(key, limit, ttl, member, None).await
    }

    /// As [`Redis::take_place`], for a place held by a live holder: `member` is `{holder}/…`,
    /// and a set found full first loses the places of holders whose key `{alive}{holder}` is
    /// gone (a holder that died: its places would otherwise count until their time ran out).
    /// `alive` is `(prefix of the holders' keys, this holder)`; this holder's places stay.
    pub async fn take_held_place(
        &self,
        key: &str,
        limit: usize,
        ttl: Duration,
        member: &str,
        alive: (&str, &str),
    ) -> Result<Option<Duration>, StoreError> {
        self.take_place_of(key, limit, ttl, member, Some(alive)).await
    }

    async fn take_place_of(
        &self,
        key: &str,
        limit: usize,
        ttl: Duration,
        member: &str,
        alive: Option<(&str, &str)>,
    ) -> Result<Option<Duration>, StoreError> {
        // The holders' keys are not among KEYS: this runs on one Redis, not a Redis Cluster.
        static TAKE_PLACE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] ~= '' and redis.call('ZCARD', KEYS[1]) >= limit then
    local live = {}
    for _, held in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
        local holder = string.match(held, '^([^/]+)/')
        if holder and holder ~= ARGV[5] then
            if live[holder] == nil then
                live[holder] = redis.call('EXISTS', ARGV[4] .. holder) == 1
            end
            if not live[holder] then
                redis.call('ZREM', KEYS[1], held)
            end
        end
    end
end
if redis.call('ZCARD', KEYS[1]) >= limit then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(tonumber(first[2]) - now, 1)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))
return 0
",
            )
        });
        let (limit, ttl) = (limit.to_string(), ttl.as_millis().max(1).to_string());
        let (alive, holder) = alive.unwrap_or_default();
        let wait: u64 = self
            .script(
                &TAKE_PLACE,
                &[key],
                &[
                    limit.as_bytes(),
                    ttl.as_bytes(),
                    member.as_bytes(),
                    alive.as_bytes(),
                    holder.as_bytes(),
                ],
            )
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    /// Gives place `member` of `key` `ttl` more from now; `false` when it has none (it ran out,
    /// or Redis lost it).
    pub async fn renew_place(&self, key: &str, ttl: Duration, member: &str) -> Result<bool, StoreError> {
        static RENEW_PLACE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not held or tonumber(held) <= now then
    return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))
return 1
",
            )
        });
        let ttl = ttl.as_millis().max(1).to_string();
        let renewed: i64 = self
            .script(&RENEW_PLACE, &[key], &[ttl.as_bytes(), member.as_bytes()])
            .await?;
        Ok(renewed == 1)
    }

    /// Gives place `member` of `key` back.
    pub async fn give_back(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let mut remove = redis::cmd("ZREM");
        remove.arg(key).arg(member);
        self.run::<i64>(&remove).await.map(|_| ())
    }

    /// Gives every place of `key` back.
    pub async fn forget(&self, key: &str) -> Result<(), StoreError> {
        let mut delete = redis::cmd("DEL");
        delete.arg(key);
        self.run::<i64>(&delete).await.map(|_| ())
    }

    /// Publishes each message on its channel, in order, in one round trip.
    pub async fn publish(&self, messages: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (channel, payload) in messages {
            pipeline.cmd("PUBLISH").arg(channel).arg(payload.as_slice()).ignore();
        }
        let mut connection = self.commands.clone();
        within(
            &self.clock,
            &self.place,
            self.timeout,
            pipeline.query_async::<()>(&mut connection),
        )
        .await
    }
}

impl Subscriber {
    /// Subscribes to `channel`: its messages arrive at [`Incoming`] from when this returns.
    pub async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
        let mut manager = self.manager.clone();
        within(&self.clock, &self.place, self.timeout, manager.subscribe(channel)).await
    }

    /// Leaves `channel`.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), StoreError> {
        let mut manager = self.manager.clone();
        within(&self.clock, &self.place, self.timeout, manager.unsubscribe(channel)).await
    }

    /// `PING` on the subscribing connection (which also makes it reconnect when it was lost).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut manager = self.manager.clone();
        let answer: Value = within(
            &self.clock,
            &self.place,
            self.timeout,
            redis::cmd("PING").query_async(&mut manager),
        )
        .await?;
        match answer {
            Value::SimpleString(text) if text == "PONG" => Ok(()),
            other => Err(StoreError::Corrupt(format!(
                "Redis at {}: PING answered {other:?}",
                self.place
            ))),
        }
    }
}
