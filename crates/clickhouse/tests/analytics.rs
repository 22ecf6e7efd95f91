//! `ClickHouseAnalytics` against real ClickHouse servers, each test in a database of its own:
//! Debian's ClickHouse 18.16 (`SWITCHBOARD_TEST_CLICKHOUSE_URL`) and the current ClickHouse
//! engine, chdb-core's, behind `scripts/chdb-server` (`SWITCHBOARD_TEST_CLICKHOUSE_CURRENT_URL`),
//! the throw-away servers `scripts/test` starts. The tests of `analytics/on_server.rs` run
//! against each (modules `clickhouse_18_16` and `clickhouse_current`): the analytics suite every
//! backend passes, isolation between users whatever their strings hold, the schema's version and
//! the moves from earlier ones, and errors that say what failed (never the password) for a wrong
//! password and a database that does not exist. The tests here run once: a bad URL, an
//! unreachable server, a garbage answer and a server that never answers, from servers of the
//! test's own. On the real clock: the servers are other processes.

use std::time::Duration;

use switchboard_clickhouse::{ClickHouseAnalytics, ClickHouseOptions};
use switchboard_store::{StoreError, Tier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A ClickHouse server of the tests, named by an environment variable.
struct Server {
    /// The variable that holds its URL.
    variable: &'static str,
    /// What it is, for the sentence when the variable is not set.
    what: &'static str,
}

impl Server {
    fn url(&self) -> String {
        std::env::var(self.variable).unwrap_or_else(|_| {
            panic!(
                "{} is not set: run the tests through scripts/test, which starts {} and sets it \
                 (e.g. http://127.0.0.1:58123/)",
                self.variable, self.what
            )
        })
    }
}

/// Debian's ClickHouse server, 18.16.
mod clickhouse_18_16 {
    const SERVER: super::Server = super::Server {
        variable: "SWITCHBOARD_TEST_CLICKHOUSE_URL",
        what: "a throw-away ClickHouse server (Debian's 18.16)",
    };
    include!("analytics/on_server.rs");
}

/// The current ClickHouse engine (chdb-core 26.9) behind scripts/chdb-server.
mod clickhouse_current {
    const SERVER: super::Server = super::Server {
        variable: "SWITCHBOARD_TEST_CLICKHOUSE_CURRENT_URL",
        what: "the current ClickHouse engine behind scripts/chdb-server (scripts/tiers --clickhouse-current)",
    };
    include!("analytics/on_server.rs");

    pub(super) fn url() -> String {
        SERVER.url()
    }
}

/// A generous bound on any wait on a socket of a test's own.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_bad_url_is_refused_saying_why_without_the_password() {
    for url in [
        "clickhouse://u:pw-secret@127.0.0.1:1/?database=x",
        "http://u:pw-secret@127.0.0.1:1/db",
        "nonsense",
    ] {
        match ClickHouseAnalytics::connect(url, ClickHouseOptions::default()).await {
            Err(StoreError::Backend(message)) => {
                assert!(message.contains("ClickHouse URL"), "{message}");
                assert!(!message.contains("pw-secret"), "{message}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://default:pw-secret@127.0.0.1:{port}/?database=x");
    match ClickHouseAnalytics::connect(&url, ClickHouseOptions::default()).await {
        Err(StoreError::Unavailable { tier, reason }) => {
            assert_eq!(tier, Tier::ClickHouse);
            assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
            assert!(!reason.contains("pw-secret"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// A server on a port of its own that answers every request with `answer` (or never, when
/// `None`), until the test ends.
async fn fake_server(answer: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let mut read = 0;
                // Reads the head of the request (and whatever body came with it).
                while !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(WAIT, socket.read(&mut request[read..])).await {
                        Ok(Ok(n)) if n > 0 => read += n,
                        _ => return,
                    }
                }
                match answer {
                    Some(body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(body).await;
                    }
                    // Holds the connection open without answering until the client leaves.
                    None => {
                        let _ = tokio::time::timeout(WAIT, socket.read(&mut request)).await;
                    }
                }
            });
        }
    });
    format!("http://default:pw-secret@127.0.0.1:{port}/?database=x")
}

#[tokio::test]
async fn a_server_that_answers_garbage_is_a_clear_error() {
    for garbage in [
        &b"<html>Welcome to nginx!</html>"[..],
        b"",
        b"\xff\xfe\x00garbage",
        b"Ok.\n",
    ] {
        let url = fake_server(Some(garbage)).await;
        let error = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, StoreError::Backend(_) | StoreError::Corrupt(_)),
            "{text}"
        );
        assert!(text.contains("ClickHouse at 127.0.0.1:"), "{text}");
        assert!(!text.contains("pw-secret"), "{text}");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_deadline() {
    let url = fake_server(None).await;
    let options = ClickHouseOptions {
        query_timeout: Duration::from_millis(300),
        ..ClickHouseOptions::default()
    };
    let connect = tokio::time::timeout(WAIT, ClickHouseAnalytics::connect(&url, options))
        .await
        .expect("connect gives up by its own deadline");
    match connect {
        Err(StoreError::TimedOut { tier, after }) => {
            assert_eq!((tier, after), (Tier::ClickHouse, Duration::from_millis(300)));
        }
        other => panic!("{other:?}"),
    }
}

/// The current engine's HTTP front (`scripts/chdb-server`, ours, not ClickHouse's) answers the
/// requests ClickHouse's HTTP interface answers with ClickHouse's statuses, exception codes and
/// bodies, bad requests included (never a traceback), and lets in only its one user.
#[tokio::test]
async fn the_current_engine_s_http_front_answers_as_clickhouse_does() {
    let url = reqwest::Url::parse(&clickhouse_current::url()).unwrap();
    // (method, path and query, headers, body) → (status, exception code, start of the answer).
    type Probe = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [u8],
    );
    type Expected = (u16, Option<&'static str>, &'static str);
    let probes: [(Probe, Expected); 18] = [
        (("GET", "/ping", &[], b""), (200, None, "Ok.\n")),
        (("GET", "/", &[], b""), (200, None, "Ok.\n")),
        (("GET", "/?query=SELECT%201", &[], b""), (200, None, "1\n")),
        (
            ("POST", "/", &[], b"SELECT 1, currentDatabase()"),
            (200, None, "1\tdefault\n"),
        ),
        (("POST", "/?query=SELECT", &[], b" 2"), (200, None, "2\n")),
        (
            ("POST", "/?database=system", &[], b"SELECT currentDatabase()"),
            (200, None, "system\n"),
        ),
        (
            ("POST", "/?default_format=JSONEachRow", &[], b"SELECT 1 AS a"),
            (200, None, "{\"a\":1}\n"),
        ),
        (
            ("POST", "/?param_n=7", &[], b"SELECT {n:UInt8} + 1"),
            (200, None, "8\n"),
        ),
        (
            (
                "POST",
                "/?max_result_rows=1&result_overflow_mode=throw",
                &[],
                b"SELECT number FROM numbers(5)",
            ),
            (500, Some("396"), "Code: 396. DB::Exception: Limit for result exceeded"),
        ),
        (
            (
                "POST",
                "/",
                &[],
                b"SELECT value FROM system.settings WHERE name = 'max_result_rows'",
            ),
            (200, None, "0\n"),
        ),
        (
            ("POST", "/", &[], b"SELECT * FROM no_such_table"),
            (404, Some("60"), "Code: 60. DB::Exception: Unknown table"),
        ),
        (
            ("POST", "/?database=no_such_database", &[], b"SELECT 1"),
            (
                404,
                Some("81"),
                "Code: 81. DB::Exception: Database no_such_database does not exist. (UNKNOWN_DATABASE) (version 26.9",
            ),
        ),
        (
            ("POST", "/", &[], b"SELEC 1"),
            (400, Some("62"), "Code: 62. DB::Exception: Syntax error"),
        ),
        (
            ("POST", "/", &[], b"SELECT 1; SELECT 2"),
            (
                400,
                Some("62"),
                "Code: 62. DB::Exception: Syntax error (Multi-statements are not allowed)",
            ),
        ),
        (
            ("POST", "/", &[], b""),
            (400, Some("62"), "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)"),
        ),
        (
            ("GET", "/?query=CREATE%20DATABASE%20never_made", &[], b""),
            (
                500,
                Some("164"),
                "Code: 164. DB::Exception: Cannot execute query in readonly mode",
            ),
        ),
        (
            ("POST", "/", &[("X-ClickHouse-User", "nobody")], b"SELECT 1"),
            (
                403,
                Some("516"),
                "Code: 516. DB::Exception: nobody: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)",
            ),
        ),
        (
            ("POST", "/?no_such_setting=1", &[], b"SELECT 1"),
            (
                404,
                Some("115"),
                "Code: 115. DB::Exception: Unknown setting 'no_such_setting'",
            ),
        ),
    ];
    let http = reqwest::Client::new();
    for ((method, target, headers, body), (status, code, start)) in probes {
        let mut request = http
            .request(method.parse().unwrap(), url.join(target).unwrap())
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let answer = request.send().await.unwrap();
        let got_code = answer
            .headers()
            .get("X-ClickHouse-Exception-Code")
            .map(|v| v.to_str().unwrap().to_owned());
        let got_status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        assert_eq!(
            (got_status, got_code.as_deref()),
            (status, code),
            "{method} {target}: {text}"
        );
        assert!(text.starts_with(start), "{method} {target}: {text}");
        assert!(!text.contains("Traceback"), "{method} {target}: {text}");
    }
    // Credentials in each of the ways ClickHouse takes them, right and wrong.
    let query = |user: Option<(&str, &str)>| {
        let request = http.post(url.clone()).body("SELECT 1");
        match user {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    };
    assert_eq!(query(Some(("default", ""))).send().await.unwrap().status(), 200);
    let refused = query(Some(("default", "wrong"))).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("Authentication failed"));
}

/// A server that answers `/ping` as ClickHouse does and every other request with HTTP 500,
/// `headers` and `body`, until the test ends.
async fn refusing_server(headers: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let mut read = 0;
                while !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(WAIT, socket.read(&mut request[read..])).await {
                        Ok(Ok(n)) if n > 0 => read += n,
                        _ => return,
                    }
                }
                let answer = if request.starts_with(b"GET /ping") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nOk.\n".to_owned()
                } else {
                    format!(
                        "HTTP/1.1 500 Internal Server Error\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://default:pw-secret@127.0.0.1:{port}/?database=x")
}

#[tokio::test]
async fn a_query_refused_because_its_id_is_still_running_is_a_conflict_in_either_release() {
    let refusals = [
        // 18.16: the code in the text only.
        (
            "",
            "Code: 216, e.displayText() = DB::Exception: Query with id = q1 is already running., \
             e.what() = DB::Exception\n",
        ),
        // Current releases: the code in a header too.
        (
            "X-ClickHouse-Exception-Code: 216\r\n",
            "Code: 216. DB::Exception: Query with id = q1 is already running. \
             (QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING) (version 26.9.1)\n",
        ),
    ];
    for (headers, body) in refusals {
        let url = refusing_server(headers, body).await;
        match ClickHouseAnalytics::connect(&url, ClickHouseOptions::default()).await {
            Err(StoreError::Conflict(message)) => {
                assert!(message.contains("a query of the same id is still running"), "{message}");
                assert!(message.contains("ClickHouse at 127.0.0.1:"), "{message}");
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    // Any other refusal is the backend's failure, as before.
    let url = refusing_server(
        "",
        "Code: 60, e.displayText() = DB::Exception: Table x.y doesn't exist.\n",
    )
    .await;
    assert!(matches!(
        ClickHouseAnalytics::connect(&url, ClickHouseOptions::default()).await,
        Err(StoreError::Backend(_))
    ));
}
