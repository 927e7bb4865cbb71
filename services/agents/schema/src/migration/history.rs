//! The migration history of one target database, event-sourced in stream
//! `schema-<target>`: which migrations are applied, in which order, and
//! the one in progress. Pure `decide`/`evolve`; the engine does the IO.
//!
//! A migration is started (expand, then backfill), then either completed
//! (contract) or rolled back. At most one is in progress per target: that
//! is what makes "two migrations racing" an error rather than a mix.

use serde::{Deserialize, Serialize};

use super::definition::Migration;

/// A migration that is applied and completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// 1, 2, ... in the order they completed.
    pub version: u32,
    pub migration: Migration,
}

/// Where the migration in progress is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Expand and backfill are running (or were, when the runner died:
    /// apply again resumes, rollback undoes).
    Expanding,
    /// Both versions are live; waiting for complete or rollback.
    Expanded,
    /// A failure could not be cleaned up; only rollback is allowed.
    NeedsRollback { error: String },
}

/// The migration in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Active {
    pub version: u32,
    pub migration: Migration,
    #[serde(flatten)]
    pub phase: Phase,
    /// Backfill progress per table: `(rows done, rows to do)`.
    pub backfill: Vec<(String, u64, u64)>,
}

/// A target's migration history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct History {
    pub applied: Vec<Applied>,
    pub active: Option<Active>,
    /// Migrations rolled back or failed, by name, most recent last.
    pub abandoned: Vec<String>,
}

impl History {
    pub fn applied(&self, name: &str) -> Option<&Applied> {
        self.applied.iter().find(|a| a.migration.name == name)
    }

    fn active_named(&self, name: &str) -> Result<&Active, HistoryError> {
        match &self.active {
            Some(active) if active.migration.name == name => Ok(active),
            Some(active) => Err(HistoryError::OtherInProgress {
                active: active.migration.name.clone(),
                wanted: name.to_owned(),
            }),
            None => Err(HistoryError::NotInProgress {
                name: name.to_owned(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data")]
pub enum HistoryEvent {
    MigrationStarted {
        version: u32,
        migration: Migration,
    },
    MigrationBackfillProgressed {
        name: String,
        table: String,
        rows_done: u64,
        rows_total: u64,
    },
    MigrationExpanded {
        name: String,
        rows_backfilled: u64,
        duration_ms: u64,
    },
    MigrationCompleted {
        name: String,
        version: u32,
    },
    MigrationRolledBack {
        name: String,
        reason: String,
    },
    /// `cleaned_up`: the expand was undone; otherwise it needs a rollback.
    MigrationFailed {
        name: String,
        phase: String,
        error: String,
        cleaned_up: bool,
    },
}

impl HistoryEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            HistoryEvent::MigrationStarted { .. } => "MigrationStarted",
            HistoryEvent::MigrationBackfillProgressed { .. } => "MigrationBackfillProgressed",
            HistoryEvent::MigrationExpanded { .. } => "MigrationExpanded",
            HistoryEvent::MigrationCompleted { .. } => "MigrationCompleted",
            HistoryEvent::MigrationRolledBack { .. } => "MigrationRolledBack",
            HistoryEvent::MigrationFailed { .. } => "MigrationFailed",
        }
    }

    pub fn data(&self) -> serde_json::Value {
        event_store::tagged_event_data(self)
    }

    pub fn from_stored(event_type: &str, data: serde_json::Value) -> Result<HistoryEvent, String> {
        event_store::tagged_event_from_stored(event_type, data)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum HistoryCommand {
    Start {
        migration: Migration,
    },
    RecordProgress {
        name: String,
        table: String,
        rows_done: u64,
        rows_total: u64,
    },
    MarkExpanded {
        name: String,
        rows_backfilled: u64,
        duration_ms: u64,
    },
    Complete {
        name: String,
    },
    RecordRollback {
        name: String,
        reason: String,
    },
    RecordFailure {
        name: String,
        phase: String,
        error: String,
        cleaned_up: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "migration '{active}' is in progress on this database; complete or roll it back before starting '{wanted}'"
    )]
    OtherInProgress { active: String, wanted: String },
    #[error("migration '{name}' is already applied (version {version}); give a new migration a new name")]
    AlreadyApplied { name: String, version: u32 },
    #[error(
        "migration '{name}' was applied (version {version}) with other operations; a changed migration needs a new name"
    )]
    AppliedDifferently { name: String, version: u32 },
    #[error(
        "migration '{name}' is in progress with other operations than given; roll it back first to change it"
    )]
    ChangedInProgress { name: String },
    #[error("migration '{name}' is not in progress on this database")]
    NotInProgress { name: String },
    #[error("migration '{name}' is still being applied; complete it once apply has finished")]
    NotExpanded { name: String },
    #[error("migration '{name}' failed and was not cleaned up ({error}); roll it back")]
    NeedsRollback { name: String, error: String },
    #[error(
        "migration '{name}' is already completed (version {version}); rollback is only possible before complete"
    )]
    AlreadyCompleted { name: String, version: u32 },
}

/// What `Start` means for a migration the history already knows.
pub fn decide(history: &History, command: HistoryCommand) -> Result<Vec<HistoryEvent>, HistoryError> {
    match command {
        HistoryCommand::Start { migration } => decide_start(history, migration),
        HistoryCommand::RecordProgress {
            name,
            table,
            rows_done,
            rows_total,
        } => {
            history.active_named(&name)?;
            Ok(vec![HistoryEvent::MigrationBackfillProgressed {
                name,
                table,
                rows_done,
                rows_total,
            }])
        }
        HistoryCommand::MarkExpanded {
            name,
            rows_backfilled,
            duration_ms,
        } => match &history.active_named(&name)?.phase {
            Phase::Expanded => Ok(Vec::new()),
            Phase::NeedsRollback { error } => Err(HistoryError::NeedsRollback {
                name,
                error: error.clone(),
            }),
            Phase::Expanding => Ok(vec![HistoryEvent::MigrationExpanded {
                name,
                rows_backfilled,
                duration_ms,
            }]),
        },
        HistoryCommand::Complete { name } => {
            if let Some(applied) = history.applied(&name) {
                return Err(HistoryError::AlreadyApplied {
                    name,
                    version: applied.version,
                });
            }
            let active = history.active_named(&name)?;
            match &active.phase {
                Phase::Expanded => Ok(vec![HistoryEvent::MigrationCompleted {
                    name,
                    version: active.version,
                }]),
                Phase::Expanding => Err(HistoryError::NotExpanded { name }),
                Phase::NeedsRollback { error } => Err(HistoryError::NeedsRollback {
                    name,
                    error: error.clone(),
                }),
            }
        }
        HistoryCommand::RecordRollback { name, reason } => {
            if let Some(applied) = history.applied(&name) {
                return Err(HistoryError::AlreadyCompleted {
                    name,
                    version: applied.version,
                });
            }
            history.active_named(&name)?;
            Ok(vec![HistoryEvent::MigrationRolledBack { name, reason }])
        }
        HistoryCommand::RecordFailure {
            name,
            phase,
            error,
            cleaned_up,
        } => {
            history.active_named(&name)?;
            Ok(vec![HistoryEvent::MigrationFailed {
                name,
                phase,
                error,
                cleaned_up,
            }])
        }
    }
}

fn decide_start(history: &History, migration: Migration) -> Result<Vec<HistoryEvent>, HistoryError> {
    if let Some(applied) = history.applied(&migration.name) {
        let (name, version) = (migration.name, applied.version);
        return Err(if applied.migration.operations == migration.operations {
            HistoryError::AlreadyApplied { name, version }
        } else {
            HistoryError::AppliedDifferently { name, version }
        });
    }
    match &history.active {
        // Apply again after a crash or redelivery: resume.
        Some(active) if active.migration.name == migration.name => match &active.phase {
            _ if active.migration != migration => {
                Err(HistoryError::ChangedInProgress { name: migration.name })
            }
            Phase::NeedsRollback { error } => Err(HistoryError::NeedsRollback {
                name: migration.name,
                error: error.clone(),
            }),
            Phase::Expanding | Phase::Expanded => Ok(Vec::new()),
        },
        Some(active) => Err(HistoryError::OtherInProgress {
            active: active.migration.name.clone(),
            wanted: migration.name,
        }),
        None => Ok(vec![HistoryEvent::MigrationStarted {
            version: history.applied.len() as u32 + 1,
            migration,
        }]),
    }
}

pub fn evolve(mut history: History, event: &HistoryEvent) -> History {
    match event {
        HistoryEvent::MigrationStarted { version, migration } => {
            history.active = Some(Active {
                version: *version,
                migration: migration.clone(),
                phase: Phase::Expanding,
                backfill: Vec::new(),
            });
        }
        HistoryEvent::MigrationBackfillProgressed {
            table,
            rows_done,
            rows_total,
            ..
        } => {
            if let Some(active) = &mut history.active {
                active.backfill.retain(|(t, _, _)| t != table);
                active.backfill.push((table.clone(), *rows_done, *rows_total));
            }
        }
        HistoryEvent::MigrationExpanded { .. } => {
            if let Some(active) = &mut history.active {
                active.phase = Phase::Expanded;
            }
        }
        HistoryEvent::MigrationCompleted { version, .. } => {
            if let Some(active) = history.active.take() {
                history.applied.push(Applied {
                    version: *version,
                    migration: active.migration,
                });
            }
        }
        HistoryEvent::MigrationRolledBack { name, .. } => {
            history.active = None;
            history.abandoned.push(name.clone());
        }
        HistoryEvent::MigrationFailed {
            name,
            error,
            cleaned_up,
            ..
        } => {
            if *cleaned_up {
                history.active = None;
                history.abandoned.push(name.clone());
            } else if let Some(active) = &mut history.active {
                active.phase = Phase::NeedsRollback { error: error.clone() };
            }
        }
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::definition::Operation;

    fn migration(name: &str, sql: &str) -> Migration {
        Migration {
            name: name.into(),
            schema: "public".into(),
            operations: vec![Operation::Sql {
                up: sql.into(),
                down: None,
                allow: Vec::new(),
            }],
        }
    }

    /// Given these events, when the command is decided, then these events or this error.
    fn given(events: &[HistoryEvent]) -> History {
        events.iter().fold(History::default(), evolve)
    }

    fn started(name: &str) -> HistoryEvent {
        HistoryEvent::MigrationStarted {
            version: 1,
            migration: migration(name, "select 1"),
        }
    }

    fn expanded(name: &str) -> HistoryEvent {
        HistoryEvent::MigrationExpanded {
            name: name.into(),
            rows_backfilled: 0,
            duration_ms: 1,
        }
    }

    #[test]
    fn a_migration_starts_expands_and_completes_as_version_one() {
        let history = given(&[started("a"), expanded("a")]);
        let events = decide(&history, HistoryCommand::Complete { name: "a".into() }).unwrap();
        assert_eq!(
            events,
            vec![HistoryEvent::MigrationCompleted {
                name: "a".into(),
                version: 1
            }]
        );
        let after = events.iter().fold(history, evolve);
        assert_eq!(after.applied.len(), 1);
        assert!(after.active.is_none());
        let next = decide(
            &after,
            HistoryCommand::Start {
                migration: migration("b", "select 2"),
            },
        )
        .unwrap();
        assert!(matches!(
            next[0],
            HistoryEvent::MigrationStarted { version: 2, .. }
        ));
    }

    #[test]
    fn applying_twice_is_refused_and_a_changed_migration_is_named_as_such() {
        let history = given(&[
            started("a"),
            expanded("a"),
            HistoryEvent::MigrationCompleted {
                name: "a".into(),
                version: 1,
            },
        ]);
        let again = decide(
            &history,
            HistoryCommand::Start {
                migration: migration("a", "select 1"),
            },
        );
        assert_eq!(
            again,
            Err(HistoryError::AlreadyApplied {
                name: "a".into(),
                version: 1
            })
        );
        let changed = decide(
            &history,
            HistoryCommand::Start {
                migration: migration("a", "select 99"),
            },
        );
        assert!(matches!(changed, Err(HistoryError::AppliedDifferently { .. })));
        let rollback = decide(
            &history,
            HistoryCommand::RecordRollback {
                name: "a".into(),
                reason: "x".into(),
            },
        );
        assert!(matches!(rollback, Err(HistoryError::AlreadyCompleted { .. })));
    }

    #[test]
    fn one_migration_at_a_time_and_the_same_one_resumes() {
        let history = given(&[started("a")]);
        let other = decide(
            &history,
            HistoryCommand::Start {
                migration: migration("b", "select 1"),
            },
        )
        .unwrap_err();
        assert!(other.to_string().contains("'a' is in progress"), "{other}");
        let resume = decide(
            &history,
            HistoryCommand::Start {
                migration: migration("a", "select 1"),
            },
        );
        assert_eq!(resume, Ok(Vec::new()));
        let complete_early = decide(&history, HistoryCommand::Complete { name: "a".into() });
        assert_eq!(
            complete_early,
            Err(HistoryError::NotExpanded { name: "a".into() })
        );
    }

    #[test]
    fn a_failure_that_was_cleaned_up_frees_the_database_and_one_that_was_not_needs_rollback() {
        let failed = |cleaned_up| HistoryEvent::MigrationFailed {
            name: "a".into(),
            phase: "expand".into(),
            error: "boom".into(),
            cleaned_up,
        };
        let cleaned = given(&[started("a"), failed(true)]);
        assert!(cleaned.active.is_none());
        assert_eq!(cleaned.abandoned, vec!["a".to_owned()]);
        let stuck = given(&[started("a"), failed(false)]);
        let again = decide(
            &stuck,
            HistoryCommand::Start {
                migration: migration("a", "select 1"),
            },
        );
        assert!(matches!(again, Err(HistoryError::NeedsRollback { .. })));
        let rollback = decide(
            &stuck,
            HistoryCommand::RecordRollback {
                name: "a".into(),
                reason: "after failure".into(),
            },
        )
        .unwrap();
        assert!(rollback.iter().fold(stuck, evolve).active.is_none());
    }

    #[test]
    fn events_survive_storage() {
        let events = [
            started("a"),
            HistoryEvent::MigrationBackfillProgressed {
                name: "a".into(),
                table: "public.t".into(),
                rows_done: 5,
                rows_total: 10,
            },
            expanded("a"),
        ];
        for event in events {
            let back = HistoryEvent::from_stored(event.event_type(), event.data()).unwrap();
            assert_eq!(back, event);
        }
        assert!(HistoryEvent::from_stored("MigrationStarted", serde_json::json!({})).is_err());
    }
}
