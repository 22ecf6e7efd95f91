//! The embedded default: SQLite through rusqlite, every call on tokio's blocking pool, so the
//! async runtime (and tokio's paused clock in tests) is never blocked by disk I/O.
//!
//! WAL mode with `synchronous = NORMAL`: a committed transaction survives the process being
//! killed; only a power loss can take the last ones.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use switchboard_protocol::{
    Event, LogEntry, MessageId, Role, RunEnd, RunId, RunStatus, RunTimings, Seq, ThreadId, Timestamp, UserId,
};

use crate::sqlite_analytics::{SqliteAnalytics, path_beside as analytics_path};
use crate::{
    Accepted, AnalyticsStore, EventRecord, EventRow, Grouped, Message, NewMessage, RefreshFamilyId, RefreshTokenId,
    Rotation, RunRecord, RunState, Store, StoreError, StoredEvent, Summary, Thread, Tier, TierClock, TierObserver,
    TimeRange, User, WorkloadEvent, thread_title,
};

/// 1: the chat tables; 2: `workload_events`; 3: `runs.model_calls`; 4: `refresh_families`;
/// 5: `workload_events` moved to a file of its own (`SqliteAnalytics`); 6: `events` in the
/// order stored (a rowid table with an index on `(user_id, seq)`, see `EVENTS_IN_ORDER`);
/// 7: `runs.missing`; 8: `refresh_families.previous_token` (the token the newest replaced, which
/// a retried refresh may present again for a while).
const SCHEMA_VERSION: i64 = 8;

/// Schema 6 keeps the events in the order they are stored and finds a user's by an index: a
/// batch of many users' events then appends to the table's last pages and touches only the
/// index's small entries, where a table clustered by `(user_id, seq)` (schemas 1 to 5) had a
/// page to rewrite for nearly every event of the batch. No index by run any more: only crash
/// recovery reads a run's events, from its user's. (The event log's benchmark, batches of
/// 1 024: 36 900 events/s clustered, 93 700 in order, 115 800 without the run index.) Schemas
/// 1 to 5 are moved over at start-up, in one transaction.
const EVENTS_IN_ORDER: &str = "
BEGIN IMMEDIATE;
ALTER TABLE events RENAME TO events_clustered;
DROP INDEX IF EXISTS events_by_run;
DROP INDEX IF EXISTS events_by_user;
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE UNIQUE INDEX events_by_user ON events (user_id, seq);
INSERT INTO events (user_id, seq, run_id, json)
    SELECT user_id, seq, run_id, json FROM events_clustered ORDER BY user_id, seq;
DROP TABLE events_clustered;
COMMIT;
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_by_user ON threads (user_id, updated_at);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    run_id TEXT,
    client_message_id TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_thread ON messages (thread_id, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id ON messages (user_id, client_message_id);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    duration_ms INTEGER,
    timings TEXT,
    model_calls TEXT,
    missing TEXT
);
CREATE INDEX IF NOT EXISTS runs_running ON runs (status) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
DROP INDEX IF EXISTS events_by_run;
CREATE TABLE IF NOT EXISTS refresh_families (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    current_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    rotated_at INTEGER NOT NULL,
    revoked_at INTEGER,
    previous_token TEXT
);
CREATE INDEX IF NOT EXISTS refresh_families_by_user ON refresh_families (user_id);
";

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Messages waiting to be stored. Group commit: the messages that arrive while a group is
    /// written form the next, one transaction for all, so that many users sending at once wait
    /// for a few commits, not for one commit each.
    accepts: Grouped<NewMessage, Result<Accepted, StoreError>>,
    analytics: SqliteAnalytics,
    /// Times every operation (SQLite's tier).
    clock: TierClock,
    _checkpointer: Arc<Checkpointer>,
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies the WAL back into the database file on a thread and connection of its own, so that
/// no commit (of the event log above all) pays for a checkpoint. Passive: it never waits for
/// the writer or the readers. Dropping it (with the last clone of the store) ends the thread
/// and closes its connection before the drop returns.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "busy_timeout", 5000).map_err(backend)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        // Said once when it starts failing, and once when it works again.
                        Err(error) if !failing => {
                            failing = true;
                            tracing::warn!(%error, "checkpointing the database failed; trying again every 500 ms");
                        }
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!("checkpointing the database works again");
                        }
                        _ => {}
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

pub(crate) fn backend(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(error.to_string()),
        _ => StoreError::Backend(error.to_string()),
    }
}

pub(crate) fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn now_millis() -> i64 {
    Timestamp::now().unix_millis()
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

/// A row read as plain values first, so that parsing errors become `Corrupt`, not panics.
fn text(row: &Row<'_>, index: usize) -> rusqlite::Result<String> {
    row.get(index)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and, beside it, the workload data's own
    /// (`name-workload.ext`, see [`SqliteStore::analytics`]), and brings their schemas up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let (conn, analytics, checkpointer) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let conn = Connection::open(&path).map_err(backend)?;
            conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
            conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
            conn.pragma_update(None, "busy_timeout", 5000).map_err(backend)?;
            // Room for the pages a batch of events touches, so that a transaction does not
            // spill to the file half-way; checkpoints run beside the commits (`Checkpointer`).
            conn.pragma_update(None, "cache_size", -32_768).map_err(backend)?;
            // The commit checkpoints only when the `Checkpointer` fell far behind (a backstop).
            conn.pragma_update(None, "wal_autocheckpoint", 16_384)
                .map_err(backend)?;
            // After a checkpoint, the WAL file is cut back to this size.
            conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
                .map_err(backend)?;
            // A user's refresh-token families are deleted with the user.
            conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(backend)?;
            if version > SCHEMA_VERSION {
                return Err(StoreError::Corrupt(format!(
                    "the database has schema version {version}, newer than this server's {SCHEMA_VERSION}"
                )));
            }
            if (1..6).contains(&version) {
                conn.execute_batch(EVENTS_IN_ORDER).map_err(backend)?;
            }
            conn.execute_batch(SCHEMA).map_err(backend)?;
            // Tables made by an older schema gain the columns added since; tables added since
            // (`refresh_families` in 4) come with `SCHEMA`.
            // Checked, not assumed from the version: an open cut short after this step (before
            // `user_version` is written) must not fail the next one.
            for (table, column) in [
                ("runs", "model_calls"),
                ("runs", "missing"),
                ("refresh_families", "previous_token"),
            ] {
                let present: bool = conn
                    .query_row(
                        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                        [table, column],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(backend)?
                    > 0;
                if !present {
                    conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))
                        .map_err(backend)?;
                }
            }
            // Workload rows of schema 2 to 4 move to their own file.
            let analytics = SqliteAnalytics::open_blocking(&analytics_path(&path), Some((&conn, &path)))?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(backend)?;
            let checkpointer = Checkpointer::start(&path)?;
            Ok((conn, analytics, checkpointer))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("opening the store failed: {e}")))??;
        Ok(Self {
            _checkpointer: Arc::new(checkpointer),
            conn: Arc::new(Mutex::new(conn)),
            accepts: Grouped::new(ACCEPT_GROUP),
            analytics,
            clock: TierClock::new(Tier::Sqlite),
        })
    }

    /// The workload data: a file of its own, with its own connections, so that analytics never
    /// hold the connection or the write lock that chat needs.
    pub fn analytics(&self) -> &SqliteAnalytics {
        &self.analytics
    }

    /// Runs `work` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        let work = async move {
            tokio::task::spawn_blocking(move || {
                // A panic while holding the lock leaves SQLite itself consistent (the
                // transaction rolls back when dropped), so a poisoned lock is safe to take over.
                let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                work(&mut conn)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("the store task failed: {e}")))?
        };
        self.clock.time("query", work, StoreError::is_unavailable).await
    }
}

fn user_from(row: &Row<'_>) -> rusqlite::Result<(String, String, String, i64)> {
    Ok((text(row, 0)?, text(row, 1)?, text(row, 2)?, row.get(3)?))
}

fn to_user((id, email, password_hash, created_at): (String, String, String, i64)) -> Result<User, StoreError> {
    Ok(User {
        id: parse_id("user id", &id, UserId::parse)?,
        email,
        password_hash,
        created_at: timestamp(created_at)?,
    })
}

type ThreadRow = (String, String, String, i64, i64);

fn thread_from(row: &Row<'_>) -> rusqlite::Result<ThreadRow> {
    Ok((text(row, 0)?, text(row, 1)?, text(row, 2)?, row.get(3)?, row.get(4)?))
}

fn to_thread((id, user_id, title, created_at, updated_at): ThreadRow) -> Result<Thread, StoreError> {
    Ok(Thread {
        id: parse_id("thread id", &id, ThreadId::parse)?,
        user_id: parse_id("user id", &user_id, UserId::parse)?,
        title,
        created_at: timestamp(created_at)?,
        updated_at: timestamp(updated_at)?,
    })
}

const THREAD_COLUMNS: &str = "id, user_id, title, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "id, thread_id, role, text, run_id, client_message_id, created_at";
const RUN_COLUMNS: &str =
    "id, user_id, thread_id, message_id, status, started_at, finished_at, duration_ms, timings, model_calls, missing";

type MessageRow = (String, String, String, String, Option<String>, Option<String>, i64);

fn message_from(row: &Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok((
        text(row, 0)?,
        text(row, 1)?,
        text(row, 2)?,
        text(row, 3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn to_message(
    (id, thread_id, role, text, run_id, client_message_id, created_at): MessageRow,
) -> Result<Message, StoreError> {
    Ok(Message {
        id: parse_id("message id", &id, MessageId::parse)?,
        thread_id: parse_id("thread id", &thread_id, ThreadId::parse)?,
        role: match role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(corrupt("message role", other)),
        },
        text,
        run_id: run_id.map(|r| parse_id("run id", &r, RunId::parse)).transpose()?,
        client_message_id,
        created_at: timestamp(created_at)?,
    })
}

type RunRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn run_from(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok((
        text(row, 0)?,
        text(row, 1)?,
        text(row, 2)?,
        text(row, 3)?,
        text(row, 4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
    ))
}

fn to_run(
    (id, user_id, thread_id, message_id, status, started_at, finished_at, duration_ms, timings, model_calls, missing): RunRow,
) -> Result<RunRecord, StoreError> {
    let state = match status.as_str() {
        "running" => RunState::Running,
        other => RunState::Finished(RunStatus::parse(other).ok_or_else(|| corrupt("run status", other))?),
    };
    Ok(RunRecord {
        id: parse_id("run id", &id, RunId::parse)?,
        user_id: parse_id("user id", &user_id, UserId::parse)?,
        thread_id: parse_id("thread id", &thread_id, ThreadId::parse)?,
        message_id: parse_id("message id", &message_id, MessageId::parse)?,
        state,
        started_at: timestamp(started_at)?,
        finished_at: finished_at.map(timestamp).transpose()?,
        duration_ms: duration_ms.map(|d| d.max(0) as u64),
        timings: timings
            .map(|t| serde_json::from_str::<RunTimings>(&t).map_err(|e| corrupt("run timings", e)))
            .transpose()?,
        model_calls: model_calls
            .map(|c| serde_json::from_str(&c).map_err(|e| corrupt("run model calls", e)))
            .transpose()?
            .unwrap_or_default(),
        missing: missing
            .map(|m| serde_json::from_str(&m).map_err(|e| corrupt("run's missing agents", e)))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// One row (or none) of a query, read as plain values by `row` and checked by `convert`.
fn one<R, T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: fn(&Row<'_>) -> rusqlite::Result<R>,
    convert: fn(R) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.query_row(params, row).optional())
        .map_err(backend)?
        .map(convert)
        .transpose()
}

/// Every row of a query, read by `row` and checked by `convert`.
fn all<R, T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: fn(&Row<'_>) -> rusqlite::Result<R>,
    convert: fn(R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(backend)?;
    let rows = statement.query_map(params, row).map_err(backend)?;
    rows.map(|r| r.map_err(backend).and_then(convert)).collect()
}

fn event_from(row: &Row<'_>) -> rusqlite::Result<(i64, String)> {
    Ok((row.get(0)?, row.get(1)?))
}

fn to_event_record((seq, json): (i64, String)) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        seq: Seq::new(u64::try_from(seq).map_err(|e| corrupt("seq", e))?),
        json,
    })
}

const USER_COLUMNS: &str = "id, email, password_hash, created_at";

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let user = User {
            id: UserId::generate(),
            email: email.to_lowercase(),
            password_hash: password_hash.to_owned(),
            created_at: Timestamp::now(),
        };
        let stored = user.clone();
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO users (id, email, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    stored.id.as_str(),
                    stored.email,
                    stored.password_hash,
                    stored.created_at.unix_millis()
                ],
            )
            .map_err(|e| match backend(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("the email {} is taken", stored.email)),
                other => other,
            })?;
            Ok(())
        })
        .await?;
        Ok(user)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.to_lowercase();
        self.with(move |conn| {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = ?1");
            one(conn, &sql, [email], user_from, to_user)
        })
        .await
    }

    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
            one(conn, &sql, [id], user_from, to_user)
        })
        .await
    }

    async fn create_thread(&self, user: &UserId, title: &str) -> Result<Thread, StoreError> {
        let now = Timestamp::now();
        let thread = Thread {
            id: ThreadId::generate(),
            user_id: user.clone(),
            title: thread_title(title),
            created_at: now,
            updated_at: now,
        };
        let stored = thread.clone();
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO threads (id, user_id, title, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![
                    stored.id.as_str(),
                    stored.user_id.as_str(),
                    stored.title,
                    now.unix_millis()
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await?;
        Ok(thread)
    }

    async fn threads(&self, user: &UserId) -> Result<Vec<Thread>, StoreError> {
        let user = user.to_string();
        self.with(move |conn| {
            let sql = format!("SELECT {THREAD_COLUMNS} FROM threads WHERE user_id = ?1 ORDER BY updated_at DESC, id");
            all(conn, &sql, [user], thread_from, to_thread)
        })
        .await
    }

    async fn thread(&self, user: &UserId, id: &ThreadId) -> Result<Option<Thread>, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |conn| {
            let sql = format!("SELECT {THREAD_COLUMNS} FROM threads WHERE id = ?1 AND user_id = ?2");
            one(conn, &sql, [id, user], thread_from, to_thread)
        })
        .await
    }

    async fn delete_thread(&self, user: &UserId, id: &ThreadId) -> Result<bool, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let deleted = tx
                .execute("DELETE FROM threads WHERE id = ?1 AND user_id = ?2", params![id, user])
                .map_err(backend)?;
            if deleted > 0 {
                tx.execute("DELETE FROM messages WHERE thread_id = ?1", params![id])
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn messages(&self, user: &UserId, thread: &ThreadId) -> Result<Vec<Message>, StoreError> {
        let (user, thread) = (user.to_string(), thread.to_string());
        self.with(move |conn| {
            let exists: Option<i64> = conn
                .prepare_cached("SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2")
                .and_then(|mut s| s.query_row([&thread, &user], |r| r.get(0)).optional())
                .map_err(backend)?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("thread {thread}")));
            }
            let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = ?1 ORDER BY created_at, rowid");
            all(conn, &sql, [thread], message_from, to_message)
        })
        .await
    }

    async fn accept_message(&self, message: NewMessage) -> Result<Accepted, StoreError> {
        let (conn, clock) = (Arc::clone(&self.conn), self.clock.clone());
        self.accepts
            .submit(message, move |messages| {
                let (conn, clock) = (Arc::clone(&conn), clock.clone());
                async move {
                    // Timed as one operation (seen while under way), failed when the store was.
                    let accepting = async move {
                        let answers = tokio::task::spawn_blocking(move || {
                            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                            let count = messages.len();
                            accept_batch(&mut conn, messages).unwrap_or_else(|error| vec![Err(error); count])
                        })
                        .await
                        // It panicked: every message of the group is told so.
                        .unwrap_or_default();
                        let failed = answers
                            .iter()
                            .any(|answer| answer.as_ref().is_err_and(StoreError::is_unavailable));
                        if failed { Err(answers) } else { Ok(answers) }
                    };
                    clock
                        .time("accept", accepting, |_| true)
                        .await
                        .unwrap_or_else(|answers| answers)
                }
            })
            .await
            .map_err(|_| StoreError::Backend("the store's writer stopped before storing the message".into()))?
    }

    async fn discard_run(&self, user: &UserId, run: &RunId, created_thread: bool) -> Result<(), StoreError> {
        let (user, run) = (user.to_string(), run.to_string());
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute(
                "DELETE FROM messages WHERE run_id = ?1 AND user_id = ?2 AND role = 'user'",
                params![run, user],
            )
            .map_err(backend)?;
            if created_thread {
                // Only when nothing else came to it since (a message discarded late).
                tx.execute(
                    "DELETE FROM threads WHERE user_id = ?2
                     AND id = (SELECT thread_id FROM runs WHERE id = ?1 AND user_id = ?2)
                     AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.thread_id = threads.id)",
                    params![run, user],
                )
                .map_err(backend)?;
            }
            tx.execute("DELETE FROM runs WHERE id = ?1 AND user_id = ?2", params![run, user])
                .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn run(&self, user: &UserId, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |conn| {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND user_id = ?2");
            one(conn, &sql, [id, user], run_from, to_run)
        })
        .await
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.with(move |conn| {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY started_at");
            all(conn, &sql, [], run_from, to_run)
        })
        .await
    }

    async fn append_events(&self, entries: &[LogEntry]) -> Result<Vec<StoredEvent>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Written here, on the caller's thread, so the connection is held only for the rows.
        let rows = EventRow::of(entries)?;
        self.with(move |conn| append_all(conn, rows)).await
    }

    async fn events_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let user = user.to_string();
        let after = i64::try_from(after.get()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let sql = "SELECT seq, json FROM events WHERE user_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";
            all(conn, sql, params![user, after, limit], event_from, to_event_record)
        })
        .await
    }

    async fn run_events(&self, user: &UserId, run: &RunId) -> Result<Vec<Event>, StoreError> {
        let (user, run) = (user.to_string(), run.to_string());
        let records = self
            .with(move |conn| {
                // Through the user's index: only crash recovery asks, for the few runs a crash
                // left open, so the event log keeps no index by run for it.
                let sql = "SELECT seq, json FROM events WHERE user_id = ?2 AND run_id = ?1 ORDER BY seq";
                all(conn, sql, params![run, user], event_from, to_event_record)
            })
            .await?;
        records.iter().map(EventRecord::event).collect()
    }

    async fn last_seq(&self, user: &UserId) -> Result<Seq, StoreError> {
        let user = user.to_string();
        self.with(move |conn| {
            let last: i64 = conn
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([user], |r| r.get(0)))
                .map_err(backend)?;
            Ok(Seq::new(last.max(0) as u64))
        })
        .await
    }

    async fn start_refresh_family(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        first: &RefreshTokenId,
    ) -> Result<(), StoreError> {
        let (user, family, first) = (user.to_string(), family.to_string(), first.to_string());
        self.with(move |conn| {
            // Inserting from `users` makes a missing user a row count of 0, not a constraint error.
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO refresh_families (id, user_id, current_token, created_at, rotated_at)
                     SELECT ?1, id, ?3, ?4, ?4 FROM users WHERE id = ?2",
                )
                .and_then(|mut s| s.execute(params![family, user, first, now_millis()]))
                .map_err(|e| match backend(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("the refresh family {family} exists")),
                    other => other,
                })?;
            if inserted == 0 {
                return Err(StoreError::NotFound(format!("user {user}")));
            }
            Ok(())
        })
        .await
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
        self.with(move |conn| {
            // Immediate: the write lock is taken before the read, so the compare and the swap
            // are one step even for another process on the same file.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let found: Option<(String, Option<String>, i64, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT current_token, previous_token, rotated_at, revoked_at FROM refresh_families
                     WHERE id = ?1 AND user_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row([&family, &user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()
                })
                .map_err(backend)?;
            let now = now_millis();
            let rotation = match found {
                None => Rotation::Unknown,
                Some((_, _, _, Some(_))) => Rotation::Revoked,
                Some((current, _, _, None)) if current == presented => {
                    tx.prepare_cached(
                        "UPDATE refresh_families SET current_token = ?1, previous_token = ?2, rotated_at = ?3
                         WHERE id = ?4",
                    )
                    .and_then(|mut s| s.execute(params![next, current, now, family]))
                    .map_err(backend)?;
                    Rotation::Rotated
                }
                Some((current, Some(previous), rotated_at, None))
                    if previous == presented && Rotation::retry_open(rotated_at, now, retry_within) =>
                {
                    Rotation::Retried(
                        RefreshTokenId::parse(&current).map_err(|e| corrupt("a stored refresh token", e))?,
                    )
                }
                Some((_, _, _, None)) => {
                    tx.prepare_cached("UPDATE refresh_families SET revoked_at = ?1 WHERE id = ?2")
                        .and_then(|mut s| s.execute(params![now, family]))
                        .map_err(backend)?;
                    Rotation::Reused
                }
            };
            tx.commit().map_err(backend)?;
            Ok(rotation)
        })
        .await
    }

    async fn message_by_client_id(
        &self,
        user: &UserId,
        client_message_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        let (user, client_id) = (user.to_string(), client_message_id.to_owned());
        self.with(move |conn| message_by_client_id(conn, &user, &client_id))
            .await
    }

    async fn revoke_refresh_family(&self, user: &UserId, family: &RefreshFamilyId) -> Result<bool, StoreError> {
        let (user, family) = (user.to_string(), family.to_string());
        self.with(move |conn| {
            let found = conn
                .prepare_cached(
                    "UPDATE refresh_families SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2 AND user_id = ?3",
                )
                .and_then(|mut s| s.execute(params![now_millis(), family, user]))
                .map_err(backend)?;
            Ok(found > 0)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    fn tier(&self) -> Tier {
        Tier::Sqlite
    }

    fn observe(&self, observer: &Arc<dyn TierObserver>) {
        self.clock.observe(Arc::clone(observer));
        AnalyticsStore::observe(&self.analytics, observer);
    }
}

/// The most messages one transaction stores.
const ACCEPT_GROUP: usize = 256;

/// Stores a group of messages in one transaction, a savepoint each, so
/// that one refused message leaves the others in.
fn accept_batch(
    conn: &mut Connection,
    messages: Vec<NewMessage>,
) -> Result<Vec<Result<Accepted, StoreError>>, StoreError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let mut results = Vec::with_capacity(messages.len());
    for message in messages {
        let savepoint = tx.savepoint().map_err(backend)?;
        match accept_one(&savepoint, message) {
            Ok(accepted) => {
                savepoint.commit().map_err(backend)?;
                results.push(Ok(accepted));
            }
            Err(error) => {
                // Dropping the savepoint rolls this message back.
                drop(savepoint);
                // Some failures (a full disk, an I/O error) make SQLite roll the whole
                // transaction back: then nothing of the batch is stored, and every message of
                // it is told so, rather than the rest being committed one by one on their own.
                if tx.is_autocommit() {
                    return Err(error);
                }
                results.push(Err(error));
            }
        }
    }
    tx.commit().map_err(backend)?;
    Ok(results)
}

/// The user message of `user` sent with `client_id`, if any.
fn message_by_client_id(conn: &Connection, user: &str, client_id: &str) -> Result<Option<Message>, StoreError> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = ?1 AND client_message_id = ?2 AND role = 'user'"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.query_row([user, client_id], message_from).optional())
        .map_err(backend)?
        .map(to_message)
        .transpose()
}

/// Stores one user message and its run (and its thread, when it starts one).
fn accept_one(conn: &Connection, message: NewMessage) -> Result<Accepted, StoreError> {
    let user = message.user_id.to_string();
    if let Some(client_id) = &message.client_message_id
        && let Some(earlier) = message_by_client_id(conn, &user, client_id)?
    {
        let run_id = earlier
            .run_id
            .clone()
            .ok_or_else(|| StoreError::Corrupt("a user message without its run".into()))?;
        return Ok(Accepted {
            thread_id: earlier.thread_id.clone(),
            message: earlier,
            run_id,
            duplicate: true,
            created_thread: false,
        });
    }
    let now = now_millis();
    let created_thread = message.thread_id.is_none();
    let thread_id = match &message.thread_id {
        Some(thread) => {
            let exists: Option<i64> = conn
                .prepare_cached("SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2")
                .and_then(|mut s| s.query_row([thread.as_str(), &user], |r| r.get(0)).optional())
                .map_err(backend)?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("thread {thread}")));
            }
            conn.execute(
                "UPDATE threads SET updated_at = ?1 WHERE id = ?2",
                params![now, thread.as_str()],
            )
            .map_err(backend)?;
            thread.clone()
        }
        None => {
            let thread = message.new_thread_id.clone();
            conn.execute(
                "INSERT INTO threads (id, user_id, title, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![thread.as_str(), &user, thread_title(&message.text), now],
            )
            .map_err(backend)?;
            thread
        }
    };
    conn.execute(
        "INSERT INTO messages (id, thread_id, user_id, role, text, run_id, client_message_id, created_at)
             VALUES (?1, ?2, ?3, 'user', ?4, ?5, ?6, ?7)",
        params![
            message.message_id.as_str(),
            thread_id.as_str(),
            &user,
            message.text,
            message.run_id.as_str(),
            message.client_message_id,
            now
        ],
    )
    .map_err(backend)?;
    conn.execute(
            "INSERT INTO runs (id, user_id, thread_id, message_id, status, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
            params![message.run_id.as_str(), &user, thread_id.as_str(), message.message_id.as_str(), now],
        )
        .map_err(backend)?;
    Ok(Accepted {
        message: Message {
            id: message.message_id,
            thread_id: thread_id.clone(),
            role: Role::User,
            text: message.text,
            run_id: Some(message.run_id.clone()),
            client_message_id: message.client_message_id,
            created_at: timestamp(now)?,
        },
        run_id: message.run_id,
        thread_id,
        duplicate: false,
        created_thread,
    })
}

/// One transaction for all the entries. `BEGIN IMMEDIATE` takes the write lock before the first
/// read, so each user's last seq is read and advanced under it, even against another process
/// on the same file.
fn append_all(conn: &mut Connection, rows: Vec<EventRow>) -> Result<Vec<StoredEvent>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let mut last: HashMap<UserId, i64> = HashMap::new();
    let mut stored = Vec::with_capacity(rows.len());
    for EventRow {
        user_id,
        run_id,
        json,
        end,
        at,
    } in rows
    {
        let user = user_id.as_str();
        let previous = match last.get(&user_id) {
            Some(seq) => *seq,
            None => tx
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([user], |r| r.get(0)))
                .map_err(backend)?,
        };
        let seq = previous + 1;
        let record = EventRecord {
            seq: Seq::new(seq as u64),
            json: json.numbered(Seq::new(seq as u64)),
        };
        tx.prepare_cached("INSERT INTO events (user_id, seq, run_id, json) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![user, seq, run_id, record.json]))
            .map_err(backend)?;
        if let Some(end) = &end {
            finish_run(&tx, user, &run_id, end, at)?;
        }
        last.insert(user_id.clone(), seq);
        stored.push(StoredEvent { user_id, record });
    }
    tx.commit().map_err(backend)?;
    Ok(stored)
}

/// Stores the run's end, and a completed run's answer as an assistant message.
fn finish_run(conn: &Connection, user: &str, run: &str, end: &RunEnd, at: i64) -> Result<(), StoreError> {
    let timings = end
        .timings
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("timings", e))?;
    let model_calls = Some(&end.model_calls)
        .filter(|calls| !calls.is_empty())
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("model calls", e))?;
    let missing = Some(&end.missing)
        .filter(|agents| !agents.is_empty())
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("missing agents", e))?;
    conn.prepare_cached(
        "UPDATE runs SET status = ?1, finished_at = ?2, duration_ms = ?3, timings = ?4, model_calls = ?5,
         missing = ?6 WHERE id = ?7 AND user_id = ?8",
    )
    .and_then(|mut s| {
        s.execute(params![
            end.status.as_str(),
            at,
            i64::try_from(end.duration_ms).unwrap_or(i64::MAX),
            timings,
            model_calls,
            missing,
            run,
            user
        ])
    })
    .map_err(backend)?;
    if let (RunStatus::Completed, Some(answer)) = (end.status, &end.answer) {
        conn.prepare_cached(
            "INSERT INTO messages (id, thread_id, user_id, role, text, run_id, created_at)
             SELECT ?1, thread_id, user_id, 'assistant', ?2, id, ?3 FROM runs
             WHERE id = ?4 AND user_id = ?5 AND thread_id IN (SELECT id FROM threads)",
        )
        .and_then(|mut s| s.execute(params![MessageId::generate().as_str(), answer, at, run, user]))
        .map_err(backend)?;
        conn.prepare_cached("UPDATE threads SET updated_at = ?1 WHERE id = (SELECT thread_id FROM runs WHERE id = ?2)")
            .and_then(|mut s| s.execute(params![at, run]))
            .map_err(backend)?;
    }
    Ok(())
}

/// The workload data lives in a file of its own (`SqliteAnalytics`), beside this one.
#[async_trait]
impl AnalyticsStore for SqliteStore {
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        self.analytics.insert_workload_events(user, events).await
    }

    async fn insert_workload_upload(
        &self,
        user: &UserId,
        key: &crate::UploadKey,
        events: Vec<WorkloadEvent>,
    ) -> Result<crate::Upload, StoreError> {
        self.analytics.insert_workload_upload(user, key, events).await
    }

    async fn workload_summary(&self, user: &UserId, range: TimeRange) -> Result<Summary, StoreError> {
        self.analytics.workload_summary(user, range).await
    }

    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError> {
        self.analytics.workload_event_count(user).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.analytics.ping().await
    }

    fn tier(&self) -> Tier {
        Tier::Sqlite
    }

    fn observe(&self, observer: &Arc<dyn TierObserver>) {
        AnalyticsStore::observe(&self.analytics, observer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(user: &UserId) -> NewMessage {
        NewMessage {
            user_id: user.clone(),
            thread_id: None,
            text: "a long question ".repeat(200),
            client_message_id: None,
            message_id: MessageId::generate(),
            run_id: RunId::generate(),
            new_thread_id: ThreadId::generate(),
        }
    }

    #[test]
    fn messages_cut_short_by_a_full_disk_are_stored_exactly_as_their_callers_are_told() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let user = UserId::generate();
        accept_batch(&mut conn, vec![message(&user)]).unwrap();
        // Room for a few more pages only: the batch runs out of it half-way.
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let _: i64 = conn
            .query_row(&format!("PRAGMA max_page_count = {}", pages + 3), [], |r| r.get(0))
            .unwrap();
        let outcome = accept_batch(&mut conn, (0..40).map(|_| message(&user)).collect());
        let stored: i64 = conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        let runs: i64 = conn.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0)).unwrap();
        match outcome {
            Err(_) => assert_eq!((stored, runs), (1, 1), "a batch refused as a whole stores nothing"),
            Ok(results) => {
                assert!(results.iter().any(Result::is_err), "the disk filled up");
                let told_ok = results.iter().filter(|r| r.is_ok()).count() as i64;
                assert_eq!((stored, runs), (1 + told_ok, 1 + told_ok));
            }
        }
    }
}
