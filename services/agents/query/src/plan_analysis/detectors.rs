//! The detectors: what is slow in one plan node, each with its numbers and advice.

use std::collections::HashMap;

use agents::sql::quote_ident_if_needed;

use super::*;

/// How many rows a filtering scan read and kept.
pub(super) struct FilterReading {
    pub(super) rows_read: f64,
    pub(super) rows_kept: f64,
    /// Counted by ANALYZE rather than estimated.
    pub(super) measured: bool,
}

/// A Seq Scan whose filter keeps a small share of a big table.
pub(super) fn selective_seq_scan(
    node: &PlanNode,
    context: NodeContext,
    thresholds: &Thresholds,
    table_rows: &HashMap<String, f64>,
) -> Option<PlanFinding> {
    if node.node_type != "Seq Scan" {
        return None;
    }
    let filter = node.filter.as_deref()?;
    let relation = node.relation.as_deref()?;
    let reading = seq_scan_reading(node, context, relation, table_rows)?;
    if reading.rows_read < thresholds.seq_scan_rows_min || reading.rows_read <= 0.0 {
        return None;
    }
    let kept_share = reading.rows_kept / reading.rows_read;
    if kept_share > thresholds.selective_filter_max {
        return None;
    }
    let mut message = if reading.measured {
        format!(
            "{} reads {} rows and keeps {} of them ({}) with filter {filter}",
            describe_node(node),
            format_count(reading.rows_read),
            format_count(reading.rows_kept),
            format_percent(kept_share),
        )
    } else {
        format!(
            "{} reads all of its about {} rows and is estimated to keep {} ({}) with filter {filter}",
            describe_node(node),
            format_count(reading.rows_read),
            format_count(reading.rows_kept),
            format_percent(kept_share),
        )
    };
    if let Some(loops) = node
        .actual_loops
        .filter(|loops| *loops > 1.0 && !node.parallel_aware)
    {
        message.push_str(&format!(", and does so {} times", format_count(loops)));
    }
    let shape = filter_shape(&[filter]);
    Some(PlanFinding {
        kind: FindingKind::SelectiveSeqScan,
        relation: Some(relation.to_owned()),
        node_type: node.node_type.clone(),
        message,
        advice: index_advice(
            relation,
            shape.as_ref(),
            &|_| true,
            "so the filter becomes an index condition",
        ),
    })
}

/// Rows a Seq Scan reads per table pass and keeps, measured with ANALYZE,
/// else estimated from the table's row count when it is known.
pub(super) fn seq_scan_reading(
    node: &PlanNode,
    context: NodeContext,
    relation: &str,
    table_rows: &HashMap<String, f64>,
) -> Option<FilterReading> {
    if let (Some(kept_per_loop), Some(loops)) = (node.actual_rows, node.actual_loops) {
        if loops <= 0.0 {
            return None;
        }
        let removed_per_loop = node.rows_removed_by_filter.unwrap_or(0.0);
        // Parallel workers share one pass over the table; otherwise each loop
        // is a pass of its own.
        let loops_per_pass = if node.parallel_aware { loops } else { 1.0 };
        return Some(FilterReading {
            rows_read: (kept_per_loop + removed_per_loop) * loops_per_pass,
            rows_kept: kept_per_loop * loops_per_pass,
            measured: true,
        });
    }
    let rows_in_table = lookup_table_rows(table_rows, relation)?;
    // A parallel scan's Plan Rows is per process.
    let processes = if node.parallel_aware {
        parallel_divisor(context.parallel_workers.unwrap_or(0.0))
    } else {
        1.0
    };
    let rows_kept = node.plan_rows? * processes;
    Some(FilterReading {
        rows_read: rows_in_table,
        rows_kept: rows_kept.min(rows_in_table),
        measured: false,
    })
}

/// The table's row count, trying `table` and `public.table` for a plan
/// without schemas, and `table` for a schema-qualified one.
pub(super) fn lookup_table_rows(table_rows: &HashMap<String, f64>, relation: &str) -> Option<f64> {
    if let Some(rows) = table_rows.get(relation) {
        return Some(*rows);
    }
    match relation.split_once('.') {
        Some((_, table)) => table_rows.get(table).copied(),
        None => table_rows.get(&format!("public.{relation}")).copied(),
    }
}

/// The planner's share of a parallel scan's rows estimated per process
/// (PostgreSQL's `get_parallel_divisor`, with the leader participating).
pub(super) fn parallel_divisor(workers: f64) -> f64 {
    let leader_contribution = 1.0 - 0.3 * workers;
    if leader_contribution > 0.0 {
        workers + leader_contribution
    } else {
        workers.max(1.0)
    }
}

/// An index or bitmap heap scan whose filter discards most of the rows the
/// index led it to: the index lacks the filter's columns.
pub(super) fn index_filter_discards_rows(node: &PlanNode, thresholds: &Thresholds) -> Option<PlanFinding> {
    if !matches!(
        node.node_type.as_str(),
        "Index Scan" | "Index Only Scan" | "Bitmap Heap Scan"
    ) {
        return None;
    }
    let filter = node.filter.as_deref()?;
    let relation = node.relation.as_deref()?;
    let loops = node.actual_loops.filter(|loops| *loops > 0.0)?;
    let kept = node.actual_rows? * loops;
    let removed = node.rows_removed_by_filter? * loops;
    let fetched = kept + removed;
    if fetched < thresholds.seq_scan_rows_min || fetched <= 0.0 {
        return None;
    }
    let discarded_share = removed / fetched;
    if 1.0 - discarded_share > thresholds.selective_filter_max {
        return None;
    }
    let index_cond = node.index_cond.as_deref().or(node.recheck_cond.as_deref());
    let via = index_cond.map(|cond| format!(" via {cond}")).unwrap_or_default();
    let message = format!(
        "{} fetches {} rows{via} and discards {} of them ({}) with filter {filter}",
        describe_node(node),
        format_count(fetched),
        format_count(removed),
        format_percent(discarded_share),
    );
    let conditions: Vec<&str> = index_cond.into_iter().chain([filter]).collect();
    let shape = filter_shape(&conditions);
    Some(PlanFinding {
        kind: FindingKind::IndexFilterDiscardsRows,
        relation: Some(relation.to_owned()),
        node_type: node.node_type.clone(),
        message,
        advice: index_advice(
            relation,
            shape.as_ref(),
            &|_| true,
            "so the index itself narrows the rows the filter now discards",
        ),
    })
}

/// A Sort (or Incremental Sort) that spilled to disk.
pub(super) fn spilling_sort(node: &PlanNode) -> Option<PlanFinding> {
    let disk_kb = node.sort_disk_kb?;
    let relation = sole_relation_beneath(node);
    let keys = if node.sort_keys.is_empty() {
        "its key".to_owned()
    } else {
        node.sort_keys.join(", ")
    };
    let method = node.sort_method.as_deref().unwrap_or("an external sort");
    let message = format!(
        "{} on {keys} spilled to disk: {method} wrote {} of temporary files",
        node.node_type,
        format_kb(disk_kb),
    );
    // An in-memory sort needs about twice the space its run files take.
    let work_mem = suggested_work_mem(disk_kb * 2.0);
    let mut advice = format!(
        "Raise work_mem for this query so the sort fits in memory, e.g. SET LOCAL work_mem = '{work_mem}' \
         (it is granted per sort and per process, so raise it for this query or role rather than globally)"
    );
    if let (Some(relation), Some(columns)) = (relation.as_deref(), sort_index_columns(&node.sort_keys)) {
        advice.push_str(&format!(
            "; or, if the query reads most of {relation} in this order or stops early (LIMIT), create an index \
             matching the ORDER BY so rows come out sorted: CREATE INDEX CONCURRENTLY ON {} ({columns});",
            quote_relation(relation)
        ));
    } else {
        advice.push('.');
    }
    Some(PlanFinding {
        kind: FindingKind::SpillingSort,
        relation,
        node_type: node.node_type.clone(),
        message,
        advice,
    })
}

/// The sort keys as index columns, when every key is a plain column
/// ("o.created_at DESC" gives "created_at DESC").
pub(super) fn sort_index_columns(sort_keys: &[String]) -> Option<String> {
    if sort_keys.is_empty() {
        return None;
    }
    let columns = sort_keys
        .iter()
        .map(|key| sort_key_index_column(key))
        .collect::<Option<Vec<_>>>()?;
    Some(columns.join(", "))
}

pub(super) fn sort_key_index_column(key: &str) -> Option<String> {
    let mut expression = key.trim();
    let mut suffix = String::new();
    for modifier in [" NULLS FIRST", " NULLS LAST"] {
        if let Some(rest) = expression.strip_suffix(modifier) {
            expression = rest;
            suffix = modifier.to_owned();
        }
    }
    for direction in [" DESC", " ASC"] {
        if let Some(rest) = expression.strip_suffix(direction) {
            expression = rest;
            suffix = format!("{direction}{suffix}");
        }
    }
    let column = plan_column(&parse_plan_expression(expression)?)?;
    Some(format!("{}{suffix}", quote_ident_if_needed(&column.name)))
}

/// A Hash whose table did not fit in memory and was split into batches.
pub(super) fn spilling_hash(node: &PlanNode) -> Option<PlanFinding> {
    if node.node_type != "Hash" {
        return None;
    }
    let batches = node.hash_batches.unwrap_or(1.0);
    let planned_batches = node.original_hash_batches.unwrap_or(batches);
    if batches <= 1.0 && planned_batches <= 1.0 {
        return None;
    }
    let relation = sole_relation_beneath(node);
    let hashed = relation
        .as_deref()
        .map(|relation| format!(" of {relation}"))
        .unwrap_or_default();
    let mut message = format!(
        "Hash{hashed} was split into {} batches, spilling all but one to temporary files",
        format_count(batches)
    );
    if let Some(peak_kb) = node.peak_memory_kb {
        message.push_str(&format!(" (peak memory {} per batch)", format_kb(peak_kb)));
    }
    if batches > planned_batches {
        message.push_str(&format!(
            "; the batches grew from the {} planned at run time: the rows hashed were under-estimated",
            format_count(planned_batches)
        ));
    }
    let needed = node
        .peak_memory_kb
        .map(|peak_kb| {
            let total_kb = peak_kb * batches.max(planned_batches);
            format!(
                " so the whole hash table (about {}) fits in one batch, e.g. SET LOCAL work_mem = '{}'",
                format_kb(total_kb),
                suggested_work_mem(total_kb)
            )
        })
        .unwrap_or_default();
    let analyze = relation
        .as_deref()
        .map(|relation| format!(" (ANALYZE {})", quote_relation(relation)))
        .unwrap_or_default();
    let advice = format!(
        "Raise work_mem for this query (a hash table may use work_mem × hash_mem_multiplier){needed}; \
         or hash fewer rows: filter the hashed side earlier, or fix its estimate{analyze} so the planner \
         hashes the smaller side."
    );
    Some(PlanFinding {
        kind: FindingKind::SpillingHash,
        relation,
        node_type: node.node_type.clone(),
        message,
        advice,
    })
}

/// A hash Aggregate that spilled groups to disk (PostgreSQL 13 and later).
pub(super) fn spilling_hash_aggregate(node: &PlanNode) -> Option<PlanFinding> {
    if node.node_type != "Aggregate" || !matches!(node.strategy.as_deref(), Some("Hashed" | "Mixed")) {
        return None;
    }
    let batches = node.hashagg_batches.unwrap_or(0.0);
    let disk_kb = node.disk_usage_kb.unwrap_or(0.0);
    if batches <= 1.0 && disk_kb <= 0.0 {
        return None;
    }
    let relation = sole_relation_beneath(node);
    let over = relation
        .as_deref()
        .map(|relation| format!(" over {relation}"))
        .unwrap_or_default();
    let peak_kb = node.peak_memory_kb.unwrap_or(0.0);
    let message = format!(
        "HashAggregate{over} spilled to disk in {} batches: {} written to temporary files (peak memory {})",
        format_count(batches),
        format_kb(disk_kb),
        format_kb(peak_kb),
    );
    let advice = format!(
        "Raise work_mem for this query (hash aggregates may use work_mem × hash_mem_multiplier) so the \
         groups (about {}) fit in memory, e.g. SET LOCAL work_mem = '{}'; the planner sized the hash table \
         from its group estimate, so check it too (ANALYZE, or CREATE STATISTICS (ndistinct) on the \
         grouped columns).",
        format_kb(disk_kb + peak_kb),
        suggested_work_mem(disk_kb + peak_kb),
    );
    Some(PlanFinding {
        kind: FindingKind::SpillingHashAggregate,
        relation,
        node_type: node.node_type.clone(),
        message,
        advice,
    })
}

/// A Bitmap Heap Scan whose bitmap outgrew work_mem: lossy blocks keep only
/// "some row on this page matches", so every row on them is rechecked.
pub(super) fn lossy_bitmap_scan(node: &PlanNode) -> Option<PlanFinding> {
    if node.node_type != "Bitmap Heap Scan" {
        return None;
    }
    let lossy_blocks = node.lossy_heap_blocks.filter(|blocks| *blocks > 0.0)?;
    let all_blocks = lossy_blocks + node.exact_heap_blocks.unwrap_or(0.0);
    let mut message = format!(
        "{} went lossy on {} of {} heap blocks: its bitmap outgrew work_mem, so every row on those blocks \
         was rechecked",
        describe_node(node),
        format_count(lossy_blocks),
        format_count(all_blocks),
    );
    if let Some(recheck) = &node.recheck_cond {
        message.push_str(&format!(" against {recheck}"));
    }
    if let Some(removed) = node
        .rows_removed_by_index_recheck
        .filter(|removed| *removed > 0.0)
    {
        let loops = node.actual_loops.unwrap_or(1.0);
        message.push_str(&format!(
            " ({} rows removed by the recheck)",
            format_count(removed * loops)
        ));
    }
    let advice = String::from(
        "Raise work_mem for this query so the bitmap stays exact (doubling it is a fair first step: SET \
         LOCAL work_mem), or make the index condition match fewer blocks (a composite index including the \
         filtered columns).",
    );
    Some(PlanFinding {
        kind: FindingKind::LossyBitmapScan,
        relation: node.relation.clone(),
        node_type: node.node_type.clone(),
        message,
        advice,
    })
}

/// How a nested loop reads its inner table for each outer row.
pub(super) struct InnerRescan<'a> {
    /// The scan of the inner table.
    pub(super) scan: &'a PlanNode,
    /// The Materialize over it, when the rows are rescanned from memory.
    pub(super) materialize: Option<&'a PlanNode>,
}

/// A Nested Loop with many outer rows that fully rescans its inner table for
/// each: no index serves the join key.
pub(super) fn large_nested_loop(
    node: &PlanNode,
    analyzed: bool,
    thresholds: &Thresholds,
) -> Option<PlanFinding> {
    if node.node_type != "Nested Loop" {
        return None;
    }
    let (outer, inner) = join_sides(node)?;
    let outer_rows = rows_produced(outer, analyzed)?;
    if outer_rows < thresholds.nested_loop_outer_rows_min {
        return None;
    }
    let rescan = inner_rescan(inner, node.join_filter.is_some())?;
    let relation = rescan.scan.relation.as_deref()?;
    let inner_rows = match rescan.materialize {
        Some(materialize) => rows_per_execution(materialize, analyzed),
        None => rows_read_per_execution(rescan.scan, analyzed),
    };
    // Rescanning a handful of rows per outer row is what a nested loop is
    // good at; only the rows read over all outer rows make it slow.
    if outer_rows * inner_rows < thresholds.seq_scan_rows_min {
        return None;
    }
    let mut message = match (rescan.materialize, analyzed) {
        (Some(_), _) => format!(
            "Nested Loop rescans the {} materialized rows of {} for each of its {} outer rows",
            format_count(inner_rows),
            describe_node(rescan.scan),
            format_count(outer_rows),
        ),
        (None, true) => format!(
            "Nested Loop runs {} for each of its {} outer rows, reading {} rows each time",
            describe_node(rescan.scan),
            format_count(outer_rows),
            format_count(inner_rows),
        ),
        (None, false) => format!(
            "Nested Loop is estimated to run {} (about {} rows) for each of its {} outer rows",
            describe_node(rescan.scan),
            format_count(inner_rows),
            format_count(outer_rows),
        ),
    };
    if let Some(join_filter) = &node.join_filter {
        message.push_str(&format!(", checking join filter {join_filter} on every pair"));
        if let Some(removed) = node.rows_removed_by_join_filter.filter(|removed| *removed > 0.0) {
            let loops = node.actual_loops.unwrap_or(1.0);
            message.push_str(&format!(" ({} pairs discarded)", format_count(removed * loops)));
        }
    }
    let join_condition = node.join_filter.as_deref().or(rescan.scan.filter.as_deref());
    let shape = join_condition.and_then(|condition| filter_shape(&[condition]));
    let belongs_to_inner = |condition: &ColumnCondition| {
        condition
            .qualifier
            .as_deref()
            .is_some_and(|qualifier| names_scan(rescan.scan, qualifier))
    };
    Some(PlanFinding {
        kind: FindingKind::LargeNestedLoop,
        relation: Some(relation.to_owned()),
        node_type: node.node_type.clone(),
        message,
        advice: index_advice(
            relation,
            shape.as_ref(),
            &belongs_to_inner,
            "so each outer row becomes an index lookup instead of a full scan",
        ),
    })
}

/// The inner side of a nested loop when it is read in full for each outer
/// row: a Seq Scan, or a Materialize of a table when the join condition is
/// only checked as a Join Filter.
pub(super) fn inner_rescan(inner: &PlanNode, has_join_filter: bool) -> Option<InnerRescan<'_>> {
    match inner.node_type.as_str() {
        "Seq Scan" => Some(InnerRescan {
            scan: inner,
            materialize: None,
        }),
        "Materialize" => {
            let scan = row_sources(inner).next()?;
            let rescans_table = scan.node_type == "Seq Scan" || (has_join_filter && scan.relation.is_some());
            rescans_table.then_some(InnerRescan {
                scan,
                materialize: Some(inner),
            })
        }
        _ => None,
    }
}

/// Whether `qualifier` (from a condition) names the scan's table or alias.
pub(super) fn names_scan(scan: &PlanNode, qualifier: &str) -> bool {
    scan.alias.as_deref() == Some(qualifier)
        || scan
            .relation
            .as_deref()
            .is_some_and(|relation| relation_ends_with(relation, qualifier))
}

/// Rows a node yields over all its executions: actual with ANALYZE, else
/// the estimate.
pub(super) fn rows_produced(node: &PlanNode, analyzed: bool) -> Option<f64> {
    if analyzed && let (Some(rows), Some(loops)) = (node.actual_rows, node.actual_loops) {
        return Some(rows * loops);
    }
    node.plan_rows
}

/// Rows a node yields per execution.
pub(super) fn rows_per_execution(node: &PlanNode, analyzed: bool) -> f64 {
    let actual = if analyzed { node.actual_rows } else { None };
    actual.or(node.plan_rows).unwrap_or(0.0)
}

/// Rows a scan reads per execution, the ones its filter discards included.
pub(super) fn rows_read_per_execution(node: &PlanNode, analyzed: bool) -> f64 {
    rows_per_execution(node, analyzed) + node.rows_removed_by_filter.unwrap_or(0.0)
}

/// How far a node's actual rows are from the estimate.
pub(super) struct EstimateError {
    pub(super) estimated: f64,
    pub(super) actual: f64,
    /// At least 1: the larger of the two over the smaller.
    pub(super) ratio: f64,
    /// More rows than estimated.
    pub(super) under_estimated: bool,
}

pub(super) fn estimate_error(node: &PlanNode) -> Option<EstimateError> {
    let loops = node.actual_loops.filter(|loops| *loops > 0.0)?;
    let estimated = node.plan_rows? * loops;
    let (lowest, highest) = actual_rows_bounds(node.actual_rows?, loops);
    // The true count is anywhere in the bounds: judge by the one nearest the
    // estimate, so rounding never makes a misestimate.
    let actual = if estimated < lowest {
        lowest
    } else if estimated > highest {
        highest
    } else {
        estimated
    };
    let ratio = actual.max(1.0) / estimated.max(1.0);
    Some(EstimateError {
        estimated,
        actual,
        ratio: if ratio >= 1.0 { ratio } else { 1.0 / ratio },
        under_estimated: ratio > 1.0,
    })
}

/// The range of a node's total actual rows: PostgreSQL 15 prints the
/// per-loop average rounded to a whole row, which hides up to half a row per
/// loop (an index lookup finding a row one time in five prints 0).
pub(super) fn actual_rows_bounds(rows_per_loop: f64, loops: f64) -> (f64, f64) {
    if loops <= 1.0 {
        let total = rows_per_loop * loops;
        return (total, total);
    }
    (
        (rows_per_loop - 0.5).max(0.0) * loops,
        (rows_per_loop + 0.5).max(0.0) * loops,
    )
}

pub(super) fn is_misestimated(error: &EstimateError, thresholds: &Thresholds) -> bool {
    error.ratio >= thresholds.misestimate_factor
        && error.estimated.max(error.actual) >= thresholds.misestimate_rows_min
}

/// A node whose actual rows are off the estimate by the threshold factor,
/// reported where the error starts: a node that merely carries a child's
/// error upwards (a Sort over a misestimated scan) adds nothing.
pub(super) fn misestimate(
    node: &PlanNode,
    context: NodeContext,
    thresholds: &Thresholds,
) -> Option<PlanFinding> {
    let error = estimate_error(node)?;
    if !is_misestimated(&error, thresholds) {
        return None;
    }
    if !error.under_estimated && context.may_stop_early {
        return None;
    }
    let inherited = row_sources(node).any(|child| {
        estimate_error(child).is_some_and(|child_error| {
            is_misestimated(&child_error, thresholds)
                && child_error.under_estimated == error.under_estimated
                && error.ratio / child_error.ratio < thresholds.misestimate_factor
        })
    });
    if inherited {
        return None;
    }
    let direction = if error.under_estimated { "under" } else { "over" };
    let loops = node
        .actual_loops
        .filter(|loops| *loops > 1.0)
        .map(|loops| format!(" over {} loops", format_count(loops)))
        .unwrap_or_default();
    let message = format!(
        "{} was estimated at {} rows and returned {}{loops}: {}× {direction}-estimated",
        describe_node(node),
        format_count(error.estimated),
        format_count(error.actual),
        format_ratio(error.ratio),
    );
    Some(PlanFinding {
        kind: FindingKind::Misestimate,
        relation: node.relation.clone(),
        node_type: node.node_type.clone(),
        message,
        advice: misestimate_advice(node),
    })
}

pub(super) fn misestimate_advice(node: &PlanNode) -> String {
    if let Some(relation) = &node.relation {
        return scan_misestimate_advice(node, relation);
    }
    let relations = relations_beneath(node);
    let analyze = if relations.is_empty() {
        "ANALYZE the tables below it".to_owned()
    } else {
        format!(
            "ANALYZE {};",
            relations
                .iter()
                .map(|r| quote_relation(r))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if node.node_type.contains("Join") || node.node_type == "Nested Loop" {
        let columns = node
            .join_cond
            .as_deref()
            .or(node.join_filter.as_deref())
            .map(|condition| format!(" in {condition}"))
            .unwrap_or_default();
        format!(
            "{analyze} then, if the join's inputs are estimated well, its join columns{columns} are skewed \
             or correlated: raise their statistics target (ALTER TABLE ... ALTER COLUMN ... SET STATISTICS \
             1000) and ANALYZE again."
        )
    } else {
        format!(
            "{analyze} then, if the inputs below are estimated well and this node groups by several \
             columns, CREATE STATISTICS (ndistinct) on them helps the planner count the groups."
        )
    }
}

/// A scan's estimate is off: stale statistics, or conditions on correlated
/// columns that the planner multiplies as if independent.
pub(super) fn scan_misestimate_advice(node: &PlanNode, relation: &str) -> String {
    let conditions: Vec<&str> = [
        node.index_cond.as_deref(),
        node.recheck_cond.as_deref(),
        node.filter.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let targets = match filter_shape(&conditions) {
        Some(FilterShape::Conjunction(conditions)) => distinct_targets(conditions.iter()),
        _ => Vec::new(),
    };
    let table = quote_relation(relation);
    match targets.as_slice() {
        [] => format!(
            "ANALYZE {table}; if the estimate stays off, raise the statistics target of the columns it \
             filters on (ALTER TABLE {table} ALTER COLUMN ... SET STATISTICS 1000) and ANALYZE again."
        ),
        [IndexTarget::Column(column)] => format!(
            "ANALYZE {table}; if the estimate stays off, raise the statistics target of {column}: ALTER TABLE \
             {table} ALTER COLUMN {} SET STATISTICS 1000; ANALYZE {table};",
            quote_ident_if_needed(column)
        ),
        // PostgreSQL keeps no statistics on an expression unless asked to
        // (and takes no statistics kinds for a single one).
        [expression @ IndexTarget::Expression(_)] => format!(
            "ANALYZE {table}; the planner has no statistics on {} unless asked for them: CREATE STATISTICS \
             {} ON {} FROM {table}; ANALYZE {table};",
            expression.label(),
            statistics_name(relation, &targets),
            expression.sql(),
        ),
        _ => format!(
            "ANALYZE {table}; if the estimate stays off, the conditions on {} are correlated and the \
             planner multiplies them as if independent: CREATE STATISTICS {} (dependencies, mcv) ON {} \
             FROM {table}; ANALYZE {table};",
            targets
                .iter()
                .map(IndexTarget::label)
                .collect::<Vec<_>>()
                .join(", "),
            statistics_name(relation, &targets),
            targets
                .iter()
                .map(IndexTarget::sql)
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// A name for extended statistics: `orders_city_zip_stats`, within
/// PostgreSQL's 63-byte identifier limit.
pub(super) fn statistics_name(relation: &str, targets: &[IndexTarget]) -> String {
    let table = relation.rsplit('.').next().unwrap_or(relation);
    let labels: Vec<&str> = targets.iter().map(IndexTarget::label).collect();
    let raw = format!("{table}_{}_stats", labels.join("_"));
    let mut name = String::with_capacity(raw.len());
    for ch in raw.chars() {
        let ch = if ch.is_ascii_alphanumeric() {
            ch.to_ascii_lowercase()
        } else {
            '_'
        };
        if !(ch == '_' && (name.is_empty() || name.ends_with('_'))) {
            name.push(ch);
        }
    }
    if name.starts_with(|ch: char| ch.is_ascii_digit()) {
        name.insert(0, 's');
    }
    // Only ASCII is left, so any byte is a character boundary.
    name.truncate(63);
    name
}
