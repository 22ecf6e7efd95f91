//! The embedded backend of the workload data (`AnalyticsStore`): a SQLite file of its own beside
//! the chat store's, so that an upload never holds the write lock that event appends need and a
//! long scan never holds the chat store's connection. One writer connection takes uploads; a few
//! reader connections (WAL readers, which neither wait for the writer nor hold it up) answer the
//! summaries and counts, so one user's long analysis leaves readers for everybody else.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use switchboard_protocol::{Timestamp, UserId};
use tokio::sync::Semaphore;

use crate::sqlite::{backend, corrupt};
use crate::{AnalyticsStore, CallFigures, StoreError, Summary, SummaryBuilder, TimeRange, WorkloadEvent};

/// 1: `workload_events` (before, the table lived in the chat store's file, schema 2 to 4).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workload_events (
    user_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    latency_ms REAL,
    status TEXT NOT NULL,
    feature TEXT,
    prompt_hash TEXT,
    cost_usd REAL NOT NULL,
    batch INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS workload_by_user_time ON workload_events (user_id, ts);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The columns of a workload row, in the order both files have them.
const COLUMNS: &str = "user_id, ts, model, provider, input_tokens, output_tokens, latency_ms, status, feature, prompt_hash, cost_usd, batch";

/// Reader connections: two, as the machine has cores; a third scan waits for one of them.
const READERS: usize = 2;

/// The workload data in SQLite. Cheap to clone.
#[derive(Clone)]
pub struct SqliteAnalytics {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    /// One permit per reader connection.
    free_readers: Arc<Semaphore>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteAnalytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAnalytics").field("path", &self.path).finish()
    }
}

/// Where the workload data of the chat store at `chat` lives: `name-workload.ext` beside it.
pub(crate) fn path_beside(chat: &Path) -> PathBuf {
    let stem = chat
        .file_stem()
        .map_or_else(|| "switchboard".into(), |s| s.to_string_lossy());
    let name = match chat.extension() {
        Some(extension) => format!("{stem}-workload.{}", extension.to_string_lossy()),
        None => format!("{stem}-workload"),
    };
    chat.with_file_name(name)
}

impl SqliteAnalytics {
    /// Opens (creating if needed) the workload file at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, None))
            .await
            .map_err(|e| StoreError::Backend(format!("opening the workload store failed: {e}")))?
    }

    /// Opens the file; when `chat` (the chat store's connection and file) still holds workload
    /// rows from before the split, moves them here first, once, whatever stopped an earlier move.
    pub(crate) fn open_blocking(path: &Path, chat: Option<(&Connection, &Path)>) -> Result<Self, StoreError> {
        let mut writer = Connection::open(path).map_err(backend)?;
        writer.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        writer.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        writer.pragma_update(None, "busy_timeout", 5000).map_err(backend)?;
        let version: i64 = writer
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "the workload database has schema version {version}, newer than this server's {SCHEMA_VERSION}"
            )));
        }
        writer.execute_batch(SCHEMA).map_err(backend)?;
        writer
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(backend)?;
        if let Some((chat, chat_path)) = chat {
            take_over(&mut writer, chat, chat_path)?;
        }
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
                reader.pragma_update(None, "busy_timeout", 5000).map_err(backend)?;
                Ok(Mutex::new(reader))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(readers),
            free_readers: Arc::new(Semaphore::new(READERS)),
            path: path.to_owned(),
        })
    }

    /// Runs `work` with the writer connection on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent (the transaction rolls
            // back when dropped), so a poisoned lock is safe to take over.
            let mut conn = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the workload store task failed: {e}")))?
    }

    /// Runs `work` with a free reader connection on the blocking pool (waiting for one).
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = Arc::clone(&self.free_readers)
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Backend(format!("the workload readers are closed: {e}")))?;
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // The permit guarantees that one of them is free.
            let conn = readers
                .iter()
                .find_map(|reader| match reader.try_lock() {
                    Ok(conn) => Some(conn),
                    Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                    Err(TryLockError::WouldBlock) => None,
                })
                .expect("a reader permit means a free reader connection");
            work(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the workload store task failed: {e}")))?
    }
}

/// Moves the workload rows the chat store's file still holds (schema 2 to 4) into the workload
/// file, then drops them there. The copy and a note of it commit together here, so a move that
/// was cut short after the copy only drops the old table on the next start, and copies nothing
/// twice.
fn take_over(writer: &mut Connection, chat: &Connection, chat_path: &Path) -> Result<(), StoreError> {
    let left_there: i64 = chat
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'workload_events'",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if left_there == 0 {
        return Ok(());
    }
    let moved: i64 = writer
        .query_row(
            "SELECT COUNT(*) FROM meta WHERE key = 'moved_from_chat_store'",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if moved == 0 {
        let chat_path = chat_path
            .to_str()
            .ok_or_else(|| StoreError::Backend(format!("the path {} is not UTF-8", chat_path.display())))?;
        writer
            .execute("ATTACH DATABASE ?1 AS chat", [chat_path])
            .map_err(backend)?;
        let tx = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let rows = tx
            .execute(
                &format!("INSERT INTO main.workload_events ({COLUMNS}) SELECT {COLUMNS} FROM chat.workload_events"),
                [],
            )
            .map_err(backend)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('moved_from_chat_store', ?1)",
            [rows.to_string()],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        writer.execute("DETACH DATABASE chat", []).map_err(backend)?;
        tracing::info!(rows, "moved the workload data into a file of its own");
    }
    chat.execute_batch("DROP INDEX IF EXISTS workload_by_user_time; DROP TABLE workload_events;")
        .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl AnalyticsStore for SqliteAnalytics {
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        let user = user.to_string();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO workload_events (user_id, ts, model, provider, input_tokens, output_tokens,
                         latency_ms, status, feature, prompt_hash, cost_usd, batch)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )
                    .map_err(backend)?;
                for event in &events {
                    insert
                        .execute(params![
                            &user,
                            event.timestamp.unix_millis(),
                            event.model,
                            event.provider,
                            i64::try_from(event.input_tokens).map_err(|e| corrupt("input_tokens", e))?,
                            i64::try_from(event.output_tokens).map_err(|e| corrupt("output_tokens", e))?,
                            event.latency_ms,
                            event.status.as_str(),
                            event.feature,
                            event.prompt_hash,
                            event.cost_usd,
                            event.batch,
                        ])
                        .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)?;
            Ok(events.len())
        })
        .await
    }

    async fn workload_summary(&self, user: &UserId, range: TimeRange) -> Result<Summary, StoreError> {
        let (user, (from, to)) = (user.to_string(), bounds(range));
        self.read(move |conn| {
            // One pass over the range's rows (the (user_id, ts) index finds them); SQLite has no
            // percentile function, and one scan aggregated here beats a window query per group.
            let mut statement = conn
                .prepare_cached(
                    "SELECT ts, model, feature, input_tokens, output_tokens, latency_ms, status = 'error', cost_usd,
                            prompt_hash, batch
                     FROM workload_events WHERE user_id = ?1 AND ts >= ?2 AND ts < ?3",
                )
                .map_err(backend)?;
            let mut rows = statement.query(params![user, from, to]).map_err(backend)?;
            let mut summary = SummaryBuilder::default();
            while let Some(row) = rows.next().map_err(backend)? {
                let model: &str = row
                    .get_ref(1)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(backend)?;
                let feature: Option<&str> = row
                    .get_ref(2)
                    .and_then(|v| v.as_str_or_null().map_err(Into::into))
                    .map_err(backend)?;
                let call = CallFigures {
                    at_ms: row.get(0).map_err(backend)?,
                    input_tokens: row.get::<_, i64>(3).map_err(backend)?.max(0) as u64,
                    output_tokens: row.get::<_, i64>(4).map_err(backend)?.max(0) as u64,
                    latency_ms: row.get(5).map_err(backend)?,
                    error: row.get(6).map_err(backend)?,
                    cost_usd: row.get(7).map_err(backend)?,
                    batch: row.get(9).map_err(backend)?,
                };
                let prompt_hash: Option<&str> = row
                    .get_ref(8)
                    .and_then(|v| v.as_str_or_null().map_err(Into::into))
                    .map_err(backend)?;
                summary.add(model, feature, prompt_hash, call);
            }
            summary.finish()
        })
        .await
    }

    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.read(move |conn| {
            let count: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM workload_events WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([user], |r| r.get(0)))
                .map_err(backend)?;
            Ok(count.max(0) as u64)
        })
        .await
    }
}

/// A range as millisecond bounds for `ts >= from AND ts < to`.
fn bounds(range: TimeRange) -> (i64, i64) {
    (
        range.from.map_or(i64::MIN, Timestamp::unix_millis),
        range.to.map_or(i64::MAX, Timestamp::unix_millis),
    )
}
