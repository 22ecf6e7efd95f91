//! ClickHouse's HTTP interface: the address and credentials taken from a URL, and one request
//! under a deadline, its failures told apart (slow, unreachable, refused, answered with an
//! error). Credentials travel in ClickHouse's own headers, never in a URL or an error.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use switchboard_store::{StoreError, Tier, TierClock};

/// The most an answer may hold: a summary's answers are a few megabytes at most.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The most of an error answer quoted in an error.
const MAX_QUOTED_CHARS: usize = 400;

/// How long an idle connection is kept for reuse: under the 3 s after which ClickHouse closes
/// an idle keep-alive connection (`keep_alive_timeout`'s default), so that a request is not
/// sent on a connection the server is closing.
const IDLE_CONNECTION: Duration = Duration::from_secs(2);

/// Where the server is and who to be there.
#[derive(Clone)]
pub(crate) struct Address {
    /// `scheme://host:port/`, without credentials or query.
    endpoint: Url,
    /// The database every query runs in.
    pub(crate) database: String,
    user: Option<String>,
    password: Option<String>,
    /// The query parameters of the URL other than the database and the credentials (kept when
    /// the URL is written out again, by `scratch_database`).
    other_params: Vec<(String, String)>,
}

/// Says what an address is without its password.
impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Address")
            .field("endpoint", &self.endpoint.as_str())
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Address {
    /// Reads `http(s)://[user[:password]@]host[:port]/[?database=NAME][&user=..][&password=..]`;
    /// the database is `default` when not named. The error never repeats the URL (it may hold a
    /// password), only what is wrong with it.
    pub(crate) fn parse(url: &str) -> Result<Address, StoreError> {
        let bad = |what: &str| StoreError::Backend(format!("the ClickHouse URL is not usable: {what}"));
        let parsed = Url::parse(url).map_err(|e| bad(&format!("{e} (expected http://host:port/?database=NAME)")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(&format!("its scheme is `{}`, not http or https", parsed.scheme())));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no host"));
        }
        if !matches!(parsed.path(), "" | "/") {
            return Err(bad("it has a path (the database goes in `?database=NAME`)"));
        }
        let mut user = (!parsed.username().is_empty()).then(|| decode(parsed.username()));
        let mut password = parsed.password().map(decode);
        let mut database = None;
        let mut other_params = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "database" => database = Some(value.into_owned()),
                "user" => user = Some(value.into_owned()),
                "password" => password = Some(value.into_owned()),
                _ => other_params.push((key.into_owned(), value.into_owned())),
            }
        }
        let database = database.unwrap_or_else(|| "default".to_owned());
        if !is_identifier(&database) {
            return Err(bad(
                "the database name must be letters, digits and underscores, not starting with a digit",
            ));
        }
        let mut endpoint = parsed;
        endpoint.set_query(None);
        endpoint.set_fragment(None);
        // Cannot fail for http(s) URLs with a host.
        let _ = endpoint.set_username("");
        let _ = endpoint.set_password(None);
        Ok(Address {
            endpoint,
            database,
            user,
            password,
            other_params,
        })
    }

    /// The same server and credentials with another database.
    pub(crate) fn with_database(&self, database: &str) -> Address {
        Address {
            database: database.to_owned(),
            ..self.clone()
        }
    }

    /// The URL again, naming `database` (with the credentials it came with).
    pub(crate) fn url(&self) -> String {
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("database", &self.database);
            if let Some(user) = &self.user {
                query.append_pair("user", user);
            }
            if let Some(password) = &self.password {
                query.append_pair("password", password);
            }
            for (key, value) in &self.other_params {
                query.append_pair(key, value);
            }
        }
        url.to_string()
    }

    /// "ClickHouse at host:port (database NAME)", for errors.
    pub(crate) fn place(&self) -> String {
        let host = self.endpoint.host_str().unwrap_or("?");
        let port = self.endpoint.port_or_known_default().unwrap_or(8123);
        format!("ClickHouse at {host}:{port} (database {})", self.database)
    }
}

fn decode(text: &str) -> String {
    // The userinfo of a URL is percent-encoded.
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `name` can be used bare as a database name.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// What a request sends.
#[derive(Debug)]
pub(crate) enum Body {
    /// A query in the body; its answer is read.
    Query(String),
    /// An `INSERT ... FORMAT` in the URL, its rows in the body.
    Insert { query: String, rows: Vec<u8> },
}

/// A connection (pool) to one server and database.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    http: reqwest::Client,
    pub(crate) address: Address,
    /// Times every request (ClickHouse's tier).
    pub(crate) clock: TierClock,
}

impl Server {
    pub(crate) fn new(address: Address) -> Result<Server, StoreError> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(IDLE_CONNECTION)
            .build()
            .map_err(|e| StoreError::Backend(format!("ClickHouse: cannot build an HTTP client: {}", chain(&e))))?;
        Ok(Server {
            http,
            address,
            clock: TierClock::new(Tier::ClickHouse),
        })
    }

    /// `GET /ping`: ClickHouse answers `Ok.`.
    pub(crate) async fn ping(&self, deadline: Duration, doing: &str) -> Result<(), StoreError> {
        let mut url = self.address.endpoint.clone();
        url.set_path("/ping");
        let answer = self.send(self.http.get(url), deadline, doing).await?;
        if answer.trim_ascii_end() != b"Ok." {
            return Err(StoreError::Backend(format!(
                "{}: {doing}: the answer to /ping is not ClickHouse's `Ok.` but {}",
                self.address.place(),
                quote(&answer)
            )));
        }
        Ok(())
    }

    /// Runs `body` in the database, with `settings` (name, value) given as URL parameters;
    /// the answer's bytes. `doing` says what it is for, in errors.
    pub(crate) async fn run(
        &self,
        body: Body,
        settings: &[(&str, String)],
        deadline: Duration,
        doing: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let mut url = self.address.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("database", &self.address.database);
            for (key, value) in settings {
                query.append_pair(key, value);
            }
            if let Body::Insert { query: insert, .. } = &body {
                query.append_pair("query", insert);
            }
        }
        let request = self.http.post(url).body(match body {
            Body::Query(query) => query.into_bytes(),
            Body::Insert { rows, .. } => rows,
        });
        self.send(request, deadline, doing).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        deadline: Duration,
        doing: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let exchange = self.send_untimed(request, deadline, doing);
        self.clock.time("request", exchange, StoreError::is_unavailable).await
    }

    async fn send_untimed(
        &self,
        mut request: reqwest::RequestBuilder,
        deadline: Duration,
        doing: &str,
    ) -> Result<Vec<u8>, StoreError> {
        if let Some(user) = &self.address.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.address.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let place = self.address.place();
        let exchange = async {
            let mut response = request.send().await?;
            let status = response.status();
            let code = response
                .headers()
                .get("x-clickhouse-exception-code")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok());
            let mut answer = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Ok((status, code, None));
                }
                answer.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, code, Some(answer)))
        };
        let (status, code, answer) = match tokio::time::timeout(deadline, exchange).await {
            Err(_) => {
                tracing::warn!(%place, doing, after_ms = deadline.as_millis() as u64, "ClickHouse did not answer in time");
                return Err(StoreError::TimedOut {
                    tier: Tier::ClickHouse,
                    after: deadline,
                });
            }
            Ok(Err(error)) => return Err(transport_error(&place, doing, &error)),
            Ok(Ok(answer)) => answer,
        };
        let Some(answer) = answer else {
            return Err(StoreError::Backend(format!(
                "{place}: {doing}: the answer is longer than {MAX_ANSWER_BYTES} bytes"
            )));
        };
        if status == StatusCode::OK {
            return Ok(answer);
        }
        // 18.16 sends no exception code header; its error text starts with the code.
        let code = code.or_else(|| {
            let digits: String = answer
                .strip_prefix(b"Code: ")?
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| *b as char)
                .collect();
            digits.parse().ok()
        });
        if code == Some(QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING) {
            return Err(StoreError::Conflict(format!(
                "{place}: {doing}: a query of the same id is still running"
            )));
        }
        let what = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "refused the credentials",
            _ => "answered with an error",
        };
        Err(StoreError::Backend(format!(
            "{place}: {doing}: {what} (HTTP {}): {}",
            status.as_u16(),
            quote(&answer)
        )))
    }
}

/// ClickHouse's error code for a query whose id is that of a query still running (the id is
/// taken: [`StoreError::Conflict`]).
const QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING: u32 = 216;

/// A failure to exchange a request: unreachable or cut, told as such; never the URL.
fn transport_error(place: &str, doing: &str, error: &reqwest::Error) -> StoreError {
    let reason = chain(error);
    if error.is_connect() {
        return StoreError::Unavailable {
            tier: Tier::ClickHouse,
            reason: format!("{place}: {doing}: cannot connect: {reason}"),
        };
    }
    if error.is_request() || error.is_body() || error.is_decode() {
        return StoreError::Unavailable {
            tier: Tier::ClickHouse,
            reason: format!("{place}: {doing}: the connection failed: {reason}"),
        };
    }
    StoreError::Backend(format!("{place}: {doing}: {reason}"))
}

/// An error and its causes, without the URL reqwest would name.
fn chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(error) = cause {
        let line = match error.downcast_ref::<reqwest::Error>() {
            Some(reqwest) => format!("{}", WithoutUrl(reqwest)),
            None => error.to_string(),
        };
        if !text.contains(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        cause = error.source();
    }
    text
}

/// A reqwest error's own sentence, without the URL (`without_url` needs an owned error).
struct WithoutUrl<'a>(&'a reqwest::Error);

impl std::fmt::Display for WithoutUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error = self.0;
        let kind = if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "error trying to connect"
        } else if error.is_body() {
            "error reading or sending a body"
        } else if error.is_decode() {
            "error decoding the answer"
        } else if error.is_request() {
            "error sending the request"
        } else if error.is_builder() {
            "error building the request"
        } else if error.is_redirect() {
            "error following a redirect"
        } else {
            "HTTP error"
        };
        f.write_str(kind)
    }
}

/// The start of an answer, as text, for an error.
pub(crate) fn quote(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let text = text.trim();
    if text.is_empty() {
        return "an empty answer".to_owned();
    }
    let mut quoted: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    format!("`{}`", quoted.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_keeps_its_credentials_out_of_its_url_and_its_place() {
        let cases = [
            ("http://127.0.0.1:8123/?database=db", "db", None, None),
            (
                "http://ann:p%40ss@ch.example:9000/?database=db",
                "db",
                Some("ann"),
                Some("p@ss"),
            ),
            (
                "https://ch.example/?database=db&user=bob&password=secret",
                "db",
                Some("bob"),
                Some("secret"),
            ),
            ("http://localhost:8123", "default", None, None),
        ];
        for (url, database, user, password) in cases {
            let address = Address::parse(url).unwrap();
            assert_eq!(address.database, database, "{url}");
            assert_eq!(address.user.as_deref(), user, "{url}");
            assert_eq!(address.password.as_deref(), password, "{url}");
            assert!(!address.endpoint.as_str().contains('@') && address.endpoint.query().is_none());
            let place = address.place();
            assert!(!place.contains("secret") && !place.contains("p@ss"), "{place}");
            assert!(!format!("{address:?}").contains("secret"));
            assert_eq!(Address::parse(&address.url()).unwrap().password, address.password);
        }
        assert_eq!(
            Address::parse("http://ch.example/?database=db").unwrap().place(),
            "ClickHouse at ch.example:80 (database db)"
        );
    }

    #[test]
    fn an_unusable_url_is_refused_saying_why_without_repeating_it() {
        let cases = [
            ("not a url", "expected http://host:port/?database=NAME"),
            ("ftp://u:secret@host/?database=db", "scheme is `ftp`"),
            ("http://u:secret@host/db", "has a path"),
            ("http://u:secret@host/?database=a;DROP", "database name"),
            ("http://u:secret@host/?database=1db", "database name"),
        ];
        for (url, expected) in cases {
            let error = Address::parse(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("secret"), "{url}: {error}");
        }
    }
}
