//! Physical backups: pg_basebackup (tar to stdout, the WAL it needs
//! fetched into it, so it restores on its own) encrypted as it streams,
//! plus continuous WAL archiving into the repository — the archived
//! segments are the incremental part that point-in-time recovery replays.
//!
//! PostgreSQL itself archives: its `archive_command` runs
//! `dbswarm backup wal-push`, and a restored instance's `restore_command`
//! runs `dbswarm backup wal-fetch` (pgBackRest's model), each encrypting or
//! decrypting one file with the key file. The agent sets archive_command
//! for the targets it is allowed to configure, after checking that it
//! works for the OS user PostgreSQL runs it as (`archive_access`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_store::clock::now_ms;
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::io::AsyncWriteExt;

use crate::archive_access::{self, Probe, ServerUser};
use crate::catalogue::{self, BackupKind, CatalogueCommand};
use crate::crypto::{self, BackupKey};
use crate::engine::{
    BackupError, Backups, ProgressSink, StreamInto, Target, ToolFeed, UndoOnDrop, stream_tool_into,
};
use crate::manifest::{FORMAT_VERSION, Manifest, ManifestFile};
use crate::repository::{Pending, Repository, set_private, tmp_path};
use crate::tools::{self, Tools, give_to_postgres};

/// The data file of a physical backup: the data directory as a tar
/// stream (gzip-compressed when configured), encrypted.
pub const BASE_FILE: &str = "base.tar.enc";

const ARCHIVE_SETTINGS: &str = include_str!("sql/archive_settings.sql");
const ARCHIVER_STATUS: &str = include_str!("sql/archiver_status.sql");

/// How long a backup waits for the WAL it ends in to be archived.
const ARCHIVE_WAIT_MS: u64 = 60_000;
/// Archiver failures during a backup after which it fails at once: PostgreSQL
/// tries a segment three times in a row, then waits up to a minute before
/// the next round, so three failures mean the wait would only time out.
const ARCHIVE_FAILURES_MAX: i64 = 3;
/// How long a restored instance may take to start and reach its target.
const RECOVERY_WAIT_MS: u64 = 600_000;
/// PostgreSQL's default WAL segment size.
const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// WAL segments a chain check looks at most.
const WAL_SEGMENTS_MAX: usize = 1_000_000;

/// A log sequence number, written as two hex numbers (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u32::MAX as u64 && low <= u32::MAX as u64).then_some((high << 32) | low)
}

/// The WAL segment (file name) holding `lsn` on `timeline`.
pub fn segment_name(timeline: u32, lsn: u64, segment_bytes: u64) -> String {
    segment_file(timeline, lsn / segment_bytes, segment_bytes)
}

fn segments_per_id(segment_bytes: u64) -> u64 {
    0x1_0000_0000 / segment_bytes
}

fn segment_file(timeline: u32, segment_number: u64, segment_bytes: u64) -> String {
    let per = segments_per_id(segment_bytes);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment_number / per,
        segment_number % per
    )
}

/// Where a WAL segment file name is in the WAL, whatever its timeline and
/// the segment size: its last 16 hex digits, which sort as positions do.
/// `None` for what is not a segment name (history files, ...).
pub fn segment_position(name: &str) -> Option<&str> {
    (name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| &name[8..])
}

/// `(timeline, segment number)` of a WAL segment file name.
pub fn parse_segment(name: &str, segment_bytes: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
    let id = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((timeline, id * segments_per_id(segment_bytes) + seg))
}

/// What pg_basebackup's `--verbose` says of the backup's WAL range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRange {
    pub start_lsn: String,
    pub timeline: u32,
    pub stop_lsn: String,
}

pub fn parse_basebackup_output(stderr: &str) -> Option<BackupRange> {
    let mut start = None;
    let mut stop = None;
    for line in stderr.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut words = rest.split_whitespace();
            let lsn = words.next()?.to_owned();
            let timeline = rest.split("on timeline ").nth(1)?.trim().parse().ok()?;
            start = Some((lsn, timeline));
        } else if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            stop = Some(rest.split_whitespace().next()?.to_owned());
        }
    }
    let ((start_lsn, timeline), stop_lsn) = (start?, stop?);
    Some(BackupRange {
        start_lsn,
        timeline,
        stop_lsn,
    })
}

/// The `archive_command` that archives a target's WAL into the repository.
pub fn archive_command(executable: &Path, repository: &Path, key_file: &Path, target: &str) -> String {
    wal_push_command(executable, repository, key_file, target, "%p")
}

/// The archive command's own check (`wal-push --check`): the same
/// program, repository, key and target, no WAL file.
pub fn archive_check_command(executable: &Path, repository: &Path, key_file: &Path, target: &str) -> String {
    wal_push_command(executable, repository, key_file, target, "--check")
}

fn wal_push_command(
    executable: &Path,
    repository: &Path,
    key_file: &Path,
    target: &str,
    last: &str,
) -> String {
    format!(
        "{} backup wal-push --repository {} --key-file {} --target {target} {last}",
        shell_quote(&executable.display().to_string()),
        shell_quote(&repository.display().to_string()),
        shell_quote(&key_file.display().to_string()),
    )
}

/// The `restore_command` that fetches a target's archived WAL.
pub fn restore_command(executable: &Path, repository: &Path, key_file: &Path, target: &str) -> String {
    format!(
        "{} backup wal-fetch --repository {} --key-file {} --target {target} %f %p",
        shell_quote(&executable.display().to_string()),
        shell_quote(&repository.display().to_string()),
        shell_quote(&key_file.display().to_string()),
    )
}

/// Single-quoted for the shell PostgreSQL runs the command with.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A string literal for postgresql.conf.
fn conf_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Archives one WAL file (`dbswarm backup wal-push`): encrypted into the
/// repository, fsynced, then renamed into place. Archiving a file that is
/// already there with the same content succeeds (PostgreSQL re-archives
/// after a crash); with other content it fails, so the archive never
/// holds two histories under one name.
pub async fn wal_push(
    repository: &Repository,
    key: &BackupKey,
    target: &str,
    source: &Path,
) -> Result<(), String> {
    let name = source
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a WAL file name", source.display()))?;
    let dir = repository.wal_dir(target);
    let destination = dir.join(name);
    let plain = tokio::fs::read(source)
        .await
        .map_err(|e| format!("{}: {e}", source.display()))?;
    if tokio::fs::try_exists(&destination).await.unwrap_or(false) {
        let mut archived = tokio::fs::File::open(&destination)
            .await
            .map_err(|e| format!("{}: {e}", destination.display()))?;
        let digest = crypto::decrypt_stream(key, &mut archived, &mut tokio::io::sink(), &mut |_| {})
            .await
            .map_err(|e| format!("{}: {e}", destination.display()))?;
        return if digest.plain_sha256 == crypto::sha256_hex(&plain) {
            Ok(())
        } else {
            Err(format!(
                "{name} is already archived with different content; refusing to overwrite it"
            ))
        };
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = tmp_path(&destination);
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    crypto::encrypt_stream(key, &mut plain.as_slice(), &mut file, &mut |_| {})
        .await
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    file.sync_all()
        .await
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, &destination)
        .await
        .map_err(|e| format!("{}: {e}", destination.display()))?;
    let dir_handle = tokio::fs::File::open(&dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    dir_handle
        .sync_all()
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// What `wal-push --check` checks besides the key: that this OS user can
/// write the target's WAL directory (creating it, as wal-push would).
pub async fn check_wal_dir(repository: &Repository, target: &str) -> Result<(), String> {
    let dir = repository.wal_dir(target);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // A `.tmp` name: listings of archived WAL pass over it.
    let probe = dir.join(format!(".check-{}.tmp", std::process::id()));
    tokio::fs::write(&probe, b"")
        .await
        .map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
    tokio::fs::remove_file(&probe)
        .await
        .map_err(|e| format!("{}: {e}", probe.display()))
}

/// Why a WAL file cannot be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Normal at the end of recovery: PostgreSQL asks for what may exist.
    #[error("{0} is not in the archive")]
    Missing(String),
    #[error("{0}")]
    Failed(String),
}

/// Restores one archived WAL file (`dbswarm backup wal-fetch`) to `destination`.
pub async fn wal_fetch(
    repository: &Repository,
    key: &BackupKey,
    target: &str,
    name: &str,
    destination: &Path,
) -> Result<(), FetchError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(FetchError::Failed(format!("'{name}' is not a WAL file name")));
    }
    let source = repository.wal_dir(target).join(name);
    let mut archived = match tokio::fs::File::open(&source).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FetchError::Missing(name.to_owned()));
        }
        Err(e) => return Err(FetchError::Failed(format!("{}: {e}", source.display()))),
    };
    let tmp = tmp_path(destination);
    let failed = |e: &dyn std::fmt::Display| FetchError::Failed(format!("{name}: {e}"));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| failed(&e))?;
    let decrypted = crypto::decrypt_stream(key, &mut archived, &mut file, &mut |_| {}).await;
    if let Err(error) = decrypted {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(failed(&error));
    }
    file.flush().await.map_err(|e| failed(&e))?;
    tokio::fs::rename(&tmp, destination).await.map_err(|e| failed(&e))
}

/// The archive settings a backup or a verification reads from the target.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ArchiveSettings {
    archive_mode: String,
    archive_command: String,
    wal_level: String,
    wal_segment_bytes: i64,
    data_directory: Option<String>,
}

async fn archive_settings(conn: &mut PgConnection) -> Result<ArchiveSettings, BackupError> {
    Ok(sqlx::query_as(ARCHIVE_SETTINGS).fetch_one(conn).await?)
}

/// Makes sure the target archives its WAL into the repository: when the
/// agent may configure it, sets archive_command (ALTER SYSTEM + reload);
/// otherwise says exactly what to set. Either way the command is checked
/// as the OS user PostgreSQL runs it as before the backup starts.
pub async fn ensure_archiving(backups: &Backups, target: &Target) -> Result<i64, BackupError> {
    let config = backups.config();
    let key_file = config.key_file.as_deref().ok_or_else(|| {
        BackupError::Refused(
            "WAL archiving runs `dbswarm backup wal-push` in PostgreSQL, which reads the key from a file: set backup_key_file (a key given as text cannot be handed to it)".into(),
        )
    })?;
    let mut conn = target.pool.acquire().await?;
    let settings = archive_settings(&mut conn).await?;
    if settings.wal_level == "minimal" {
        return Err(BackupError::Refused(format!(
            "database '{}' has wal_level = minimal: physical backups need replica (set wal_level = replica and restart PostgreSQL)",
            target.name
        )));
    }
    let allowed = config.archive_targets.iter().any(|t| t == &target.name);
    if settings.archive_mode == "off" {
        let advice = if allowed {
            sqlx::raw_sql("ALTER SYSTEM SET archive_mode = 'on'")
                .execute(&mut *conn)
                .await?;
            "the agent set archive_mode = on with ALTER SYSTEM; restart PostgreSQL for it to take effect"
        } else {
            "set archive_mode = on and restart PostgreSQL (or allow the agent to configure it with backup_archive_targets)"
        };
        return Err(BackupError::Refused(format!(
            "database '{}' does not archive WAL (archive_mode = off): {advice}",
            target.name
        )));
    }
    // The WAL directory is the repository's, the agent's own: made ready
    // for the server's user whether or not the agent may configure it.
    let server = ServerUser::of(settings.data_directory.as_deref());
    prepare_wal_dir(backups, &target.name, server.as_ref()).await?;
    let server_key = match &server {
        Some(server) => key_for_server(backups, &target.name, key_file, server, allowed).await?,
        None => Ok(key_file.to_owned()),
    };
    let wanted = archive_command(
        &config.executable,
        backups.repository().root(),
        server_key.as_deref().unwrap_or(key_file),
        &target.name,
    );
    if settings.archive_command != wanted && !allowed {
        let also = server_key
            .as_ref()
            .err()
            .map(|p| format!("; and {p}"))
            .unwrap_or_default();
        return Err(BackupError::Refused(format!(
            "database '{}' does not archive its WAL into the backup repository: set archive_command = {} (or allow the agent to configure it with backup_archive_targets){also}",
            target.name,
            conf_literal(&wanted)
        )));
    }
    server_key.map_err(|problem| BackupError::Refused(format!("database '{}': {problem}", target.name)))?;
    if settings.archive_command != wanted {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER SYSTEM SET archive_command = {}",
            conf_literal(&wanted)
        )))
        .execute(&mut *conn)
        .await?;
        sqlx::raw_sql("SELECT pg_reload_conf()")
            .execute(&mut *conn)
            .await?;
        wait_for_setting(&target.url, &wanted).await?;
    }
    Ok(settings.wal_segment_bytes)
}

/// The key file archive_command names: the configured one when the
/// server's OS user can use it; when it cannot read it and the agent may
/// configure archiving as root, a copy in the server's data directory that
/// only that user can read. `Err`: why archiving cannot work, with the
/// fix (copying the key can fail too: that is the outer error).
async fn key_for_server(
    backups: &Backups,
    target: &str,
    key_file: &Path,
    server: &ServerUser,
    allowed: bool,
) -> Result<Result<PathBuf, String>, BackupError> {
    let config = backups.config();
    let check =
        |key: &Path| archive_check_command(&config.executable, backups.repository().root(), key, target);
    let cannot = |problem: String| {
        format!(
            "PostgreSQL runs archive_command as OS user {}, for whom it cannot work: {problem}",
            server.describe()
        )
    };
    Ok(
        match archive_access::probe(&check(key_file), key_file, server).await {
            Probe::Passed | Probe::NotRun => Ok(key_file.to_owned()),
            Probe::Failed(problem) => Err(cannot(problem)),
            Probe::KeyUnreadable(problem) if !(allowed && tools::is_root()) => Err(cannot(format!(
                "{problem}; give it read access to the key: {}",
                archive_access::key_access_fix(key_file, server)
            ))),
            Probe::KeyUnreadable(_) => {
                let owner = Some((server.uid, server.gid));
                let copy =
                    archive_access::write_key_copy(key_file, backups.key()?, &server.data_directory, owner)
                        .await?;
                match archive_access::probe(&check(&copy), &copy, server).await {
                    Probe::Passed | Probe::NotRun => Ok(copy),
                    Probe::KeyUnreadable(problem) | Probe::Failed(problem) => Err(cannot(problem)),
                }
            }
        },
    )
}

/// The WAL directory of a target, writable by the user PostgreSQL runs as
/// (the owner of its data directory, when it is on this machine).
async fn prepare_wal_dir(
    backups: &Backups,
    target: &str,
    server: Option<&ServerUser>,
) -> Result<(), BackupError> {
    let dir = backups.repository().wal_dir(target);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| BackupError::Io(format!("{}: {e}", dir.display())))?;
    if let Some(server) = server
        && tools::is_root()
    {
        for path in [dir.as_path(), dir.parent().unwrap_or(&dir)] {
            std::os::unix::fs::chown(path, Some(server.uid), Some(server.gid))
                .map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// A reload is asynchronous: new sessions see the setting once it is done.
async fn wait_for_setting(url: &domain::target::ConnectionUrl, wanted: &str) -> Result<(), BackupError> {
    for _ in 0..50 {
        let mut conn = PgConnection::connect(url.expose()).await?;
        let current: String = sqlx::query_scalar("SELECT current_setting('archive_command')")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        if current == wanted {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BackupError::Io(
        "archive_command was set but the server did not reload it within 5 s".into(),
    ))
}

/// What `pg_stat_archiver` says: failures so far, the last one's segment
/// and time.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ArchiverStatus {
    failed_count: i64,
    last_failed_wal: Option<String>,
    last_failed_time: Option<String>,
}

async fn archiver_status(target: &Target) -> Result<ArchiverStatus, BackupError> {
    Ok(sqlx::query_as(ARCHIVER_STATUS).fetch_one(&target.pool).await?)
}

/// Waits until `segment` is archived; fails as soon as the archiver has
/// failed [`ARCHIVE_FAILURES_MAX`] times since `before` (it would not try
/// again for a minute), or after [`ARCHIVE_WAIT_MS`], saying why.
async fn wait_until_archived(
    backups: &Backups,
    target: &Target,
    segment: &str,
    before: &ArchiverStatus,
) -> Result<(), BackupError> {
    let path = backups.repository().wal_dir(&target.name).join(segment);
    let deadline = Instant::now() + Duration::from_millis(ARCHIVE_WAIT_MS);
    loop {
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let now = archiver_status(target).await?;
        let failures = now.failed_count - before.failed_count;
        let timed_out = Instant::now() > deadline;
        if failures >= ARCHIVE_FAILURES_MAX || timed_out {
            let waited = if timed_out {
                format!("was not archived within {} s", ARCHIVE_WAIT_MS / 1000)
            } else {
                "cannot be archived".to_owned()
            };
            return Err(BackupError::Io(format!(
                "WAL segment {segment} {waited}: archive_command failed {failures} time(s) since the backup began (last on {} at {}); PostgreSQL's log has its error",
                now.last_failed_wal.as_deref().unwrap_or("none"),
                now.last_failed_time.as_deref().unwrap_or("-"),
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A physical backup being written.
pub(crate) struct PhysicalBackup<'a> {
    pub key: &'a BackupKey,
    pub pending: &'a Pending,
    pub backup_id: &'a str,
    pub started_at: DateTime<Utc>,
    /// The target's WAL segment size, from [`ensure_archiving`].
    pub wal_segment_bytes: i64,
}

/// pg_basebackup as a tar stream, encrypted into the pending backup.
pub(crate) async fn write_physical(
    backups: &Backups,
    target: &Target,
    backup: PhysicalBackup<'_>,
    progress: &dyn ProgressSink,
) -> Result<Manifest, BackupError> {
    let PhysicalBackup {
        key,
        pending,
        backup_id,
        started_at,
        wal_segment_bytes,
    } = backup;
    let segment_bytes = wal_segment_bytes.max(1) as u64;
    let (server_version, dbname, total_bytes): (String, String, i64) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_database(), (SELECT sum(pg_database_size(oid))::bigint FROM pg_database)",
    )
    .fetch_one(&target.pool)
    .await?;
    // Failures counted from here: older ones are not this backup's.
    let archiver_before = archiver_status(target).await?;
    let config = backups.config();
    let mut command = config.tools.client("pg_basebackup", &target.url);
    command.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        "--checkpoint=fast",
        "--verbose",
    ]);
    if config.compression_level > 0 {
        command.arg(format!("--compress={}", config.compression_level));
    }
    let into = StreamInto {
        program: "pg_basebackup",
        file: BASE_FILE,
        estimated_bytes: (config.compression_level == 0).then_some(total_bytes.max(0) as u64),
    };
    let streamed = stream_tool_into(command, into, key, pending, progress, async {}).await?;
    let output = streamed
        .exit
        .map_err(|e| crate::engine::scrub_tool(e, &target.url))?;
    let digest = streamed.digest?;
    let range = parse_basebackup_output(&output).ok_or_else(|| {
        BackupError::Io(format!(
            "pg_basebackup did not report its WAL start and end points: {output}"
        ))
    })?;
    let start = parse_lsn(&range.start_lsn).unwrap_or_default();
    let stop = parse_lsn(&range.stop_lsn).unwrap_or_default();
    let start_wal_segment = segment_name(range.timeline, start, segment_bytes);
    // The end point's segment is complete once the server switched away
    // from it (pg_basebackup's stop forces that).
    let stop_wal_segment = segment_name(range.timeline, stop.saturating_sub(1).max(start), segment_bytes);
    wait_until_archived(backups, target, &stop_wal_segment, &archiver_before).await?;
    Ok(Manifest {
        format_version: FORMAT_VERSION,
        backup_id: backup_id.to_owned(),
        target: target.name.clone(),
        dbname,
        kind: BackupKind::Physical,
        tables: vec![],
        started_at,
        stopped_at: Utc::now(),
        start_lsn: range.start_lsn,
        stop_lsn: range.stop_lsn,
        timeline: range.timeline,
        start_wal_segment,
        stop_wal_segment,
        wal_segment_bytes: segment_bytes,
        server_version,
        key_fingerprint: key.fingerprint().to_owned(),
        compression_level: config.compression_level,
        files: vec![ManifestFile {
            name: BASE_FILE.into(),
            digest,
        }],
        table_facts: vec![],
    })
}

/// The archived WAL a physical backup's recovery replays, from its first
/// segment to the newest archived one on its timeline, must have no gap.
/// Returns the segments checked and a problem per gap.
pub async fn check_wal_chain(
    backups: &Backups,
    target: &str,
    manifest: &Manifest,
) -> Result<(usize, Vec<String>), BackupError> {
    let segment_bytes = segment_bytes_of(manifest);
    let Some((timeline, first)) = parse_segment(&manifest.start_wal_segment, segment_bytes) else {
        return Ok((
            0,
            vec![format!(
                "manifest names no first WAL segment ('{}')",
                manifest.start_wal_segment
            )],
        ));
    };
    let last_needed = parse_segment(&manifest.stop_wal_segment, segment_bytes).map_or(first, |(_, s)| s);
    let mut archived: Vec<u64> = backups
        .repository()
        .wal_files(target)
        .await?
        .iter()
        .filter_map(|name| parse_segment(name, segment_bytes))
        .filter(|(t, s)| *t == timeline && *s >= first)
        .map(|(_, s)| s)
        .take(WAL_SEGMENTS_MAX)
        .collect();
    archived.sort_unstable();
    let mut problems = Vec::new();
    let mut expected = first;
    for &segment in &archived {
        if segment > expected {
            problems.push(format!(
                "WAL segment {} is missing from the archive: recovery cannot replay past {}",
                segment_file(timeline, expected, segment_bytes),
                segment_file(timeline, expected.saturating_sub(1).max(first), segment_bytes)
            ));
        }
        expected = segment + 1;
    }
    if expected <= last_needed {
        problems.push(format!(
            "WAL segment {} (needed to reach the backup's end point) is missing from the archive",
            segment_file(timeline, expected, segment_bytes)
        ));
    }
    Ok((archived.len(), problems))
}

/// The segment size the manifest records (PostgreSQL's default for a
/// manifest without one).
fn segment_bytes_of(manifest: &Manifest) -> u64 {
    match manifest.wal_segment_bytes {
        0 => DEFAULT_SEGMENT_BYTES,
        bytes => bytes,
    }
}

/// Where and how a physical backup is restored.
#[derive(Debug, Clone)]
pub struct PitrRequest {
    pub backup_id: Option<String>,
    /// `recovery_target_time`; `None`: recover only to the backup's end
    /// (consistency), as a restore test does.
    pub target_time: Option<DateTime<Utc>>,
    pub data_directory: Option<PathBuf>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PitrRestored {
    pub backup_id: String,
    pub data_directory: String,
    pub port: u16,
    /// `postgres://…@127.0.0.1:<port>/<database>` of the restored instance.
    pub url: String,
    pub target_time: Option<String>,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// A port nobody listens on now.
fn free_port() -> Result<u16, BackupError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BackupError::Io(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| BackupError::Io(format!("no free port: {e}")))
}

/// Restores a physical backup into a new data directory and starts a
/// PostgreSQL instance on it that replays the archived WAL up to the
/// target time and is then promoted. The target is not touched. The
/// instance is left running; stop it with `pg_ctl stop -D <dir>`.
pub async fn restore_pitr(
    backups: &Backups,
    target: &Target,
    request: &PitrRequest,
    progress: &dyn ProgressSink,
) -> Result<PitrRestored, BackupError> {
    backups.key()?;
    let key_file = backups.config().key_file.clone().ok_or_else(|| {
        BackupError::Refused(
            "a point-in-time restore runs `dbswarm backup wal-fetch` in PostgreSQL, which reads the key from a file: set backup_key_file".into(),
        )
    })?;
    let entry = pitr_backup(backups, target, request).await?;
    let manifest = backups.usable_manifest(&target.name, &entry.backup_id).await?;
    if let Some(time) = request.target_time
        && time < manifest.stopped_at
    {
        return Err(BackupError::Refused(format!(
            "backup {} finished at {}, after the target time {}: recovery can only go forward from a backup's end; pick an older backup",
            manifest.backup_id,
            manifest.stopped_at.to_rfc3339(),
            time.to_rfc3339()
        )));
    }
    let data_directory = pitr_data_directory(backups, target, request).await?;
    let port = match request.port {
        Some(port) => port,
        None => free_port()?,
    };
    let started = Instant::now();
    let instance = PitrInstance {
        backups,
        target,
        manifest: &manifest,
        key_file: &key_file,
        data_directory: &data_directory,
        port,
        target_time: request.target_time,
    };
    let bytes = instance.restore(progress).await?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/{}", manifest.dbname);
    let restored = PitrRestored {
        backup_id: manifest.backup_id.clone(),
        data_directory: data_directory.display().to_string(),
        port,
        url,
        target_time: request.target_time.map(|t| t.to_rfc3339()),
        bytes,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    backups
        .record(
            &target.name,
            CatalogueCommand::RecordRestore {
                backup_id: manifest.backup_id.clone(),
                into: restored.data_directory.clone(),
                target_time: restored.target_time.clone(),
                at_ms: now_ms() as i64,
            },
        )
        .await?;
    Ok(restored)
}

/// The physical backup to restore: the one asked for, else the latest
/// completed one that finished before the target time.
async fn pitr_backup(
    backups: &Backups,
    target: &Target,
    request: &PitrRequest,
) -> Result<catalogue::Entry, BackupError> {
    if let Some(id) = &request.backup_id {
        return backups
            .completed_backup(&target.name, Some(id), Some(BackupKind::Physical))
            .await;
    }
    let catalogue = backups.catalogue(&target.name).await?;
    let fits = |stopped_ms: i64| {
        request
            .target_time
            .is_none_or(|t| stopped_ms <= t.timestamp_millis())
    };
    catalogue
        .completed()
        .rev()
        .find(|(e, c)| e.kind == BackupKind::Physical && fits(c.stopped_at_ms))
        .map(|(e, _)| e.clone())
        .ok_or_else(|| {
            BackupError::Refused(match request.target_time {
                Some(t) => format!(
                    "database '{}' has no completed physical backup that finished before {}",
                    target.name,
                    t.to_rfc3339()
                ),
                None => format!("database '{}' has no completed physical backup", target.name),
            })
        })
}

/// The new instance's data directory: the one asked for (absolute,
/// without `..`), else a new one in the scratch directory; it must be
/// new or empty.
async fn pitr_data_directory(
    backups: &Backups,
    target: &Target,
    request: &PitrRequest,
) -> Result<PathBuf, BackupError> {
    let data_directory = match &request.data_directory {
        Some(dir)
            if !dir.is_absolute()
                || dir
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir)) =>
        {
            return Err(BackupError::Refused(format!(
                "data directory '{}' must be an absolute path without '..'",
                dir.display()
            )));
        }
        Some(dir) => dir.clone(),
        None => backups.config().scratch_dir.join(format!(
            "{}-{}",
            target.name,
            Utc::now().format("%Y%m%dT%H%M%S%3fZ")
        )),
    };
    if tokio::fs::try_exists(&data_directory).await.unwrap_or(false)
        && std::fs::read_dir(&data_directory).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(BackupError::Refused(format!(
            "data directory {} is not empty; a restore needs a new or empty directory",
            data_directory.display()
        )));
    }
    Ok(data_directory)
}

/// The instance a point-in-time restore starts from a physical backup.
struct PitrInstance<'a> {
    backups: &'a Backups,
    target: &'a Target,
    manifest: &'a Manifest,
    key_file: &'a Path,
    data_directory: &'a Path,
    port: u16,
    target_time: Option<DateTime<Utc>>,
}

impl PitrInstance<'_> {
    /// Extracts the base backup, starts the instance and waits until it
    /// has replayed the WAL and is promoted; the bytes extracted. On a
    /// failure the instance is stopped and its directory removed, and the
    /// error carries the end of its log.
    async fn restore(&self, progress: &dyn ProgressSink) -> Result<u64, BackupError> {
        let (backups, data_directory) = (self.backups, self.data_directory);
        // Stopped and removed unless the restore succeeds, also when the task
        // is cancelled mid-restore.
        let undo = UndoOnDrop::new(remove_instance(
            backups.config().tools.clone(),
            data_directory.to_path_buf(),
        ));
        let result = self.replay(progress).await;
        undo.disarm();
        let error = match result {
            Ok(bytes) => return Ok(bytes),
            Err(error) => error,
        };
        let _ = stop_with(&backups.config().tools, data_directory).await;
        let log = read_log_tail(data_directory).await;
        let _ = tokio::fs::remove_dir_all(data_directory).await;
        Err(match log {
            Some(log) if !log.is_empty() => {
                BackupError::Io(format!("{error}; the restored server's log ends with: {log}"))
            }
            _ => error,
        })
    }

    /// The restore proper, which [`Self::restore`] cleans up after.
    async fn replay(&self, progress: &dyn ProgressSink) -> Result<u64, BackupError> {
        let (backups, data_directory) = (self.backups, self.data_directory);
        let bytes = extract_base(
            backups,
            &self.target.name,
            self.manifest,
            data_directory,
            progress,
        )
        .await?;
        let instance_key = instance_key(backups, self.key_file, data_directory).await?;
        write_recovery_settings(
            backups,
            &instance_key,
            &self.target.name,
            self.target_time,
            data_directory,
            self.port,
        )
        .await?;
        give_to_postgres(data_directory).await?;
        progress.report(99.0, "replaying WAL".into()).await;
        start_instance(backups, data_directory, self.port).await?;
        wait_for_promotion(data_directory, self.port, &self.manifest.dbname).await?;
        // Promoted, it fetches no more WAL: no copy of the key stays in it
        // (neither the restore's own nor one the source's backup held).
        archive_access::remove_key_copy(data_directory).await;
        Ok(bytes)
    }
}

/// The key file the restored instance's restore_command reads. The
/// instance runs as `postgres` when this process is root, and such a user
/// may not read the configured file: it gets a copy of its own in its data
/// directory (given to it with the rest; removed once it is promoted).
async fn instance_key(
    backups: &Backups,
    key_file: &Path,
    data_directory: &Path,
) -> Result<PathBuf, BackupError> {
    if !tools::is_root() {
        return Ok(key_file.to_owned());
    }
    archive_access::write_key_copy(key_file, backups.key()?, data_directory, None).await
}

/// Decrypts the base backup into the data directory (tar reads only
/// authenticated bytes; a tampered chunk stops it).
async fn extract_base(
    backups: &Backups,
    target: &str,
    manifest: &Manifest,
    data_directory: &Path,
    progress: &dyn ProgressSink,
) -> Result<u64, BackupError> {
    tokio::fs::create_dir_all(data_directory)
        .await
        .map_err(|e| BackupError::Io(format!("{}: {e}", data_directory.display())))?;
    set_private(data_directory)?;
    let mut command = tokio::process::Command::new("tar");
    command
        .arg(if manifest.compression_level > 0 {
            "-xzf"
        } else {
            "-xf"
        })
        .arg("-")
        .arg("-C")
        .arg(data_directory)
        .kill_on_drop(true)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let feed = ToolFeed {
        program: "tar",
        command,
    };
    backups
        .feed_tool(target, manifest, BASE_FILE, feed, progress)
        .await
}

/// recovery.signal and the settings of the restored instance: WAL from
/// the archive up to the target, then promotion; its own port; and no
/// archiving of its own (its new timeline must not enter the source's
/// archive).
async fn write_recovery_settings(
    backups: &Backups,
    key_file: &Path,
    target: &str,
    target_time: Option<DateTime<Utc>>,
    data_directory: &Path,
    port: u16,
) -> Result<(), BackupError> {
    let config = backups.config();
    let io = |e: std::io::Error| BackupError::Io(format!("{}: {e}", data_directory.display()));
    let restore = restore_command(&config.executable, backups.repository().root(), key_file, target);
    let mut settings = vec![
        "# Written by dbswarm's point-in-time restore.".to_owned(),
        format!("restore_command = {}", conf_literal(&restore)),
        match target_time {
            Some(time) => format!(
                "recovery_target_time = {}",
                conf_literal(&time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
            ),
            None => "recovery_target = 'immediate'".to_owned(),
        },
        "recovery_target_action = 'promote'".to_owned(),
        "archive_mode = 'off'".to_owned(),
        format!("port = {port}"),
        "listen_addresses = '127.0.0.1'".to_owned(),
        // TCP only: a socket path inside a deep data directory can exceed
        // the 107 bytes a Unix socket name may have.
        "unix_socket_directories = ''".to_owned(),
    ];
    settings.push(String::new());
    let auto_conf = data_directory.join("postgresql.auto.conf");
    let mut existing = tokio::fs::read_to_string(&auto_conf).await.unwrap_or_default();
    existing.push('\n');
    existing.push_str(&settings.join("\n"));
    tokio::fs::write(&auto_conf, existing).await.map_err(io)?;
    // A server whose configuration lives outside its data directory (the
    // Debian layout) leaves none in the backup: give the instance one.
    let conf = data_directory.join("postgresql.conf");
    if !tokio::fs::try_exists(&conf).await.unwrap_or(false) {
        tokio::fs::write(
            &conf,
            "# Written by dbswarm's restore: the source kept its configuration elsewhere.\n",
        )
        .await
        .map_err(io)?;
    }
    let hba = data_directory.join("pg_hba.conf");
    if !tokio::fs::try_exists(&hba).await.unwrap_or(false) {
        tokio::fs::write(
            &hba,
            "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .await
        .map_err(io)?;
    }
    for stale in ["postmaster.pid", "postmaster.opts", "standby.signal"] {
        let _ = tokio::fs::remove_file(data_directory.join(stale)).await;
    }
    tokio::fs::write(data_directory.join("recovery.signal"), b"")
        .await
        .map_err(io)?;
    Ok(())
}

fn log_path(data_directory: &Path) -> PathBuf {
    data_directory.join("restore.log")
}

async fn read_log_tail(data_directory: &Path) -> Option<String> {
    let log = tokio::fs::read_to_string(log_path(data_directory)).await.ok()?;
    let lines: Vec<&str> = log.lines().rev().take(5).collect();
    Some(lines.into_iter().rev().collect::<Vec<_>>().join(" | "))
}

async fn start_instance(backups: &Backups, data_directory: &Path, port: u16) -> Result<(), BackupError> {
    let mut command = backups.config().tools.server("pg_ctl");
    command
        .arg("--pgdata")
        .arg(data_directory)
        .arg("--log")
        .arg(log_path(data_directory))
        .args(["--wait", &format!("--timeout={}", RECOVERY_WAIT_MS / 1000)])
        .arg(format!("--options=-p {port}"))
        .arg("start");
    tools::run(command, "pg_ctl start").await?;
    Ok(())
}

/// Stops an instance a restore started, if it runs, and removes its
/// directory.
pub(crate) async fn remove_instance(tools: Tools, data_directory: PathBuf) {
    let _ = stop_with(&tools, &data_directory).await;
    if let Err(error) = tokio::fs::remove_dir_all(&data_directory).await {
        tracing::warn!(dir = %data_directory.display(), %error, "cannot remove a failed restore's directory");
    }
}

/// Stops an instance a restore started (fast shutdown).
async fn stop_with(tools: &Tools, data_directory: &Path) -> Result<(), BackupError> {
    let mut command = tools.server("pg_ctl");
    command
        .arg("--pgdata")
        .arg(data_directory)
        .args(["--mode=fast", "--wait", "stop"]);
    tools::run(command, "pg_ctl stop").await?;
    Ok(())
}

/// Waits until the restored instance has left recovery (reached its
/// target and was promoted).
async fn wait_for_promotion(data_directory: &Path, port: u16, dbname: &str) -> Result<(), BackupError> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/{dbname}");
    let deadline = Instant::now() + Duration::from_millis(RECOVERY_WAIT_MS);
    loop {
        if let Ok(mut conn) = PgConnection::connect(&url).await {
            let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            if !in_recovery {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(BackupError::Io(format!(
                "the instance restored into {} did not finish recovery within {} s",
                data_directory.display(),
                RECOVERY_WAIT_MS / 1000
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: u64 = 16 * 1024 * 1024;

    #[test]
    fn lsns_map_to_their_wal_segment_and_back() {
        let lsn = parse_lsn("10/98000028").unwrap();
        let name = segment_name(1, lsn, SEGMENT);
        assert_eq!(name, "000000010000001000000098");
        assert_eq!(parse_segment(&name, SEGMENT), Some((1, lsn / SEGMENT)));
        assert_eq!(
            segment_name(3, parse_lsn("0/FFFFFFFF").unwrap(), SEGMENT),
            "0000000300000000000000FF"
        );
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_segment("00000001000000100000009", SEGMENT), None);
        assert_eq!(parse_segment("00000001.history", SEGMENT), None);
    }

    #[test]
    fn pg_basebackup_output_gives_the_wal_range() {
        let stderr = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
            pg_basebackup: checkpoint completed\n\
            pg_basebackup: write-ahead log start point: 10/98000028 on timeline 1\n\
            pg_basebackup: write-ahead log end point: 10/98000138\n\
            pg_basebackup: base backup completed\n";
        assert_eq!(
            parse_basebackup_output(stderr),
            Some(BackupRange {
                start_lsn: "10/98000028".into(),
                timeline: 1,
                stop_lsn: "10/98000138".into()
            })
        );
        assert_eq!(
            parse_basebackup_output("pg_basebackup: error: connection refused"),
            None
        );
    }

    #[test]
    fn commands_quote_paths_for_the_shell_and_the_configuration() {
        let command = archive_command(
            Path::new("/opt/db swarm/dbswarm"),
            Path::new("/var/backups/it's"),
            Path::new("/etc/key"),
            "app",
        );
        assert_eq!(
            command,
            "'/opt/db swarm/dbswarm' backup wal-push --repository '/var/backups/it'\\''s' --key-file '/etc/key' --target app %p"
        );
        assert_eq!(conf_literal("a'b"), "'a''b'");
    }
}
