//! TLS to PostgreSQL, each `sslmode` against the throw-away server of `scripts/test`, which
//! offers TLS with a certificate for `localhost` (not for `127.0.0.1`) signed by a test CA: what
//! connects, over TLS or not, and what is refused, in a sentence that names PostgreSQL, the
//! address and the certificate's fault, never the password.

mod support;

use switchboard_postgres::{PgOptions, PgStore, Serving, hold_server_lock, scratch_database};
use switchboard_protocol::UserId;
use switchboard_store::testsuite::new_message;
use switchboard_store::{Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{admin_url, fresh_database, raw_connection};

/// A file the tiers script made (`scripts/tiers --postgres-tls`).
fn certificate(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!(
            "{variable} is not set: run the tests through scripts/test, which starts PostgreSQL with TLS \
             (scripts/tiers --postgres-tls) and sets it"
        )
    })
}

fn ca() -> String {
    certificate("SWITCHBOARD_TEST_POSTGRES_CA")
}

fn other_ca() -> String {
    certificate("SWITCHBOARD_TEST_POSTGRES_OTHER_CA")
}

/// `url` at the host name `localhost` instead of 127.0.0.1.
fn at_localhost(url: &str) -> String {
    url.replacen("@127.0.0.1:", "@localhost:", 1)
}

/// `url` with a password and these query parameters.
fn with(url: &str, query: &str) -> String {
    let url = url.replacen("postgres@", "postgres:hunter2-not-to-be-seen@", 1);
    format!("{url}?{query}")
}

/// Whether the store's connections to the database of `url` are encrypted (read by another
/// connection, from the server's own account).
async fn encrypted(url: &str) -> bool {
    let raw = raw_connection(&admin_url()).await;
    let database = url.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned();
    let rows = raw
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'switchboard'",
            &[&database],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "the store holds no connection to {database}");
    let ssl: Vec<bool> = rows.iter().map(|row| row.get(0)).collect();
    assert!(ssl.iter().all(|s| *s == ssl[0]), "{ssl:?}");
    ssl[0]
}

#[tokio::test]
async fn each_sslmode_connects_as_libpq_would_and_says_so() {
    let url = fresh_database().await;
    let ca = ca();
    // (URL, whether it connects over TLS)
    let connecting = [
        (with(&url, "sslmode=disable"), false),
        (url.clone(), true),
        (with(&url, "sslmode=prefer"), true),
        (with(&url, "sslmode=require"), true),
        (with(&url, &format!("sslmode=require&sslrootcert={ca}")), true),
        // verify-ca checks the signer, not the name: 127.0.0.1 is not the certificate's.
        (with(&url, &format!("sslmode=verify-ca&sslrootcert={ca}")), true),
        (
            with(&at_localhost(&url), &format!("sslmode=verify-full&sslrootcert={ca}")),
            true,
        ),
    ];
    for (url, tls) in connecting {
        let store = PgStore::connect(&url, PgOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(encrypted(&url).await, tls, "{url}");
        drop(store);
    }
}

#[tokio::test]
async fn a_certificate_that_is_not_trusted_or_not_the_hosts_is_refused_in_a_sentence() {
    let url = fresh_database().await;
    let (ca, other) = (ca(), other_ca());
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap().to_owned();
    let refused = [
        (
            with(&url, &format!("sslmode=verify-full&sslrootcert={ca}")),
            format!("127.0.0.1:{port}"),
            "not valid for name",
        ),
        (
            with(&at_localhost(&url), &format!("sslmode=verify-full&sslrootcert={other}")),
            format!("localhost:{port}"),
            "UnknownIssuer",
        ),
        (
            with(&url, &format!("sslmode=verify-ca&sslrootcert={other}")),
            format!("127.0.0.1:{port}"),
            "UnknownIssuer",
        ),
        (
            with(&url, &format!("sslmode=require&sslrootcert={other}")),
            format!("127.0.0.1:{port}"),
            "UnknownIssuer",
        ),
    ];
    for (url, place, fault) in refused {
        let error = PgStore::connect(&url, PgOptions::default()).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, StoreError::Backend(_)), "{url}: {error:?}");
        assert!(
            message.contains(&format!("the TLS handshake with PostgreSQL at {place}/")),
            "{url}: {message}"
        );
        assert!(message.contains(fault), "{url}: {message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[tokio::test]
async fn the_store_the_server_lock_and_scratch_databases_work_over_verified_tls() {
    let admin = with(
        &at_localhost(&admin_url()),
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    let url = scratch_database(&admin).await.unwrap();
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let _lock = hold_server_lock(&url, std::time::Duration::from_secs(10), Serving::Alone)
        .await
        .unwrap();
    let user = UserId::generate();
    let accepted = store
        .accept_message(new_message(&user, None, "over TLS", None))
        .await
        .unwrap();
    let messages = store.messages(&user, &accepted.thread_id).await.unwrap();
    assert_eq!(messages[0].text, "over TLS");
    assert!(encrypted(&url).await);
}

#[tokio::test]
async fn tls_required_of_a_server_without_it_is_refused_in_a_sentence() {
    // A server that answers PostgreSQL's request for TLS with `N`, as one without TLS does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0; 8];
            if socket.read_exact(&mut request).await.is_ok() {
                let _ = socket.write_all(b"N").await;
            }
        }
    });
    let url = format!("postgres://postgres:hunter2-not-to-be-seen@127.0.0.1:{port}/db?sslmode=require");
    let error = PgStore::connect(&url, PgOptions::default()).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}/db")) && message.contains("TLS"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn bad_tls_parameters_stop_the_store_before_it_connects() {
    let url = with(&fresh_database().await, "sslmode=verify-full");
    let error = PgStore::connect(&url, PgOptions::default()).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("is not valid: sslmode=verify-full needs sslrootcert"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}
