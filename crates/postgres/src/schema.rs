//! The schema, as numbered migrations. At start-up the ones a database lacks are applied in one
//! transaction under an advisory lock, so that servers starting at once on one database apply
//! each exactly once; each applied version is a row of `schema_version`. A database whose
//! schema is newer than this build knows is refused.

use switchboard_store::StoreError;

use crate::connection::{Failure, Work};

/// Migration `n` (from 1) brings a database from version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Held (for the transaction) by whoever migrates the database: "switchboard" in ASCII.
const MIGRATION_LOCK: i64 = 0x7377_6974_6368_626f;

/// Identifiers are compared byte for byte (`COLLATE "C"`), as in SQLite and in Rust, so that
/// orders by id and the lock order of `user_logs` rows agree everywhere. Times are Unix
/// milliseconds; JSON is stored as text, exactly as written (the server sends an event's JSON
/// as it was stored).
///
/// `user_logs` holds each user's last seq: an append locks its users' rows (in the order of
/// their ids) and advances them, so seqs are given in the appending transaction itself and
/// rolled back with it. `events` is a heap table with its key as index, the events in the
/// order stored, as SQLite's schema 6 keeps them. `messages.position` orders messages stored
/// in the same millisecond (SQLite's rowid).
const V1: &str = r#"
CREATE TABLE users (
    id TEXT COLLATE "C" PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE threads (
    id TEXT COLLATE "C" PRIMARY KEY,
    user_id TEXT COLLATE "C" NOT NULL,
    title TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX threads_by_user ON threads (user_id, updated_at);
CREATE TABLE messages (
    position BIGINT GENERATED ALWAYS AS IDENTITY,
    id TEXT COLLATE "C" PRIMARY KEY,
    thread_id TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    run_id TEXT COLLATE "C",
    client_message_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX messages_by_thread ON messages (thread_id, created_at, position);
CREATE INDEX messages_by_run ON messages (run_id);
CREATE UNIQUE INDEX messages_by_client_id ON messages (user_id, client_message_id);
CREATE TABLE runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    user_id TEXT COLLATE "C" NOT NULL,
    thread_id TEXT COLLATE "C" NOT NULL,
    message_id TEXT COLLATE "C" NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    duration_ms BIGINT,
    timings TEXT,
    model_calls TEXT,
    missing TEXT
);
CREATE INDEX runs_running ON runs (started_at) WHERE status = 'running';
CREATE TABLE user_logs (
    user_id TEXT COLLATE "C" PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE events (
    user_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    run_id TEXT COLLATE "C" NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE TABLE refresh_families (
    id TEXT COLLATE "C" PRIMARY KEY,
    user_id TEXT COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    current_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    rotated_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX refresh_families_by_user ON refresh_families (user_id);
"#;

/// The batches of the event log stored lately, by their key (`EntryKey::of_batch`), each with
/// its users' last seqs after it (in the order of the user ids): a batch whose answer was lost
/// after it committed (a deadline, a cut connection) and that is tried again is recognised, and
/// answered with the seqs it got, instead of being stored twice. Kept for a day.
const V2: &str = r#"
CREATE TABLE log_batches (
    key BYTEA PRIMARY KEY,
    lasts BIGINT[] NOT NULL,
    stored_at BIGINT NOT NULL
);
CREATE INDEX log_batches_by_time ON log_batches (stored_at);
"#;

/// Several nodes on one database: `cluster` holds the database's own random name, which the
/// nodes sharing it name their Redis keys and channels by (so clusters sharing one Redis never
/// mix); `runs.node` the node that runs a run; `node_leases` each live node's lease, renewed
/// while it serves, by whose expiry the others know it is gone.
const V3: &str = r#"
CREATE TABLE cluster (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    id TEXT NOT NULL
);
INSERT INTO cluster (id) VALUES (replace(gen_random_uuid()::text, '-', ''));
ALTER TABLE runs ADD COLUMN node TEXT COLLATE "C";
CREATE INDEX runs_running_by_node ON runs (node) WHERE status = 'running';
CREATE TABLE node_leases (
    node TEXT COLLATE "C" PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
"#;

/// Fencing: `runs.owner` marks the process that runs a run (a node's name and a mark of its
/// own, new at each start), so that a node's events are stored only while its runs are still
/// its own. A run left running by schema 3 has no owner, and is closed by the next node that
/// takes it over.
const V4: &str = r#"
ALTER TABLE runs ADD COLUMN owner TEXT COLLATE "C";
"#;

/// The token the newest of a refresh family replaced: presented again shortly after its
/// rotation (a client retrying a refresh whose answer it lost), it is told the newest again
/// rather than revoking the family.
const V5: &str = r#"
ALTER TABLE refresh_families ADD COLUMN previous_token TEXT COLLATE "C";
"#;

/// Brings the database up to [`SCHEMA_VERSION`]; returns the version it had.
pub(crate) fn migrate(client: &mut deadpool_postgres::ClientWrapper, place: String) -> Work<'_, i32> {
    Box::pin(async move {
        let tx = client.transaction().await?;
        // Another server may hold the lock for as long as its migration takes: this
        // transaction waits under the start-up deadline, not the session's statement timeout.
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version INTEGER PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )
        .await?;
        let found: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await?
            .get(0);
        if found > SCHEMA_VERSION {
            return Err(Failure::Store(StoreError::Corrupt(format!(
                "the PostgreSQL database {place} has schema version {found}, newer than this server's \
                 {SCHEMA_VERSION}: run a newer server"
            ))));
        }
        let now = switchboard_protocol::Timestamp::now().unix_millis();
        for (version, sql) in (1..).zip(MIGRATIONS).skip(found as usize) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                &[&version, &now],
            )
            .await?;
            tracing::info!(database = %place, version, "applied a schema migration");
        }
        tx.commit().await?;
        Ok(found)
    })
}
