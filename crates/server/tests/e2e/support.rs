//! The one harness: `spawn_app()` starts the real server on port 0 with a fresh data dir, in the
//! test's own runtime (so tokio's paused clock works), and gives typed helpers.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use switchboard::{Application, Config};
use switchboard_clickhouse::{ClickHouseAnalytics, ClickHouseOptions};
use switchboard_client::{Client, Session, Socket};
use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{
    ClientFrame, Control, ErrorCode, ErrorPayload, Event, LogEntry, MessageAccepted, RunId, Seq, ServerFrame, ThreadId,
    UserId, UserMessage,
};
use switchboard_store::{
    Accepted, AnalyticsStore, EventRecord, Message, NewMessage, RefreshFamilyId, RefreshTokenId, Rotation, RunRecord,
    SqliteAnalytics, SqliteStore, Store, StoreError, StoredEvent, Summary, Thread, Tier, TimeRange, User,
    WorkloadEvent,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

pub(crate) const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

pub(crate) struct TestApp {
    pub(crate) client: Client,
    pub(crate) stop: CancellationToken,
    pub(crate) store: Arc<HangingStore>,
    /// The router the server serves, for tests that look at its routes (none for a process).
    pub(crate) router: axum::Router,
    server: Served,
    _dir: Option<tempfile::TempDir>,
}

/// Where a test's server runs: in the test's runtime, or as a process of its own.
enum Served {
    Task(tokio::task::JoinHandle<anyhow::Result<()>>),
    /// A node's process, and the lines it logs from when it listened.
    Process(
        Box<tokio::process::Child>,
        tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
    ),
}

fn test_config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        dev: true,
        jwt_secret: Some(SECRET.to_owned()),
        ..Config::default()
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub(crate) async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_app_in(dir.path().to_owned(), configure).await;
    app._dir = Some(dir);
    app
}

/// Set (to `1`) by `scripts/test` for its second pass over these tests: then every test on the
/// real clock runs its server on PostgreSQL and ClickHouse (the throw-away servers of
/// `SWITCHBOARD_TEST_POSTGRES_URL` and `SWITCHBOARD_TEST_CLICKHOUSE_URL`), each on fresh
/// databases. Tests on the paused clock stay on SQLite: another process races that clock.
const ON_TIERS: &str = "SWITCHBOARD_E2E_TIERS";

/// Whether the test runs on tokio's paused clock: a current-thread runtime whose clock cannot
/// be paused again (`pause` panics when it is paused already).
fn clock_is_paused() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
        return false;
    }
    match std::panic::catch_unwind(tokio::time::pause) {
        Ok(()) => {
            tokio::time::resume();
            false
        }
        Err(_) => true,
    }
}

/// In the pass on the tiers, for a test on the real clock: the URLs of a PostgreSQL database
/// and a ClickHouse database for the data dir `dir`, made on first use and kept in it, so that
/// a server started again on the dir finds the same data.
pub(crate) async fn tier_urls(dir: &std::path::Path) -> Option<(String, String)> {
    if std::env::var(ON_TIERS).as_deref() != Ok("1") || clock_is_paused() {
        return None;
    }
    let file = dir.join("tiers.txt");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let (postgres, clickhouse) = text.split_once('\n').expect("two URLs");
        return Some((postgres.to_owned(), clickhouse.trim().to_owned()));
    }
    let server = |var: &str| {
        std::env::var(var).unwrap_or_else(|_| panic!("{ON_TIERS}=1 needs {var}: run the tests with scripts/test"))
    };
    let postgres = switchboard_postgres::scratch_database(&server("SWITCHBOARD_TEST_POSTGRES_URL"))
        .await
        .unwrap();
    let clickhouse = switchboard_clickhouse::scratch_database(&server("SWITCHBOARD_TEST_CLICKHOUSE_URL"))
        .await
        .unwrap();
    std::fs::write(&file, format!("{postgres}\n{clickhouse}\n")).unwrap();
    Some((postgres, clickhouse))
}

/// The command-line flags that put a server started on `dir` on the tiers, in the pass on
/// them (none otherwise).
pub(crate) async fn tier_args(dir: &std::path::Path) -> Vec<String> {
    match tier_urls(dir).await {
        Some((postgres, clickhouse)) => vec!["--database-url".into(), postgres, "--analytics-url".into(), clickhouse],
        None => Vec::new(),
    }
}

/// A server on the given stores (wrapped so that they can be made to hang too).
pub(crate) async fn spawn_app_on(
    store: Arc<dyn Store>,
    analytics: Arc<dyn AnalyticsStore>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    configure(&mut config);
    let mut app = serve(config, Arc::new(HangingStore::new(store, analytics))).await;
    app._dir = Some(dir);
    app
}

/// The test Redis server (`SWITCHBOARD_TEST_REDIS_URL`).
pub(crate) fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL")
        .expect("SWITCHBOARD_TEST_REDIS_URL names the test Redis: run the tests with scripts/test")
}

/// A node of a cluster on PostgreSQL `database` and Redis `redis`: the real binary, a process
/// of its own (`switchboard serve --dev --database-url … --redis-url … --node-id NODE` and
/// `flags`), on port 0; the usage data in SQLite in its data dir. Its `store` is a handle of the
/// test's own on the same database. `shutdown` sends it SIGTERM and waits for it; `kill` is
/// `kill -9`.
pub(crate) async fn spawn_node(database: &str, redis: &str, node: &str, flags: &[&str]) -> TestApp {
    let mut args = vec!["--database-url", database, "--redis-url", redis, "--node-id", node];
    args.extend_from_slice(flags);
    let store = PgStore::connect(database, PgOptions::default()).await.unwrap();
    spawn_process(&format!("node {node}"), &args, Some(Arc::new(store))).await
}

/// A server alone on the embedded SQLite in a fresh data dir: the real binary, a process of its
/// own (`switchboard serve --dev` and `flags`), on port 0. Its `store` is a scratch store of the
/// test's own beside the server's files, not the server's. `shutdown` sends it SIGTERM and
/// waits for it.
pub(crate) async fn spawn_server_process(flags: &[&str]) -> TestApp {
    spawn_process("the server", flags, None).await
}

/// `switchboard serve --dev --listen 127.0.0.1:0 --data-dir DIR` and `args` as a process, once
/// it listens; `store` is the test's handle (`None`: a scratch SQLite store in DIR).
async fn spawn_process(name: &str, args: &[&str], store: Option<Arc<dyn Store>>) -> TestApp {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let store = match store {
        Some(store) => store,
        None => Arc::new(SqliteStore::open(&dir.path().join("handle.sqlite3")).await.unwrap()),
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("SWITCHBOARD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} exited before listening"));
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let (logged, log) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = logged.send(line);
        }
    });
    let analytics = SqliteAnalytics::open(&dir.path().join("handle-workload.sqlite3"))
        .await
        .unwrap();
    TestApp {
        client: Client::new(&format!("http://{addr}")),
        stop: CancellationToken::new(),
        store: Arc::new(HangingStore::new(store, Arc::new(analytics))),
        router: axum::Router::new(),
        server: Served::Process(Box::new(child), tokio::sync::Mutex::new(log)),
        _dir: Some(dir),
    }
}

/// A fresh PostgreSQL database on the test server (`SWITCHBOARD_TEST_POSTGRES_URL`), and its URL.
pub(crate) async fn postgres_database() -> String {
    let admin = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .expect("SWITCHBOARD_TEST_POSTGRES_URL names the test PostgreSQL: run the tests with scripts/test");
    switchboard_postgres::scratch_database(&admin).await.unwrap()
}

/// A fresh ClickHouse database on the test server (`SWITCHBOARD_TEST_CLICKHOUSE_URL`), and its URL.
pub(crate) async fn clickhouse_database() -> String {
    let server = std::env::var("SWITCHBOARD_TEST_CLICKHOUSE_URL")
        .expect("SWITCHBOARD_TEST_CLICKHOUSE_URL names the test ClickHouse: run the tests with scripts/test");
    switchboard_clickhouse::scratch_database(&server).await.unwrap()
}

/// `url` with its host and port replaced by `addr` (a fault proxy in front of the server).
pub(crate) fn through(url: &str, addr: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_host(Some(&addr.ip().to_string())).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    url.to_string()
}

/// The address (host and port) a URL points at.
pub(crate) fn address_of(url: &str) -> std::net::SocketAddr {
    let url = url::Url::parse(url).unwrap();
    let host = url.host_str().unwrap().to_owned();
    let port = url.port_or_known_default().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .unwrap()
        .next()
        .unwrap()
}

/// A server on a data dir.
async fn spawn_app_in(data_dir: PathBuf, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(&data_dir);
    configure(&mut config);
    let store = Arc::new(match tier_urls(&data_dir).await {
        Some((postgres, clickhouse)) => {
            let store = PgStore::connect(&postgres, PgOptions::default()).await.unwrap();
            let analytics = ClickHouseAnalytics::connect(&clickhouse, ClickHouseOptions::default())
                .await
                .unwrap();
            HangingStore::new(Arc::new(store), Arc::new(analytics))
        }
        None => {
            let sqlite = Arc::new(SqliteStore::open(&data_dir.join("switchboard.sqlite3")).await.unwrap());
            HangingStore::new(sqlite.clone(), sqlite)
        }
    });
    serve(config, store).await
}

async fn serve(config: Config, store: Arc<HangingStore>) -> TestApp {
    let app = Application::build_with_store(config, store.clone(), store.clone())
        .await
        .expect("the app builds");
    running(app, store)
}

/// `app` serving in the test's runtime, `store` the test's handle on its stores.
fn running(app: Application, store: Arc<HangingStore>) -> TestApp {
    let client = Client::new(&format!("http://{}", app.local_addr()));
    let stop = app.stop_handle();
    let router = app.router();
    let server = Served::Task(tokio::spawn(app.run_until_stopped()));
    TestApp {
        client,
        stop,
        store,
        router,
        server,
        _dir: None,
    }
}

impl TestApp {
    /// A signed-in user (through dev-login, so no password hashing).
    pub(crate) async fn user(&self, name: &str) -> Session {
        self.client
            .dev_login(Some(&format!("{name}@test.example")))
            .await
            .unwrap()
    }

    /// An open socket of `session`, past `connection_established`.
    pub(crate) async fn connect(&self, session: &Session) -> Socket {
        self.client
            .connect_established(&session.access_token, None)
            .await
            .unwrap()
    }

    /// `POST /api/workload-events` with `body` as `content_type`: the status and the JSON answer.
    pub(crate) async fn upload(
        &self,
        token: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let response = self
            .client
            .http()
            .post(format!("{}/api/workload-events", self.client.base()))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET /metrics`, the text.
    pub(crate) async fn metrics(&self) -> String {
        self.client.metrics().await.unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub(crate) async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.server {
            Served::Task(task) => task.await.unwrap(),
            Served::Process(mut child, _) => {
                let pid = child.id().expect("a running process").to_string();
                let sent = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .await?;
                anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
                let status = child.wait().await?;
                anyhow::ensure!(status.success(), "the node exited with {status}");
                Ok(())
            }
        }
    }

    /// Waits for the next line a node's process logs that holds each of `parts` (at most 30 s),
    /// and returns it.
    pub(crate) async fn logged(&self, parts: &[&str]) -> String {
        let Served::Process(_, log) = &self.server else {
            panic!("only a node in a process of its own is read");
        };
        let mut log = log.lock().await;
        let wait = async {
            loop {
                let line = log.recv().await.expect("the node logs on");
                if parts.iter().all(|part| line.contains(part)) {
                    return line;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("the node logged no line with {parts:?}"))
    }

    /// `kill -9` of a node's process, and waits for it to be gone.
    pub(crate) async fn kill(&mut self) {
        let Served::Process(child, _) = &mut self.server else {
            panic!("only a node in a process of its own can be killed");
        };
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
}

pub(crate) fn message(text: &str, thread: Option<&ThreadId>, client_id: Option<&str>) -> ClientFrame {
    ClientFrame::UserMessage(UserMessage {
        text: text.into(),
        thread_id: thread.cloned(),
        client_message_id: client_id.map(Into::into),
    })
}

/// The next frame that is not a heartbeat.
pub(crate) async fn next(socket: &mut Socket) -> ServerFrame {
    loop {
        match socket.next_frame().await.unwrap() {
            Some(ServerFrame::Control(c)) if matches!(c.body, Control::Heartbeat(_)) => continue,
            Some(frame) => return frame,
            None => panic!("the socket closed"),
        }
    }
}

/// Reads until the server's close frame and returns it.
pub(crate) async fn close_frame(socket: &mut Socket) -> CloseFrame {
    loop {
        match socket.next_raw().await {
            Some(Ok(WsMessage::Close(frame))) => return frame.expect("a close frame with a code"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Lets `duration` pass on the (paused) clock while reading the socket as a live client does,
/// so pings are answered; returns the frames read. Reads in steps of 2 s: time jumps to the
/// next timer whenever the runtime is idle, and the short steps bound each jump.
pub(crate) async fn read_for(socket: &mut Socket, duration: std::time::Duration) -> Vec<ServerFrame> {
    let until = tokio::time::Instant::now() + duration;
    let mut frames = Vec::new();
    while tokio::time::Instant::now() < until {
        let step = (until - tokio::time::Instant::now()).min(std::time::Duration::from_secs(2));
        if let Ok(frame) = tokio::time::timeout(step, socket.next_frame()).await {
            frames.push(frame.unwrap().expect("the socket stayed open"));
        }
    }
    frames
}

/// The next `message_accepted`, skipping events of runs already going.
pub(crate) async fn accepted(socket: &mut Socket) -> MessageAccepted {
    loop {
        match next(socket).await {
            ServerFrame::Control(c) => match c.body {
                Control::MessageAccepted(accepted) => return accepted,
                other => panic!("expected message_accepted, got {other:?}"),
            },
            ServerFrame::Event(_) => continue,
        }
    }
}

pub(crate) async fn error(socket: &mut Socket) -> ErrorPayload {
    loop {
        match next(socket).await {
            ServerFrame::Control(c) => match c.body {
                Control::Error(error) => return error,
                other => panic!("expected an error, got {other:?}"),
            },
            ServerFrame::Event(_) => continue,
        }
    }
}

/// Sends a message and returns its acceptance.
pub(crate) async fn send(socket: &mut Socket, text: &str) -> MessageAccepted {
    socket.send(&message(text, None, None)).await.unwrap();
    accepted(socket).await
}

/// Reads events until the final event of `run` and returns that run's events (others are
/// dropped, but all are checked to belong to the expected user's stream by the caller).
pub(crate) async fn run_events(socket: &mut Socket, run: &RunId) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        if let ServerFrame::Event(event) = next(socket).await
            && &event.run_id == run
        {
            let done = event.is_final();
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// Every event frame until the final event of `run`, of any run.
pub(crate) async fn events_until_final(socket: &mut Socket, run: &RunId) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        if let ServerFrame::Event(event) = next(socket).await {
            let done = event.is_final() && &event.run_id == run;
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

pub(crate) fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq.get()).collect()
}

pub(crate) fn assert_code(error: &ErrorPayload, code: ErrorCode) {
    assert_eq!(error.code, code, "{}", error.message);
}

/// The test app's stores, with a switch that makes every call hang (a store that stopped
/// answering) until it is switched back: then the calls waiting go on.
pub(crate) struct HangingStore {
    inner: Arc<dyn Store>,
    analytics: Arc<dyn AnalyticsStore>,
    hang: tokio::sync::watch::Sender<bool>,
    /// The next message is stored, but its answer is lost: the caller gets this error instead
    /// (its deadline passed, or its connection was cut).
    lose_accept_answer: std::sync::Mutex<Option<StoreError>>,
}

impl HangingStore {
    fn new(inner: Arc<dyn Store>, analytics: Arc<dyn AnalyticsStore>) -> Self {
        Self {
            inner,
            analytics,
            hang: tokio::sync::watch::Sender::new(false),
            lose_accept_answer: std::sync::Mutex::new(None),
        }
    }

    /// Stores the next message but answers as if the store's deadline had passed first.
    pub(crate) fn lose_next_accept_answer(&self) {
        *self.lose_accept_answer.lock().unwrap() = Some(StoreError::TimedOut {
            tier: self.inner.tier(),
            after: std::time::Duration::from_secs(2),
        });
    }

    /// Stores the next message but answers as if its connection had been cut before the answer.
    pub(crate) fn cut_next_accept_answer(&self) {
        *self.lose_accept_answer.lock().unwrap() = Some(StoreError::Unavailable {
            tier: self.inner.tier(),
            reason: "the connection to the store failed: connection closed".to_owned(),
        });
    }

    pub(crate) fn set_hanging(&self, hang: bool) {
        self.hang.send_replace(hang);
    }

    async fn gate(&self) {
        let mut hang = self.hang.subscribe();
        let _ = hang.wait_for(|hang| !*hang).await;
    }
}

#[async_trait]
impl Store for HangingStore {
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        self.gate().await;
        self.inner.create_user(email, password_hash).await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.gate().await;
        self.inner.user_by_email(email).await
    }
    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.gate().await;
        self.inner.user_by_id(id).await
    }
    async fn create_thread(&self, user: &UserId, title: &str) -> Result<Thread, StoreError> {
        self.gate().await;
        self.inner.create_thread(user, title).await
    }
    async fn threads(&self, user: &UserId) -> Result<Vec<Thread>, StoreError> {
        self.gate().await;
        self.inner.threads(user).await
    }
    async fn thread(&self, user: &UserId, id: &ThreadId) -> Result<Option<Thread>, StoreError> {
        self.gate().await;
        self.inner.thread(user, id).await
    }
    async fn delete_thread(&self, user: &UserId, id: &ThreadId) -> Result<bool, StoreError> {
        self.gate().await;
        self.inner.delete_thread(user, id).await
    }
    async fn messages(&self, user: &UserId, thread: &ThreadId) -> Result<Vec<Message>, StoreError> {
        self.gate().await;
        self.inner.messages(user, thread).await
    }
    async fn accept_message(&self, message: NewMessage) -> Result<Accepted, StoreError> {
        self.gate().await;
        let accepted = self.inner.accept_message(message).await;
        if let Some(lost) = self.lose_accept_answer.lock().unwrap().take() {
            return Err(lost);
        }
        accepted
    }
    async fn discard_run(&self, user: &UserId, run: &RunId, created_thread: bool) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.discard_run(user, run, created_thread).await
    }
    async fn run(&self, user: &UserId, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        self.gate().await;
        self.inner.run(user, id).await
    }
    async fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.gate().await;
        self.inner.running_runs().await
    }
    async fn append_events(&self, entries: &[LogEntry]) -> Result<Vec<StoredEvent>, StoreError> {
        self.gate().await;
        self.inner.append_events(entries).await
    }
    async fn events_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.gate().await;
        self.inner.events_after(user, after, limit).await
    }
    async fn run_events(&self, user: &UserId, run: &RunId) -> Result<Vec<Event>, StoreError> {
        self.gate().await;
        self.inner.run_events(user, run).await
    }
    async fn last_seq(&self, user: &UserId) -> Result<Seq, StoreError> {
        self.gate().await;
        self.inner.last_seq(user).await
    }
    async fn start_refresh_family(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        first: &RefreshTokenId,
    ) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.start_refresh_family(user, family, first).await
    }
    async fn rotate_refresh_token(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        presented: &RefreshTokenId,
        next: &RefreshTokenId,
        retry_within: std::time::Duration,
    ) -> Result<Rotation, StoreError> {
        self.gate().await;
        self.inner
            .rotate_refresh_token(user, family, presented, next, retry_within)
            .await
    }
    async fn message_by_client_id(
        &self,
        user: &UserId,
        client_message_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        self.gate().await;
        self.inner.message_by_client_id(user, client_message_id).await
    }
    async fn revoke_refresh_family(&self, user: &UserId, family: &RefreshFamilyId) -> Result<bool, StoreError> {
        self.gate().await;
        self.inner.revoke_refresh_family(user, family).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.ping().await
    }
    fn tier(&self) -> Tier {
        self.inner.tier()
    }
    fn observe(&self, observer: &Arc<dyn switchboard_store::TierObserver>) {
        self.inner.observe(observer);
    }
}

#[async_trait]
impl AnalyticsStore for HangingStore {
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        self.gate().await;
        self.analytics.insert_workload_events(user, events).await
    }
    async fn insert_workload_upload(
        &self,
        user: &UserId,
        key: &switchboard_store::UploadKey,
        events: Vec<WorkloadEvent>,
    ) -> Result<switchboard_store::Upload, StoreError> {
        self.gate().await;
        self.analytics.insert_workload_upload(user, key, events).await
    }
    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError> {
        self.gate().await;
        self.analytics.workload_event_count(user).await
    }
    async fn workload_summary(&self, user: &UserId, range: TimeRange) -> Result<Summary, StoreError> {
        self.gate().await;
        self.analytics.workload_summary(user, range).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.gate().await;
        self.analytics.ping().await
    }
    fn tier(&self) -> Tier {
        self.analytics.tier()
    }
    fn observe(&self, observer: &Arc<dyn switchboard_store::TierObserver>) {
        self.analytics.observe(observer);
    }
}

/// `POST /api/workload-events` with `key` as its `Idempotency-Key` header(s): the status, the
/// `Idempotency-Replayed` header and the JSON answer.
pub(crate) async fn upload_with_keys(
    app: &crate::support::TestApp,
    token: &str,
    keys: &[&[u8]],
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = app
        .client
        .http()
        .post(format!("{}/api/workload-events", app.client.base()))
        .bearer_auth(token)
        .header("content-type", content_type);
    for key in keys {
        request = request.header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(key).unwrap(),
        );
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotency-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, response.json().await.unwrap())
}
