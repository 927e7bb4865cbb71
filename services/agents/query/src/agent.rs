//! The query agent's operations, served by the agents' runtime:
//! `query.analyze`, `query.explain`, `query.detect_regressions` and
//! `query.unused_indexes`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use agents::params::{TargetParams, Text, to_json};
use agents::{OpFuture, Operation, Served, TaskContext, database_error};
use domain::OperationError;
use event_store::clock::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::advisor::{AdvisorConfig, WorkloadStatement, candidates_of, choose, evaluate, writes_per_table};
use crate::candidates::{Catalog, ExistingIndex};
use crate::create::{
    CreateConfig, IndexSpec, build, default_name, drop_index, judge, measure, statements_for,
};
use crate::explain::{ExplainOptions, explain};
use crate::indexes::{read_indexes, report};
use crate::journal::{Journal, RecordedRegression, RecordedSnapshot};
use crate::plan_analysis::{
    PlanAnalysis, TableStats, Thresholds, analyze_plan_with_table_rows, rewrite_hints, stale_statistics,
};
use crate::workload::{RegressionRule, WorkloadError, WorkloadSnapshot, period, read_snapshot, regressions};

/// The agent these operations belong to.
pub const AGENT: &str = "query";

const TABLE_STATISTICS: &str = include_str!("sql/table_statistics.sql");
const CREATE_PG_STAT_STATEMENTS: &str = include_str!("sql/create_pg_stat_statements.sql");
const USER_COLUMNS: &str = include_str!("sql/user_columns.sql");

/// Tables whose statistics are read at most.
const TABLES_MAX: i64 = 10_000;

/// How the query agent works.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryAgentConfig {
    /// Each EXPLAIN of the agent gets this long.
    pub statement_timeout_ms: u64,
    /// The heaviest statements explained by `analyze` and recorded with
    /// each snapshot's plans.
    pub statements_explained_max: usize,
    pub thresholds: Thresholds,
    pub regression: RegressionRule,
    /// Snapshots before the latest one that make up the baseline period.
    pub baseline_snapshots: usize,
    pub advisor: AdvisorConfig,
    /// The heaviest statements the advisor weighs at most.
    pub statements_advised_max: usize,
    pub create: CreateConfig,
    /// How long `create_index` measures the workload after the build, ms
    /// (the task's `measure_ms` overrides it).
    pub measure_window_ms: u64,
}

impl Default for QueryAgentConfig {
    fn default() -> Self {
        QueryAgentConfig {
            statement_timeout_ms: 10_000,
            statements_explained_max: 20,
            thresholds: Thresholds::default(),
            regression: RegressionRule::default(),
            baseline_snapshots: 4,
            advisor: AdvisorConfig::default(),
            statements_advised_max: 50,
            create: CreateConfig::default(),
            measure_window_ms: 30_000,
        }
    }
}

struct Shared {
    journal: Journal,
    config: QueryAgentConfig,
}

/// `(operation, implementation)` of every operation of the query agent.
pub fn operations(journal: Journal, config: QueryAgentConfig) -> Vec<(&'static str, Arc<dyn Served>)> {
    let shared = Arc::new(Shared { journal, config });
    vec![
        ("analyze", Arc::new(Analyze(shared.clone()))),
        ("explain", Arc::new(Explain(shared.clone()))),
        ("recommend_indexes", Arc::new(RecommendIndexes(shared.clone()))),
        ("create_index", Arc::new(CreateIndex(shared.clone()))),
        ("detect_regressions", Arc::new(DetectRegressions(shared))),
        ("unused_indexes", Arc::new(UnusedIndexes)),
    ]
}

/// The target and, optionally, the one table to look at.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableParams {
    pub database: Option<Text>,
    pub table: Option<Text>,
}

/// `query.explain`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainParams {
    pub database: Option<Text>,
    pub sql: Text,
    #[serde(default)]
    pub analyze: bool,
}

/// `query.create_index`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIndexParams {
    pub database: Option<Text>,
    pub table: Text,
    pub columns: Vec<String>,
    pub name: Option<Text>,
    /// How long to measure after the build (default: the agent's window).
    pub measure_ms: Option<u64>,
}

/// The workload, creating pg_stat_statements in the target when the
/// server preloads it but the database has not created it yet.
async fn snapshot(pool: &PgPool) -> Result<WorkloadSnapshot, OperationError> {
    match read_snapshot(pool, now_ms()).await {
        Err(WorkloadError::Unavailable(_)) => {
            sqlx::raw_sql(CREATE_PG_STAT_STATEMENTS)
                .execute(pool)
                .await
                .map_err(|e| {
                    OperationError::failed_precondition(format!(
                        "pg_stat_statements is not available and cannot be created ({e}); add it to shared_preload_libraries, restart PostgreSQL and run CREATE EXTENSION pg_stat_statements"
                    ))
                })?;
            Ok(read_snapshot(pool, now_ms()).await?)
        }
        other => Ok(other?),
    }
}

/// Rows per table (`schema.table`), for judging a sequential scan's
/// selectivity in a plan without ANALYZE.
type TableRows = HashMap<String, f64>;

/// The planner's count where there is one (what its estimates are made
/// from), else the statistics system's (which may lag a bulk load).
fn table_rows(tables: &[TableFacts]) -> TableRows {
    tables
        .iter()
        .map(|t| {
            let rows = if t.planner_rows > 0.0 {
                t.planner_rows
            } else {
                t.stats.live_rows
            };
            (t.stats.table.clone(), rows)
        })
        .collect()
}

/// The generic plan of a statement, analysed; `Err` says why it cannot be.
async fn explained(
    config: &QueryAgentConfig,
    pool: &PgPool,
    sql: &str,
    analyze: bool,
    rows: &TableRows,
) -> Result<(Value, PlanAnalysis), String> {
    let options = ExplainOptions {
        analyze,
        statement_timeout_ms: config.statement_timeout_ms,
    };
    let plan = explain(pool, sql, options).await.map_err(|e| e.to_string())?;
    let analysis =
        analyze_plan_with_table_rows(&plan, &config.thresholds, rows).map_err(|e| e.to_string())?;
    Ok((plan, analysis))
}

/// One line per relation the plan reads: what the plan looks like, to
/// compare before and after.
fn plan_shape(analysis: &PlanAnalysis) -> String {
    let scans: Vec<String> = analysis
        .scans
        .iter()
        .map(|s| match &s.index_name {
            Some(index) => format!("{} using {index} on {}", s.node_type, s.relation),
            None => format!("{} on {}", s.node_type, s.relation),
        })
        .collect();
    format!("{} (cost {:.2})", scans.join("; "), analysis.total_cost)
}

/// Whether a statement can be explained at all (pg_stat_statements also
/// counts utility statements and transaction control).
fn explainable(sql: &str) -> bool {
    let head = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    matches!(
        head.as_str(),
        "SELECT" | "WITH" | "INSERT" | "UPDATE" | "DELETE" | "VALUES" | "TABLE"
    )
}

/// The plans of the heaviest statements of a snapshot, by queryid.
async fn plans_of(shared: &Shared, pool: &PgPool, snapshot: &WorkloadSnapshot) -> BTreeMap<i64, String> {
    let rows = table_statistics(pool)
        .await
        .map(|t| table_rows(&t))
        .unwrap_or_default();
    let mut plans = BTreeMap::new();
    for statement in snapshot
        .statements
        .iter()
        .filter(|s| explainable(&s.query))
        .take(shared.config.statements_explained_max)
    {
        if let Ok((_, analysis)) = explained(&shared.config, pool, &statement.query, false, &rows).await {
            plans.insert(statement.queryid, plan_shape(&analysis));
        }
    }
    plans
}

/// A table's statistics, and the rows the planner thinks it has.
struct TableFacts {
    stats: TableStats,
    planner_rows: f64,
}

async fn table_statistics(pool: &PgPool) -> Result<Vec<TableFacts>, OperationError> {
    let rows: Vec<(String, f64, f64, f64, bool)> = sqlx::query_as(TABLE_STATISTICS)
        .bind(TABLES_MAX)
        .fetch_all(pool)
        .await
        .map_err(|e| database_error(&e, format!("cannot read table statistics: {e}")))?;
    Ok(rows
        .into_iter()
        .map(
            |(table, planner_rows, live_rows, modified_since_analyze, last_analyzed)| TableFacts {
                stats: TableStats {
                    table,
                    live_rows,
                    modified_since_analyze,
                    last_analyzed,
                },
                planner_rows,
            },
        )
        .collect())
}

/// Indexed columns, as `schema.table.column`.
async fn indexed_columns(pool: &PgPool) -> Result<Vec<String>, OperationError> {
    let indexes = read_indexes(pool).await?;
    let mut columns: Vec<String> = indexes
        .into_iter()
        .flat_map(|i| {
            let table = i.table_name;
            i.columns
                .into_iter()
                .filter(|c| !c.is_empty())
                .map(move |c| format!("{table}.{c}"))
        })
        .collect();
    columns.sort();
    columns.dedup();
    Ok(columns)
}

/// Whether `column` (`column`, `table.column` or `schema.table.column`,
/// as the hint finder names it) is indexed.
fn is_indexed(indexed: &[String], column: &str) -> bool {
    indexed
        .iter()
        .any(|full| full == column || full.ends_with(&format!(".{column}")))
}

/// `query.analyze {database, table?}`: the heaviest statements of the
/// workload (pg_stat_statements), each with what its plan shows (selective
/// sequential scans, spilling sorts and hashes, nested loops over large
/// inputs, misestimates) and rewrite hints, plus tables whose statistics
/// are stale (→ ANALYZE). Records the snapshot as an event.
struct Analyze(Arc<Shared>);

impl Operation for Analyze {
    type Params = TableParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: TableParams) -> OpFuture<'a> {
        Box::pin(async move {
            let shared = &self.0;
            let table = params.table.as_deref();
            let (database, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            let scrub = |e: String| url.scrub(&e);
            let scrubbed = |e: OperationError| e.map_message(|m| url.scrub(m));
            let snapshot = snapshot(&pool).await.map_err(scrubbed)?;
            let indexed = indexed_columns(&pool).await.map_err(scrubbed)?;
            let tables = table_statistics(&pool).await.map_err(scrubbed)?;
            let rows = table_rows(&tables);
            let is_indexed = |column: &str| is_indexed(&indexed, column);
            let total_ms: f64 = snapshot.statements.iter().map(|s| s.total_exec_ms).sum();
            let mut statements = Vec::new();
            let mut plans = BTreeMap::new();
            let heaviest = snapshot.statements.iter().filter(|s| explainable(&s.query));
            for statement in heaviest.take(shared.config.statements_explained_max) {
                let hints = rewrite_hints(&statement.query, &is_indexed).unwrap_or_default();
                let (analysis, error) =
                    match explained(&shared.config, &pool, &statement.query, false, &rows).await {
                        Ok((_, analysis)) => (Some(analysis), None),
                        Err(error) => (None, Some(scrub(error))),
                    };
                if let Some(table) = table {
                    let reads_table = analysis.as_ref().is_some_and(|a| {
                        a.scans
                            .iter()
                            .any(|s| s.relation == table || s.relation.ends_with(&format!(".{table}")))
                    });
                    if !reads_table {
                        continue;
                    }
                }
                if let Some(analysis) = &analysis {
                    plans.insert(statement.queryid, plan_shape(analysis));
                }
                statements.push(json!({
                    "queryid": statement.queryid,
                    "query": statement.query,
                    "calls": statement.calls,
                    "mean_ms": statement.mean_exec_ms,
                    "total_ms": statement.total_exec_ms,
                    "share_of_workload": if total_ms > 0.0 { statement.total_exec_ms / total_ms } else { 0.0 },
                    "plan": analysis.as_ref().map(plan_shape),
                    "findings": analysis.as_ref().map(|a| a.findings.clone()).unwrap_or_default(),
                    "hints": hints,
                    "not_explained": error,
                }));
            }
            let stats: Vec<TableStats> = tables.into_iter().map(|t| t.stats).collect();
            let stale = stale_statistics(&stats, &shared.config.thresholds);
            let recorded = RecordedSnapshot { snapshot, plans };
            shared.journal.record_snapshot(&database, &recorded).await?;
            Ok(json!({
                "database": database,
                "statements_in_workload": recorded.snapshot.statements.len(),
                "statements": statements,
                "stale_statistics": stale,
            }))
        })
    }
}

/// `query.explain {database, sql, analyze?}`: the plan of one statement
/// (generic when it has `$n` parameters; with `analyze`, executed
/// read-only and rolled back), what it shows, and rewrite hints.
struct Explain(Arc<Shared>);

impl Operation for Explain {
    type Params = ExplainParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: ExplainParams) -> OpFuture<'a> {
        Box::pin(async move {
            let sql = &*params.sql;
            let analyze = params.analyze;
            let (database, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            // PostgreSQL judges the statement first: its errors are the precise ones.
            let scrubbed = |e: OperationError| e.map_message(|m| url.scrub(m));
            let tables = table_statistics(&pool).await.map_err(scrubbed)?;
            // What PostgreSQL refuses to explain is the statement's fault.
            let (plan, analysis) = explained(&self.0.config, &pool, sql, analyze, &table_rows(&tables))
                .await
                .map_err(|e| OperationError::invalid_argument(url.scrub(&e)))?;
            let indexed = indexed_columns(&pool).await.map_err(scrubbed)?;
            // SQL PostgreSQL accepts that the hint parser cannot read gets no hints, said so.
            let (hints, hints_error) = match rewrite_hints(sql, &|column: &str| is_indexed(&indexed, column))
            {
                Ok(hints) => (hints, None),
                Err(error) => (Vec::new(), Some(error.to_string())),
            };
            Ok(json!({
                "database": database,
                "plan": plan,
                "analysis": analysis,
                "hints": hints,
                "hints_error": hints_error,
            }))
        })
    }
}

/// `query.detect_regressions {database}`: takes a snapshot, compares the
/// period since the previous snapshot with the baseline period before it
/// (Welch's t over each period's calls, a ratio and a floor), records a
/// `QueryRegressed` event per regression with the plan before and after.
struct DetectRegressions(Arc<Shared>);

impl Operation for DetectRegressions {
    type Params = TargetParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: TargetParams) -> OpFuture<'a> {
        Box::pin(async move {
            let shared = &self.0;
            let (database, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            let earlier = shared
                .journal
                .recent_snapshots(&database, shared.config.baseline_snapshots + 1)
                .await?;
            let now = snapshot(&pool)
                .await
                .map_err(|e| e.map_message(|m| url.scrub(m)))?;
            let plans = plans_of(shared, &pool, &now).await;
            let current = RecordedSnapshot { snapshot: now, plans };
            shared.journal.record_snapshot(&database, &current).await?;
            let (Some(first), Some(last)) = (earlier.first(), earlier.last()) else {
                return Ok(
                    json!({"database": database, "regressions": [], "note": "first snapshot recorded; regressions need two more"}),
                );
            };
            if earlier.len() < 2 {
                return Ok(
                    json!({"database": database, "regressions": [], "note": "second snapshot recorded; regressions need one more"}),
                );
            }
            let baseline = period(&first.snapshot, &last.snapshot);
            let recent = period(&last.snapshot, &current.snapshot);
            let found = regressions(&baseline, &recent, &shared.config.regression);
            let mut recorded = Vec::new();
            for regression in found {
                let event = RecordedRegression {
                    plan_before: last.plans.get(&regression.queryid).cloned(),
                    plan_after: current.plans.get(&regression.queryid).cloned(),
                    regression,
                    baseline_from_ms: baseline.from_ms,
                    recent_from_ms: recent.from_ms,
                    recent_to_ms: recent.to_ms,
                };
                shared.journal.record_regression(&database, &event).await?;
                recorded.push(event);
            }
            Ok(json!({
                "database": database,
                "regressions": recorded,
                "baseline_evicted": baseline.evicted || baseline.reset,
                "recent_evicted": recent.evicted || recent.reset,
            }))
        })
    }
}

/// `query.unused_indexes {database}`: indexes never scanned since the
/// statistics were reset (not enforcing a constraint), duplicates (the
/// same leading columns as another index of the table) and invalid ones,
/// with their size and the writes that maintain them.
struct UnusedIndexes;

impl Operation for UnusedIndexes {
    type Params = TargetParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: TargetParams) -> OpFuture<'a> {
        Box::pin(async move {
            let (database, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            let indexes = read_indexes(&pool)
                .await
                .map_err(|e| OperationError::new(e.code(), url.scrub(&e.to_string())))?;
            let mut answer = to_json(&report(&indexes))?;
            answer["database"] = json!(database);
            Ok(answer)
        })
    }
}

/// The catalog the candidate finder resolves columns with.
async fn catalog(pool: &PgPool) -> Result<Catalog, OperationError> {
    let rows: Vec<(String, Vec<String>)> = sqlx::query_as(USER_COLUMNS)
        .bind(TABLES_MAX)
        .fetch_all(pool)
        .await
        .map_err(|e| database_error(&e, format!("cannot read the target's tables: {e}")))?;
    Ok(Catalog::new(rows.into_iter().collect()))
}

/// `query.recommend_indexes {database, table?}`: candidate indexes from
/// the predicates, joins and orderings of the heaviest statements, costed
/// with HypoPG against every statement on their table, chosen over the
/// whole workload (time saved, weighted by calls × mean time, less the
/// cost on the table's writes); each recommendation names the statements
/// it helps with their cost before and after, and its estimated size.
/// Without HypoPG the plans' own advice is given, said so.
struct RecommendIndexes(Arc<Shared>);

impl Operation for RecommendIndexes {
    type Params = TableParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: TableParams) -> OpFuture<'a> {
        Box::pin(async move {
            let (database, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            let mut answer = advise(&pool, &self.0.config, params.table.as_deref())
                .await
                .map_err(|e| e.map_message(|m| url.scrub(m)))?;
            answer["database"] = json!(database);
            Ok(answer)
        })
    }
}

/// What the plans of the statements say to do, without costing anything
/// (the advice when HypoPG is not there).
async fn plan_advice(
    pool: &PgPool,
    config: &QueryAgentConfig,
    statements: &[WorkloadStatement],
) -> Result<Value, OperationError> {
    let rows = table_rows(&table_statistics(pool).await?);
    let mut advice = Vec::new();
    for statement in statements {
        if let Ok((_, analysis)) = explained(config, pool, &statement.query, false, &rows).await {
            for finding in analysis.findings {
                advice.push(json!({"query": statement.query, "kind": finding.kind, "message": finding.message, "advice": finding.advice}));
            }
        }
    }
    Ok(json!(advice))
}

/// The index advice over the workload of the database `pool` connects to
/// (what `query.recommend_indexes` answers), optionally only for `table`.
pub async fn advise(
    pool: &PgPool,
    config: &QueryAgentConfig,
    table: Option<&str>,
) -> Result<Value, OperationError> {
    let snapshot = snapshot(pool).await?;
    let all: Vec<WorkloadStatement> = snapshot
        .statements
        .iter()
        .map(|s| WorkloadStatement {
            queryid: s.queryid,
            query: s.query.clone(),
            calls: s.calls,
            total_ms: s.total_exec_ms,
        })
        .collect();
    let writes = writes_per_table(&all);
    let statements: Vec<WorkloadStatement> = all
        .into_iter()
        .filter(|s| explainable(&s.query))
        .take(config.statements_advised_max)
        .collect();
    let catalog = catalog(pool).await?;
    let existing: Vec<ExistingIndex> = read_indexes(pool)
        .await?
        .into_iter()
        .filter(|i| i.is_valid && i.plain_btree)
        .map(|i| ExistingIndex {
            name: i.name,
            table: i.table_name,
            columns: i.columns,
            unique: i.is_unique,
            primary: i.is_primary,
            valid: i.is_valid,
        })
        .collect();
    let advisor = &config.advisor;
    let (mut candidates, mut rejected) = candidates_of(&statements, &catalog, &existing, advisor);
    if let Some(table) = table {
        let wanted = |t: &str| t == table || t.ends_with(&format!(".{table}"));
        candidates.retain(|c, _| wanted(&c.table));
        rejected.retain(|r| wanted(&r.table));
    }
    while candidates.len() > advisor.candidates_max {
        candidates.pop_last();
    }
    let options = ExplainOptions {
        analyze: false,
        statement_timeout_ms: config.statement_timeout_ms,
    };
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| database_error(&e, e.to_string()))?;
    // Hypothetical indexes live in the session: it is not pooled again.
    conn.close_on_drop();
    let (baseline, evaluations) = match evaluate(&mut conn, &statements, &candidates, options).await {
        Ok(evaluated) => evaluated,
        Err(error @ crate::advisor::AdvisorError::NoHypoPg(_)) => {
            // Without hypothetical indexes nothing is costed; what the
            // plans themselves show is still advice.
            drop(conn);
            let plan_advice = plan_advice(pool, config, &statements).await?;
            return Ok(json!({
                "hypopg": false,
                "error": error.to_string(),
                "recommendations": [],
                "plan_advice": plan_advice,
                "candidates": candidates.keys().collect::<Vec<_>>(),
            }));
        }
        Err(error) => return Err(OperationError::internal(error.to_string())),
    };
    let not_explained: Vec<&str> = statements
        .iter()
        .zip(&baseline)
        .filter(|(_, cost)| cost.is_none())
        .map(|(s, _)| s.query.as_str())
        .collect();
    let not_explained = json!(not_explained);
    let mut advice = choose(&statements, &baseline, &evaluations, &writes, advisor);
    advice.rejected.extend(rejected);
    let mut answer = to_json(&advice)?;
    answer["hypopg"] = json!(true);
    answer["statements_considered"] = json!(statements.len());
    answer["not_explained"] = not_explained;
    Ok(answer)
}

/// Longest measurement window a task may ask for, ms.
const MEASURE_MS_MAX: u64 = 3_600_000;

/// `query.create_index {database, table, columns, name?, measure_ms?}`:
/// builds the index CONCURRENTLY under lock_timeout (a failed build's
/// invalid index dropped), then measures the statements it was meant for
/// over a window (their real mean time per call from pg_stat_statements,
/// before against after) and checks their plans use it; an index the
/// planner does not use or that does not make them faster is dropped
/// again. `IndexCreated` or `IndexDropped` records the numbers and why.
struct CreateIndex(Arc<Shared>);

impl CreateIndex {
    fn spec(params: &CreateIndexParams, catalog: &Catalog) -> Result<IndexSpec, OperationError> {
        let table = &*params.table;
        let table = if table.contains('.') {
            table.to_owned()
        } else {
            format!("public.{table}")
        };
        let known = catalog
            .tables
            .get(&table)
            .ok_or_else(|| OperationError::not_found(format!("there is no table {table}")))?;
        if params.columns.is_empty() || params.columns.len() > 32 {
            return Err(OperationError::invalid_argument(
                "'columns' must be a list of 1 to 32 column names",
            ));
        }
        if let Some(c) = params.columns.iter().find(|c| !known.contains(*c)) {
            return Err(OperationError::not_found(format!(
                "table {table} has no column {c}"
            )));
        }
        let columns = params.columns.clone();
        let name = match &params.name {
            Some(name) => name.to_string(),
            None => default_name(&table, &columns),
        };
        if name.len() > 63 || name.contains('"') {
            return Err(OperationError::invalid_argument(format!(
                "index name '{name}' must be at most 63 bytes, without '\"'"
            )));
        }
        Ok(IndexSpec { table, columns, name })
    }
}

/// Parameter `measure_ms`: how long the index's statements are measured
/// after the build (`default_ms` when not given).
fn measure_window_ms(measure_ms: Option<u64>, default_ms: u64) -> Result<u64, OperationError> {
    match measure_ms {
        None => Ok(default_ms),
        Some(ms) if ms <= MEASURE_MS_MAX => Ok(ms),
        Some(other) => Err(OperationError::invalid_argument(format!(
            "parameter 'measure_ms' must be 0 to {MEASURE_MS_MAX}, not {other}"
        ))),
    }
}

impl Operation for CreateIndex {
    type Params = CreateIndexParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: CreateIndexParams) -> OpFuture<'a> {
        Box::pin(async move {
            let shared = &self.0;
            let window_ms = measure_window_ms(params.measure_ms, shared.config.measure_window_ms)?;
            let (database, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            let scrub = |e: String| url.scrub(&e);
            let scrubbed = |e: OperationError| e.map_message(|m| url.scrub(m));
            let catalog = catalog(&pool).await.map_err(scrubbed)?;
            let index = Self::spec(&params, &catalog)?;
            if crate::create::valid(&pool, &index)
                .await
                .map_err(|e| scrub(e.to_string()))?
                == Some(true)
            {
                return Err(OperationError::new(
                    domain::Code::AlreadyExists,
                    format!("index {}.{} already exists", index.schema(), index.name),
                ));
            }
            let earlier = shared.journal.recent_snapshots(&database, 1).await?.pop();
            let at_build = snapshot(&pool).await.map_err(scrubbed)?;
            let meant_for = statements_for(&index, &at_build, &catalog);
            task.progress(10.0, format!("building {}", index.create_sql()))
                .await;
            build(&pool, &index, &shared.config.create)
                .await
                .map_err(|e| scrub(e.to_string()))?;
            task.progress(50.0, format!("measuring its statements for {window_ms} ms"))
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(window_ms)).await;
            let after = snapshot(&pool).await.map_err(scrubbed)?;
            let tables = table_statistics(&pool).await.map_err(scrubbed)?;
            let rows = table_rows(&tables);
            let mut uses = std::collections::BTreeSet::new();
            for statement in after.statements.iter().filter(|s| meant_for.contains(&s.queryid)) {
                if let Ok((_, analysis)) =
                    explained(&shared.config, &pool, &statement.query, false, &rows).await
                    && analysis
                        .scans
                        .iter()
                        .any(|s| s.index_name.as_deref() == Some(index.name.as_str()))
                {
                    uses.insert(statement.queryid);
                }
            }
            let measurements = measure(
                &meant_for,
                earlier.as_ref().map(|e| &e.snapshot),
                &at_build,
                &after,
                &|queryid| uses.contains(&queryid),
                shared.config.create.calls_min,
            );
            let verdict = judge(&measurements, &shared.config.create);
            if !verdict.keep {
                drop_index(&pool, &index, &shared.config.create)
                    .await
                    .map_err(|e| scrub(e.to_string()))?;
            }
            let outcome = json!({
                "database": database,
                "index": index,
                "create_sql": index.create_sql(),
                "kept": verdict.keep,
                "speedup": verdict.speedup,
                "reason": verdict.reason,
                "measure_ms": window_ms,
                "measurements": measurements,
            });
            shared
                .journal
                .record_index_outcome(&database, verdict.keep, outcome.clone())
                .await?;
            let plans = plans_of(shared, &pool, &after).await;
            shared
                .journal
                .record_snapshot(
                    &database,
                    &RecordedSnapshot {
                        snapshot: after,
                        plans,
                    },
                )
                .await?;
            Ok(outcome)
        })
    }
}
