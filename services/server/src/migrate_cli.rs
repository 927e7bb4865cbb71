//! `dbswarm migrate plan|apply|complete|rollback|status`: a target
//! database's migrations from the command line (CI pipelines), with the
//! same engine and the same history (events in dbswarm's own database) as
//! the schema agent's operations. Human output by default, `--json` for
//! machines.

use std::fmt::Write;
use std::path::Path;

use schema::migration::{
    HistoryStore, Migration, MigrationError, Migrator, PlanReport, RunReport, StatusReport, Target, load_file,
};

use crate::cli::{self, RunArgs, StderrProgress, print};

#[derive(clap::Args)]
pub struct MigrationArg {
    /// The migration: a file (.yaml, .yml, .json or .sql; its name is the
    /// file name without extension) or the name of one in schema_migrations_dir.
    migration: String,
}

#[derive(clap::Subcommand)]
pub enum Lifecycle {
    /// Show every statement of every phase, the lint of its SQL and what
    /// depends on what it changes; changes nothing. Exits with 1 when lint
    /// finds a blocking hazard.
    Plan {
        #[command(flatten)]
        migration: MigrationArg,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Expand (new columns, sync triggers, views of the new version in
    /// schema <schema>_<migration>), backfill in batches and validate;
    /// with --complete, contract too. Applying a migration in progress
    /// resumes it. Exits with 1 when lint finds a blocking hazard.
    Apply {
        #[command(flatten)]
        migration: MigrationArg,
        /// Complete (contract) right after the expand.
        #[arg(long)]
        complete: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Contract the migration in progress: the old shape goes.
    Complete {
        /// The migration in progress (default: whichever it is).
        migration: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Undo the migration in progress (before complete): the database is
    /// left as it was before apply.
    Rollback {
        /// The migration in progress (default: whichever it is).
        migration: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Applied migrations, the one in progress, and those waiting in schema_migrations_dir.
    Status {
        #[command(flatten)]
        run: RunArgs,
    },
}

/// How a lifecycle command ended, when it did its work.
pub enum Ended {
    Done,
    Blocking,
}

pub async fn run(command: Lifecycle) -> anyhow::Result<Ended> {
    match command {
        Lifecycle::Plan { migration, run } => {
            let (migrator, target, json) = connect(run).await?;
            let migration = resolve(&migrator, &migration.migration)?;
            let report = migrator.plan(&target, migration).await?;
            let blocking = report.lint.iter().any(|l| l.report.summary.blocking_count > 0);
            print(json, &report, human_plan)?;
            Ok(if blocking { Ended::Blocking } else { Ended::Done })
        }
        Lifecycle::Apply {
            migration,
            complete,
            run,
        } => {
            let (migrator, target, json) = connect(run).await?;
            let migration = resolve(&migrator, &migration.migration)?;
            match migrator
                .apply(&target, migration, complete, &StderrProgress)
                .await
            {
                Ok(report) => print(json, &report, human_run).map(|()| Ended::Done),
                Err(error @ MigrationError::Lint { .. }) => {
                    eprintln!("dbswarm: {error}");
                    Ok(Ended::Blocking)
                }
                Err(error) => Err(error.into()),
            }
        }
        Lifecycle::Complete { migration, run } => {
            let (migrator, target, json) = connect(run).await?;
            let report = migrator.complete(&target, migration.as_deref()).await?;
            print(json, &report, human_run).map(|()| Ended::Done)
        }
        Lifecycle::Rollback { migration, run } => {
            let (migrator, target, json) = connect(run).await?;
            let report = migrator.rollback(&target, migration.as_deref()).await?;
            print(json, &report, human_run).map(|()| Ended::Done)
        }
        Lifecycle::Status { run } => {
            let (migrator, target, json) = connect(run).await?;
            let report = migrator.status(&target).await?;
            print(json, &report, human_status).map(|()| Ended::Done)
        }
    }
}

/// The engine on dbswarm's own database and the registered target.
async fn connect(run: RunArgs) -> anyhow::Result<(Migrator, Target, bool)> {
    let connected = cli::connect(run.own.load()?, schema::agent::AGENT, &run.database).await?;
    let migrator = Migrator::new(
        HistoryStore::new(connected.appender, connected.reader, connected.config.limits),
        connected.config.schema,
    );
    let target = Target {
        name: run.database,
        pool: connected.target_pool,
        url: connected.url,
    };
    Ok((migrator, target, run.json))
}

fn resolve(migrator: &Migrator, migration: &str) -> anyhow::Result<Migration> {
    let path = Path::new(migration);
    if path.extension().is_some() || path.components().count() > 1 {
        return Ok(load_file(path)?);
    }
    Ok(migrator.named(migration)?)
}

/// One step of a plan: what it does, the lock it takes, its SQL.
fn write_step(out: &mut String, description: &str, sql: &str, lock: Option<agents::pg::LockLevel>) {
    match lock {
        Some(lock) => {
            let _ = writeln!(out, "    - {description}  [{lock} on the table]");
        }
        None => {
            let _ = writeln!(out, "    - {description}");
        }
    }
    for line in sql.lines() {
        let _ = writeln!(out, "        {line}");
    }
}

fn human_plan(report: &PlanReport) -> String {
    let mut out = String::new();
    let m = &report.migration;
    let _ = writeln!(
        out,
        "migration {} on database {} ({} operation(s))",
        m.name,
        report.database,
        m.operations.len()
    );
    let _ = writeln!(out, "  {}", report.verdict);
    let _ = writeln!(
        out,
        "  new version: SET search_path TO {}, {}",
        report.plan.version_schema, m.schema
    );
    let step = write_step;
    let _ = writeln!(out, "expand:");
    step(
        &mut out,
        &report.plan.create_version_schema.description,
        &report.plan.create_version_schema.sql,
        None,
    );
    for item in &report.plan.expand {
        match item {
            schema::migration::steps::ExpandItem::Step(s) => step(&mut out, &s.description, &s.sql, s.lock),
            schema::migration::steps::ExpandItem::Script(s) => step(
                &mut out,
                &format!("operation {} (sql): see its lint below", s.operation),
                &s.up,
                None,
            ),
        }
    }
    for backfill in &report.plan.backfills {
        let _ = writeln!(
            out,
            "backfill: {} (~{} rows) in key order of {}, in batches (ROW EXCLUSIVE, row locks of one batch at a time)",
            backfill.table, backfill.estimated_rows, backfill.key
        );
    }
    if !report.plan.validate.is_empty() {
        let _ = writeln!(out, "validate:");
        for s in &report.plan.validate {
            step(&mut out, &s.description, &s.sql, s.lock);
        }
    }
    let _ = writeln!(out, "complete (one transaction):");
    for s in &report.plan.complete {
        step(&mut out, &s.description, &s.sql, s.lock);
    }
    let _ = writeln!(out, "rollback (before complete):");
    for s in report.plan.rollback.iter().chain(&report.plan.rollback_indexes) {
        step(&mut out, &s.description, &s.sql, s.lock);
    }
    for s in &report.plan.rollback_scripts {
        match &s.down {
            Some(down) => step(
                &mut out,
                &format!("operation {} (sql) down", s.operation),
                down,
                None,
            ),
            None => step(
                &mut out,
                &format!("operation {} (sql) has no down", s.operation),
                "-- cannot be undone",
                None,
            ),
        }
    }
    for object in &report.dependents {
        let names: Vec<String> = object
            .dependents
            .iter()
            .map(|d| format!("{} {}", d.kind, d.name))
            .collect();
        let _ = writeln!(
            out,
            "{} is used by: {}",
            object.object,
            if names.is_empty() {
                "nothing".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    for lint in &report.lint {
        let _ = writeln!(out, "lint of operation {} (sql):", lint.operation);
        for line in crate::human_report(&lint.report).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn human_run(report: &RunReport) -> String {
    let mut out = format!(
        "migration {} on database {}: {}{} (version {}, {} rows backfilled, {} ms)\n",
        report.migration,
        report.database,
        report.state.replace('_', " "),
        if report.already { " already" } else { "" },
        report.version,
        report.rows_backfilled,
        report.duration_ms
    );
    if report.state == "expanded"
        && let Some(schema) = &report.version_schema
    {
        let _ = writeln!(
            out,
            "  clients of the new version: SET search_path TO {schema}, ...; then `dbswarm migrate complete` or `rollback`"
        );
    }
    out
}

fn human_status(report: &StatusReport) -> String {
    let mut out = format!("database {}\n", report.database);
    if report.applied.is_empty() {
        out.push_str("  no migration applied\n");
    }
    for applied in &report.applied {
        let _ = writeln!(out, "  {:>4}  {}  applied", applied.version, applied.name);
    }
    if let Some(active) = &report.active {
        let phase = match &active.phase {
            schema::migration::history::Phase::Expanding => {
                "expanding (apply again to resume, or roll back)".to_owned()
            }
            schema::migration::history::Phase::Expanded => {
                "expanded: both versions live; complete or roll back".to_owned()
            }
            schema::migration::history::Phase::NeedsRollback { error } => {
                format!("failed ({error}); roll back")
            }
        };
        let _ = writeln!(out, "  {:>4}  {}  {phase}", active.version, active.migration.name);
        for (table, done, total) in &active.backfill {
            let _ = writeln!(out, "        backfill {table}: {done} of ~{total} rows");
        }
    }
    for pending in &report.pending {
        let _ = writeln!(out, "     -  {pending}  pending");
    }
    out
}
