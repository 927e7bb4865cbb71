//! A backup's manifest: what the backup holds, and the SHA-256 of every
//! file as stored and as written, so that verify can re-read it all. It is
//! plain JSON (an operator can read it without the key) with an HMAC beside
//! it: a manifest changed by anyone without the key fails verification.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalogue::{BackupKind, Completion};
use crate::crypto::{BackupKey, StreamDigest};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "manifest.json does not match its signature: it was modified, or the configured key (fingerprint {fingerprint}) is not the one it was written with"
    )]
    BadSignature { fingerprint: String },
    #[error(
        "the backup was encrypted with key {backup}, but the configured backup key is {configured}: wrong key (configure the key it was written with)"
    )]
    WrongKey { backup: String, configured: String },
    #[error("manifest.json cannot be read: {0}")]
    Malformed(String),
    #[error("manifest.json has format version {0}; this dbswarm reads version {FORMAT_VERSION}")]
    Version(u32),
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    #[serde(flatten)]
    pub digest: StreamDigest,
}

/// A table's facts at the moment of the backup, for restore tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFacts {
    /// `schema.table`, quoted where needed.
    pub table: String,
    pub rows: i64,
    /// Order-independent checksum of the rows (for chosen tables only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: String,
    /// The registered target's name.
    pub target: String,
    /// The database's name on its server.
    pub dbname: String,
    pub kind: BackupKind,
    /// The tables a logical backup covers; empty: all of them.
    pub tables: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// Physical backups: the timeline and the first and last WAL segment
    /// a restore needs from the archive.
    #[serde(default)]
    pub timeline: u32,
    #[serde(default)]
    pub start_wal_segment: String,
    #[serde(default)]
    pub stop_wal_segment: String,
    /// The server's WAL segment size (physical backups; 0 for logical).
    #[serde(default)]
    pub wal_segment_bytes: u64,
    pub server_version: String,
    pub key_fingerprint: String,
    /// gzip level applied before encryption (0: none).
    pub compression_level: u32,
    pub files: Vec<ManifestFile>,
    /// Row counts (and chosen checksums) as of the backup's snapshot.
    #[serde(default)]
    pub table_facts: Vec<TableFacts>,
}

impl Manifest {
    /// The manifest's bytes and their signature.
    pub fn signed(&self, key: &BackupKey) -> Result<(Vec<u8>, String), ManifestError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let signature = key.sign(&bytes);
        Ok((bytes, signature))
    }

    /// Parses a manifest whose signature `key` confirms.
    /// The key is checked first (by the fingerprint the manifest names), so
    /// that a wrong key is reported as such rather than as tampering.
    pub fn verified(bytes: &[u8], signature: &str, key: &BackupKey) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct Written {
            key_fingerprint: String,
        }
        if let Ok(written) = serde_json::from_slice::<Written>(bytes)
            && written.key_fingerprint != key.fingerprint()
        {
            return Err(ManifestError::WrongKey {
                backup: written.key_fingerprint,
                configured: key.fingerprint().to_owned(),
            });
        }
        if !key.verify_signature(bytes, signature) {
            return Err(ManifestError::BadSignature {
                fingerprint: key.fingerprint().to_owned(),
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ManifestError::Version(manifest.format_version));
        }
        Ok(manifest)
    }

    pub fn stored_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.digest.stored_bytes).sum()
    }

    pub fn plain_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.digest.plain_bytes).sum()
    }

    /// What the catalogue records of the completed backup.
    pub fn completion(&self) -> Completion {
        Completion {
            stopped_at_ms: self.stopped_at.timestamp_millis(),
            stored_bytes: self.stored_bytes(),
            plain_bytes: self.plain_bytes(),
            files: self.files.len(),
            start_lsn: self.start_lsn.clone(),
            stop_lsn: self.stop_lsn.clone(),
            start_wal_segment: self.start_wal_segment.clone(),
            server_version: self.server_version.clone(),
        }
    }
}
