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

use agents::sql::quote_ident_if_needed;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget,
    JoinConstraint, JoinOperator, ObjectName, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    TableWithJoins, UnaryOperator, UpdateTableFromKind,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::candidates::folded;

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

// ---------------------------------------------------------------------------
// Plan analysis: reading the JSON into nodes
// ---------------------------------------------------------------------------

/// Real plans nest a few dozen levels (and serde_json's default recursion
/// limit stops parsing EXPLAIN text beyond about 60); the limit keeps the
/// recursion far from the stack's end on a `Value` built otherwise.
const MAX_PLAN_DEPTH: usize = 200;

/// The fields of one plan node the detectors use, typed. Counts are as
/// PostgreSQL prints them: per loop.
#[derive(Debug, Default)]
struct PlanNode {
    node_type: String,
    parent_relationship: Option<String>,
    relation: Option<String>,
    alias: Option<String>,
    index_name: Option<String>,
    filter: Option<String>,
    index_cond: Option<String>,
    recheck_cond: Option<String>,
    join_filter: Option<String>,
    /// `"Hash Cond"` or `"Merge Cond"`.
    join_cond: Option<String>,
    join_type: Option<String>,
    strategy: Option<String>,
    parallel_aware: bool,
    workers_planned: Option<f64>,
    total_cost: Option<f64>,
    plan_rows: Option<f64>,
    actual_rows: Option<f64>,
    actual_loops: Option<f64>,
    rows_removed_by_filter: Option<f64>,
    rows_removed_by_join_filter: Option<f64>,
    rows_removed_by_index_recheck: Option<f64>,
    sort_keys: Vec<String>,
    sort_method: Option<String>,
    /// Set when the sort spilled: the most disk any process used, in kB.
    sort_disk_kb: Option<f64>,
    hash_batches: Option<f64>,
    original_hash_batches: Option<f64>,
    peak_memory_kb: Option<f64>,
    hashagg_batches: Option<f64>,
    disk_usage_kb: Option<f64>,
    exact_heap_blocks: Option<f64>,
    lossy_heap_blocks: Option<f64>,
    children: Vec<PlanNode>,
}

/// Typed access to one JSON object of the plan; `owner` names it in errors.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    owner: String,
}

impl<'a> Fields<'a> {
    /// The value of `field`; JSON `null` counts as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.object.get(field).filter(|value| !value.is_null())
    }

    fn wrong_type(&self, field: &str, expected: &'static str, found: &Value) -> PlanError {
        PlanError::WrongType {
            field: field.to_owned(),
            owner: self.owner.clone(),
            expected,
            found: json_kind(found),
        }
    }

    fn number(&self, field: &str) -> Result<Option<f64>, PlanError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(number)) => Ok(number.as_f64()),
            Some(other) => Err(self.wrong_type(field, "a number", other)),
        }
    }

    fn text(&self, field: &str) -> Result<Option<String>, PlanError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.wrong_type(field, "a string", other)),
        }
    }

    fn flag(&self, field: &str) -> Result<bool, PlanError> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(self.wrong_type(field, "a boolean", other)),
        }
    }

    /// A list of strings such as `"Sort Key"`.
    fn texts(&self, field: &str) -> Result<Vec<String>, PlanError> {
        self.array(field)?
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(self.wrong_type(field, "an array of strings", other)),
            })
            .collect()
    }

    fn array(&self, field: &str) -> Result<&'a [Value], PlanError> {
        match self.get(field) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.wrong_type(field, "an array", other)),
        }
    }

    fn object(&self, field: &str) -> Result<Option<Fields<'a>>, PlanError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(object)) => Ok(Some(Fields {
                object,
                owner: format!("\"{field}\" of {}", self.owner),
            })),
            Some(other) => Err(self.wrong_type(field, "an object", other)),
        }
    }

    /// A list of objects such as `"Workers"`.
    fn objects(&self, field: &str) -> Result<Vec<Fields<'a>>, PlanError> {
        self.array(field)?
            .iter()
            .map(|item| match item {
                Value::Object(object) => Ok(Fields {
                    object,
                    owner: format!("an element of \"{field}\" of {}", self.owner),
                }),
                other => Err(self.wrong_type(field, "an array of objects", other)),
            })
            .collect()
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_node(value: &Value, depth: usize) -> Result<Box<PlanNode>, PlanError> {
    if depth > MAX_PLAN_DEPTH {
        return Err(PlanError::TooDeep {
            max_depth: MAX_PLAN_DEPTH,
        });
    }
    // The fields are read in a function of their own, and the node is
    // boxed, so that the recursion's frames stay small even unoptimized; a
    // plain loop rather than iterator adapters for the same reason.
    let (mut node, children) = read_node(value)?;
    for child in children {
        node.children.push(*parse_node(child, depth + 1)?);
    }
    Ok(node)
}

/// One node's own fields, and the JSON of its children.
fn read_node(value: &Value) -> Result<(Box<PlanNode>, &[Value]), PlanError> {
    let Value::Object(object) = value else {
        return Err(PlanError::NodeNotAnObject {
            found: json_kind(value),
        });
    };
    let node_type = match object.get("Node Type") {
        None | Some(Value::Null) => return Err(PlanError::MissingNodeType),
        Some(Value::String(node_type)) => node_type.clone(),
        Some(other) => {
            return Err(PlanError::WrongType {
                field: "Node Type".to_owned(),
                owner: "a plan node".to_owned(),
                expected: "a string",
                found: json_kind(other),
            });
        }
    };
    let fields = Fields {
        object,
        owner: format!("the {node_type} node"),
    };
    let node = Box::new(PlanNode {
        parent_relationship: fields.text("Parent Relationship")?,
        relation: qualified_relation(&fields)?,
        alias: fields.text("Alias")?,
        index_name: fields.text("Index Name")?,
        filter: fields.text("Filter")?,
        index_cond: fields.text("Index Cond")?,
        recheck_cond: fields.text("Recheck Cond")?,
        join_filter: fields.text("Join Filter")?,
        join_cond: fields.text("Hash Cond")?.or(fields.text("Merge Cond")?),
        join_type: fields.text("Join Type")?,
        strategy: fields.text("Strategy")?,
        parallel_aware: fields.flag("Parallel Aware")?,
        workers_planned: fields.number("Workers Planned")?,
        total_cost: fields.number("Total Cost")?,
        plan_rows: fields.number("Plan Rows")?,
        actual_rows: fields.number("Actual Rows")?,
        actual_loops: fields.number("Actual Loops")?,
        rows_removed_by_filter: fields.number("Rows Removed by Filter")?,
        rows_removed_by_join_filter: fields.number("Rows Removed by Join Filter")?,
        rows_removed_by_index_recheck: fields.number("Rows Removed by Index Recheck")?,
        sort_keys: fields.texts("Sort Key")?,
        sort_method: sort_method(&fields)?,
        sort_disk_kb: sort_disk_kb(&fields)?,
        hash_batches: fields.number("Hash Batches")?,
        original_hash_batches: fields.number("Original Hash Batches")?,
        peak_memory_kb: fields.number("Peak Memory Usage")?,
        hashagg_batches: fields.number("HashAgg Batches")?,
        disk_usage_kb: fields.number("Disk Usage")?,
        exact_heap_blocks: fields.number("Exact Heap Blocks")?,
        lossy_heap_blocks: fields.number("Lossy Heap Blocks")?,
        node_type,
        children: Vec::new(),
    });
    Ok((node, fields.array("Plans")?))
}

/// `schema.table` when VERBOSE printed the schema, else `table`.
fn qualified_relation(fields: &Fields<'_>) -> Result<Option<String>, PlanError> {
    let Some(table) = fields.text("Relation Name")? else {
        return Ok(None);
    };
    Ok(Some(match fields.text("Schema")? {
        Some(schema) => format!("{schema}.{table}"),
        None => table,
    }))
}

/// The sort method of the leader, else of the first worker that reports one.
fn sort_method(fields: &Fields<'_>) -> Result<Option<String>, PlanError> {
    if let Some(method) = fields.text("Sort Method")? {
        return Ok(Some(method));
    }
    for worker in fields.objects("Workers")? {
        if let Some(method) = worker.text("Sort Method")? {
            return Ok(Some(method));
        }
    }
    Ok(None)
}

/// The most disk (kB) a sort used in any process, when it spilled: parallel
/// workers report their own sorts under `"Workers"`, and an Incremental Sort
/// reports per group kind (`"Full-sort Groups"`, `"Pre-sorted Groups"`).
fn sort_disk_kb(fields: &Fields<'_>) -> Result<Option<f64>, PlanError> {
    let mut most_kb = sort_disk_kb_of_process(fields)?;
    for worker in fields.objects("Workers")? {
        most_kb = larger(most_kb, sort_disk_kb_of_process(&worker)?);
    }
    Ok(most_kb)
}

fn sort_disk_kb_of_process(fields: &Fields<'_>) -> Result<Option<f64>, PlanError> {
    let mut most_kb = None;
    if fields.text("Sort Space Type")?.as_deref() == Some("Disk") {
        most_kb = Some(fields.number("Sort Space Used")?.unwrap_or(0.0));
    }
    for group_kind in ["Full-sort Groups", "Pre-sorted Groups"] {
        let Some(groups) = fields.object(group_kind)? else {
            continue;
        };
        if let Some(disk) = groups.object("Sort Space Disk")? {
            most_kb = larger(most_kb, Some(disk.number("Peak Sort Space Used")?.unwrap_or(0.0)));
        }
    }
    Ok(most_kb)
}

fn larger(first: Option<f64>, second: Option<f64>) -> Option<f64> {
    match (first, second) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

// ---------------------------------------------------------------------------
// Plan analysis: walking the nodes
// ---------------------------------------------------------------------------

struct PlanWalk<'a> {
    thresholds: &'a Thresholds,
    table_rows: &'a HashMap<String, f64>,
    analyzed: bool,
    scans: Vec<RelationScan>,
    findings: Vec<PlanFinding>,
}

/// What a node's ancestors tell about it.
#[derive(Debug, Clone, Copy, Default)]
struct NodeContext {
    /// An ancestor may stop reading this node before it is exhausted (a
    /// Limit, a merge join, the inner side of a semi or anti join, an EXISTS
    /// subplan), so fewer actual rows than estimated prove nothing.
    may_stop_early: bool,
    /// Workers planned by the Gather the node runs under, if any.
    parallel_workers: Option<f64>,
}

impl PlanWalk<'_> {
    fn visit(&mut self, node: &PlanNode, context: NodeContext) {
        self.inspect(node, context);
        for (position, child) in node.children.iter().enumerate() {
            self.visit(child, child_context(node, position, child, context));
        }
    }

    /// The node's own scan and findings, in a function of its own so that
    /// its large frame is gone before the recursion into the children.
    fn inspect(&mut self, node: &PlanNode, context: NodeContext) {
        if let Some(scan) = relation_scan(node) {
            self.scans.push(scan);
        }
        let findings = [
            selective_seq_scan(node, context, self.thresholds, self.table_rows),
            index_filter_discards_rows(node, self.thresholds),
            spilling_sort(node),
            spilling_hash(node),
            spilling_hash_aggregate(node),
            lossy_bitmap_scan(node),
            large_nested_loop(node, self.analyzed, self.thresholds),
            misestimate(node, context, self.thresholds),
        ];
        self.findings.extend(findings.into_iter().flatten());
    }
}

fn child_context(parent: &PlanNode, position: usize, child: &PlanNode, context: NodeContext) -> NodeContext {
    let may_stop_early = if is_subplan(child) {
        // An EXISTS or ANY subplan stops at its first match; whether this one
        // does is not in the plan, so assume it may.
        true
    } else if consumes_all_input(parent) {
        false
    } else {
        context.may_stop_early || stops_reading_child_early(parent, position, child)
    };
    let parallel_workers = if matches!(parent.node_type.as_str(), "Gather" | "Gather Merge") {
        parent.workers_planned
    } else {
        context.parallel_workers
    };
    NodeContext {
        may_stop_early,
        parallel_workers,
    }
}

fn is_subplan(node: &PlanNode) -> bool {
    matches!(node.parent_relationship.as_deref(), Some("InitPlan" | "SubPlan"))
}

/// Nodes that read their whole input before returning a row: below them a
/// Limit above no longer cuts anything short.
fn consumes_all_input(node: &PlanNode) -> bool {
    match node.node_type.as_str() {
        "Sort" | "Hash" => true,
        "Aggregate" => matches!(node.strategy.as_deref(), Some("Hashed" | "Plain")),
        _ => false,
    }
}

fn stops_reading_child_early(parent: &PlanNode, position: usize, child: &PlanNode) -> bool {
    match parent.node_type.as_str() {
        "Limit" | "Merge Join" => true,
        "Nested Loop" => {
            matches!(parent.join_type.as_deref(), Some("Semi" | "Anti")) && is_inner_side(position, child)
        }
        _ => false,
    }
}

fn is_inner_side(position: usize, child: &PlanNode) -> bool {
    match child.parent_relationship.as_deref() {
        Some(relationship) => relationship == "Inner",
        None => position == 1,
    }
}

/// The children that feed the node's rows (not its InitPlans and SubPlans).
fn row_sources(node: &PlanNode) -> impl Iterator<Item = &PlanNode> {
    node.children.iter().filter(|child| !is_subplan(child))
}

/// The outer and inner side of a join node.
fn join_sides(node: &PlanNode) -> Option<(&PlanNode, &PlanNode)> {
    let sources: Vec<&PlanNode> = row_sources(node).collect();
    let outer = sources
        .iter()
        .find(|child| child.parent_relationship.as_deref() == Some("Outer"))
        .or_else(|| sources.first())?;
    let inner = sources
        .iter()
        .find(|child| child.parent_relationship.as_deref() == Some("Inner"))
        .or_else(|| sources.get(1))?;
    Some((outer, inner))
}

/// The tables read below a node (InitPlans and SubPlans excluded), in plan
/// order, each once.
fn relations_beneath(node: &PlanNode) -> Vec<String> {
    let mut relations = Vec::new();
    collect_relations(node, &mut relations);
    relations
}

fn collect_relations(node: &PlanNode, relations: &mut Vec<String>) {
    if let Some(relation) = &node.relation
        && node.node_type != "ModifyTable"
        && !relations.contains(relation)
    {
        relations.push(relation.clone());
    }
    for child in row_sources(node) {
        collect_relations(child, relations);
    }
}

/// The one table a node's rows come from, when there is exactly one.
fn sole_relation_beneath(node: &PlanNode) -> Option<String> {
    let mut relations = relations_beneath(node);
    if relations.len() == 1 {
        relations.pop()
    } else {
        None
    }
}

fn relation_scan(node: &PlanNode) -> Option<RelationScan> {
    let relation = node.relation.clone()?;
    if node.node_type == "ModifyTable" {
        return None;
    }
    Some(RelationScan {
        relation,
        alias: node.alias.clone(),
        node_type: node.node_type.clone(),
        index_name: node.index_name.clone().or_else(|| bitmap_index_names(node)),
        filter: node.filter.clone(),
        index_cond: node.index_cond.clone().or_else(|| node.recheck_cond.clone()),
        estimated_rows: node.plan_rows.unwrap_or(0.0),
        actual_rows: over_all_loops(node.actual_rows, node.actual_loops),
        loops: node.actual_loops,
        rows_removed_by_filter: over_all_loops(node.rows_removed_by_filter, node.actual_loops),
        total_cost: node.total_cost.unwrap_or(0.0),
    })
}

/// A per-loop count (as PostgreSQL prints them) over all loops.
fn over_all_loops(per_loop: Option<f64>, loops: Option<f64>) -> Option<f64> {
    Some(per_loop? * loops.unwrap_or(1.0))
}

/// The indexes a Bitmap Heap Scan reads through its Bitmap Index Scans
/// (several below a BitmapAnd or BitmapOr).
fn bitmap_index_names(node: &PlanNode) -> Option<String> {
    if node.node_type != "Bitmap Heap Scan" {
        return None;
    }
    let mut names = Vec::new();
    collect_bitmap_index_names(node, &mut names);
    (!names.is_empty()).then(|| names.join(", "))
}

fn collect_bitmap_index_names(node: &PlanNode, names: &mut Vec<String>) {
    for child in row_sources(node) {
        if child.node_type == "Bitmap Index Scan"
            && let Some(name) = &child.index_name
        {
            names.push(name.clone());
        }
        if matches!(child.node_type.as_str(), "BitmapAnd" | "BitmapOr") {
            collect_bitmap_index_names(child, names);
        }
    }
}

/// "Seq Scan on orders", "Index Scan using orders_pkey on orders", "Hash Join".
fn describe_node(node: &PlanNode) -> String {
    let mut text = node.node_type.clone();
    if let Some(index) = &node.index_name {
        text.push_str(&format!(" using {index}"));
    }
    if let Some(relation) = &node.relation {
        text.push_str(&format!(" on {relation}"));
        if let Some(alias) = node
            .alias
            .as_deref()
            .filter(|alias| !relation_ends_with(relation, alias))
        {
            text.push_str(&format!(" {alias}"));
        }
    }
    text
}

fn relation_ends_with(relation: &str, name: &str) -> bool {
    relation == name || relation.ends_with(&format!(".{name}"))
}

// ---------------------------------------------------------------------------
// Detectors
// ---------------------------------------------------------------------------

/// How many rows a filtering scan read and kept.
struct FilterReading {
    rows_read: f64,
    rows_kept: f64,
    /// Counted by ANALYZE rather than estimated.
    measured: bool,
}

/// A Seq Scan whose filter keeps a small share of a big table.
fn selective_seq_scan(
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
fn seq_scan_reading(
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
fn lookup_table_rows(table_rows: &HashMap<String, f64>, relation: &str) -> Option<f64> {
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
fn parallel_divisor(workers: f64) -> f64 {
    let leader_contribution = 1.0 - 0.3 * workers;
    if leader_contribution > 0.0 {
        workers + leader_contribution
    } else {
        workers.max(1.0)
    }
}

/// An index or bitmap heap scan whose filter discards most of the rows the
/// index led it to: the index lacks the filter's columns.
fn index_filter_discards_rows(node: &PlanNode, thresholds: &Thresholds) -> Option<PlanFinding> {
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
fn spilling_sort(node: &PlanNode) -> Option<PlanFinding> {
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
fn sort_index_columns(sort_keys: &[String]) -> Option<String> {
    if sort_keys.is_empty() {
        return None;
    }
    let columns = sort_keys
        .iter()
        .map(|key| sort_key_index_column(key))
        .collect::<Option<Vec<_>>>()?;
    Some(columns.join(", "))
}

fn sort_key_index_column(key: &str) -> Option<String> {
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
fn spilling_hash(node: &PlanNode) -> Option<PlanFinding> {
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
fn spilling_hash_aggregate(node: &PlanNode) -> Option<PlanFinding> {
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
fn lossy_bitmap_scan(node: &PlanNode) -> Option<PlanFinding> {
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
struct InnerRescan<'a> {
    /// The scan of the inner table.
    scan: &'a PlanNode,
    /// The Materialize over it, when the rows are rescanned from memory.
    materialize: Option<&'a PlanNode>,
}

/// A Nested Loop with many outer rows that fully rescans its inner table for
/// each: no index serves the join key.
fn large_nested_loop(node: &PlanNode, analyzed: bool, thresholds: &Thresholds) -> Option<PlanFinding> {
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
fn inner_rescan(inner: &PlanNode, has_join_filter: bool) -> Option<InnerRescan<'_>> {
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
fn names_scan(scan: &PlanNode, qualifier: &str) -> bool {
    scan.alias.as_deref() == Some(qualifier)
        || scan
            .relation
            .as_deref()
            .is_some_and(|relation| relation_ends_with(relation, qualifier))
}

/// Rows a node yields over all its executions: actual with ANALYZE, else
/// the estimate.
fn rows_produced(node: &PlanNode, analyzed: bool) -> Option<f64> {
    if analyzed && let (Some(rows), Some(loops)) = (node.actual_rows, node.actual_loops) {
        return Some(rows * loops);
    }
    node.plan_rows
}

/// Rows a node yields per execution.
fn rows_per_execution(node: &PlanNode, analyzed: bool) -> f64 {
    let actual = if analyzed { node.actual_rows } else { None };
    actual.or(node.plan_rows).unwrap_or(0.0)
}

/// Rows a scan reads per execution, the ones its filter discards included.
fn rows_read_per_execution(node: &PlanNode, analyzed: bool) -> f64 {
    rows_per_execution(node, analyzed) + node.rows_removed_by_filter.unwrap_or(0.0)
}

/// How far a node's actual rows are from the estimate.
struct EstimateError {
    estimated: f64,
    actual: f64,
    /// At least 1: the larger of the two over the smaller.
    ratio: f64,
    /// More rows than estimated.
    under_estimated: bool,
}

fn estimate_error(node: &PlanNode) -> Option<EstimateError> {
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
fn actual_rows_bounds(rows_per_loop: f64, loops: f64) -> (f64, f64) {
    if loops <= 1.0 {
        let total = rows_per_loop * loops;
        return (total, total);
    }
    (
        (rows_per_loop - 0.5).max(0.0) * loops,
        (rows_per_loop + 0.5).max(0.0) * loops,
    )
}

fn is_misestimated(error: &EstimateError, thresholds: &Thresholds) -> bool {
    error.ratio >= thresholds.misestimate_factor
        && error.estimated.max(error.actual) >= thresholds.misestimate_rows_min
}

/// A node whose actual rows are off the estimate by the threshold factor,
/// reported where the error starts: a node that merely carries a child's
/// error upwards (a Sort over a misestimated scan) adds nothing.
fn misestimate(node: &PlanNode, context: NodeContext, thresholds: &Thresholds) -> Option<PlanFinding> {
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

fn misestimate_advice(node: &PlanNode) -> String {
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
fn scan_misestimate_advice(node: &PlanNode, relation: &str) -> String {
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
fn statistics_name(relation: &str, targets: &[IndexTarget]) -> String {
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

// ---------------------------------------------------------------------------
// Conditions printed in plans ("Filter", "Index Cond", "Join Filter")
// ---------------------------------------------------------------------------

/// A column, or an expression over one, that a plan condition compares
/// with something.
#[derive(Debug, Clone, PartialEq)]
struct ColumnCondition {
    /// The table or alias the plan qualified the column with, if any.
    qualifier: Option<String>,
    target: IndexTarget,
    /// `=`, `IN`, `= ANY`, `IS NULL`, rather than a range.
    equality: bool,
}

/// What an index (or extended statistics) would be built on.
#[derive(Debug, Clone, PartialEq)]
enum IndexTarget {
    /// A column, by name.
    Column(String),
    /// An expression over a column, as SQL with the column unqualified
    /// (`lower(email)`).
    Expression(String),
}

impl IndexTarget {
    /// As written in messages.
    fn label(&self) -> &str {
        match self {
            Self::Column(text) | Self::Expression(text) => text,
        }
    }

    /// As written in CREATE INDEX and CREATE STATISTICS.
    fn sql(&self) -> String {
        match self {
            Self::Column(name) => quote_ident_if_needed(name),
            Self::Expression(expression) => format!("({expression})"),
        }
    }
}

/// The columns of a plan condition, by how an index could use them.
#[derive(Debug, Clone, PartialEq)]
enum FilterShape {
    /// Conditions all of which must hold: one composite index serves them.
    Conjunction(Vec<ColumnCondition>),
    /// Alternatives: an index per column, combined by a BitmapOr.
    Disjunction(Vec<ColumnCondition>),
}

/// Parses plan conditions (PostgreSQL's own deparsed SQL) and sorts their
/// columns; `None` when none parses (e.g. `(NOT (hashed SubPlan 1))`).
fn filter_shape(conditions: &[&str]) -> Option<FilterShape> {
    let mut conjunction = Vec::new();
    let mut parsed_any = false;
    for condition in conditions {
        let Some(expression) = parse_plan_expression(condition) else {
            continue;
        };
        parsed_any = true;
        let disjuncts = disjuncts(&expression);
        if disjuncts.len() > 1 {
            if conditions.len() == 1 {
                let alternatives = disjuncts.iter().flat_map(|d| conjunct_conditions(d)).collect();
                return Some(FilterShape::Disjunction(alternatives));
            }
            continue;
        }
        conjunction.extend(conjunct_conditions(&expression));
    }
    parsed_any.then_some(FilterShape::Conjunction(conjunction))
}

/// A plan condition as an expression; `None` when it does not parse, or
/// chains too many operators to walk safely (see [`check_operator_count`]).
fn parse_plan_expression(text: &str) -> Option<Expr> {
    if operator_count(text).ok()? > MAX_OPERATORS {
        return None;
    }
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .ok()?
        .parse_expr()
        .ok()
}

fn conjunct_conditions(expression: &Expr) -> Vec<ColumnCondition> {
    conjuncts(expression)
        .into_iter()
        .flat_map(column_conditions)
        .collect()
}

/// The parts of an AND chain (parentheses looked through).
fn conjuncts(expression: &Expr) -> Vec<&Expr> {
    match strip_parentheses(expression) {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut parts = conjuncts(left);
            parts.extend(conjuncts(right));
            parts
        }
        other => vec![other],
    }
}

/// The parts of an OR chain (parentheses looked through).
fn disjuncts(expression: &Expr) -> Vec<&Expr> {
    match strip_parentheses(expression) {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            let mut parts = disjuncts(left);
            parts.extend(disjuncts(right));
            parts
        }
        other => vec![other],
    }
}

fn strip_parentheses(expression: &Expr) -> &Expr {
    match expression {
        Expr::Nested(inner) => strip_parentheses(inner),
        other => other,
    }
}

/// The columns (or expressions over one) one condition compares, and
/// whether as equality or range.
fn column_conditions(condition: &Expr) -> Vec<ColumnCondition> {
    let (sides, equality): (Vec<&Expr>, bool) = match strip_parentheses(condition) {
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Eq => (vec![left, right], true),
            BinaryOperator::Lt | BinaryOperator::LtEq | BinaryOperator::Gt | BinaryOperator::GtEq => {
                (vec![left, right], false)
            }
            _ => return Vec::new(),
        },
        Expr::AnyOp {
            left,
            compare_op: BinaryOperator::Eq,
            ..
        } => (vec![left], true),
        Expr::In {
            expr, negated: false, ..
        } => (vec![expr], true),
        Expr::IsNull(expr) => (vec![expr], true),
        Expr::Between {
            expr, negated: false, ..
        } => (vec![expr], false),
        _ => return Vec::new(),
    };
    sides
        .into_iter()
        .filter_map(plan_index_target)
        .map(|(qualifier, target)| ColumnCondition {
            qualifier,
            target,
            equality,
        })
        .collect()
}

/// What an index on one side of a plan condition would be built on: the
/// column, or the expression when the side computes from a single column.
fn plan_index_target(side: &Expr) -> Option<(Option<String>, IndexTarget)> {
    if let Some(column) = plan_column(side) {
        return Some((column.qualifier, IndexTarget::Column(column.name)));
    }
    let columns = columns_in(side);
    let first = columns.first()?;
    if columns.iter().any(|column| column != first) {
        return None;
    }
    let expression = without_qualifiers(strip_parentheses(side)).to_string();
    Some((first.qualifier.clone(), IndexTarget::Expression(expression)))
}

/// A column in a plan condition; PostgreSQL's own casts (`(city)::text` for
/// a varchar) are looked through, they do not stop an index on the column.
fn plan_column(expression: &Expr) -> Option<ColumnRef> {
    match expression {
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => plan_column(inner),
        other => column_ref(other),
    }
}

/// What an index serving the conditions is built on, in order: equality
/// targets first, then one range target (a B-tree uses no column after a
/// range).
fn ordered_index_targets(conditions: &[&ColumnCondition]) -> Vec<IndexTarget> {
    let mut targets = distinct_targets(conditions.iter().copied().filter(|condition| condition.equality));
    if let Some(range) = conditions
        .iter()
        .find(|condition| !condition.equality && !targets.contains(&condition.target))
    {
        targets.push(range.target.clone());
    }
    targets
}

fn distinct_targets<'a>(conditions: impl Iterator<Item = &'a ColumnCondition>) -> Vec<IndexTarget> {
    let mut targets: Vec<IndexTarget> = Vec::new();
    for condition in conditions {
        if !targets.contains(&condition.target) {
            targets.push(condition.target.clone());
        }
    }
    targets
}

/// The index to create on `relation` for the conditions `accept` keeps.
fn index_advice(
    relation: &str,
    shape: Option<&FilterShape>,
    accept: &dyn Fn(&ColumnCondition) -> bool,
    purpose: &str,
) -> String {
    let table = quote_relation(relation);
    match shape {
        Some(FilterShape::Conjunction(conditions)) => {
            let accepted: Vec<&ColumnCondition> = conditions.iter().filter(|c| accept(c)).collect();
            let targets = ordered_index_targets(&accepted);
            if targets.is_empty() {
                return generic_index_advice(&table, purpose);
            }
            let labels = targets
                .iter()
                .map(IndexTarget::label)
                .collect::<Vec<_>>()
                .join(", ");
            let list = targets
                .iter()
                .map(IndexTarget::sql)
                .collect::<Vec<_>>()
                .join(", ");
            let order_note = if targets.len() > 1 && accepted.iter().any(|c| !c.equality) {
                " (equality conditions first, then the range)"
            } else {
                ""
            };
            format!(
                "Create an index on {table} ({labels}){order_note} {purpose}: CREATE INDEX CONCURRENTLY ON \
                 {table} ({list});"
            )
        }
        Some(FilterShape::Disjunction(conditions)) => {
            let targets = distinct_targets(conditions.iter().filter(|c| accept(c)));
            if targets.is_empty() {
                return generic_index_advice(&table, purpose);
            }
            let statements: Vec<String> = targets
                .iter()
                .map(|target| format!("CREATE INDEX CONCURRENTLY ON {table} ({});", target.sql()))
                .collect();
            format!(
                "The condition is an OR across {}: create one index per column so PostgreSQL can combine \
                 them with a BitmapOr: {}",
                targets
                    .iter()
                    .map(IndexTarget::label)
                    .collect::<Vec<_>>()
                    .join(", "),
                statements.join(" ")
            )
        }
        None => generic_index_advice(&table, purpose),
    }
}

fn generic_index_advice(table: &str, purpose: &str) -> String {
    format!("Create an index on {table} covering the columns of the condition {purpose}.")
}

// ---------------------------------------------------------------------------
// Stale statistics
// ---------------------------------------------------------------------------

/// Tables whose statistics mislead the planner: never analysed, or modified
/// since the last ANALYZE by at least `stale_mods_share` of their live rows
/// (and at least `stale_rows_min` rows).
pub fn stale_statistics(tables: &[TableStats], thresholds: &Thresholds) -> Vec<PlanFinding> {
    tables
        .iter()
        .filter_map(|table| stale_statistics_finding(table, thresholds))
        .collect()
}

fn stale_statistics_finding(table: &TableStats, thresholds: &Thresholds) -> Option<PlanFinding> {
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

// ---------------------------------------------------------------------------
// Rewrite hints from the SQL text
// ---------------------------------------------------------------------------

/// Hints for predicates in `sql` (WHERE and JOIN ... ON of every query,
/// subquery, CTE, UPDATE and DELETE) that no index can serve as written.
///
/// `indexed` tells whether a column is the (leading) column of an index; it
/// receives `table.column` (or `schema.table.column`, as the query names the
/// table) when the table is known from the FROM clause, aliases resolved,
/// else the bare `column`. Functions, casts and arithmetic on a column are
/// only reported on indexed columns, where they defeat an index; OR across
/// columns, leading-wildcard LIKE and NOT IN are always reported.
pub fn rewrite_hints(sql: &str, indexed: &dyn Fn(&str) -> bool) -> Result<Vec<RewriteHint>, PlanError> {
    check_operator_count(sql)?;
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(invalid_sql)?;
    if statements.is_empty() {
        return Err(PlanError::NoStatement);
    }
    let mut finder = HintFinder {
        indexed,
        hints: Vec::new(),
    };
    for statement in &statements {
        finder.statement(statement);
    }
    Ok(finder.hints)
}

/// At most this many AND, OR and arithmetic operators (and `*`, which the
/// tokens do not tell from a multiplication) in a SQL text or plan
/// condition: far more than hand-written predicates chain.
const MAX_OPERATORS: usize = 128;

/// A chain of `a OR b OR c ...` parses into an expression as deep as it is
/// long, and sqlparser (like the walk here) recurses over it to print, walk
/// and drop it: an overlong chain would overflow the stack. Counted on the
/// tokens, which need no recursion.
fn check_operator_count(sql: &str) -> Result<(), PlanError> {
    let found = operator_count(sql).map_err(PlanError::InvalidSql)?;
    if found > MAX_OPERATORS {
        return Err(PlanError::TooManyOperators {
            found,
            max: MAX_OPERATORS,
        });
    }
    Ok(())
}

fn operator_count(sql: &str) -> Result<usize, String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|error| error.to_string())?;
    Ok(tokens
        .iter()
        .filter(|token| match token {
            Token::Word(word) => matches!(word.keyword, Keyword::AND | Keyword::OR),
            Token::Plus | Token::Minus | Token::Mul | Token::Div | Token::Mod | Token::StringConcat => true,
            _ => false,
        })
        .count())
}

fn invalid_sql(error: ParserError) -> PlanError {
    PlanError::InvalidSql(match error {
        ParserError::TokenizerError(message) | ParserError::ParserError(message) => message,
        ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_owned(),
    })
}

/// A column as the query names it, identifiers folded the way PostgreSQL
/// folds them (unquoted to lower case).
#[derive(Debug, Clone, PartialEq)]
struct ColumnRef {
    /// `t` in `t.col`, `s.t` in `s.t.col`.
    qualifier: Option<String>,
    name: String,
}

impl ColumnRef {
    /// As SQL text: `o.created_at`, `"Name"`.
    fn written(&self) -> String {
        match &self.qualifier {
            Some(qualifier) => format!(
                "{}.{}",
                quote_relation(qualifier),
                quote_ident_if_needed(&self.name)
            ),
            None => quote_ident_if_needed(&self.name),
        }
    }
}

fn column_ref(expression: &Expr) -> Option<ColumnRef> {
    match expression {
        Expr::Identifier(ident) => Some(ColumnRef {
            qualifier: None,
            name: folded(ident),
        }),
        Expr::CompoundIdentifier(parts) => {
            let (name, qualifier) = parts.split_last()?;
            Some(ColumnRef {
                qualifier: (!qualifier.is_empty())
                    .then(|| qualifier.iter().map(folded).collect::<Vec<_>>().join(".")),
                name: folded(name),
            })
        }
        _ => None,
    }
}

fn object_name_text(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| part.as_ident().map(folded).unwrap_or_else(|| part.to_string()))
        .collect::<Vec<_>>()
        .join(".")
}

/// A column resolved against the FROM clause.
#[derive(Debug, Clone, PartialEq)]
struct ResolvedColumn {
    table: Option<String>,
    column: String,
    /// As the query wrote it (`o.created_at`), quoted where needed.
    written: String,
}

impl ResolvedColumn {
    /// What [`rewrite_hints`]' `indexed` receives.
    fn key(&self) -> String {
        match &self.table {
            Some(table) => format!("{table}.{}", self.column),
            None => self.column.clone(),
        }
    }
}

/// The tables a query level reads, by the name its columns use for them.
struct Scope<'p> {
    entries: Vec<ScopeEntry>,
    parent: Option<&'p Scope<'p>>,
}

struct ScopeEntry {
    /// The alias, else the table's own name.
    name: String,
    /// The table as the query names it; `None` for subqueries and functions.
    table: Option<String>,
}

impl<'p> Scope<'p> {
    fn new(tables: &[TableWithJoins], parent: Option<&'p Scope<'p>>) -> Self {
        let mut entries = Vec::new();
        for table in tables {
            add_tables(&mut entries, table);
        }
        Self { entries, parent }
    }

    fn resolve(&self, column: &ColumnRef) -> ResolvedColumn {
        let table = match &column.qualifier {
            Some(qualifier) => self.table_named(qualifier),
            // Unqualified: only certain when the level reads a single table.
            None => match self.entries.as_slice() {
                [only] => only.table.clone(),
                _ => None,
            },
        };
        ResolvedColumn {
            table,
            column: column.name.clone(),
            written: column.written(),
        }
    }

    fn table_named(&self, qualifier: &str) -> Option<String> {
        let entry = self
            .entries
            .iter()
            .find(|entry| entry.name == qualifier || entry.table.as_deref() == Some(qualifier));
        match entry {
            Some(entry) => entry.table.clone(),
            None => self.parent.and_then(|parent| parent.table_named(qualifier)),
        }
    }

    /// The name to qualify an unqualified column of this level with.
    fn sole_name(&self) -> Option<&str> {
        match self.entries.as_slice() {
            [only] => Some(&only.name),
            _ => None,
        }
    }
}

fn add_tables(entries: &mut Vec<ScopeEntry>, tables: &TableWithJoins) {
    add_table_factor(entries, &tables.relation);
    for join in &tables.joins {
        add_table_factor(entries, &join.relation);
    }
}

fn add_table_factor(entries: &mut Vec<ScopeEntry>, factor: &TableFactor) {
    match factor {
        TableFactor::Table { name, alias, .. } => {
            let table = object_name_text(name);
            let own_name = table.rsplit('.').next().unwrap_or(&table).to_owned();
            entries.push(ScopeEntry {
                name: alias
                    .as_ref()
                    .map(|alias| folded(&alias.name))
                    .unwrap_or(own_name),
                table: Some(table),
            });
        }
        TableFactor::NestedJoin { table_with_joins, .. } => add_tables(entries, table_with_joins),
        TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. } => {
            if let Some(alias) = alias {
                entries.push(ScopeEntry {
                    name: folded(&alias.name),
                    table: None,
                });
            }
        }
        _ => {}
    }
}

struct HintFinder<'a> {
    indexed: &'a dyn Fn(&str) -> bool,
    hints: Vec<RewriteHint>,
}

impl HintFinder<'_> {
    fn push(&mut self, hint: RewriteHint) {
        if !self.hints.contains(&hint) {
            self.hints.push(hint);
        }
    }

    fn statement(&mut self, statement: &Statement) {
        match statement {
            Statement::Query(query) => self.query(query, None),
            Statement::Insert(insert) => {
                if let Some(source) = &insert.source {
                    self.query(source, None);
                }
            }
            Statement::Update(update) => {
                let mut tables = vec![update.table.clone()];
                if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) =
                    &update.from
                {
                    tables.extend(from.iter().cloned());
                }
                self.filtered_tables(&tables, update.selection.as_ref(), None);
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
                let mut tables = from.clone();
                tables.extend(delete.using.iter().flatten().cloned());
                self.filtered_tables(&tables, delete.selection.as_ref(), None);
            }
            Statement::Explain { statement, .. } => self.statement(statement),
            _ => {}
        }
    }

    fn query(&mut self, query: &Query, outer: Option<&Scope<'_>>) {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.query(&cte.query, outer);
            }
        }
        self.set_expr(&query.body, outer);
    }

    fn set_expr(&mut self, body: &SetExpr, outer: Option<&Scope<'_>>) {
        match body {
            SetExpr::Select(select) => self.select(select, outer),
            SetExpr::Query(query) => self.query(query, outer),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, outer);
                self.set_expr(right, outer);
            }
            SetExpr::Insert(statement) | SetExpr::Update(statement) | SetExpr::Delete(statement) => {
                self.statement(statement);
            }
            _ => {}
        }
    }

    fn select(&mut self, select: &Select, outer: Option<&Scope<'_>>) {
        let scope = self.filtered_tables(&select.from, select.selection.as_ref(), outer);
        for item in &select.projection {
            if let SelectItem::UnnamedExpr(expression) | SelectItem::ExprWithAlias { expr: expression, .. } =
                item
            {
                self.nested_queries(expression, &scope);
            }
        }
        if let Some(having) = &select.having {
            self.nested_queries(having, &scope);
        }
    }

    /// The hints of a FROM list (its join conditions and derived tables) and
    /// WHERE clause; returns the scope they were resolved in.
    fn filtered_tables<'p>(
        &mut self,
        tables: &[TableWithJoins],
        selection: Option<&Expr>,
        outer: Option<&'p Scope<'p>>,
    ) -> Scope<'p> {
        let scope = Scope::new(tables, outer);
        for table in tables {
            self.joined_tables(table, &scope);
        }
        if let Some(selection) = selection {
            self.predicate(selection, &scope);
        }
        scope
    }

    fn joined_tables(&mut self, tables: &TableWithJoins, scope: &Scope<'_>) {
        self.table_factor(&tables.relation, scope);
        for join in &tables.joins {
            self.table_factor(&join.relation, scope);
            if let Some(condition) = join_condition(&join.join_operator) {
                self.predicate(condition, scope);
            }
        }
    }

    fn table_factor(&mut self, factor: &TableFactor, scope: &Scope<'_>) {
        match factor {
            TableFactor::Derived { subquery, .. } => self.query(subquery, Some(scope)),
            TableFactor::NestedJoin { table_with_joins, .. } => self.joined_tables(table_with_joins, scope),
            _ => {}
        }
    }

    /// Hints in a boolean condition.
    fn predicate(&mut self, predicate: &Expr, scope: &Scope<'_>) {
        match predicate {
            Expr::Nested(inner) => self.predicate(inner, scope),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => self.predicate(expr, scope),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                self.predicate(left, scope);
                self.predicate(right, scope);
            }
            Expr::BinaryOp {
                op: BinaryOperator::Or,
                ..
            } => {
                let alternatives = disjuncts(predicate);
                self.or_across_columns(predicate, &alternatives, scope);
                for alternative in alternatives {
                    self.predicate(alternative, scope);
                }
            }
            Expr::BinaryOp { left, op, right } if is_comparison(op) => {
                self.operand(
                    left,
                    predicate,
                    Some(Comparison {
                        op,
                        other: right,
                        operand_is_left: true,
                    }),
                    scope,
                );
                self.operand(
                    right,
                    predicate,
                    Some(Comparison {
                        op,
                        other: left,
                        operand_is_left: false,
                    }),
                    scope,
                );
            }
            Expr::Like {
                negated,
                expr,
                pattern,
                ..
            }
            | Expr::ILike {
                negated,
                expr,
                pattern,
                ..
            } => {
                if !negated && pattern_starts_with_wildcard(pattern) {
                    self.leading_wildcard_like(predicate, expr, scope);
                }
                self.operand(expr, predicate, None, scope);
                self.nested_queries(pattern, scope);
            }
            Expr::In {
                expr,
                target: InTarget::Subquery(subquery),
                negated,
                ..
            } => {
                if *negated {
                    self.not_in_subquery(predicate, expr, subquery, scope);
                }
                self.operand(expr, predicate, None, scope);
                self.query(subquery, Some(scope));
            }
            Expr::In { expr, .. }
            | Expr::Between { expr, .. }
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsNotFalse(expr) => {
                self.operand(expr, predicate, None, scope);
                for other in child_expressions(predicate).into_iter().skip(1) {
                    self.nested_queries(other, scope);
                }
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                self.operand(left, predicate, None, scope);
                self.nested_queries(right, scope);
            }
            other => self.nested_queries(other, scope),
        }
    }

    /// Hints for one side of a comparison: a function, cast or arithmetic
    /// around an indexed column keeps its index from serving the predicate.
    fn operand(
        &mut self,
        operand: &Expr,
        predicate: &Expr,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        match strip_parentheses(operand) {
            Expr::Cast { expr, data_type, .. } if column_ref(strip_parentheses(expr)).is_some() => {
                self.cast_on_column(predicate, operand, &data_type.to_string(), comparison, scope);
            }
            Expr::Cast { expr, .. } => self.operand(expr, predicate, None, scope),
            Expr::Function(function) => {
                let name = function_name(function);
                self.function_on_column(predicate, operand, &name, comparison, scope);
            }
            Expr::Extract { .. } => self.function_on_column(predicate, operand, "extract", comparison, scope),
            Expr::Substring { .. } => {
                self.function_on_column(predicate, operand, "substring", comparison, scope)
            }
            Expr::Trim { .. } => self.function_on_column(predicate, operand, "trim", comparison, scope),
            Expr::Ceil { .. } => self.function_on_column(predicate, operand, "ceil", comparison, scope),
            Expr::Floor { .. } => self.function_on_column(predicate, operand, "floor", comparison, scope),
            Expr::AtTimeZone { .. } => {
                self.function_on_column(predicate, operand, "timezone", comparison, scope)
            }
            Expr::BinaryOp { op, .. } if is_arithmetic(op) => {
                self.arithmetic_on_column(predicate, operand, comparison, scope);
            }
            _ => {}
        }
        self.nested_queries(operand, scope);
    }

    /// The indexed columns among those an expression reads.
    fn indexed_columns(&self, expression: &Expr, scope: &Scope<'_>) -> Vec<ResolvedColumn> {
        let mut found: Vec<ResolvedColumn> = Vec::new();
        for column in columns_in(expression) {
            let resolved = scope.resolve(&column);
            if (self.indexed)(&resolved.key()) && !found.contains(&resolved) {
                found.push(resolved);
            }
        }
        found
    }

    fn function_on_column(
        &mut self,
        predicate: &Expr,
        call: &Expr,
        function: &str,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        let columns = self.indexed_columns(call, scope);
        let Some(first) = columns.first() else {
            return;
        };
        let message = format!(
            "`{}` applies {function}() to the indexed column {}, so an index on the column cannot serve it",
            excerpt(predicate),
            column_list(&columns),
        );
        let advice = if is_date_function(function) {
            let rewrite = period_of(call)
                .zip(comparison)
                .and_then(|(period, comparison)| period_comparison(&first.written, &period, comparison));
            date_range_advice(&first.written, &format!("{function}()"), rewrite)
        } else {
            let mut advice = format!(
                "Create an expression index matching it (the function must be IMMUTABLE): {}",
                expression_index(first, call)
            );
            if matches!(function, "lower" | "upper") {
                advice.push_str(&format!(
                    " Or make {} case-insensitive by type (citext) and compare it directly.",
                    first.column
                ));
            }
            advice
        };
        self.push(RewriteHint {
            kind: HintKind::FunctionOnColumn,
            message,
            advice,
        });
    }

    fn cast_on_column(
        &mut self,
        predicate: &Expr,
        cast: &Expr,
        data_type: &str,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        let columns = self.indexed_columns(cast, scope);
        let Some(first) = columns.first() else {
            return;
        };
        let target_type = data_type.to_lowercase();
        let message = format!(
            "`{}` casts the indexed column {} to {target_type}, so an index on the column cannot serve it",
            excerpt(predicate),
            column_list(&columns),
        );
        let advice = if target_type == "date" {
            let rewrite =
                comparison.and_then(|comparison| period_comparison(&first.written, &Period::Day, comparison));
            date_range_advice(&first.written, "a cast to date", rewrite)
        } else {
            let column = &first.written;
            let example = match comparison {
                Some(comparison) => {
                    let op = comparison_from_operand(comparison);
                    let other = without_cast(comparison.other);
                    format!("{column} {op} {other}::<type of {column}>")
                }
                None => format!("{column} = $1::<type of {column}>"),
            };
            format!(
                "Compare the column with a value of its own type instead, casting the other side (`{example}`); \
                 if the cast is really needed, create an expression index: {}",
                expression_index(first, cast)
            )
        };
        self.push(RewriteHint {
            kind: HintKind::CastOnColumn,
            message,
            advice,
        });
    }

    fn arithmetic_on_column(
        &mut self,
        predicate: &Expr,
        arithmetic: &Expr,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        let columns = self.indexed_columns(arithmetic, scope);
        let Some(first) = columns.first() else {
            return;
        };
        let message = format!(
            "`{}` computes `{}` from the indexed column {} before comparing, so an index on the column \
             cannot serve it",
            excerpt(predicate),
            excerpt(arithmetic),
            column_list(&columns),
        );
        let rewritten = comparison.and_then(|comparison| isolated_column_comparison(arithmetic, comparison));
        let advice = match rewritten {
            Some(rewritten) => {
                format!("Move the arithmetic to the other side so the column stands alone: `{rewritten}`.")
            }
            None => format!(
                "Move the arithmetic to the other side so the column stands alone, or create an \
                 expression index: {}",
                expression_index(first, arithmetic)
            ),
        };
        self.push(RewriteHint {
            kind: HintKind::ArithmeticOnColumn,
            message,
            advice,
        });
    }

    /// `a = $1 OR b = $2`: a single index serves only one of the columns.
    fn or_across_columns(&mut self, predicate: &Expr, alternatives: &[&Expr], scope: &Scope<'_>) {
        let mut column_sets: Vec<Vec<String>> = Vec::new();
        for alternative in alternatives {
            let mut columns: Vec<String> = columns_in(alternative)
                .iter()
                .map(|column| scope.resolve(column).key())
                .collect();
            columns.sort();
            columns.dedup();
            if !columns.is_empty() && !column_sets.contains(&columns) {
                column_sets.push(columns);
            }
        }
        // A column every branch tests (`(a = $1 AND b = $2) OR a = $3`) lets
        // one index serve all of them.
        let shared_by_all = column_sets.first().is_some_and(|first| {
            first
                .iter()
                .any(|column| column_sets.iter().all(|set| set.contains(column)))
        });
        if column_sets.len() < 2 || shared_by_all {
            return;
        }
        let mut columns: Vec<String> = Vec::new();
        for column in column_sets.into_iter().flatten() {
            if !columns.contains(&column) {
                columns.push(column);
            }
        }
        self.push(RewriteHint {
            kind: HintKind::OrAcrossColumns,
            message: format!(
                "`{}` ORs conditions on different columns ({}): one index cannot serve it, and without an \
                 index for every branch PostgreSQL scans the whole table",
                excerpt(predicate),
                columns.join(", "),
            ),
            advice: "Index each branch's column so the planner can combine the indexes with a BitmapOr, \
                     or split the query into one SELECT per branch joined by UNION (UNION ALL when the \
                     branches cannot match the same row), each served by its own index."
                .to_owned(),
        });
    }

    fn leading_wildcard_like(&mut self, predicate: &Expr, subject: &Expr, scope: &Scope<'_>) {
        let subject = strip_parentheses(subject);
        let column = columns_in(subject).first().map(|column| scope.resolve(column));
        let table = column
            .as_ref()
            .and_then(|column| column.table.as_deref())
            .map(quote_relation)
            .unwrap_or_else(|| "<table>".to_owned());
        let indexed_expression = match column_ref(subject) {
            Some(column) => quote_ident_if_needed(&column.name),
            None => format!("({})", without_qualifiers(subject)),
        };
        let subject_text = match column_ref(subject) {
            Some(column) => quote_ident_if_needed(&column.name),
            None => without_qualifiers(subject).to_string(),
        };
        self.push(RewriteHint {
            kind: HintKind::LeadingWildcardLike,
            message: format!(
                "`{}` starts its pattern with a wildcard, so no B-tree index on {subject_text} can serve it \
                 and every row is read",
                excerpt(predicate),
            ),
            advice: format!(
                "Create a trigram index, which serves LIKE and ILIKE with wildcards anywhere: CREATE \
                 EXTENSION IF NOT EXISTS pg_trgm; CREATE INDEX CONCURRENTLY ON {table} USING gin \
                 ({indexed_expression} gin_trgm_ops); for a pure suffix search ('%x'), an index on \
                 reverse({subject_text}) queried with reverse({subject_text}) LIKE reverse('x') || '%' \
                 also works."
            ),
        });
    }

    fn not_in_subquery(&mut self, predicate: &Expr, subject: &Expr, subquery: &Query, scope: &Scope<'_>) {
        let example = not_exists_rewrite(subject, subquery, scope)
            .map(|rewrite| format!(", here `{rewrite}`"))
            .unwrap_or_default();
        self.push(RewriteHint {
            kind: HintKind::NotInSubquery,
            message: format!(
                "`{}` cannot be planned as an anti-join (a NULL from the subquery makes it false for every \
                 row), so PostgreSQL runs the subquery as a SubPlan: hashed while it fits in work_mem, \
                 otherwise re-scanned for every row",
                excerpt(predicate),
            ),
            advice: format!(
                "Rewrite it as NOT EXISTS (SELECT 1 FROM ... WHERE <subquery column> = <outer column>){example}, \
                 which plans as an anti-join; the two differ only when the subquery can return NULL."
            ),
        });
    }

    /// Runs the hint search on the subqueries inside an expression.
    fn nested_queries(&mut self, expression: &Expr, scope: &Scope<'_>) {
        match expression {
            Expr::Subquery(query) | Expr::Exists { subquery: query, .. } => self.query(query, Some(scope)),
            Expr::In {
                expr,
                target: InTarget::Subquery(query),
                ..
            } => {
                self.nested_queries(expr, scope);
                self.query(query, Some(scope));
            }
            other => {
                for child in child_expressions(other) {
                    self.nested_queries(child, scope);
                }
            }
        }
    }
}

/// The comparison an operand is part of, for rewriting it.
#[derive(Clone, Copy)]
struct Comparison<'a> {
    op: &'a BinaryOperator,
    other: &'a Expr,
    operand_is_left: bool,
}

fn join_condition(operator: &JoinOperator) -> Option<&Expr> {
    match crate::candidates::join_constraint_of(operator)? {
        JoinConstraint::On(condition) => Some(condition),
        _ => None,
    }
}

fn is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

fn is_arithmetic(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo
    )
}

/// The comparison operator seen from the other side (`a < b` is `b > a`).
fn mirrored(op: &BinaryOperator) -> BinaryOperator {
    match op {
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        other => other.clone(),
    }
}

/// `col + k > x` rewritten as `col > x - k` (and `col - k`, `k + col`
/// likewise); `None` for other arithmetic, where the direction of the
/// comparison may change.
fn isolated_column_comparison(arithmetic: &Expr, comparison: Comparison<'_>) -> Option<String> {
    let Expr::BinaryOp { left, op, right } = strip_parentheses(arithmetic) else {
        return None;
    };
    let (column, constant, inverse) = match (column_ref(strip_parentheses(left)), op) {
        (Some(_), BinaryOperator::Plus) => (left, right, "-"),
        (Some(_), BinaryOperator::Minus) => (left, right, "+"),
        (None, BinaryOperator::Plus) if column_ref(strip_parentheses(right)).is_some() => (right, left, "-"),
        _ => return None,
    };
    if !columns_in(constant).is_empty() {
        return None;
    }
    let op = comparison_from_operand(comparison);
    let other = comparison.other;
    Some(format!("{column} {op} {other} {inverse} {constant}"))
}

fn pattern_starts_with_wildcard(pattern: &Expr) -> bool {
    match strip_parentheses(pattern) {
        Expr::Value(value) => value
            .value
            .clone()
            .into_string()
            .is_some_and(|text| text.starts_with('%') || text.starts_with('_')),
        Expr::Cast { expr, .. } => pattern_starts_with_wildcard(expr),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            ..
        } => pattern_starts_with_wildcard(left),
        _ => false,
    }
}

fn is_date_function(function: &str) -> bool {
    matches!(
        function,
        "date" | "date_trunc" | "extract" | "date_part" | "to_char"
    )
}

/// The period a date function of a column stands for: comparing the bare
/// column with the period's bounds lets the column's index serve it.
enum Period {
    /// `date(col)`, `col::date`.
    Day,
    /// `date_trunc('month', col)`: the unit.
    Truncated(String),
    /// `extract(year FROM col)`, `date_part('year', col)`.
    Year,
}

fn period_of(call: &Expr) -> Option<Period> {
    match strip_parentheses(call) {
        Expr::Cast { data_type, .. } => data_type
            .to_string()
            .eq_ignore_ascii_case("date")
            .then_some(Period::Day),
        Expr::Extract { field, .. } => field
            .to_string()
            .eq_ignore_ascii_case("year")
            .then_some(Period::Year),
        Expr::Function(function) => match function_name(function).as_str() {
            "date" => Some(Period::Day),
            "date_trunc" => first_text_argument(function).map(|unit| Period::Truncated(unit.to_lowercase())),
            "date_part" => first_text_argument(function)
                .filter(|field| field.eq_ignore_ascii_case("year"))
                .map(|_| Period::Year),
            _ => None,
        },
        _ => None,
    }
}

/// `created_at >= $1::date AND created_at < $1::date + 1` for `date(created_at) = $1`;
/// `None` for comparisons a range cannot express (`<>`).
fn period_comparison(column: &str, period: &Period, comparison: Comparison<'_>) -> Option<String> {
    let value = comparison.other;
    let value = if matches!(
        value,
        Expr::Value(_)
            | Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Function(_)
            | Expr::Nested(_)
    ) {
        value.to_string()
    } else {
        format!("({value})")
    };
    let (start, next) = match period {
        Period::Day => (format!("{value}::date"), format!("{value}::date + 1")),
        Period::Truncated(unit) => (value.clone(), format!("{value} + interval '1 {unit}'")),
        Period::Year => (
            format!("make_date({value}, 1, 1)"),
            format!("make_date({value} + 1, 1, 1)"),
        ),
    };
    Some(match comparison_from_operand(comparison) {
        BinaryOperator::Eq => format!("{column} >= {start} AND {column} < {next}"),
        BinaryOperator::GtEq => format!("{column} >= {start}"),
        BinaryOperator::Gt => format!("{column} >= {next}"),
        BinaryOperator::Lt => format!("{column} < {start}"),
        BinaryOperator::LtEq => format!("{column} < {next}"),
        _ => return None,
    })
}

fn date_range_advice(column: &str, what: &str, rewrite: Option<String>) -> String {
    let rewrite = rewrite.unwrap_or_else(|| format!("{column} >= <start> AND {column} < <end>"));
    format!(
        "Compare the bare column with the bounds of the period instead: `{rewrite}`, so the index on {column} \
         serves it (on a timestamptz column {what} depends on the session time zone, so it could not even be \
         indexed)."
    )
}

/// The comparison operator with the operand on its left (`$1 < f(col)` is
/// `f(col) > $1`).
fn comparison_from_operand(comparison: Comparison<'_>) -> BinaryOperator {
    if comparison.operand_is_left {
        comparison.op.clone()
    } else {
        mirrored(comparison.op)
    }
}

fn without_cast(expression: &Expr) -> &Expr {
    match expression {
        Expr::Cast { expr, .. } => expr,
        other => other,
    }
}

/// A function's own name, without schema, lower case.
fn function_name(function: &sqlparser::ast::Function) -> String {
    let name = object_name_text(&function.name);
    name.rsplit('.').next().unwrap_or(&name).to_lowercase()
}

fn first_text_argument(function: &sqlparser::ast::Function) -> Option<String> {
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    match function_argument(list.args.first()?)? {
        Expr::Value(value) => value.value.clone().into_string(),
        _ => None,
    }
}

/// `CREATE INDEX CONCURRENTLY ON users ((lower(email)));` for an expression
/// over `column`.
fn expression_index(column: &ResolvedColumn, expression: &Expr) -> String {
    let table = column
        .table
        .as_deref()
        .map(quote_relation)
        .unwrap_or_else(|| "<table>".to_owned());
    format!(
        "CREATE INDEX CONCURRENTLY ON {table} (({}));",
        without_qualifiers(strip_parentheses(expression))
    )
}

fn column_list(columns: &[ResolvedColumn]) -> String {
    columns
        .iter()
        .map(ResolvedColumn::key)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `NOT EXISTS (SELECT 1 FROM <from> WHERE <where> AND <selected> = <outer>)`
/// for a simple one-column subquery, with the outer column qualified so the
/// subquery cannot capture it.
fn not_exists_rewrite(subject: &Expr, subquery: &Query, scope: &Scope<'_>) -> Option<String> {
    let SetExpr::Select(select) = subquery.body.as_ref() else {
        return None;
    };
    if subquery.with.is_some() || select.from.is_empty() || select.having.is_some() {
        return None;
    }
    let [SelectItem::UnnamedExpr(selected) | SelectItem::ExprWithAlias { expr: selected, .. }] =
        select.projection.as_slice()
    else {
        return None;
    };
    let subject_column = column_ref(strip_parentheses(subject))?;
    let outer = match &subject_column.qualifier {
        Some(_) => subject.to_string(),
        None => format!("{}.{}", scope.sole_name()?, subject),
    };
    let from = select
        .from
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let correlation = format!("{selected} = {outer}");
    let condition = match &select.selection {
        Some(selection) => format!("{selection} AND {correlation}"),
        None => correlation,
    };
    Some(format!("NOT EXISTS (SELECT 1 FROM {from} WHERE {condition})"))
}

/// The columns an expression reads, outside its subqueries.
fn columns_in(expression: &Expr) -> Vec<ColumnRef> {
    if let Some(column) = column_ref(expression) {
        return vec![column];
    }
    child_expressions(expression)
        .into_iter()
        .flat_map(columns_in)
        .collect()
}

/// The direct sub-expressions of an expression, subqueries excluded.
fn child_expressions(expression: &Expr) -> Vec<&Expr> {
    match expression {
        Expr::BinaryOp { left, right, .. }
        | Expr::AnyOp { left, right, .. }
        | Expr::AllOp { left, right, .. }
        | Expr::IsDistinctFrom(left, right)
        | Expr::IsNotDistinctFrom(left, right) => vec![left, right],
        Expr::UnaryOp { expr, .. }
        | Expr::Nested(expr)
        | Expr::Cast { expr, .. }
        | Expr::IsNull(expr)
        | Expr::IsNotNull(expr)
        | Expr::IsTrue(expr)
        | Expr::IsFalse(expr)
        | Expr::IsNotTrue(expr)
        | Expr::IsNotFalse(expr)
        | Expr::IsUnknown(expr)
        | Expr::IsNotUnknown(expr)
        | Expr::Extract { expr, .. }
        | Expr::Ceil { expr, .. }
        | Expr::Floor { expr, .. }
        | Expr::Collate { expr, .. }
        | Expr::Named { expr, .. } => vec![expr],
        Expr::Like { expr, pattern, .. }
        | Expr::ILike { expr, pattern, .. }
        | Expr::SimilarTo { expr, pattern, .. }
        | Expr::RLike { expr, pattern, .. } => vec![expr, pattern],
        Expr::In { expr, target, .. } => {
            let mut children: Vec<&Expr> = vec![expr];
            match target {
                InTarget::List(items) => children.extend(items),
                InTarget::Unnest(array) => children.push(array),
                _ => {}
            }
            children
        }
        Expr::Between { expr, low, high, .. } => vec![expr, low, high],
        Expr::AtTimeZone { timestamp, time_zone } => vec![timestamp, time_zone],
        Expr::Position { expr, r#in } => vec![expr, r#in],
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => std::iter::once(expr.as_ref())
            .chain(substring_from.as_deref())
            .chain(substring_for.as_deref())
            .collect(),
        Expr::Trim {
            expr,
            trim_what,
            trim_characters,
            ..
        } => std::iter::once(expr.as_ref())
            .chain(trim_what.as_deref())
            .chain(trim_characters.iter().flatten())
            .collect(),
        Expr::Function(function) => {
            let mut children = Vec::new();
            if let FunctionArguments::List(list) = &function.args {
                children.extend(list.args.iter().filter_map(function_argument));
            }
            children.extend(function.filter.as_deref());
            children
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => operand
            .as_deref()
            .into_iter()
            .chain(conditions.iter().flat_map(|when| [&when.condition, &when.result]))
            .chain(else_result.as_deref())
            .collect(),
        Expr::Tuple(items) => items.iter().collect(),
        Expr::Array(array) => array.elem.iter().collect(),
        Expr::CompoundFieldAccess { root, .. } => vec![root],
        Expr::JsonAccess { value, .. } => vec![value],
        _ => Vec::new(),
    }
}

fn function_argument(argument: &FunctionArg) -> Option<&Expr> {
    match argument {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expression))
        | FunctionArg::Named {
            arg: FunctionArgExpr::Expr(expression),
            ..
        }
        | FunctionArg::ExprNamed {
            arg: FunctionArgExpr::Expr(expression),
            ..
        } => Some(expression),
        _ => None,
    }
}

fn function_argument_mut(argument: &mut FunctionArg) -> Option<&mut Expr> {
    match argument {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expression))
        | FunctionArg::Named {
            arg: FunctionArgExpr::Expr(expression),
            ..
        }
        | FunctionArg::ExprNamed {
            arg: FunctionArgExpr::Expr(expression),
            ..
        } => Some(expression),
        _ => None,
    }
}

/// The expression with `alias.column` written as `column`: an index
/// definition names its table's columns bare.
fn without_qualifiers(expression: &Expr) -> Expr {
    let mut copy = expression.clone();
    drop_qualifiers(&mut copy);
    copy
}

fn drop_qualifiers(expression: &mut Expr) {
    if let Expr::CompoundIdentifier(parts) = expression {
        if let Some(last) = parts.last().cloned() {
            *expression = Expr::Identifier(last);
        }
        return;
    }
    match expression {
        Expr::BinaryOp { left, right, .. } => {
            drop_qualifiers(left);
            drop_qualifiers(right);
        }
        Expr::AtTimeZone { timestamp, time_zone } => {
            drop_qualifiers(timestamp);
            drop_qualifiers(time_zone);
        }
        Expr::UnaryOp { expr, .. }
        | Expr::Nested(expr)
        | Expr::Cast { expr, .. }
        | Expr::Extract { expr, .. }
        | Expr::Ceil { expr, .. }
        | Expr::Floor { expr, .. }
        | Expr::Collate { expr, .. }
        | Expr::Substring { expr, .. }
        | Expr::Trim { expr, .. } => drop_qualifiers(expr),
        Expr::Function(function) => {
            if let FunctionArguments::List(list) = &mut function.args {
                for argument in list.args.iter_mut().filter_map(function_argument_mut) {
                    drop_qualifiers(argument);
                }
            }
        }
        _ => {}
    }
}

/// An expression as SQL, cut short for messages.
fn excerpt(expression: &Expr) -> String {
    const MAX_CHARS: usize = 120;
    let text = expression.to_string();
    if text.chars().count() <= MAX_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_CHARS).collect();
    cut.push('…');
    cut
}

// ---------------------------------------------------------------------------
// SQL identifiers and numbers in messages
// ---------------------------------------------------------------------------

/// `schema.table` (or `table`) as SQL text, each part quoted as needed.
fn quote_relation(relation: &str) -> String {
    relation
        .split('.')
        .map(quote_ident_if_needed)
        .collect::<Vec<_>>()
        .join(".")
}

/// A count with thousands separators: `1234567` → `1,234,567`.
fn format_count(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let digits = format!("{:.0}", value.abs().round());
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value.round() < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// A share as a percentage with the precision small shares need: `0.1%`.
fn format_percent(share: f64) -> String {
    if !share.is_finite() {
        return "all".to_owned();
    }
    let percent = share * 100.0;
    if percent > 0.0 && percent < 0.01 {
        return "<0.01%".to_owned();
    }
    let text = if (99.0..100.0).contains(&percent) {
        // Rounded, 99.96 % would read as all of it.
        format!("{:.1}", (percent * 10.0).floor() / 10.0)
    } else if percent >= 10.0 {
        format!("{percent:.0}")
    } else if percent >= 1.0 {
        format!("{percent:.1}")
    } else {
        format!("{percent:.2}")
    };
    let trimmed = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{trimmed}%")
}

fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format_count(ratio)
    } else {
        format!("{ratio:.1}")
    }
}

fn format_kb(kb: f64) -> String {
    if kb >= 1024.0 * 1024.0 {
        format!("{:.1} GB", kb / (1024.0 * 1024.0))
    } else if kb >= 1024.0 {
        format!("{:.1} MB", kb / 1024.0)
    } else {
        format!("{} kB", format_count(kb))
    }
}

/// A work_mem setting of at least `needed_kb`: the next power of two in MB,
/// a round figure people recognise as a setting.
fn suggested_work_mem(needed_kb: f64) -> String {
    let needed_mb = (needed_kb / 1024.0).max(1.0);
    let mut setting_mb: f64 = 1.0;
    // 2^30 MB is far beyond any machine; the bound keeps the loop finite on
    // absurd input.
    while setting_mb < needed_mb && setting_mb < 1_073_741_824.0 {
        setting_mb *= 2.0;
    }
    if setting_mb >= 1024.0 {
        format!("{:.0}GB", setting_mb / 1024.0)
    } else {
        format!("{setting_mb:.0}MB")
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn explain(text: &str) -> Value {
        serde_json::from_str(text).expect("the fixture is JSON")
    }

    fn analyse(text: &str) -> PlanAnalysis {
        analyze_plan(&explain(text), &Thresholds::default()).expect("the plan analyses")
    }

    fn kinds(analysis: &PlanAnalysis) -> Vec<FindingKind> {
        analysis.findings.iter().map(|finding| finding.kind).collect()
    }

    fn finding(analysis: &PlanAnalysis, kind: FindingKind) -> &PlanFinding {
        analysis
            .findings
            .iter()
            .find(|finding| finding.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} in {:#?}", analysis.findings))
    }

    fn hints(sql: &str, indexed_columns: &[&str]) -> Vec<RewriteHint> {
        rewrite_hints(sql, &|column| indexed_columns.contains(&column)).expect("the SQL parses")
    }

    fn hint_kinds(found: &[RewriteHint]) -> Vec<HintKind> {
        found.iter().map(|hint| hint.kind).collect()
    }

    // EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM orders WHERE status = 'pending'
    const SELECTIVE_SEQ_SCAN: &str = r#"[
      {
        "Plan": {
          "Node Type": "Seq Scan",
          "Parallel Aware": false,
          "Async Capable": false,
          "Relation Name": "orders",
          "Alias": "orders",
          "Startup Cost": 0.00,
          "Total Cost": 4560.00,
          "Plan Rows": 140,
          "Plan Width": 45,
          "Actual Startup Time": 0.136,
          "Actual Total Time": 17.787,
          "Actual Rows": 200,
          "Actual Loops": 1,
          "Filter": "(status = 'pending'::text)",
          "Rows Removed by Filter": 199800,
          "Shared Hit Blocks": 2060,
          "Shared Read Blocks": 0,
          "Temp Read Blocks": 0,
          "Temp Written Blocks": 0
        },
        "Planning": {"Shared Hit Blocks": 95, "Shared Read Blocks": 1},
        "Planning Time": 0.565,
        "Triggers": [],
        "Execution Time": 17.873
      }
    ]"#;

    // EXPLAIN (FORMAT JSON) of the same query: no actual rows.
    const SEQ_SCAN_WITHOUT_ANALYZE: &str = r#"[
      {
        "Plan": {
          "Node Type": "Seq Scan",
          "Parallel Aware": false,
          "Async Capable": false,
          "Relation Name": "orders",
          "Alias": "orders",
          "Startup Cost": 0.00,
          "Total Cost": 4560.00,
          "Plan Rows": 140,
          "Plan Width": 45,
          "Filter": "(status = 'pending'::text)"
        }
      }
    ]"#;

    // WHERE city = 'city1' AND zip = 'zip1', two perfectly correlated columns.
    const CORRELATED_FILTER: &str = r#"[
      {
        "Plan": {
          "Node Type": "Seq Scan",
          "Parallel Aware": false,
          "Async Capable": false,
          "Relation Name": "orders",
          "Alias": "orders",
          "Startup Cost": 0.00,
          "Total Cost": 5060.00,
          "Plan Rows": 22,
          "Plan Width": 45,
          "Actual Startup Time": 0.021,
          "Actual Total Time": 25.9,
          "Actual Rows": 2000,
          "Actual Loops": 1,
          "Filter": "((city = 'city1'::text) AND (zip = 'zip1'::text))",
          "Rows Removed by Filter": 198000
        },
        "Planning Time": 0.510,
        "Triggers": [],
        "Execution Time": 26.078
      }
    ]"#;

    // SET work_mem = '64kB'; SELECT * FROM orders ORDER BY amount (parallel).
    const SPILLING_SORT: &str = r#"[
      {
        "Plan": {
          "Node Type": "Gather Merge",
          "Parallel Aware": false,
          "Async Capable": false,
          "Startup Cost": 25012.27,
          "Total Cost": 38541.68,
          "Plan Rows": 117647,
          "Plan Width": 45,
          "Actual Startup Time": 81.457,
          "Actual Total Time": 145.754,
          "Actual Rows": 200000,
          "Actual Loops": 1,
          "Workers Planned": 1,
          "Workers Launched": 1,
          "Temp Read Blocks": 5410,
          "Temp Written Blocks": 5877,
          "Plans": [
            {
              "Node Type": "Sort",
              "Parent Relationship": "Outer",
              "Parallel Aware": false,
              "Async Capable": false,
              "Startup Cost": 24012.26,
              "Total Cost": 24306.38,
              "Plan Rows": 117647,
              "Plan Width": 45,
              "Actual Startup Time": 75.709,
              "Actual Total Time": 91.929,
              "Actual Rows": 100000,
              "Actual Loops": 2,
              "Sort Key": ["amount"],
              "Sort Method": "external merge",
              "Sort Space Used": 5104,
              "Sort Space Type": "Disk",
              "Workers": [
                {
                  "Worker Number": 0,
                  "Sort Method": "external merge",
                  "Sort Space Used": 7056,
                  "Sort Space Type": "Disk"
                }
              ],
              "Plans": [
                {
                  "Node Type": "Seq Scan",
                  "Parent Relationship": "Outer",
                  "Parallel Aware": true,
                  "Async Capable": false,
                  "Relation Name": "orders",
                  "Alias": "orders",
                  "Startup Cost": 0.00,
                  "Total Cost": 3236.47,
                  "Plan Rows": 117647,
                  "Plan Width": 45,
                  "Actual Startup Time": 0.008,
                  "Actual Total Time": 9.928,
                  "Actual Rows": 100000,
                  "Actual Loops": 2,
                  "Workers": []
                }
              ]
            }
          ]
        },
        "Planning Time": 0.531,
        "Triggers": [],
        "Execution Time": 155.529
      }
    ]"#;

    // SET work_mem = '64kB'; SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id
    const SPILLING_HASH: &str = r#"[
      {
        "Plan": {
          "Node Type": "Hash Join",
          "Parallel Aware": false,
          "Async Capable": false,
          "Join Type": "Inner",
          "Startup Cost": 598.00,
          "Total Cost": 7411.11,
          "Plan Rows": 200000,
          "Plan Width": 33,
          "Actual Startup Time": 6.1,
          "Actual Total Time": 90.2,
          "Actual Rows": 200000,
          "Actual Loops": 1,
          "Inner Unique": true,
          "Hash Cond": "(o.customer_id = c.id)",
          "Plans": [
            {
              "Node Type": "Seq Scan",
              "Parent Relationship": "Outer",
              "Parallel Aware": false,
              "Async Capable": false,
              "Relation Name": "orders",
              "Alias": "o",
              "Startup Cost": 0.00,
              "Total Cost": 4060.00,
              "Plan Rows": 200000,
              "Plan Width": 12,
              "Actual Startup Time": 0.01,
              "Actual Total Time": 20.3,
              "Actual Rows": 200000,
              "Actual Loops": 1
            },
            {
              "Node Type": "Hash",
              "Parent Relationship": "Inner",
              "Parallel Aware": false,
              "Async Capable": false,
              "Startup Cost": 348.00,
              "Total Cost": 348.00,
              "Plan Rows": 20000,
              "Plan Width": 29,
              "Actual Startup Time": 5.9,
              "Actual Total Time": 5.9,
              "Actual Rows": 20000,
              "Actual Loops": 1,
              "Hash Buckets": 2048,
              "Original Hash Buckets": 2048,
              "Hash Batches": 16,
              "Original Hash Batches": 16,
              "Peak Memory Usage": 87,
              "Plans": [
                {
                  "Node Type": "Seq Scan",
                  "Parent Relationship": "Outer",
                  "Parallel Aware": false,
                  "Async Capable": false,
                  "Relation Name": "customers",
                  "Alias": "c",
                  "Startup Cost": 0.00,
                  "Total Cost": 348.00,
                  "Plan Rows": 20000,
                  "Plan Width": 29,
                  "Actual Startup Time": 0.01,
                  "Actual Total Time": 2.1,
                  "Actual Rows": 20000,
                  "Actual Loops": 1
                }
              ]
            }
          ]
        },
        "Planning Time": 1.055,
        "Triggers": [],
        "Execution Time": 95.706
      }
    ]"#;

    // EXPLAIN (ANALYZE, VERBOSE) with a join on columns no index serves:
    // SELECT c.email, o.id FROM orders o JOIN customers c ON c.email = o.city
    // WHERE o.created_at < '2024-01-02' (hash, merge, material, memoize off).
    const NESTED_LOOP_OVER_SEQ_SCAN: &str = r#"[
      {
        "Plan": {
          "Node Type": "Nested Loop",
          "Parallel Aware": false,
          "Async Capable": false,
          "Join Type": "Inner",
          "Startup Cost": 0.29,
          "Total Cost": 800778.85,
          "Plan Rows": 1339,
          "Plan Width": 33,
          "Actual Startup Time": 2601.1,
          "Actual Total Time": 2601.1,
          "Actual Rows": 0,
          "Actual Loops": 1,
          "Output": ["c.email", "o.id"],
          "Inner Unique": false,
          "Join Filter": "(o.city = c.email)",
          "Rows Removed by Join Filter": 28780000,
          "Plans": [
            {
              "Node Type": "Index Scan",
              "Parent Relationship": "Outer",
              "Parallel Aware": false,
              "Async Capable": false,
              "Scan Direction": "Forward",
              "Index Name": "orders_created_at_idx",
              "Relation Name": "orders",
              "Schema": "public",
              "Alias": "o",
              "Startup Cost": 0.29,
              "Total Cost": 56.85,
              "Plan Rows": 1339,
              "Plan Width": 17,
              "Actual Startup Time": 0.01,
              "Actual Total Time": 0.4,
              "Actual Rows": 1439,
              "Actual Loops": 1,
              "Output": ["o.id", "o.customer_id", "o.city"],
              "Index Cond": "(o.created_at < '2024-01-02 00:00:00+00'::timestamp with time zone)",
              "Rows Removed by Index Recheck": 0
            },
            {
              "Node Type": "Seq Scan",
              "Parent Relationship": "Inner",
              "Parallel Aware": false,
              "Async Capable": false,
              "Relation Name": "customers",
              "Schema": "public",
              "Alias": "c",
              "Startup Cost": 0.00,
              "Total Cost": 348.00,
              "Plan Rows": 20000,
              "Plan Width": 25,
              "Actual Startup Time": 0.003,
              "Actual Total Time": 1.2,
              "Actual Rows": 20000,
              "Actual Loops": 1439,
              "Output": ["c.id", "c.email", "c.country"]
            }
          ]
        },
        "Planning Time": 0.680,
        "Triggers": [],
        "Execution Time": 2601.942
      }
    ]"#;

    /// Every test plan must pass without panicking and with the kinds given.
    fn assert_kinds(text: &str, expected: &[FindingKind]) -> PlanAnalysis {
        let analysis = analyse(text);
        assert_eq!(kinds(&analysis), expected, "{:#?}", analysis.findings);
        analysis
    }

    #[test]
    fn a_seq_scan_that_keeps_one_row_in_a_thousand_is_flagged() {
        let analysis = assert_kinds(SELECTIVE_SEQ_SCAN, &[FindingKind::SelectiveSeqScan]);
        let found = &analysis.findings[0];
        assert_eq!(found.relation.as_deref(), Some("orders"));
        assert_eq!(found.node_type, "Seq Scan");
        assert_eq!(
            found.message,
            "Seq Scan on orders reads 200,000 rows and keeps 200 of them (0.1%) with filter \
             (status = 'pending'::text)"
        );
        assert_eq!(
            found.advice,
            "Create an index on orders (status) so the filter becomes an index condition: \
             CREATE INDEX CONCURRENTLY ON orders (status);"
        );
    }

    #[test]
    fn plan_totals_timings_and_scans_are_read() {
        let analysis = analyse(SELECTIVE_SEQ_SCAN);
        assert_eq!(analysis.total_cost, 4560.0);
        assert_eq!(analysis.execution_ms, Some(17.873));
        assert_eq!(analysis.planning_ms, Some(0.565));
        assert!(analysis.analyzed);
        assert_eq!(
            analysis.scans,
            vec![RelationScan {
                relation: "orders".to_owned(),
                alias: Some("orders".to_owned()),
                node_type: "Seq Scan".to_owned(),
                index_name: None,
                filter: Some("(status = 'pending'::text)".to_owned()),
                index_cond: None,
                estimated_rows: 140.0,
                actual_rows: Some(200.0),
                loops: Some(1.0),
                rows_removed_by_filter: Some(199800.0),
                total_cost: 4560.0,
            }]
        );
    }

    #[test]
    fn the_object_inside_the_array_is_accepted_too() {
        let array = explain(SELECTIVE_SEQ_SCAN);
        let object = array[0].clone();
        let thresholds = Thresholds::default();
        assert_eq!(
            analyze_plan(&object, &thresholds).expect("the object analyses"),
            analyze_plan(&array, &thresholds).expect("the array analyses")
        );
    }

    #[test]
    fn a_seq_scan_on_a_table_below_the_size_threshold_is_not_flagged() {
        let small = SELECTIVE_SEQ_SCAN
            .replace("\"Actual Rows\": 200,", "\"Actual Rows\": 2,")
            .replace("199800", "998");
        assert_kinds(&small, &[]);
    }

    #[test]
    fn a_seq_scan_whose_filter_keeps_almost_half_the_table_is_not_flagged() {
        let broad = SELECTIVE_SEQ_SCAN
            .replace("\"Actual Rows\": 200,", "\"Actual Rows\": 86399,")
            .replace("\"Plan Rows\": 140,", "\"Plan Rows\": 87026,")
            .replace("199800", "113601");
        assert_kinds(&broad, &[]);
    }

    #[test]
    fn without_analyze_a_seq_scan_is_judged_against_the_table_rows_given() {
        let plan = explain(SEQ_SCAN_WITHOUT_ANALYZE);
        let thresholds = Thresholds::default();
        let unknown_size = analyze_plan(&plan, &thresholds).expect("the plan analyses");
        assert!(!unknown_size.analyzed);
        assert!(unknown_size.findings.is_empty());
        assert_eq!(unknown_size.scans[0].actual_rows, None);

        let table_rows = HashMap::from([("public.orders".to_owned(), 200_000.0)]);
        let known_size =
            analyze_plan_with_table_rows(&plan, &thresholds, &table_rows).expect("the plan analyses");
        let found = finding(&known_size, FindingKind::SelectiveSeqScan);
        assert_eq!(
            found.message,
            "Seq Scan on orders reads all of its about 200,000 rows and is estimated to keep 140 (0.07%) \
             with filter (status = 'pending'::text)"
        );
        assert!(
            found
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON orders (status);")
        );
    }

    #[test]
    fn a_parallel_seq_scan_counts_the_rows_of_every_worker() {
        // Three processes each read a third of the table (per-loop averages).
        let plan = r#"{
          "Plan": {
            "Node Type": "Gather",
            "Parallel Aware": false,
            "Total Cost": 4000.0,
            "Plan Rows": 200,
            "Actual Rows": 200,
            "Actual Loops": 1,
            "Workers Planned": 2,
            "Workers Launched": 2,
            "Single Copy": false,
            "Plans": [
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": true,
                "Relation Name": "events",
                "Alias": "events",
                "Total Cost": 3500.0,
                "Plan Rows": 83,
                "Actual Rows": 67,
                "Actual Loops": 3,
                "Filter": "(kind = 'refund'::text)",
                "Rows Removed by Filter": 1999933
              }
            ]
          },
          "Execution Time": 300.0
        }"#;
        let analysis = assert_kinds(plan, &[FindingKind::SelectiveSeqScan]);
        assert!(
            analysis.findings[0]
                .message
                .contains("reads 6,000,000 rows and keeps 201 of them")
        );
        assert_eq!(analysis.scans[0].actual_rows, Some(201.0));
        assert_eq!(analysis.scans[0].rows_removed_by_filter, Some(5_999_799.0));
    }

    #[test]
    fn a_sort_that_spills_to_disk_is_flagged_with_work_mem_and_index_advice() {
        let analysis = assert_kinds(SPILLING_SORT, &[FindingKind::SpillingSort]);
        let found = &analysis.findings[0];
        assert_eq!(found.relation.as_deref(), Some("orders"));
        assert_eq!(found.node_type, "Sort");
        assert!(
            found
                .message
                .contains("Sort on amount spilled to disk: external merge wrote 6.9 MB")
        );
        assert!(
            found.advice.contains("SET LOCAL work_mem = '16MB'"),
            "{}",
            found.advice
        );
        assert!(
            found
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON orders (amount);")
        );
    }

    #[test]
    fn an_incremental_sort_spilling_its_full_sort_groups_is_flagged() {
        let plan = r#"[{
          "Plan": {
            "Node Type": "Incremental Sort",
            "Parallel Aware": false,
            "Total Cost": 16767.42,
            "Plan Rows": 200000,
            "Actual Rows": 200000,
            "Actual Loops": 1,
            "Sort Key": ["o.created_at", "o.id DESC"],
            "Presorted Key": ["o.created_at"],
            "Full-sort Groups": {
              "Group Count": 3,
              "Sort Methods Used": ["external merge"],
              "Sort Space Disk": {"Average Sort Space Used": 3000, "Peak Sort Space Used": 5000}
            },
            "Plans": [
              {
                "Node Type": "Index Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Index Name": "orders_created_at_idx",
                "Relation Name": "orders",
                "Alias": "o",
                "Total Cost": 7767.42,
                "Plan Rows": 200000,
                "Actual Rows": 200000,
                "Actual Loops": 1
              }
            ]
          },
          "Execution Time": 250.0
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::SpillingSort]);
        let found = &analysis.findings[0];
        assert!(
            found
                .message
                .starts_with("Incremental Sort on o.created_at, o.id DESC spilled to disk")
        );
        assert!(found.message.contains("4.9 MB"));
        assert!(
            found
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON orders (created_at, id DESC);")
        );
    }

    #[test]
    fn a_filter_on_an_expression_advises_an_expression_index() {
        let plan = SELECTIVE_SEQ_SCAN.replace(
            "(status = 'pending'::text)",
            "(lower(email) = 'user1@example.com'::text)",
        );
        let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
        assert!(
            analysis.findings[0]
                .advice
                .ends_with("CREATE INDEX CONCURRENTLY ON orders ((lower(email)));"),
            "{}",
            analysis.findings[0].advice
        );
    }

    #[test]
    fn a_filter_that_ors_two_columns_advises_an_index_on_each() {
        let plan = SELECTIVE_SEQ_SCAN.replace(
            "(status = 'pending'::text)",
            "((status = 'pending'::text) OR (city = 'city1'::text))",
        );
        let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
        assert!(analysis.findings[0].advice.contains("BitmapOr"));
        assert!(analysis.findings[0].advice.ends_with(
            "CREATE INDEX CONCURRENTLY ON orders (status); CREATE INDEX CONCURRENTLY ON orders (city);"
        ));
    }

    #[test]
    fn a_filter_the_plan_cannot_express_as_sql_gets_general_advice() {
        let plan = SELECTIVE_SEQ_SCAN.replace("(status = 'pending'::text)", "(NOT (hashed SubPlan 1))");
        let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
        assert_eq!(
            analysis.findings[0].advice,
            "Create an index on orders covering the columns of the condition so the filter becomes an index \
             condition."
        );
    }

    #[test]
    fn a_filter_chaining_thousands_of_ors_gets_general_advice_without_overflowing_the_stack() {
        let alternatives: Vec<String> = (0..5000)
            .map(|value| format!("(status = '{value}'::text)"))
            .collect();
        let plan = SELECTIVE_SEQ_SCAN.replace("(status = 'pending'::text)", &alternatives.join(" OR "));
        let analysis = assert_kinds(&plan, &[FindingKind::SelectiveSeqScan]);
        assert!(
            analysis.findings[0]
                .advice
                .contains("covering the columns of the condition")
        );
    }

    #[test]
    fn a_sort_in_memory_is_not_flagged() {
        let in_memory = SPILLING_SORT
            .replace("\"Disk\"", "\"Memory\"")
            .replace("external merge", "quicksort");
        assert_kinds(&in_memory, &[]);
    }

    #[test]
    fn a_hash_split_into_batches_is_flagged() {
        let analysis = assert_kinds(SPILLING_HASH, &[FindingKind::SpillingHash]);
        let found = &analysis.findings[0];
        assert_eq!(found.relation.as_deref(), Some("customers"));
        assert_eq!(
            found.message,
            "Hash of customers was split into 16 batches, spilling all but one to temporary files (peak \
             memory 87 kB per batch)"
        );
        assert!(found.advice.contains("about 1.4 MB"), "{}", found.advice);
        assert!(found.advice.contains("SET LOCAL work_mem = '2MB'"));
    }

    #[test]
    fn a_hash_whose_batches_grew_at_run_time_reports_the_underestimate() {
        let grown = SPILLING_HASH.replace("\"Original Hash Batches\": 16", "\"Original Hash Batches\": 2");
        let analysis = assert_kinds(&grown, &[FindingKind::SpillingHash]);
        assert!(
            analysis.findings[0]
                .message
                .contains("the batches grew from the 2 planned at run time")
        );
    }

    #[test]
    fn a_hash_in_one_batch_is_not_flagged() {
        let one_batch = SPILLING_HASH
            .replace("\"Hash Batches\": 16", "\"Hash Batches\": 1")
            .replace("\"Original Hash Batches\": 16", "\"Original Hash Batches\": 1");
        assert_kinds(&one_batch, &[]);
    }

    #[test]
    fn a_hash_aggregate_that_spills_is_flagged() {
        // SET work_mem = '64kB'; SELECT customer_id, count(*) FROM orders GROUP BY customer_id
        let plan = r#"[{
          "Plan": {
            "Node Type": "Aggregate",
            "Strategy": "Hashed",
            "Partial Mode": "Simple",
            "Parallel Aware": false,
            "Async Capable": false,
            "Startup Cost": 35310.0,
            "Total Cost": 40697.43,
            "Plan Rows": 19993,
            "Plan Width": 12,
            "Actual Rows": 20000,
            "Actual Loops": 1,
            "Group Key": ["customer_id"],
            "Planned Partitions": 4,
            "HashAgg Batches": 85,
            "Peak Memory Usage": 177,
            "Disk Usage": 7080,
            "Plans": [
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Relation Name": "orders",
                "Alias": "orders",
                "Total Cost": 4060.00,
                "Plan Rows": 200000,
                "Actual Rows": 200000,
                "Actual Loops": 1
              }
            ]
          },
          "Planning Time": 0.366,
          "Execution Time": 120.904
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::SpillingHashAggregate]);
        let found = &analysis.findings[0];
        assert_eq!(found.relation.as_deref(), Some("orders"));
        assert_eq!(
            found.message,
            "HashAggregate over orders spilled to disk in 85 batches: 6.9 MB written to temporary files \
             (peak memory 177 kB)"
        );
        assert!(found.advice.contains("SET LOCAL work_mem = '8MB'"));
    }

    #[test]
    fn a_lossy_bitmap_heap_scan_is_flagged() {
        // SET work_mem = '64kB'; SELECT * FROM orders WHERE created_at < '2024-06-01' AND amount > 50
        let plan = r#"[{
          "Plan": {
            "Node Type": "Bitmap Heap Scan",
            "Parallel Aware": false,
            "Async Capable": false,
            "Relation Name": "orders",
            "Alias": "orders",
            "Startup Cost": 3729.45,
            "Total Cost": 8789.45,
            "Plan Rows": 100137,
            "Plan Width": 45,
            "Actual Rows": 99800,
            "Actual Loops": 1,
            "Recheck Cond": "(created_at < '2024-06-01 00:00:00+00'::timestamp with time zone)",
            "Rows Removed by Index Recheck": 0,
            "Filter": "(amount > '50'::numeric)",
            "Rows Removed by Filter": 100200,
            "Exact Heap Blocks": 512,
            "Lossy Heap Blocks": 1548,
            "Plans": [
              {
                "Node Type": "Bitmap Index Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Async Capable": false,
                "Index Name": "orders_created_at_idx",
                "Total Cost": 3704.42,
                "Plan Rows": 200000,
                "Actual Rows": 200000,
                "Actual Loops": 1,
                "Index Cond": "(created_at < '2024-06-01 00:00:00+00'::timestamp with time zone)"
              }
            ]
          },
          "Execution Time": 48.818
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::LossyBitmapScan]);
        assert!(
            analysis.findings[0]
                .message
                .starts_with("Bitmap Heap Scan on orders went lossy on 1,548 of 2,060 heap blocks")
        );
        let scan = &analysis.scans[0];
        assert_eq!(scan.index_name.as_deref(), Some("orders_created_at_idx"));
        assert_eq!(
            scan.index_cond.as_deref(),
            Some("(created_at < '2024-06-01 00:00:00+00'::timestamp with time zone)")
        );
        assert_eq!(analysis.scans.len(), 1, "a Bitmap Index Scan reads no table");
    }

    #[test]
    fn an_index_scan_whose_filter_discards_nearly_all_rows_is_flagged() {
        // SELECT * FROM orders WHERE created_at < '2024-03-01' AND status = 'pending'
        let plan = r#"[{
          "Plan": {
            "Node Type": "Index Scan",
            "Parallel Aware": false,
            "Async Capable": false,
            "Scan Direction": "Forward",
            "Index Name": "orders_created_at_idx",
            "Relation Name": "orders",
            "Alias": "orders",
            "Startup Cost": 0.29,
            "Total Cost": 3600.94,
            "Plan Rows": 61,
            "Plan Width": 45,
            "Actual Rows": 86,
            "Actual Loops": 1,
            "Index Cond": "(created_at < '2024-03-01 00:00:00+00'::timestamp with time zone)",
            "Rows Removed by Index Recheck": 0,
            "Filter": "(status = 'pending'::text)",
            "Rows Removed by Filter": 86313
          },
          "Execution Time": 13.311
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::IndexFilterDiscardsRows]);
        let found = &analysis.findings[0];
        assert!(found.message.contains("fetches 86,399 rows via (created_at <"));
        assert!(found.message.contains("discards 86,313 of them (99.9%)"));
        assert!(
            found
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON orders (status, created_at);"),
            "{}",
            found.advice
        );
    }

    #[test]
    fn a_nested_loop_rescanning_a_seq_scan_for_many_outer_rows_is_flagged() {
        let analysis = assert_kinds(
            NESTED_LOOP_OVER_SEQ_SCAN,
            &[FindingKind::LargeNestedLoop, FindingKind::Misestimate],
        );
        let found = &analysis.findings[0];
        assert_eq!(found.relation.as_deref(), Some("public.customers"));
        assert_eq!(
            found.message,
            "Nested Loop runs Seq Scan on public.customers c for each of its 1,439 outer rows, reading \
             20,000 rows each time, checking join filter (o.city = c.email) on every pair (28,780,000 \
             pairs discarded)"
        );
        assert_eq!(
            found.advice,
            "Create an index on public.customers (email) so each outer row becomes an index lookup instead \
             of a full scan: CREATE INDEX CONCURRENTLY ON public.customers (email);"
        );
    }

    #[test]
    fn a_misestimated_join_advises_analyzing_the_joined_tables() {
        let analysis = analyse(NESTED_LOOP_OVER_SEQ_SCAN);
        let found = finding(&analysis, FindingKind::Misestimate);
        assert_eq!(found.relation, None);
        assert_eq!(found.node_type, "Nested Loop");
        assert_eq!(
            found.message,
            "Nested Loop was estimated at 1,339 rows and returned 0: 1,339× over-estimated"
        );
        assert!(
            found
                .advice
                .starts_with("ANALYZE public.orders, public.customers;")
        );
    }

    #[test]
    fn without_analyze_a_nested_loop_is_judged_on_its_estimated_outer_rows() {
        let plan = r#"[{
          "Plan": {
            "Node Type": "Nested Loop",
            "Parallel Aware": false,
            "Join Type": "Inner",
            "Startup Cost": 0.29,
            "Total Cost": 800778.85,
            "Plan Rows": 1339,
            "Plan Width": 33,
            "Join Filter": "(o.city = c.email)",
            "Plans": [
              {
                "Node Type": "Index Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Index Name": "orders_created_at_idx",
                "Relation Name": "orders",
                "Alias": "o",
                "Total Cost": 56.85,
                "Plan Rows": 1339,
                "Plan Width": 17,
                "Index Cond": "(created_at < '2024-01-02 00:00:00+00'::timestamp with time zone)"
              },
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "Inner",
                "Parallel Aware": false,
                "Relation Name": "customers",
                "Alias": "c",
                "Total Cost": 348.00,
                "Plan Rows": 20000,
                "Plan Width": 25
              }
            ]
          }
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::LargeNestedLoop]);
        let found = &analysis.findings[0];
        assert!(found.message.starts_with(
            "Nested Loop is estimated to run Seq Scan on customers c (about 20,000 rows) for each of its \
             1,339 outer rows"
        ));
        assert!(
            found
                .advice
                .ends_with("CREATE INDEX CONCURRENTLY ON customers (email);")
        );
    }

    #[test]
    fn a_nested_loop_over_a_materialized_table_checked_by_join_filter_is_flagged() {
        let plan = r#"[{
          "Plan": {
            "Node Type": "Nested Loop",
            "Parallel Aware": false,
            "Join Type": "Inner",
            "Total Cost": 601073.27,
            "Plan Rows": 1,
            "Actual Rows": 0,
            "Actual Loops": 1,
            "Join Filter": "(c.country = o.zip)",
            "Rows Removed by Join Filter": 39800000,
            "Plans": [
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Relation Name": "orders",
                "Alias": "o",
                "Total Cost": 4060.00,
                "Plan Rows": 200000,
                "Actual Rows": 200000,
                "Actual Loops": 1
              },
              {
                "Node Type": "Materialize",
                "Parent Relationship": "Inner",
                "Parallel Aware": false,
                "Total Cost": 13.76,
                "Plan Rows": 199,
                "Actual Rows": 199,
                "Actual Loops": 200000,
                "Plans": [
                  {
                    "Node Type": "Index Scan",
                    "Parent Relationship": "Outer",
                    "Parallel Aware": false,
                    "Index Name": "customers_pkey",
                    "Relation Name": "customers",
                    "Alias": "c",
                    "Total Cost": 12.77,
                    "Plan Rows": 199,
                    "Actual Rows": 199,
                    "Actual Loops": 1,
                    "Index Cond": "(id < 200)"
                  }
                ]
              }
            ]
          },
          "Execution Time": 3045.932
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::LargeNestedLoop]);
        let found = &analysis.findings[0];
        assert!(found.message.starts_with(
            "Nested Loop rescans the 199 materialized rows of Index Scan using customers_pkey on customers \
             c for each of its 200,000 outer rows"
        ));
        assert!(
            found
                .advice
                .ends_with("CREATE INDEX CONCURRENTLY ON customers (country);")
        );
    }

    #[test]
    fn a_nested_loop_rescanning_a_handful_of_rows_is_not_flagged() {
        let tiny_inner = NESTED_LOOP_OVER_SEQ_SCAN
            .replace("\"Plan Rows\": 20000,", "\"Plan Rows\": 3,")
            .replace("\"Actual Rows\": 20000,", "\"Actual Rows\": 3,");
        assert!(!kinds(&analyse(&tiny_inner)).contains(&FindingKind::LargeNestedLoop));
    }

    #[test]
    fn a_nested_loop_with_an_index_lookup_inside_has_nothing_to_report() {
        // The inner Index Scan finds a row one time in seven: PostgreSQL 15
        // prints "Actual Rows": 0 per loop, which is no misestimate.
        let plan = r#"[{
          "Plan": {
            "Node Type": "Nested Loop",
            "Parallel Aware": false,
            "Join Type": "Inner",
            "Total Cost": 15339.90,
            "Plan Rows": 3000,
            "Actual Rows": 2990,
            "Actual Loops": 1,
            "Plans": [
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Relation Name": "orders",
                "Alias": "o",
                "Total Cost": 4060.00,
                "Plan Rows": 200000,
                "Actual Rows": 200000,
                "Actual Loops": 1
              },
              {
                "Node Type": "Memoize",
                "Parent Relationship": "Inner",
                "Parallel Aware": false,
                "Total Cost": 0.32,
                "Plan Rows": 1,
                "Actual Rows": 0,
                "Actual Loops": 200000,
                "Cache Key": "o.customer_id",
                "Cache Mode": "logical",
                "Cache Hits": 180000,
                "Cache Misses": 20000,
                "Cache Evictions": 0,
                "Cache Overflows": 0,
                "Peak Memory Usage": 1346,
                "Plans": [
                  {
                    "Node Type": "Index Scan",
                    "Parent Relationship": "Outer",
                    "Parallel Aware": false,
                    "Index Name": "customers_pkey",
                    "Relation Name": "customers",
                    "Alias": "c",
                    "Total Cost": 0.31,
                    "Plan Rows": 1,
                    "Actual Rows": 0,
                    "Actual Loops": 20000,
                    "Index Cond": "((id = o.customer_id) AND (id < 3000))",
                    "Rows Removed by Index Recheck": 0,
                    "Filter": "(country = 'FR'::text)",
                    "Rows Removed by Filter": 0
                  }
                ]
              }
            ]
          },
          "Planning Time": 1.679,
          "Execution Time": 94.933
        }]"#;
        let analysis = assert_kinds(plan, &[]);
        assert_eq!(analysis.scans.len(), 2);
    }

    #[test]
    fn a_primary_key_lookup_has_nothing_to_report() {
        let plan = r#"[{
          "Plan": {
            "Node Type": "Index Scan",
            "Parallel Aware": false,
            "Async Capable": false,
            "Scan Direction": "Forward",
            "Index Name": "orders_pkey",
            "Relation Name": "orders",
            "Alias": "orders",
            "Startup Cost": 0.42,
            "Total Cost": 8.44,
            "Plan Rows": 1,
            "Plan Width": 45,
            "Actual Startup Time": 0.02,
            "Actual Total Time": 0.021,
            "Actual Rows": 1,
            "Actual Loops": 1,
            "Index Cond": "(id = 42)",
            "Rows Removed by Index Recheck": 0
          },
          "Planning Time": 0.531,
          "Triggers": [],
          "Execution Time": 0.082
        }]"#;
        let analysis = assert_kinds(plan, &[]);
        assert_eq!(analysis.scans[0].index_name.as_deref(), Some("orders_pkey"));
        assert_eq!(analysis.scans[0].index_cond.as_deref(), Some("(id = 42)"));
    }

    #[test]
    fn correlated_filter_columns_misestimate_advises_extended_statistics() {
        let analysis = assert_kinds(
            CORRELATED_FILTER,
            &[FindingKind::SelectiveSeqScan, FindingKind::Misestimate],
        );
        let found = &analysis.findings[1];
        assert_eq!(found.relation.as_deref(), Some("orders"));
        assert_eq!(
            found.message,
            "Seq Scan on orders was estimated at 22 rows and returned 2,000: 91× under-estimated"
        );
        assert!(
            found.advice.contains(
                "CREATE STATISTICS orders_city_zip_stats (dependencies, mcv) ON city, zip FROM orders; \
                 ANALYZE orders;"
            ),
            "{}",
            found.advice
        );
        assert!(
            analysis.findings[0]
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON orders (city, zip);")
        );
    }

    #[test]
    fn a_single_column_misestimate_advises_analyze_and_a_statistics_target() {
        let plan = CORRELATED_FILTER.replace(
            "((city = 'city1'::text) AND (zip = 'zip1'::text))",
            "(customer_id = 42)",
        );
        let analysis = analyse(&plan);
        let found = finding(&analysis, FindingKind::Misestimate);
        assert_eq!(
            found.advice,
            "ANALYZE orders; if the estimate stays off, raise the statistics target of customer_id: ALTER \
             TABLE orders ALTER COLUMN customer_id SET STATISTICS 1000; ANALYZE orders;"
        );
    }

    #[test]
    fn a_misestimated_expression_advises_statistics_on_it() {
        let plan = CORRELATED_FILTER.replace(
            "((city = 'city1'::text) AND (zip = 'zip1'::text))",
            "(lower(city) = 'city1'::text)",
        );
        let analysis = analyse(&plan);
        let found = finding(&analysis, FindingKind::Misestimate);
        assert!(
            found
                .advice
                .contains("CREATE STATISTICS orders_lower_city_stats ON (lower(city)) FROM orders;"),
            "{}",
            found.advice
        );
    }

    #[test]
    fn a_node_that_carries_its_childs_misestimate_is_not_reported_again() {
        let plan = r#"[{
          "Plan": {
            "Node Type": "Sort",
            "Parallel Aware": false,
            "Total Cost": 5061.0,
            "Plan Rows": 22,
            "Actual Rows": 2000,
            "Actual Loops": 1,
            "Sort Key": ["id"],
            "Sort Method": "quicksort",
            "Sort Space Used": 300,
            "Sort Space Type": "Memory",
            "Plans": [
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Relation Name": "orders",
                "Alias": "orders",
                "Total Cost": 5060.00,
                "Plan Rows": 22,
                "Actual Rows": 2000,
                "Actual Loops": 1,
                "Filter": "(city = 'city1'::text)",
                "Rows Removed by Filter": 18000
              }
            ]
          },
          "Execution Time": 26.0
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::Misestimate]);
        assert_eq!(analysis.findings[0].node_type, "Seq Scan");
    }

    #[test]
    fn fewer_rows_than_estimated_under_a_limit_are_no_misestimate() {
        // SELECT * FROM orders WHERE created_at > '2024-01-01' ORDER BY created_at, id LIMIT 10
        let plan = r#"[{
          "Plan": {
            "Node Type": "Limit",
            "Parallel Aware": false,
            "Total Cost": 1.31,
            "Plan Rows": 10,
            "Actual Rows": 10,
            "Actual Loops": 1,
            "Plans": [
              {
                "Node Type": "Incremental Sort",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Total Cost": 16767.42,
                "Plan Rows": 200000,
                "Actual Rows": 10,
                "Actual Loops": 1,
                "Sort Key": ["created_at", "id"],
                "Presorted Key": ["created_at"],
                "Full-sort Groups": {
                  "Group Count": 1,
                  "Sort Methods Used": ["quicksort"],
                  "Sort Space Memory": {"Average Sort Space Used": 25, "Peak Sort Space Used": 25}
                },
                "Plans": [
                  {
                    "Node Type": "Index Scan",
                    "Parent Relationship": "Outer",
                    "Parallel Aware": false,
                    "Scan Direction": "Forward",
                    "Index Name": "orders_created_at_idx",
                    "Relation Name": "orders",
                    "Alias": "orders",
                    "Total Cost": 7767.42,
                    "Plan Rows": 200000,
                    "Actual Rows": 11,
                    "Actual Loops": 1,
                    "Index Cond": "(created_at > '2024-01-01 00:00:00+00'::timestamp with time zone)",
                    "Rows Removed by Index Recheck": 0
                  }
                ]
              }
            ]
          },
          "Execution Time": 0.067
        }]"#;
        assert_kinds(plan, &[]);
    }

    #[test]
    fn initplans_and_subplans_are_walked_and_listed_in_plan_order() {
        // EXPLAIN (ANALYZE, VERBOSE) SELECT c.email, (SELECT max(amount) FROM orders) FROM customers c
        // WHERE c.id NOT IN (SELECT customer_id FROM orders WHERE status = 'pending') AND c.id < 50
        let plan = r#"[{
          "Plan": {
            "Node Type": "Index Scan",
            "Parallel Aware": false,
            "Scan Direction": "Forward",
            "Index Name": "customers_pkey",
            "Relation Name": "customers",
            "Schema": "public",
            "Alias": "c",
            "Total Cost": 9129.63,
            "Plan Rows": 24,
            "Actual Rows": 48,
            "Actual Loops": 1,
            "Index Cond": "(c.id < 50)",
            "Rows Removed by Index Recheck": 0,
            "Filter": "(NOT (hashed SubPlan 2))",
            "Rows Removed by Filter": 1,
            "Plans": [
              {
                "Node Type": "Aggregate",
                "Strategy": "Plain",
                "Partial Mode": "Simple",
                "Parent Relationship": "InitPlan",
                "Subplan Name": "InitPlan 1 (returns $0)",
                "Parallel Aware": false,
                "Total Cost": 4560.01,
                "Plan Rows": 1,
                "Actual Rows": 1,
                "Actual Loops": 1,
                "Plans": [
                  {
                    "Node Type": "Seq Scan",
                    "Parent Relationship": "Outer",
                    "Parallel Aware": false,
                    "Relation Name": "orders",
                    "Schema": "public",
                    "Alias": "orders",
                    "Total Cost": 4060.00,
                    "Plan Rows": 200000,
                    "Actual Rows": 200000,
                    "Actual Loops": 1
                  }
                ]
              },
              {
                "Node Type": "Seq Scan",
                "Parent Relationship": "SubPlan",
                "Subplan Name": "SubPlan 2",
                "Parallel Aware": false,
                "Relation Name": "orders",
                "Schema": "public",
                "Alias": "orders_1",
                "Total Cost": 4560.00,
                "Plan Rows": 140,
                "Actual Rows": 200,
                "Actual Loops": 1,
                "Filter": "(orders_1.status = 'pending'::text)",
                "Rows Removed by Filter": 199800
              }
            ]
          },
          "Planning Time": 0.636,
          "Execution Time": 38.892
        }]"#;
        let analysis = assert_kinds(plan, &[FindingKind::SelectiveSeqScan]);
        let scanned: Vec<(&str, Option<&str>)> = analysis
            .scans
            .iter()
            .map(|scan| (scan.relation.as_str(), scan.alias.as_deref()))
            .collect();
        assert_eq!(
            scanned,
            vec![
                ("public.customers", Some("c")),
                ("public.orders", Some("orders")),
                ("public.orders", Some("orders_1")),
            ]
        );
        let found = &analysis.findings[0];
        assert_eq!(found.relation.as_deref(), Some("public.orders"));
        assert!(
            found
                .message
                .starts_with("Seq Scan on public.orders orders_1 reads 200,000 rows")
        );
        assert!(
            found
                .advice
                .ends_with("CREATE INDEX CONCURRENTLY ON public.orders (status);")
        );
    }

    #[test]
    fn a_modify_table_node_is_not_a_scan() {
        let plan = r#"[{
          "Plan": {
            "Node Type": "ModifyTable",
            "Operation": "Update",
            "Parallel Aware": false,
            "Relation Name": "orders",
            "Alias": "orders",
            "Total Cost": 8.44,
            "Plan Rows": 0,
            "Plans": [
              {
                "Node Type": "Index Scan",
                "Parent Relationship": "Outer",
                "Parallel Aware": false,
                "Index Name": "orders_pkey",
                "Relation Name": "orders",
                "Alias": "orders",
                "Total Cost": 8.44,
                "Plan Rows": 1,
                "Index Cond": "(id = 42)"
              }
            ]
          }
        }]"#;
        let analysis = assert_kinds(plan, &[]);
        assert_eq!(analysis.scans.len(), 1);
        assert_eq!(analysis.scans[0].node_type, "Index Scan");
    }

    #[test]
    fn a_node_with_only_its_type_is_analysed_without_panicking() {
        let analysis = analyse(r#"{"Plan": {"Node Type": "Result", "Plans": [{"Node Type": "Seq Scan"}]}}"#);
        assert_eq!(analysis.total_cost, 0.0);
        assert!(!analysis.analyzed);
        assert_eq!(analysis.execution_ms, None);
        assert!(analysis.scans.is_empty());
        assert!(analysis.findings.is_empty());
    }

    fn plan_error(text: &str) -> String {
        analyze_plan(&explain(text), &Thresholds::default())
            .expect_err("the plan is malformed")
            .to_string()
    }

    #[test]
    fn malformed_explain_output_is_an_error_that_says_what_is_wrong() {
        assert_eq!(plan_error("[]"), "the EXPLAIN output is an empty array");
        assert_eq!(
            plan_error(r#""Seq Scan""#),
            "the EXPLAIN output is a string, expected the array or object EXPLAIN (FORMAT JSON) returns"
        );
        assert_eq!(
            plan_error("[42]"),
            "the EXPLAIN output is an array of a number, expected the array or object EXPLAIN (FORMAT \
             JSON) returns"
        );
        assert_eq!(
            plan_error(r#"[{"Planning Time": 0.1}]"#),
            "the plan has no \"Plan\" node"
        );
        assert_eq!(
            plan_error(r#"{"Plan": "Seq Scan"}"#),
            "a plan node is a string, expected an object"
        );
        assert_eq!(
            plan_error(r#"{"Plan": {"Total Cost": 1.0}}"#),
            "a plan node has no \"Node Type\""
        );
        assert_eq!(
            plan_error(r#"{"Plan": {"Node Type": "Seq Scan", "Plan Rows": "many"}}"#),
            "\"Plan Rows\" of the Seq Scan node is a string, expected a number"
        );
        assert_eq!(
            plan_error(r#"{"Plan": {"Node Type": "Hash Join", "Plans": {"Node Type": "Hash"}}}"#),
            "\"Plans\" of the Hash Join node is an object, expected an array"
        );
        assert_eq!(
            plan_error(r#"{"Plan": {"Node Type": "Hash Join", "Plans": [7]}}"#),
            "a plan node is a number, expected an object"
        );
        assert_eq!(
            plan_error(r#"{"Plan": {"Node Type": "Result"}, "Execution Time": "fast"}"#),
            "\"Execution Time\" of the EXPLAIN output is a string, expected a number"
        );
    }

    #[test]
    fn a_plan_nested_beyond_any_real_plan_is_refused_without_overflowing_the_stack() {
        let mut node = serde_json::json!({"Node Type": "Result"});
        for _ in 0..(MAX_PLAN_DEPTH + 5) {
            node = serde_json::json!({"Node Type": "Result", "Plans": [node]});
        }
        let explain = serde_json::json!({ "Plan": node });
        assert_eq!(
            analyze_plan(&explain, &Thresholds::default()),
            Err(PlanError::TooDeep {
                max_depth: MAX_PLAN_DEPTH
            })
        );
    }

    #[test]
    fn a_plan_as_deep_as_allowed_is_analysed() {
        let mut node = serde_json::json!({"Node Type": "Seq Scan", "Relation Name": "t"});
        for _ in 0..MAX_PLAN_DEPTH {
            node = serde_json::json!({"Node Type": "Materialize", "Plans": [node]});
        }
        let explain = serde_json::json!({ "Plan": node });
        let analysis = analyze_plan(&explain, &Thresholds::default()).expect("the plan analyses");
        assert_eq!(analysis.scans.len(), 1);
    }

    #[test]
    fn findings_and_hints_serialize_their_kind_in_snake_case() {
        let analysis = analyse(SELECTIVE_SEQ_SCAN);
        let json = serde_json::to_value(&analysis).expect("the analysis serializes");
        assert_eq!(json["findings"][0]["kind"], "selective_seq_scan");
        assert_eq!(json["execution_ms"], 17.873);
        assert_eq!(
            serde_json::to_value(HintKind::LeadingWildcardLike).expect("the kind serializes"),
            "leading_wildcard_like"
        );
        assert_eq!(
            serde_json::to_value(FindingKind::SpillingHashAggregate).expect("the kind serializes"),
            "spilling_hash_aggregate"
        );
    }

    #[test]
    fn thresholds_deserialize_with_defaults_for_missing_fields() {
        let thresholds: Thresholds =
            serde_json::from_str(r#"{"misestimate_factor": 4}"#).expect("the thresholds deserialize");
        assert_eq!(thresholds.misestimate_factor, 4.0);
        assert_eq!(
            thresholds.seq_scan_rows_min,
            Thresholds::default().seq_scan_rows_min
        );
    }

    // -- stale statistics ---------------------------------------------------

    fn table(name: &str, live_rows: f64, modified_since_analyze: f64, last_analyzed: bool) -> TableStats {
        TableStats {
            table: name.to_owned(),
            live_rows,
            modified_since_analyze,
            last_analyzed,
        }
    }

    #[test]
    fn a_table_modified_by_more_than_the_share_since_its_last_analyze_is_stale() {
        let found = stale_statistics(
            &[table("public.orders", 200_000.0, 90_000.0, true)],
            &Thresholds::default(),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, FindingKind::StaleStatistics);
        assert_eq!(found[0].relation.as_deref(), Some("public.orders"));
        assert_eq!(
            found[0].message,
            "90,000 rows of public.orders were modified since its last ANALYZE, 45% of its 200,000 live \
             rows: the planner estimates from what the table looked like before"
        );
        assert!(found[0].advice.starts_with("ANALYZE public.orders;"));
    }

    #[test]
    fn a_table_never_analyzed_is_stale() {
        let found = stale_statistics(
            &[table("public.events", 50_000.0, 50_000.0, false)],
            &Thresholds::default(),
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("has never been analysed"));
        assert!(found[0].advice.starts_with("ANALYZE public.events;"));
    }

    #[test]
    fn fresh_and_small_tables_are_not_stale() {
        let tables = [
            table("public.orders", 200_000.0, 5_000.0, true),
            table("public.tiny", 40.0, 40.0, true),
            table("public.new_and_empty", 0.0, 0.0, false),
        ];
        assert!(stale_statistics(&tables, &Thresholds::default()).is_empty());
    }

    #[test]
    fn a_table_name_that_needs_quotes_is_quoted_in_the_advice() {
        let found = stale_statistics(
            &[table("public.Order Items", 10_000.0, 9_000.0, true)],
            &Thresholds::default(),
        );
        assert!(found[0].advice.starts_with("ANALYZE public.\"Order Items\";"));
        let found = stale_statistics(
            &[table("public.user", 10_000.0, 9_000.0, true)],
            &Thresholds::default(),
        );
        assert!(found[0].advice.starts_with("ANALYZE public.\"user\";"));
    }

    // -- rewrite hints ------------------------------------------------------

    #[test]
    fn lower_on_an_indexed_column_suggests_an_expression_index() {
        let found = hints("SELECT id FROM users WHERE lower(email) = $1", &["users.email"]);
        assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
        assert_eq!(
            found[0].message,
            "`lower(email) = $1` applies lower() to the indexed column users.email, so an index on the \
             column cannot serve it"
        );
        assert!(
            found[0]
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON users ((lower(email)));")
        );
        assert!(found[0].advice.contains("citext"));
    }

    #[test]
    fn date_on_an_indexed_timestamp_suggests_a_range() {
        let found = hints(
            "SELECT * FROM orders o WHERE date(o.created_at) = $1",
            &["orders.created_at"],
        );
        assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
        assert!(
            found[0]
                .advice
                .contains("`o.created_at >= $1::date AND o.created_at < $1::date + 1`"),
            "{}",
            found[0].advice
        );
    }

    #[test]
    fn date_trunc_and_extract_of_a_year_become_ranges_too() {
        let found = hints(
            "SELECT * FROM orders WHERE $1 = date_trunc('month', created_at)",
            &["orders.created_at"],
        );
        assert!(
            found[0]
                .advice
                .contains("`created_at >= $1 AND created_at < $1 + interval '1 month'`"),
            "{}",
            found[0].advice
        );
        let found = hints(
            "SELECT * FROM orders WHERE extract(year FROM created_at) > $1",
            &["orders.created_at"],
        );
        assert!(
            found[0]
                .advice
                .contains("`created_at >= make_date($1 + 1, 1, 1)`"),
            "{}",
            found[0].advice
        );
    }

    #[test]
    fn a_function_on_a_column_without_an_index_gives_no_hint() {
        assert!(
            hints(
                "SELECT id FROM users WHERE lower(nickname) = $1",
                &["users.email"]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_cast_on_an_indexed_column_suggests_casting_the_other_side() {
        let found = hints("SELECT * FROM orders WHERE id::text = $1", &["orders.id"]);
        assert_eq!(hint_kinds(&found), vec![HintKind::CastOnColumn]);
        assert!(
            found[0]
                .message
                .contains("casts the indexed column orders.id to text")
        );
        assert!(
            found[0]
                .advice
                .contains("casting the other side (`id = $1::<type of id>`)")
        );
        assert!(
            found[0]
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON orders ((id::TEXT));")
        );
        let found = hints(
            "SELECT * FROM orders WHERE CAST(created_at AS date) >= $1",
            &["orders.created_at"],
        );
        assert_eq!(hint_kinds(&found), vec![HintKind::CastOnColumn]);
        assert!(
            found[0].advice.contains("`created_at >= $1::date`"),
            "{}",
            found[0].advice
        );
    }

    #[test]
    fn arithmetic_on_an_indexed_column_is_moved_to_the_other_side() {
        let found = hints(
            "SELECT * FROM orders WHERE created_at + interval '1 day' > now()",
            &["orders.created_at"],
        );
        assert_eq!(hint_kinds(&found), vec![HintKind::ArithmeticOnColumn]);
        assert_eq!(
            found[0].advice,
            "Move the arithmetic to the other side so the column stands alone: `created_at > now() - \
             INTERVAL '1 day'`."
        );
        let found = hints("SELECT * FROM orders WHERE $1 <= amount * 2", &["orders.amount"]);
        assert_eq!(hint_kinds(&found), vec![HintKind::ArithmeticOnColumn]);
        assert!(
            found[0]
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON orders ((amount * 2));")
        );
    }

    #[test]
    fn or_across_two_columns_is_flagged_whether_or_not_they_are_indexed() {
        let found = hints("SELECT * FROM users WHERE email = $1 OR phone = $2", &[]);
        assert_eq!(hint_kinds(&found), vec![HintKind::OrAcrossColumns]);
        assert!(found[0].message.contains("(users.email, users.phone)"));
        assert!(found[0].advice.contains("UNION"));
        assert!(found[0].advice.contains("BitmapOr"));
    }

    #[test]
    fn or_on_one_column_is_not_flagged() {
        assert!(hints("SELECT * FROM users WHERE status = $1 OR status = $2", &[]).is_empty());
        assert!(
            hints(
                "SELECT * FROM t WHERE (a = $1 AND b = $2) OR (a = $3 AND b = $4)",
                &[]
            )
            .is_empty(),
            "the same column pair in every branch is served by one index"
        );
        assert!(
            hints("SELECT * FROM t WHERE (a = $1 AND b = $2) OR a = $3", &[]).is_empty(),
            "a column every branch tests is served by one index"
        );
    }

    #[test]
    fn leading_wildcard_like_suggests_a_trigram_index() {
        let found = hints("SELECT * FROM users WHERE email LIKE '%@example.com'", &[]);
        assert_eq!(hint_kinds(&found), vec![HintKind::LeadingWildcardLike]);
        assert!(
            found[0]
                .advice
                .contains("CREATE INDEX CONCURRENTLY ON users USING gin (email gin_trgm_ops);")
        );
        let found = hints("SELECT * FROM users u WHERE u.name ILIKE '%' || $1 || '%'", &[]);
        assert_eq!(hint_kinds(&found), vec![HintKind::LeadingWildcardLike]);
        assert!(hints("SELECT * FROM users WHERE email LIKE 'admin%'", &[]).is_empty());
    }

    #[test]
    fn not_in_a_subquery_suggests_not_exists() {
        let found = hints(
            "SELECT c.id FROM customers c WHERE c.id NOT IN (SELECT customer_id FROM orders WHERE status = $1)",
            &[],
        );
        assert_eq!(hint_kinds(&found), vec![HintKind::NotInSubquery]);
        assert!(
            found[0]
                .advice
                .contains("`NOT EXISTS (SELECT 1 FROM orders WHERE status = $1 AND customer_id = c.id)`"),
            "{}",
            found[0].advice
        );
        assert!(
            hints(
                "SELECT id FROM customers WHERE id IN (SELECT customer_id FROM orders)",
                &[]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_sargable_query_has_no_hints() {
        let indexed = ["users.email", "users.created_at", "users.id"];
        let sql = "SELECT id, email FROM users WHERE email = $1 AND created_at >= $2 AND id IN ($3, $4) \
                   ORDER BY created_at DESC LIMIT $5";
        assert!(hints(sql, &indexed).is_empty());
    }

    #[test]
    fn hints_are_found_in_joins_subqueries_ctes_updates_and_deletes() {
        let found = hints(
            "SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id OR o.email = u.email \
             WHERE EXISTS (SELECT 1 FROM payments p WHERE p.reference LIKE '%x')",
            &[],
        );
        assert_eq!(
            hint_kinds(&found),
            vec![HintKind::OrAcrossColumns, HintKind::LeadingWildcardLike]
        );
        let found = hints(
            "WITH r AS (SELECT * FROM users WHERE lower(email) = $1) SELECT * FROM r",
            &["users.email"],
        );
        assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
        let found = hints("SELECT * FROM (SELECT * FROM users WHERE email LIKE '%a') t", &[]);
        assert_eq!(hint_kinds(&found), vec![HintKind::LeadingWildcardLike]);
        let found = hints(
            "UPDATE users SET active = false WHERE lower(email) = $1",
            &["users.email"],
        );
        assert_eq!(hint_kinds(&found), vec![HintKind::FunctionOnColumn]);
        let found = hints("DELETE FROM sessions WHERE token::text = $1", &["sessions.token"]);
        assert_eq!(hint_kinds(&found), vec![HintKind::CastOnColumn]);
    }

    #[test]
    fn the_indexed_callback_gets_columns_with_their_aliases_resolved() {
        let asked = RefCell::new(Vec::new());
        let indexed = |column: &str| {
            asked.borrow_mut().push(column.to_owned());
            false
        };
        rewrite_hints(
            "SELECT 1 FROM public.users u JOIN orders o ON o.user_id = u.id \
             WHERE lower(u.email) = $1 AND upper(code) = $2 AND lower(\"Name\") = $3",
            &indexed,
        )
        .expect("the SQL parses");
        assert_eq!(*asked.borrow(), vec!["public.users.email", "code", "Name"]);
    }

    #[test]
    fn a_repeated_predicate_gives_one_hint() {
        let found = hints(
            "SELECT * FROM users WHERE email LIKE '%a' UNION SELECT * FROM users WHERE email LIKE '%a'",
            &[],
        );
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn invalid_sql_is_an_error_with_the_parser_message() {
        let error = rewrite_hints("SELEC * FROM users", &|_| true).expect_err("the SQL is invalid");
        assert!(
            error
                .to_string()
                .starts_with("not valid SQL: Expected: an SQL statement"),
            "{error}"
        );
        assert_eq!(
            rewrite_hints("  -- nothing\n", &|_| true),
            Err(PlanError::NoStatement)
        );
    }

    fn or_chain(terms: usize) -> String {
        let mut sql = String::from("SELECT a FROM t WHERE a = $1");
        for term in 1..terms {
            sql.push_str(&format!(" OR b{term} LIKE '%x'"));
        }
        sql
    }

    #[test]
    fn the_longest_or_chain_accepted_is_analysed_without_overflowing_the_stack() {
        let found = hints(&or_chain(MAX_OPERATORS + 1), &[]);
        assert_eq!(
            found.len(),
            MAX_OPERATORS + 1,
            "one OR hint and a LIKE hint per other column"
        );
    }

    #[test]
    fn a_longer_or_chain_is_refused() {
        assert_eq!(
            rewrite_hints(&or_chain(MAX_OPERATORS + 2), &|_| true),
            Err(PlanError::TooManyOperators {
                found: MAX_OPERATORS + 1,
                max: MAX_OPERATORS
            })
        );
    }

    // -- helpers --------------------------------------------------------------

    #[test]
    fn counts_shares_and_sizes_are_written_for_people() {
        assert_eq!(format_count(28_780_000.0), "28,780,000");
        assert_eq!(format_count(999.4), "999");
        assert_eq!(format_count(-1234.0), "-1,234");
        assert_eq!(format_percent(0.001), "0.1%");
        assert_eq!(format_percent(0.45), "45%");
        assert_eq!(format_percent(0.99996), "99.9%");
        assert_eq!(format_percent(1.0), "100%");
        assert_eq!(format_percent(0.0000001), "<0.01%");
        assert_eq!(format_kb(87.0), "87 kB");
        assert_eq!(format_kb(7056.0), "6.9 MB");
        assert_eq!(suggested_work_mem(14_112.0), "16MB");
        assert_eq!(suggested_work_mem(3_000_000.0), "4GB");
        assert_eq!(suggested_work_mem(f64::INFINITY), "1048576GB");
    }

    #[test]
    fn identifiers_are_quoted_only_when_postgresql_needs_it() {
        assert_eq!(quote_ident_if_needed("created_at"), "created_at");
        assert_eq!(quote_ident_if_needed("Name"), "\"Name\"");
        assert_eq!(quote_ident_if_needed("order"), "\"order\"");
        assert_eq!(quote_ident_if_needed("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_relation("public.orders"), "public.orders");
    }
}
