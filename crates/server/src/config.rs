//! The server's configuration: one typed tree. Each key has a default, may be set in a TOML file
//! (`--config FILE`), overridden by a `SWITCHBOARD_*` environment variable, and overridden again
//! on the command line. Everything is validated at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use switchboard_engine::EngineConfig;
use switchboard_llm::ApiKey;

/// The settings of `switchboard serve`, as given on the command line or in the environment.
/// `None` means "not given here": the file or the default decides.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the keys below (in snake_case).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the database and the generated JWT secret (created if missing).
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Enables `POST /api/auth/dev-login` and `POST /api/dev/demo-data`.
    #[arg(long, env = "SWITCHBOARD_DEV", num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// Idle time after which the server sends a heartbeat and a ping.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Silence after a heartbeat after which the connection is closed.
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT_MS")]
    pub pong_timeout_ms: Option<u64>,
    /// Deadline of a whole run.
    #[arg(long, env = "SWITCHBOARD_RUN_TIMEOUT_MS")]
    pub run_timeout_ms: Option<u64>,
    /// Deadline of one agent.
    #[arg(long, env = "SWITCHBOARD_AGENT_TIMEOUT_MS")]
    pub agent_timeout_ms: Option<u64>,
    /// Deadline of one tool call.
    #[arg(long, env = "SWITCHBOARD_TOOL_TIMEOUT_MS")]
    pub tool_timeout_ms: Option<u64>,
    /// Deadline of one model call.
    #[arg(long, env = "SWITCHBOARD_MODEL_TIMEOUT_MS")]
    pub model_timeout_ms: Option<u64>,
    /// Latency the offline model adds to each call (demos, load tests).
    #[arg(long, env = "SWITCHBOARD_MODEL_LATENCY_MS")]
    pub model_latency_ms: Option<u64>,
    /// How long active runs may finish after SIGTERM before they are interrupted.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Open WebSocket connections and SSE streams one user may have, together.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// Open TCP connections of all clients together; past it new ones are answered 503 and
    /// closed. Default: 50 000, or three quarters of the open-file limit when that is lower.
    #[arg(long, env = "SWITCHBOARD_MAX_OPEN_CONNECTIONS")]
    pub max_open_connections: Option<usize>,
    /// Time a client has to send a request's headers (also the WebSocket handshake), and the
    /// longest a kept-alive connection may sit idle between requests.
    #[arg(long, env = "SWITCHBOARD_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Time a client has to send a request's whole body (then 408, and nothing of it is used).
    #[arg(long, env = "SWITCHBOARD_REQUEST_BODY_TIMEOUT_MS")]
    pub request_body_timeout_ms: Option<u64>,
    /// Failed logins for one email, or from one client address, after which further attempts
    /// are refused (429) until the window has passed.
    #[arg(long, env = "SWITCHBOARD_LOGIN_MAX_FAILURES")]
    pub login_max_failures: Option<u32>,
    /// The window in which failed logins are counted.
    #[arg(long, env = "SWITCHBOARD_LOGIN_FAILURE_WINDOW_SECS")]
    pub login_failure_window_secs: Option<u64>,
    /// Active runs one user may have.
    #[arg(long, env = "SWITCHBOARD_MAX_ACTIVE_RUNS_PER_USER")]
    pub max_active_runs_per_user: Option<usize>,
    /// Active runs of all users together; past it messages are refused with `server_busy`.
    #[arg(long, env = "SWITCHBOARD_MAX_ACTIVE_RUNS")]
    pub max_active_runs: Option<usize>,
    /// `user_message` frames one user may send per minute.
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT_PER_MINUTE")]
    pub rate_limit_per_minute: Option<u32>,
    /// Largest client frame, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Longest message text, in characters.
    #[arg(long, env = "SWITCHBOARD_MAX_TEXT_CHARS")]
    pub max_text_chars: Option<usize>,
    /// Lifetime of a WebSocket ticket.
    #[arg(long, env = "SWITCHBOARD_TICKET_TTL_SECS")]
    pub ticket_ttl_secs: Option<u64>,
    /// Lifetime of an access token.
    #[arg(long, env = "SWITCHBOARD_ACCESS_TOKEN_TTL_SECS")]
    pub access_token_ttl_secs: Option<u64>,
    /// Lifetime of a refresh token.
    #[arg(long, env = "SWITCHBOARD_REFRESH_TOKEN_TTL_SECS")]
    pub refresh_token_ttl_secs: Option<u64>,
    /// How long after a refresh the refresh token it spent may be presented again (a retry of
    /// a refresh whose answer was lost) and buy the same sign-in's newest token; 0: never.
    #[arg(long, env = "SWITCHBOARD_REFRESH_RETRY_SECS")]
    pub refresh_retry_secs: Option<u64>,
    /// Log filter (`info`, `switchboard=debug`, ...).
    #[arg(long, env = "SWITCHBOARD_LOG")]
    pub log: Option<String>,
    /// A price table in the format of `crates/agents/data/prices.toml`, instead of the shipped one.
    #[arg(long, env = "SWITCHBOARD_PRICE_TABLE")]
    pub price_table: Option<PathBuf>,
    /// An OpenAI-compatible API to use as the language model (e.g. `https://api.openai.com/v1`);
    /// without it the offline model answers.
    #[arg(long, env = "SWITCHBOARD_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// The API key for `--llm-base-url`.
    #[arg(long, env = "SWITCHBOARD_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// The model to ask at `--llm-base-url` (e.g. `gpt-4o-mini`).
    #[arg(long, env = "SWITCHBOARD_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Retries of a model call answered with 429 or 5xx.
    #[arg(long, env = "SWITCHBOARD_LLM_MAX_RETRIES")]
    pub llm_max_retries: Option<u32>,
    /// Keeps users, threads, messages, runs and the event log on PostgreSQL
    /// (`postgres://user:password@host:port/database`) instead of the embedded SQLite.
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections to PostgreSQL at most.
    #[arg(long, env = "SWITCHBOARD_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<usize>,
    /// Deadline of one PostgreSQL operation (waiting for a connection included).
    #[arg(long, env = "SWITCHBOARD_DATABASE_TIMEOUT_MS")]
    pub database_timeout_ms: Option<u64>,
    /// Keeps the uploaded usage data on ClickHouse's HTTP interface
    /// (`http://host:8123/?database=NAME`) instead of the embedded SQLite.
    #[arg(long, env = "SWITCHBOARD_ANALYTICS_URL", hide_env_values = true)]
    pub analytics_url: Option<String>,
    /// Deadline of one ClickHouse query (an upload's insert has ten times as long).
    #[arg(long, env = "SWITCHBOARD_ANALYTICS_TIMEOUT_MS")]
    pub analytics_timeout_ms: Option<u64>,
    /// Makes this server one node of several on one PostgreSQL database, sharing events,
    /// tickets, limits and stops through Redis (`redis://[:password@]host:port[/db]`).
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Deadline of one Redis operation.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// This node's name among the nodes (letters, digits, `.`, `_`, `-`; at most 64); generated
    /// when not given, and logged at start-up.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,
    /// Sends each run's trace (the run, its agents, tool and model calls) over OTLP/HTTP to
    /// this collector (e.g. `http://localhost:4318`; spans go to its `/v1/traces`); without it
    /// no traces are exported.
    #[arg(long, env = "SWITCHBOARD_OTLP_ENDPOINT", hide_env_values = true)]
    pub otlp_endpoint: Option<String>,
}

/// The same keys, read from the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    dev: Option<bool>,
    heartbeat_interval_ms: Option<u64>,
    pong_timeout_ms: Option<u64>,
    run_timeout_ms: Option<u64>,
    agent_timeout_ms: Option<u64>,
    tool_timeout_ms: Option<u64>,
    model_timeout_ms: Option<u64>,
    model_latency_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    max_connections_per_user: Option<usize>,
    max_open_connections: Option<usize>,
    header_timeout_ms: Option<u64>,
    request_body_timeout_ms: Option<u64>,
    login_max_failures: Option<u32>,
    login_failure_window_secs: Option<u64>,
    max_active_runs_per_user: Option<usize>,
    max_active_runs: Option<usize>,
    rate_limit_per_minute: Option<u32>,
    max_frame_bytes: Option<usize>,
    max_text_chars: Option<usize>,
    ticket_ttl_secs: Option<u64>,
    access_token_ttl_secs: Option<u64>,
    refresh_token_ttl_secs: Option<u64>,
    refresh_retry_secs: Option<u64>,
    log: Option<String>,
    price_table: Option<PathBuf>,
    llm_base_url: Option<String>,
    llm_api_key: Option<String>,
    llm_model: Option<String>,
    llm_max_retries: Option<u32>,
    database_url: Option<String>,
    database_max_connections: Option<usize>,
    database_timeout_ms: Option<u64>,
    analytics_url: Option<String>,
    analytics_timeout_ms: Option<u64>,
    redis_url: Option<String>,
    redis_timeout_ms: Option<u64>,
    node_id: Option<String>,
    otlp_endpoint: Option<String>,
}

/// The server's settings, complete and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the database and the JWT secret.
    pub data_dir: PathBuf,
    /// Dev mode: `POST /api/auth/dev-login` and `POST /api/dev/demo-data` work.
    pub dev: bool,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Pong timeout.
    pub pong_timeout: Duration,
    /// Engine deadlines and limits.
    pub engine: EngineConfig,
    /// Latency of the offline model.
    pub model_latency: Duration,
    /// Grace period at shutdown.
    pub shutdown_grace: Duration,
    /// Sockets and SSE streams per user, together.
    pub max_connections_per_user: usize,
    /// Open TCP connections of all clients; `None`: 50 000, or three quarters of the open-file
    /// limit when that is lower.
    pub max_open_connections: Option<usize>,
    /// Deadline for a request's headers (and the WebSocket handshake), and for an idle
    /// kept-alive connection.
    pub header_timeout: Duration,
    /// Deadline for a request's whole body.
    pub request_body_timeout: Duration,
    /// Failed logins per email or client address within the window before logins are refused.
    pub login_max_failures: u32,
    /// The window of `login_max_failures`.
    pub login_failure_window: Duration,
    /// Messages per user per minute.
    pub rate_limit_per_minute: u32,
    /// Largest client frame.
    pub max_frame_bytes: usize,
    /// Longest message text.
    pub max_text_chars: usize,
    /// Ticket lifetime.
    pub ticket_ttl: Duration,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_token_ttl: Duration,
    /// How long a spent refresh token may be presented again to buy its sign-in's newest
    /// token (a retry after a lost answer); zero: a spent token revokes its sign-in at once.
    pub refresh_retry: Duration,
    /// The JWT secret from `SWITCHBOARD_JWT_SECRET`; otherwise generated once into the data dir.
    pub jwt_secret: Option<String>,
    /// Log filter.
    pub log: String,
    /// The price table file; `None`: the shipped table.
    pub price_table: Option<PathBuf>,
    /// The OpenAI-compatible model, when one is configured; `None`: the offline model.
    pub llm: Option<LlmConfig>,
    /// PostgreSQL, when the store is kept there; `None`: the embedded SQLite in the data dir.
    pub database_url: Option<TierUrl>,
    /// Connections to PostgreSQL at most.
    pub database_max_connections: usize,
    /// Deadline of one PostgreSQL operation.
    pub database_timeout: Duration,
    /// ClickHouse, when the usage data is kept there; `None`: the embedded SQLite.
    pub analytics_url: Option<TierUrl>,
    /// Deadline of one ClickHouse query.
    pub analytics_timeout: Duration,
    /// Redis, when this server is one node of several; `None`: a single node.
    pub redis_url: Option<TierUrl>,
    /// Deadline of one Redis operation.
    pub redis_timeout: Duration,
    /// This node's name, when given; `None`: generated at start-up.
    pub node_id: Option<String>,
    /// The OTLP/HTTP collector traces are exported to; `None`: no traces are exported.
    pub otlp_endpoint: Option<TierUrl>,
}

/// The address of a tier (PostgreSQL, ClickHouse, Redis) or of the trace collector, credentials included. Printed (`Display`,
/// `Debug`) without them: a password in the userinfo or in a `password` query parameter is
/// shown as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct TierUrl {
    url: url::Url,
}

impl TierUrl {
    /// Parses `text` for the config key `key`, which needs one of `schemes` and a host.
    pub(crate) fn parse(key: &str, text: &str, schemes: &[&str]) -> anyhow::Result<Self> {
        // A URL that fails here is never echoed: where it cannot be read, nothing says which
        // part is the password.
        let expected = schemes
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(" or ");
        let url = url::Url::parse(text).map_err(|error| {
            anyhow::anyhow!("invalid setting `{key}`: not a URL ({error}); expected {expected}host:port/…")
        })?;
        if !schemes.contains(&url.scheme()) || url.cannot_be_a_base() {
            bail!(
                "invalid setting `{key}`: not a {expected} URL (it starts with `{}:`)",
                url.scheme()
            );
        }
        if url.host_str().is_none_or(str::is_empty) {
            bail!("invalid setting `{key}`: the URL names no host");
        }
        // `user:p@ss/word@host` reads as host `ss`: an `@` or `/` in a password must be escaped.
        if url.path().contains('@') || url.query().is_some_and(|q| q.contains('@') && !q.contains("password=")) {
            bail!(
                "invalid setting `{key}`: the URL has an `@` after its host; write an `@` or `/` in the user \
                 or password as %40 or %2F"
            );
        }
        Ok(Self { url })
    }

    /// The URL with its credentials, for the tier's client only.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }
}

impl std::fmt::Display for TierUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        if shown.query().is_some() {
            let pairs: Vec<(String, String)> = shown
                .query_pairs()
                .map(|(k, v)| {
                    let secret = matches!(k.as_ref(), "password" | "key" | "sslpassword");
                    (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
                })
                .collect();
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        f.write_str(shown.as_str())
    }
}

impl std::fmt::Debug for TierUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TierUrl({self})")
    }
}

/// An OpenAI-compatible model to use instead of the offline one (which still answers when it fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmConfig {
    /// The API's root, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The API key.
    pub api_key: Option<ApiKey>,
    /// The model's name.
    pub model: String,
    /// Retries on 429 and 5xx.
    pub max_retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./switchboard-data"),
            dev: false,
            heartbeat_interval: Duration::from_millis(25_000),
            pong_timeout: Duration::from_millis(10_000),
            engine: EngineConfig::default(),
            model_latency: Duration::ZERO,
            shutdown_grace: Duration::from_millis(10_000),
            max_connections_per_user: 10,
            max_open_connections: None,
            header_timeout: Duration::from_millis(10_000),
            request_body_timeout: Duration::from_millis(30_000),
            login_max_failures: 10,
            login_failure_window: Duration::from_secs(15 * 60),
            rate_limit_per_minute: 60,
            max_frame_bytes: 64 * 1024,
            max_text_chars: 16_000,
            ticket_ttl: Duration::from_secs(60),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_retry: Duration::from_secs(30),
            jwt_secret: None,
            log: "info".to_owned(),
            price_table: None,
            llm: None,
            database_url: None,
            database_max_connections: 16,
            database_timeout: Duration::from_millis(2_000),
            analytics_url: None,
            analytics_timeout: Duration::from_millis(5_000),
            redis_url: None,
            redis_timeout: Duration::from_millis(500),
            node_id: None,
            otlp_endpoint: None,
        }
    }
}

impl Config {
    /// Defaults < file < environment < command line (clap has already put the environment
    /// under the command line in `args`), then validation.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut config = Config::default();
        macro_rules! layer {
            ($key:ident) => {
                if let Some(value) = args.$key.clone().or(file.$key.clone()) {
                    config.$key = value;
                }
            };
            ($key:ident, $field:expr, $convert:expr) => {
                if let Some(value) = args.$key.clone().or(file.$key.clone()) {
                    $field = $convert(value);
                }
            };
        }
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        layer!(listen);
        layer!(data_dir);
        layer!(dev);
        layer!(max_connections_per_user);
        layer!(login_max_failures);
        config.max_open_connections = args.max_open_connections.or(file.max_open_connections);
        layer!(header_timeout_ms, config.header_timeout, ms);
        layer!(request_body_timeout_ms, config.request_body_timeout, ms);
        layer!(login_failure_window_secs, config.login_failure_window, secs);
        layer!(rate_limit_per_minute);
        layer!(max_frame_bytes);
        layer!(max_text_chars);
        layer!(log);
        config.price_table = args.price_table.clone().or(file.price_table.clone());
        layer!(heartbeat_interval_ms, config.heartbeat_interval, ms);
        layer!(pong_timeout_ms, config.pong_timeout, ms);
        layer!(run_timeout_ms, config.engine.run_timeout, ms);
        layer!(agent_timeout_ms, config.engine.agent_timeout, ms);
        layer!(tool_timeout_ms, config.engine.tool_timeout, ms);
        layer!(model_timeout_ms, config.engine.model_timeout, ms);
        layer!(model_latency_ms, config.model_latency, ms);
        layer!(shutdown_grace_ms, config.shutdown_grace, ms);
        layer!(max_active_runs_per_user, config.engine.max_active_runs_per_user, |v| v);
        layer!(max_active_runs, config.engine.max_active_runs, |v| v);
        layer!(ticket_ttl_secs, config.ticket_ttl, secs);
        layer!(access_token_ttl_secs, config.access_token_ttl, secs);
        layer!(refresh_token_ttl_secs, config.refresh_token_ttl, secs);
        layer!(refresh_retry_secs, config.refresh_retry, secs);
        let llm = |key: &Option<String>, file: &Option<String>| key.clone().or(file.clone()).filter(|v| !v.is_empty());
        let (base_url, model) = (
            llm(&args.llm_base_url, &file.llm_base_url),
            llm(&args.llm_model, &file.llm_model),
        );
        let api_key = llm(&args.llm_api_key, &file.llm_api_key);
        config.llm = match (base_url, model) {
            (Some(base_url), Some(model)) => Some(LlmConfig {
                base_url,
                api_key: api_key.map(ApiKey::new),
                model,
                max_retries: args.llm_max_retries.or(file.llm_max_retries).unwrap_or(2),
            }),
            (None, None) if api_key.is_none() => None,
            (Some(_), None) => bail!("`llm_base_url` is set but `llm_model` is not: name the model to ask"),
            _ => bail!("`llm_model` and `llm_api_key` need `llm_base_url`: the OpenAI-compatible API to ask"),
        };
        let url = |key: &Option<String>, file: &Option<String>| key.clone().or(file.clone()).filter(|v| !v.is_empty());
        config.database_url = url(&args.database_url, &file.database_url)
            .map(|text| TierUrl::parse("database_url", &text, &["postgres", "postgresql"]))
            .transpose()?;
        config.analytics_url = url(&args.analytics_url, &file.analytics_url)
            .map(|text| TierUrl::parse("analytics_url", &text, &["http", "https"]))
            .transpose()?;
        layer!(database_max_connections);
        layer!(database_timeout_ms, config.database_timeout, ms);
        layer!(analytics_timeout_ms, config.analytics_timeout, ms);
        config.redis_url = url(&args.redis_url, &file.redis_url)
            .map(|text| TierUrl::parse("redis_url", &text, &["redis", "rediss"]))
            .transpose()?;
        layer!(redis_timeout_ms, config.redis_timeout, ms);
        config.node_id = url(&args.node_id, &file.node_id);
        config.otlp_endpoint = url(&args.otlp_endpoint, &file.otlp_endpoint)
            .map(|text| TierUrl::parse("otlp_endpoint", &text, &["http", "https"]))
            .transpose()?;
        config.jwt_secret = std::env::var("SWITCHBOARD_JWT_SECRET").ok().filter(|s| !s.is_empty());
        config.validate()?;
        Ok(config)
    }

    /// Checks that every setting can work.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.engine.validate()?;
        let positive = [
            ("heartbeat_interval_ms", self.heartbeat_interval.is_zero()),
            ("pong_timeout_ms", self.pong_timeout.is_zero()),
            ("max_connections_per_user", self.max_connections_per_user == 0),
            ("max_open_connections", self.max_open_connections == Some(0)),
            ("header_timeout_ms", self.header_timeout.is_zero()),
            ("request_body_timeout_ms", self.request_body_timeout.is_zero()),
            ("login_max_failures", self.login_max_failures == 0),
            ("login_failure_window_secs", self.login_failure_window.is_zero()),
            ("rate_limit_per_minute", self.rate_limit_per_minute == 0),
            ("max_text_chars", self.max_text_chars == 0),
            ("ticket_ttl_secs", self.ticket_ttl.is_zero()),
            ("access_token_ttl_secs", self.access_token_ttl.is_zero()),
            ("refresh_token_ttl_secs", self.refresh_token_ttl.is_zero()),
            ("database_max_connections", self.database_max_connections == 0),
            ("database_timeout_ms", self.database_timeout.is_zero()),
            ("analytics_timeout_ms", self.analytics_timeout.is_zero()),
            ("redis_timeout_ms", self.redis_timeout.is_zero()),
        ];
        for (key, bad) in positive {
            if bad {
                bail!("invalid setting `{key}`: must be greater than zero");
            }
        }
        if self.max_frame_bytes < 1024 {
            bail!("invalid setting `max_frame_bytes`: must be at least 1024");
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < 32
        {
            bail!("SWITCHBOARD_JWT_SECRET must be at least 32 characters long");
        }
        if let Some(node) = &self.node_id
            && (node.is_empty()
                || node.len() > 64
                || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            bail!(
                "invalid setting `node_id`: use 1 to 64 letters, digits, `.`, `_` or `-` (got {} characters)",
                node.chars().count()
            );
        }
        if self.redis_url.is_some() {
            if self.database_url.is_none() {
                bail!(
                    "`redis_url` makes this server one node of several, and the nodes share their store: \
                     set `database_url` to their PostgreSQL database too"
                );
            }
            if self.jwt_secret.is_none() {
                bail!(
                    "`redis_url` makes this server one node of several, and a token signed by one must be \
                     good on all: set SWITCHBOARD_JWT_SECRET to the same secret on every node"
                );
            }
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm_args(base_url: Option<&str>, model: Option<&str>, key: Option<&str>) -> ServeArgs {
        ServeArgs {
            llm_base_url: base_url.map(Into::into),
            llm_model: model.map(Into::into),
            llm_api_key: key.map(Into::into),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn tier_urls_are_checked_and_never_printed_with_their_credentials() {
        let args = ServeArgs {
            database_url: Some("postgres://app:s3cret@db.internal:5432/switchboard".into()),
            analytics_url: Some("http://ch.internal:8123/?database=usage&user=app&password=s3cret".into()),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        let (database, analytics) = (
            config.database_url.clone().unwrap(),
            config.analytics_url.clone().unwrap(),
        );
        assert_eq!(database.to_string(), "postgres://app:***@db.internal:5432/switchboard");
        assert_eq!(
            analytics.to_string(),
            "http://ch.internal:8123/?database=usage&user=app&password=***"
        );
        assert!(database.expose().contains("s3cret") && analytics.expose().contains("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
        let defaults = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!((defaults.database_url, defaults.analytics_url), (None, None));

        let bad = |database_url: Option<&str>, analytics_url: Option<&str>| {
            let args = ServeArgs {
                database_url: database_url.map(Into::into),
                analytics_url: analytics_url.map(Into::into),
                ..ServeArgs::default()
            };
            Config::load(&args).unwrap_err().to_string()
        };
        let cases = [
            (
                bad(Some("mysql://u:pw@h/db"), None),
                "invalid setting `database_url`: not a postgres:// or postgresql:// URL (it starts with `mysql:`)",
            ),
            (
                bad(Some("u:pw@db.internal:5432/db"), None),
                "invalid setting `database_url`: not a postgres:// or postgresql:// URL (it starts with `u:`)",
            ),
            (
                bad(Some("postgres://u:p@w/x@db.internal/db"), None),
                "invalid setting `database_url`: the URL has an `@` after its host; write an `@` or `/` in the \
                 user or password as %40 or %2F",
            ),
            (
                bad(Some("postgres:///db"), None),
                "invalid setting `database_url`: the URL names no host",
            ),
            (
                bad(Some("not a url"), None),
                "invalid setting `database_url`: not a URL (relative URL without a base); expected postgres:// or \
                 postgresql://host:port/…",
            ),
            (
                bad(None, Some("tcp://ch:9000")),
                "invalid setting `analytics_url`: not a http:// or https:// URL (it starts with `tcp:`)",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error, expected);
            assert!(!error.contains("pw") && !error.contains("p@w"), "{error}");
        }
    }

    #[test]
    fn the_otlp_endpoint_comes_from_the_command_line_over_the_file_and_must_be_http() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("switchboard.toml");
        std::fs::write(&file, "otlp_endpoint = \"http://collector.internal:4318\"\n").unwrap();
        let endpoint = |args: ServeArgs| Config::load(&args).unwrap().otlp_endpoint.map(|url| url.to_string());
        assert_eq!(endpoint(ServeArgs::default()), None);
        let from_file = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(endpoint(from_file), Some("http://collector.internal:4318/".to_owned()));
        let from_flag = ServeArgs {
            config: Some(file),
            otlp_endpoint: Some("https://otel.example:4318".into()),
            ..ServeArgs::default()
        };
        assert_eq!(endpoint(from_flag), Some("https://otel.example:4318/".to_owned()));
        let empty = ServeArgs {
            otlp_endpoint: Some(String::new()),
            ..ServeArgs::default()
        };
        assert_eq!(endpoint(empty), None);

        for (given, error) in [
            (
                "grpc://collector:4317",
                "invalid setting `otlp_endpoint`: not a http:// or https:// URL (it starts with `grpc:`)",
            ),
            (
                "localhost:4318",
                "invalid setting `otlp_endpoint`: not a http:// or https:// URL (it starts with `localhost:`)",
            ),
            (
                "collector",
                "invalid setting `otlp_endpoint`: not a URL (relative URL without a base); expected http:// or \
                 https://host:port/…",
            ),
        ] {
            let args = ServeArgs {
                otlp_endpoint: Some(given.into()),
                ..ServeArgs::default()
            };
            assert_eq!(Config::load(&args).unwrap_err().to_string(), error, "{given}");
        }
    }

    #[test]
    fn an_llm_needs_its_url_and_its_model_and_its_key_is_never_printed() {
        let config = Config::load(&llm_args(
            Some("https://api.example/v1"),
            Some("gpt-4o-mini"),
            Some("sk-x"),
        ))
        .unwrap();
        let llm = config.llm.clone().unwrap();
        assert_eq!(
            (llm.base_url.as_str(), llm.model.as_str(), llm.max_retries),
            ("https://api.example/v1", "gpt-4o-mini", 2)
        );
        assert_eq!(llm.api_key.as_ref().map(ApiKey::expose), Some("sk-x"));
        assert!(!format!("{config:?}").contains("sk-x"));
        assert_eq!(Config::load(&llm_args(None, None, None)).unwrap().llm, None);
        for (args, error) in [
            (
                llm_args(Some("https://api.example/v1"), None, None),
                "`llm_base_url` is set but `llm_model` is not: name the model to ask",
            ),
            (
                llm_args(None, Some("gpt-4o-mini"), None),
                "`llm_model` and `llm_api_key` need `llm_base_url`: the OpenAI-compatible API to ask",
            ),
            (
                llm_args(None, None, Some("sk-x")),
                "`llm_model` and `llm_api_key` need `llm_base_url`: the OpenAI-compatible API to ask",
            ),
        ] {
            assert_eq!(Config::load(&args).unwrap_err().to_string(), error);
        }
    }
}
