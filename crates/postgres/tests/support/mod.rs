//! What every PostgreSQL test needs: the throw-away server `scripts/test` starts, and a fresh
//! database on it for each test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchboard_postgres::{PgOptions, PgStore, scratch_database};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The variable holding the admin URL of the throw-away server.
pub(crate) const URL_VARIABLE: &str = "SWITCHBOARD_TEST_POSTGRES_URL";

/// The admin URL of the test server. Never skipped: without a server these tests fail.
pub(crate) fn admin_url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{URL_VARIABLE} is not set: run the tests through scripts/test, which starts a throw-away \
             PostgreSQL server and sets it (e.g. postgres://postgres@127.0.0.1:PORT/postgres)"
        )
    })
}

/// The URL of a new, empty database.
pub(crate) async fn fresh_database() -> String {
    scratch_database(&admin_url()).await.unwrap()
}

/// A store on a new, empty database, and its URL.
#[allow(dead_code)]
pub(crate) async fn fresh_store(options: PgOptions) -> (PgStore, String) {
    let url = fresh_database().await;
    (PgStore::connect(&url, options).await.unwrap(), url)
}

/// A plain connection of the test's own, beside the store's pool.
#[allow(dead_code)]
pub(crate) async fn raw_connection(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Where a stalling proxy stops a connection.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// The bytes holding the trigger never reach the server.
    Before,
    /// They reach the server, but none of its answers reach the client.
    After,
}

/// A proxy to the server that forwards both ways until, once armed, a client sends `trigger`;
/// from then on that connection is stalled (`Stall`), as behind a broken network: nothing more
/// passes either way, and both of its sockets stay open. Other connections pass as before.
#[allow(dead_code)]
pub(crate) async fn stalling_proxy(server: String, trigger: &'static [u8], stall: Stall) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = Arc::new(AtomicBool::new(false));
    let arming = Arc::clone(&armed);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(&server).await.unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = upstream.into_split();
            let stalled = Arc::new(AtomicBool::new(false));
            let stalls = Arc::clone(&stalled);
            let armed = Arc::clone(&arming);
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                    if armed.load(Ordering::SeqCst) && buffer[..n].windows(trigger.len()).any(|w| w == trigger) {
                        stalls.store(true, Ordering::SeqCst);
                        if stall == Stall::After {
                            let _ = to_server.write_all(&buffer[..n]).await;
                        }
                        // Holds both sockets, forwarding nothing, until the test ends.
                        std::future::pending::<()>().await;
                    }
                    if to_server.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
                    if stalled.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    if to_client.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, armed)
}

/// How many of the stores' queries (application `switchboard`) on this database wait on a lock.
#[allow(dead_code)]
pub(crate) async fn waiting_on_a_lock(raw: &tokio_postgres::Client) -> i64 {
    raw.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'switchboard' AND wait_event_type = 'Lock'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}
