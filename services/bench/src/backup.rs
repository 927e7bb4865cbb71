//! Backup benchmarks: `backup_throughput`, the MB/s (of the database's
//! size) of the backup engine's encrypted, checksummed logical backup of a
//! ~1 GB pgbench database, against `pg_dump_plain`: pg_dump of the same
//! database to a file; and `restore_throughput`, the MB/s of the engine's
//! restore of that backup into a new database, against `pg_restore_plain`:
//! pg_restore of an uncompressed custom-format dump into a new database.
//! Rounds alternate baseline and dbswarm, and the best of each is reported
//! (the fastest round is the one the least disturbed by the rest of the
//! machine: other work only ever slows a round down).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use backup::catalogue::BackupKind;
use backup::crypto::BackupKey;
use backup::engine::{BackupConfig, Backups, CatalogueStore, CreateRequest, NoProgress, Target};
use backup::tools::{self, Tools};
use domain::Limits;
use domain::target::ConnectionUrl;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::Command;
use uuid::Uuid;

use crate::{Args, InProcessStore, ScratchDb, print, round2};

/// The catalogue's name for the backed-up database.
const TARGET_NAME: &str = "bench";
/// Longest wait for `pgbench -i`.
const INIT_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for one dump, backup or restore.
const OPERATION_LIMIT: Duration = Duration::from_secs(1800);
/// MB of the figures: 10^6 bytes.
const MB: f64 = 1e6;

/// The database and the event store of the catalogue each on a scratch
/// database of their own; the repository and the baseline's files in a
/// directory of their own (next to the test cluster's data, so that both
/// sides write to the same disk). All of them removed at the end, whatever
/// the outcome.
pub(crate) async fn backup_throughput(args: &Args, admin_url: &str) -> anyhow::Result<()> {
    let work = WorkDir::create()?;
    let source = ScratchDb::create(admin_url).await?;
    let store = match ScratchDb::create(admin_url).await {
        Ok(store) => store,
        Err(e) => {
            source.drop_database(admin_url).await?;
            return Err(e.context("creating the event store of the backup catalogue"));
        }
    };
    let measured = measure(args, admin_url, &work, &source, &store).await;
    store.drop_database(admin_url).await?;
    source.drop_database(admin_url).await?;
    drop(work);
    print_figures(args, &measured?);
    Ok(())
}

/// Seconds of every round of one side, and the best.
struct Rounds(Vec<f64>);

impl Rounds {
    fn best(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn mb_per_s(&self, bytes: u64) -> f64 {
        bytes as f64 / MB / self.best().max(f64::MIN_POSITIVE)
    }

    fn rounded(&self) -> Vec<f64> {
        self.0.iter().map(|s| round2(*s)).collect()
    }
}

struct Measured {
    database_bytes: u64,
    /// Backup rounds: pg_dump's plain file, the engine's backup.
    dump_plain: Rounds,
    dump_plain_bytes: u64,
    /// fsync of pg_dump's file after its round (not in its time: pg_dump
    /// does not sync a plain-format file; the engine syncs its backup).
    dump_plain_sync_seconds: f64,
    backup: Rounds,
    stored_bytes: u64,
    plain_bytes: u64,
    /// pg_dump --format=custom --compress=0 to a file (the baseline
    /// restore's input, made once): the engine's pg_dump alone.
    dump_custom_seconds: f64,
    dump_custom_bytes: u64,
    /// Restore rounds: pg_restore of that file, the engine's restore.
    restore_plain: Rounds,
    restore: Rounds,
    restored_bytes: u64,
}

async fn measure(
    args: &Args,
    admin_url: &str,
    work: &WorkDir,
    source: &ScratchDb,
    store: &ScratchDb,
) -> anyhow::Result<Measured> {
    let tools = pg_tools();
    pgbench_init(&tools, &source.url, args.backup_scale).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&source.url)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    let database_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&pool)
        .await?;
    let database_bytes = database_bytes as u64;
    eprintln!(
        "backup: database of {:.0} MB (pgbench scale {})",
        database_bytes as f64 / MB,
        args.backup_scale
    );

    let store = InProcessStore::open(store, "the backup catalogue").await?;
    let config = BackupConfig {
        repository_dir: work.path.join("repository"),
        key: Some(BackupKey::from_text(&BackupKey::generate_text()?)?),
        key_file: None,
        tools: tools.clone(),
        scratch_dir: work.path.join("scratch"),
        archive_targets: Vec::new(),
        ..BackupConfig::default()
    };
    let backups = Backups::new(
        config,
        CatalogueStore::new(store.appender.clone(), store.reader.clone(), Limits::default()),
    );
    let target = Target {
        name: TARGET_NAME.into(),
        pool: pool.clone(),
        url: ConnectionUrl::parse(&source.url)?,
    };
    let measured = measure_rounds(args, admin_url, work, &tools, &backups, &target, database_bytes).await;
    store.close().await;
    pool.close().await;
    measured
}

async fn measure_rounds(
    args: &Args,
    admin_url: &str,
    work: &WorkDir,
    tools: &Tools,
    backups: &Backups,
    target: &Target,
    database_bytes: u64,
) -> anyhow::Result<Measured> {
    let request = CreateRequest {
        kind: BackupKind::Logical,
        tables: Vec::new(),
        checksum_tables: Vec::new(),
    };
    let (mut dump_plain, mut backup) = (Vec::new(), Vec::new());
    let (mut dump_plain_bytes, mut dump_plain_sync_seconds) = (0, 0.0);
    let mut manifest = None;
    for round in 1..=args.backup_rounds {
        let file = work.path.join(format!("plain-{round}.sql"));
        eprintln!("backup round {round}: baseline, pg_dump (plain format) to a file");
        checkpoint(&target.pool).await?;
        let mut command = tools.client("pg_dump", &target.url);
        command.arg(format!("--file={}", file.display()));
        dump_plain.push(timed(run_tool(command, "pg_dump")).await?.1);
        dump_plain_bytes = file_bytes(&file).await?;
        // Its dirty pages written back now, not during the next window.
        let (_, sync_seconds) = timed(sync_file(&file)).await?;
        dump_plain_sync_seconds = sync_seconds;
        remove_file(&file).await?;

        eprintln!("backup round {round}: dbswarm, an encrypted, checksummed logical backup");
        checkpoint(&target.pool).await?;
        let (made, seconds) = timed(async {
            backups
                .create(target, &request, &NoProgress)
                .await
                .context("Backups::create")
        })
        .await?;
        backup.push(seconds);
        manifest = Some(made);
    }
    let manifest = manifest.context("no backup round ran")?;

    eprintln!("restore: pg_dump --format=custom --compress=0 to a file (the baseline's input)");
    let custom = work.path.join("custom.dump");
    checkpoint(&target.pool).await?;
    let mut command = tools.client("pg_dump", &target.url);
    command
        .args(["--format=custom", "--compress=0"])
        .arg(format!("--file={}", custom.display()));
    let (_, dump_custom_seconds) = timed(run_tool(command, "pg_dump --format=custom")).await?;
    let dump_custom_bytes = file_bytes(&custom).await?;
    sync_file(&custom).await?;

    // Each restored database is dropped as soon as its round is measured,
    // before autovacuum gets to its new rows (and disturbs the next round).
    let (mut restore_plain, mut restore) = (Vec::new(), Vec::new());
    let mut restored_bytes = 0;
    for round in 1..=args.backup_rounds {
        eprintln!("restore round {round}: baseline, pg_restore into a new database");
        restore_plain.push(pg_restore_round(admin_url, tools, target, &custom).await?);

        eprintln!("restore round {round}: dbswarm, the backup restored into a new database");
        let into = unborn(admin_url)?;
        let restored = async {
            checkpoint(&target.pool).await?;
            timed(async {
                backups
                    .restore(target, Some(&manifest.backup_id), Some(&into.name), &NoProgress)
                    .await
                    .context("Backups::restore")
            })
            .await
        }
        .await;
        into.drop_database(admin_url).await?;
        let (restored, seconds) = restored?;
        restore.push(seconds);
        restored_bytes = restored.bytes;
    }
    remove_file(&custom).await?;

    Ok(Measured {
        database_bytes,
        dump_plain: Rounds(dump_plain),
        dump_plain_bytes,
        dump_plain_sync_seconds,
        backup: Rounds(backup),
        stored_bytes: manifest.stored_bytes(),
        plain_bytes: manifest.plain_bytes(),
        dump_custom_seconds,
        dump_custom_bytes,
        restore_plain: Rounds(restore_plain),
        restore: Rounds(restore),
        restored_bytes,
    })
}

/// The baseline's restore round: pg_restore of `custom` into a new
/// database, dropped once measured; its seconds.
async fn pg_restore_round(
    admin_url: &str,
    tools: &Tools,
    target: &Target,
    custom: &Path,
) -> anyhow::Result<f64> {
    let into = unborn(admin_url)?;
    let restored = async {
        let mut admin = PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{}\" TEMPLATE template0",
            into.name
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        checkpoint(&target.pool).await?;
        let mut command = tools.client("pg_restore", &target.url.with_database(&into.name));
        command.arg(custom);
        timed(run_tool(command, "pg_restore")).await
    }
    .await;
    into.drop_database(admin_url).await?;
    Ok(restored?.1)
}

fn print_figures(args: &Args, m: &Measured) {
    let size = m.database_bytes;
    let (dump_plain, backup) = (m.dump_plain.mb_per_s(size), m.backup.mb_per_s(size));
    let (restore_plain, restore) = (m.restore_plain.mb_per_s(size), m.restore.mb_per_s(size));
    print(json!({
        "name": "pg_dump_plain", "value": round2(dump_plain), "unit": "MB/s",
        "database_bytes": size, "file_bytes": m.dump_plain_bytes,
        "seconds": round2(m.dump_plain.best()), "rounds_seconds": m.dump_plain.rounded(),
        "sync_seconds": round2(m.dump_plain_sync_seconds), "pgbench_scale": args.backup_scale,
    }));
    print(json!({
        "name": "backup_throughput", "value": round2(backup), "unit": "MB/s",
        "database_bytes": size, "stored_bytes": m.stored_bytes, "dump_bytes": m.plain_bytes,
        "seconds": round2(m.backup.best()), "rounds_seconds": m.backup.rounded(),
        "baseline_seconds": round2(m.dump_plain.best()),
        "pg_dump_custom_seconds": round2(m.dump_custom_seconds),
        "pgbench_scale": args.backup_scale, "target_ratio": 0.8,
        "baseline_name": "pg_dump_plain", "baseline_value": round2(dump_plain),
        "ratio": round2(backup / dump_plain.max(f64::MIN_POSITIVE)),
    }));
    print(json!({
        "name": "pg_restore_plain", "value": round2(restore_plain), "unit": "MB/s",
        "database_bytes": size, "file_bytes": m.dump_custom_bytes,
        "seconds": round2(m.restore_plain.best()), "rounds_seconds": m.restore_plain.rounded(),
        "pgbench_scale": args.backup_scale,
    }));
    print(json!({
        "name": "restore_throughput", "value": round2(restore), "unit": "MB/s",
        "database_bytes": size, "stored_bytes": m.stored_bytes, "restored_bytes": m.restored_bytes,
        "seconds": round2(m.restore.best()), "rounds_seconds": m.restore.rounded(),
        "baseline_seconds": round2(m.restore_plain.best()),
        "pgbench_scale": args.backup_scale,
        "baseline_name": "pg_restore_plain", "baseline_value": round2(restore_plain),
        "ratio": round2(restore / restore_plain.max(f64::MIN_POSITIVE)),
    }));
}

/// The value of `work` and its seconds, bounded by OPERATION_LIMIT.
async fn timed<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, f64)> {
    let started = Instant::now();
    let value = tokio::time::timeout(OPERATION_LIMIT, work)
        .await
        .with_context(|| format!("the operation took longer than {} s", OPERATION_LIMIT.as_secs()))??;
    Ok((value, started.elapsed().as_secs_f64()))
}

/// A database name and URL on the test server, not created: a restore
/// creates it.
fn unborn(admin_url: &str) -> anyhow::Result<ScratchDb> {
    let name = format!("dbswarm_bench_{}", Uuid::new_v4().simple());
    let (base, _) = admin_url.rsplit_once('/').context("admin URL without a path")?;
    Ok(ScratchDb {
        url: format!("{base}/{name}"),
        name,
    })
}

/// A checkpoint before each measured window, so that no round pays for
/// the writes of the one before.
async fn checkpoint(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CHECKPOINT")
        .execute(pool)
        .await
        .context("CHECKPOINT before a measured window")?;
    Ok(())
}

/// PostgreSQL's programs, the same for both sides: from DBSWARM_PG_BIN,
/// else the backup engine's default (PostgreSQL 15's Debian directory).
fn pg_tools() -> Tools {
    match std::env::var("DBSWARM_PG_BIN") {
        Ok(dir) => Tools {
            bin_dir: PathBuf::from(dir),
        },
        Err(_) => Tools::default(),
    }
}

/// `pgbench -i`: pgbench's tables, `scale` × 100,000 accounts (~15.7 MB
/// of database each).
async fn pgbench_init(tools: &Tools, url: &str, scale: u32) -> anyhow::Result<()> {
    eprintln!(
        "backup: pgbench -i -s {scale} ({} accounts)",
        u64::from(scale) * 100_000
    );
    let mut command = Command::new(tools.program("pgbench"));
    command
        .args(["-i", "-q", "-s", &scale.to_string(), url])
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tokio::time::timeout(INIT_LIMIT, run_tool(command, "pgbench -i"))
        .await
        .with_context(|| format!("pgbench -i took longer than {} s", INIT_LIMIT.as_secs()))?
}

/// Runs a program to its end; its stderr is the error when it fails (the
/// child is killed if the future is dropped first).
async fn run_tool(command: Command, what: &str) -> anyhow::Result<()> {
    tools::run(command, what)
        .await
        .with_context(|| format!("running {what}: set DBSWARM_PG_BIN to the directory of PostgreSQL's programs if they are elsewhere"))
}

async fn file_bytes(path: &Path) -> anyhow::Result<u64> {
    Ok(tokio::fs::metadata(path)
        .await
        .with_context(|| format!("{}", path.display()))?
        .len())
}

async fn sync_file(path: &Path) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("{}", path.display()))?;
    file.sync_all()
        .await
        .with_context(|| format!("fsync of {}", path.display()))
}

async fn remove_file(path: &Path) -> anyhow::Result<()> {
    tokio::fs::remove_file(path)
        .await
        .with_context(|| format!("removing {}", path.display()))
}

/// The run's repository and files: under the test services' directory
/// (.dbswarm/test, when run from the repository as `make bench` does), else
/// the temporary directory; removed when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let services = Path::new(".dbswarm/test");
        let parent = if services.is_dir() {
            services.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = parent.join(format!("bench-backup-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
