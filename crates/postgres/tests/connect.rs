//! Connecting: every way it can fail is said clearly (PostgreSQL, the address, what failed) and
//! never with the password; the schema is migrated once however many servers start at once, and
//! a database of a newer schema is refused.

mod support;

use std::str::FromStr;
use std::time::Duration;

use switchboard_postgres::{PgOptions, PgStore, SCHEMA_VERSION};
use switchboard_store::{Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PASSWORD: &str = "hunter2-not-to-be-seen";

/// Generous: only the fake server that never answers waits for the connect deadline.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// What a failed connection must give: the kind of error, and words its message must hold.
struct Case {
    url: String,
    kind: fn(&StoreError) -> bool,
    says: Vec<String>,
}

fn check(case: Case, error: StoreError) {
    let message = error.to_string();
    assert!((case.kind)(&error), "{}: unexpected kind of error: {error:?}", case.url);
    assert!(
        !message.contains(PASSWORD),
        "{}: the password is in `{message}`",
        case.url
    );
    assert!(
        !format!("{error:?}").contains(PASSWORD),
        "{}: the password is in {error:?}",
        case.url
    );
    for words in &case.says {
        assert!(
            message.contains(words.as_str()),
            "{}: `{message}` does not say `{words}`",
            case.url
        );
    }
}

/// The body of PostgreSQL's SSLRequest (after its length, 8): the code 80877103.
const SSL_REQUEST: [u8; 4] = 80_877_103_i32.to_be_bytes();

/// A server that asks for a password and refuses it, as PostgreSQL does with `password`
/// authentication: the client really sends the password, and must not repeat it.
async fn refusing_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut length = socket.read_i32().await.unwrap();
        let mut startup = vec![0; length as usize - 4];
        socket.read_exact(&mut startup).await.unwrap();
        if startup == SSL_REQUEST {
            // No TLS here (the client asks first, `sslmode=prefer`): it goes on in the clear.
            socket.write_all(b"N").await.unwrap();
            length = socket.read_i32().await.unwrap();
            startup = vec![0; length as usize - 4];
            socket.read_exact(&mut startup).await.unwrap();
        }
        // AuthenticationCleartextPassword.
        socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.unwrap();
        assert_eq!(socket.read_u8().await.unwrap(), b'p');
        let length = socket.read_i32().await.unwrap();
        let mut password = vec![0; length as usize - 4];
        socket.read_exact(&mut password).await.unwrap();
        assert!(
            password.starts_with(PASSWORD.as_bytes()),
            "the client sent the password"
        );
        let mut fields = Vec::new();
        for (tag, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"ann\""),
        ] {
            fields.push(tag);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let mut error = vec![b'E'];
        error.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
        error.extend_from_slice(&fields);
        socket.write_all(&error).await.unwrap();
        let _ = socket.read_u8().await;
    });
    port
}

/// A server that takes the connection and never says anything.
async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn unavailable(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable { .. })
}

fn backend(error: &StoreError) -> bool {
    matches!(error, StoreError::Backend(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_to_connect_names_postgresql_the_address_and_the_cause_and_never_the_password() {
    let admin = tokio_postgres::Config::from_str(&support::admin_url()).unwrap();
    let port = admin.get_ports().first().copied().unwrap_or(5432);
    let server = format!("127.0.0.1:{port}");
    let refusing = refusing_server().await;
    let (silent, silent_task) = silent_server().await;
    let closed = closed_port().await;
    let cases = [
        Case {
            url: format!("postgres://ann:{PASSWORD}@127.0.0.1:notaport/chat"),
            kind: backend,
            says: vec![
                "PostgreSQL URL".into(),
                "not valid".into(),
                "127.0.0.1:notaport/chat".into(),
            ],
        },
        Case {
            url: format!("postgres://ann:{PASSWORD}@127.0.0.1:{closed}/chat"),
            kind: unavailable,
            says: vec![
                "PostgreSQL".into(),
                format!("127.0.0.1:{closed}/chat"),
                "refused".into(),
            ],
        },
        Case {
            url: format!("postgres://ann:{PASSWORD}@127.0.0.1:{refusing}/chat"),
            kind: backend,
            says: vec![
                "PostgreSQL".into(),
                format!("127.0.0.1:{refusing}/chat"),
                "password authentication failed".into(),
            ],
        },
        Case {
            url: format!("postgres://ann:{PASSWORD}@127.0.0.1:{silent}/chat"),
            kind: unavailable,
            says: vec![
                "PostgreSQL".into(),
                format!("127.0.0.1:{silent}/chat"),
                "did not answer within 300 ms".into(),
            ],
        },
        Case {
            url: format!("postgres://nobody_here:{PASSWORD}@{server}/postgres"),
            kind: backend,
            says: vec![
                "PostgreSQL".into(),
                format!("{server}/postgres"),
                "role \"nobody_here\" does not exist".into(),
            ],
        },
        Case {
            url: format!(
                "postgres://{}:{PASSWORD}@{server}/no_such_database",
                admin.get_user().unwrap_or("postgres")
            ),
            kind: backend,
            says: vec![
                "PostgreSQL".into(),
                format!("{server}/no_such_database"),
                "database \"no_such_database\" does not exist".into(),
            ],
        },
    ];
    let options = PgOptions {
        connect_timeout: Duration::from_millis(300),
        ..PgOptions::default()
    };
    for case in cases {
        let outcome = tokio::time::timeout(TEST_DEADLINE, PgStore::connect(&case.url, options))
            .await
            .unwrap_or_else(|_| panic!("{}: connecting never ended", case.url));
        let error = outcome.err().unwrap_or_else(|| panic!("{}: connected", case.url));
        check(case, error);
    }
    silent_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_at_once_on_a_new_database_apply_the_schema_once() {
    let url = support::fresh_database().await;
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, PgOptions::default()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().unwrap());
    }
    for store in &stores {
        store.ping().await.unwrap();
    }
    let raw = support::raw_connection(&url).await;
    let versions: Vec<i32> = raw
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_a_newer_schema_is_refused() {
    let url = support::fresh_database().await;
    PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let raw = support::raw_connection(&url).await;
    raw.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES ($1, 0)",
        &[&(SCHEMA_VERSION + 1)],
    )
    .await
    .unwrap();
    let error = PgStore::connect(&url, PgOptions::default()).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    assert!(
        message.contains(&format!("schema version {}", SCHEMA_VERSION + 1))
            && message.contains(&format!("this server's {SCHEMA_VERSION}"))
            && message.contains("PostgreSQL"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_made_read_only_under_a_running_store_fails_its_ping_with_a_sentence() {
    let url = support::fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    store.ping().await.unwrap();
    // As after a failover to a standby: every new session is read-only; the store's own
    // connections are cut, so it opens new ones.
    let raw = support::raw_connection(&url).await;
    raw.batch_execute(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', current_database()); END $$;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid();",
    )
    .await
    .unwrap();
    // The first ping may meet a connection that was cut; the next ones open new sessions.
    let error = tokio::time::timeout(TEST_DEADLINE, async {
        loop {
            match store.ping().await {
                Err(error) if error.to_string().contains("read-only") => break error,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the ping finds the database read-only");
    assert!(unavailable(&error), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("PostgreSQL") && message.contains("nothing can be stored"),
        "{message}"
    );
    raw.batch_execute(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = off', current_database()); END $$;",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn options_no_store_could_work_with_are_refused_before_connecting() {
    let url = "postgres://ann@127.0.0.1:1/chat";
    let cases = [
        (
            PgOptions {
                max_connections: 0,
                ..PgOptions::default()
            },
            "max_connections",
        ),
        (
            PgOptions {
                query_timeout: Duration::ZERO,
                ..PgOptions::default()
            },
            "query_timeout",
        ),
        (
            PgOptions {
                connect_timeout: Duration::ZERO,
                ..PgOptions::default()
            },
            "connect_timeout",
        ),
    ];
    for (options, named) in cases {
        let error = PgStore::connect(url, options).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Backend(m) if m.contains(named)),
            "{options:?}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_1_is_brought_up_to_date_and_keeps_its_log() {
    use switchboard_protocol::{RunId, Seq, ThreadId, UserId};
    use switchboard_store::testsuite::{append, entry, started};

    let url = support::fresh_database().await;
    let ann = UserId::generate();
    let (run, thread) = (RunId::generate(), ThreadId::generate());
    {
        let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
        append(&store, entry(&ann, &run, &thread, started(), None)).await;
    }
    // As schema 1 left it: no batch keys, no cluster name, nodes, leases or owners of runs, no
    // spent refresh tokens kept.
    let raw = support::raw_connection(&url).await;
    raw.batch_execute(
        "DROP TABLE log_batches; DROP TABLE cluster; DROP TABLE node_leases; ALTER TABLE runs DROP COLUMN node; \
         ALTER TABLE runs DROP COLUMN owner; ALTER TABLE refresh_families DROP COLUMN previous_token; \
         DELETE FROM schema_version WHERE version > 1",
    )
    .await
    .unwrap();

    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let versions: Vec<i32> = raw
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    assert_eq!(store.last_seq(&ann).await.unwrap(), Seq::new(1));
    assert_eq!(append(&store, entry(&ann, &run, &thread, started(), None)).await, 2);
    let cluster = store.cluster_id().await.unwrap();
    assert_eq!(cluster.len(), 32, "a random name: {cluster}");
    let again = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    assert_eq!(
        again.cluster_id().await.unwrap(),
        cluster,
        "one name for every node on the database"
    );
    let other = PgStore::connect(&support::fresh_database().await, PgOptions::default())
        .await
        .unwrap();
    assert_ne!(other.cluster_id().await.unwrap(), cluster, "each database its own");
}
