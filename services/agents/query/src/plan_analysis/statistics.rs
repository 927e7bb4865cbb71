//! Tables whose planner statistics are missing or out of date.

use super::*;

/// Tables whose statistics mislead the planner: never analysed, or modified
/// since the last ANALYZE by at least `stale_mods_share` of their live rows
/// (and at least `stale_rows_min` rows).
pub fn stale_statistics(tables: &[TableStats], thresholds: &Thresholds) -> Vec<PlanFinding> {
    tables
        .iter()
        .filter_map(|table| stale_statistics_finding(table, thresholds))
        .collect()
}

pub(super) fn stale_statistics_finding(table: &TableStats, thresholds: &Thresholds) -> Option<PlanFinding> {
    let message = if table.last_analyzed {
        if table.modified_since_analyze < thresholds.stale_rows_min {
            return None;
        }
        let share = if table.live_rows > 0.0 {
            table.modified_since_analyze / table.live_rows
        } else {
            f64::INFINITY
        };
        if share < thresholds.stale_mods_share {
            return None;
        }
        format!(
            "{} rows of {} were modified since its last ANALYZE, {} of its {} live rows: the planner \
             estimates from what the table looked like before",
            format_count(table.modified_since_analyze),
            table.table,
            format_percent(share),
            format_count(table.live_rows),
        )
    } else {
        if table.live_rows.max(table.modified_since_analyze) < thresholds.stale_rows_min {
            return None;
        }
        format!(
            "{} ({} live rows) has never been analysed: the planner estimates every condition on it with \
             default selectivities",
            table.table,
            format_count(table.live_rows),
        )
    };
    Some(PlanFinding {
        kind: FindingKind::StaleStatistics,
        relation: Some(table.table.clone()),
        node_type: String::new(),
        message,
        advice: format!(
            "ANALYZE {table}; if it goes stale again, let autovacuum analyze it sooner: ALTER TABLE {table} \
             SET (autovacuum_analyze_scale_factor = 0.02);",
            table = quote_relation(&table.table)
        ),
    })
}
