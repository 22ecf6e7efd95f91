//! The embedded backend of the workload data (`AnalyticsStore`): a SQLite file of its own beside
//! the chat store's, so that an upload never holds the write lock that event appends need and a
//! long scan never holds the chat store's connection. One writer connection takes uploads; a few
//! reader connections (WAL readers, which neither wait for the writer nor hold it up) answer the
//! summaries and counts, so one user's long analysis leaves readers for everybody else.
//!
//! Beside the rows, the file keeps roll-ups updated in the upload's own transaction: one cell
//! per user, clock hour (UTC), model, feature and batch flag, with the calls, tokens, cost,
//! failures, short calls, first and last call, and sketches of latency and prompt size
//! (`workload_rollups`); the calls whose figures are out of range per user and hour
//! (`workload_left_out`); and per user and prompt hash the calls and their cost
//! (`workload_prompts`, with a partial index on the repeated ones). A summary reads the cells of
//! the whole hours in its range, so its cost follows the hours and groups, not the calls.
//! Uploads are merged into the cells in call order, so any split into batches gives the same
//! cells as one upload.
//!
//! Every table names a user by a small number (`workload_users`). A prompt is keyed by a
//! 64-bit hash of its text and points at its first call's row rather than holding the text, so
//! that its row is about thirty bytes: an upload of new prompts then dirties a fraction of the
//! pages a table keyed by the text would. Prompts whose hashes collide take the next free keys,
//! and a key found is checked against the text of the row it points at.
//!
//! The counts are kept log-structured: a prompt seen for the first time goes to a small table
//! (`workload_new_prompts`), and when that passes a bound an upload folds it into the main one
//! in key order. New prompts arrive at random keys, so an upload dirties most pages of the
//! table it inserts into; with millions of prompts the main table's pages are many more than
//! an upload's new prompts, and each upload would rewrite most of them. A known prompt is
//! counted where it is; a key is looked up in the main table first, then in the small one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use switchboard_protocol::{Timestamp, UserId};
use tokio::sync::Semaphore;

use crate::sqlite::{backend, corrupt};
use crate::workload::{Cell, HOUR_MS, Sketch, clock_hour};
use crate::{
    AnalyticsStore, CallFigures, Slice, StoreError, Summary, SummaryBuilder, Tier, TierClock, TierObserver, TimeRange,
    UPLOAD_KEY_RETENTION, Upload, UploadKey, WorkloadEvent, upload_digest,
};

/// 1: `workload_events` (before, the table lived in the chat store's file, schema 2 to 4);
/// 2: the roll-ups (`workload_rollups`, `workload_left_out`, `workload_prompts`), built from
/// the rows once when a version-1 file is opened; 3: users by a small number
/// (`workload_users`) in every table, and prompts by a 64-bit key of their hash with a pointer
/// to the first call's row instead of the hash's text, so that the prompt table stays a
/// fraction of the size and an upload rewrites fewer of its pages; 4: the prompts an upload
/// sees for the first time go to a small table of their own (`workload_new_prompts`), folded
/// into `workload_prompts` in one sorted pass when it passes [`NEW_PROMPTS_MERGED_AT`], so that
/// an upload's new prompts dirty the pages of the small table, not most of the large one's;
/// 5: the keys of uploads sent with one (`workload_uploads`), stored in the upload's own
/// transaction, so that an upload sent again with its key stores nothing.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workload_users (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS workload_events (
    user INTEGER NOT NULL,
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
CREATE INDEX IF NOT EXISTS workload_by_user_time ON workload_events (user, ts);
CREATE TABLE IF NOT EXISTS workload_rollups (
    user INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    model TEXT NOT NULL,
    has_feature INTEGER NOT NULL,
    feature TEXT NOT NULL,
    batch INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    errors INTEGER NOT NULL,
    failed_cost_usd REAL NOT NULL,
    short_calls INTEGER NOT NULL,
    short_input_tokens INTEGER NOT NULL,
    short_output_tokens INTEGER NOT NULL,
    short_cost_usd REAL NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    latency BLOB NOT NULL,
    prompt_tokens BLOB NOT NULL,
    PRIMARY KEY (user, hour, model, has_feature, feature, batch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workload_left_out (
    user INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (user, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workload_prompts (
    user INTEGER NOT NULL,
    key INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    first_row INTEGER,
    prompt_hash TEXT,
    PRIMARY KEY (user, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workload_repeated_prompts ON workload_prompts (user, calls, cost_usd) WHERE calls > 1;
CREATE TABLE IF NOT EXISTS workload_new_prompts (
    user INTEGER NOT NULL,
    key INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    first_row INTEGER,
    prompt_hash TEXT,
    PRIMARY KEY (user, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workload_repeated_new_prompts ON workload_new_prompts (user, calls, cost_usd) WHERE calls > 1;
CREATE TABLE IF NOT EXISTS workload_uploads (
    user INTEGER NOT NULL,
    key TEXT NOT NULL,
    digest BLOB NOT NULL,
    calls INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    PRIMARY KEY (user, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workload_uploads_by_age ON workload_uploads (stored_ms);
";

/// The tables of the per-prompt counts: the main one, and the prompts first seen since the
/// last merge. A key is in one of them at most.
const PROMPT_TABLES: [&str; 2] = ["workload_prompts", "workload_new_prompts"];

/// Rows of `workload_new_prompts` past which an upload folds them into `workload_prompts`.
/// An upload inserts its new prompts at random keys, so it rewrites nearly every page of the
/// table they go to: of the small table, whose pages are few, rather than of the main one,
/// whose pages the merge rewrites once for all the uploads since the last. The larger the
/// bound, the rarer the merges and the more pages each upload rewrites in the small table.
const NEW_PROMPTS_MERGED_AT: i64 = 1 << 20;

/// Version 1 and 2 tables renamed out of the way while a file moves to version 3: what each is
/// renamed to, and the indexes dropped before (their names are taken again).
const OLD_TABLES: [(&str, &str); 4] = [
    ("workload_events", "old_workload_events"),
    ("workload_rollups", "old_workload_rollups"),
    ("workload_left_out", "old_workload_left_out"),
    ("workload_prompts", "old_workload_prompts"),
];
const OLD_INDEXES: &str = "DROP INDEX IF EXISTS workload_by_user_time; DROP INDEX IF EXISTS workload_repeated_prompts;";

/// Versions 3, 4 and 5 differ by tables (and their indexes) that a newer version adds, empty
/// until the next upload: versions from 3 on are brought up by creating what they lack.
const VERSION_3: i64 = 3;

/// The columns of a roll-up cell after its key, in the order [`read_cell`] takes them.
const CELL_COLUMNS: &str = "calls, input_tokens, output_tokens, cost_usd, errors, failed_cost_usd, short_calls, \
    short_input_tokens, short_output_tokens, short_cost_usd, first_ts, last_ts, latency, prompt_tokens";

/// Rows rolled up at a time when roll-ups are built from stored rows.
const ROLL_UP_CHUNK: i64 = 50_000;

/// The columns of a workload row after its user, in the order every version has them.
const COLUMNS: &str =
    "ts, model, provider, input_tokens, output_tokens, latency_ms, status, feature, prompt_hash, cost_usd, batch";

/// Reader connections: two, as the machine has cores; a third scan waits for one of them.
const READERS: usize = 2;

/// The writer's page cache: an upload touches the rows' index and the prompts' at random
/// places, and SQLite's default 2 MiB makes it read the same pages again and again; with
/// millions of prompts one upload dirties tens of megabytes, which a smaller cache spills to
/// the log before the commit. A bound, not an allocation: pages are cached as they are read.
const WRITER_CACHE_KIB: i64 = 256 * 1024;

/// WAL pages after which a commit copies the log back into the file (SQLite's default is
/// 1 000). An upload rewrites much the same prompt and roll-up pages as the one before, so a
/// larger log copies each page back once for several uploads.
const WAL_CHECKPOINT_PAGES: i64 = 16_384;

/// The workload data in SQLite. Cheap to clone.
#[derive(Clone)]
pub struct SqliteAnalytics {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    /// One permit per reader connection.
    free_readers: Arc<Semaphore>,
    path: PathBuf,
    /// Times every operation (SQLite's tier).
    clock: TierClock,
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
        writer
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(backend)?;
        writer
            .pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(backend)?;
        if version < SCHEMA_VERSION {
            // The new tables, the rows and roll-ups moved over and the roll-ups a version-1 file
            // lacks built, at once: a file is at its old version or wholly at the new one.
            let tx = writer
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let rows = migrate(&tx, version)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            if rows > 0 {
                tracing::info!(
                    rows,
                    from = version,
                    "moved the workload data to schema {SCHEMA_VERSION}"
                );
            }
        }
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
            clock: TierClock::new(Tier::Sqlite),
        })
    }

    /// Runs `work` with the writer connection on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = Arc::clone(&self.writer);
        let work = async move {
            tokio::task::spawn_blocking(move || {
                // A panic while holding the lock leaves SQLite consistent (the transaction
                // rolls back when dropped), so a poisoned lock is safe to take over.
                let mut conn = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                work(&mut conn)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("the workload store task failed: {e}")))?
        };
        self.clock.time("write", work, StoreError::is_unavailable).await
    }

    /// Runs `work` with a free reader connection on the blocking pool (waiting for one).
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (free_readers, readers) = (Arc::clone(&self.free_readers), Arc::clone(&self.readers));
        let work = async move {
            let permit = free_readers
                .acquire_owned()
                .await
                .map_err(|e| StoreError::Backend(format!("the workload readers are closed: {e}")))?;
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
        };
        self.clock.time("read", work, StoreError::is_unavailable).await
    }
}

/// Brings a file at `version` (0: new) to [`SCHEMA_VERSION`] inside `tx`; returns how many
/// rows it moved.
fn migrate(tx: &Connection, version: i64) -> Result<u64, StoreError> {
    if version == 0 || version >= VERSION_3 {
        // Version 3 has every table but the new prompts' and the upload keys', version 4 every
        // one but the upload keys' (both empty until the next upload).
        tx.execute_batch(SCHEMA).map_err(backend)?;
        return Ok(0);
    }
    let exists = |table: &str| -> Result<bool, StoreError> {
        tx.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(backend)
    };
    tx.execute_batch(OLD_INDEXES).map_err(backend)?;
    let mut renamed = Vec::new();
    for (table, old) in OLD_TABLES {
        if exists(table)? {
            tx.execute_batch(&format!("ALTER TABLE {table} RENAME TO {old}"))
                .map_err(backend)?;
            renamed.push(old);
        }
    }
    tx.execute_batch(SCHEMA).map_err(backend)?;
    let has = |old: &str| renamed.contains(&old);
    if has("old_workload_events") {
        add_users(tx, "old_workload_events")?;
    }
    let rows = if has("old_workload_events") {
        tx.execute(
            &format!(
                "INSERT INTO workload_events (rowid, user, {COLUMNS})
                 SELECT e.rowid, u.id, {} FROM old_workload_events e JOIN workload_users u ON u.user_id = e.user_id
                 ORDER BY e.rowid",
                prefixed("e.", COLUMNS)
            ),
            [],
        )
        .map_err(backend)? as u64
    } else {
        0
    };
    if version >= 2 && has("old_workload_rollups") && has("old_workload_left_out") && has("old_workload_prompts") {
        // The roll-ups are there: moved as they are, the prompts keyed anew.
        for old in ["old_workload_rollups", "old_workload_left_out", "old_workload_prompts"] {
            add_users(tx, old)?;
        }
        tx.execute(
            &format!(
                "INSERT INTO workload_rollups (user, hour, model, has_feature, feature, batch, {CELL_COLUMNS})
                 SELECT u.id, r.hour, r.model, r.has_feature, r.feature, r.batch, {}
                 FROM old_workload_rollups r JOIN workload_users u ON u.user_id = r.user_id",
                prefixed("r.", CELL_COLUMNS)
            ),
            [],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO workload_left_out (user, hour, calls)
             SELECT u.id, l.hour, l.calls FROM old_workload_left_out l JOIN workload_users u ON u.user_id = l.user_id",
            [],
        )
        .map_err(backend)?;
        move_prompts(tx)?;
    } else {
        roll_up_stored_rows(tx, 0)?;
    }
    for old in renamed {
        tx.execute_batch(&format!("DROP TABLE {old}")).map_err(backend)?;
    }
    Ok(rows)
}

/// `columns` (comma-separated) each with `prefix`.
fn prefixed(prefix: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|column| format!("{prefix}{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives a number to every user of `table` (by its `user_id` column) who has none yet.
fn add_users(tx: &Connection, table: &str) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO workload_users (user_id) SELECT DISTINCT user_id FROM {table} WHERE true
             ON CONFLICT (user_id) DO NOTHING"
        ),
        [],
    )
    .map_err(backend)?;
    Ok(())
}

/// Moves version 2's prompt counts (by the hash's text) to version 3's keys, each keeping its
/// text in the row, as no call's row is known for it.
fn move_prompts(tx: &Connection) -> Result<(), StoreError> {
    let mut select = tx
        .prepare(
            "SELECT u.id, p.prompt_hash, p.calls, p.cost_usd FROM old_workload_prompts p
             JOIN workload_users u ON u.user_id = p.user_id ORDER BY u.id",
        )
        .map_err(backend)?;
    let mut rows = select.query([]).map_err(backend)?;
    let mut texts: Vec<(i64, String, u64, f64)> = Vec::new();
    let flush = |texts: &mut Vec<(i64, String, u64, f64)>| -> Result<(), StoreError> {
        let mut tally = PromptTally::default();
        for (user, text, calls, cost) in texts.iter() {
            tally.add_stored(*user, text, *calls, *cost);
        }
        tally.store(tx, PROMPTS)?;
        texts.clear();
        Ok(())
    };
    while let Some(row) = rows.next().map_err(backend)? {
        let calls: i64 = row.get(2).map_err(backend)?;
        let calls = u64::try_from(calls).map_err(|e| corrupt("a prompt's calls", e))?;
        texts.push((
            row.get(0).map_err(backend)?,
            text(row, 1)?.to_owned(),
            calls,
            row.get(3).map_err(backend)?,
        ));
        if texts.len() >= ROLL_UP_CHUNK as usize {
            flush(&mut texts)?;
        }
    }
    flush(&mut texts)
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
        let before: i64 = tx
            .query_row("SELECT COALESCE(MAX(rowid), 0) FROM main.workload_events", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        add_users(&tx, "chat.workload_events")?;
        let rows = tx
            .execute(
                &format!(
                    "INSERT INTO main.workload_events (user, {COLUMNS})
                     SELECT u.id, {} FROM chat.workload_events e JOIN main.workload_users u ON u.user_id = e.user_id
                     ORDER BY e.rowid",
                    prefixed("e.", COLUMNS)
                ),
                [],
            )
            .map_err(backend)?;
        roll_up_stored_rows(&tx, before)?;
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
            insert(&tx, &user, &events, PROMPTS)?;
            tx.commit().map_err(backend)?;
            Ok(events.len())
        })
        .await
    }

    async fn insert_workload_upload(
        &self,
        user: &UserId,
        key: &UploadKey,
        events: Vec<WorkloadEvent>,
    ) -> Result<Upload, StoreError> {
        let (user, key) = (user.to_string(), key.as_str().to_owned());
        let now_ms = Timestamp::now().unix_millis();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let upload = insert_keyed(&tx, &user, &key, &events, now_ms, PROMPTS)?;
            tx.commit().map_err(backend)?;
            Ok(upload)
        })
        .await
    }

    async fn workload_summary(&self, user: &UserId, range: TimeRange) -> Result<Summary, StoreError> {
        let user = user.to_string();
        self.read(move |conn| match user_number(conn, &user)? {
            Some(user) => summary(conn, user, range),
            None => SummaryBuilder::default().finish(),
        })
        .await
    }

    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.read(move |conn| {
            let Some(user) = user_number(conn, &user)? else {
                return Ok(0);
            };
            // Every stored call is in a roll-up cell or counted as left out of its hour.
            let count: i64 = conn
                .prepare_cached(
                    "SELECT (SELECT COALESCE(SUM(calls), 0) FROM workload_rollups WHERE user = ?1)
                          + (SELECT COALESCE(SUM(calls), 0) FROM workload_left_out WHERE user = ?1)",
                )
                .and_then(|mut s| s.query_row([user], |r| r.get(0)))
                .map_err(backend)?;
            u64::try_from(count).map_err(|e| corrupt("the count of calls", e))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    fn tier(&self) -> Tier {
        Tier::Sqlite
    }

    fn observe(&self, observer: &Arc<dyn TierObserver>) {
        self.clock.observe(Arc::clone(observer));
    }
}

/// The number the file knows `user` by, if any.
fn user_number(conn: &Connection, user: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT id FROM workload_users WHERE user_id = ?1")
        .and_then(|mut s| s.query_row([user], |r| r.get(0)).optional())
        .map_err(backend)
}

/// Stores `events` of `user` sent with `key` at `now_ms`, inside `tx` (which the caller
/// commits whatever the answer): first forgets the keys stored longer ago than
/// [`UPLOAD_KEY_RETENTION`]; a key still known is answered from its record (the calls it
/// stored, when the digest of `events` is the one it was stored with) and nothing is stored;
/// else the calls are stored with their key's record. The writer's transaction holds the file's
/// write lock from its start, so two uploads with one key, from this process or another on the
/// same file, store once.
fn insert_keyed(
    tx: &Connection,
    user: &str,
    key: &str,
    events: &[WorkloadEvent],
    now_ms: i64,
    prompts: PromptKeys,
) -> Result<Upload, StoreError> {
    let digest = upload_digest(events);
    let retention = i64::try_from(UPLOAD_KEY_RETENTION.as_millis()).unwrap_or(i64::MAX);
    tx.prepare_cached("DELETE FROM workload_uploads WHERE stored_ms < ?1")
        .and_then(|mut s| s.execute([now_ms.saturating_sub(retention)]))
        .map_err(backend)?;
    if let Some(number) = user_number(tx, user)? {
        let stored: Option<(Vec<u8>, i64)> = tx
            .prepare_cached("SELECT digest, calls FROM workload_uploads WHERE user = ?1 AND key = ?2")
            .and_then(|mut s| {
                s.query_row(params![number, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        if let Some((stored, calls)) = stored {
            if stored != digest {
                return Ok(Upload::KeyReused);
            }
            let calls = u64::try_from(calls).map_err(|e| corrupt("an upload's calls", e))?;
            return Ok(Upload::Replayed(calls));
        }
    }
    let number = insert(tx, user, events, prompts)?;
    tx.prepare_cached("INSERT INTO workload_uploads (user, key, digest, calls, stored_ms) VALUES (?1, ?2, ?3, ?4, ?5)")
        .and_then(|mut s| s.execute(params![number, key, digest.as_slice(), events.len() as i64, now_ms]))
        .map_err(backend)?;
    Ok(Upload::Stored(events.len() as u64))
}

/// Stores `events` of `user` and rolls them up, inside `tx`; prompts are keyed by
/// `prompts` (a parameter so that tests can make every prompt collide, or merge often).
/// Answers the number the file knows the user by.
fn insert(tx: &Connection, user: &str, events: &[WorkloadEvent], prompts: PromptKeys) -> Result<i64, StoreError> {
    let user = match user_number(tx, user)? {
        Some(number) => number,
        None => {
            tx.prepare_cached("INSERT INTO workload_users (user_id) VALUES (?1)")
                .and_then(|mut s| s.execute([user]))
                .map_err(backend)?;
            tx.last_insert_rowid()
        }
    };
    let mut rows = Vec::with_capacity(events.len());
    {
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO workload_events (user, {COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))
            .map_err(backend)?;
        for event in events {
            insert
                .execute(params![
                    user,
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
            rows.push(tx.last_insert_rowid());
        }
    }
    roll_up(
        tx,
        events
            .iter()
            .zip(rows)
            .map(|(event, row)| Call::of_event(user, row, event)),
        prompts,
    )?;
    Ok(user)
}

/// A range as millisecond bounds for `ts >= from AND ts < to`.
fn bounds(range: TimeRange) -> (i64, i64) {
    (
        range.from.map_or(i64::MIN, Timestamp::unix_millis),
        range.to.map_or(i64::MAX, Timestamp::unix_millis),
    )
}

/// How a summary reads a range: the clock hours wholly inside it from the roll-ups, the rest
/// (the part of an hour at either end, when a bound falls mid-hour) from the rows.
#[derive(Debug, PartialEq, Eq)]
struct Split {
    /// Clock hours `from..to` read from the roll-ups (empty when `from >= to`).
    hours: (i64, i64),
    /// Millisecond ranges `from..to` read from the rows.
    edges: Vec<(i64, i64)>,
}

fn split(range: TimeRange) -> Split {
    let (from, to) = (
        range.from.map(Timestamp::unix_millis),
        range.to.map(Timestamp::unix_millis),
    );
    let first = from.map_or(i64::MIN, |ms| {
        ms.div_euclid(HOUR_MS) + i64::from(ms.rem_euclid(HOUR_MS) != 0)
    });
    let end = to.map_or(i64::MAX, |ms| ms.div_euclid(HOUR_MS));
    if first >= end {
        // Both bounds are given and no whole hour lies between them.
        let (from, to) = bounds(range);
        let edges = if from < to { vec![(from, to)] } else { Vec::new() };
        return Split { hours: (0, 0), edges };
    }
    let mut edges = Vec::new();
    if let Some(ms) = from.filter(|ms| *ms < first.saturating_mul(HOUR_MS)) {
        edges.push((ms, first.saturating_mul(HOUR_MS)));
    }
    if let Some(ms) = to.filter(|ms| end.saturating_mul(HOUR_MS) < *ms) {
        edges.push((end.saturating_mul(HOUR_MS), ms));
    }
    Split {
        hours: (first, end),
        edges,
    }
}

/// The summary of `user`'s calls in `range`: the roll-ups of its whole hours, the rows of its
/// partial edge hours, and the repeated prompts from the per-prompt counts (a range open on
/// both ends) or from the range's rows (a bounded range: the counts cover all time).
fn summary(conn: &Connection, user: i64, range: TimeRange) -> Result<Summary, StoreError> {
    let mut summary = SummaryBuilder::default();
    let Split { hours, edges } = split(range);
    if hours.0 < hours.1 {
        let mut cells = conn
            .prepare_cached(&format!(
                "SELECT hour, model, has_feature, feature, batch, {CELL_COLUMNS} FROM workload_rollups
                 WHERE user = ?1 AND hour >= ?2 AND hour < ?3"
            ))
            .map_err(backend)?;
        let mut rows = cells.query(params![user, hours.0, hours.1]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let hour: i64 = row.get(0).map_err(backend)?;
            let model = text(row, 1)?;
            let feature = match row.get::<_, bool>(2).map_err(backend)? {
                true => Some(text(row, 3)?),
                false => None,
            };
            let batch: bool = row.get(4).map_err(backend)?;
            let cell = read_cell(row, 5).map_err(|e| corrupt(&format!("the roll-up of hour {hour} for {model}"), e))?;
            summary.add_cell(hour, model, feature, batch, &cell);
        }
        let left_out: i64 = conn
            .prepare_cached(
                "SELECT COALESCE(SUM(calls), 0) FROM workload_left_out WHERE user = ?1 AND hour >= ?2 AND hour < ?3",
            )
            .and_then(|mut s| s.query_row(params![user, hours.0, hours.1], |r| r.get(0)))
            .map_err(backend)?;
        summary.add_left_out(u64::try_from(left_out).map_err(|e| corrupt("calls left out", e))?);
    }
    for (from, to) in edges {
        let mut statement = conn
            .prepare_cached(
                "SELECT ts, model, feature, input_tokens, output_tokens, latency_ms, status = 'error', cost_usd, batch
                 FROM workload_events WHERE user = ?1 AND ts >= ?2 AND ts < ?3",
            )
            .map_err(backend)?;
        let mut rows = statement.query(params![user, from, to]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let call = CallFigures {
                at_ms: row.get(0).map_err(backend)?,
                input_tokens: row.get::<_, i64>(3).map_err(backend)?.max(0) as u64,
                output_tokens: row.get::<_, i64>(4).map_err(backend)?.max(0) as u64,
                latency_ms: row.get(5).map_err(backend)?,
                error: row.get(6).map_err(backend)?,
                cost_usd: row.get(7).map_err(backend)?,
                batch: row.get(8).map_err(backend)?,
            };
            summary.add(text(row, 1)?, optional_text(row, 2)?, None, call);
        }
    }
    if range.from.is_none() && range.to.is_none() {
        // The partial indexes hold only the prompts called more than once; left to itself the
        // planner would walk all of the user's prompts by the primary key. The two tables' rows
        // are summed in one order, by calls and cost, wherever a merge has left them, so that
        // the sum is the same to the last bit.
        let (calls, cost): (i64, f64) = conn
            .prepare_cached(
                "SELECT COALESCE(SUM(calls - 1), 0), COALESCE(SUM(cost_usd * (calls - 1) / calls), 0.0) FROM (
                     SELECT calls, cost_usd FROM workload_prompts INDEXED BY workload_repeated_prompts
                     WHERE user = ?1 AND calls > 1
                     UNION ALL
                     SELECT calls, cost_usd FROM workload_new_prompts INDEXED BY workload_repeated_new_prompts
                     WHERE user = ?1 AND calls > 1
                     ORDER BY calls, cost_usd
                 )",
            )
            .and_then(|mut s| s.query_row([user], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(backend)?;
        if !(cost.is_finite() && cost >= 0.0) {
            return Err(StoreError::Corrupt(format!("the repeated prompts cost {cost}")));
        }
        summary.add_repeated_prompts(
            u64::try_from(calls).map_err(|e| corrupt("repeated prompt calls", e))?,
            cost,
        );
    } else {
        let (from, to) = bounds(range);
        let mut statement = conn
            .prepare_cached(
                "SELECT ts, input_tokens, output_tokens, latency_ms, cost_usd, prompt_hash FROM workload_events
                 WHERE user = ?1 AND ts >= ?2 AND ts < ?3 AND prompt_hash IS NOT NULL",
            )
            .map_err(backend)?;
        let mut rows = statement.query(params![user, from, to]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let call = CallFigures {
                at_ms: row.get(0).map_err(backend)?,
                input_tokens: row.get::<_, i64>(1).map_err(backend)?.max(0) as u64,
                output_tokens: row.get::<_, i64>(2).map_err(backend)?.max(0) as u64,
                latency_ms: row.get(3).map_err(backend)?,
                error: false,
                cost_usd: row.get(4).map_err(backend)?,
                batch: false,
            };
            summary.add_prompt(text(row, 5)?, &call);
        }
    }
    summary.finish()
}

fn text<'r>(row: &'r rusqlite::Row<'_>, index: usize) -> Result<&'r str, StoreError> {
    row.get_ref(index)
        .and_then(|v| v.as_str().map_err(Into::into))
        .map_err(backend)
}

fn optional_text<'r>(row: &'r rusqlite::Row<'_>, index: usize) -> Result<Option<&'r str>, StoreError> {
    row.get_ref(index)
        .and_then(|v| v.as_str_or_null().map_err(Into::into))
        .map_err(backend)
}

/// A roll-up cell from its columns ([`CELL_COLUMNS`]) starting at `first`, checked: counts
/// not negative and consistent, sums finite, sketches well formed and holding the cell's calls.
fn read_cell(row: &rusqlite::Row<'_>, first: usize) -> Result<Cell, String> {
    let count = |i: usize| -> Result<u64, String> {
        let value: i64 = row.get(first + i).map_err(|e| e.to_string())?;
        u64::try_from(value).map_err(|_| format!("a negative count {value}"))
    };
    let money = |i: usize| -> Result<f64, String> {
        let value: f64 = row.get(first + i).map_err(|e| e.to_string())?;
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(format!("a cost of {value}"))
        }
    };
    let sketch = |i: usize, what: &str| -> Result<Sketch, String> {
        let bytes: &[u8] = row
            .get_ref(first + i)
            .and_then(|v| v.as_blob().map_err(Into::into))
            .map_err(|e| format!("the {what} sketch: {e}"))?;
        Sketch::decode(bytes).map_err(|e| format!("the {what} sketch: {e}"))
    };
    let cell = Cell {
        all: Slice {
            calls: count(0)?,
            input_tokens: count(1)?,
            output_tokens: count(2)?,
            cost_usd: money(3)?,
        },
        errors: count(4)?,
        failed_cost_usd: money(5)?,
        short: Slice {
            calls: count(6)?,
            input_tokens: count(7)?,
            output_tokens: count(8)?,
            cost_usd: money(9)?,
        },
        first_ms: row.get(first + 10).map_err(|e| e.to_string())?,
        last_ms: row.get(first + 11).map_err(|e| e.to_string())?,
        latency: sketch(12, "latency")?,
        prompt_tokens: sketch(13, "prompt size")?,
    };
    let calls = cell.all.calls;
    if calls == 0
        || cell.errors > calls
        || cell.short.calls > calls
        || cell.latency.count() > calls
        || cell.prompt_tokens.count() != calls
        || cell.first_ms > cell.last_ms
    {
        return Err(format!(
            "counts that do not add up ({calls} calls, {} failed, {} short, {} latencies, {} prompt sizes, from {} to {})",
            cell.errors,
            cell.short.calls,
            cell.latency.count(),
            cell.prompt_tokens.count(),
            cell.first_ms,
            cell.last_ms
        ));
    }
    Ok(cell)
}

/// One call to roll up, borrowed from an upload or a stored row.
#[derive(Debug, Clone, Copy)]
struct Call<'a> {
    /// The user's number.
    user: i64,
    /// The call's row.
    row: i64,
    model: &'a str,
    feature: Option<&'a str>,
    prompt_hash: Option<&'a str>,
    figures: CallFigures,
}

impl<'a> Call<'a> {
    fn of_event(user: i64, row: i64, event: &'a WorkloadEvent) -> Self {
        Call {
            user,
            row,
            model: &event.model,
            feature: event.feature.as_deref(),
            prompt_hash: event.prompt_hash.as_deref(),
            figures: event.figures(),
        }
    }
}

/// The key of a prompt (by its hash's text) in `workload_prompts`, before collisions are
/// resolved: FNV-1a of the text, then SplitMix64's finaliser to spread its bits. Stable across
/// versions, as stored keys depend on it.
fn prompt_key(text: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    hash as i64
}

/// How prompts are keyed and when the new ones are merged: [`PROMPTS`], but for tests.
#[derive(Debug, Clone, Copy)]
struct PromptKeys {
    key: fn(&str) -> i64,
    merged_at: i64,
}

const PROMPTS: PromptKeys = PromptKeys {
    key: prompt_key,
    merged_at: NEW_PROMPTS_MERGED_AT,
};

/// One prompt of an upload: its user, text, what the upload adds to it, and its first call.
#[derive(Debug)]
struct Prompt<'a> {
    user: i64,
    text: &'a str,
    /// The batch's calls of it (and, moved from version 2, the calls before).
    calls: u64,
    cost_usd: f64,
    /// The row of its first call, when known (not for counts moved from version 2).
    first_row: Option<i64>,
}

/// The prompts of a batch of calls, each looked up once, so that the prompt table takes one
/// write per prompt and upload, in key order.
#[derive(Debug, Default)]
struct PromptTally<'a> {
    prompts: Vec<Prompt<'a>>,
    index: HashMap<(i64, &'a str), usize>,
    /// Each call's prompt and cost, in call order: costs are added to what is stored in that
    /// order, so that any split of an upload gives the same sums.
    calls: Vec<(usize, f64)>,
}

impl<'a> PromptTally<'a> {
    fn entry(&mut self, user: i64, text: &'a str, first_row: Option<i64>) -> usize {
        *self.index.entry((user, text)).or_insert_with(|| {
            self.prompts.push(Prompt {
                user,
                text,
                calls: 0,
                cost_usd: 0.0,
                first_row,
            });
            self.prompts.len() - 1
        })
    }

    /// Counts a call of the prompt `text` made in `row`.
    fn add(&mut self, user: i64, text: &'a str, row: i64, cost_usd: f64) {
        let at = self.entry(user, text, Some(row));
        self.calls.push((at, cost_usd));
    }

    /// Counts a prompt's calls and cost as version 2 kept them (each prompt once).
    fn add_stored(&mut self, user: i64, text: &'a str, calls: u64, cost_usd: f64) {
        let at = self.entry(user, text, None);
        let prompt = &mut self.prompts[at];
        prompt.calls = prompt.calls.saturating_add(calls);
        prompt.cost_usd += cost_usd;
    }

    /// Finds each prompt's key (its hash, or the next free one after it when another prompt
    /// holds it: the keys of one hash are consecutive, in either table, and nothing is ever
    /// removed), in key order, and stores its calls: a new prompt is inserted at the first free
    /// key of the new prompts' table (a look-up in the main table and one insert, the common
    /// case), a known one has its counts read, added to and written back where it is. Then
    /// folds the new prompts into the main table if they have passed [`NEW_PROMPTS_MERGED_AT`].
    fn store(mut self, tx: &Connection, keys: PromptKeys) -> Result<(), StoreError> {
        // What the batch adds to each prompt, from nothing: a new prompt's figures.
        for &(at, cost_usd) in &self.calls {
            let prompt = &mut self.prompts[at];
            prompt.calls += 1;
            prompt.cost_usd += cost_usd;
        }
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO workload_new_prompts (user, key, calls, cost_usd, first_row, prompt_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (user, key) DO NOTHING",
            )
            .map_err(backend)?;
        let mut lookups = PROMPT_TABLES
            .iter()
            .map(|table| {
                tx.prepare_cached(&format!(
                    "SELECT calls, cost_usd, first_row, prompt_hash FROM {table} WHERE user = ?1 AND key = ?2"
                ))
                .map_err(backend)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut row_text = tx
            .prepare_cached("SELECT prompt_hash FROM workload_events WHERE rowid = ?1")
            .map_err(backend)?;
        let int = |value: u64| i64::try_from(value).map_err(|e| corrupt("a prompt's calls", e));
        let mut order: Vec<(i64, i64, usize)> = self
            .prompts
            .iter()
            .enumerate()
            .map(|(at, p)| (p.user, (keys.key)(p.text), at))
            .collect();
        order.sort_unstable();
        // The known prompts: where, and the counts stored before this batch.
        let mut known: Vec<(usize, usize, i64, u64, f64)> = Vec::new();
        type Stored = (i64, f64, Option<i64>, Option<String>);
        let read =
            |r: &rusqlite::Row<'_>| -> rusqlite::Result<Stored> { Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)) };
        for &(user, hash, at) in &order {
            let prompt = &self.prompts[at];
            let mut key = hash;
            for probes in 0.. {
                if probes > 1 << 20 {
                    return Err(StoreError::Corrupt(format!("the prompt keys after {hash} never end")));
                }
                let stored = lookups[0]
                    .query_row(params![user, key], read)
                    .optional()
                    .map_err(backend)?;
                let (table, (calls, cost_usd, first_row, inline)) = match stored {
                    Some(stored) => (0, stored),
                    None => {
                        let inline = prompt.first_row.is_none().then_some(prompt.text);
                        let inserted = insert
                            .execute(params![
                                user,
                                key,
                                int(prompt.calls)?,
                                prompt.cost_usd,
                                prompt.first_row,
                                inline
                            ])
                            .map_err(backend)?;
                        if inserted == 1 {
                            break;
                        }
                        (1, lookups[1].query_row(params![user, key], read).map_err(backend)?)
                    }
                };
                let holder = match (inline, first_row) {
                    (Some(inline), _) => inline,
                    (None, Some(row)) => row_text
                        .query_row([row], |r| r.get::<_, Option<String>>(0))
                        .optional()
                        .map_err(backend)?
                        .flatten()
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "the prompt key {key} points at row {row}, which has no prompt"
                            ))
                        })?,
                    (None, None) => {
                        return Err(StoreError::Corrupt(format!("the prompt key {key} names no prompt")));
                    }
                };
                if holder == prompt.text {
                    let calls = u64::try_from(calls)
                        .ok()
                        .filter(|calls| *calls > 0)
                        .ok_or_else(|| StoreError::Corrupt(format!("the prompt key {key} has {calls} calls")))?;
                    if !(cost_usd.is_finite() && cost_usd >= 0.0) {
                        return Err(StoreError::Corrupt(format!("the prompt key {key} costs {cost_usd}")));
                    }
                    known.push((at, table, key, calls, cost_usd));
                    break;
                }
                key = key.wrapping_add(1);
            }
        }
        if !known.is_empty() {
            // The known prompts' costs added to the stored ones call by call, as one upload
            // after another would.
            let mut totals: HashMap<usize, (u64, f64)> = known
                .iter()
                .map(|&(at, _, _, calls, cost_usd)| (at, (calls.saturating_add(self.prompts[at].calls), cost_usd)))
                .collect();
            for &(at, cost_usd) in &self.calls {
                if let Some(total) = totals.get_mut(&at) {
                    total.1 += cost_usd;
                }
            }
            for &(at, _, _, calls, cost_usd) in &known {
                // Counted as version 2 kept them, not call by call.
                if self.prompts[at].first_row.is_none() {
                    let total = totals.get_mut(&at).expect("every known prompt has a total");
                    *total = (
                        calls.saturating_add(self.prompts[at].calls),
                        cost_usd + self.prompts[at].cost_usd,
                    );
                }
            }
            let mut updates = PROMPT_TABLES
                .iter()
                .map(|table| {
                    tx.prepare_cached(&format!(
                        "UPDATE {table} SET calls = ?3, cost_usd = ?4 WHERE user = ?1 AND key = ?2"
                    ))
                    .map_err(backend)
                })
                .collect::<Result<Vec<_>, _>>()?;
            for &(at, table, key, _, _) in &known {
                let (calls, cost_usd) = totals[&at];
                updates[table]
                    .execute(params![self.prompts[at].user, key, int(calls)?, cost_usd])
                    .map_err(backend)?;
            }
        }
        merge_new_prompts(tx, keys.merged_at)
    }
}

/// Folds the new prompts into the main table when there are at least `bound` of them: one
/// insert in key order, which rewrites each page of the main table once, then the small table
/// emptied (its pages go to the file's free list, and the next uploads' new prompts reuse them).
fn merge_new_prompts(tx: &Connection, bound: i64) -> Result<(), StoreError> {
    let new: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM workload_new_prompts")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    if new < bound {
        return Ok(());
    }
    let moved = tx
        .prepare_cached(
            "INSERT INTO workload_prompts (user, key, calls, cost_usd, first_row, prompt_hash)
             SELECT user, key, calls, cost_usd, first_row, prompt_hash FROM workload_new_prompts
             ORDER BY user, key",
        )
        .and_then(|mut s| s.execute([]))
        .map_err(|e| match e.sqlite_error_code() {
            // A key in both tables, which this module never writes.
            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                corrupt("a new prompt's key is in the main prompt table too", e)
            }
            _ => backend(e),
        })?;
    tx.prepare_cached("DELETE FROM workload_new_prompts")
        .and_then(|mut s| s.execute([]))
        .map_err(backend)?;
    tracing::debug!(moved, "folded the new prompts into the prompt table");
    Ok(())
}

/// Where a call's cell is: user, clock hour, model, feature, batch.
type CellKey<'a> = (i64, i64, &'a str, Option<&'a str>, bool);

/// A cell's key, owned, as read back from the file.
type StoredKey = (i64, i64, String, Option<String>, bool);

/// Adds `calls`, in order, to the roll-ups: the cells of the hours they span are read in one
/// query per user, the calls added to them one by one, and the cells they touched written back
/// in key order; each prompt's count is read and written once. Calls with a figure out of range
/// only count as left out of their hour.
fn roll_up<'a>(
    tx: &Connection,
    calls: impl Iterator<Item = Call<'a>> + Clone,
    prompts_keyed: PromptKeys,
) -> Result<(), StoreError> {
    let mut spans: HashMap<i64, (i64, i64)> = HashMap::new();
    for call in calls.clone().filter(|call| call.figures.in_range()) {
        let hour = clock_hour(call.figures.at_ms);
        let span = spans.entry(call.user).or_insert((hour, hour));
        *span = (span.0.min(hour), span.1.max(hour));
    }
    let mut stored: HashMap<StoredKey, Cell> = HashMap::new();
    let mut read = tx
        .prepare_cached(&format!(
            "SELECT hour, model, has_feature, feature, batch, {CELL_COLUMNS} FROM workload_rollups
             WHERE user = ?1 AND hour >= ?2 AND hour <= ?3"
        ))
        .map_err(backend)?;
    for (user, (first, last)) in &spans {
        let mut rows = read.query(params![user, first, last]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let hour: i64 = row.get(0).map_err(backend)?;
            let model = text(row, 1)?;
            let feature = match row.get::<_, bool>(2).map_err(backend)? {
                true => Some(text(row, 3)?.to_owned()),
                false => None,
            };
            let cell = read_cell(row, 5).map_err(|e| corrupt(&format!("the roll-up of hour {hour} for {model}"), e))?;
            let key = (*user, hour, model.to_owned(), feature, row.get(4).map_err(backend)?);
            stored.insert(key, cell);
        }
    }
    let mut cells: HashMap<CellKey<'a>, Cell> = HashMap::new();
    let mut left_out: HashMap<(i64, i64), u64> = HashMap::new();
    let mut prompts = PromptTally::default();
    for call in calls {
        let hour = clock_hour(call.figures.at_ms);
        if !call.figures.in_range() {
            *left_out.entry((call.user, hour)).or_default() += 1;
            continue;
        }
        let key = (call.user, hour, call.model, call.feature, call.figures.batch);
        cells
            .entry(key)
            .or_insert_with(|| {
                let owned = (
                    call.user,
                    hour,
                    call.model.to_owned(),
                    call.feature.map(str::to_owned),
                    call.figures.batch,
                );
                stored.remove(&owned).unwrap_or_default()
            })
            .add(&call.figures);
        if let Some(hash) = call.prompt_hash {
            prompts.add(call.user, hash, call.row, call.figures.cost_usd);
        }
    }
    prompts.store(tx, prompts_keyed)?;
    let mut write = tx
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO workload_rollups (user, hour, model, has_feature, feature, batch, {CELL_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ))
        .map_err(backend)?;
    let int = |value: u64| i64::try_from(value).map_err(|e| corrupt("a roll-up count", e));
    let mut cells: Vec<(CellKey<'a>, Cell)> = cells.into_iter().collect();
    // In the table's key order, so that the writes walk its pages once.
    cells.sort_unstable_by(|(a, _), (b, _)| {
        (a.0, a.1, a.2, a.3.is_some(), a.3.unwrap_or(""), a.4).cmp(&(
            b.0,
            b.1,
            b.2,
            b.3.is_some(),
            b.3.unwrap_or(""),
            b.4,
        ))
    });
    for ((user, hour, model, feature, batch), cell) in cells {
        write
            .execute(params![
                user,
                hour,
                model,
                feature.is_some(),
                feature.unwrap_or(""),
                batch,
                int(cell.all.calls)?,
                int(cell.all.input_tokens)?,
                int(cell.all.output_tokens)?,
                cell.all.cost_usd,
                int(cell.errors)?,
                cell.failed_cost_usd,
                int(cell.short.calls)?,
                int(cell.short.input_tokens)?,
                int(cell.short.output_tokens)?,
                cell.short.cost_usd,
                cell.first_ms,
                cell.last_ms,
                cell.latency.encode(),
                cell.prompt_tokens.encode(),
            ])
            .map_err(backend)?;
    }
    let mut write = tx
        .prepare_cached(
            "INSERT INTO workload_left_out (user, hour, calls) VALUES (?1, ?2, ?3)
             ON CONFLICT (user, hour) DO UPDATE SET calls = calls + excluded.calls",
        )
        .map_err(backend)?;
    let mut left_out: Vec<((i64, i64), u64)> = left_out.into_iter().collect();
    left_out.sort_unstable();
    for ((user, hour), calls) in left_out {
        write.execute(params![user, hour, int(calls)?]).map_err(backend)?;
    }
    Ok(())
}

/// A stored row, owned, for rolling up rows already in the file.
struct StoredRow {
    row: i64,
    user: i64,
    model: String,
    feature: Option<String>,
    prompt_hash: Option<String>,
    figures: CallFigures,
}

/// Rolls up the stored rows after `rowid` (all of them from 0), in the order they were stored
/// and so as their uploads would have; returns how many there were.
fn roll_up_stored_rows(tx: &Connection, mut rowid: i64) -> Result<u64, StoreError> {
    let mut select = tx
        .prepare(
            "SELECT rowid, user, ts, model, feature, input_tokens, output_tokens, latency_ms, status = 'error',
                    cost_usd, prompt_hash, batch
             FROM main.workload_events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )
        .map_err(backend)?;
    let mut total = 0;
    loop {
        let mut chunk = Vec::new();
        let mut rows = select.query(params![rowid, ROLL_UP_CHUNK]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            rowid = row.get(0).map_err(backend)?;
            chunk.push(StoredRow {
                row: rowid,
                user: row.get(1).map_err(backend)?,
                model: text(row, 3)?.to_owned(),
                feature: optional_text(row, 4)?.map(str::to_owned),
                prompt_hash: optional_text(row, 10)?.map(str::to_owned),
                figures: CallFigures {
                    at_ms: row.get(2).map_err(backend)?,
                    input_tokens: row.get::<_, i64>(5).map_err(backend)?.max(0) as u64,
                    output_tokens: row.get::<_, i64>(6).map_err(backend)?.max(0) as u64,
                    latency_ms: row.get(7).map_err(backend)?,
                    error: row.get(8).map_err(backend)?,
                    cost_usd: row.get(9).map_err(backend)?,
                    batch: row.get(11).map_err(backend)?,
                },
            });
        }
        if chunk.is_empty() {
            return Ok(total);
        }
        total += chunk.len() as u64;
        roll_up(
            tx,
            chunk.iter().map(|row| Call {
                user: row.user,
                row: row.row,
                model: &row.model,
                feature: row.feature.as_deref(),
                prompt_hash: row.prompt_hash.as_deref(),
                figures: row.figures,
            }),
            PROMPTS,
        )?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CallStatus;

    fn at(text: &str) -> Option<Timestamp> {
        Some(Timestamp::parse(text).unwrap())
    }

    fn ms(text: &str) -> i64 {
        Timestamp::parse(text).unwrap().unix_millis()
    }

    fn file() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    fn upload(conn: &mut Connection, user: &str, events: &[WorkloadEvent], key: fn(&str) -> i64, merged_at: i64) {
        let tx = conn.transaction().unwrap();
        insert(&tx, user, events, PromptKeys { key, merged_at }).unwrap();
        tx.commit().unwrap();
    }

    /// The prompt rows of user 1 in the main table and in the new prompts' table.
    fn prompt_rows(conn: &Connection) -> (i64, i64) {
        conn.query_row(
            "SELECT (SELECT COUNT(*) FROM workload_prompts WHERE user = 1),
                    (SELECT COUNT(*) FROM workload_new_prompts WHERE user = 1)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    #[test]
    fn an_upload_key_is_honoured_for_a_day_and_then_forgotten() {
        let mut conn = file();
        let calls = crate::testsuite::sample_calls(3, 4);
        let day = i64::try_from(UPLOAD_KEY_RETENTION.as_millis()).unwrap();
        let t0 = ms("2026-11-01T00:00:00Z");
        let keyed = |conn: &mut Connection, key: &str, calls: &[WorkloadEvent], now_ms: i64| {
            let tx = conn.transaction().unwrap();
            let upload = insert_keyed(&tx, "usr_a", key, calls, now_ms, PROMPTS).unwrap();
            tx.commit().unwrap();
            upload
        };
        let stored = |conn: &Connection| -> (i64, i64) {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM workload_events), (SELECT COUNT(*) FROM workload_uploads)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(keyed(&mut conn, "k1", &calls, t0), Upload::Stored(4));
        assert_eq!(keyed(&mut conn, "k2", &calls[..1], t0 + 10), Upload::Stored(1));
        assert_eq!(
            keyed(&mut conn, "k1", &calls, t0 + day),
            Upload::Replayed(4),
            "a day on"
        );
        assert_eq!(stored(&conn), (5, 2));
        // Past the day, the next keyed upload deletes the keys stored before it, and the key
        // is a new one.
        assert_eq!(keyed(&mut conn, "k1", &calls[..2], t0 + day + 1), Upload::Stored(2));
        assert_eq!(stored(&conn), (7, 2), "k1 again, k2 kept");
        assert_eq!(keyed(&mut conn, "k3", &calls[..1], t0 + day + 11), Upload::Stored(1));
        assert_eq!(stored(&conn), (8, 2), "k2 forgotten");
    }

    #[test]
    fn prompts_whose_keys_collide_are_still_counted_apart() {
        let event = |i: u64, prompt: String| WorkloadEvent {
            timestamp: Timestamp::from_unix_millis(ms("2026-11-01T00:00:00Z") + i as i64 * 61_000).unwrap(),
            model: "gpt-4o".to_owned(),
            input_tokens: 100 + i,
            output_tokens: 10,
            provider: None,
            latency_ms: Some(200.0),
            status: CallStatus::Ok,
            feature: None,
            prompt_hash: Some(prompt),
            cost_usd: (i % 7) as f64 * 0.001,
            batch: false,
        };
        // Some prompts seen once, some many times, across uploads.
        let events: Vec<WorkloadEvent> = (0..600u64)
            .map(|i| {
                event(
                    i,
                    if i % 3 == 0 {
                        format!("faq-{}", i % 11)
                    } else {
                        format!("p-{i}")
                    },
                )
            })
            .collect();
        let whole = |conn: &Connection| {
            summary(conn, user_number(conn, "usr_a").unwrap().unwrap(), TimeRange::default()).unwrap()
        };
        let keys: [fn(&str) -> i64; 3] = [
            prompt_key,
            |_| 42,
            |text| {
                if text.starts_with("faq") {
                    i64::MAX
                } else {
                    i64::MAX - 1
                }
            },
        ];
        let mut expected = None;
        // Merged after every upload, now and then (a prompt first seen before a merge is
        // counted again after it, and keys that collide span both tables), or never.
        for merged_at in [1, 150, 400, i64::MAX] {
            for key in keys {
                let mut conn = file();
                for chunk in events.chunks(97) {
                    upload(&mut conn, "usr_a", chunk, key, merged_at);
                    // Another user's calls of the same prompts are kept apart.
                    upload(&mut conn, "usr_b", &chunk[..3], key, merged_at);
                }
                let got = whole(&conn);
                assert_eq!(got.opportunities.repeated_prompt_calls, 200 - 11);
                assert_eq!(
                    &got,
                    expected.get_or_insert_with(|| got.clone()),
                    "merged at {merged_at}"
                );
                let (main, new) = prompt_rows(&conn);
                assert_eq!(main + new, 411, "merged at {merged_at}");
                match merged_at {
                    1 => assert_eq!(new, 0),
                    i64::MAX => assert_eq!(main, 0),
                    _ => assert!(main > 0 && new > 0, "merged at {merged_at}: {main} and {new}"),
                }
            }
        }
    }

    #[test]
    fn a_prompt_key_that_names_no_prompt_is_corrupt() {
        let mut conn = file();
        let call = WorkloadEvent {
            timestamp: Timestamp::parse("2026-11-01T00:00:00Z").unwrap(),
            model: "gpt-4o".to_owned(),
            input_tokens: 1,
            output_tokens: 1,
            provider: None,
            latency_ms: None,
            status: CallStatus::Ok,
            feature: None,
            prompt_hash: Some("p".to_owned()),
            cost_usd: 0.0,
            batch: false,
        };
        upload(&mut conn, "usr_a", std::slice::from_ref(&call), prompt_key, i64::MAX);
        let cases = [
            ("SET first_row = 999", "points at row 999"),
            ("SET first_row = NULL", "names no prompt"),
            ("SET calls = 0", "has 0 calls"),
            ("SET cost_usd = -1.0", "costs -1"),
        ];
        // In the new prompts' table, then merged into the main one.
        for (table, merged) in [("workload_new_prompts", false), ("workload_prompts", true)] {
            for (change, expected) in cases {
                let tx = conn.transaction().unwrap();
                if merged {
                    merge_new_prompts(&tx, 1).unwrap();
                }
                tx.execute(&format!("UPDATE {table} {change}"), []).unwrap();
                match insert(&tx, "usr_a", std::slice::from_ref(&call), PROMPTS) {
                    Err(StoreError::Corrupt(message)) => assert!(message.contains(expected), "{change}: {message}"),
                    other => panic!("{table} {change}: {other:?}"),
                }
                // Rolled back.
            }
        }
        let tx = conn.transaction().unwrap();
        tx.execute_batch("INSERT INTO workload_prompts SELECT * FROM workload_new_prompts")
            .unwrap();
        match merge_new_prompts(&tx, 1) {
            Err(StoreError::Corrupt(message)) => assert!(message.contains("main prompt table too"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_prompt_counted_among_the_new_ones_is_counted_on_where_the_merge_put_it() {
        let call = |prompt: &str, cost_usd: f64| WorkloadEvent {
            timestamp: Timestamp::parse("2026-11-01T00:00:00Z").unwrap(),
            model: "gpt-4o".to_owned(),
            input_tokens: 1,
            output_tokens: 1,
            provider: None,
            latency_ms: None,
            status: CallStatus::Ok,
            feature: None,
            prompt_hash: Some(prompt.to_owned()),
            cost_usd,
            batch: false,
        };
        let counts = |conn: &Connection, table: &str| -> Vec<(i64, f64)> {
            conn.prepare(&format!("SELECT calls, cost_usd FROM {table} ORDER BY key"))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let mut conn = file();
        // Two new prompts stay below the bound of three; a third reaches it and all move.
        upload(&mut conn, "usr_a", &[call("a", 1.0), call("b", 2.0)], prompt_key, 3);
        assert_eq!(prompt_rows(&conn), (0, 2));
        upload(&mut conn, "usr_a", &[call("a", 1.0), call("c", 4.0)], prompt_key, 3);
        assert_eq!(prompt_rows(&conn), (3, 0));
        // Known in the main table, counted there; a new one goes to the small table again.
        upload(&mut conn, "usr_a", &[call("a", 1.0), call("d", 8.0)], prompt_key, 3);
        assert_eq!(prompt_rows(&conn), (3, 1));
        let mut main = counts(&conn, "workload_prompts");
        main.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(main, [(1, 2.0), (3, 3.0), (1, 4.0)]);
        assert_eq!(counts(&conn, "workload_new_prompts"), [(1, 8.0)]);
        let summary = summary(&conn, 1, TimeRange::default()).unwrap();
        assert_eq!(summary.opportunities.repeated_prompt_calls, 2);
        assert_eq!(summary.opportunities.repeated_prompt_cost_usd, 2.0);
    }

    #[test]
    fn a_range_reads_its_whole_hours_from_the_roll_ups_and_its_edges_from_the_rows() {
        let hour = |text: &str| clock_hour(ms(text));
        let range = |from: Option<Timestamp>, to: Option<Timestamp>| TimeRange { from, to };
        let cases: [(TimeRange, Split); 6] = [
            (
                TimeRange::default(),
                Split {
                    hours: (i64::MIN, i64::MAX),
                    edges: vec![],
                },
            ),
            (
                range(at("2026-11-01T10:00:00Z"), at("2026-11-02T00:00:00Z")),
                Split {
                    hours: (hour("2026-11-01T10:00:00Z"), hour("2026-11-02T00:00:00Z")),
                    edges: vec![],
                },
            ),
            (
                range(at("2026-11-01T10:15:00Z"), at("2026-11-01T12:30:00Z")),
                Split {
                    hours: (hour("2026-11-01T11:00:00Z"), hour("2026-11-01T12:00:00Z")),
                    edges: vec![
                        (ms("2026-11-01T10:15:00Z"), ms("2026-11-01T11:00:00Z")),
                        (ms("2026-11-01T12:00:00Z"), ms("2026-11-01T12:30:00Z")),
                    ],
                },
            ),
            (
                range(at("2026-11-01T10:15:00Z"), at("2026-11-01T10:45:00Z")),
                Split {
                    hours: (0, 0),
                    edges: vec![(ms("2026-11-01T10:15:00Z"), ms("2026-11-01T10:45:00Z"))],
                },
            ),
            (
                range(None, at("2026-11-01T10:45:00Z")),
                Split {
                    hours: (i64::MIN, hour("2026-11-01T10:00:00Z")),
                    edges: vec![(ms("2026-11-01T10:00:00Z"), ms("2026-11-01T10:45:00Z"))],
                },
            ),
            (
                range(at("2026-11-01T10:45:00Z"), at("2026-11-01T10:15:00Z")),
                Split {
                    hours: (0, 0),
                    edges: vec![],
                },
            ),
        ];
        for (range, expected) in cases {
            assert_eq!(split(range), expected, "{range:?}");
        }
    }
}
