//! The backup repository: where backups and archived WAL are kept.
//!
//! Today a directory. The engine reaches backups only through these
//! methods, which hand out streams (never paths) and are the operations an
//! object store offers: write a backup's files and publish them at once,
//! read a file, list, delete. An S3-compatible store takes its place
//! behind the same methods (publishing = writing the manifest last, as
//! pgBackRest does there). The WAL directory is the exception: PostgreSQL's
//! archive_command writes into it on the database's machine.
//!
//! Layout, per target database ("stanza"):
//!
//! ```text
//! <root>/<target>/backups/<backup_id>/           a complete backup: data files,
//!                                                 manifest.json, manifest.sig
//! <root>/<target>/backups/<backup_id>.partial/   a backup being written (locked)
//! <root>/<target>/wal/<segment>                   archived WAL, encrypted
//! ```
//!
//! **Architecture Invariant**: a backup directory without `.partial` has
//! a signed manifest naming every file in it. A backup becomes visible
//! only by the rename of its finished `.partial` directory, so a crash
//! leaves a `.partial` (removed by the next backup), never a backup that
//! looks valid.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::crypto::BackupKey;
use crate::manifest::{MANIFEST_FILE, Manifest, ManifestError, SIGNATURE_FILE};

const PARTIAL_SUFFIX: &str = ".partial";
const LOCK_FILE: &str = "lock";
/// How long a `.partial` directory without its lock file may be a
/// writer's that has not created the file yet.
const UNLOCKED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// Files `.tmp` while written, renamed when complete.
const TMP_SUFFIX: &str = ".tmp";

/// Backup ids: what `backup_id` generates (time, kind, random suffix).
pub const BACKUP_ID_BYTES_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("backup id '{0}' is not a backup id (letters, digits and '-', at most 64)")]
    BadId(String),
    #[error("'{0}' is not a backup file name")]
    BadFileName(String),
    #[error("backup {backup_id} of database '{database}' is not in the repository")]
    Missing { database: String, backup_id: String },
    #[error("{path}: {error}")]
    Io { path: String, error: io::Error },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RepositoryError + '_ {
    move |error| RepositoryError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// A backup's file names are the engine's own; a manifest naming a path
/// elsewhere is refused (it was not written by the engine).
fn check_file_name(name: &str) -> Result<(), RepositoryError> {
    let ok = !name.is_empty() && !name.contains('/') && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RepositoryError::BadFileName(name.chars().take(80).collect()))
    }
}

pub fn check_backup_id(backup_id: &str) -> Result<(), RepositoryError> {
    let ok = !backup_id.is_empty()
        && backup_id.len() <= BACKUP_ID_BYTES_MAX
        && backup_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RepositoryError::BadId(backup_id.chars().take(80).collect()))
    }
}

#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

/// A backup being written: its `.partial` directory, locked while this
/// lives so that no one takes it for abandoned.
pub struct Pending {
    dir: PathBuf,
    final_dir: PathBuf,
    _lock: File,
}

impl Pending {
    /// A new data file of the backup, to write to (fsynced at publish).
    pub async fn create(&self, name: &str) -> Result<tokio::fs::File, RepositoryError> {
        check_file_name(name)?;
        let path = self.dir.join(name);
        tokio::fs::File::create(&path).await.map_err(io_error(&path))
    }

    /// Writes the signed manifest, makes every file durable and publishes
    /// the backup by renaming its directory.
    pub async fn publish(self, manifest: &Manifest, key: &BackupKey) -> Result<PathBuf, RepositoryError> {
        let (bytes, signature) = manifest.signed(key)?;
        write_durably(&self.dir.join(MANIFEST_FILE), &bytes).await?;
        write_durably(&self.dir.join(SIGNATURE_FILE), signature.as_bytes()).await?;
        for file in &manifest.files {
            sync_file(&self.dir.join(&file.name)).await?;
        }
        // Renamed with its lock file still there (and still locked): until
        // the rename, nobody may take the directory for abandoned.
        tokio::fs::rename(&self.dir, &self.final_dir)
            .await
            .map_err(io_error(&self.dir))?;
        let lock = self.final_dir.join(LOCK_FILE);
        tokio::fs::remove_file(&lock).await.map_err(io_error(&lock))?;
        if let Some(parent) = self.final_dir.parent() {
            sync_dir(parent).await?;
        }
        Ok(self.final_dir)
    }

    /// Removes what was written (a failed backup leaves nothing).
    pub async fn discard(self) {
        if let Err(error) = tokio::fs::remove_dir_all(&self.dir).await {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot remove a failed backup's files");
        }
    }
}

async fn sync_file(path: &Path) -> Result<(), RepositoryError> {
    let file = tokio::fs::File::open(path).await.map_err(io_error(path))?;
    file.sync_all().await.map_err(io_error(path))
}

async fn sync_dir(path: &Path) -> Result<(), RepositoryError> {
    sync_file(path).await
}

/// Writes `bytes` to `path` through a temporary file, fsynced and renamed.
pub async fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), RepositoryError> {
    let tmp = tmp_path(path);
    tokio::fs::write(&tmp, bytes).await.map_err(io_error(&tmp))?;
    sync_file(&tmp).await?;
    tokio::fs::rename(&tmp, path).await.map_err(io_error(path))
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

impl Repository {
    pub fn new(root: impl Into<PathBuf>) -> Repository {
        Repository { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn backups_dir(&self, database: &str) -> PathBuf {
        self.root.join(database).join("backups")
    }

    pub fn wal_dir(&self, database: &str) -> PathBuf {
        self.root.join(database).join("wal")
    }

    /// A file of a published backup, to read.
    pub async fn open(
        &self,
        database: &str,
        backup_id: &str,
        name: &str,
    ) -> Result<tokio::fs::File, RepositoryError> {
        check_file_name(name)?;
        let path = self.backup_dir(database, backup_id)?.join(name);
        tokio::fs::File::open(&path).await.map_err(io_error(&path))
    }

    /// Whether a backup is being written (its `.partial` directory exists).
    pub async fn writing(&self, database: &str, backup_id: &str) -> bool {
        let Ok(dir) = self.backup_dir(database, backup_id) else {
            return false;
        };
        let partial = dir.with_file_name(format!("{backup_id}{PARTIAL_SUFFIX}"));
        tokio::fs::try_exists(partial).await.unwrap_or(false)
    }

    fn backup_dir(&self, database: &str, backup_id: &str) -> Result<PathBuf, RepositoryError> {
        check_backup_id(backup_id)?;
        Ok(self.backups_dir(database).join(backup_id))
    }

    /// Starts writing a backup: its `.partial` directory, locked.
    pub async fn begin(&self, database: &str, backup_id: &str) -> Result<Pending, RepositoryError> {
        let final_dir = self.backup_dir(database, backup_id)?;
        let dir = final_dir.with_file_name(format!("{backup_id}{PARTIAL_SUFFIX}"));
        let parent = self.backups_dir(database);
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(io_error(&parent))?;
        tokio::fs::create_dir(&dir).await.map_err(io_error(&dir))?;
        set_private(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
        lock.try_lock().map_err(|e| RepositoryError::Io {
            path: lock_path.display().to_string(),
            error: io::Error::other(e.to_string()),
        })?;
        Ok(Pending {
            dir,
            final_dir,
            _lock: lock,
        })
    }

    /// Backups being written whose writer is gone (their lock is free):
    /// an interrupted run. Returned by id.
    pub async fn abandoned(&self, database: &str) -> Result<Vec<String>, RepositoryError> {
        let dir = self.backups_dir(database);
        let mut abandoned = Vec::new();
        for name in list_names(&dir).await? {
            let Some(backup_id) = name.strip_suffix(PARTIAL_SUFFIX) else {
                continue;
            };
            let lock_path = dir.join(&name).join(LOCK_FILE);
            let free = match File::open(&lock_path) {
                Ok(file) => file.try_lock().is_ok(),
                // A writer creates the directory, then its lock file: give
                // it that moment before calling the directory abandoned.
                Err(_) => std::fs::metadata(dir.join(&name))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age > UNLOCKED_GRACE),
            };
            if free {
                abandoned.push(backup_id.to_owned());
            }
        }
        Ok(abandoned)
    }

    /// Removes an abandoned `.partial` directory.
    pub async fn remove_partial(&self, database: &str, backup_id: &str) -> Result<(), RepositoryError> {
        check_backup_id(backup_id)?;
        let dir = self
            .backups_dir(database)
            .join(format!("{backup_id}{PARTIAL_SUFFIX}"));
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// The published backups' ids, oldest first.
    pub async fn backup_ids(&self, database: &str) -> Result<Vec<String>, RepositoryError> {
        let mut ids: Vec<String> = list_names(&self.backups_dir(database))
            .await?
            .into_iter()
            .filter(|n| !n.ends_with(PARTIAL_SUFFIX) && check_backup_id(n).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// A published backup's manifest, its signature checked with `key`.
    pub async fn manifest(
        &self,
        database: &str,
        backup_id: &str,
        key: &BackupKey,
    ) -> Result<Manifest, RepositoryError> {
        let dir = self.backup_dir(database, backup_id)?;
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Err(RepositoryError::Missing {
                database: database.to_owned(),
                backup_id: backup_id.to_owned(),
            });
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let signature_path = dir.join(SIGNATURE_FILE);
        let bytes = tokio::fs::read(&manifest_path)
            .await
            .map_err(io_error(&manifest_path))?;
        let signature = tokio::fs::read_to_string(&signature_path)
            .await
            .map_err(io_error(&signature_path))?;
        Ok(Manifest::verified(&bytes, signature.trim(), key)?)
    }

    pub async fn delete_backup(&self, database: &str, backup_id: &str) -> Result<(), RepositoryError> {
        let dir = self.backup_dir(database, backup_id)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// The names of the archived WAL files (segments and timeline
    /// history files), sorted.
    pub async fn wal_files(&self, database: &str) -> Result<Vec<String>, RepositoryError> {
        let mut names: Vec<String> = list_names(&self.wal_dir(database))
            .await?
            .into_iter()
            .filter(|n| !n.ends_with(TMP_SUFFIX))
            .collect();
        names.sort();
        Ok(names)
    }

    pub async fn delete_wal(&self, database: &str, name: &str) -> Result<(), RepositoryError> {
        let path = self.wal_dir(database).join(name);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&path)(e)),
            _ => Ok(()),
        }
    }
}

/// Only the owner may read what the repository holds.
pub fn set_private(path: &Path) -> Result<(), RepositoryError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io_error(path))
}

/// The entries of a directory (none when it does not exist).
async fn list_names(dir: &Path) -> Result<Vec<String>, RepositoryError> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(io_error(dir))? {
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::BackupKind;
    use crate::crypto::StreamDigest;
    use crate::manifest::{FORMAT_VERSION, ManifestFile};

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dbswarm-repository-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn manifest(backup_id: &str, key: &BackupKey) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            backup_id: backup_id.into(),
            target: "app".into(),
            dbname: "app".into(),
            kind: BackupKind::Logical,
            tables: vec![],
            started_at: chrono::Utc::now(),
            stopped_at: chrono::Utc::now(),
            start_lsn: "0/1".into(),
            stop_lsn: "0/2".into(),
            timeline: 0,
            start_wal_segment: String::new(),
            stop_wal_segment: String::new(),
            wal_segment_bytes: 0,
            server_version: "15.0".into(),
            key_fingerprint: key.fingerprint().into(),
            compression_level: 0,
            files: vec![ManifestFile {
                name: "data".into(),
                digest: StreamDigest {
                    plain_bytes: 0,
                    plain_sha256: String::new(),
                    stored_bytes: 4,
                    stored_sha256: String::new(),
                },
            }],
            table_facts: vec![],
        }
    }

    #[tokio::test]
    async fn a_backup_is_invisible_until_published_and_a_dead_writers_is_abandoned() {
        let root = scratch();
        let repository = Repository::new(&root);
        let key = BackupKey::from_text(&BackupKey::generate_text().unwrap()).unwrap();

        // Being written: locked, neither listed nor abandoned
        let pending = repository.begin("app", "b1").await.unwrap();
        let mut file = pending.create("data").await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut file, b"data")
            .await
            .unwrap();
        drop(file);
        assert!(repository.backup_ids("app").await.unwrap().is_empty());
        assert!(repository.abandoned("app").await.unwrap().is_empty());

        // Published: listed, its manifest verified, no lock file left
        let dir = pending.publish(&manifest("b1", &key), &key).await.unwrap();
        assert_eq!(repository.backup_ids("app").await.unwrap(), ["b1"]);
        assert!(!dir.join(LOCK_FILE).exists());
        assert_eq!(
            repository.manifest("app", "b1", &key).await.unwrap().backup_id,
            "b1"
        );

        // A writer that died: its lock file is there but nobody holds it
        let pending = repository.begin("app", "b2").await.unwrap();
        drop(pending);
        assert_eq!(repository.abandoned("app").await.unwrap(), ["b2"]);
        repository.remove_partial("app", "b2").await.unwrap();
        assert!(repository.abandoned("app").await.unwrap().is_empty());

        // A directory whose writer has not created its lock file yet is left alone
        std::fs::create_dir_all(root.join("app/backups/b3.partial")).unwrap();
        assert!(repository.abandoned("app").await.unwrap().is_empty());

        assert!(matches!(
            repository.begin("app", "../b4").await,
            Err(RepositoryError::BadId(_))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
