//! What every PostgreSQL test needs: the throw-away server `scripts/test` starts, and a fresh
//! database on it for each test.

use switchboard_postgres::{PgOptions, PgStore, scratch_database};

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
