//! Switchboard's storage on PostgreSQL: [`PgStore`] implements `switchboard_store::Store` with
//! the embedded SQLite backend's semantics, over a pool of connections (`deadpool-postgres` on
//! `tokio-postgres`). Every operation, waiting for a connection included, runs under a deadline
//! ([`PgOptions::query_timeout`]); a connection whose operation was cut short is never handed out
//! again. Each user's event log is numbered by a row of `user_logs` that the appending transaction
//! locks and advances, so servers sharing one database never give one seq twice.

mod address;
mod connection;
mod schema;
mod store;
mod tls;

use std::str::FromStr;
use std::time::Duration;

use switchboard_store::{StoreError, Tier};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use address::redacted;
pub use schema::SCHEMA_VERSION;
pub use store::PgStore;

/// How a [`PgStore`] uses its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// The most connections the store holds open at once.
    pub max_connections: usize,
    /// The deadline of every operation, from asking for a connection to its last row.
    pub query_timeout: Duration,
    /// The deadline for opening one connection (TCP and the server's handshake).
    pub connect_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            query_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl PgOptions {
    /// Refuses options no store could work with.
    pub fn check(&self) -> Result<(), StoreError> {
        let problem = if self.max_connections == 0 {
            "max_connections must be at least 1"
        } else if self.query_timeout.is_zero() {
            "query_timeout must be longer than 0"
        } else if self.connect_timeout.is_zero() {
            "connect_timeout must be longer than 0"
        } else {
            return Ok(());
        };
        Err(StoreError::Backend(format!("invalid PostgreSQL options: {problem}")))
    }
}

/// Creates a database with a random name on the server of `admin_url` (a role that may create
/// databases) and returns the URL of the new database: a fresh, empty store for one test.
pub async fn scratch_database(admin_url: &str) -> Result<String, StoreError> {
    let (config, tls) = parse(admin_url)?;
    let place = address::of(&config);
    let name = format!("switchboard_{}", uuid::Uuid::new_v4().simple());
    let limit = Duration::from_secs(10);
    let (client, connection) = tokio::time::timeout(limit, config.connect(tls))
        .await
        .map_err(|_| {
            unavailable(format!(
                "connecting to {place} took longer than {} ms",
                limit.as_millis()
            ))
        })?
        .map_err(|e| connection::connect_error(&place, &e))?;
    let task = tokio::spawn(connection);
    let created = tokio::time::timeout(limit, client.batch_execute(&format!("CREATE DATABASE {name}")))
        .await
        .map_err(|_| StoreError::TimedOut {
            tier: Tier::Postgres,
            after: limit,
        })?;
    drop(client);
    let _ = task.await;
    created.map_err(|e| {
        StoreError::Backend(format!(
            "cannot create a database on {place}: {}",
            connection::describe(&e)
        ))
    })?;
    Ok(address::with_database(admin_url, &name))
}

/// The key of the advisory lock a serving server holds on its database.
const SERVER_LOCK: i64 = 0x5357_4254_5352_5652; // "SWBTSRVR"

/// How a server serves from its database: alone (it closes every run left `running` when it
/// starts, so no other server may serve from it), or as one node of a cluster (nodes keep
/// leases and close only the runs of nodes that are gone; any number of them, but no server
/// alone beside them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// One server alone.
    Alone,
    /// One node of several.
    Node,
}

/// The database's serving server or nodes, held for as long as this lives (a connection of its
/// own holding a session advisory lock, exclusive for a server alone, shared by the nodes of a
/// cluster; a server that dies, even by `kill -9`, lets go with its connection).
#[derive(Debug)]
pub struct ServerLock {
    _client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for ServerLock {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Takes the database's [`ServerLock`] to serve as `serving` says, or says who holds it.
pub async fn hold_server_lock(url: &str, timeout: Duration, serving: Serving) -> Result<ServerLock, StoreError> {
    let (config, tls) = parse(url)?;
    let place = address::of(&config);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(tls))
        .await
        .map_err(|_| StoreError::TimedOut {
            tier: Tier::Postgres,
            after: timeout,
        })?
        .map_err(|e| connection::connect_error(&place, &e))?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let lock = ServerLock {
        _client: client,
        connection,
    };
    let taken = tokio::time::timeout(
        timeout,
        lock._client.query_one(
            match serving {
                Serving::Alone => "SELECT pg_try_advisory_lock($1)",
                Serving::Node => "SELECT pg_try_advisory_lock_shared($1)",
            },
            &[&SERVER_LOCK],
        ),
    )
    .await
    .map_err(|_| StoreError::TimedOut {
        tier: Tier::Postgres,
        after: timeout,
    })?
    .map_err(|e| StoreError::Backend(format!("PostgreSQL at {place}: {}", connection::describe(&e))))?;
    match (taken.get::<_, bool>(0), serving) {
        (true, _) => Ok(lock),
        (false, Serving::Alone) => Err(StoreError::Conflict(format!(
            "another Switchboard server is serving from the database at {place}; a server without \
             --redis-url serves alone (it closes the runs it finds running when it starts); several \
             share a database as the nodes of a cluster, each with --redis-url"
        ))),
        (false, Serving::Node) => Err(StoreError::Conflict(format!(
            "a Switchboard server without --redis-url is serving alone from the database at {place}; \
             stop it, or make it a node of the cluster with --redis-url too"
        ))),
    }
}

/// Reads a connection URL (or `key=value` string) without echoing any of it in the error.
/// The configuration of `url` and the TLS connector its connections use ([`tls`]).
fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let invalid = |problem: String| {
        StoreError::Backend(format!(
            "the PostgreSQL URL {} is not valid: {problem}",
            address::redacted(url)
        ))
    };
    let secured = tls::secure(url).map_err(invalid)?;
    let mut config = tokio_postgres::Config::from_str(&secured.url).map_err(|e| invalid(connection::describe(&e)))?;
    if let Some(mode) = secured.ssl_mode {
        config.ssl_mode(mode);
    }
    Ok((config, secured.tls))
}

fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable {
        tier: Tier::Postgres,
        reason,
    }
}
