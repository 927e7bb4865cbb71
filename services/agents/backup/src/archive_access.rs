//! PostgreSQL runs `archive_command` and `restore_command` as its own OS
//! user (the owner of its data directory), not as dbswarm: the key file
//! and the WAL directory must work for that user, as pgBackRest's and
//! WAL-G's configuration must. A key written by `dbswarm backup
//! generate-key` as root is root's alone (0600), so archiving would fail
//! on every segment.
//!
//! Before a physical backup the agent runs the archive command's own
//! check (`dbswarm backup wal-push --check`) as that user, in the data
//! directory, as PostgreSQL would run it. When that user cannot read the
//! key and the agent may configure the target's archiving (and runs as
//! root), the server gets a copy of the key that only it can read, in its
//! own data directory (the one place on this machine that is certainly the
//! server's and reachable by it; a copy beside the archive would put the
//! key into the repository it protects); otherwise the backup is refused
//! at once with the command that fixes it.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::crypto::BackupKey;
use crate::engine::BackupError;
use crate::tools;

/// The key copy in a data directory: 0600, owned by the server's user.
pub const KEY_COPY: &str = "dbswarm-backup.key";

/// How long the check may take (it reads one small file, writes another).
const PROBE_WAIT_MS: u64 = 30_000;

/// Key files are 64 hex characters or 44 of base64 plus a newline; more
/// is not a key.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// Exit code of `wal-push --check` when the key cannot be read: the CLI's
/// "did its work, and the answer is no" (`EXIT_BLOCKING` of the server
/// binary); its errors exit with 2.
const KEY_UNREADABLE_EXIT: i32 = 1;

/// The OS user a PostgreSQL server on this machine runs as.
#[derive(Debug, Clone)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
    pub name: Option<String>,
    pub data_directory: PathBuf,
}

impl ServerUser {
    /// The owner of the server's data directory, when it is on this
    /// machine (and the connecting role may read `data_directory`).
    pub fn of(data_directory: Option<&str>) -> Option<ServerUser> {
        let data_directory = PathBuf::from(data_directory?);
        let meta = std::fs::metadata(&data_directory).ok()?;
        Some(ServerUser {
            uid: meta.uid(),
            gid: meta.gid(),
            name: tools::user_name(meta.uid()),
            data_directory,
        })
    }

    /// `'postgres'`, or `uid 105` without a name.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("'{name}'"),
            None => format!("uid {}", self.uid),
        }
    }

    fn group(&self) -> String {
        tools::group_name(self.gid).unwrap_or_else(|| self.gid.to_string())
    }
}

/// What the archive command's check said, run as the server's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Passed,
    /// That user cannot read (or parse) the key file: its message.
    KeyUnreadable(String),
    /// Anything else (the repository, the executable): its message.
    Failed(String),
    /// This process can neither become that user nor tell from the file's
    /// mode; the archiver's failures will say it (early, see `physical`).
    NotRun,
}

/// Runs `check` (a shell command line, as PostgreSQL would run it) as the
/// server's user in its data directory: through runuser when root,
/// directly when this process is that user; otherwise judges the key
/// file's mode alone.
pub async fn probe(check: &str, key_file: &Path, server: &ServerUser) -> Probe {
    let mut command = if tools::is_root() {
        let Some(name) = &server.name else {
            return Probe::NotRun;
        };
        let mut runuser = tokio::process::Command::new("runuser");
        runuser.args(["-u", name, "--", "sh", "-c", check]);
        runuser
    } else if tools::effective_uid() == server.uid {
        let mut sh = tokio::process::Command::new("sh");
        sh.args(["-c", check]);
        sh
    } else {
        return mode_check(key_file, server);
    };
    command
        .current_dir(&server.data_directory)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = match tokio::time::timeout(Duration::from_millis(PROBE_WAIT_MS), command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Probe::Failed(format!("cannot run the archive check: {error}")),
        Err(_) => {
            return Probe::Failed(format!(
                "the archive check did not finish within {} s",
                PROBE_WAIT_MS / 1000
            ));
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    match output.status.code() {
        Some(0) => Probe::Passed,
        Some(KEY_UNREADABLE_EXIT) => Probe::KeyUnreadable(stderr),
        _ if stderr.is_empty() => Probe::Failed(format!("the archive check failed ({})", output.status)),
        _ => Probe::Failed(stderr),
    }
}

/// Without a way to become the server's user: a key file that user
/// neither owns nor may read through group or other bits is unreadable to
/// it (an ACL granting it would show in the group bits).
fn mode_check(key_file: &Path, server: &ServerUser) -> Probe {
    match std::fs::metadata(key_file) {
        Ok(meta) if meta.uid() != server.uid && meta.mode() & 0o044 == 0 => Probe::KeyUnreadable(format!(
            "{} is mode {:04o} and owned by uid {}",
            key_file.display(),
            meta.mode() & 0o7777,
            meta.uid()
        )),
        _ => Probe::NotRun,
    }
}

/// The command that lets the server's user read the key file.
pub fn key_access_fix(key_file: &Path, server: &ServerUser) -> String {
    let file = shell_quote(&key_file.display().to_string());
    format!(
        "chgrp {} {file} && chmod 0640 {file} (and let it reach the file's directory)",
        server.group()
    )
}

/// Single-quoted for a shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Writes a copy of the key file into `dir` (0600, owned by `owner` when
/// given), unless an identical one is there; returns its path. The file
/// must still hold the key this process uses: WAL encrypted with another
/// key could not be replayed with the backups.
pub async fn write_key_copy(
    key_file: &Path,
    key: &BackupKey,
    dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, BackupError> {
    let (key_file, fingerprint, dir) = (key_file.to_owned(), key.fingerprint().to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || copy_key(&key_file, &fingerprint, &dir, owner))
        .await
        .map_err(|e| BackupError::Io(format!("copying the key: {e}")))?
}

fn copy_key(
    key_file: &Path,
    fingerprint: &str,
    dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, BackupError> {
    let io = |path: &Path, e: std::io::Error| BackupError::Io(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(key_file).map_err(|e| io(key_file, e))?.len();
    if size > KEY_FILE_BYTES_MAX {
        return Err(BackupError::Refused(format!(
            "{} has {size} bytes; a key file has at most {KEY_FILE_BYTES_MAX}",
            key_file.display()
        )));
    }
    let text = std::fs::read(key_file).map_err(|e| io(key_file, e))?;
    let held = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| BackupKey::from_text(t).ok())
        .map(|k| k.fingerprint().to_owned());
    if held.as_deref() != Some(fingerprint) {
        return Err(BackupError::Refused(format!(
            "{} no longer holds the key (fingerprint {fingerprint}) this process encrypts with: restore the file, or restart dbswarm to use the new key",
            key_file.display()
        )));
    }
    let copy = dir.join(KEY_COPY);
    if is_current_copy(&copy, &text, owner) {
        return Ok(copy);
    }
    let tmp = dir.join(format!("{KEY_COPY}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        std::fs::rename(&tmp, &copy)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(&copy, e)
    })?;
    Ok(copy)
}

/// The copy is there with this content, mode 0600 and the right owner.
fn is_current_copy(copy: &Path, text: &[u8], owner: Option<(u32, u32)>) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(copy) else {
        return false;
    };
    let owned = owner.is_none_or(|(uid, gid)| meta.uid() == uid && meta.gid() == gid);
    meta.is_file() && meta.mode() & 0o7777 == 0o600 && owned && std::fs::read(copy).is_ok_and(|c| c == text)
}

/// Removes the key copy from a data directory, if there is one.
pub async fn remove_key_copy(data_directory: &Path) {
    let copy = data_directory.join(KEY_COPY);
    match tokio::fs::remove_file(&copy).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %copy.display(), %error, "cannot remove a copy of the backup key");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_text() -> String {
        BackupKey::generate_text().unwrap()
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dbswarm-key-copy-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_key_copy_is_private_current_and_refused_for_another_key() {
        let dir = scratch();
        let text = key_text();
        let key_file = dir.join("k");
        std::fs::write(&key_file, format!("{text}\n")).unwrap();
        let key = BackupKey::from_text(&text).unwrap();

        let copy = copy_key(&key_file, key.fingerprint(), &dir, None).unwrap();
        assert_eq!(copy, dir.join(KEY_COPY));
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), format!("{text}\n"));
        assert!(is_current_copy(&copy, format!("{text}\n").as_bytes(), None));

        // The file now holds another key than the one in use: refused
        std::fs::write(&key_file, key_text()).unwrap();
        let refused = copy_key(&key_file, key.fingerprint(), &dir, None).unwrap_err();
        assert!(
            refused.to_string().contains("no longer holds the key"),
            "{refused}"
        );
        assert!(!refused.to_string().contains(&text));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_way_to_become_the_server_user_a_private_key_of_another_is_unreadable() {
        let dir = scratch();
        let key_file = dir.join("k");
        std::fs::write(&key_file, key_text()).unwrap();
        let me = tools::effective_uid();
        let other = ServerUser {
            uid: me.wrapping_add(1),
            gid: 0,
            name: None,
            data_directory: dir.clone(),
        };
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(matches!(mode_check(&key_file, &other), Probe::KeyUnreadable(m) if m.contains("mode 0600")));
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        assert_eq!(mode_check(&key_file, &other), Probe::NotRun);
        assert!(key_access_fix(Path::new("/etc/it's"), &other).starts_with("chgrp "));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
