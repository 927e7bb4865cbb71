//! `dbswarm backup ...`: backups from the command line with the same
//! engine and catalogue (events in dbswarm's own database) as the backup
//! agent's operations, a progress bar on stderr, `--json` for machines;
//! plus the two commands PostgreSQL itself runs (`wal-push` as
//! archive_command, `wal-fetch` as restore_command) and `generate-key`.

use std::path::PathBuf;

use anyhow::Context;
use backup::catalogue::BackupKind;
use backup::crypto::BackupKey;
use backup::engine::{Backups, CatalogueStore, CreateRequest, Target};
use backup::physical::{FetchError, PitrRequest};
use backup::repository::Repository;
use backup::retention::Policy;

use crate::cli::{self, RunArgs, StderrProgress};

#[derive(clap::Subcommand)]
pub enum BackupCommand {
    /// Take a backup of a registered target database: logical (pg_dump)
    /// or physical (pg_basebackup; WAL archiving must be on), encrypted
    /// and checksummed into the repository.
    Create {
        /// logical or physical.
        #[arg(long, default_value = "logical")]
        kind: String,
        /// Logical only: back up these tables (repeat the flag) instead of the whole database.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// The target's backups: size, duration, what each covers, and its
    /// last verification and restore test.
    List {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Re-read a backup (default: the latest) and check every checksum,
    /// its signature and, for a physical one, the WAL chain. Exits with 1
    /// when it fails.
    Verify {
        /// The backup's id (default: the latest).
        #[arg(long)]
        backup_id: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Restore a logical backup into a new database on the target's server.
    Restore {
        #[arg(long)]
        backup_id: Option<String>,
        /// The new database (default: <database>_restore_<time>).
        #[arg(long)]
        into_database: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Restore a physical backup plus archived WAL to a point in time into
    /// a new data directory and start it on its own port (the target is
    /// not touched). Stop it with `pg_ctl stop -D DIR`.
    RestorePitr {
        /// RFC 3339 time to recover to, e.g. 2026-11-26T14:30:00Z.
        #[arg(long)]
        target_time: String,
        #[arg(long)]
        backup_id: Option<String>,
        /// New or empty directory (default: under backup_scratch_dir).
        #[arg(long)]
        data_directory: Option<PathBuf>,
        /// Port of the restored instance (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Restore a backup (default: the latest) into scratch, check row
    /// counts, checksums and amcheck, record the result, drop the scratch.
    /// Exits with 1 when it fails.
    TestRestore {
        #[arg(long)]
        backup_id: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Delete the backups a policy does not keep, and the WAL no kept
    /// backup needs.
    ApplyRetention {
        /// Keep the newest N backups of each kind.
        #[arg(long)]
        keep_full: Option<u32>,
        /// Keep what recovers to any time in the last N days.
        #[arg(long)]
        window_days: Option<u32>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Write a new random backup key (64 hex characters) to FILE, readable
    /// by its owner only. Refuses to overwrite a file.
    GenerateKey { file: PathBuf },
    /// PostgreSQL's archive_command: encrypt one WAL file into the repository.
    /// With --check instead of a file: whether this OS user can read the key
    /// (exit code 1 when not) and write the target's WAL directory (2 when
    /// not); the agent runs it as PostgreSQL's OS user before a backup.
    WalPush {
        #[command(flatten)]
        archive: ArchiveArgs,
        /// Check that archiving can work, archive nothing.
        #[arg(long, conflicts_with = "path")]
        check: bool,
        /// The WAL file (%p).
        #[arg(required_unless_present = "check")]
        path: Option<PathBuf>,
    },
    /// PostgreSQL's restore_command: decrypt one archived WAL file.
    /// Exits with 1 when the archive does not have it.
    WalFetch {
        #[command(flatten)]
        archive: ArchiveArgs,
        /// The file's name (%f).
        name: String,
        /// Where to write it (%p).
        destination: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct ArchiveArgs {
    /// The backup repository directory.
    #[arg(long, value_name = "DIR")]
    repository: PathBuf,
    /// The backup key file.
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// The target database's registered name.
    #[arg(long, value_name = "NAME")]
    target: String,
}

/// How a command ended, when it did its work.
pub enum Ended {
    Done,
    /// A verification or restore test failed, a WAL file is missing, or
    /// (`wal-push --check`) the key cannot be read: exit code 1.
    Failed,
}

pub async fn run(command: BackupCommand) -> anyhow::Result<Ended> {
    match command {
        BackupCommand::Create { kind, tables, run } => {
            let request = CreateRequest {
                kind: BackupKind::parse(&kind).map_err(anyhow::Error::msg)?,
                tables,
                checksum_tables: vec![],
            };
            let (backups, target, json) = connect(run).await?;
            let manifest = backups.create(&target, &request, &StderrProgress).await?;
            print(json, &manifest, human_manifest)
        }
        BackupCommand::List { run } => {
            let (backups, target, json) = connect(run).await?;
            let catalogue = backups.catalogue(&target.name).await?;
            print(json, &catalogue, human_catalogue)
        }
        BackupCommand::Verify { backup_id, run } => {
            let (backups, target, json) = connect(run).await?;
            let verification = backups.verify(&target.name, backup_id.as_deref()).await?;
            let passed = verification.passed;
            print(json, &verification, human_verification)?;
            Ok(if passed { Ended::Done } else { Ended::Failed })
        }
        BackupCommand::Restore {
            backup_id,
            into_database,
            run,
        } => {
            let (backups, target, json) = connect(run).await?;
            let restored = backups
                .restore(
                    &target,
                    backup_id.as_deref(),
                    into_database.as_deref(),
                    &StderrProgress,
                )
                .await?;
            print(json, &restored, human_restore)
        }
        BackupCommand::RestorePitr {
            target_time,
            backup_id,
            data_directory,
            port,
            run,
        } => {
            let target_time =
                backup::agent::parse_time("--target-time", &target_time).map_err(anyhow::Error::msg)?;
            let (backups, target, json) = connect(run).await?;
            let request = PitrRequest {
                backup_id,
                target_time: Some(target_time),
                data_directory,
                port,
            };
            let restored =
                backup::physical::restore_pitr(&backups, &target, &request, &StderrProgress).await?;
            print(json, &restored, human_pitr)
        }
        BackupCommand::TestRestore { backup_id, run } => {
            let (backups, target, json) = connect(run).await?;
            let test =
                backup::restore_test::test_restore(&backups, &target, backup_id.as_deref(), &StderrProgress)
                    .await?;
            let passed = test.passed;
            print(json, &test, human_restore_test)?;
            Ok(if passed { Ended::Done } else { Ended::Failed })
        }
        BackupCommand::ApplyRetention {
            keep_full,
            window_days,
            run,
        } => {
            let policy = Policy::new(keep_full, window_days).map_err(anyhow::Error::msg)?;
            let (backups, target, json) = connect(run).await?;
            let applied = backup::retention::apply(&backups, &target.name, policy).await?;
            print(json, &applied, |a| {
                format!(
                    "kept {} backups, deleted {} ({}), and {} WAL segments\n",
                    a.kept.len(),
                    a.deleted.len(),
                    a.deleted.join(", "),
                    a.wal_segments_deleted
                )
            })
        }
        archive @ (BackupCommand::GenerateKey { .. }
        | BackupCommand::WalPush { .. }
        | BackupCommand::WalFetch { .. }) => run_archive(archive).await,
    }
}

/// The commands that need no event store: the key and the WAL archive.
async fn run_archive(command: BackupCommand) -> anyhow::Result<Ended> {
    match command {
        BackupCommand::GenerateKey { file } => {
            generate_key(&file)?;
            eprintln!(
                "wrote a new backup key to {}; keep a copy somewhere safe, away from the repository: backups cannot be read without it",
                file.display()
            );
            Ok(Ended::Done)
        }
        BackupCommand::WalPush {
            archive,
            path: Some(path),
            ..
        } => {
            let (repository, key) = archive_of(&archive)?;
            backup::physical::wal_push(&repository, &key, &archive.target, &path)
                .await
                .map_err(anyhow::Error::msg)?;
            Ok(Ended::Done)
        }
        BackupCommand::WalPush { archive, .. } => check_archive(&archive).await,
        BackupCommand::WalFetch {
            archive,
            name,
            destination,
        } => {
            let (repository, key) = archive_of(&archive)?;
            match backup::physical::wal_fetch(&repository, &key, &archive.target, &name, &destination).await {
                Ok(()) => Ok(Ended::Done),
                Err(FetchError::Missing(name)) => {
                    eprintln!("dbswarm: {name} is not in the archive");
                    Ok(Ended::Failed)
                }
                Err(error) => Err(error.into()),
            }
        }
        _ => unreachable!("run hands only the key and archive commands to run_archive"),
    }
}

/// What `backup create` prints as text.
fn human_manifest(m: &backup::manifest::Manifest) -> String {
    format!(
        "backup {} ({}) of {}: {} stored, {} files, LSN {}..{}\n",
        m.backup_id,
        m.kind.as_str(),
        m.target,
        backup::engine::human_bytes(m.stored_bytes()),
        m.files.len(),
        m.start_lsn,
        m.stop_lsn
    )
}

/// What `backup list` prints as text: a line per backup.
fn human_catalogue(c: &backup::catalogue::Catalogue) -> String {
    let mut out = String::new();
    for entry in c.backups.values() {
        let status = match &entry.status {
            backup::catalogue::Status::Running => "running".to_owned(),
            backup::catalogue::Status::Completed(done) => format!(
                "completed, {} in {} ms",
                backup::engine::human_bytes(done.stored_bytes),
                entry.duration_ms().unwrap_or_default()
            ),
            backup::catalogue::Status::Failed { reason, .. } => format!("FAILED: {reason}"),
        };
        let verified = match &entry.last_verification {
            Some(v) if v.passed => "verified",
            Some(_) => "VERIFICATION FAILED",
            None => "not verified",
        };
        out.push_str(&format!(
            "{}  {:8}  {status}; {verified}\n",
            entry.backup_id,
            entry.kind.as_str()
        ));
    }
    out
}

/// What `backup verify` prints as text.
fn human_verification(v: &backup::engine::Verification) -> String {
    if v.passed {
        format!(
            "backup {} verified: {} files, {} bytes, {} WAL segments\n",
            v.backup_id, v.files_checked, v.bytes_checked, v.wal_segments_checked
        )
    } else {
        format!(
            "backup {} FAILS verification:\n  {}\n",
            v.backup_id,
            v.problems.join("\n  ")
        )
    }
}

/// What `backup restore` prints as text.
fn human_restore(r: &backup::engine::Restored) -> String {
    format!(
        "backup {} restored into database {} ({} in {} ms)\n",
        r.backup_id,
        r.into_database,
        backup::engine::human_bytes(r.bytes),
        r.duration_ms
    )
}

/// What `backup restore-pitr` prints as text.
fn human_pitr(r: &backup::physical::PitrRestored) -> String {
    format!(
        "backup {} restored to {} into {}, running on port {} ({})\n",
        r.backup_id,
        r.target_time.as_deref().unwrap_or("its end"),
        r.data_directory,
        r.port,
        r.url
    )
}

/// What `backup test-restore` prints as text.
fn human_restore_test(t: &backup::restore_test::RestoreTest) -> String {
    let verdict = if t.passed { "passed" } else { "FAILED" };
    let mut out = format!("restore test of backup {} {verdict}:\n", t.backup_id);
    for check in &t.checks {
        out.push_str(&format!("  ok: {check}\n"));
    }
    for problem in &t.problems {
        out.push_str(&format!("  problem: {problem}\n"));
    }
    out
}

/// `wal-push --check`: a key this user cannot read is the answer "no"
/// (exit code 1, which the agent tells apart); a WAL directory it cannot
/// write is an error (exit code 2). The key's text is never printed.
async fn check_archive(archive: &ArchiveArgs) -> anyhow::Result<Ended> {
    domain::target::TargetName::parse(&archive.target)?;
    if let Err(error) = BackupKey::from_file(&archive.key_file) {
        eprintln!("dbswarm: {error}");
        return Ok(Ended::Failed);
    }
    let repository = Repository::new(archive.repository.clone());
    backup::physical::check_wal_dir(&repository, &archive.target)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(Ended::Done)
}

fn archive_of(archive: &ArchiveArgs) -> anyhow::Result<(Repository, BackupKey)> {
    domain::target::TargetName::parse(&archive.target)?;
    let key = BackupKey::from_file(&archive.key_file)?;
    Ok((Repository::new(archive.repository.clone()), key))
}

fn generate_key(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = BackupKey::generate_text()?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    writeln!(out, "{key}").with_context(|| format!("cannot write {}", file.display()))?;
    out.sync_all()?;
    Ok(())
}

/// The engine on dbswarm's own database and the registered target.
async fn connect(run: RunArgs) -> anyhow::Result<(Backups, Target, bool)> {
    let connected = cli::connect(run.own.load()?, backup::agent::AGENT, &run.database).await?;
    let backups = Backups::new(
        connected.config.backup,
        CatalogueStore::new(connected.appender, connected.reader, connected.config.limits),
    );
    let target = Target {
        name: run.database,
        pool: connected.target_pool,
        url: connected.url,
    };
    Ok((backups, target, run.json))
}

/// The result on stdout; the command did its work.
fn print<T: serde::Serialize>(json: bool, value: &T, human: impl Fn(&T) -> String) -> anyhow::Result<Ended> {
    cli::print(json, value, human).map(|()| Ended::Done)
}
