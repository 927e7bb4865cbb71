//! `query.create_index`: build an index without blocking writes, then
//! prove it: the statements it was meant for are measured again (their
//! real mean time per call from pg_stat_statements, over a window after
//! the build, against the time before it) and their plans checked; an
//! index the planner does not use, or that does not make its statements
//! faster, is dropped again. Both outcomes are events with the numbers.

use agents::pg::{ExecError, LockLevel, Step, Timeouts, index_valid, run_outside_transaction, run_step};
use agents::sql::quote_ident;
use serde::Serialize;
use sqlx::PgPool;

use crate::candidates::{Catalog, shape};
use crate::workload::{PeriodStats, WorkloadSnapshot, period};

/// An index to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexSpec {
    /// `schema.table`.
    pub table: String,
    pub columns: Vec<String>,
    pub name: String,
}

impl IndexSpec {
    /// The schema of its table (and so of the index).
    pub fn schema(&self) -> &str {
        self.schema_and_table().0
    }

    fn schema_and_table(&self) -> (&str, &str) {
        self.table.split_once('.').unwrap_or(("public", &self.table))
    }

    fn qualified_name(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(self.schema_and_table().0),
            quote_ident(&self.name)
        )
    }

    pub fn create_sql(&self) -> String {
        let (schema, table) = self.schema_and_table();
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "CREATE INDEX CONCURRENTLY {} ON {}.{} ({})",
            quote_ident(&self.name),
            quote_ident(schema),
            quote_ident(table),
            columns.join(", ")
        )
    }

    pub fn drop_sql(&self) -> String {
        format!("DROP INDEX CONCURRENTLY IF EXISTS {}", self.qualified_name())
    }
}

/// The default name: `<table>_<columns>_idx`, within 63 bytes.
pub fn default_name(table: &str, columns: &[String]) -> String {
    let table = table.rsplit('.').next().unwrap_or(table);
    let mut name = format!("{table}_{}_idx", columns.join("_"));
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// How a build runs and is judged.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateConfig {
    /// lock_timeout, attempts and statement_timeout of the build and the
    /// drop, as for a migration's index (the same runner, `agents::pg`, runs them).
    pub timeouts: Timeouts,
    /// Calls of a statement in the window at least, for its time to count.
    pub calls_min: i64,
    /// The statements must be at least this many times faster (mean per
    /// call, weighted by calls) for the index to stay.
    pub speedup_min: f64,
}

impl Default for CreateConfig {
    fn default() -> Self {
        CreateConfig {
            timeouts: Timeouts::default(),
            calls_min: 10,
            speedup_min: 1.2,
        }
    }
}

/// Statements (queryids) the index is meant for: those reading its table
/// with its leading column in a filter, join or ORDER BY.
pub fn statements_for(index: &IndexSpec, snapshot: &WorkloadSnapshot, catalog: &Catalog) -> Vec<i64> {
    let Some(leading) = index.columns.first() else {
        return Vec::new();
    };
    snapshot
        .statements
        .iter()
        .filter(|statement| {
            shape(&statement.query, catalog).is_ok_and(|s| {
                s.tables.iter().any(|t| {
                    t.table == index.table
                        && (t.equality.contains(leading)
                            || t.range.contains(leading)
                            || t.join.contains(leading)
                            || t.order_by.first() == Some(leading))
                })
            })
        })
        .map(|s| s.queryid)
        .collect()
}

/// Builds the index CONCURRENTLY under lock_timeout, again while the lock
/// is not granted; an invalid index of that name (a failed build's, this
/// one's or an earlier one's) is dropped, and built again once.
pub async fn build(pool: &PgPool, index: &IndexSpec, config: &CreateConfig) -> Result<(), ExecError> {
    let step = Step {
        description: format!("build index {}", index.name),
        sql: index.create_sql(),
        transactional: false,
        builds_index: Some((index.schema_and_table().0.to_owned(), index.name.clone())),
        lock: Some(LockLevel::ShareUpdateExclusive),
    };
    run_step(pool, &config.timeouts, &step).await
}

/// Drops the index (CONCURRENTLY).
pub async fn drop_index(pool: &PgPool, index: &IndexSpec, config: &CreateConfig) -> Result<(), ExecError> {
    let what = format!("drop index {}", index.name);
    let timeouts = &config.timeouts;
    run_outside_transaction(
        pool,
        timeouts,
        &what,
        &index.drop_sql(),
        timeouts.build_timeout_ms,
    )
    .await
}

/// Whether the index exists and is valid (`None`: it does not exist).
pub async fn valid(pool: &PgPool, index: &IndexSpec) -> Result<Option<bool>, ExecError> {
    index_valid(pool, index.schema_and_table().0, &index.name, "look the index up").await
}

/// One statement's time before and after the index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub queryid: i64,
    pub query: String,
    pub before_mean_ms: f64,
    pub before_calls: i64,
    pub after_mean_ms: Option<f64>,
    pub after_calls: i64,
    /// Whether its plan (generic) uses the index.
    pub plan_uses_index: bool,
}

/// The verdict over the measured statements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub keep: bool,
    /// Before over after, mean per call weighted by calls; none when no
    /// statement ran often enough in the window.
    pub speedup: Option<f64>,
    pub reason: String,
}

/// Before: the period from `earlier` up to the build when a statement
/// ran often enough in it, else everything the counters hold up to the
/// build (all of it from before the index); after: the window since.
pub fn measure(
    statements: &[i64],
    earlier: Option<&WorkloadSnapshot>,
    at_build: &WorkloadSnapshot,
    after_window: &WorkloadSnapshot,
    uses_index: &dyn Fn(i64) -> bool,
    calls_min: i64,
) -> Vec<Measurement> {
    let recent: Vec<PeriodStats> = earlier
        .map(|e| period(e, at_build).statements)
        .unwrap_or_default();
    let cumulative = period(&empty_like(at_build), at_build).statements;
    let after = period(at_build, after_window).statements;
    statements
        .iter()
        .filter_map(|queryid| {
            let then = recent
                .iter()
                .find(|s| s.queryid == *queryid && s.calls >= calls_min)
                .or_else(|| cumulative.iter().find(|s| s.queryid == *queryid))?;
            let now = after.iter().find(|s| s.queryid == *queryid);
            Some(Measurement {
                queryid: *queryid,
                query: then.query.clone(),
                before_mean_ms: then.mean_ms,
                before_calls: then.calls,
                after_mean_ms: now.map(|n| n.mean_ms),
                after_calls: now.map_or(0, |n| n.calls),
                plan_uses_index: uses_index(*queryid),
            })
        })
        .collect()
}

fn empty_like(snapshot: &WorkloadSnapshot) -> WorkloadSnapshot {
    WorkloadSnapshot {
        taken_at_ms: 0,
        statements: Vec::new(),
        dealloc: snapshot.dealloc,
        stats_reset: snapshot.stats_reset.clone(),
    }
}

/// Keep the index only when the planner uses it for a statement it was
/// meant for and, where the window measured them, they got faster.
pub fn judge(measurements: &[Measurement], config: &CreateConfig) -> Verdict {
    if measurements.is_empty() {
        return Verdict {
            keep: false,
            speedup: None,
            reason: "no statement of the workload filters, joins or sorts on its leading column".into(),
        };
    }
    if !measurements.iter().any(|m| m.plan_uses_index) {
        return Verdict {
            keep: false,
            speedup: None,
            reason: "the planner does not use it for any of the statements it was meant for".into(),
        };
    }
    let measured: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| m.after_calls >= config.calls_min && m.before_calls >= config.calls_min)
        .collect();
    if measured.is_empty() {
        return Verdict {
            keep: true,
            speedup: None,
            reason: format!(
                "the planner uses it; its statements ran fewer than {} times in the window, so the time gain is not measured",
                config.calls_min
            ),
        };
    }
    let calls: f64 = measured.iter().map(|m| m.after_calls as f64).sum();
    let before: f64 = measured
        .iter()
        .map(|m| m.before_mean_ms * m.after_calls as f64)
        .sum::<f64>()
        / calls;
    let after: f64 = measured
        .iter()
        .map(|m| m.after_mean_ms.unwrap_or(0.0) * m.after_calls as f64)
        .sum::<f64>()
        / calls;
    let speedup = if after > 0.0 {
        before / after
    } else {
        f64::INFINITY
    };
    if speedup >= config.speedup_min {
        Verdict {
            keep: true,
            speedup: Some(speedup),
            reason: format!(
                "its statements are {speedup:.1}× faster ({before:.3} ms → {after:.3} ms per call)"
            ),
        }
    } else {
        Verdict {
            keep: false,
            speedup: Some(speedup),
            reason: format!(
                "its statements are not faster enough ({before:.3} ms → {after:.3} ms per call, {speedup:.2}×; {:.2}× needed)",
                config.speedup_min
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(before: f64, after: Option<f64>, calls: i64, uses: bool) -> Measurement {
        Measurement {
            queryid: 1,
            query: "SELECT 1".into(),
            before_mean_ms: before,
            before_calls: 100,
            after_mean_ms: after,
            after_calls: calls,
            plan_uses_index: uses,
        }
    }

    #[test]
    fn an_index_stays_when_its_statements_got_faster_and_goes_when_unused_or_not_faster() {
        let config = CreateConfig::default();
        let kept = judge(&[measurement(5.0, Some(0.05), 50, true)], &config);
        assert!(kept.keep && kept.speedup.unwrap() > 50.0, "{kept:?}");
        let unused = judge(&[measurement(5.0, Some(5.0), 50, false)], &config);
        assert!(
            !unused.keep && unused.reason.contains("does not use it"),
            "{unused:?}"
        );
        let slow = judge(&[measurement(5.0, Some(4.9), 50, true)], &config);
        assert!(
            !slow.keep && slow.reason.contains("not faster enough"),
            "{slow:?}"
        );
        let unmeasured = judge(&[measurement(5.0, None, 0, true)], &config);
        assert!(unmeasured.keep && unmeasured.speedup.is_none(), "{unmeasured:?}");
        assert!(!judge(&[], &config).keep);
    }

    #[test]
    fn names_and_sql_are_quoted_and_bounded() {
        let index = IndexSpec {
            table: "public.users".into(),
            columns: vec!["email".into()],
            name: default_name("public.users", &["email".into()]),
        };
        assert_eq!(index.name, "users_email_idx");
        assert_eq!(
            index.create_sql(),
            r#"CREATE INDEX CONCURRENTLY "users_email_idx" ON "public"."users" ("email")"#
        );
        assert_eq!(
            index.drop_sql(),
            r#"DROP INDEX CONCURRENTLY IF EXISTS "public"."users_email_idx""#
        );
        assert!(default_name("t", &["c".repeat(80)]).len() <= 63);
    }
}
