//! `make bench`: dbswarm measured against the simplest direct way to do the
//! same work, on the same services, in the same run. One JSON object per
//! line on stdout; progress on stderr.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use api::proto;
use api::proto::event_store_client::EventStoreClient;
use clap::Parser;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::cpu::{CpuPerEvent, CpuSample};

mod backfill;
mod backup;
mod cpu;
mod horizon;
mod index_advice;
mod read_models;
mod takeover;
mod workflows;

const BENCHES: &[&str] = &[
    "append_throughput",
    "append_latency",
    "fanout_latency",
    "relay_throughput",
    "subscribe_beside_long_transaction",
    "projection_rebuild",
    "query_uncached",
    "query_cached",
    "workflow_latency",
    "workflow_throughput",
    "takeover",
    "backfill_throughput",
    "index_advice_quality",
    "backup_throughput",
];

/// Benchmarks of the dbswarm server (release build) against PostgreSQL.
///
/// Needs DBSWARM_ADMIN_DATABASE_URL (or DBSWARM_DATABASE_URL): `make bench`
/// starts the test services and sets it. Creates and drops a scratch
/// database; starts and stops its own `dbswarm` server.
#[derive(Parser)]
struct Args {
    /// Run only this benchmark: append_throughput, append_latency,
    /// fanout_latency, relay_throughput, subscribe_beside_long_transaction,
    /// projection_rebuild, query_uncached,
    /// query_cached, workflow_latency, workflow_throughput, takeover,
    /// backfill_throughput, index_advice_quality or backup_throughput
    /// (which measures restore_throughput too).
    #[arg(long)]
    only: Option<String>,
    /// Concurrent clients: each appending to its own stream (append
    /// benchmarks), or asking for rows back to back (query benchmarks).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// HTTP/2 connections the clients share (round robin), as an
    /// application's client pool would.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events measured per throughput run (after a warm-up of a tenth).
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Alternating baseline/dbswarm throughput rounds (append_throughput,
    /// workflow_throughput); medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 5)]
    latency_seconds: u64,
    /// Seconds subscribe_beside_long_transaction appends for, with and
    /// then without another database's transaction holding an xid open.
    #[arg(long, default_value_t = 60)]
    horizon_seconds: u64,
    /// Stored events the projection_rebuild benchmark rebuilds a read model from.
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_events: usize,
    /// Alternating baseline/rebuild rounds of projection_rebuild; medians are reported.
    #[arg(long, default_value_t = 2)]
    rebuild_rounds: usize,
    /// How projection_rebuild watches for the switch: `registry` (a cheap
    /// SELECT of the projections table every 100 ms) or `grpc`
    /// (Projections.Get every 100 ms, which counts the building
    /// generation's lag on every call and so competes with the rebuild).
    #[arg(long, default_value = "registry")]
    rebuild_poll: String,
    /// Users (UserCreated events) in the read model the query benchmarks ask.
    #[arg(long, default_value_t = 100_000)]
    query_users: usize,
    /// Workflows workflow_latency measures, one at a time, each followed by
    /// one run of its baseline (critical_path_commits).
    #[arg(long, default_value_t = 200)]
    workflows: usize,
    /// Unmeasured workflows and baseline runs before workflow_latency's.
    #[arg(long, default_value_t = 20)]
    workflow_warm_up: usize,
    /// Concurrent clients of workflow_throughput, each running one workflow
    /// (or one baseline run) after another, sharing --connections.
    #[arg(long, default_value_t = 50)]
    workflows_in_flight: usize,
    /// Workflows (and baseline runs) per workflow_throughput round, after
    /// a warm-up of a tenth.
    #[arg(long, default_value_t = 500)]
    throughput_workflows: usize,
    /// Alternating default/old-default rounds of takeover (each a server
    /// killed with SIGKILL and its task taken over by another); medians
    /// are reported.
    #[arg(long, default_value_t = 3)]
    takeover_rounds: usize,
    /// pgbench scale of backfill_throughput's table: 100,000 accounts each.
    #[arg(long, default_value_t = 10)]
    backfill_scale: u32,
    /// Rows per batch of backfill_throughput's backfill. Not the engine's
    /// default of 1,000: 5,000 about doubles the rows/s at scale 10 for the
    /// same pgbench p99 (within a ms), and the figure reports it.
    #[arg(long, default_value_t = 5_000)]
    backfill_batch_rows: u32,
    /// Pause between the batches of backfill_throughput's backfill, ms
    /// (the engine's default).
    #[arg(long, default_value_t = 10)]
    backfill_pause_ms: u64,
    /// Rounds of index_advice_quality's timed workload runs, each with no
    /// extra index, the ideal indexes and the agent's (in alternating
    /// order); medians are reported.
    #[arg(long, default_value_t = 2)]
    advice_rounds: usize,
    /// Indexes the query agent recommends at most in index_advice_quality
    /// (its advisor's indexes_max); default: the agent's default.
    #[arg(long)]
    advice_indexes_max: Option<usize>,
    /// pgbench scale of backup_throughput's database: ~15.7 MB each, so
    /// 64 makes a database of ~1.0 GB (10^9 bytes).
    #[arg(long, default_value_t = 64)]
    backup_scale: u32,
    /// Alternating baseline/dbswarm rounds of backup_throughput's backups
    /// and of its restores; the best of each side is reported.
    #[arg(long, default_value_t = 2)]
    backup_rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The server's runtime: the clients' requests leave coalesced too.
    api::runtime::multi_thread()?.block_on(benches(args))
}

async fn benches(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.clients == 0 || args.events == 0 {
        bail!("--rounds, --clients and --events must be at least 1");
    }
    if args.rebuild_events == 0
        || args.rebuild_rounds == 0
        || args.query_users == 0
        || args.latency_seconds == 0
        || args.horizon_seconds == 0
    {
        bail!(
            "--rebuild-events, --rebuild-rounds, --query-users, --latency-seconds and --horizon-seconds must be at least 1"
        );
    }
    if args.workflows == 0 || args.workflows_in_flight == 0 || args.throughput_workflows == 0 {
        bail!("--workflows, --workflows-in-flight and --throughput-workflows must be at least 1");
    }
    if args.backfill_scale == 0 || args.backfill_batch_rows == 0 {
        bail!("--backfill-scale and --backfill-batch-rows must be at least 1");
    }
    if args.advice_rounds == 0 {
        bail!("--advice-rounds must be at least 1");
    }
    if args.backup_scale == 0 || args.backup_rounds == 0 {
        bail!("--backup-scale and --backup-rounds must be at least 1");
    }
    if !["registry", "grpc"].contains(&args.rebuild_poll.as_str()) {
        bail!("--rebuild-poll is registry or grpc, not '{}'", args.rebuild_poll);
    }
    if let Some(only) = &args.only
        && !BENCHES.contains(&only.as_str())
    {
        bail!("unknown benchmark '{only}'; known: {}", BENCHES.join(", "));
    }
    let admin_url = admin_url()?;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    // Each phase on a database (and JetStream stream) of its own.
    if wanted("append_throughput") || wanted("append_latency") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = run(&args, &db).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("fanout_latency") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = fanout_latency(&args, &db).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("relay_throughput") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = relay_throughput(&args, &db).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("subscribe_beside_long_transaction") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = horizon::subscribe_beside_long_transaction(&args, &db, &admin_url).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("projection_rebuild") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = read_models::projection_rebuild(&args, &db).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("query_uncached") || wanted("query_cached") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = read_models::queries(&args, &db).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("workflow_latency") || wanted("workflow_throughput") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = workflows::run(&args, &db).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("takeover") {
        // A database per round.
        takeover::takeover(&args, &admin_url).await?;
    }
    if wanted("backfill_throughput") {
        // Three databases: each run's pgbench tables, the migration history.
        backfill::backfill_throughput(&args, &admin_url).await?;
    }
    if wanted("index_advice_quality") {
        let db = ScratchDb::create(&admin_url).await?;
        let result = index_advice::index_advice_quality(&args, &db).await;
        db.drop_database(&admin_url).await?;
        result?;
    }
    if wanted("backup_throughput") {
        // Two databases (the backed-up one, the catalogue's event store),
        // and each restore's, dropped as soon as it is measured.
        backup::backup_throughput(&args, &admin_url).await?;
    }
    Ok(())
}

/// The event store alone: the relay and the projection runners are off,
/// so that the figure is the append path's and not shared with publishing
/// to JetStream or with the built-in read models projecting every event.
async fn run(args: &Args, db: &ScratchDb) -> anyhow::Result<()> {
    let mut server = ServerProcess::start(db, Serve::EVENT_STORE)?;
    let outcome = async {
        let clients = server.clients(args.clients, args.connections).await?;
        // Same pool setting as the server: no ping before each checkout.
        let pool = PgPoolOptions::new()
            .max_connections(args.clients as u32)
            .test_before_acquire(false)
            .connect(&db.url)
            .await?;
        let wanted = |name: &str| args.only.as_deref().is_none_or(|only| only == name);

        // Alternating rounds, medians: this machine's speed drifts by tens
        // of percent within a minute, so one run of each would compare
        // different machines.
        let (mut baselines, mut throughputs) = (Vec::new(), Vec::new());
        let (mut baseline_cpu, mut dbswarm_cpu) = (Vec::new(), Vec::new());
        for round in 1..=args.rounds {
            eprintln!(
                "round {round}: baseline, one INSERT + COMMIT per event, {} connections",
                args.clients
            );
            let (rate, cpu) = insert_baseline(&pool, args.clients, args.events).await?;
            eprintln!("  {rate:.0} events/s, CPU µs/event {}", cpu.json());
            baselines.push(rate);
            baseline_cpu.push(cpu);
            eprintln!(
                "round {round}: dbswarm, one event per AppendToStream, {} clients",
                args.clients
            );
            let (rate, cpu) = append_throughput(&clients, args.events, server.pid()).await?;
            eprintln!("  {rate:.0} events/s, CPU µs/event {}", cpu.json());
            throughputs.push(rate);
            dbswarm_cpu.push(cpu);
        }
        let baseline = median(&baselines);
        let throughput = median(&throughputs);
        let (batch_events, server_append_ms) = server.server_means().await?;
        if wanted("append_throughput") {
            print(json!({
                "name": "pg_single_insert_commit", "value": round(baseline), "unit": "events/s",
                "clients": args.clients, "rounds": baselines.iter().map(|v| round(*v)).collect::<Vec<_>>(),
                "cpu_us_per_event": CpuPerEvent::median(&baseline_cpu).json(),
            }));
            print(json!({
                "name": "append_throughput", "value": round(throughput), "unit": "events/s",
                "clients": args.clients, "connections": args.connections,
                "rounds": throughputs.iter().map(|v| round(*v)).collect::<Vec<_>>(),
                "baseline_name": "pg_single_insert_commit", "baseline_value": round(baseline),
                "ratio": round2(throughput / baseline),
                "server_rss_mb_max": server.peak_rss_mb(),
                "mean_batch_events": batch_events, "server_append_mean_ms": server_append_ms,
                "cpu_us_per_event": CpuPerEvent::median(&dbswarm_cpu).json(),
            }));
        }
        if wanted("append_latency") {
            let rate = throughput / 2.0;
            eprintln!("latency at {rate:.0} appends/s (half the measured maximum)");
            let dbswarm = append_latency(&clients, rate, args.latency_seconds).await?;
            let plain = insert_latency(&pool, args.clients, rate, args.latency_seconds).await?;
            print(json!({
                "name": "append_latency", "value": dbswarm.p50_ms, "unit": "ms",
                "p50_ms": dbswarm.p50_ms, "p99_ms": dbswarm.p99_ms, "rate_per_s": round(rate),
                "requests": dbswarm.count,
                "baseline_name": "pg_single_insert_commit_latency", "baseline_value": plain.p50_ms,
                "baseline_p99_ms": plain.p99_ms,
                "ratio": round2(dbswarm.p50_ms / plain.p50_ms),
                "server_rss_mb_max": server.peak_rss_mb(),
            }));
        }
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    server.stop();
    outcome
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

/// The middle value; the mean of the two middle ones for an even count.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn round(x: f64) -> f64 {
    x.round()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn nats_url() -> String {
    std::env::var("DBSWARM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:42230".into())
}

/// The Redis of the query cache (`make bench`: the test instance).
fn redis_url() -> String {
    std::env::var("DBSWARM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:63800".into())
}

fn admin_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("DBSWARM_ADMIN_DATABASE_URL") {
        return Ok(url);
    }
    let url = std::env::var("DBSWARM_DATABASE_URL")
        .context("set DBSWARM_ADMIN_DATABASE_URL or DBSWARM_DATABASE_URL (make bench does)")?;
    let (base, _) = url.rsplit_once('/').context("database URL without a path")?;
    Ok(format!("{base}/postgres"))
}

struct ScratchDb {
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create(admin_url: &str) -> anyhow::Result<ScratchDb> {
        let name = format!("dbswarm_bench_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        let (base, _) = admin_url.rsplit_once('/').context("admin URL without a path")?;
        Ok(ScratchDb {
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// NATS names of this run's server, so runs never share a stream.
    fn subject_prefix(&self) -> String {
        format!("b{}", self.name.trim_start_matches("dbswarm_bench_"))
    }

    fn events_stream(&self) -> String {
        format!("B{}_EVENTS", self.name.trim_start_matches("dbswarm_bench_"))
    }

    /// The agents' work queue (the relay and the agents create it).
    fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.events_stream())
    }

    /// The workflow benchmarks' baseline stream (the bench creates it).
    fn bench_stream(&self) -> String {
        format!("{}_BENCH", self.events_stream())
    }

    /// Prefix of the query cache's Redis keys of a server on this
    /// database (the server derives it from the database name).
    fn cache_key_prefix(&self) -> String {
        format!("dbswarm:{}:", self.name)
    }

    async fn drop_database(&self, admin_url: &str) -> anyhow::Result<()> {
        if let Ok(client) = async_nats::connect(nats_url()).await {
            let js = async_nats::jetstream::new(client);
            // Best effort: a phase creates some of them, or none.
            for stream in [self.events_stream(), self.tasks_stream(), self.bench_stream()] {
                let _ = js.delete_stream(stream).await;
            }
        }
        // Best effort, bounded: the cache's tag versions have no expiry.
        let _ = tokio::time::timeout(Duration::from_secs(30), self.delete_cache_keys()).await;
        let mut conn = PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    async fn delete_cache_keys(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(redis_url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let pattern = format!("{}*", self.cache_key_prefix());
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                let _: redis::Value = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// What a phase's server runs besides the event store.
#[derive(Debug, Clone, Copy)]
struct Serve {
    /// The relay to JetStream.
    relay: bool,
    /// The projection runners (the built-in read models and any defined).
    projections: bool,
    /// The Redis query cache with this entry lifetime, ms; None: off.
    cache_ttl_ms: Option<u64>,
    /// The agents and the workflow driver (the agents append lifecycle
    /// events, which would disturb every other figure).
    workflows: bool,
}

impl Serve {
    /// The event store alone.
    const EVENT_STORE: Serve = Serve {
        relay: false,
        projections: false,
        cache_ttl_ms: None,
        workflows: false,
    };
}

/// The event store of a scratch database, used in-process (no server):
/// migrations applied, an appender and a reader over one small pool. For
/// the benchmarks that call an engine directly and keep its history in
/// events (backfill, backup).
struct InProcessStore {
    pool: PgPool,
    appender: event_store::Appender,
    reader: event_store::Reader,
    committers: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcessStore {
    /// `what` names the store in an error, e.g. "the migration history".
    async fn open(db: &ScratchDb, what: &str) -> anyhow::Result<InProcessStore> {
        let pool = PgPoolOptions::new().max_connections(4).connect(&db.url).await?;
        event_store::MIGRATOR
            .run(&pool)
            .await
            .with_context(|| format!("creating the event store of {what}"))?;
        let (appender, committers) = event_store::Appender::start(pool.clone(), Default::default());
        let reader = event_store::Reader::new(pool.clone(), Default::default());
        Ok(InProcessStore {
            pool,
            appender,
            reader,
            committers,
        })
    }

    async fn close(self) {
        for committer in self.committers {
            committer.abort();
        }
        self.pool.close().await;
    }
}

/// The release `dbswarm` binary, next to this one, as a child process.
/// Dropping it stops the process (if `stop` has not), so that an error
/// anywhere never leaves a server behind.
struct ServerProcess {
    child: Child,
    grpc_url: String,
    http_port: u16,
    stopped: bool,
}

impl ServerProcess {
    fn start(db: &ScratchDb, serve: Serve) -> anyhow::Result<ServerProcess> {
        ServerProcess::start_with(db, serve, &[])
    }

    /// `start`, with more settings in the server's environment.
    fn start_with(db: &ScratchDb, serve: Serve, env: &[(&str, String)]) -> anyhow::Result<ServerProcess> {
        let binary: PathBuf = std::env::current_exe()?.with_file_name("dbswarm");
        let grpc_port = free_port()?;
        let http_port = free_port()?;
        let mut command = Command::new(&binary);
        if let Some(ttl_ms) = serve.cache_ttl_ms {
            command.env("DBSWARM_CACHE_TTL_MS", ttl_ms.to_string());
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .arg("serve")
            .env("DBSWARM_DATABASE_URL", &db.url)
            .env("DBSWARM_NATS_SUBJECT_PREFIX", db.subject_prefix())
            .env("DBSWARM_EVENTS_STREAM_NAME", db.events_stream())
            .env("DBSWARM_TASKS_STREAM_NAME", db.tasks_stream())
            .env("DBSWARM_RELAY_ENABLED", serve.relay.to_string())
            .env("DBSWARM_PROJECTIONS_ENABLED", serve.projections.to_string())
            .env("DBSWARM_CACHE_ENABLED", serve.cache_ttl_ms.is_some().to_string())
            .env("DBSWARM_WORKFLOWS_ENABLED", serve.workflows.to_string())
            .env("DBSWARM_REDIS_URL", redis_url())
            .env("DBSWARM_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("DBSWARM_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}: build it with cargo build --release",
                    binary.display()
                )
            })?;
        Ok(ServerProcess {
            child,
            grpc_url: format!("http://127.0.0.1:{grpc_port}"),
            http_port,
            stopped: false,
        })
    }

    /// `count` clients over `connections` connections, once the server
    /// accepts them.
    async fn clients(
        &mut self,
        count: usize,
        connections: usize,
    ) -> anyhow::Result<Vec<EventStoreClient<Channel>>> {
        let channels = self.channels(count, connections).await?;
        Ok(channels.into_iter().map(EventStoreClient::new).collect())
    }

    /// `count` handles on `connections` HTTP/2 connections (round robin),
    /// once the server accepts them.
    async fn channels(&mut self, count: usize, connections: usize) -> anyhow::Result<Vec<Channel>> {
        let endpoint = Endpoint::from_shared(self.grpc_url.clone())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if Instant::now() < deadline => {
                    self.check_running()?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("dbswarm did not accept connections within 60 s: {e}"),
            }
        };
        let mut shared = vec![first];
        for _ in 1..connections.clamp(1, count) {
            shared.push(endpoint.connect().await?);
        }
        Ok((0..count).map(|i| shared[i % shared.len()].clone()).collect())
    }

    /// An error when the server process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("dbswarm exited: {status} (its log is above)");
        }
        Ok(())
    }

    /// The server's /metrics text.
    async fn metrics(&self) -> anyhow::Result<Metrics> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let read = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await?;
            let mut body = String::new();
            stream.read_to_string(&mut body).await?;
            anyhow::Ok(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .context("dbswarm's /metrics did not answer within 30 s")??;
        Ok(Metrics(body))
    }

    /// The server's own view so far, from its metrics: mean events per
    /// group-commit batch and mean AppendToStream time inside the server.
    async fn server_means(&self) -> anyhow::Result<(f64, f64)> {
        let metrics = self.metrics().await?;
        let value = |name: &str| metrics.value(name);
        let mean = |sum: f64, count: f64| if count > 0.0 { sum / count } else { 0.0 };
        let batch = mean(
            value("dbswarm_append_batch_events_sum"),
            value("dbswarm_append_batch_events_count"),
        );
        let append_seconds = mean(
            value("dbswarm_grpc_request_duration_seconds_sum{method=\"AppendToStream\"}"),
            value("dbswarm_grpc_request_duration_seconds_count{method=\"AppendToStream\"}"),
        );
        Ok((round2(batch), round2(append_seconds * 1000.0)))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        round2(kb / 1024.0)
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    fn kill_9(&mut self) {
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scrape of the server's Prometheus metrics.
struct Metrics(String);

impl Metrics {
    /// The sample whose line starts with `name` (with its labels, as
    /// rendered), or 0 when there is none.
    fn value(&self, name: &str) -> f64 {
        self.0
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// A histogram's (sum, count) over all its label sets.
    fn histogram_totals(&self, name: &str) -> (f64, f64) {
        let total = |suffix: &str| -> f64 {
            let (labelled, bare) = (format!("{name}{suffix}{{"), format!("{name}{suffix} "));
            self.0
                .lines()
                .filter(|l| l.starts_with(&labelled) || l.starts_with(&bare))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        (total("_sum"), total("_count"))
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn one_event(i: usize) -> proto::ProposedEvent {
    proto::ProposedEvent {
        event_id: Uuid::new_v4().to_string(),
        event_type: "BenchEvent".into(),
        content_type: proto::ContentType::Json as i32,
        data: format!(r#"{{"i":{i},"payload":"benchmark event payload"}}"#).into_bytes(),
        ..Default::default()
    }
}

/// Events/s of `clients` tasks appending one event per request, each to its
/// own stream, until `events` have been written (after a warm-up).
/// Also the CPU each event cost the client, the server (`server_pid`) and
/// PostgreSQL.
async fn append_throughput(
    clients: &[EventStoreClient<Channel>],
    events: usize,
    server_pid: u32,
) -> anyhow::Result<(f64, CpuPerEvent)> {
    let run_id = Uuid::new_v4().simple().to_string();
    let warm_up = (events / 10).max(clients.len());
    append_fixed(clients, warm_up, &format!("warm-{run_id}")).await?;
    let (started, cpu) = (Instant::now(), CpuSample::now(Some(server_pid)));
    append_fixed(clients, events, &format!("tput-{run_id}")).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    Ok((rate, cpu.per_event(&CpuSample::now(Some(server_pid)), events)))
}

async fn append_fixed(
    clients: &[EventStoreClient<Channel>],
    events: usize,
    prefix: &str,
) -> anyhow::Result<()> {
    let per_client = events.div_ceil(clients.len());
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let mut client = client.clone();
        let stream_id = format!("{prefix}-{c}");
        let count = per_client.min(events.saturating_sub(c * per_client));
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let request = proto::AppendToStreamRequest {
                    stream_id: stream_id.clone(),
                    expected_version: None,
                    events: vec![one_event(i)],
                };
                client.append_to_stream(request).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The same rows, one INSERT + COMMIT each, straight through sqlx into a
/// scratch copy of the events table (same columns, indexes, defaults).
/// Also the CPU each row cost this client and PostgreSQL.
async fn insert_baseline(
    pool: &PgPool,
    connections: usize,
    events: usize,
) -> anyhow::Result<(f64, CpuPerEvent)> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_baseline (LIKE events INCLUDING ALL)")
        .execute(pool)
        .await?;
    let warm_up = (events / 10).max(connections);
    insert_fixed(pool, connections, warm_up).await?;
    let (started, cpu) = (Instant::now(), CpuSample::now(None));
    insert_fixed(pool, connections, events).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    Ok((rate, cpu.per_event(&CpuSample::now(None), events)))
}

const BASELINE_INSERT: &str = "INSERT INTO bench_baseline \
    (event_id, stream_id, aggregate_type, event_version, event_type, event_data, metadata) \
    VALUES ($1, $2, 'bench', $3, 'BenchEvent', $4::jsonb, '{}'::jsonb)";

async fn insert_fixed(pool: &PgPool, connections: usize, events: usize) -> anyhow::Result<()> {
    let per_connection = events.div_ceil(connections);
    let run = Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let pool = pool.clone();
        let stream_id = format!("base-{run}-{c}");
        let count = per_connection.min(events.saturating_sub(c * per_connection));
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            for i in 0..count {
                sqlx::query(BASELINE_INSERT)
                    .bind(Uuid::new_v4())
                    .bind(&stream_id)
                    .bind(i as i64 + 1)
                    .bind(format!(r#"{{"i":{i},"payload":"benchmark event payload"}}"#))
                    .execute(&mut *conn)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

struct Latencies {
    p50_ms: f64,
    p99_ms: f64,
    count: usize,
}

fn percentiles(mut samples: Vec<f64>) -> Latencies {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Latencies {
        p50_ms: round2(at(0.50)),
        p99_ms: round2(at(0.99)),
        count: samples.len(),
    }
}

/// Open-loop load: request k is due at k / rate seconds and its latency is
/// measured from then, so a stall counts against every request it delays.
async fn open_loop<F, Fut>(
    rate: f64,
    seconds: u64,
    in_flight_max: usize,
    send: F,
) -> anyhow::Result<Latencies>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let total = (rate * seconds as f64) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let permits = Arc::new(Semaphore::new(in_flight_max));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for k in 0..total {
        let due = started + interval * k as u32;
        tokio::time::sleep_until(due).await;
        let permit = permits.clone().acquire_owned().await?;
        let request = send(k);
        tasks.push(tokio::spawn(async move {
            request.await?;
            drop(permit);
            anyhow::Ok(due.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut samples = Vec::with_capacity(total);
    for task in tasks {
        samples.push(task.await??);
    }
    Ok(percentiles(samples))
}

async fn append_latency(
    clients: &[EventStoreClient<Channel>],
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Latencies> {
    let run = Uuid::new_v4().simple().to_string();
    let clients = clients.to_vec();
    open_loop(rate, seconds, 1024, move |k| {
        let mut client = clients[k % clients.len()].clone();
        let request = proto::AppendToStreamRequest {
            stream_id: format!("lat-{run}-{}", k % clients.len()),
            expected_version: None,
            events: vec![one_event(k)],
        };
        async move {
            client.append_to_stream(request).await?;
            Ok(())
        }
    })
    .await
}

async fn insert_latency(
    pool: &PgPool,
    connections: usize,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Latencies> {
    let run = Uuid::new_v4().simple().to_string();
    let pool = pool.clone();
    open_loop(rate, seconds, connections, move |k| {
        let pool = pool.clone();
        let stream_id = format!("baselat-{run}-{k}");
        async move {
            sqlx::query(BASELINE_INSERT)
                .bind(Uuid::new_v4())
                .bind(stream_id)
                .bind(1i64)
                .bind(format!(r#"{{"i":{k}}}"#))
                .execute(&pool)
                .await?;
            Ok(())
        }
    })
    .await
}

/// Waits (bounded) for the server's relay to create the events stream.
async fn events_stream(
    js: &async_nats::jetstream::Context,
    db: &ScratchDb,
) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
    for _ in 0..600 {
        if let Ok(stream) = js.get_stream(db.events_stream()).await {
            return Ok(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the relay did not create {} within 30 s", db.events_stream())
}

const FANOUT_RATE_PER_S: f64 = 2000.0;

/// From each append's response to its event's arrival at a JetStream
/// consumer, at a fixed 2,000 events/s.
async fn fanout_latency(args: &Args, db: &ScratchDb) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures_util::StreamExt;
    use std::collections::HashMap;
    use std::sync::Mutex;

    // Projections off: the figure is the relay's, as before read models.
    let mut server = ServerProcess::start(
        db,
        Serve {
            relay: true,
            ..Serve::EVENT_STORE
        },
    )?;
    let outcome = async {
        let clients = server.clients(args.clients, args.connections).await?;
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await?);
        let stream = events_stream(&js, db).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let total = (FANOUT_RATE_PER_S * args.latency_seconds as f64) as usize;
        let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let receiver = {
            let arrived = arrived.clone();
            let mut messages = consumer.messages().await?;
            tokio::spawn(async move {
                let mut count = 0;
                while count < total {
                    let Some(Ok(message)) = messages.next().await else { break };
                    let id = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(event_store::relay::headers::EVENT_ID))
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    arrived.lock().expect("lock").insert(id, Instant::now());
                    count += 1;
                }
            })
        };
        eprintln!("fan-out: {total} appends at {FANOUT_RATE_PER_S} events/s through the relay to a JetStream consumer");
        let answered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let run = Uuid::new_v4().simple().to_string();
        let sent = {
            let answered = answered.clone();
            let clients = clients.clone();
            open_loop(FANOUT_RATE_PER_S, args.latency_seconds, 1024, move |k| {
                let mut client = clients[k % clients.len()].clone();
                let event = one_event(k);
                let id = event.event_id.clone();
                let answered = answered.clone();
                let request = proto::AppendToStreamRequest {
                    stream_id: format!("fan-{run}-{}", k % 64),
                    expected_version: None,
                    events: vec![event],
                };
                async move {
                    client.append_to_stream(request).await?;
                    answered.lock().expect("lock").insert(id, Instant::now());
                    Ok(())
                }
            })
            .await?
        };
        tokio::time::timeout(Duration::from_secs(60), receiver).await??;
        let answered = answered.lock().expect("lock");
        let arrived = arrived.lock().expect("lock");
        let samples: Vec<f64> = answered
            .iter()
            .filter_map(|(id, at)| arrived.get(id).map(|got| got.saturating_duration_since(*at).as_secs_f64() * 1000.0))
            .collect();
        if samples.len() != total {
            bail!("{} of {total} events arrived at the consumer", samples.len());
        }
        let fanout = percentiles(samples);
        print(json!({
            "name": "fanout_latency", "value": fanout.p99_ms, "unit": "ms",
            "p50_ms": fanout.p50_ms, "p99_ms": fanout.p99_ms, "rate_per_s": FANOUT_RATE_PER_S,
            "events": fanout.count, "target_p99_ms": 25,
            "baseline_name": "append_latency_same_run", "baseline_value": sent.p50_ms,
            "baseline_p99_ms": sent.p99_ms,
            "ratio": round2(fanout.p99_ms / sent.p99_ms.max(0.01)),
            "server_rss_mb_max": server.peak_rss_mb(),
        }));
        anyhow::Ok(())
    }
    .await;
    server.stop();
    outcome
}

const RELAY_BACKLOG_EVENTS: usize = 200_000;

/// Stores the relay benchmark's backlog with the relay off.
async fn store_backlog(db: &ScratchDb) -> anyhow::Result<()> {
    let mut writer = ServerProcess::start(db, Serve::EVENT_STORE)?;
    let filled = async {
        let clients = writer.clients(8, 8).await?;
        let per_client = RELAY_BACKLOG_EVENTS / clients.len();
        let mut tasks = Vec::new();
        for (c, client) in clients.into_iter().enumerate() {
            let mut client = client;
            tasks.push(tokio::spawn(async move {
                for chunk in 0..per_client / 500 {
                    let events = (0..500).map(|i| one_event(chunk * 500 + i)).collect();
                    let request = proto::AppendToStreamRequest {
                        stream_id: format!("backlog-{c}"),
                        expected_version: None,
                        events,
                    };
                    client.append_to_stream(request).await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        anyhow::Ok(())
    }
    .await;
    writer.stop();
    filled
}

/// How fast the relay moves a backlog of stored events into JetStream,
/// against publishing the very same messages straight to a stream of the
/// same configuration with pipelined acks.
async fn relay_throughput(args: &Args, db: &ScratchDb) -> anyhow::Result<()> {
    eprintln!("relay: storing a backlog of {RELAY_BACKLOG_EVENTS} events (relay off)");
    store_backlog(db).await?;

    eprintln!("relay: moving the backlog into JetStream");
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await?);
    let mut relaying = ServerProcess::start(
        db,
        Serve {
            relay: true,
            ..Serve::EVENT_STORE
        },
    )?;
    let measured = async {
        let mut stream = events_stream(&js, db).await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let (mut first, mut first_count) = (None, 0);
        loop {
            let messages = stream.info().await?.state.messages as usize;
            if first.is_none() && messages > 0 {
                (first, first_count) = (Some(Instant::now()), messages);
            }
            if messages >= RELAY_BACKLOG_EVENTS {
                let started = first.expect("set above");
                break anyhow::Ok(
                    (RELAY_BACKLOG_EVENTS - first_count) as f64 / started.elapsed().as_secs_f64(),
                );
            }
            if Instant::now() > deadline {
                bail!("the relay moved {messages} of {RELAY_BACKLOG_EVENTS} events in 600 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    let rss = relaying.peak_rss_mb();
    relaying.stop();
    let relayed = measured?;

    eprintln!("baseline: the same messages published straight to JetStream");
    let pool = PgPoolOptions::new().max_connections(2).connect(&db.url).await?;
    let reader = event_store::Reader::new(pool.clone(), event_store::ReadConfig::default());
    let mut events = reader.read_all(event_store::ReadAllQuery::default());
    let config = event_store::relay::RelayConfig {
        subject_prefix: format!("{}base", db.subject_prefix()),
        stream_name: format!("{}_BASE", db.events_stream()),
        ..Default::default()
    };
    let mut messages = Vec::with_capacity(RELAY_BACKLOG_EVENTS);
    while let Some(event) = events.recv().await {
        let event = event?;
        messages.push((
            config.subject(&event.aggregate_type, &event.event_type),
            event_store::relay::message(&event),
        ));
    }
    pool.close().await;
    event_store::relay::ensure_events_stream(&js, &config).await?;
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(config.acks_in_flight_max);
    for (subject, message) in messages {
        if in_flight.len() >= config.acks_in_flight_max {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                in_flight.pop_front().expect("non-empty");
            ack.await?;
        }
        in_flight.push_back(js.send_publish(subject, message).await?);
    }
    for ack in in_flight {
        ack.await?;
    }
    let direct = RELAY_BACKLOG_EVENTS as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream(&config.stream_name).await;
    let _ = args;

    print(json!({
        "name": "jetstream_publish", "value": round(direct), "unit": "events/s",
        "events": RELAY_BACKLOG_EVENTS, "acks_in_flight_max": config.acks_in_flight_max,
    }));
    print(json!({
        "name": "relay_throughput", "value": round(relayed), "unit": "events/s",
        "events": RELAY_BACKLOG_EVENTS, "target_ratio": 0.8,
        "baseline_name": "jetstream_publish", "baseline_value": round(direct),
        "ratio": round2(relayed / direct),
        "server_rss_mb_max": rss,
    }));
    Ok(())
}
