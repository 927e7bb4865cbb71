//! Retention: which backups a policy keeps, which it deletes, and from
//! which WAL segment on the archive is still needed. `plan` is pure; the
//! engine applies it.
//!
//! Policies, per kind of backup (logical and physical are counted
//! separately), and kept together when both are given (a backup either
//! keeps is kept):
//! - keep the newest N completed backups;
//! - a recovery window of N days: every backup finished inside it, and the
//!   newest one finished before it (what recovers to the window's start).
//!   So the only backup that covers the window is never deleted.
//!
//! WAL older than the first segment of the oldest kept physical backup is
//! not needed by any restore; with no physical backup kept, no WAL is
//! deleted.

use event_store::clock::now_ms;
use serde::Serialize;

use crate::catalogue::{BackupKind, Catalogue, CatalogueCommand};
use crate::engine::{BackupError, Backups};
use crate::physical::segment_position;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_full: Option<u32>,
    pub window_days: Option<u32>,
}

impl Policy {
    pub fn new(keep_full: Option<u32>, window_days: Option<u32>) -> Result<Policy, String> {
        if keep_full == Some(0) || window_days == Some(0) {
            return Err(
                "a retention policy keeps at least one backup: keep_full and window_days must be at least 1"
                    .into(),
            );
        }
        if keep_full.is_none() && window_days.is_none() {
            return Err(
                "a retention policy needs keep_full (backups to keep) or window_days (recovery window)"
                    .into(),
            );
        }
        Ok(Policy {
            keep_full,
            window_days,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionPlan {
    pub keep: Vec<String>,
    /// `(backup id, why)`.
    pub delete: Vec<(String, String)>,
    /// Archived WAL before this segment is no longer needed.
    pub wal_needed_from: Option<String>,
}

pub fn plan(catalogue: &Catalogue, policy: Policy, now_ms: i64) -> RetentionPlan {
    let mut keep = Vec::new();
    let mut delete = Vec::new();
    for kind in [BackupKind::Logical, BackupKind::Physical] {
        // Newest first.
        let backups: Vec<(&str, i64)> = catalogue
            .completed()
            .rev()
            .filter(|(e, _)| e.kind == kind)
            .map(|(e, c)| (e.backup_id.as_str(), c.stopped_at_ms))
            .collect();
        let window_start = policy.window_days.map(|d| now_ms - i64::from(d) * DAY_MS);
        let first_before_window =
            window_start.and_then(|start| backups.iter().position(|(_, at)| *at < start));
        for (position, (id, stopped_at_ms)) in backups.iter().enumerate() {
            let by_count = policy.keep_full.is_some_and(|n| position < n as usize);
            let by_window = window_start.is_some_and(|start| *stopped_at_ms >= start)
                || first_before_window == Some(position);
            if by_count || by_window {
                keep.push((*id).to_owned());
            } else {
                let why = match (policy.keep_full, policy.window_days) {
                    (Some(n), Some(d)) => {
                        format!("not among the newest {n} and not needed for the {d}-day window")
                    }
                    (Some(n), None) => format!("not among the newest {n} {} backups", kind.as_str()),
                    (None, Some(d)) => format!("older than needed for the {d}-day recovery window"),
                    (None, None) => "no policy keeps it".to_owned(),
                };
                delete.push(((*id).to_owned(), why));
            }
        }
    }
    let wal_needed_from = catalogue
        .completed()
        .filter(|(e, _)| e.kind == BackupKind::Physical && keep.contains(&e.backup_id))
        .filter_map(|(_, c)| segment_position(&c.start_wal_segment).map(|p| (p, c)))
        .min_by_key(|(p, _)| *p)
        .map(|(_, c)| c.start_wal_segment.clone());
    keep.sort();
    RetentionPlan {
        keep,
        delete,
        wal_needed_from,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionApplied {
    pub policy: Policy,
    pub kept: Vec<String>,
    pub deleted: Vec<String>,
    pub wal_segments_deleted: u64,
    pub wal_needed_from: Option<String>,
}

/// Deletes what the policy does not keep: the backups (files, then the
/// catalogue entry), then the WAL no kept backup needs.
pub async fn apply(backups: &Backups, target: &str, policy: Policy) -> Result<RetentionApplied, BackupError> {
    backups.reconcile(target).await?;
    let catalogue = backups.catalogue(target).await?;
    let plan = plan(&catalogue, policy, now_ms() as i64);
    let mut deleted = Vec::new();
    for (backup_id, reason) in &plan.delete {
        backups.repository().delete_backup(target, backup_id).await?;
        backups
            .record(
                target,
                CatalogueCommand::Delete {
                    backup_id: backup_id.clone(),
                    reason: format!("retention: {reason}"),
                    at_ms: now_ms() as i64,
                },
            )
            .await?;
        deleted.push(backup_id.clone());
    }
    let mut wal_segments_deleted = 0;
    if let Some(needed_from) = &plan.wal_needed_from
        && let Some(first_needed) = segment_position(needed_from)
    {
        for name in backups.repository().wal_files(target).await? {
            // Timeline history files are small and needed to follow a
            // timeline switch: always kept.
            if let Some(position) = segment_position(&name)
                && position < first_needed
            {
                backups.repository().delete_wal(target, &name).await?;
                wal_segments_deleted += 1;
            }
        }
        backups
            .record(
                target,
                CatalogueCommand::PruneWal {
                    before_segment: needed_from.clone(),
                    segments: wal_segments_deleted,
                    at_ms: now_ms() as i64,
                },
            )
            .await?;
    }
    Ok(RetentionApplied {
        policy,
        kept: plan.keep,
        deleted,
        wal_segments_deleted,
        wal_needed_from: plan.wal_needed_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{CatalogueEvent, Completion, evolve};

    const NOW: i64 = 100 * DAY_MS;

    fn backup(id: &str, kind: BackupKind, stopped_days_ago: i64, segment: &str) -> [CatalogueEvent; 2] {
        let stopped_at_ms = NOW - stopped_days_ago * DAY_MS;
        [
            CatalogueEvent::BackupStarted {
                backup_id: id.into(),
                kind,
                tables: vec![],
                started_at_ms: stopped_at_ms - 1000,
            },
            CatalogueEvent::BackupCompleted {
                backup_id: id.into(),
                completion: Completion {
                    stopped_at_ms,
                    stored_bytes: 1,
                    plain_bytes: 1,
                    files: 1,
                    start_lsn: "0/0".into(),
                    stop_lsn: "0/0".into(),
                    start_wal_segment: segment.into(),
                    server_version: "15".into(),
                },
            },
        ]
    }

    fn given(backups: &[[CatalogueEvent; 2]]) -> Catalogue {
        backups.iter().flatten().fold(Catalogue::default(), evolve)
    }

    fn deleted(plan: &RetentionPlan) -> Vec<&str> {
        plan.delete.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn keep_full_keeps_the_newest_of_each_kind_and_the_wal_from_the_oldest_kept_physical() {
        let catalogue = given(&[
            backup("p1", BackupKind::Physical, 9, "000000010000000000000002"),
            backup("l1", BackupKind::Logical, 8, ""),
            backup("p2", BackupKind::Physical, 5, "000000010000000000000009"),
            backup("l2", BackupKind::Logical, 4, ""),
            backup("p3", BackupKind::Physical, 1, "00000001000000000000000F"),
        ]);
        let plan = plan(&catalogue, Policy::new(Some(2), None).unwrap(), NOW);
        assert_eq!(deleted(&plan), ["p1"]);
        assert_eq!(plan.keep, ["l1", "l2", "p2", "p3"]);
        assert_eq!(plan.wal_needed_from.as_deref(), Some("000000010000000000000009"));
    }

    #[test]
    fn a_window_keeps_what_is_inside_it_and_the_newest_backup_before_it() {
        let catalogue = given(&[
            backup("p1", BackupKind::Physical, 20, "000000010000000000000001"),
            backup("p2", BackupKind::Physical, 10, "000000010000000000000005"),
            backup("p3", BackupKind::Physical, 3, "000000010000000000000008"),
        ]);
        let plan = plan(&catalogue, Policy::new(None, Some(7)).unwrap(), NOW);
        assert_eq!(deleted(&plan), ["p1"]);
        assert_eq!(plan.wal_needed_from.as_deref(), Some("000000010000000000000005"));
    }

    #[test]
    fn the_only_backup_that_covers_the_window_is_never_deleted() {
        let catalogue = given(&[
            backup("l1", BackupKind::Logical, 40, ""),
            backup("l2", BackupKind::Logical, 30, ""),
        ]);
        let plan = plan(&catalogue, Policy::new(None, Some(7)).unwrap(), NOW);
        assert_eq!(deleted(&plan), ["l1"]);
        assert_eq!(plan.keep, ["l2"]);
        assert_eq!(plan.wal_needed_from, None);
    }

    #[test]
    fn both_policies_keep_what_either_keeps() {
        let catalogue = given(&[
            backup("l1", BackupKind::Logical, 40, ""),
            backup("l2", BackupKind::Logical, 30, ""),
            backup("l3", BackupKind::Logical, 2, ""),
        ]);
        let plan = plan(&catalogue, Policy::new(Some(1), Some(7)).unwrap(), NOW);
        assert_eq!(deleted(&plan), ["l1"]);
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        assert!(Policy::new(None, None).unwrap_err().contains("needs keep_full"));
        assert!(Policy::new(Some(0), None).unwrap_err().contains("at least 1"));
    }
}
