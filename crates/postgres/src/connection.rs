//! One operation on one pooled connection under one deadline, and what its errors mean.
//!
//! A connection is lent for an operation and goes back to the pool only when the operation has
//! run to its end (with rows or an error). An operation cut short (its deadline passed, or its
//! caller dropped it) may have left the connection waiting on a lock or on a stalled socket: that
//! connection is taken out of the pool and closed, and its query is cancelled on the server, so
//! that the next operation never queues behind it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Object, Pool, PoolError, TimeoutType};
use switchboard_store::{StoreError, Tier};
use tokio::time::Instant;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::unavailable;

/// The longest a cancel request for an operation cut short may take.
const CANCEL_DEADLINE: Duration = Duration::from_secs(2);

/// What an operation hands back: rows, or why not.
pub(crate) type Work<'c, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 'c>>;

/// An operation failed: in PostgreSQL, or by a rule of the store.
#[derive(Debug)]
pub(crate) enum Failure {
    Postgres(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Postgres(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Store(error)
    }
}

impl Failure {
    pub(crate) fn into_store_error(self, place: &str) -> StoreError {
        match self {
            Failure::Store(error) => error,
            Failure::Postgres(error) => query_error(place, &error),
        }
    }
}

/// Runs `work` on a connection of `pool`, all of it (the wait for a connection included)
/// within `limit`. `connect_timeout` is the pool's deadline for opening a connection.
pub(crate) async fn within<T>(
    pool: &Pool,
    tls: &MakeRustlsConnect,
    place: &str,
    connect_timeout: Duration,
    limit: Duration,
    work: impl for<'c> FnOnce(&'c mut ClientWrapper) -> Work<'c, T> + Send,
) -> Result<T, StoreError> {
    let deadline = Instant::now() + limit;
    let object = match tokio::time::timeout_at(deadline, pool.get()).await {
        Ok(Ok(object)) => object,
        Ok(Err(error)) => return Err(pool_error(place, connect_timeout, error)),
        Err(_) => {
            let status = pool.status();
            if status.size < status.max_size {
                // A new connection did not open in time: the server is slow (or stalled), not
                // gone, as for a query past its deadline.
                return Err(StoreError::TimedOut {
                    tier: Tier::Postgres,
                    after: limit,
                });
            }
            let why = format!("all {} are in use", status.max_size);
            return Err(unavailable(format!(
                "no connection to {place} within {} ms: {why}",
                limit.as_millis()
            )));
        }
    };
    let mut lease = Lease(Some(object), tls.clone());
    let outcome = {
        let client: &mut ClientWrapper = lease.0.as_mut().expect("a lease holds its connection until it ends");
        tokio::time::timeout_at(deadline, work(client)).await
    };
    match outcome {
        Ok(result) => {
            lease.give_back();
            result.map_err(|failure| failure.into_store_error(place))
        }
        // The lease, dropped unreturned, closes the connection.
        Err(_) => Err(StoreError::TimedOut {
            tier: Tier::Postgres,
            after: limit,
        }),
    }
}

/// A connection lent to one operation. Given back only when the operation ended; dropped
/// otherwise, it leaves the pool for good.
struct Lease(Option<Object>, MakeRustlsConnect);

impl Lease {
    fn give_back(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(object) = self.0.take() else { return };
        let client = Object::take(object);
        let cancel = client.cancel_token();
        let tls = self.1.clone();
        // Closes the socket and ends its task.
        drop(client);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // The server may still be running (or waiting on a lock for) the query; ask it to
                // stop, so that it frees what it holds now rather than when it notices the
                // socket is gone.
                let _ = tokio::time::timeout(CANCEL_DEADLINE, cancel.cancel_query(tls)).await;
            });
        }
    }
}

/// A query's error as the store's. Unique violations are conflicts; a connection that is gone,
/// or a server shutting down or refusing connections, is unavailable; data it cannot store is
/// `Corrupt` (refused for good); the rest is the backend's.
pub(crate) fn query_error(place: &str, error: &tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(db.message().to_owned()),
        Some(db) if unreachable_code(db) => unavailable(format!("{place}: {}", db.message())),
        // A data exception is the data's: storing it again will fail again, so it is refused
        // (the event log gives up such an event alone) rather than retried.
        Some(db) if db.code().code().starts_with("22") => {
            StoreError::Corrupt(format!("PostgreSQL at {place} cannot store the data: {}", db_text(db)))
        }
        Some(db) => StoreError::Backend(format!("PostgreSQL at {place}: {}", db_text(db))),
        None if error.is_closed() || io_cause(error) => {
            unavailable(format!("the connection to {place} failed: {}", describe(error)))
        }
        None => StoreError::Backend(format!("PostgreSQL at {place}: {}", describe(error))),
    }
}

/// An error opening a connection. The server's own refusals (no such role or database, a wrong
/// password) are the backend's: waiting will not help. The rest (refused, cut, timed out) is
/// unavailable.
pub(crate) fn connect_error(place: &str, error: &tokio_postgres::Error) -> StoreError {
    // A certificate not trusted, or a server without TLS where it is required: waiting will not
    // help either (a handshake cut by the network is unavailable, as any connection cut).
    const TLS_FAILED: &str = "error performing TLS handshake";
    if error.to_string() == TLS_FAILED && tls_refused(error) {
        let text = describe(error);
        let cause = text.strip_prefix(TLS_FAILED).unwrap_or(&text).trim_start_matches(": ");
        return StoreError::Backend(format!("the TLS handshake with PostgreSQL at {place} failed: {cause}"));
    }
    match error.as_db_error() {
        Some(db) if !unreachable_code(db) => StoreError::Backend(format!(
            "PostgreSQL at {place} refused the connection: {}",
            db.message()
        )),
        _ => unavailable(format!("cannot connect to {place}: {}", describe(error))),
    }
}

/// Whether a failed TLS handshake was refused (rustls refused the server, or the server has
/// no TLS), not cut.
fn tls_refused(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        // An `io::Error` hides the error it wraps from the chain.
        let wrapped = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if cause.is::<rustls::Error>() || wrapped.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        if cause.to_string() == "server does not support TLS" {
            return true;
        }
        source = cause.source();
    }
    false
}

fn pool_error(place: &str, connect_timeout: Duration, error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(error) => connect_error(place, &error),
        // A server that accepts and says nothing is slow, not gone: the caller may wait.
        PoolError::Timeout(TimeoutType::Create) => StoreError::TimedOut {
            tier: Tier::Postgres,
            after: connect_timeout,
        },
        PoolError::Timeout(_) => unavailable(format!("no connection to {place} was free in time")),
        PoolError::Closed => unavailable(format!("the pool of connections to {place} is closed")),
        other => StoreError::Backend(format!("the pool of connections to {place} failed: {other}")),
    }
}

/// Codes that say the server cannot serve now (shutting down, starting, out of connections, a
/// connection exception).
fn unreachable_code(db: &DbError) -> bool {
    let code = db.code();
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code)
}

fn db_text(db: &DbError) -> String {
    match db.detail() {
        Some(detail) => format!("{} ({detail})", db.message()),
        None => db.message().to_owned(),
    }
}

fn io_cause(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The error and its causes, in one line. tokio-postgres never puts the configuration (and so
/// the password) in its errors.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db_text(db);
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
