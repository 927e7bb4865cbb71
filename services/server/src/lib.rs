//! The `dbswarm` server: wiring of configuration, database, services and
//! observability. `main.rs` is only the CLI over this.

pub mod config;
pub mod metric_list;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use api::{AdminService, EventStoreService, ProjectionsService, WorkflowsService};
use event_store::{Appender, CommitSignal, Reader};
use projections::Projections;
use projections::cache::ReadCache;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::server::TcpIncoming;

pub use config::{Config, ConfigError, Settings};

/// How often pool usage is sampled into metrics.
const POOL_METRICS_INTERVAL_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to PostgreSQL at database_url: {0}")]
    Database(sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot listen on {setting} {addr}: {source}")]
    Listen {
        setting: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid nats_url: {0}")]
    Nats(String),
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    #[error("server task failed: {0}")]
    Task(String),
    #[error("cannot define projections: {0}")]
    Projections(String),
    #[error("invalid planner_llm_* settings: {0}")]
    Planner(String),
}

/// A started server. Dropping it does not stop it; call `shutdown`.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub pool: PgPool,
    /// What plans are validated against: every agent's operations.
    pub catalogue: domain::workflow::Catalogue,
    /// The agents of this server and what they serve.
    pub directory: agents::Directory,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), String>>,
    committers: Vec<JoinHandle<()>>,
}

pub async fn connect(config: &Config) -> Result<PgPool, StartError> {
    PgPoolOptions::new()
        .max_connections(config.db_pool_connections_max)
        // A ping per checkout would add a round trip to every group commit;
        // a broken connection fails its query and is replaced instead.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_millis(config.db_acquire_timeout_ms))
        .connect(&config.database_url)
        .await
        .map_err(StartError::Database)
}

/// Connects, migrates, binds both listeners and serves until `shutdown`.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    // First: whatever is recorded before the recorder exists is lost (the
    // cache's start state, the agents' first status).
    let metrics = telemetry::metrics_handle();
    metric_list::register();
    let pool = connect(&config).await?;
    event_store::MIGRATOR.run(&pool).await?;
    record_pool_usage(&pool);

    let grpc_listener = bind("grpc_addr", config.grpc_addr).await?;
    let http_listener = bind("http_addr", config.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr().expect("bound");
    let http_addr = http_listener.local_addr().expect("bound");

    let nats = connect_nats(&config).await?;
    let (appender, committers) = Appender::start(pool.clone(), config.append);
    let reader = Reader::new(pool.clone(), config.read);
    let (commits_tx, commits_rx) = watch::channel(0u64);
    let commits = CommitSignal::new(commits_rx, Duration::from_millis(config.relay.poll_interval_ms));
    let projections = start_projections(&config, &pool, &reader, &appender).await?;
    let projections_service = ProjectionsService::new(projections.clone()).into_server();
    let directory = agents::Directory::default();
    let targets = agents::Targets::new(
        pool.clone(),
        appender.clone(),
        config.limits,
        agents::TargetsConfig::default(),
    );
    let (orchestrator, scheduler, llm) =
        workflow_side(&config, &pool, &appender, &reader, &nats, &directory)?;
    // Every compiled-in agent's operations: what plans are validated
    // against is what is served (an agent that is not ready is caught by
    // the health gate when a workflow starts).
    let swarm = agent_swarm(&config, &appender, &reader);
    let catalogue = agents::catalogue(&swarm);
    let workflows = WorkflowsService::new(
        orchestrator.clone(),
        llm,
        scheduler.clone(),
        reader.clone(),
        commits.clone(),
        projections.clone(),
        catalogue.clone(),
        config.limits,
    )
    .into_server();
    let agents_ready = directory.watch_all_ready();
    let deps = agents::Dependencies {
        pool: pool.clone(),
        nats: nats.clone(),
        targets: targets.clone(),
    };
    let agents_runtime = agents_runtime(&config, &orchestrator, directory.clone(), &appender, swarm, deps);
    let event_store = EventStoreService::new(appender, reader, commits.clone(), config.limits).into_server();

    let relay_leading = Arc::new(AtomicBool::new(false));
    let admin = AdminService::new(pool.clone(), relay_leading.clone(), targets).into_server();

    let (health, health_service) = api::health::health_service().await;
    let reflection = api::health::reflection().map_err(|e| StartError::Reflection(e.to_string()))?;
    let (stop, stopped) = watch::channel(false);
    let grpc = tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("grpc", path = %request.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(event_store)
        .add_service(admin)
        .add_service(projections_service)
        .add_service(workflows)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            until_stopped(stopped.clone()),
        );
    let http = axum::serve(http_listener, http_router(metrics))
        .with_graceful_shutdown(until_stopped(stopped.clone()));
    let mut tasks = JoinSet::new();
    tasks.spawn(async move { grpc.await.map_err(|e| e.to_string()) });
    tasks.spawn(async move { http.await.map_err(|e| e.to_string()) });
    tasks.spawn(sample_pool_usage(pool.clone(), stopped.clone()));
    tasks.spawn(report_health(health, agents_ready, stopped.clone()));
    let loops = Loops {
        pool: pool.clone(),
        commits_tx,
        commits,
        projections,
        orchestrator,
        scheduler,
        agents_runtime,
        nats,
        relay_leading,
    };
    spawn_loops(&mut tasks, &config, loops, stopped);
    // Absolute: a relative data_dir was resolved against the working directory.
    let data_dir = config.data_dir.display();
    tracing::info!(%grpc_addr, %http_addr, %data_dir, "dbswarm serving");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        pool,
        catalogue,
        directory,
        stop,
        tasks,
        committers,
    })
}

/// Resolves when `stopped` turns true (or its sender is gone).
async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The read models: the registry, the built-in ones and those of
/// `projections_dir` defined, their metrics published.
async fn start_projections(
    config: &Config,
    pool: &PgPool,
    reader: &Reader,
    appender: &Appender,
) -> Result<Projections, StartError> {
    let cache = ReadCache::connect(config.cache.clone()).await;
    let projections = Projections::new(
        pool.clone(),
        reader.clone(),
        appender.clone(),
        cache,
        config.projections.clone(),
        config.limits,
    );
    projections
        .install_builtins()
        .await
        .map_err(|e| StartError::Projections(format!("built-in read models: {e}")))?;
    if let Some(dir) = &config.projections_dir {
        define_from_dir(&projections, dir).await?;
    }
    if config.projections_enabled {
        // Before the first scrape can come: every projection on /metrics.
        projections.publish_metrics().await;
    }
    Ok(projections)
}

/// The orchestrator, the scheduler and the optional LLM planner.
fn workflow_side(
    config: &Config,
    pool: &PgPool,
    appender: &Appender,
    reader: &Reader,
    nats: &async_nats::Client,
    directory: &agents::Directory,
) -> Result<
    (
        sagas::Orchestrator,
        sagas::Scheduler,
        Option<llm_planner::LlmPlanner>,
    ),
    StartError,
> {
    let orchestrator = sagas::Orchestrator::new(
        sagas::WorkflowStore::new(appender.clone(), reader.clone(), config.limits),
        pool.clone(),
        nats.clone(),
        config.relay.clone(),
        Arc::new(directory.clone()),
        config.orchestrator.clone(),
    );
    let scheduler = sagas::Scheduler::new(
        sagas::ScheduleStore::new(appender.clone(), reader.clone(), config.limits),
        pool.clone(),
        orchestrator.clone(),
        sagas::SchedulerConfig::default(),
    );
    let llm = match &config.planner_llm {
        Some(llm) => {
            Some(llm_planner::LlmPlanner::new(llm.clone()).map_err(|e| StartError::Planner(e.to_string()))?)
        }
        None => None,
    };
    Ok((orchestrator, scheduler, llm))
}

/// The agents' runtime with every agent of the swarm.
fn agents_runtime(
    config: &Config,
    orchestrator: &sagas::Orchestrator,
    directory: agents::Directory,
    appender: &Appender,
    swarm: Vec<agents::AgentSpec>,
    deps: agents::Dependencies,
) -> agents::AgentsRuntime {
    agents::AgentsRuntime::new(
        orchestrator.clone(),
        directory.clone(),
        appender.clone(),
        config.limits,
        deps,
        config.relay.clone(),
        config.agents.clone(),
        uuid::Uuid::new_v4().to_string(),
        swarm,
    )
}

/// What runs in the background besides the listeners.
struct Loops {
    pool: PgPool,
    commits_tx: watch::Sender<u64>,
    commits: CommitSignal,
    projections: Projections,
    orchestrator: sagas::Orchestrator,
    scheduler: sagas::Scheduler,
    agents_runtime: agents::AgentsRuntime,
    nats: async_nats::Client,
    relay_leading: Arc<AtomicBool>,
}

/// Spawns the commit watcher and, as configured, the projection runners,
/// the workflow driver, the scheduler, the agents and the relay.
fn spawn_loops(
    tasks: &mut JoinSet<Result<(), String>>,
    config: &Config,
    loops: Loops,
    stopped: watch::Receiver<bool>,
) {
    let watching = event_store::watch_commits(loops.pool.clone(), loops.commits_tx, stopped.clone());
    tasks.spawn(async move {
        watching.await;
        Ok(())
    });
    if config.projections_enabled {
        let runners = loops.projections.start(loops.commits, stopped.clone());
        tasks.spawn(async move {
            let _ = runners.await;
            Ok(())
        });
    }
    if config.workflows_enabled {
        let driver = loops.orchestrator.run_driver(stopped.clone());
        tasks.spawn(async move {
            driver.await;
            Ok(())
        });
        let scheduling = loops.scheduler.run(stopped.clone());
        tasks.spawn(async move {
            scheduling.await;
            Ok(())
        });
        let agents = loops.agents_runtime.run(stopped.clone());
        tasks.spawn(async move {
            agents.await;
            Ok(())
        });
    }
    if config.relay_enabled {
        let relay = event_store::relay::run_relay(
            loops.pool,
            async_nats::jetstream::new(loops.nats),
            config.relay.clone(),
            loops.relay_leading,
            stopped,
        );
        tasks.spawn(async move {
            relay.await;
            Ok(())
        });
    }
}

/// The catalogue of every compiled-in agent for what runs without a
/// server (the planners' tests, tools): built from the agents' operations
/// as a server builds it, over a pool that never connects. Needs a Tokio
/// runtime (the event store's committers are started, and stay idle).
pub fn catalogue(config: &Config) -> Result<domain::workflow::Catalogue, StartError> {
    let pool = PgPoolOptions::new()
        .connect_lazy(&config.database_url)
        .map_err(StartError::Database)?;
    let (appender, _committers) = Appender::start(pool.clone(), config.append);
    let reader = Reader::new(pool, config.read);
    Ok(agents::catalogue(&agent_swarm(config, &appender, &reader)))
}

/// Every agent with the operations built so far: `probe` on each, and the
/// schema, query and backup agents' own.
fn agent_swarm(config: &Config, appender: &Appender, reader: &Reader) -> Vec<agents::AgentSpec> {
    let migrator = schema::migration::Migrator::new(
        schema::migration::HistoryStore::new(appender.clone(), reader.clone(), config.limits),
        config.schema.clone(),
    );
    let journal = query::journal::Journal::new(appender.clone(), reader.clone(), config.limits);
    let query_config = config.query.clone();
    let backups = backup::engine::Backups::new(
        config.backup.clone(),
        backup::engine::CatalogueStore::new(appender.clone(), reader.clone(), config.limits),
    );
    let mut swarm = agents::AgentsRuntime::swarm();
    let mut add = |agent: &str, operations: Vec<(&'static str, Arc<dyn agents::Served>)>| {
        if let Some(spec) = swarm.iter_mut().find(|s| s.name == agent) {
            for (operation, implementation) in operations {
                spec.operations.insert(operation.to_owned(), implementation);
            }
        }
    };
    add(schema::agent::AGENT, schema::agent::operations(migrator));
    add(
        query::agent::AGENT,
        query::agent::operations(journal, query_config),
    );
    add(backup::agent::AGENT, backup::agent::operations(backups));
    swarm
}

/// Defines every `*.json` projection definition in `dir` (in name order).
/// A bad file stops the start, named with its problems.
async fn define_from_dir(projections: &Projections, dir: &std::path::Path) -> Result<(), StartError> {
    let failed = |what: String| StartError::Projections(format!("projections_dir {}: {what}", dir.display()));
    let entries = std::fs::read_dir(dir).map_err(|e| failed(e.to_string()))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| failed(format!("{}: {e}", file.display())))?;
        let definition = projections::definition::Definition::from_json(&text)
            .map_err(|e| failed(format!("{}: {e}", file.display())))?;
        projections
            .define(definition)
            .await
            .map_err(|e| failed(format!("{}: {e}", file.display())))?;
    }
    Ok(())
}

/// Connects to NATS. A NATS that is down does not stop the start: the
/// event store works without it (PostgreSQL is the truth) and the client
/// keeps reconnecting; the relay catches up once NATS is back.
async fn connect_nats(config: &Config) -> Result<async_nats::Client, StartError> {
    async_nats::ConnectOptions::new()
        .name("dbswarm")
        .retry_on_initial_connect()
        .connect(config.nats_url.as_str())
        .await
        .map_err(|e| StartError::Nats(e.to_string()))
}

async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            setting,
            addr,
            source,
        })
}

fn http_router(metrics: metrics_exporter_prometheus::PrometheusHandle) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .route("/healthz", get(|| std::future::ready("ok\n")))
}

async fn sample_pool_usage(pool: PgPool, mut stopped: watch::Receiver<bool>) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_millis(POOL_METRICS_INTERVAL_MS));
    loop {
        tokio::select! {
            _ = tick.tick() => record_pool_usage(&pool),
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// gRPC health of the services (README.md, "Metrics and health"): `Workflows` is
/// SERVING only while every agent of this server is ready, since its health
/// gate refuses any plan that needs one that is not (so never on a server
/// with `workflows_enabled = false`); the others serve from start. Once
/// the server stops, every service is NOT_SERVING.
async fn report_health(
    health: api::health::Health,
    mut agents_ready: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        let ready = *agents_ready.borrow_and_update();
        health.set_workflows(ready).await;
        let directory_gone = tokio::select! {
            changed = agents_ready.changed() => changed.is_err(),
            _ = stopped.wait_for(|s| *s) => break,
        };
        if directory_gone {
            // Nothing changes any more; the task still ends only with the server.
            let _ = stopped.wait_for(|s| *s).await;
            break;
        }
    }
    health.set_stopped().await;
    Ok(())
}

fn record_pool_usage(pool: &PgPool) {
    metrics::gauge!("dbswarm_db_pool_connections").set(f64::from(pool.size()));
    metrics::gauge!("dbswarm_db_pool_connections_idle").set(pool.num_idle() as f64);
}

impl RunningServer {
    /// Resolves when a server task ends by itself, which is always a failure.
    pub async fn failed(&mut self) -> StartError {
        match self.tasks.join_next().await {
            Some(Ok(Ok(()))) => StartError::Task("a server task stopped unexpectedly".into()),
            Some(Ok(Err(e))) => StartError::Task(e),
            Some(Err(e)) => StartError::Task(e.to_string()),
            None => StartError::Task("no server tasks".into()),
        }
    }

    /// Stops accepting, finishes in-flight requests and queued appends.
    pub async fn shutdown(mut self) -> Result<(), StartError> {
        let _ = self.stop.send(true);
        while let Some(result) = self.tasks.join_next().await {
            result
                .map_err(|e| StartError::Task(e.to_string()))?
                .map_err(StartError::Task)?;
        }
        // The services (and their Appender handles) are gone: committers
        // drain the queue and stop.
        for committer in self.committers {
            let _ = committer.await;
        }
        self.pool.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod catalogue_tests;
