//! The workload as pg_stat_statements sees it: snapshots of its counters
//! (kept as events, so that the difference of two describes a period),
//! their difference, and regressions between periods. The snapshot is
//! read by [`read_snapshot`]; everything else here is pure.
//!
//! A statement's counters only grow until they are reset or the entry is
//! evicted (pg_stat_statements keeps `pg_stat_statements.max` entries and
//! deallocates the least used). A period whose counters went backwards,
//! or in which `pg_stat_statements_info.dealloc` grew, is marked so: its
//! differences are not trusted blindly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

const SNAPSHOT: &str = include_str!("sql/workload_snapshot.sql");
const SNAPSHOT_INFO: &str = include_str!("sql/workload_info.sql");

/// Statements kept per snapshot at most (the most time-consuming ones).
pub const SNAPSHOT_STATEMENTS_MAX: i64 = 100;
/// Characters of a statement's text kept at most.
pub const QUERY_CHARS_MAX: i32 = 2_000;

/// One statement's cumulative counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StatementStats {
    /// pg_stat_statements' `queryid` (with `userid` and `dbid`, its key).
    pub queryid: i64,
    /// Normalized text (`$1` for constants), at most [`QUERY_CHARS_MAX`].
    pub query: String,
    pub calls: i64,
    pub total_exec_ms: f64,
    pub mean_exec_ms: f64,
    pub stddev_exec_ms: f64,
    pub rows: i64,
}

impl StatementStats {
    /// Σ x² over all calls, from the mean and the population deviation
    /// pg_stat_statements keeps: what lets a period have its own spread.
    fn sum_of_squares(&self) -> f64 {
        let n = self.calls as f64;
        n * (self.stddev_exec_ms.powi(2) + self.mean_exec_ms.powi(2))
    }
}

/// The counters of one database at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSnapshot {
    /// When it was taken, ms since the epoch (the caller's clock).
    pub taken_at_ms: u64,
    pub statements: Vec<StatementStats>,
    /// `pg_stat_statements_info.dealloc`: entries evicted so far.
    pub dealloc: i64,
    /// `pg_stat_statements_info.stats_reset`, as text.
    pub stats_reset: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "pg_stat_statements is not available in this database ({0}); add it to shared_preload_libraries, restart PostgreSQL and run CREATE EXTENSION pg_stat_statements"
    )]
    Unavailable(String),
    #[error("cannot read pg_stat_statements: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<WorkloadError> for domain::OperationError {
    fn from(e: WorkloadError) -> domain::OperationError {
        let code = match &e {
            WorkloadError::Unavailable(_) => domain::Code::FailedPrecondition,
            WorkloadError::Database(e) => agents::database_code(e),
        };
        domain::OperationError::new(code, e.to_string())
    }
}

/// Reads the database's statements (the most time-consuming first).
pub async fn read_snapshot(pool: &PgPool, taken_at_ms: u64) -> Result<WorkloadSnapshot, WorkloadError> {
    let info: (i64, String) = sqlx::query_as(SNAPSHOT_INFO)
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    let statements = sqlx::query_as(SNAPSHOT)
        .bind(SNAPSHOT_STATEMENTS_MAX)
        .bind(QUERY_CHARS_MAX)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    Ok(WorkloadSnapshot {
        taken_at_ms,
        statements,
        dealloc: info.0,
        stats_reset: info.1,
    })
}

/// A missing relation or function means the extension is not there.
fn unavailable(error: sqlx::Error) -> WorkloadError {
    let code = error.as_database_error().and_then(|db| db.code());
    match code.as_deref() {
        Some("42P01" | "42883" | "55000") => WorkloadError::Unavailable(
            error
                .as_database_error()
                .map_or_else(|| error.to_string(), |db| db.message().to_owned()),
        ),
        _ => WorkloadError::Database(error),
    }
}

/// One statement over a period: what its calls cost between two snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodStats {
    pub queryid: i64,
    pub query: String,
    pub calls: i64,
    pub total_ms: f64,
    pub mean_ms: f64,
    /// Standard deviation of one call's time over the period.
    pub stddev_ms: f64,
    pub rows: i64,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadPeriod {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Statements that ran in the period, the most time-consuming first.
    pub statements: Vec<PeriodStats>,
    /// Entries were evicted during the period: statements may be missing
    /// or have started counting again.
    pub evicted: bool,
    /// The counters were reset during the period: only statements that
    /// appeared since count, from zero.
    pub reset: bool,
}

/// The difference of two snapshots of one database (`before` first).
pub fn period(before: &WorkloadSnapshot, after: &WorkloadSnapshot) -> WorkloadPeriod {
    let reset = after.stats_reset != before.stats_reset;
    let evicted = after.dealloc > before.dealloc;
    let earlier: BTreeMap<i64, &StatementStats> = before.statements.iter().map(|s| (s.queryid, s)).collect();
    let mut statements: Vec<PeriodStats> = after
        .statements
        .iter()
        .filter_map(|now| {
            let then = if reset {
                None
            } else {
                earlier.get(&now.queryid).copied()
            };
            difference(then, now)
        })
        .collect();
    statements.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    WorkloadPeriod {
        from_ms: before.taken_at_ms,
        to_ms: after.taken_at_ms,
        statements,
        evicted,
        reset,
    }
}

/// One statement's period; none when it did not run, or when its counters
/// went backwards (its entry was evicted and came back: counting anew).
fn difference(then: Option<&StatementStats>, now: &StatementStats) -> Option<PeriodStats> {
    let (calls, total_ms, sum_sq, rows) = match then {
        Some(then) if now.calls >= then.calls => (
            now.calls - then.calls,
            now.total_exec_ms - then.total_exec_ms,
            now.sum_of_squares() - then.sum_of_squares(),
            now.rows - then.rows,
        ),
        _ => (now.calls, now.total_exec_ms, now.sum_of_squares(), now.rows),
    };
    if calls <= 0 {
        return None;
    }
    let n = calls as f64;
    let mean_ms = total_ms.max(0.0) / n;
    let variance = (sum_sq / n - mean_ms.powi(2)).max(0.0);
    Some(PeriodStats {
        queryid: now.queryid,
        query: now.query.clone(),
        calls,
        total_ms: total_ms.max(0.0),
        mean_ms,
        stddev_ms: variance.sqrt(),
        rows: rows.max(0),
    })
}

/// When a statement counts as regressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionRule {
    /// Calls in each of the two periods at least: fewer is one sample, not a trend.
    pub calls_min: i64,
    /// The recent mean is at least this many times the baseline's.
    pub ratio_min: f64,
    /// And at least this many ms more per call (a 0.01 → 0.03 ms change is noise).
    pub increase_ms_min: f64,
    /// Welch's t of the two periods' means at least this (the difference is
    /// far beyond both periods' spread).
    pub t_min: f64,
}

impl Default for RegressionRule {
    fn default() -> Self {
        RegressionRule {
            calls_min: 20,
            ratio_min: 1.5,
            increase_ms_min: 0.5,
            t_min: 4.0,
        }
    }
}

/// A statement slower in the recent period than in the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    pub queryid: i64,
    pub query: String,
    pub baseline_mean_ms: f64,
    pub baseline_calls: i64,
    pub recent_mean_ms: f64,
    pub recent_calls: i64,
    pub ratio: f64,
    /// Welch's t statistic of the difference of the means.
    pub t: f64,
}

/// Statements whose mean time per call rose significantly from `baseline`
/// to `recent` (periods of the same database), the worst first.
pub fn regressions(
    baseline: &WorkloadPeriod,
    recent: &WorkloadPeriod,
    rule: &RegressionRule,
) -> Vec<Regression> {
    let before: BTreeMap<i64, &PeriodStats> = baseline.statements.iter().map(|s| (s.queryid, s)).collect();
    let mut found: Vec<Regression> = recent
        .statements
        .iter()
        .filter_map(|now| {
            let then = before.get(&now.queryid)?;
            regression(then, now, rule)
        })
        .collect();
    found.sort_by(|a, b| b.ratio.total_cmp(&a.ratio));
    found
}

fn regression(then: &PeriodStats, now: &PeriodStats, rule: &RegressionRule) -> Option<Regression> {
    if then.calls < rule.calls_min || now.calls < rule.calls_min {
        return None;
    }
    let increase_ms = now.mean_ms - then.mean_ms;
    let ratio = if then.mean_ms > 0.0 {
        now.mean_ms / then.mean_ms
    } else {
        f64::INFINITY
    };
    let t = welch_t(then, now);
    let regressed = increase_ms >= rule.increase_ms_min && ratio >= rule.ratio_min && t >= rule.t_min;
    regressed.then(|| Regression {
        queryid: now.queryid,
        query: now.query.clone(),
        baseline_mean_ms: then.mean_ms,
        baseline_calls: then.calls,
        recent_mean_ms: now.mean_ms,
        recent_calls: now.calls,
        ratio,
        t,
    })
}

/// Welch's t of `now`'s mean over `then`'s: the difference in units of its
/// standard error. With no spread at all in either period a difference
/// is certain (infinite t); no difference is none.
fn welch_t(then: &PeriodStats, now: &PeriodStats) -> f64 {
    let error =
        (then.stddev_ms.powi(2) / then.calls as f64 + now.stddev_ms.powi(2) / now.calls as f64).sqrt();
    let difference = now.mean_ms - then.mean_ms;
    if error > 0.0 {
        difference / error
    } else if difference > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(queryid: i64, calls: i64, mean_ms: f64, stddev_ms: f64) -> StatementStats {
        StatementStats {
            queryid,
            query: format!("SELECT {queryid}"),
            calls,
            total_exec_ms: calls as f64 * mean_ms,
            mean_exec_ms: mean_ms,
            stddev_exec_ms: stddev_ms,
            rows: calls,
        }
    }

    fn snapshot(taken_at_ms: u64, statements: Vec<StatementStats>) -> WorkloadSnapshot {
        WorkloadSnapshot {
            taken_at_ms,
            statements,
            dealloc: 0,
            stats_reset: "2026-11-26".into(),
        }
    }

    /// Cumulative counters after `a` calls of mean/stddev `(m1, s1)` and
    /// then `b` calls of `(m2, s2)`.
    fn merged(queryid: i64, a: (i64, f64, f64), b: (i64, f64, f64)) -> StatementStats {
        let n = (a.0 + b.0) as f64;
        let total = a.0 as f64 * a.1 + b.0 as f64 * b.1;
        let mean = total / n;
        let sum_sq = a.0 as f64 * (a.2.powi(2) + a.1.powi(2)) + b.0 as f64 * (b.2.powi(2) + b.1.powi(2));
        let stddev = (sum_sq / n - mean.powi(2)).sqrt();
        StatementStats {
            total_exec_ms: total,
            ..stats(queryid, a.0 + b.0, mean, stddev)
        }
    }

    #[test]
    fn a_period_has_the_calls_time_and_spread_of_its_own_calls() {
        let before = snapshot(1_000, vec![stats(1, 100, 2.0, 0.5)]);
        let after = snapshot(61_000, vec![merged(1, (100, 2.0, 0.5), (50, 8.0, 1.0))]);
        let p = period(&before, &after);
        assert_eq!((p.from_ms, p.to_ms), (1_000, 61_000));
        assert!(!p.evicted && !p.reset);
        let s = &p.statements[0];
        assert_eq!(s.calls, 50);
        assert!((s.mean_ms - 8.0).abs() < 1e-9, "{s:?}");
        assert!((s.stddev_ms - 1.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn statements_that_did_not_run_are_left_out_and_new_ones_count_from_zero() {
        let before = snapshot(0, vec![stats(1, 10, 1.0, 0.0)]);
        let after = snapshot(1, vec![stats(1, 10, 1.0, 0.0), stats(2, 5, 3.0, 0.0)]);
        let p = period(&before, &after);
        assert_eq!(p.statements.len(), 1);
        assert_eq!((p.statements[0].queryid, p.statements[0].calls), (2, 5));
    }

    #[test]
    fn evictions_and_resets_are_marked_and_counters_going_back_start_anew() {
        let before = snapshot(0, vec![stats(1, 100, 1.0, 0.0)]);
        let mut after = snapshot(1, vec![stats(1, 7, 2.0, 0.0)]);
        after.dealloc = 3;
        let p = period(&before, &after);
        assert!(p.evicted);
        assert_eq!(
            p.statements[0].calls, 7,
            "an entry that came back counts from zero"
        );
        after.stats_reset = "2026-11-27".into();
        assert!(period(&before, &after).reset);
    }

    fn period_of(queryid: i64, calls: i64, mean_ms: f64, stddev_ms: f64) -> WorkloadPeriod {
        WorkloadPeriod {
            from_ms: 0,
            to_ms: 1,
            statements: vec![PeriodStats {
                queryid,
                query: "SELECT 1".into(),
                calls,
                total_ms: calls as f64 * mean_ms,
                mean_ms,
                stddev_ms,
                rows: calls,
            }],
            evicted: false,
            reset: false,
        }
    }

    #[test]
    fn a_statement_four_times_slower_over_many_calls_is_a_regression() {
        let found = regressions(
            &period_of(1, 500, 1.0, 0.3),
            &period_of(1, 400, 4.0, 1.0),
            &RegressionRule::default(),
        );
        assert_eq!(found.len(), 1);
        assert!((found[0].ratio - 4.0).abs() < 1e-9);
        assert!(found[0].t > 50.0, "{:?}", found[0]);
    }

    #[test]
    fn noise_few_calls_and_tiny_changes_are_not_regressions() {
        let rule = RegressionRule::default();
        // Same mean, wide spread
        assert!(regressions(&period_of(1, 500, 5.0, 4.0), &period_of(1, 500, 5.5, 4.0), &rule).is_empty());
        // Twice as slow, but three calls: one sample is no trend
        assert!(regressions(&period_of(1, 500, 1.0, 0.1), &period_of(1, 3, 2.0, 0.1), &rule).is_empty());
        // Three times slower but by 0.02 ms
        assert!(
            regressions(
                &period_of(1, 500, 0.01, 0.001),
                &period_of(1, 500, 0.03, 0.001),
                &rule
            )
            .is_empty()
        );
        // Faster is not a regression
        assert!(regressions(&period_of(1, 500, 4.0, 1.0), &period_of(1, 500, 1.0, 0.3), &rule).is_empty());
        // A wide spread hides a higher mean
        assert!(regressions(&period_of(1, 30, 2.0, 20.0), &period_of(1, 30, 4.0, 20.0), &rule).is_empty());
    }
}
