//! `dbswarm`: the CLI over the server library.

use std::path::PathBuf;

/// The relay and the gRPC paths allocate many small buffers per event;
/// mimalloc measured markedly cheaper than glibc malloc for that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup_cli;
mod cli;
mod migrate_cli;

use anyhow::Context;
use clap::{Parser, Subcommand};
use server::{Config, Settings};

/// dbswarm: an event-sourced control plane for PostgreSQL operations.
///
/// Settings come from built-in defaults, then a TOML file (--config), then
/// DBSWARM_* environment variables, then flags; later ones win.
#[derive(Parser)]
#[command(name = "dbswarm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve gRPC (EventStore, Admin, Projections,
    /// Workflows, health, reflection) and HTTP (/metrics, /healthz), and run
    /// the relay, projections, agents, workflow driver and scheduler, until
    /// SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply dbswarm's own database migrations and exit; or, with a
    /// subcommand, lint, plan, apply, complete, roll back or show a target
    /// database's migrations.
    Migrate(MigrateArgs),
    /// Backups of target databases: create, list, verify, restore,
    /// restore-pitr, test-restore, apply-retention; and generate-key, and
    /// wal-push / wal-fetch (PostgreSQL's archive and restore commands).
    #[command(subcommand)]
    Backup(backup_cli::BackupCommand),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct MigrateArgs {
    #[command(subcommand)]
    target: Option<TargetMigration>,
    #[command(flatten)]
    own: ServeArgs,
}

#[derive(Subcommand)]
enum TargetMigration {
    /// Lint a migration (a SQL file) against a target database's catalog:
    /// every statement's lock level, rewrite and size, and its hazards with
    /// the safe alternative. Exits with 1 when a hazard is blocking.
    Lint(LintArgs),
    #[command(flatten)]
    Lifecycle(migrate_cli::Lifecycle),
}

#[derive(clap::Args)]
struct LintArgs {
    /// The migration's SQL.
    file: PathBuf,
    /// The target database (postgres://user:password@host:port/database).
    #[arg(long, env = "DBSWARM_TARGET_URL", value_name = "URL", hide_env_values = true)]
    target_url: String,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names,
    /// with underscores: grpc_addr = "127.0.0.1:50051"). Unknown keys are errors.
    #[arg(long, env = "DBSWARM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl ServeArgs {
    fn load(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Ok(Config::from_settings(self.settings.over(file))?)
    }
}

/// Exit code of a lint (or plan, or apply) that found a blocking hazard,
/// of a backup verification or restore test that failed, of a
/// wal-fetch of a file the archive does not have, and of a
/// `wal-push --check` whose key cannot be read (the backup agent relies on it).
const EXIT_BLOCKING: u8 = 1;
/// Exit code of a command that could not do its work.
const EXIT_FAILED: u8 = 2;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Done) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::Blocking) => std::process::ExitCode::from(EXIT_BLOCKING),
        Err(error) => {
            // One line a person can act on, not a backtrace.
            eprintln!("dbswarm: {error:#}");
            std::process::ExitCode::from(EXIT_FAILED)
        }
    }
}

/// How a command that did its work ended.
enum Outcome {
    Done,
    /// A lint found a blocking hazard.
    Blocking,
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let runtime = api::runtime::multi_thread().context("cannot start the Tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args.load()?).await.map(|()| Outcome::Done),
            Command::Migrate(MigrateArgs {
                target: Some(TargetMigration::Lint(args)),
                ..
            }) => lint(args).await,
            Command::Migrate(MigrateArgs {
                target: Some(TargetMigration::Lifecycle(command)),
                ..
            }) => Ok(match migrate_cli::run(command).await? {
                migrate_cli::Ended::Done => Outcome::Done,
                migrate_cli::Ended::Blocking => Outcome::Blocking,
            }),
            Command::Migrate(args) => migrate(args.own.load()?).await.map(|()| Outcome::Done),
            Command::Backup(command) => Ok(match backup_cli::run(command).await? {
                backup_cli::Ended::Done => Outcome::Done,
                backup_cli::Ended::Failed => Outcome::Blocking,
            }),
        }
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _telemetry =
        server::telemetry::init_tracing(config.log_format, server::telemetry::otlp_endpoint_from_env())?;
    let mut running = server::start(config).await?;
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            running.shutdown().await?;
            Ok(())
        }
        error = running.failed() => Err(error.into()),
    }
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let pool = server::connect(&config).await?;
    event_store::MIGRATOR
        .run(&pool)
        .await
        .context("cannot apply migrations")?;
    println!("migrations applied to {}", redact(&config.database_url));
    Ok(())
}

async fn lint(args: LintArgs) -> anyhow::Result<Outcome> {
    let sql = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let url = domain::target::ConnectionUrl::parse(&args.target_url)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url.expose())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {}", url.scrub(&e.to_string())))?;
    let facts = schema::facts::read_facts(&pool)
        .await
        .map_err(|e| anyhow::anyhow!(url.scrub(&e.to_string())))?;
    let report = schema::lint(&sql, &facts).with_context(|| format!("{}", args.file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human_report(&report));
    }
    Ok(if report.summary.blocking_count > 0 {
        Outcome::Blocking
    } else {
        Outcome::Done
    })
}

/// The lint report for a person: one block per statement, then a summary.
fn human_report(report: &schema::MigrationReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for statement in &report.statements {
        let first_line = statement.sql.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let _ = writeln!(out, "{:>3}  {}", statement.index, first_line.trim());
        let lock = statement
            .lock
            .map_or("no table lock".to_owned(), |l| l.to_string());
        let mut facts = vec![lock];
        if statement.rewrites_table {
            facts.push("rewrites the table".into());
        } else if statement.scans_table {
            facts.push("scans the table".into());
        }
        if let Some(rows) = statement.estimated_affected_rows {
            facts.push(format!("~{rows} rows"));
        }
        if let Some(bytes) = statement.estimated_affected_bytes {
            facts.push(format!("~{bytes} bytes"));
        }
        if !statement.tables.is_empty() {
            facts.push(format!("on {}", statement.tables.join(", ")));
        }
        let _ = writeln!(out, "     {}", facts.join("; "));
        for finding in &statement.findings {
            let severity = match finding.severity {
                schema::Severity::Blocking => "BLOCKING",
                schema::Severity::Warning => "warning",
            };
            let _ = writeln!(out, "     {severity} {}: {}", finding.rule, finding.message);
            let _ = writeln!(out, "       instead: {}", finding.safe_alternative);
        }
    }
    let summary = &report.summary;
    let _ = writeln!(
        out,
        "{} statement(s), {} blocking, {} warning(s)",
        summary.statement_count, summary.blocking_count, summary.warning_count
    );
    out
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
