//! Building and running the server: `Application::build(config)`, the bound address, and
//! `run_until_stopped()`, which ends on SIGTERM, Ctrl-C or the stop handle, gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use switchboard_agents::{OfflineModel, PriceTable};
use switchboard_clickhouse::{ClickHouseAnalytics, ClickHouseOptions};
use switchboard_engine::{Engine, Model};
use switchboard_llm::{OpenAiConfig, OpenAiModel, Price};
use switchboard_postgres::{PgOptions, PgStore, ServerLock, Serving, hold_server_lock};
use switchboard_redis::{Incoming, Redis, RedisOptions, Subscriber};
use switchboard_store::{AnalyticsStore, SqliteAnalytics, SqliteStore, Store, Tier, TierObserver};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::auth::{Passwords, Tickets, Tokens, load_secret};
use crate::cluster::{ClusterStops, Node, RedisFanOut};
use crate::config::{Config, LlmConfig};
use crate::fanout::{FanOut, LocalFanOut};
use crate::limits::{Connections, LoginThrottle, SharedLimits};
use crate::listener::{self, ConnectionLimits};
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::runs::Runs;
use crate::{api, leases, openapi, recovery, web, ws};

/// How long sockets get to close after the runs have ended.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Everything a handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The settings.
    pub(crate) config: Arc<Config>,
    /// The durable store.
    pub(crate) store: Arc<dyn Store>,
    /// Workload data.
    pub(crate) analytics: Arc<dyn AnalyticsStore>,
    /// Model prices.
    pub(crate) prices: Arc<PriceTable>,
    /// Event storage and fan-out (the engine's sink).
    pub(crate) log: Arc<EventLog>,
    /// Starting and stopping runs.
    pub(crate) runs: Arc<Runs>,
    /// JWTs.
    pub(crate) tokens: Arc<Tokens>,
    /// WebSocket tickets.
    pub(crate) tickets: Arc<Tickets>,
    /// Open connections per user.
    pub(crate) connections: Arc<Connections>,
    /// Failed logins per email and per client address.
    pub(crate) login_throttle: Arc<LoginThrottle>,
    /// Password hashing and checking, a few at once.
    pub(crate) passwords: Arc<Passwords>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Open sockets, for shutdown.
    pub(crate) sockets: TaskTracker,
    /// Cancelled when shutdown was requested.
    pub(crate) stopping: CancellationToken,
    /// Cancelled when sockets and streams must close (after the runs ended).
    pub(crate) closing: CancellationToken,
    /// Redis, when this server is one node of several.
    pub(crate) redis: Option<Redis>,
    /// The limits the nodes of a cluster share.
    pub(crate) shared_limits: Option<Arc<SharedLimits>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("listen", &self.config.listen).finish()
    }
}

/// What makes a server one node of a cluster: its name, and its connections to Redis.
struct ClusterParts {
    /// The store, as this node's (its lease, the runs it takes over).
    store: PgStore,
    node: Node,
    redis: Redis,
    subscriber: Subscriber,
    incoming: Incoming,
}

/// A built server, bound to its address, not yet serving.
pub struct Application {
    listener: TcpListener,
    connection_limits: ConnectionLimits,
    state: AppState,
    /// Held while serving from PostgreSQL: no second server serves from the same database.
    server_lock: Option<ServerLock>,
    /// On a node of a cluster: the store whose lease it holds, given up when it has stopped.
    lease: Option<PgStore>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl Application {
    /// Opens the configured stores (the embedded SQLite in the data dir, or PostgreSQL and
    /// ClickHouse) and builds the server. A tier that cannot be opened stops it with a sentence
    /// that names the tier, its address (without credentials) and what failed.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        let path = config.data_dir.join("switchboard.sqlite3");
        let mut server_lock = None;
        let mut parts = None;
        let (store, embedded): (Arc<dyn Store>, Option<Arc<SqliteStore>>) = match &config.database_url {
            None => {
                let store = SqliteStore::open(&path)
                    .await
                    .with_context(|| format!("cannot open the database {}", path.display()))?;
                let store = Arc::new(store);
                (store.clone(), Some(store))
            }
            Some(url) => {
                // A server alone on its database: no other may serve from it (its start would
                // close this one's runs). The nodes of a cluster share it, without one alone.
                let serving = if config.redis_url.is_some() {
                    Serving::Node
                } else {
                    Serving::Alone
                };
                let lock = hold_server_lock(url.expose(), config.database_timeout, serving)
                    .await
                    .with_context(|| format!("cannot serve from PostgreSQL at {url}"))?;
                server_lock = Some(lock);
                let options = PgOptions {
                    max_connections: config.database_max_connections,
                    query_timeout: config.database_timeout,
                    ..PgOptions::default()
                };
                let mut store = PgStore::connect(url.expose(), options)
                    .await
                    .with_context(|| format!("cannot open the store on PostgreSQL at {url}"))?;
                tracing::info!(address = %url, "the store is on PostgreSQL");
                if let Some(redis_url) = &config.redis_url {
                    let id = config.node_id.clone().unwrap_or_else(Node::generated_id);
                    store = store.for_node(&id);
                    let cluster = store
                        .cluster_id()
                        .await
                        .with_context(|| format!("cannot read the cluster's name from PostgreSQL at {url}"))?;
                    let options = RedisOptions {
                        timeout: config.redis_timeout,
                    };
                    let (redis, subscriber, incoming) =
                        switchboard_redis::connect(redis_url.expose(), options)
                            .await
                            .with_context(|| format!("cannot reach Redis at {redis_url}"))?;
                    tracing::info!(node = %id, %cluster, redis = %redis_url, "this server is node {id} of a cluster on Redis");
                    parts = Some(ClusterParts {
                        store: store.clone(),
                        node: Node::new(id, &cluster),
                        redis,
                        subscriber,
                        incoming,
                    });
                }
                (Arc::new(store), None)
            }
        };
        let analytics: Arc<dyn AnalyticsStore> = match (&config.analytics_url, embedded) {
            (Some(url), _) => {
                let options = ClickHouseOptions {
                    query_timeout: config.analytics_timeout,
                    insert_timeout: config.analytics_timeout * 10,
                };
                let analytics = ClickHouseAnalytics::connect(url.expose(), options)
                    .await
                    .with_context(|| format!("cannot open the analytics store on ClickHouse at {url}"))?;
                tracing::info!(address = %url, "the usage data is on ClickHouse");
                Arc::new(analytics)
            }
            // The embedded store answers for its workload file beside it.
            (None, Some(embedded)) => embedded,
            (None, None) => {
                let path = config.data_dir.join("switchboard-workload.sqlite3");
                let analytics = SqliteAnalytics::open(&path)
                    .await
                    .with_context(|| format!("cannot open the usage data {}", path.display()))?;
                Arc::new(analytics)
            }
        };
        let mut app = Self::build_on(config, store, analytics, parts).await?;
        app.server_lock = server_lock;
        Ok(app)
    }

    /// Builds the server on given stores: closes runs a crash left active, then binds.
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn Store>,
        analytics: Arc<dyn AnalyticsStore>,
    ) -> anyhow::Result<Self> {
        Self::build_on(config, store, analytics, None).await
    }

    /// Builds the server on given stores, one node of a cluster when `cluster` is given.
    async fn build_on(
        config: Config,
        store: Arc<dyn Store>,
        analytics: Arc<dyn AnalyticsStore>,
        cluster: Option<ClusterParts>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        // Every tier operation is timed for the metrics and the SLA report.
        let mut tiers = vec![store.tier(), analytics.tier(), Tier::Model];
        if cluster.is_some() {
            tiers.push(Tier::Redis);
        }
        let metrics = Arc::new(Metrics::new(&tiers));
        let observer: Arc<dyn TierObserver> = metrics.clone();
        store.observe(&observer);
        analytics.observe(&observer);
        if let Some(parts) = &cluster {
            parts.redis.observe(&observer);
        }
        // The cluster's tasks end with the server, once its runs have ended (their events still
        // reach the other nodes during the grace period); or when it is dropped unserved.
        let closing = CancellationToken::new();
        let mut stop_requests = None;
        let mut cluster_stops = None;
        let mut shared_limits = None;
        let mut lease = None;
        let (fanout, redis, tickets): (Arc<dyn FanOut>, Option<Redis>, Tickets) = match cluster {
            None => (Arc::new(LocalFanOut::default()), None, Tickets::default()),
            Some(parts) => {
                let tickets = Tickets::shared(parts.redis.clone(), parts.node.prefix.clone());
                cluster_stops = Some(ClusterStops::new(parts.redis.clone(), &parts.node));
                shared_limits = Some(Arc::new(
                    SharedLimits::start(parts.redis.clone(), parts.node.prefix.clone(), closing.child_token()).await,
                ));
                let (fanout, requests) = RedisFanOut::start(
                    parts.node,
                    parts.redis.clone(),
                    parts.subscriber,
                    parts.incoming,
                    Arc::clone(&store),
                    metrics.from_other_nodes.clone(),
                    closing.child_token(),
                );
                stop_requests = Some(requests);
                lease = Some(parts.store);
                (fanout, Some(parts.redis), tickets)
            }
        };
        let log = Arc::new(EventLog::new(Arc::clone(&store), fanout, vec![metrics.clone()]));
        match &lease {
            // A server alone closes every run it finds running: nobody else runs any.
            None => {
                let closed = recovery::close_interrupted_runs(&log)
                    .await
                    .context("closing interrupted runs")?;
                if closed > 0 {
                    tracing::warn!(runs = closed, "closed runs left active by the last stop");
                }
            }
            // A node only its own from before and those of nodes that are gone; then it keeps
            // its lease, and closes the runs of nodes that go.
            Some(store) => {
                leases::join(store, &log).await.context("joining the cluster")?;
                tokio::spawn(
                    closing
                        .child_token()
                        .run_until_cancelled_owned(leases::keep(store.clone(), Arc::clone(&log))),
                );
            }
        }
        let prices = match &config.price_table {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the price table {}", path.display()))?;
                PriceTable::parse(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => PriceTable::embedded(),
        };
        let prices = Arc::new(prices);
        let offline: Arc<dyn Model> = Arc::new(OfflineModel::new(config.model_latency));
        let secret = load_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
        let tokens = Tokens::new(&secret, config.access_token_ttl, config.refresh_token_ttl);
        let passwords = Passwords::new(metrics.password_checks.clone()).await?;
        let builder = switchboard_agents::register(Engine::builder(), Arc::clone(&analytics), Arc::clone(&prices))
            .config(config.engine.clone())
            .observe_tiers(observer);
        let builder = match &config.llm {
            // The offline model answers when the configured one fails.
            Some(llm) => builder.model(language_model(llm, &prices)?).fallback_model(offline),
            None => builder.model(offline),
        };
        let engine = builder.build(log.clone()).context("building the engine")?;
        // The stop requests of other nodes: the engine stops the run if it runs here.
        if let Some(mut requests) = stop_requests {
            let engine = engine.clone();
            tokio::spawn(closing.child_token().run_until_cancelled_owned(async move {
                while let Some((user, run)) = requests.recv().await {
                    if engine.cancel(&user, &run).is_ok() {
                        tracing::info!(%run, "stopping a run another node was asked to stop");
                    }
                }
            }));
        }
        let mut runs = Runs::new(
            Arc::clone(&store),
            engine,
            Arc::clone(&metrics),
            config.rate_limit_per_minute,
            config.max_text_chars,
        );
        if let Some(stops) = cluster_stops {
            runs = runs.with_cluster_stops(stops);
        }
        let mut login_throttle = LoginThrottle::new(config.login_max_failures, config.login_failure_window);
        if let Some(shared) = &shared_limits {
            runs = runs.with_shared_limits(Arc::clone(shared));
            login_throttle = login_throttle.with_shared_limits(Arc::clone(shared));
        }
        let file_limit = listener::raise_file_limit();
        let connection_limits = ConnectionLimits {
            max_open: listener::max_open_connections(config.max_open_connections, file_limit),
            header_timeout: config.header_timeout,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let state = AppState {
            config: Arc::new(config),
            store,
            analytics,
            prices,
            log,
            runs: Arc::new(runs),
            tokens: Arc::new(tokens),
            tickets: Arc::new(tickets),
            connections: Arc::new(Connections::default()),
            login_throttle: Arc::new(login_throttle),
            passwords: Arc::new(passwords),
            metrics,
            sockets: TaskTracker::new(),
            stopping: CancellationToken::new(),
            closing,
            redis,
            shared_limits,
        };
        Ok(Self {
            listener,
            connection_limits,
            state,
            server_lock: None,
            lease,
        })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The router `run_until_stopped` serves (a fresh one, on the same state): for tools and
    /// tests that look at the routes.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Cancel it to stop the server gracefully (as SIGTERM does).
    pub fn stop_handle(&self) -> CancellationToken {
        self.state.stopping.clone()
    }

    /// Serves until stopped, then: stop accepting, let active runs finish for the grace period,
    /// end the rest as `interrupted`, close sockets with 1001, return.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            connection_limits,
            state,
            server_lock: _server_lock,
            lease,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            max_open_connections = connection_limits.max_open,
            "listening on {addr}"
        );
        let stopping = state.stopping.clone();
        let signals = tokio::spawn(stop_on_signal(stopping.clone()));
        let server = tokio::spawn(listener::serve(
            listener,
            router(state.clone()),
            connection_limits,
            stopping.clone(),
        ));
        stopping.cancelled().await;
        signals.abort();
        tracing::info!(
            grace_ms = state.config.shutdown_grace.as_millis() as u64,
            "shutting down"
        );
        state.runs.engine().shutdown(state.config.shutdown_grace).await;
        state.closing.cancel();
        state.sockets.close();
        if tokio::time::timeout(SOCKET_CLOSE_GRACE, state.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not close in time");
        }
        match tokio::time::timeout(SOCKET_CLOSE_GRACE, server).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the HTTP server task failed"),
            Err(_) => tracing::warn!("some HTTP connections did not finish in time"),
        }
        // Its runs have ended: its name is free for a node started again at once.
        if let Some(store) = lease
            && let Err(error) = store.drop_lease().await
        {
            tracing::warn!(%error, "cannot give up this node's lease; it runs out by itself");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn stop_on_signal(stopping: CancellationToken) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    stopping.cancel();
}

/// Every route: the API of [`api_routes`], the web app's files, and the fallback for any other
/// path.
pub fn router(state: AppState) -> Router {
    let (api, _document) = api_routes().split_for_parts();
    // The web app's files are not API, so not in the document.
    api.merge(web::routes())
        .fallback(api::not_found)
        .layer(axum::middleware::map_request_with_state(
            state.config.request_body_timeout,
            listener::limit_body_time,
        ))
        .with_state(state)
}

/// The route table of the API: each route is registered with `routes!`, which adds the handler to
/// the router and its operation to the OpenAPI document together (`openapi.rs`); handlers of the
/// same path go in one `routes!`.
pub(crate) fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(ws::upgrade))
        .routes(routes!(api::register))
        .routes(routes!(api::login))
        .routes(routes!(api::refresh))
        .routes(routes!(api::logout))
        .routes(routes!(api::dev_login))
        .routes(routes!(api::ws_ticket))
        .routes(routes!(api::list_threads, api::create_thread))
        .routes(routes!(api::get_thread, api::delete_thread))
        .routes(routes!(api::thread_messages))
        .routes(routes!(api::get_run))
        .routes(routes!(api::cancel_run))
        .routes(routes!(api::events))
        .routes(routes!(api::upload_workload).layer(DefaultBodyLimit::max(api::MAX_UPLOAD_BYTES)))
        .routes(routes!(api::demo_data))
        .routes(routes!(api::info))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(api::live))
        .routes(routes!(api::ready))
        .routes(routes!(api::metrics))
        .routes(routes!(api::sla))
}

/// The OpenAI-compatible model of the configuration, priced from the price table when it lists it.
fn language_model(llm: &LlmConfig, prices: &PriceTable) -> anyhow::Result<Arc<dyn Model>> {
    let price = prices.find(&llm.model).map(|p| Price {
        input_per_mtok: p.input_per_mtok,
        output_per_mtok: p.output_per_mtok,
    });
    if price.is_none() {
        tracing::warn!(model = %llm.model, "the price table does not list the LLM model: its calls are recorded without cost");
    }
    let mut config = OpenAiConfig::new(&llm.base_url, &llm.model);
    config.api_key = llm.api_key.clone();
    config.max_retries = llm.max_retries;
    config.price = price;
    let model = OpenAiModel::new(config)?;
    tracing::info!(model = %llm.model, base_url = %llm.base_url, "using an OpenAI-compatible model, with the offline model as fallback");
    Ok(Arc::new(model))
}
