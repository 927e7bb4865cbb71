//! The backup catalogue of one target database, event-sourced in stream
//! `backups-<target>`: which backups exist, what each covers, how big and
//! how long it was, and whether its last verification and restore test
//! passed. Pure `decide`/`evolve`; the agent does the IO. Its state is the
//! read model `backup.list` answers from.
//!
//! A backup is started, then completed or failed. Only a completed backup
//! can be verified, restored, tested or deleted; a deleted one is gone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Logical (pg_dump) or physical (pg_basebackup, plus the WAL archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    Logical,
    Physical,
}

impl BackupKind {
    pub fn parse(text: &str) -> Result<BackupKind, String> {
        match text {
            "logical" => Ok(BackupKind::Logical),
            "physical" => Ok(BackupKind::Physical),
            other => Err(format!("backup kind '{other}' is not one of logical, physical")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Logical => "logical",
            BackupKind::Physical => "physical",
        }
    }
}

/// What a completed backup holds, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub stopped_at_ms: i64,
    /// Bytes in the repository (encrypted), and before encryption.
    pub stored_bytes: u64,
    pub plain_bytes: u64,
    pub files: usize,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// The first WAL segment a physical backup needs (empty for logical).
    #[serde(default)]
    pub start_wal_segment: String,
    pub server_version: String,
}

/// The outcome of a verification or a restore test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub at_ms: i64,
    pub passed: bool,
    /// What failed, naming the file, segment, table or check.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Status {
    Running,
    Completed(Completion),
    Failed { reason: String, at_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub backup_id: String,
    pub kind: BackupKind,
    /// The tables a logical backup covers; empty: the whole database.
    pub tables: Vec<String>,
    pub started_at_ms: i64,
    #[serde(flatten)]
    pub status: Status,
    pub last_verification: Option<CheckOutcome>,
    pub last_restore_test: Option<CheckOutcome>,
    pub restores: u32,
}

impl Entry {
    pub fn completion(&self) -> Option<&Completion> {
        match &self.status {
            Status::Completed(completion) => Some(completion),
            _ => None,
        }
    }

    pub fn duration_ms(&self) -> Option<i64> {
        self.completion().map(|c| c.stopped_at_ms - self.started_at_ms)
    }
}

/// A target's backups, oldest first (ids sort by start time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Catalogue {
    pub backups: BTreeMap<String, Entry>,
    /// WAL segments older than this were deleted by retention.
    pub wal_pruned_before: Option<String>,
}

impl Catalogue {
    pub fn completed(&self) -> impl DoubleEndedIterator<Item = (&Entry, &Completion)> {
        self.backups
            .values()
            .filter_map(|e| e.completion().map(|c| (e, c)))
    }

    /// The newest completed backup, of `kind` when given.
    pub fn latest(&self, kind: Option<BackupKind>) -> Option<&Entry> {
        self.completed()
            .rev()
            .map(|(e, _)| e)
            .find(|e| kind.is_none_or(|k| e.kind == k))
    }

    pub fn running(&self) -> impl Iterator<Item = &Entry> {
        self.backups
            .values()
            .filter(|e| matches!(e.status, Status::Running))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data")]
pub enum CatalogueEvent {
    BackupStarted {
        backup_id: String,
        kind: BackupKind,
        tables: Vec<String>,
        started_at_ms: i64,
    },
    BackupCompleted {
        backup_id: String,
        completion: Completion,
    },
    BackupFailed {
        backup_id: String,
        reason: String,
        at_ms: i64,
    },
    BackupVerified {
        backup_id: String,
        outcome: CheckOutcome,
    },
    BackupRestored {
        backup_id: String,
        /// The database or data directory restored into.
        into: String,
        /// The recovery target of a point-in-time restore.
        #[serde(default)]
        target_time: Option<String>,
        at_ms: i64,
    },
    RestoreTested {
        backup_id: String,
        outcome: CheckOutcome,
    },
    BackupDeleted {
        backup_id: String,
        reason: String,
        at_ms: i64,
    },
    WalPruned {
        /// Segments before this one were deleted.
        before_segment: String,
        segments: u64,
        at_ms: i64,
    },
}

impl CatalogueEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            CatalogueEvent::BackupStarted { .. } => "BackupStarted",
            CatalogueEvent::BackupCompleted { .. } => "BackupCompleted",
            CatalogueEvent::BackupFailed { .. } => "BackupFailed",
            CatalogueEvent::BackupVerified { .. } => "BackupVerified",
            CatalogueEvent::BackupRestored { .. } => "BackupRestored",
            CatalogueEvent::RestoreTested { .. } => "RestoreTested",
            CatalogueEvent::BackupDeleted { .. } => "BackupDeleted",
            CatalogueEvent::WalPruned { .. } => "WalPruned",
        }
    }

    pub fn data(&self) -> serde_json::Value {
        event_store::tagged_event_data(self)
    }

    pub fn from_stored(event_type: &str, data: serde_json::Value) -> Result<CatalogueEvent, String> {
        event_store::tagged_event_from_stored(event_type, data)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CatalogueCommand {
    Start {
        backup_id: String,
        kind: BackupKind,
        tables: Vec<String>,
        at_ms: i64,
    },
    Complete {
        backup_id: String,
        completion: Completion,
    },
    Fail {
        backup_id: String,
        reason: String,
        at_ms: i64,
    },
    RecordVerification {
        backup_id: String,
        outcome: CheckOutcome,
    },
    RecordRestore {
        backup_id: String,
        into: String,
        target_time: Option<String>,
        at_ms: i64,
    },
    RecordRestoreTest {
        backup_id: String,
        outcome: CheckOutcome,
    },
    Delete {
        backup_id: String,
        reason: String,
        at_ms: i64,
    },
    PruneWal {
        before_segment: String,
        segments: u64,
        at_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("backup {0} already exists")]
    Exists(String),
    #[error("backup {0} does not exist")]
    Unknown(String),
    #[error("backup {backup_id} is {status}, not completed")]
    NotCompleted { backup_id: String, status: String },
    #[error("backup {0} is still running")]
    Running(String),
}

fn status_word(status: &Status) -> String {
    match status {
        Status::Running => "still running".into(),
        Status::Completed(_) => "completed".into(),
        Status::Failed { reason, .. } => format!("failed ({reason})"),
    }
}

fn completed<'a>(state: &'a Catalogue, backup_id: &str) -> Result<&'a Entry, CatalogueError> {
    let entry = state
        .backups
        .get(backup_id)
        .ok_or_else(|| CatalogueError::Unknown(backup_id.to_owned()))?;
    match entry.status {
        Status::Completed(_) => Ok(entry),
        ref other => Err(CatalogueError::NotCompleted {
            backup_id: backup_id.to_owned(),
            status: status_word(other),
        }),
    }
}

/// What a command changes in the catalogue. Recording an outcome that is
/// already recorded decides nothing (a retried task records once).
pub fn decide(state: &Catalogue, command: CatalogueCommand) -> Result<Vec<CatalogueEvent>, CatalogueError> {
    use CatalogueCommand as C;
    use CatalogueEvent as E;
    let events = match command {
        C::Start {
            backup_id,
            kind,
            tables,
            at_ms,
        } => {
            if state.backups.contains_key(&backup_id) {
                return Err(CatalogueError::Exists(backup_id));
            }
            vec![E::BackupStarted {
                backup_id,
                kind,
                tables,
                started_at_ms: at_ms,
            }]
        }
        C::Complete {
            backup_id,
            completion,
        } => decide_complete(state, backup_id, completion)?,
        C::Fail {
            backup_id,
            reason,
            at_ms,
        } => decide_fail(state, backup_id, reason, at_ms)?,
        C::RecordVerification { backup_id, outcome } => {
            completed(state, &backup_id)?;
            vec![E::BackupVerified { backup_id, outcome }]
        }
        C::RecordRestore {
            backup_id,
            into,
            target_time,
            at_ms,
        } => {
            completed(state, &backup_id)?;
            vec![E::BackupRestored {
                backup_id,
                into,
                target_time,
                at_ms,
            }]
        }
        C::RecordRestoreTest { backup_id, outcome } => {
            completed(state, &backup_id)?;
            vec![E::RestoreTested { backup_id, outcome }]
        }
        C::Delete {
            backup_id,
            reason,
            at_ms,
        } => decide_delete(state, backup_id, reason, at_ms)?,
        C::PruneWal {
            before_segment,
            segments,
            at_ms,
        } => {
            if segments == 0 {
                vec![]
            } else {
                vec![E::WalPruned {
                    before_segment,
                    segments,
                    at_ms,
                }]
            }
        }
    };
    Ok(events)
}

/// A running backup completes; completing it again with the same
/// outcome is a no-op (a retried task), with another one an error.
fn decide_complete(
    state: &Catalogue,
    backup_id: String,
    completion: Completion,
) -> Result<Vec<CatalogueEvent>, CatalogueError> {
    match state.backups.get(&backup_id).map(|e| &e.status) {
        None => Err(CatalogueError::Unknown(backup_id)),
        Some(Status::Running) => Ok(vec![CatalogueEvent::BackupCompleted {
            backup_id,
            completion,
        }]),
        Some(Status::Completed(done)) if *done == completion => Ok(vec![]),
        Some(other) => Err(CatalogueError::NotCompleted {
            status: status_word(other),
            backup_id,
        }),
    }
}

/// A running backup fails; one that already ended stays as it ended.
fn decide_fail(
    state: &Catalogue,
    backup_id: String,
    reason: String,
    at_ms: i64,
) -> Result<Vec<CatalogueEvent>, CatalogueError> {
    match state.backups.get(&backup_id).map(|e| &e.status) {
        None => Err(CatalogueError::Unknown(backup_id)),
        Some(Status::Running) => Ok(vec![CatalogueEvent::BackupFailed {
            backup_id,
            reason,
            at_ms,
        }]),
        Some(_) => Ok(vec![]),
    }
}

/// A backup that ended is deleted; one already gone is a no-op, a
/// running one is refused.
fn decide_delete(
    state: &Catalogue,
    backup_id: String,
    reason: String,
    at_ms: i64,
) -> Result<Vec<CatalogueEvent>, CatalogueError> {
    match state.backups.get(&backup_id).map(|e| &e.status) {
        None => Ok(vec![]),
        Some(Status::Running) => Err(CatalogueError::Running(backup_id)),
        Some(_) => Ok(vec![CatalogueEvent::BackupDeleted {
            backup_id,
            reason,
            at_ms,
        }]),
    }
}

pub fn evolve(mut state: Catalogue, event: &CatalogueEvent) -> Catalogue {
    use CatalogueEvent as E;
    match event {
        E::BackupStarted {
            backup_id,
            kind,
            tables,
            started_at_ms,
        } => {
            state.backups.insert(
                backup_id.clone(),
                Entry {
                    backup_id: backup_id.clone(),
                    kind: *kind,
                    tables: tables.clone(),
                    started_at_ms: *started_at_ms,
                    status: Status::Running,
                    last_verification: None,
                    last_restore_test: None,
                    restores: 0,
                },
            );
        }
        E::BackupCompleted {
            backup_id,
            completion,
        } => {
            if let Some(entry) = state.backups.get_mut(backup_id) {
                entry.status = Status::Completed(completion.clone());
            }
        }
        E::BackupFailed {
            backup_id,
            reason,
            at_ms,
        } => {
            if let Some(entry) = state.backups.get_mut(backup_id) {
                entry.status = Status::Failed {
                    reason: reason.clone(),
                    at_ms: *at_ms,
                };
            }
        }
        E::BackupVerified { backup_id, outcome } => {
            if let Some(entry) = state.backups.get_mut(backup_id) {
                entry.last_verification = Some(outcome.clone());
            }
        }
        E::BackupRestored { backup_id, .. } => {
            if let Some(entry) = state.backups.get_mut(backup_id) {
                entry.restores += 1;
            }
        }
        E::RestoreTested { backup_id, outcome } => {
            if let Some(entry) = state.backups.get_mut(backup_id) {
                entry.last_restore_test = Some(outcome.clone());
            }
        }
        E::BackupDeleted { backup_id, .. } => {
            state.backups.remove(backup_id);
        }
        E::WalPruned { before_segment, .. } => {
            state.wal_pruned_before = Some(before_segment.clone());
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(events: &[CatalogueEvent]) -> Catalogue {
        events.iter().fold(Catalogue::default(), evolve)
    }

    fn started(id: &str) -> CatalogueEvent {
        CatalogueEvent::BackupStarted {
            backup_id: id.into(),
            kind: BackupKind::Logical,
            tables: vec![],
            started_at_ms: 1,
        }
    }

    fn completion() -> Completion {
        Completion {
            stopped_at_ms: 5,
            stored_bytes: 10,
            plain_bytes: 9,
            files: 1,
            start_lsn: "0/1".into(),
            stop_lsn: "0/2".into(),
            start_wal_segment: String::new(),
            server_version: "15".into(),
        }
    }

    fn completed_event(id: &str) -> CatalogueEvent {
        CatalogueEvent::BackupCompleted {
            backup_id: id.into(),
            completion: completion(),
        }
    }

    #[test]
    fn a_backup_is_started_then_completed_and_listed_with_its_duration() {
        let state = given(&[started("b1"), completed_event("b1")]);
        let entry = state.latest(None).expect("a completed backup");
        assert_eq!(entry.backup_id, "b1");
        assert_eq!(entry.duration_ms(), Some(4));
    }

    #[test]
    fn an_id_is_started_once() {
        let state = given(&[started("b1")]);
        let refused = decide(
            &state,
            CatalogueCommand::Start {
                backup_id: "b1".into(),
                kind: BackupKind::Logical,
                tables: vec![],
                at_ms: 2,
            },
        );
        assert_eq!(refused, Err(CatalogueError::Exists("b1".into())));
    }

    #[test]
    fn a_failed_backup_cannot_be_verified_restored_or_completed_and_failing_twice_is_a_no_op() {
        let state = given(&[
            started("b1"),
            CatalogueEvent::BackupFailed {
                backup_id: "b1".into(),
                reason: "pg_dump exited with 1".into(),
                at_ms: 3,
            },
        ]);
        let outcome = CheckOutcome {
            at_ms: 4,
            passed: true,
            problems: vec![],
        };
        let refused = decide(
            &state,
            CatalogueCommand::RecordVerification {
                backup_id: "b1".into(),
                outcome,
            },
        )
        .unwrap_err();
        assert!(refused.to_string().contains("failed (pg_dump exited with 1)"));
        assert!(
            decide(
                &state,
                CatalogueCommand::Complete {
                    backup_id: "b1".into(),
                    completion: completion()
                }
            )
            .is_err()
        );
        let again = CatalogueCommand::Fail {
            backup_id: "b1".into(),
            reason: "again".into(),
            at_ms: 5,
        };
        assert_eq!(decide(&state, again), Ok(vec![]));
        assert!(state.latest(None).is_none());
    }

    #[test]
    fn a_running_backup_is_not_deleted_and_a_deleted_one_is_gone() {
        let state = given(&[started("b1")]);
        let delete = |id: &str| CatalogueCommand::Delete {
            backup_id: id.into(),
            reason: "retention".into(),
            at_ms: 9,
        };
        assert_eq!(
            decide(&state, delete("b1")),
            Err(CatalogueError::Running("b1".into()))
        );
        let state = given(&[started("b1"), completed_event("b1")]);
        let events = decide(&state, delete("b1")).unwrap();
        let state = events.iter().fold(state, evolve);
        assert!(state.backups.is_empty());
        assert_eq!(decide(&state, delete("b1")), Ok(vec![]));
    }

    #[test]
    fn verification_and_restore_tests_are_kept_per_backup() {
        let state = given(&[
            started("b1"),
            completed_event("b1"),
            CatalogueEvent::RestoreTested {
                backup_id: "b1".into(),
                outcome: CheckOutcome {
                    at_ms: 7,
                    passed: false,
                    problems: vec!["rows of public.t: 3 restored, 4 at backup".into()],
                },
            },
        ]);
        let entry = &state.backups["b1"];
        assert!(!entry.last_restore_test.as_ref().unwrap().passed);
        assert!(entry.last_verification.is_none());
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let event = completed_event("b1");
        let back = CatalogueEvent::from_stored(event.event_type(), event.data()).unwrap();
        assert_eq!(back, event);
    }
}
