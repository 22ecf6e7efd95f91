//! The storage suite every backend passes, on PostgreSQL: two stores on one database stand for
//! two server processes.

mod support;

use std::sync::Arc;

use switchboard_postgres::{PgOptions, PgStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_passes_the_storage_suite() {
    let url = support::fresh_database().await;
    let store = Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    let other = Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    switchboard_store::testsuite::store(store, other).await;
}
