//! Migration benchmark: `backfill_throughput`, the rows/s of the schema
//! agent's batched backfill (an `alter_column` type change of every row of
//! pgbench_accounts, expand + keyset batches through the migration engine),
//! against `single_update`: the same column work as one plain UPDATE of the
//! whole table. Both on a fresh pgbench database of their own while
//! pgbench's TPC-B-like load runs, each with the latencies pgbench saw
//! during the operation: batching trades rows/s for those.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::Limits;
use domain::target::ConnectionUrl;
use event_store::clock::now_us;
use schema::migration::{Format, HistoryStore, Migration, MigrationConfig, Migrator, NoProgress, Target};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};
use tokio::process::Command;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{Args, InProcessStore, ScratchDb, percentiles, print, round, round2};

/// The migration measured: a new bigint column, filled from the old one
/// for every row by the backfill (and kept in sync by a trigger).
const MIGRATION: &str = "name: bench_backfill
operations:
  - alter_column: {table: pgbench_accounts, column: abalance, type: bigint}
";
/// The baseline's expand, before its measured window (a catalog-only change).
const BASELINE_ADD_COLUMN: &str = "ALTER TABLE pgbench_accounts ADD COLUMN abalance_new bigint";
/// The baseline's measured work: the same column filled in one statement.
const BASELINE_UPDATE: &str = "UPDATE pgbench_accounts SET abalance_new = abalance";
/// pgbench's clients and threads during each measured operation.
const PGBENCH_CLIENTS: u32 = 4;
const PGBENCH_THREADS: u32 = 2;
/// Seconds of each of the back-to-back pgbench runs that make up the load.
/// One long run stopped by a signal would lose the tail of its
/// per-transaction log (pgbench buffers it); a run that ends on its own
/// first finishes the transactions in flight, those a lock holds back too.
const PGBENCH_RUN_S: u64 = 2;
/// Load before the measured operation starts: pgbench connected, its
/// latencies steady.
const LOAD_WARM_UP: Duration = Duration::from_secs(2);
/// Longest wait for `pgbench -i`.
const INIT_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for one measured operation.
const OPERATION_LIMIT: Duration = Duration::from_secs(1800);
/// Longest wait for the load to end once the operation has.
const LOAD_STOP_LIMIT: Duration = Duration::from_secs(120);
/// The migration engine's name for the target database.
const TARGET_NAME: &str = "bench";

/// Both runs, the baseline first, each on a database of its own that is
/// dropped before the next run starts (so that neither meets the other's
/// autovacuum of a million dead rows).
pub(crate) async fn backfill_throughput(args: &Args, admin_url: &str) -> anyhow::Result<()> {
    let db = ScratchDb::create(admin_url).await?;
    let baseline = single_update(args, &db).await;
    db.drop_database(admin_url).await?;
    let baseline = baseline?;

    let store = ScratchDb::create(admin_url).await?;
    let target = match ScratchDb::create(admin_url).await {
        Ok(target) => target,
        Err(e) => {
            store.drop_database(admin_url).await?;
            return Err(e.context("creating the migration's target database"));
        }
    };
    let batched = batched_backfill(args, &store, &target).await;
    target.drop_database(admin_url).await?;
    store.drop_database(admin_url).await?;
    let batched = batched?;

    print_figures(args, &batched, &baseline);
    Ok(())
}

fn print_figures(args: &Args, batched: &Measured, baseline: &Measured) {
    print(json!({
        "name": "single_update", "value": round(baseline.rows_per_s()), "unit": "rows/s",
        "rows": baseline.rows, "duration_ms": round(baseline.duration_ms),
        "pgbench_p50_ms": baseline.load.p50_ms, "pgbench_p99_ms": baseline.load.p99_ms,
        "pgbench_max_ms": baseline.load.max_ms, "pgbench_transactions": baseline.load.transactions,
        "pgbench_failed": baseline.load.failed, "pgbench_clients": PGBENCH_CLIENTS,
        "pgbench_scale": args.backfill_scale,
    }));
    print(json!({
        "name": "backfill_throughput", "value": round(batched.rows_per_s()), "unit": "rows/s",
        "rows": batched.rows, "duration_ms": round(batched.duration_ms),
        "batch_rows": args.backfill_batch_rows, "pause_ms": args.backfill_pause_ms,
        "pgbench_p50_ms": batched.load.p50_ms, "pgbench_p99_ms": batched.load.p99_ms,
        "pgbench_max_ms": batched.load.max_ms, "pgbench_transactions": batched.load.transactions,
        "pgbench_failed": batched.load.failed, "pgbench_clients": PGBENCH_CLIENTS,
        "pgbench_scale": args.backfill_scale,
        "baseline_name": "single_update", "baseline_value": round(baseline.rows_per_s()),
        "baseline_pgbench_p99_ms": baseline.load.p99_ms, "baseline_pgbench_max_ms": baseline.load.max_ms,
        "ratio": round2(batched.rows_per_s() / baseline.rows_per_s().max(f64::MIN_POSITIVE)),
    }));
}

/// One operation's rows and time, and what pgbench saw meanwhile.
struct Measured {
    rows: u64,
    duration_ms: f64,
    load: LoadLatencies,
}

impl Measured {
    fn rows_per_s(&self) -> f64 {
        self.rows as f64 * 1000.0 / self.duration_ms.max(f64::MIN_POSITIVE)
    }
}

/// `single_update`: the column added before the window, then filled by
/// one UPDATE of every row while pgbench writes.
async fn single_update(args: &Args, db: &ScratchDb) -> anyhow::Result<Measured> {
    pgbench_init(&db.url, args.backfill_scale).await?;
    let mut conn = PgConnection::connect(&db.url).await?;
    sqlx::query(BASELINE_ADD_COLUMN).execute(&mut conn).await?;
    checkpoint(&mut conn).await?;
    eprintln!(
        "backfill baseline: one UPDATE of every row of pgbench_accounts (scale {}), pgbench writing",
        args.backfill_scale
    );
    let (rows, measured) = under_load(&db.url, async {
        let done = sqlx::query(BASELINE_UPDATE).execute(&mut conn).await?;
        anyhow::Ok(done.rows_affected())
    })
    .await?;
    conn.close().await?;
    Ok(measured.with_rows(rows))
}

/// `backfill_throughput`: the migration applied (expand + backfill, not
/// completed) by the migration engine, its history in an event store of
/// its own, while pgbench writes.
async fn batched_backfill(args: &Args, store: &ScratchDb, target_db: &ScratchDb) -> anyhow::Result<Measured> {
    pgbench_init(&target_db.url, args.backfill_scale).await?;
    let store = InProcessStore::open(store, "the migration history").await?;
    let migrator = Migrator::new(
        HistoryStore::new(store.appender.clone(), store.reader.clone(), Limits::default()),
        migration_config(args),
    );
    let applied = async {
        let target = migration_target(&target_db.url).await?;
        checkpoint(&mut *target.pool.acquire().await?).await?;
        let migration = Migration::parse(MIGRATION, Format::Yaml, None)?;
        eprintln!(
            "backfill: the migration engine's batched backfill ({} rows a batch, {} ms pause) \
             of pgbench_accounts (scale {}), pgbench writing",
            args.backfill_batch_rows, args.backfill_pause_ms, args.backfill_scale
        );
        let (report, measured) = under_load(&target_db.url, async {
            migrator
                .apply(&target, migration, false, &NoProgress)
                .await
                .context("applying the migration bench_backfill")
        })
        .await?;
        target.pool.close().await;
        anyhow::Ok(measured.with_rows(report.rows_backfilled))
    }
    .await;
    store.close().await;
    applied
}

fn migration_config(args: &Args) -> MigrationConfig {
    MigrationConfig {
        backfill_batch_rows: args.backfill_batch_rows,
        backfill_pause_ms: args.backfill_pause_ms,
        ..MigrationConfig::default()
    }
}

async fn migration_target(url: &str) -> anyhow::Result<Target> {
    Ok(Target {
        name: TARGET_NAME.into(),
        pool: PgPoolOptions::new().max_connections(4).connect(url).await?,
        url: ConnectionUrl::parse(url)?,
    })
}

/// A checkpoint before each measured window, so that neither operation
/// pays for the writes of the database's creation.
async fn checkpoint(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("CHECKPOINT")
        .execute(conn)
        .await
        .context("CHECKPOINT before a measured window")?;
    Ok(())
}

/// A measured operation's time and what pgbench saw during it (its rows
/// come from the operation's own result).
struct Window {
    duration_ms: f64,
    load: LoadLatencies,
}

impl Window {
    fn with_rows(self, rows: u64) -> Measured {
        Measured {
            rows,
            duration_ms: self.duration_ms,
            load: self.load,
        }
    }
}

/// Runs `operation` while pgbench runs (from a warm-up before it until
/// the transactions in flight at its end have finished), and the
/// latencies of the pgbench transactions that overlapped it.
async fn under_load<T>(
    url: &str,
    operation: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Window)> {
    let logs = LogDir::create()?;
    let mut load = PgbenchLoad::start(url, &logs);
    tokio::time::sleep(LOAD_WARM_UP).await;
    load.check_running().await?;
    let (started, started_us) = (Instant::now(), now_us());
    let outcome = tokio::time::timeout(OPERATION_LIMIT, operation)
        .await
        .with_context(|| format!("the operation took longer than {} s", OPERATION_LIMIT.as_secs()));
    let (duration_ms, ended_us) = (started.elapsed().as_secs_f64() * 1000.0, now_us());
    let stopped = load.stop().await;
    let value = outcome??;
    stopped?;
    let load = logs.latencies_within(started_us, ended_us)?;
    Ok((value, Window { duration_ms, load }))
}

/// What pgbench saw during a measured window.
struct LoadLatencies {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Transactions that overlapped the window and committed.
    transactions: usize,
    /// Transactions that ended in the window with an error.
    failed: usize,
}

/// pgbench's built-in TPC-B-like load on one database, run after run until
/// stopped, the per-transaction logs in a LogDir. Dropping it ends the
/// load: the running pgbench is killed.
struct PgbenchLoad {
    stop: Arc<AtomicBool>,
    runs: JoinHandle<anyhow::Result<()>>,
}

impl PgbenchLoad {
    fn start(url: &str, logs: &LogDir) -> PgbenchLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = tokio::spawn(pgbench_runs(url.to_owned(), logs.prefix(), stop.clone()));
        PgbenchLoad { stop, runs }
    }

    /// Why pgbench has stopped already, if it has.
    async fn check_running(&mut self) -> anyhow::Result<()> {
        if self.runs.is_finished() {
            (&mut self.runs).await.context("the pgbench load task")??;
            bail!("pgbench stopped before the measured operation started");
        }
        Ok(())
    }

    /// Ends the load once its current run has (with the transactions it
    /// has in flight).
    async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let ended = tokio::time::timeout(LOAD_STOP_LIMIT, &mut self.runs)
            .await
            .with_context(|| {
                format!(
                    "pgbench's last run did not end within {} s",
                    LOAD_STOP_LIMIT.as_secs()
                )
            })?;
        ended.context("the pgbench load task")?
    }
}

impl Drop for PgbenchLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Drops the running pgbench's Child, which kills it (kill_on_drop).
        self.runs.abort();
    }
}

/// pgbench runs of PGBENCH_RUN_S seconds, one after another, until `stop`.
async fn pgbench_runs(url: String, log_prefix: String, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let (clients, threads, seconds) = (
        PGBENCH_CLIENTS.to_string(),
        PGBENCH_THREADS.to_string(),
        PGBENCH_RUN_S.to_string(),
    );
    while !stop.load(Ordering::SeqCst) {
        let mut command = Command::new(pg_bin("pgbench"));
        command
            .args(["-n", "-c", &clients, "-j", &threads, "-T", &seconds, "-l"])
            .arg(format!("--log-prefix={log_prefix}"))
            .arg(&url);
        run_to_end(command, "pgbench").await?;
    }
    Ok(())
}

/// `pgbench -i`: pgbench's tables, `scale` × 100,000 accounts.
async fn pgbench_init(url: &str, scale: u32) -> anyhow::Result<()> {
    eprintln!(
        "backfill: pgbench -i -s {scale} ({} accounts)",
        u64::from(scale) * 100_000
    );
    let mut command = Command::new(pg_bin("pgbench"));
    command.args(["-i", "-q", "-s", &scale.to_string(), url]);
    tokio::time::timeout(INIT_LIMIT, run_to_end(command, "pgbench -i"))
        .await
        .with_context(|| format!("pgbench -i took longer than {} s", INIT_LIMIT.as_secs()))?
}

/// Runs a command to its end, its output kept for the error message; the
/// process is killed if the future is dropped first.
async fn run_to_end(mut command: Command, what: &str) -> anyhow::Result<()> {
    let program = PathBuf::from(command.as_std().get_program());
    let output = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| {
            format!(
                "cannot run {}: set DBSWARM_PG_BIN to the directory of PostgreSQL's programs",
                program.display()
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let said = if stderr.trim().is_empty() { stdout } else { stderr };
        bail!("{what} failed ({}): {}", output.status, said.trim());
    }
    Ok(())
}

/// A PostgreSQL program: from DBSWARM_PG_BIN, else PostgreSQL 15's
/// Debian directory (as scripts/services.sh).
fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var("DBSWARM_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(name)
}

/// A temporary directory of pgbench logs, removed when dropped.
struct LogDir {
    path: PathBuf,
}

impl LogDir {
    fn create() -> anyhow::Result<LogDir> {
        let path = std::env::temp_dir().join(format!("dbswarm-bench-pgbench-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(LogDir { path })
    }

    /// pgbench names its logs `<prefix>.<pid>[.<thread>]`.
    fn prefix(&self) -> String {
        self.path.join("tx").display().to_string()
    }

    /// Latencies of the transactions that overlapped [started_us, ended_us]
    /// (Unix µs): those that began before it and waited through it count.
    fn latencies_within(&self, started_us: u64, ended_us: u64) -> anyhow::Result<LoadLatencies> {
        let (mut latencies_ms, mut failed) = (Vec::new(), 0);
        for entry in std::fs::read_dir(&self.path)? {
            let path = entry?.path();
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            for line in text.lines() {
                let transaction = LoggedTransaction::parse(line)
                    .with_context(|| format!("{}: unexpected line '{line}'", path.display()))?;
                match transaction.latency_us {
                    Some(latency_us) => {
                        let began_us = transaction.ended_us.saturating_sub(latency_us);
                        if transaction.ended_us >= started_us && began_us <= ended_us {
                            latencies_ms.push(latency_us as f64 / 1000.0);
                        }
                    }
                    None if (started_us..=ended_us).contains(&transaction.ended_us) => failed += 1,
                    None => {}
                }
            }
        }
        if latencies_ms.is_empty() {
            bail!("pgbench committed no transaction during the measured operation");
        }
        let max_ms = latencies_ms.iter().copied().fold(0.0, f64::max);
        let spread = percentiles(latencies_ms);
        Ok(LoadLatencies {
            p50_ms: spread.p50_ms,
            p99_ms: spread.p99_ms,
            max_ms: round2(max_ms),
            transactions: spread.count,
            failed,
        })
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One line of pgbench's per-transaction log:
/// `client_id transaction_no time script_no time_epoch time_us [...]`,
/// where `time` is the latency in µs, or `failed`/`serialization`/
/// `deadlock`/`skipped` when the transaction did not commit, and
/// `time_epoch`.`time_us` its end.
struct LoggedTransaction {
    latency_us: Option<u64>,
    ended_us: u64,
}

impl LoggedTransaction {
    fn parse(line: &str) -> anyhow::Result<LoggedTransaction> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            bail!("fewer than 6 fields");
        }
        let epoch_s: u64 = fields[4].parse()?;
        let fraction_us: u64 = fields[5].parse()?;
        Ok(LoggedTransaction {
            latency_us: fields[2].parse().ok(),
            ended_us: epoch_s * 1_000_000 + fraction_us,
        })
    }
}
