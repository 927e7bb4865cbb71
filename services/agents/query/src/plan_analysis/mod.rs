//! Analysis of PostgreSQL `EXPLAIN (FORMAT JSON)` plans and of query text,
//! for the query optimization agent. Pure: no IO, no clock.
//!
//! - [`analyze_plan`] (and [`analyze_plan_with_table_rows`]) walk every node
//!   of a PostgreSQL 15 plan, InitPlans and SubPlans included, list the
//!   relations it reads and name what is slow: sequential scans that keep a
//!   small share of a big table, index scans that throw most fetched rows
//!   away, sorts, hashes and hash aggregates that spill to disk, bitmap
//!   scans gone lossy, nested loops that rescan a table for every outer row,
//!   and row estimates far from the actual counts.
//! - [`stale_statistics`] flags tables whose planner statistics are missing
//!   or out of date (numbers from `pg_stat_user_tables`).
//! - [`rewrite_hints`] reads the SQL text, as normalized by
//!   `pg_stat_statements` (`$1` placeholders included), and points at
//!   predicates that no index can serve as written.
//!
//! Every finding and hint carries a message with the numbers it rests on and
//! an advice the agent can act on, mostly a ready `CREATE INDEX`, `ANALYZE`,
//! `CREATE STATISTICS` or `SET LOCAL work_mem`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod conditions;
mod detectors;
mod format;
mod hints;
mod plan;
mod statistics;
mod walk;

#[cfg(test)]
mod tests;

use self::conditions::*;
use self::detectors::*;
use self::format::*;
pub use self::hints::rewrite_hints;
use self::hints::*;
use self::plan::*;
pub use self::statistics::stale_statistics;
use self::walk::*;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a plan or a query text could not be analysed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The JSON is neither the array `EXPLAIN (FORMAT JSON)` returns nor the
    /// object inside it.
    #[error("the EXPLAIN output is {found}, expected the array or object EXPLAIN (FORMAT JSON) returns")]
    NotAnExplain {
        /// What was found instead, e.g. "a string".
        found: String,
    },
    /// The JSON is an empty array.
    #[error("the EXPLAIN output is an empty array")]
    EmptyExplain,
    /// The object has no `"Plan"` key.
    #[error("the plan has no \"Plan\" node")]
    MissingPlan,
    /// A `"Plan"` or an element of `"Plans"` is not an object.
    #[error("a plan node is {found}, expected an object")]
    NodeNotAnObject {
        /// What was found instead.
        found: &'static str,
    },
    /// A plan node has no `"Node Type"`.
    #[error("a plan node has no \"Node Type\"")]
    MissingNodeType,
    /// A field holds a value of the wrong JSON type.
    #[error("\"{field}\" of {owner} is {found}, expected {expected}")]
    WrongType {
        /// The JSON key, e.g. "Plan Rows".
        field: String,
        /// Where it is, e.g. "the Seq Scan node".
        owner: String,
        /// The JSON type expected, e.g. "a number".
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// The plan is nested deeper than any real plan (a guard for the stack).
    #[error("the plan nests more than {max_depth} levels deep")]
    TooDeep {
        /// The deepest nesting accepted.
        max_depth: usize,
    },
    /// The SQL text does not parse as PostgreSQL.
    #[error("not valid SQL: {0}")]
    InvalidSql(String),
    /// The SQL text is empty or holds only comments.
    #[error("the SQL text holds no statement")]
    NoStatement,
    /// The SQL text chains more operators than can be analysed safely.
    #[error("the SQL text chains {found} AND, OR or arithmetic operators, more than the {max} analysed")]
    TooManyOperators {
        /// Operators found.
        found: usize,
        /// The most accepted.
        max: usize,
    },
}

// ---------------------------------------------------------------------------
// Thresholds and results
// ---------------------------------------------------------------------------

/// When a plan shape or a table's statistics are worth a finding.
///
/// The defaults follow what tools like pganalyze and explain.depesz treat as
/// worth a look on an OLTP database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// A scan whose filter discards rows is only flagged when it reads at
    /// least this many rows (the table's rows for a sequential scan, the
    /// fetched rows for an index scan). Default 10,000: below that, reading
    /// everything is about as cheap as an index lookup.
    pub seq_scan_rows_min: f64,
    /// A filter is selective when it keeps at most this share of the rows it
    /// reads. Default 0.05 (5 %): above it a B-tree index rarely beats a
    /// sequential read.
    pub selective_filter_max: f64,
    /// A nested loop whose inner side is a full scan is flagged when its
    /// outer side yields at least this many rows (actual with ANALYZE,
    /// estimated without), each one rescanning the inner side, and the rows
    /// rescanned over all of them reach `seq_scan_rows_min`. Default 1,000.
    pub nested_loop_outer_rows_min: f64,
    /// Actual and estimated rows of a node must differ by at least this
    /// factor to be a misestimate. Default 10.
    pub misestimate_factor: f64,
    /// ... and the larger of the two must be at least this many rows: being
    /// off by 10× on 5 rows changes no plan. Default 1,000.
    pub misestimate_rows_min: f64,
    /// Statistics are stale when the rows modified since the last ANALYZE
    /// reach this share of the live rows. Default 0.2, twice autovacuum's
    /// default `autovacuum_analyze_scale_factor` (0.1): beyond it autovacuum
    /// is not keeping up.
    pub stale_mods_share: f64,
    /// ... and at least this many rows were modified (or, for a table never
    /// analysed, it holds this many). Default 1,000: on smaller tables the
    /// estimates barely matter.
    pub stale_rows_min: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            seq_scan_rows_min: 10_000.0,
            selective_filter_max: 0.05,
            nested_loop_outer_rows_min: 1_000.0,
            misestimate_factor: 10.0,
            misestimate_rows_min: 1_000.0,
            stale_mods_share: 0.2,
            stale_rows_min: 1_000.0,
        }
    }
}

/// What [`analyze_plan`] found in one plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanAnalysis {
    /// The planner's total cost of the whole plan (root `"Total Cost"`; 0
    /// when the plan was produced with `COSTS OFF`).
    pub total_cost: f64,
    /// `"Execution Time"` in milliseconds, present with ANALYZE.
    pub execution_ms: Option<f64>,
    /// `"Planning Time"` in milliseconds, present with ANALYZE or SUMMARY.
    pub planning_ms: Option<f64>,
    /// Whether the plan carries actual row counts (EXPLAIN ANALYZE).
    pub analyzed: bool,
    /// Every node that reads a table, in plan order (depth first, as
    /// PostgreSQL prints it).
    pub scans: Vec<RelationScan>,
    /// What is slow, in plan order.
    pub findings: Vec<PlanFinding>,
}

/// One plan node that reads a table (sequential, index, index-only, bitmap
/// heap, TID, sample or foreign scan).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelationScan {
    /// `schema.table` when the plan names the schema (EXPLAIN VERBOSE), else
    /// the table name.
    pub relation: String,
    /// The alias the query gave the table (PostgreSQL repeats the table name
    /// when there is none).
    pub alias: Option<String>,
    /// PostgreSQL's `"Node Type"`, e.g. "Seq Scan", "Index Scan".
    pub node_type: String,
    /// The index read; for a Bitmap Heap Scan, the indexes of its Bitmap
    /// Index Scans, comma separated.
    pub index_name: Option<String>,
    /// `"Filter"`: the condition checked on every row read.
    pub filter: Option<String>,
    /// `"Index Cond"`; for a Bitmap Heap Scan, its `"Recheck Cond"`.
    pub index_cond: Option<String>,
    /// `"Plan Rows"`: rows the planner expects per execution of the node (0
    /// with `COSTS OFF`).
    pub estimated_rows: f64,
    /// Rows returned over all executions (`"Actual Rows"` per loop ×
    /// `"Actual Loops"`), with ANALYZE.
    pub actual_rows: Option<f64>,
    /// How many times the node ran (`"Actual Loops"`), with ANALYZE.
    pub loops: Option<f64>,
    /// Rows read and discarded by the filter over all executions, with
    /// ANALYZE.
    pub rows_removed_by_filter: Option<f64>,
    /// The planner's total cost of the node (0 with `COSTS OFF`).
    pub total_cost: f64,
}

/// Something slow in a plan, or stale statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanFinding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// The table concerned (`schema.table` when known), if one is.
    pub relation: Option<String>,
    /// The `"Node Type"` of the node concerned; empty for findings about a
    /// table rather than a plan node ([`FindingKind::StaleStatistics`]).
    pub node_type: String,
    /// What was found, with the numbers.
    pub message: String,
    /// What to do about it.
    pub advice: String,
}

/// The kinds of [`PlanFinding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A Seq Scan of a big table whose filter keeps a small share of it.
    SelectiveSeqScan,
    /// An index or bitmap scan whose filter discards most rows it fetched:
    /// the index lacks the filter's columns.
    IndexFilterDiscardsRows,
    /// A sort that spilled to disk.
    SpillingSort,
    /// A hash join's hash table that spilled to disk (more than one batch).
    SpillingHash,
    /// A hash aggregate that spilled to disk.
    SpillingHashAggregate,
    /// A bitmap heap scan whose bitmap outgrew `work_mem` and went lossy.
    LossyBitmapScan,
    /// A nested loop that rescans a table for each of many outer rows.
    LargeNestedLoop,
    /// A node whose actual rows are far from the planner's estimate.
    Misestimate,
    /// A table never analysed, or modified a lot since its last ANALYZE.
    StaleStatistics,
}

/// Statistics freshness of one table, as read from `pg_stat_user_tables`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStats {
    /// `schema.table`.
    pub table: String,
    /// `n_live_tup`.
    pub live_rows: f64,
    /// `n_mod_since_analyze`.
    pub modified_since_analyze: f64,
    /// Whether the table was ever analysed, automatically or manually
    /// (`last_analyze` or `last_autoanalyze` is set).
    pub last_analyzed: bool,
}

/// A predicate in the SQL text that no index can serve as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewriteHint {
    /// What kind of predicate.
    pub kind: HintKind,
    /// The predicate and why it defeats an index.
    pub message: String,
    /// How to rewrite it, or which index serves it as it is.
    pub advice: String,
}

/// The kinds of [`RewriteHint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HintKind {
    /// A function applied to an indexed column (`lower(email) = $1`).
    FunctionOnColumn,
    /// A cast applied to an indexed column (`id::text = $1`).
    CastOnColumn,
    /// Arithmetic on an indexed column (`created_at + interval '1 day' > now()`).
    ArithmeticOnColumn,
    /// `OR` between conditions on different columns (`a = $1 OR b = $2`).
    OrAcrossColumns,
    /// `LIKE`/`ILIKE` with a pattern starting with a wildcard (`'%x'`).
    LeadingWildcardLike,
    /// `NOT IN (subquery)`.
    NotInSubquery,
}

// ---------------------------------------------------------------------------
// Plan analysis: entry points
// ---------------------------------------------------------------------------

/// Analyses the output of `EXPLAIN (FORMAT JSON)` (optionally with ANALYZE,
/// BUFFERS, VERBOSE): the whole array PostgreSQL returns, or the object
/// inside it.
///
/// Without ANALYZE a sequential scan's selectivity cannot be judged (the plan
/// only has the rows kept); [`analyze_plan_with_table_rows`] takes the
/// tables' row counts to judge it.
pub fn analyze_plan(explain: &Value, thresholds: &Thresholds) -> Result<PlanAnalysis, PlanError> {
    analyze_plan_with_table_rows(explain, thresholds, &HashMap::new())
}

/// [`analyze_plan`], knowing how many rows each table holds
/// (`pg_class.reltuples`), keyed `schema.table` or `table`. Only plans
/// without ANALYZE need it: it is how big a table a sequential scan reads.
/// A plan without VERBOSE names tables without their schema; the lookup then
/// tries `table` and `public.table`.
pub fn analyze_plan_with_table_rows(
    explain: &Value,
    thresholds: &Thresholds,
    table_rows: &HashMap<String, f64>,
) -> Result<PlanAnalysis, PlanError> {
    let statement = explain_statement(explain)?;
    let top = Fields {
        object: statement,
        owner: "the EXPLAIN output".to_owned(),
    };
    let root_value = top.get("Plan").ok_or(PlanError::MissingPlan)?;
    let root = parse_node(root_value, 0)?;
    let analyzed = root.actual_rows.is_some();
    let mut walk = PlanWalk {
        thresholds,
        table_rows,
        analyzed,
        scans: Vec::new(),
        findings: Vec::new(),
    };
    walk.visit(&root, NodeContext::default());
    Ok(PlanAnalysis {
        total_cost: root.total_cost.unwrap_or(0.0),
        execution_ms: top.number("Execution Time")?,
        planning_ms: top.number("Planning Time")?,
        analyzed,
        scans: walk.scans,
        findings: walk.findings,
    })
}

/// The object holding `"Plan"`: EXPLAIN returns a one-element array of it.
fn explain_statement(explain: &Value) -> Result<&Map<String, Value>, PlanError> {
    match explain {
        Value::Object(object) => Ok(object),
        Value::Array(items) => match items.first() {
            None => Err(PlanError::EmptyExplain),
            Some(Value::Object(object)) => Ok(object),
            Some(other) => Err(PlanError::NotAnExplain {
                found: format!("an array of {}", json_kind(other)),
            }),
        },
        other => Err(PlanError::NotAnExplain {
            found: json_kind(other).to_owned(),
        }),
    }
}
