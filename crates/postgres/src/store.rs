//! [`PgStore`]: the `Store` trait on PostgreSQL, with the semantics of the embedded SQLite
//! backend (`switchboard_store::SqliteStore`) and the same storage suite to pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, ManagerConfig, Pool, RecyclingMethod, Runtime};
use switchboard_protocol::{
    EntryKey, Event, LogEntry, MessageId, Role, RunEnd, RunId, RunStatus, RunTimings, Seq, ThreadId, Timestamp, UserId,
};
use switchboard_store::{
    Accepted, EventRecord, EventRow, Grouped, Message, NewMessage, RefreshFamilyId, RefreshTokenId, Rotation,
    RunRecord, RunState, Store, StoreError, StoredEvent, Thread, Tier, TierClock, TierObserver, User, thread_title,
};
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::connection::{self, Failure, Work};
use crate::{PgOptions, address, schema};

/// The longest start-up waits for the schema (another server may be migrating it).
const MIGRATION_DEADLINE: Duration = Duration::from_secs(30);

/// How much longer than the client's deadline the server gives a statement, or a transaction
/// left idle, before it ends it.
const SERVER_GRACE: Duration = Duration::from_secs(1);

/// The session settings that make the server end what a vanished client left: a statement
/// running past the deadline whose cancel did not reach the server, and above all a transaction
/// left open (holding its locks, those of `user_logs` rows too) by a client cut off mid-way
/// behind a stalled network, which the server would otherwise keep until TCP gives up on the
/// socket, hours later. No operation of the store runs that long: its caller has been told
/// `TimedOut` by then. Added to any `options` the URL has.
fn server_deadlines(given: Option<&str>, query_timeout: Duration) -> String {
    let limit = (query_timeout + SERVER_GRACE).as_millis();
    let ours = format!("-c statement_timeout={limit} -c idle_in_transaction_session_timeout={limit}");
    match given {
        Some(given) if !given.trim().is_empty() => format!("{given} {ours}"),
        _ => ours,
    }
}

/// The PostgreSQL store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// How its connections are secured (the pool's, and a cancel request's).
    tls: MakeRustlsConnect,
    place: String,
    options: PgOptions,
    /// Appends so far, to forget old batch keys now and then.
    appends: Arc<AtomicU64>,
    /// The node this store serves, on a database shared by a cluster: recorded with each run it
    /// accepts, and the name of its lease.
    node: Option<Arc<Node>>,
    /// Messages waiting to be stored. Group commit: the messages that arrive while a group is
    /// stored form the next, one transaction for all, so that many users sending at once wait
    /// for a few commits, not for one commit each.
    accepts: Grouped<NewMessage, Result<Accepted, StoreError>>,
    /// Times every operation (PostgreSQL's tier).
    clock: TierClock,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("address", &self.place).finish()
    }
}

impl PgStore {
    /// Connects to the database of `url` (`postgres://user:password@host:port/database`, or
    /// libpq's `key=value` form) and brings its schema up to date. The errors name PostgreSQL,
    /// the address and what failed, never the password.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        options.check()?;
        let (mut config, tls) = crate::parse(url)?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("switchboard");
        config.options(server_deadlines(config.get_options(), options.query_timeout));
        let place = address::of(&config);
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                // A connection that is closed is not handed out; a lease cut short never comes back.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            // tokio-postgres's own connect timeout covers the TCP connect only; this covers the
            // server's handshake too (a server that accepts and says nothing).
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot make a pool of connections to {place}: {e}")))?;
        let store = Self {
            pool,
            tls,
            place,
            options,
            appends: Arc::default(),
            node: None,
            accepts: Grouped::new(ACCEPT_GROUP),
            clock: TierClock::new(Tier::Postgres),
        };
        let migrated = store.place.clone();
        let limit = MIGRATION_DEADLINE.max(options.query_timeout);
        let found = connection::within(
            &store.pool,
            &store.tls,
            &store.place,
            options.connect_timeout,
            limit,
            move |client| schema::migrate(client, migrated),
        )
        .await
        .map_err(|error| match error {
            // At start-up, say where: there is no request to blame.
            StoreError::TimedOut { tier, after } => StoreError::Unavailable {
                tier,
                reason: format!(
                    "cannot connect to {}: it did not answer within {} ms",
                    store.place,
                    after.as_millis()
                ),
            },
            other => other,
        })?;
        tracing::debug!(database = %store.place, found, "connected to PostgreSQL");
        Ok(store)
    }

    /// The database's own random name (schema 3), the same for every node on it.
    pub async fn cluster_id(&self) -> Result<String, StoreError> {
        self.with(|client| {
            Box::pin(async move {
                let row = client.query_one("SELECT id FROM cluster", &[]).await?;
                Ok(get::<String>(&row, 0)?)
            })
        })
        .await
    }

    /// `host:port/database`, for messages.
    pub fn address(&self) -> &str {
        &self.place
    }

    /// The options it was connected with.
    pub fn options(&self) -> PgOptions {
        self.options
    }

    /// Forgets the keys of batches stored longer ago than `BATCH_KEYS_KEPT`, some at a time.
    async fn forget_old_batches(&self) {
        let before = now_millis() - BATCH_KEYS_KEPT.as_millis() as i64;
        let forgotten = self
            .with(move |client| {
                Box::pin(async move {
                    let forget = client
                        .prepare_cached(
                            "DELETE FROM log_batches WHERE key IN
                             (SELECT key FROM log_batches WHERE stored_at < $1 ORDER BY stored_at LIMIT 10000)",
                        )
                        .await?;
                    Ok(client.execute(&forget, &[&before]).await?)
                })
            })
            .await;
        match forgotten {
            Ok(count) => tracing::debug!(count, "forgot the keys of old event-log batches"),
            Err(error) => tracing::warn!(%error, "forgetting old event-log batch keys failed; trying again later"),
        }
    }

    /// Stores a group of messages, one transaction for all (see `accept_together`); a message
    /// that transaction did not store, or all when it failed, on its own (`accept`), which says
    /// why. When PostgreSQL did not answer or cannot be reached, every message is told so.
    async fn accept_group(&self, messages: Vec<NewMessage>) -> Vec<Result<Accepted, StoreError>> {
        if messages.len() == 1 {
            let message = messages.into_iter().next().expect("one message");
            let node = self.node.clone();
            return vec![self.with(move |client| accept(client, message, node)).await];
        }
        let together = self.with({
            let (messages, node) = (messages.clone(), self.node.clone());
            move |client| accept_together(client, messages, node)
        });
        let answers: Vec<Option<Accepted>> = match together.await {
            Ok(answers) => answers,
            Err(error @ (StoreError::TimedOut { .. } | StoreError::Unavailable { .. })) => {
                return vec![Err(error); messages.len()];
            }
            Err(error) => {
                tracing::debug!(%error, count = messages.len(), "a group of messages failed; storing each on its own");
                vec![None; messages.len()]
            }
        };
        // Those the group did not store, each on its own connection, at once.
        futures_util::future::join_all(messages.into_iter().zip(answers).map(|(message, answer)| async move {
            match answer {
                Some(accepted) => Ok(accepted),
                None => {
                    let node = self.node.clone();
                    self.with(move |client| accept(client, message, node)).await
                }
            }
        }))
        .await
    }

    /// Runs `work` on a pooled connection under the query deadline.
    async fn with<T>(
        &self,
        work: impl for<'c> FnOnce(&'c mut ClientWrapper) -> Work<'c, T> + Send,
    ) -> Result<T, StoreError> {
        let work = connection::within(
            &self.pool,
            &self.tls,
            &self.place,
            self.options.connect_timeout,
            self.options.query_timeout,
            work,
        );
        self.clock.time("query", work, StoreError::is_unavailable).await
    }
}

/// The database's clock, in Unix milliseconds: every node's lease is measured by it, so the
/// nodes' own clocks may differ.
const DATABASE_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The most runs of gone nodes one claim takes.
const CLAIM_AT_MOST: i64 = 1000;

/// A node of a cluster, as its store knows it.
#[derive(Debug)]
struct Node {
    /// Its name: the name of its lease, recorded with each run it accepts (`runs.node`).
    name: String,
    /// This process's own mark (`runs.owner`), recorded with the runs it accepts or takes over:
    /// the events of a run are stored only while the run is still this process's, so that a
    /// node cut off from the database for longer than its lease, whose runs another node closed
    /// meanwhile, cannot add to them once it is back (nor can an earlier process of the same
    /// name, whose runs the new one took over).
    owner: String,
}

/// A node of a cluster: its lease, and the runs it takes over from nodes that are gone.
impl PgStore {
    /// The store as node `node` of a cluster: each run it accepts records the node.
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = Some(Arc::new(Node {
            name: node.to_owned(),
            owner: format!("{node}/{}", uuid::Uuid::new_v4().simple()),
        }));
        self
    }

    /// The node this store serves, if it is one.
    pub fn node(&self) -> Option<&str> {
        self.node.as_ref().map(|node| node.name.as_str())
    }

    fn node_name(&self) -> Result<String, StoreError> {
        self.node()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Backend("a store of no node keeps no lease".into()))
    }

    /// This process's mark, on a node.
    fn owner(&self) -> Option<String> {
        self.node.as_ref().map(|node| node.owner.clone())
    }

    /// How long this node's lease still runs, by the database's clock (`None`: it has none,
    /// or it ran out): a live lease under this node's name is another process's.
    pub async fn lease_left(&self) -> Result<Option<Duration>, StoreError> {
        let node = self.node_name()?;
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT expires_at - {DATABASE_NOW} FROM node_leases WHERE node = $1");
                let statement = client.prepare_cached(&sql).await?;
                let left: Option<i64> = match client.query_opt(&statement, &[&node]).await? {
                    Some(row) => Some(get(&row, 0)?),
                    None => None,
                };
                Ok(left.filter(|ms| *ms > 0).map(|ms| Duration::from_millis(ms as u64)))
            })
        })
        .await
    }

    /// Takes or renews this node's lease, to run `ttl` from now.
    pub async fn renew_lease(&self, ttl: Duration) -> Result<(), StoreError> {
        let (node, ttl) = (self.node_name()?, ttl.as_millis() as i64);
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!(
                    "INSERT INTO node_leases (node, expires_at) VALUES ($1, {DATABASE_NOW} + $2)
                     ON CONFLICT (node) DO UPDATE SET expires_at = EXCLUDED.expires_at"
                );
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&node, &ttl]).await?;
                Ok(())
            })
        })
        .await
    }

    /// Gives this node's lease up (it stopped, its runs ended), so that its name is free at once.
    pub async fn drop_lease(&self) -> Result<(), StoreError> {
        let node = self.node_name()?;
        self.with(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached("DELETE FROM node_leases WHERE node = $1").await?;
                client.execute(&statement, &[&node]).await?;
                Ok(())
            })
        })
        .await
    }

    /// Makes the running runs of nodes whose lease ran out (or of no node; and of this node
    /// before it started again, when `own`) this node's, and returns them with the node each
    /// was of, for this node to close. Each run is taken by one node only: the runs are locked
    /// as they are taken (others skip them), and a run taken is a live node's.
    pub async fn claim_runs(&self, own: bool) -> Result<Vec<(RunRecord, Option<String>)>, StoreError> {
        let node = self.node_name()?;
        let owner = self.owner().unwrap_or_default();
        self.with(move |client| {
            Box::pin(async move {
                let returned = RUN_COLUMNS
                    .split(',')
                    .map(|column| format!("runs.{}", column.trim()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "UPDATE runs SET node = $1, owner = $4 FROM (
                         SELECT id, node AS was FROM runs
                         WHERE status = 'running'
                           AND (node IS DISTINCT FROM $1 OR $2)
                           AND NOT EXISTS (
                               SELECT 1 FROM node_leases
                               WHERE node_leases.node = runs.node AND node_leases.node <> $1
                                 AND node_leases.expires_at > {DATABASE_NOW}
                           )
                         ORDER BY started_at, id
                         LIMIT $3
                         FOR UPDATE SKIP LOCKED
                     ) AS gone
                     WHERE runs.id = gone.id AND runs.status = 'running'
                     RETURNING {returned}, gone.was"
                );
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[&node, &own, &CLAIM_AT_MOST, &owner]).await?;
                let columns = RUN_COLUMNS.split(',').count();
                let mut claimed = Vec::with_capacity(rows.len());
                for row in &rows {
                    claimed.push((to_run(row)?, get::<Option<String>>(row, columns)?));
                }
                Ok(claimed)
            })
        })
        .await
    }
}

fn now_millis() -> i64 {
    Timestamp::now().unix_millis()
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn timestamp(millis: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_millis(millis).ok_or_else(|| corrupt("timestamp", millis))
}

fn parse_id<T>(
    what: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, switchboard_protocol::IdError>,
) -> Result<T, StoreError> {
    parse(text).map_err(|e| corrupt(what, e))
}

/// A value of a row, read as a plain value first so that a wrong type is `Corrupt`, not a panic.
fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| corrupt("a stored row", e))
}

/// The text as PostgreSQL can keep it: a `text` value cannot hold the NUL character (SQLite's
/// can), so it becomes U+FFFD, the replacement character, rather than an error that would refuse
/// a user's message or, in a model's answer, fail a whole batch of the event log.
fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

const USER_COLUMNS: &str = "id, email, password_hash, created_at";
const THREAD_COLUMNS: &str = "id, user_id, title, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "id, thread_id, role, text, run_id, client_message_id, created_at";
const RUN_COLUMNS: &str =
    "id, user_id, thread_id, message_id, status, started_at, finished_at, duration_ms, timings, model_calls, missing";

fn to_user(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: parse_id("user id", get(row, 0)?, UserId::parse)?,
        email: get(row, 1)?,
        password_hash: get(row, 2)?,
        created_at: timestamp(get(row, 3)?)?,
    })
}

fn to_thread(row: &Row) -> Result<Thread, StoreError> {
    Ok(Thread {
        id: parse_id("thread id", get(row, 0)?, ThreadId::parse)?,
        user_id: parse_id("user id", get(row, 1)?, UserId::parse)?,
        title: get(row, 2)?,
        created_at: timestamp(get(row, 3)?)?,
        updated_at: timestamp(get(row, 4)?)?,
    })
}

fn to_message(row: &Row) -> Result<Message, StoreError> {
    let role: &str = get(row, 2)?;
    let run_id: Option<&str> = get(row, 4)?;
    Ok(Message {
        id: parse_id("message id", get(row, 0)?, MessageId::parse)?,
        thread_id: parse_id("thread id", get(row, 1)?, ThreadId::parse)?,
        role: match role {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(corrupt("message role", other)),
        },
        text: get(row, 3)?,
        run_id: run_id.map(|r| parse_id("run id", r, RunId::parse)).transpose()?,
        client_message_id: get(row, 5)?,
        created_at: timestamp(get(row, 6)?)?,
    })
}

fn to_run(row: &Row) -> Result<RunRecord, StoreError> {
    let status: &str = get(row, 4)?;
    let state = match status {
        "running" => RunState::Running,
        other => RunState::Finished(RunStatus::parse(other).ok_or_else(|| corrupt("run status", other))?),
    };
    let finished_at: Option<i64> = get(row, 6)?;
    let duration_ms: Option<i64> = get(row, 7)?;
    let timings: Option<&str> = get(row, 8)?;
    let model_calls: Option<&str> = get(row, 9)?;
    let missing: Option<&str> = get(row, 10)?;
    Ok(RunRecord {
        id: parse_id("run id", get(row, 0)?, RunId::parse)?,
        user_id: parse_id("user id", get(row, 1)?, UserId::parse)?,
        thread_id: parse_id("thread id", get(row, 2)?, ThreadId::parse)?,
        message_id: parse_id("message id", get(row, 3)?, MessageId::parse)?,
        state,
        started_at: timestamp(get(row, 5)?)?,
        finished_at: finished_at.map(timestamp).transpose()?,
        duration_ms: duration_ms.map(|d| d.max(0) as u64),
        timings: timings
            .map(|t| serde_json::from_str::<RunTimings>(t).map_err(|e| corrupt("run timings", e)))
            .transpose()?,
        model_calls: model_calls
            .map(|c| serde_json::from_str(c).map_err(|e| corrupt("run model calls", e)))
            .transpose()?
            .unwrap_or_default(),
        missing: missing
            .map(|m| serde_json::from_str(m).map_err(|e| corrupt("run's missing agents", e)))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn to_event_record(row: &Row) -> Result<EventRecord, StoreError> {
    let seq: i64 = get(row, 0)?;
    Ok(EventRecord {
        seq: Seq::new(u64::try_from(seq).map_err(|e| corrupt("seq", e))?),
        json: get(row, 1)?,
    })
}

/// Every row of a query, converted.
fn all<T>(rows: &[Row], convert: fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(convert).collect()
}

/// The user message of `user` sent with `client_id`, if any.
async fn message_by_client_id(client: &ClientWrapper, user: &str, client_id: &str) -> Result<Option<Message>, Failure> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND client_message_id = $2 AND role = 'user'"
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&statement, &[&user, &client_id]).await?;
    Ok(row.as_ref().map(to_message).transpose()?)
}

/// What a repeated `client_message_id` gives: the earlier message and its run.
fn duplicate(earlier: Message) -> Result<Accepted, StoreError> {
    let run_id = earlier
        .run_id
        .clone()
        .ok_or_else(|| StoreError::Corrupt("a user message without its run".into()))?;
    Ok(Accepted {
        thread_id: earlier.thread_id.clone(),
        message: earlier,
        run_id,
        duplicate: true,
        created_thread: false,
    })
}

/// Stores one user message, its run and, when it starts one, its thread, in one statement (one
/// round trip, one implicit transaction). Without the thread (not the user's, or gone) nothing
/// is stored and the statement answers 0 rows stored. Nor when a message with its
/// `client_message_id` was stored before (in the statement's snapshot), and then it answers so;
/// a message racing another with the same id, not yet committed, waits for it (the unique
/// index), then fails the statement on `MESSAGE_CLIENT_ID` (nothing of it is kept, the thread
/// included). So a repeated message whose thread is gone is still answered with the earlier one.
const ACCEPT: &str = r#"
WITH earlier AS (
    SELECT $6::text IS NOT NULL AND EXISTS (
        SELECT 1 FROM messages WHERE user_id = $3 AND client_message_id = $6 AND role = 'user'
    ) AS seen
),
touched AS (
    UPDATE threads SET updated_at = $7
    WHERE $8 AND id = $2 AND user_id = $3 AND NOT (SELECT seen FROM earlier)
    RETURNING id
),
created AS (
    INSERT INTO threads (id, user_id, title, created_at, updated_at)
    SELECT $2, $3, $9, $7, $7 WHERE NOT $8 AND NOT (SELECT seen FROM earlier)
    RETURNING id
),
thread AS (
    SELECT id FROM touched UNION ALL SELECT id FROM created
),
message AS (
    INSERT INTO messages (id, thread_id, user_id, role, text, run_id, client_message_id, created_at)
    SELECT $1, id, $3, 'user', $4, $5, $6, $7 FROM thread
    RETURNING id
),
run AS (
    INSERT INTO runs (id, user_id, thread_id, message_id, status, started_at, node, owner)
    SELECT $5, $3, $2, id, 'running', $7, $10, $11 FROM message
    RETURNING id
)
SELECT (SELECT count(*) FROM run), (SELECT seen FROM earlier)
"#;

/// The unique index a repeated `client_message_id` runs into.
const MESSAGE_CLIENT_ID: &str = "messages_by_client_id";

/// Whether the statement failed because the message's `client_message_id` was stored before.
fn repeated(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some(MESSAGE_CLIENT_ID)
    })
}

/// A message as `ACCEPT` stores it: its thread (new, or the one it names), the thread's title
/// when it is new, and the moment it is stored.
struct Accepting {
    message: NewMessage,
    /// The ids as `ACCEPT` takes them: the message's, its thread's and its run's.
    ids: [String; 3],
    user: String,
    thread_id: ThreadId,
    created_thread: bool,
    /// `!created_thread`, as `ACCEPT` takes it.
    existing_thread: bool,
    title: String,
    now: i64,
    /// The node that will run it, and the process's mark.
    node: Option<String>,
    owner: Option<String>,
}

impl Accepting {
    fn of(message: NewMessage, node: Option<&Node>) -> Self {
        let created_thread = message.thread_id.is_none();
        let thread_id = message
            .thread_id
            .clone()
            .unwrap_or_else(|| message.new_thread_id.clone());
        Self {
            ids: [
                message.message_id.to_string(),
                thread_id.to_string(),
                message.run_id.to_string(),
            ],
            user: message.user_id.to_string(),
            thread_id,
            title: if created_thread {
                storable(thread_title(&message.text))
            } else {
                String::new()
            },
            now: now_millis(),
            created_thread,
            existing_thread: !created_thread,
            node: node.map(|node| node.name.clone()),
            owner: node.map(|node| node.owner.clone()),
            message,
        }
    }

    /// `ACCEPT`'s parameters.
    fn parameters(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 11] {
        [
            &self.ids[0],
            &self.ids[1],
            &self.user,
            &self.message.text,
            &self.ids[2],
            &self.message.client_message_id,
            &self.now,
            &self.existing_thread,
            &self.title,
            &self.node,
            &self.owner,
        ]
    }

    /// What `ACCEPT`'s answer says: the message stored (`Some`), or not (`None`), and then
    /// whether an earlier message with its `client_message_id` was seen.
    fn stored(self, row: &Row) -> Result<Result<Accepted, (Self, bool)>, StoreError> {
        let runs: i64 = get(row, 0)?;
        if runs == 0 {
            let earlier: bool = get(row, 1)?;
            return Ok(Err((self, earlier)));
        }
        let message = self.message;
        Ok(Ok(Accepted {
            message: Message {
                id: message.message_id,
                thread_id: self.thread_id.clone(),
                role: Role::User,
                text: message.text,
                run_id: Some(message.run_id.clone()),
                client_message_id: message.client_message_id,
                created_at: timestamp(self.now)?,
            },
            run_id: message.run_id,
            thread_id: self.thread_id,
            duplicate: false,
            created_thread: self.created_thread,
        }))
    }
}

/// Stores one user message and its run (and its thread, when it starts one), all or nothing, in
/// one statement (`ACCEPT`); a repeated `client_message_id` is answered with the earlier message.
fn accept(client: &mut ClientWrapper, message: NewMessage, node: Option<Arc<Node>>) -> Work<'_, Accepted> {
    Box::pin(async move {
        let accepting = Accepting::of(message, node.as_deref());
        let statement = client.prepare_cached(ACCEPT).await?;
        let stored = client.query_one(&statement, &accepting.parameters()).await;
        let (accepting, earlier_exists) = match stored {
            Ok(row) => match accepting.stored(&row)? {
                Ok(accepted) => return Ok(accepted),
                Err((accepting, false)) => {
                    return Err(StoreError::NotFound(format!("thread {}", accepting.thread_id)).into());
                }
                Err((accepting, true)) => (accepting, true),
            },
            // Another transaction stored this `client_message_id` first (and has committed:
            // the insert waited for it). Nothing of this one is kept, the thread included.
            Err(error) if repeated(&error) => (accepting, false),
            Err(error) => return Err(error.into()),
        };
        let client_id = accepting.message.client_message_id.as_deref().unwrap_or_default();
        match message_by_client_id(client, &accepting.user, client_id).await? {
            Some(earlier) => Ok(duplicate(earlier)?),
            // The earlier message was seen but is gone now (its thread was deleted): its thread
            // is not found.
            None if earlier_exists => Err(StoreError::NotFound(format!("thread {}", accepting.thread_id)).into()),
            None => Err(StoreError::Backend("a repeated message vanished while it was stored".into()).into()),
        }
    })
}

/// The most messages one transaction stores.
const ACCEPT_GROUP: usize = 128;

/// Stores a group of messages in one transaction: `ACCEPT` once for each, pipelined (sent
/// together, one round trip), in the order of their threads (so that groups of several
/// servers lock threads in one order), and one commit for all. Each message is answered
/// `Some` when it was stored; `None` when it was not (its thread is not the user's, or it
/// repeats a message stored before), and then it is accepted again on its own, which says why.
/// Any error (two messages of the group with one `client_message_id`) rolls the whole group
/// back.
fn accept_together(
    client: &mut ClientWrapper,
    messages: Vec<NewMessage>,
    node: Option<Arc<Node>>,
) -> Work<'_, Vec<Option<Accepted>>> {
    Box::pin(async move {
        let mut accepting: Vec<(usize, Accepting)> = messages
            .into_iter()
            .map(|message| Accepting::of(message, node.as_deref()))
            .enumerate()
            .collect();
        accepting.sort_by(|(_, a), (_, b)| a.thread_id.as_str().cmp(b.thread_id.as_str()));
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(ACCEPT).await?;
        let parameters: Vec<_> = accepting.iter().map(|(_, one)| one.parameters()).collect();
        let rows = futures_util::future::try_join_all(parameters.iter().map(|p| tx.query_one(&statement, p))).await?;
        drop(parameters);
        let mut answers: Vec<Option<Accepted>> = std::iter::repeat_with(|| None).take(accepting.len()).collect();
        for ((index, one), row) in accepting.into_iter().zip(&rows) {
            answers[index] = one.stored(row)?.ok();
        }
        tx.commit().await?;
        Ok(answers)
    })
}

/// Appends a batch in one statement, one round trip: each user's `user_logs` row is advanced
/// by the number of the user's events in the batch, the rows locked in the order of the user
/// ids (so two batches of several users cannot deadlock); each event takes the next seq of its
/// user in the order given, and its JSON is the text `NewEvent::to_json` wrote with `{"seq":N,`
/// before it, byte for byte what `UnnumberedJson::numbered` makes; the batch's key is kept with
/// its users' new last seqs (`log_batches`: a batch stored before fails the statement on its
/// key, and nothing of it is stored again). The statement answers each user's new last seq;
/// the caller numbers its records from it the same way.
///
/// `fenced` (its first part, `unfenced!` or `fenced!`) names the batch's runs that are no longer
/// this process's: when there is any, nothing is stored and the statement answers those runs
/// (each with the last seq -1) instead.
macro_rules! append_sql {
    ($fence:expr $(, $ends:expr)?) => {
        concat!($fence, r#",
batch AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS b (user_id, run_id, rest, n)
    WHERE NOT EXISTS (SELECT 1 FROM fenced)
),
advanced AS (
    INSERT INTO user_logs (user_id, last_seq)
    SELECT user_id, count(*) FROM batch GROUP BY user_id ORDER BY user_id COLLATE "C"
    ON CONFLICT (user_id) DO UPDATE SET last_seq = user_logs.last_seq + EXCLUDED.last_seq
    RETURNING user_id, last_seq
),
numbered AS (
    SELECT batch.user_id, batch.run_id, batch.rest,
           advanced.last_seq - count(*) OVER mine + row_number() OVER (mine ORDER BY batch.n) AS seq
    FROM batch JOIN advanced USING (user_id)
    WINDOW mine AS (PARTITION BY batch.user_id)
),
stored AS (
    INSERT INTO events (user_id, seq, run_id, json)
    SELECT user_id, seq, run_id, '{"seq":' || seq || ',' || rest FROM numbered
),
remembered AS (
    INSERT INTO log_batches (key, lasts, stored_at)
    SELECT $4, array_agg(last_seq ORDER BY user_id COLLATE "C"), $5 FROM advanced HAVING count(*) > 0
)"#,
            $($ends,)?
            "\nSELECT user_id, last_seq FROM advanced\nUNION ALL SELECT run_id, -1 FROM fenced\n"
        )
    };
}

/// No run is fenced: a server alone on its database.
macro_rules! unfenced {
    () => {
        "\nWITH fenced (run_id) AS (SELECT NULL::text WHERE false)"
    };
}

/// The batch's runs that are not running under `owner` (the parameter of that number), a
/// node's process: its runs, locked (`FOR SHARE`) until the statement commits, so that no other
/// node takes one over meanwhile (`claim_runs` skips them), and so that a run another node took
/// over first (the lock waits for it) is fenced.
macro_rules! fenced {
    ($owner:literal) => {
        concat!(
            "\nWITH owned AS (
    SELECT id FROM runs WHERE id = ANY($2::text[]) AND owner = $",
            $owner,
            " AND status = 'running' FOR SHARE
),
fenced (run_id) AS (
    SELECT DISTINCT run_id FROM UNNEST($2::text[]) AS r (run_id) WHERE run_id NOT IN (SELECT id FROM owned)
)"
        )
    };
}

/// The ends of `APPEND_ENDING`.
macro_rules! run_ends {
    () => {
        r#",
ends AS (
    SELECT * FROM UNNEST($6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::text[], $12::text[],
                         $13::text[], $14::text[], $15::text[])
        AS e (user_id, run_id, status, at, duration_ms, timings, model_calls, missing, answer_id, answer)
    WHERE NOT EXISTS (SELECT 1 FROM fenced)
),
finished AS (
    UPDATE runs SET status = ends.status, finished_at = ends.at, duration_ms = ends.duration_ms,
                    timings = ends.timings, model_calls = ends.model_calls, missing = ends.missing
    FROM ends WHERE runs.id = ends.run_id AND runs.user_id = ends.user_id
    RETURNING runs.id, runs.user_id, runs.thread_id
),
answered AS (
    INSERT INTO messages (id, thread_id, user_id, role, text, run_id, created_at)
    SELECT ends.answer_id, finished.thread_id, finished.user_id, 'assistant', ends.answer, finished.id, ends.at
    FROM ends
    JOIN finished ON finished.id = ends.run_id AND finished.user_id = ends.user_id
    JOIN threads ON threads.id = finished.thread_id
    WHERE ends.answer IS NOT NULL
    RETURNING thread_id, created_at
),
touched AS (
    UPDATE threads SET updated_at = latest.at
    FROM (SELECT thread_id, max(created_at) AS at FROM answered GROUP BY thread_id) AS latest
    WHERE threads.id = latest.thread_id
)"#
    };
}

const APPEND: &str = append_sql!(unfenced!());

/// `APPEND` that also finishes the runs whose ends the batch carries, in the same statement
/// (one round trip, one implicit transaction): each run's status, end time, duration, timings,
/// model calls and missing agents; a completed run's answer as an assistant message in its
/// thread (when the thread is still there), and the thread's `updated_at` moved to it.
const APPEND_ENDING: &str = append_sql!(unfenced!(), run_ends!());

/// `APPEND` and `APPEND_ENDING` on a node of a cluster, the process's mark the parameter after
/// the others.
const APPEND_FENCED: &str = append_sql!(fenced!("6"));
const APPEND_ENDING_FENCED: &str = append_sql!(fenced!("16"), run_ends!());

/// The constraint a batch stored before runs into.
const BATCH_KEY: &str = "log_batches_pkey";

/// How long a batch's key is kept: a batch tried again within it is stored once.
const BATCH_KEYS_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// Every this many appends, a store forgets the batch keys older than `BATCH_KEYS_KEPT`.
const FORGET_EVERY: u64 = 4096;

/// Whether the append failed because its batch was stored before.
fn stored_before(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some(BATCH_KEY)
    })
}

/// The records a batch stored before got: its users' last seqs after it, as it kept them.
async fn earlier(
    client: &ClientWrapper,
    key: &[u8],
    rows: &[EventRow],
    counts: &BTreeMap<&str, i64>,
) -> Result<Vec<StoredEvent>, Failure> {
    let find = client
        .prepare_cached("SELECT lasts FROM log_batches WHERE key = $1")
        .await?;
    let row = client
        .query_opt(&find, &[&key])
        .await?
        .ok_or_else(|| StoreError::Backend("a batch stored before was forgotten while it was tried again".into()))?;
    let lasts: Vec<i64> = get(&row, 0)?;
    if lasts.len() != counts.len() {
        return Err(corrupt("a batch tried again", "it names other users than when it was stored").into());
    }
    let advanced: Vec<(String, i64)> = counts.keys().map(|user| (*user).to_owned()).zip(lasts).collect();
    Ok(number(rows, counts, advanced)?)
}

/// The start of every event's JSON before it is numbered (see `UnnumberedJson`).
const UNNUMBERED_PREFIX: &str = "{\"seq\":0,";

/// Stores the rows, and finishes the runs whose ends they carry, in one statement. A batch stored before (its key is kept) is answered as it was then.
/// With `owner` (a node's process), only when each of the batch's runs is still running under
/// it; else nothing is stored and the answer is `Conflict`, naming the runs.
fn append_all(
    client: &mut ClientWrapper,
    key: Vec<u8>,
    rows: Vec<EventRow>,
    owner: Option<String>,
) -> Work<'_, Vec<StoredEvent>> {
    Box::pin(async move {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        let (mut user_ids, mut run_ids, mut rests) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for row in &rows {
            *counts.entry(row.user_id.as_str()).or_default() += 1;
            let zero = row.json.numbered(Seq::ZERO);
            let rest = zero
                .strip_prefix(UNNUMBERED_PREFIX)
                .ok_or_else(|| corrupt("event", "its JSON does not begin with its seq"))?
                .to_owned();
            user_ids.push(row.user_id.as_str());
            run_ids.push(row.run_id.as_str());
            rests.push(rest);
        }
        let now = now_millis();
        let ends = RunEnds::of(&rows)?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&user_ids, &run_ids, &rests, &key, &now];
        if !ends.is_empty() {
            params.extend([
                &ends.user_ids as &(dyn tokio_postgres::types::ToSql + Sync),
                &ends.run_ids,
                &ends.statuses,
                &ends.ats,
                &ends.durations,
                &ends.timings,
                &ends.model_calls,
                &ends.missing,
                &ends.answer_ids,
                &ends.answers,
            ]);
        }
        let sql = match (ends.is_empty(), &owner) {
            (true, None) => APPEND,
            (false, None) => APPEND_ENDING,
            (true, Some(_)) => APPEND_FENCED,
            (false, Some(_)) => APPEND_ENDING_FENCED,
        };
        if let Some(owner) = &owner {
            params.push(owner);
        }
        let answer = client.query(&client.prepare_cached(sql).await?, &params).await;
        match answer {
            Ok(advanced) => {
                let (fenced, advanced): (Vec<_>, Vec<_>) =
                    users_and_lasts(&advanced)?.into_iter().partition(|(_, last)| *last < 0);
                if !fenced.is_empty() {
                    let runs: Vec<String> = fenced.into_iter().map(|(run, _)| run).collect();
                    let (s, is, it, its) = match runs.len() {
                        1 => ("", "is", "it", "its"),
                        _ => ("s", "are", "them", "their"),
                    };
                    return Err(StoreError::Conflict(format!(
                        "the run{s} {} {is} no longer this node's (another node took {it} over while this one \
                         could not reach PostgreSQL): {its} events are not stored",
                        runs.join(", "),
                    ))
                    .into());
                }
                Ok(number(&rows, &counts, advanced)?)
            }
            Err(error) if stored_before(&error) => earlier(client, &key, &rows, &counts).await,
            Err(error) => Err(error.into()),
        }
    })
}

/// The run ends a batch carries, as the columns `APPEND_ENDING` unnests: one per run (the last
/// given, should a run's end come twice), a completed run's answer with the id of its message.
#[derive(Default)]
struct RunEnds<'a> {
    user_ids: Vec<&'a str>,
    run_ids: Vec<&'a str>,
    statuses: Vec<&'static str>,
    ats: Vec<i64>,
    durations: Vec<i64>,
    timings: Vec<Option<String>>,
    model_calls: Vec<Option<String>>,
    missing: Vec<Option<String>>,
    answer_ids: Vec<String>,
    answers: Vec<Option<String>>,
}

impl<'a> RunEnds<'a> {
    fn of(rows: &'a [EventRow]) -> Result<Self, StoreError> {
        let mut last: BTreeMap<(&str, &str), (&RunEnd, i64)> = BTreeMap::new();
        for row in rows {
            if let Some(end) = &row.end {
                last.insert((row.user_id.as_str(), row.run_id.as_str()), (end, row.at));
            }
        }
        let mut ends = RunEnds::default();
        for ((user, run), (end, at)) in last {
            ends.user_ids.push(user);
            ends.run_ids.push(run);
            ends.statuses.push(end.status.as_str());
            ends.ats.push(at);
            ends.durations.push(i64::try_from(end.duration_ms).unwrap_or(i64::MAX));
            ends.timings.push(
                end.timings
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| corrupt("timings", e))?,
            );
            ends.model_calls.push(
                Some(&end.model_calls)
                    .filter(|calls| !calls.is_empty())
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| corrupt("model calls", e))?,
            );
            ends.missing.push(
                Some(&end.missing)
                    .filter(|agents| !agents.is_empty())
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| corrupt("missing agents", e))?,
            );
            ends.answer_ids.push(MessageId::generate().to_string());
            ends.answers.push(match (end.status, &end.answer) {
                (RunStatus::Completed, Some(answer)) => Some(storable(answer.clone())),
                _ => None,
            });
        }
        Ok(ends)
    }

    fn is_empty(&self) -> bool {
        self.run_ids.is_empty()
    }
}

/// The rows `APPEND` answers: each user and its last seq.
fn users_and_lasts(advanced: &[Row]) -> Result<Vec<(String, i64)>, StoreError> {
    advanced.iter().map(|row| Ok((get(row, 0)?, get(row, 1)?))).collect()
}

/// The records of the rows, numbered from each user's new last seq (`advanced`) as `APPEND`
/// numbered them: the user's events in the order given, ending at its last seq.
fn number(
    rows: &[EventRow],
    counts: &BTreeMap<&str, i64>,
    advanced: Vec<(String, i64)>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    for (user, last) in advanced {
        let first = last - counts.get(user.as_str()).copied().unwrap_or_default() + 1;
        next.insert(user, first);
    }
    let mut stored = Vec::with_capacity(rows.len());
    for row in rows {
        let slot = next
            .get_mut(row.user_id.as_str())
            .ok_or_else(|| StoreError::Backend(format!("no seq was given to user {}", row.user_id)))?;
        let seq = Seq::new(u64::try_from(*slot).map_err(|e| corrupt("seq", e))?);
        *slot += 1;
        stored.push(StoredEvent {
            user_id: row.user_id.clone(),
            record: EventRecord {
                seq,
                json: row.json.numbered(seq),
            },
        });
    }
    Ok(stored)
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let user = User {
            id: UserId::generate(),
            email: storable(email.to_lowercase()),
            password_hash: storable(password_hash.to_owned()),
            created_at: Timestamp::now(),
        };
        let stored = user.clone();
        self.with(move |client| {
            Box::pin(async move {
                let insert = client
                    .prepare_cached("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
                    .await?;
                client
                    .execute(
                        &insert,
                        &[
                            &stored.id.as_str(),
                            &stored.email,
                            &stored.password_hash,
                            &stored.created_at.unix_millis(),
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("the email {} is taken", user.email)),
            other => other,
        })?;
        Ok(user)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = storable(email.to_lowercase());
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&email]).await?;
                Ok(row.as_ref().map(to_user).transpose()?)
            })
        })
        .await
    }

    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&id]).await?;
                Ok(row.as_ref().map(to_user).transpose()?)
            })
        })
        .await
    }

    async fn create_thread(&self, user: &UserId, title: &str) -> Result<Thread, StoreError> {
        let now = Timestamp::now();
        let thread = Thread {
            id: ThreadId::generate(),
            user_id: user.clone(),
            title: storable(thread_title(title)),
            created_at: now,
            updated_at: now,
        };
        let stored = thread.clone();
        self.with(move |client| {
            Box::pin(async move {
                let insert = client
                    .prepare_cached(
                        "INSERT INTO threads (id, user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
                    )
                    .await?;
                client
                    .execute(
                        &insert,
                        &[
                            &stored.id.as_str(),
                            &stored.user_id.as_str(),
                            &stored.title,
                            &now.unix_millis(),
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
        .await?;
        Ok(thread)
    }

    async fn threads(&self, user: &UserId) -> Result<Vec<Thread>, StoreError> {
        let user = user.to_string();
        self.with(move |client| {
            Box::pin(async move {
                let sql =
                    format!("SELECT {THREAD_COLUMNS} FROM threads WHERE user_id = $1 ORDER BY updated_at DESC, id");
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[&user]).await?;
                Ok(all(&rows, to_thread)?)
            })
        })
        .await
    }

    async fn thread(&self, user: &UserId, id: &ThreadId) -> Result<Option<Thread>, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {THREAD_COLUMNS} FROM threads WHERE id = $1 AND user_id = $2");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&id, &user]).await?;
                Ok(row.as_ref().map(to_thread).transpose()?)
            })
        })
        .await
    }

    async fn delete_thread(&self, user: &UserId, id: &ThreadId) -> Result<bool, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let delete = tx
                    .prepare_cached("DELETE FROM threads WHERE id = $1 AND user_id = $2")
                    .await?;
                let deleted = tx.execute(&delete, &[&id, &user]).await?;
                if deleted > 0 {
                    let messages = tx.prepare_cached("DELETE FROM messages WHERE thread_id = $1").await?;
                    tx.execute(&messages, &[&id]).await?;
                }
                tx.commit().await?;
                Ok(deleted > 0)
            })
        })
        .await
    }

    async fn messages(&self, user: &UserId, thread: &ThreadId) -> Result<Vec<Message>, StoreError> {
        let (user, thread) = (user.to_string(), thread.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let exists = client
                    .prepare_cached("SELECT 1 FROM threads WHERE id = $1 AND user_id = $2")
                    .await?;
                if client.query_opt(&exists, &[&thread, &user]).await?.is_none() {
                    return Err(StoreError::NotFound(format!("thread {thread}")).into());
                }
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 ORDER BY created_at, position"
                );
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[&thread]).await?;
                Ok(all(&rows, to_message)?)
            })
        })
        .await
    }

    async fn accept_message(&self, mut message: NewMessage) -> Result<Accepted, StoreError> {
        message.text = storable(message.text);
        message.client_message_id = message.client_message_id.map(storable);
        let store = self.clone();
        let waiting = self.accepts.submit(message, move |messages| {
            let store = store.clone();
            async move { store.accept_group(messages).await }
        });
        // The wait in the queue counts: a message is answered within the deadline.
        match tokio::time::timeout(self.options.query_timeout, waiting).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::Backend(
                "the writer of messages stopped before storing the message".into(),
            )),
            Err(_) => Err(StoreError::TimedOut {
                tier: Tier::Postgres,
                after: self.options.query_timeout,
            }),
        }
    }

    async fn message_by_client_id(
        &self,
        user: &UserId,
        client_message_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        let (user, client_id) = (user.to_string(), storable(client_message_id.to_owned()));
        self.with(move |client| Box::pin(async move { message_by_client_id(client, &user, &client_id).await }))
            .await
    }

    async fn discard_run(&self, user: &UserId, run: &RunId, created_thread: bool) -> Result<(), StoreError> {
        let (user, run) = (user.to_string(), run.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let message = tx
                    .prepare_cached("DELETE FROM messages WHERE run_id = $1 AND user_id = $2 AND role = 'user'")
                    .await?;
                tx.execute(&message, &[&run, &user]).await?;
                if created_thread {
                    // Only when nothing else came to it since (a message discarded late).
                    let thread = tx
                        .prepare_cached(
                            "DELETE FROM threads WHERE user_id = $2
                             AND id = (SELECT thread_id FROM runs WHERE id = $1 AND user_id = $2)
                             AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.thread_id = threads.id)",
                        )
                        .await?;
                    tx.execute(&thread, &[&run, &user]).await?;
                }
                let delete = tx
                    .prepare_cached("DELETE FROM runs WHERE id = $1 AND user_id = $2")
                    .await?;
                tx.execute(&delete, &[&run, &user]).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    async fn run(&self, user: &UserId, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND user_id = $2");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&id, &user]).await?;
                Ok(row.as_ref().map(to_run).transpose()?)
            })
        })
        .await
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY started_at, id");
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[]).await?;
                Ok(all(&rows, to_run)?)
            })
        })
        .await
    }

    async fn append_events(&self, entries: &[LogEntry]) -> Result<Vec<StoredEvent>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Written before a connection is taken, so it is held only for the rows.
        let rows = EventRow::of(entries)?;
        let key = EntryKey::of_batch(entries).get().to_be_bytes().to_vec();
        let owner = self.owner();
        let stored = self.with(move |client| append_all(client, key, rows, owner)).await?;
        if self.appends.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            let store = self.clone();
            tokio::spawn(async move { store.forget_old_batches().await });
        }
        Ok(stored)
    }

    async fn events_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let user = user.to_string();
        let after = i64::try_from(after.get()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |client| {
            Box::pin(async move {
                let statement = client
                    .prepare_cached(
                        "SELECT seq, json FROM events WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .await?;
                let rows = client.query(&statement, &[&user, &after, &limit]).await?;
                Ok(all(&rows, to_event_record)?)
            })
        })
        .await
    }

    async fn run_events(&self, user: &UserId, run: &RunId) -> Result<Vec<Event>, StoreError> {
        let (user, run) = (user.to_string(), run.to_string());
        let records = self
            .with(move |client| {
                Box::pin(async move {
                    // Through the user's key: only crash recovery asks, for the few runs a
                    // crash left open, so the log keeps no index by run for it.
                    let statement = client
                        .prepare_cached("SELECT seq, json FROM events WHERE user_id = $1 AND run_id = $2 ORDER BY seq")
                        .await?;
                    let rows = client.query(&statement, &[&user, &run]).await?;
                    Ok(all(&rows, to_event_record)?)
                })
            })
            .await?;
        records.iter().map(EventRecord::event).collect()
    }

    async fn last_seq(&self, user: &UserId) -> Result<Seq, StoreError> {
        let user = user.to_string();
        self.with(move |client| {
            Box::pin(async move {
                let statement = client
                    .prepare_cached("SELECT last_seq FROM user_logs WHERE user_id = $1")
                    .await?;
                let last: i64 = match client.query_opt(&statement, &[&user]).await? {
                    Some(row) => get(&row, 0)?,
                    None => 0,
                };
                Ok(Seq::new(last.max(0) as u64))
            })
        })
        .await
    }

    async fn last_seqs(&self, users: &[UserId]) -> Result<Vec<Seq>, StoreError> {
        let ids: Vec<String> = users.iter().map(UserId::to_string).collect();
        let found: BTreeMap<String, i64> = self
            .with({
                let ids = ids.clone();
                move |client| {
                    Box::pin(async move {
                        let statement = client
                            .prepare_cached("SELECT user_id, last_seq FROM user_logs WHERE user_id = ANY($1)")
                            .await?;
                        let rows = client.query(&statement, &[&ids]).await?;
                        let mut found = BTreeMap::new();
                        for row in &rows {
                            found.insert(get::<String>(row, 0)?, get::<i64>(row, 1)?);
                        }
                        Ok(found)
                    })
                }
            })
            .await?;
        Ok(ids
            .iter()
            .map(|id| Seq::new(found.get(id).copied().unwrap_or(0).max(0) as u64))
            .collect())
    }

    async fn start_refresh_family(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        first: &RefreshTokenId,
    ) -> Result<(), StoreError> {
        let (user, family, first) = (user.to_string(), family.to_string(), first.to_string());
        let (named, whose) = (family.clone(), user.clone());
        let inserted = self
            .with(move |client| {
                Box::pin(async move {
                    // Inserting from `users` makes a missing user a row count of 0, not an error.
                    let insert = client
                        .prepare_cached(
                            "INSERT INTO refresh_families (id, user_id, current_token, created_at, rotated_at)
                             SELECT $1, id, $3, $4, $4 FROM users WHERE id = $2",
                        )
                        .await?;
                    Ok(client
                        .execute(&insert, &[&family, &user, &first, &now_millis()])
                        .await?
                        > 0)
                })
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!("the refresh family {named} exists")),
                other => other,
            })?;
        if !inserted {
            return Err(StoreError::NotFound(format!("user {whose}")));
        }
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        presented: &RefreshTokenId,
        next: &RefreshTokenId,
        retry_within: Duration,
    ) -> Result<Rotation, StoreError> {
        let (user, family) = (user.to_string(), family.to_string());
        let (presented, next) = (presented.to_string(), next.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                // The row is locked before it is compared, so the compare and the swap are one
                // step for every other transaction, of this process or another.
                let find = tx
                    .prepare_cached(
                        "SELECT current_token, previous_token, rotated_at, revoked_at FROM refresh_families
                         WHERE id = $1 AND user_id = $2 FOR UPDATE",
                    )
                    .await?;
                let found = tx.query_opt(&find, &[&family, &user]).await?;
                let now = now_millis();
                let rotation = match found {
                    None => Rotation::Unknown,
                    Some(row) => {
                        let current: &str = get(&row, 0)?;
                        let previous: Option<&str> = get(&row, 1)?;
                        let rotated_at: i64 = get(&row, 2)?;
                        let revoked_at: Option<i64> = get(&row, 3)?;
                        if revoked_at.is_some() {
                            Rotation::Revoked
                        } else if current == presented {
                            let rotate = tx
                                .prepare_cached(
                                    "UPDATE refresh_families SET current_token = $1, previous_token = $2,
                                     rotated_at = $3 WHERE id = $4",
                                )
                                .await?;
                            tx.execute(&rotate, &[&next, &current, &now, &family]).await?;
                            Rotation::Rotated
                        } else if previous == Some(presented.as_str())
                            && Rotation::retry_open(rotated_at, now, retry_within)
                        {
                            Rotation::Retried(
                                RefreshTokenId::parse(current).map_err(|e| corrupt("a stored refresh token", e))?,
                            )
                        } else {
                            let revoke = tx
                                .prepare_cached("UPDATE refresh_families SET revoked_at = $1 WHERE id = $2")
                                .await?;
                            tx.execute(&revoke, &[&now, &family]).await?;
                            Rotation::Reused
                        }
                    }
                };
                tx.commit().await?;
                Ok(rotation)
            })
        })
        .await
    }

    async fn revoke_refresh_family(&self, user: &UserId, family: &RefreshFamilyId) -> Result<bool, StoreError> {
        let (user, family) = (user.to_string(), family.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let revoke = client
                    .prepare_cached(
                        "UPDATE refresh_families SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND user_id = $3",
                    )
                    .await?;
                Ok(client.execute(&revoke, &[&now_millis(), &family, &user]).await? > 0)
            })
        })
        .await
    }

    /// A round trip that also finds a server that can store nothing: a standby, or a primary
    /// made read-only (as after a failover, or `default_transaction_read_only`).
    async fn ping(&self) -> Result<(), StoreError> {
        let place = self.place.clone();
        self.with(move |client| {
            Box::pin(async move {
                let answer = client.simple_query("SHOW transaction_read_only").await?;
                let read_only = answer.iter().any(|message| {
                    matches!(message, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("on"))
                });
                if read_only {
                    return Err(StoreError::Unavailable {
                        tier: Tier::Postgres,
                        reason: format!(
                            "{place} is read-only (transaction_read_only is on: a standby, or a database made \
                             read-only), so nothing can be stored"
                        ),
                    }
                    .into());
                }
                Ok(())
            })
        })
        .await
    }

    fn tier(&self) -> Tier {
        Tier::Postgres
    }

    fn observe(&self, observer: &Arc<dyn TierObserver>) {
        self.clock.observe(Arc::clone(observer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_deadlines_follow_the_query_deadline_and_keep_the_urls_own_options() {
        let cases = [
            (
                None,
                2_000,
                "-c statement_timeout=3000 -c idle_in_transaction_session_timeout=3000",
            ),
            (
                Some("-c search_path=chat"),
                500,
                "-c search_path=chat -c statement_timeout=1500 -c idle_in_transaction_session_timeout=1500",
            ),
            (
                Some("  "),
                500,
                "-c statement_timeout=1500 -c idle_in_transaction_session_timeout=1500",
            ),
        ];
        for (given, query_ms, expected) in cases {
            assert_eq!(
                server_deadlines(given, Duration::from_millis(query_ms)),
                expected,
                "{given:?}"
            );
        }
    }
}
