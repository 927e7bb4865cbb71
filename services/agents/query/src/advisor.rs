//! Index advice over a whole workload, with HypoPG: candidate indexes
//! from each statement's predicates, joins and orderings
//! ([`crate::candidates`]), each costed as a hypothetical index against
//! every statement on its table (generic plans), then chosen greedily by
//! the workload time they save (a statement's weight is its calls × mean
//! time, its saving the share of plan cost the index removes) less the
//! write cost an index adds to its table's writes. Candidates an existing
//! index already covers (same leading columns) are not considered.
//!
//! [`choose`] is the pure choice; [`evaluate`] the IO with HypoPG.

use std::collections::{BTreeMap, HashMap};

use agents::sql::quote_ident;
use pg_query::NodeEnum;
use serde::Serialize;
use sqlx::PgConnection;

use crate::candidates::{Candidate, Catalog, ExistingIndex, candidates, covered_by, shape};
use crate::explain::{ExplainOptions, explain_on};

const CREATE_HYPOPG: &str = include_str!("sql/create_hypopg.sql");
const HYPOTHETICAL_INDEX: &str = include_str!("sql/hypopg_create_index.sql");
const HYPOTHETICAL_DROP: &str = include_str!("sql/hypopg_drop_index.sql");
const HYPOTHETICAL_RESET: &str = include_str!("sql/hypopg_reset.sql");

/// How advice is given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdvisorConfig {
    /// Key columns of a candidate index at most.
    pub columns_max: usize,
    /// Indexes recommended at once at most.
    pub indexes_max: usize,
    /// Candidates costed at most (the most used tables' first).
    pub candidates_max: usize,
    /// A statement counts as helped when its plan cost drops by at least this share.
    pub improvement_min: f64,
    /// Estimated cost of maintaining one more index per row written, ms.
    pub write_cost_ms_per_row: f64,
}

impl Default for AdvisorConfig {
    fn default() -> Self {
        AdvisorConfig {
            columns_max: 3,
            indexes_max: 20,
            candidates_max: 100,
            improvement_min: 0.2,
            write_cost_ms_per_row: 0.01,
        }
    }
}

/// A statement of the workload, as the advisor weighs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadStatement {
    pub queryid: i64,
    pub query: String,
    pub calls: i64,
    /// Time spent in it (calls × mean), ms: its weight.
    pub total_ms: f64,
}

/// A candidate with the cost of each statement it was tried on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub candidate: Candidate,
    /// `(statement index, plan cost with the hypothetical index)`.
    pub costs: Vec<(usize, f64)>,
    /// HypoPG's estimate of the index's size.
    pub size_bytes: i64,
}

/// How one statement fares with a recommended index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryGain {
    pub queryid: i64,
    pub query: String,
    pub cost_before: f64,
    pub cost_after: f64,
    /// Share of the plan cost removed.
    pub improvement: f64,
}

/// An index worth creating, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub table: String,
    pub columns: Vec<String>,
    /// The statement that creates it without blocking writes.
    pub create_sql: String,
    pub estimated_size_bytes: i64,
    /// Workload time it is estimated to save (of the time the statements
    /// took since the counters were reset), ms.
    pub saved_ms: f64,
    /// What maintaining it costs the table's writes over the same time, ms.
    pub write_cost_ms: f64,
    pub queries: Vec<QueryGain>,
}

/// A candidate that was not recommended, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    pub table: String,
    pub columns: Vec<String>,
    pub reason: String,
}

/// The advice over a workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub recommendations: Vec<Recommendation>,
    pub rejected: Vec<Rejected>,
}

/// `schema.table` quoted part by part.
fn quote_table(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", quote_ident(schema), quote_ident(name)),
        None => quote_ident(table),
    }
}

/// `CREATE INDEX [CONCURRENTLY] ON table (columns)`.
pub fn create_index_sql(candidate: &Candidate, concurrently: bool) -> String {
    let columns: Vec<String> = candidate.columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "CREATE INDEX {}ON {} ({})",
        if concurrently { "CONCURRENTLY " } else { "" },
        quote_table(&candidate.table),
        columns.join(", ")
    )
}

/// The table an INSERT, UPDATE or DELETE writes, `schema.table` (public
/// when unqualified), as PostgreSQL's parser reads the statement (names
/// folded as PostgreSQL folds them).
pub fn written_table(sql: &str) -> Option<String> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let statement = parsed.protobuf.stmts.first()?.stmt.as_ref()?.node.as_ref()?;
    let relation = match statement {
        NodeEnum::InsertStmt(insert) => insert.relation.as_ref()?,
        NodeEnum::UpdateStmt(update) => update.relation.as_ref()?,
        NodeEnum::DeleteStmt(delete) => delete.relation.as_ref()?,
        _ => return None,
    };
    let schema = if relation.schemaname.is_empty() {
        "public"
    } else {
        &relation.schemaname
    };
    Some(format!("{schema}.{}", relation.relname))
}

/// Rows written per table by the workload (the calls of its INSERT,
/// UPDATE and DELETE statements): what every extra index makes dearer.
pub fn writes_per_table(statements: &[WorkloadStatement]) -> HashMap<String, f64> {
    let mut writes = HashMap::new();
    for statement in statements {
        if let Some(table) = written_table(&statement.query) {
            *writes.entry(table).or_insert(0.0) += statement.calls as f64;
        }
    }
    writes
}

/// Candidates per statement (deduplicated, those an existing index covers
/// set aside), and for each candidate the statements on its table.
pub fn candidates_of(
    statements: &[WorkloadStatement],
    catalog: &Catalog,
    existing: &[ExistingIndex],
    config: &AdvisorConfig,
) -> (BTreeMap<Candidate, Vec<usize>>, Vec<Rejected>) {
    let mut found: BTreeMap<Candidate, Vec<usize>> = BTreeMap::new();
    let mut tables_of: Vec<Vec<String>> = Vec::with_capacity(statements.len());
    for (index, statement) in statements.iter().enumerate() {
        let Ok(query_shape) = shape(&statement.query, catalog) else {
            tables_of.push(Vec::new());
            continue;
        };
        tables_of.push(query_shape.tables.iter().map(|t| t.table.clone()).collect());
        for candidate in candidates(&query_shape, config.columns_max) {
            found.entry(candidate).or_default().push(index);
        }
    }
    let mut rejected = Vec::new();
    let mut kept = BTreeMap::new();
    for (candidate, _) in found {
        if let Some(index) = covered_by(&candidate, existing) {
            rejected.push(Rejected {
                table: candidate.table.clone(),
                columns: candidate.columns.clone(),
                reason: format!("index {} already has these leading columns", index.name),
            });
            continue;
        }
        // Every statement reading the table is costed, not only those it
        // came from: an index helps (or not) wherever the table is read.
        let on_table: Vec<usize> = tables_of
            .iter()
            .enumerate()
            .filter(|(_, tables)| tables.contains(&candidate.table))
            .map(|(i, _)| i)
            .collect();
        kept.insert(candidate, on_table);
    }
    (kept, rejected)
}

/// Chooses indexes greedily: each round takes the candidate that saves the
/// most workload time (beyond what the indexes already chosen save) net
/// of its write cost, until none saves anything or `indexes_max` is reached.
pub fn choose(
    statements: &[WorkloadStatement],
    baseline: &[Option<f64>],
    evaluations: &[Evaluation],
    writes: &HashMap<String, f64>,
    config: &AdvisorConfig,
) -> Advice {
    let mut best: Vec<Option<f64>> = baseline.to_vec();
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < config.indexes_max {
        let round = evaluations
            .iter()
            .enumerate()
            .filter(|(i, _)| !chosen.contains(i))
            .map(|(i, e)| (i, net_saving(e, statements, baseline, &best, writes, config)))
            .filter(|(_, net)| *net > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((index, _)) = round else {
            break;
        };
        for &(statement, cost) in &evaluations[index].costs {
            if helps(baseline[statement], cost, config) {
                best[statement] = Some(best[statement].map_or(cost, |b| b.min(cost)));
            }
        }
        chosen.push(index);
    }
    let recommendations = chosen
        .iter()
        .map(|&i| recommendation(&evaluations[i], statements, baseline, writes, config))
        .collect();
    let rejected = evaluations
        .iter()
        .enumerate()
        .filter(|(i, _)| !chosen.contains(i))
        .map(|(_, e)| {
            let still_worth = net_saving(e, statements, baseline, &best, writes, config) > 0.0;
            let reason = if still_worth {
                format!(
                    "it would still save time, but at most {} indexes are recommended at once (indexes_max)",
                    config.indexes_max
                )
            } else {
                rejection(e, statements, baseline, writes, config)
            };
            Rejected {
                table: e.candidate.table.clone(),
                columns: e.candidate.columns.clone(),
                reason,
            }
        })
        .collect();
    Advice {
        recommendations,
        rejected,
    }
}

fn helps(baseline: Option<f64>, cost: f64, config: &AdvisorConfig) -> bool {
    baseline.is_some_and(|before| before > 0.0 && (before - cost) / before >= config.improvement_min)
}

fn write_cost_ms(evaluation: &Evaluation, writes: &HashMap<String, f64>, config: &AdvisorConfig) -> f64 {
    writes.get(&evaluation.candidate.table).copied().unwrap_or(0.0) * config.write_cost_ms_per_row
}

/// Workload ms the candidate saves beyond `best`, less its write cost.
fn net_saving(
    evaluation: &Evaluation,
    statements: &[WorkloadStatement],
    baseline: &[Option<f64>],
    best: &[Option<f64>],
    writes: &HashMap<String, f64>,
    config: &AdvisorConfig,
) -> f64 {
    let saved: f64 = evaluation
        .costs
        .iter()
        .filter(|(s, cost)| helps(baseline[*s], *cost, config))
        .map(|&(s, cost)| {
            let (Some(before), Some(current)) = (baseline[s], best[s]) else {
                return 0.0;
            };
            let extra_share = ((current - cost) / before).max(0.0);
            statements[s].total_ms * extra_share
        })
        .sum();
    saved - write_cost_ms(evaluation, writes, config)
}

fn recommendation(
    evaluation: &Evaluation,
    statements: &[WorkloadStatement],
    baseline: &[Option<f64>],
    writes: &HashMap<String, f64>,
    config: &AdvisorConfig,
) -> Recommendation {
    let queries: Vec<QueryGain> = evaluation
        .costs
        .iter()
        .filter(|(s, cost)| helps(baseline[*s], *cost, config))
        .filter_map(|&(s, cost)| {
            let before = baseline[s]?;
            Some(QueryGain {
                queryid: statements[s].queryid,
                query: statements[s].query.clone(),
                cost_before: before,
                cost_after: cost,
                improvement: (before - cost) / before,
            })
        })
        .collect();
    let saved_ms = queries
        .iter()
        .zip(
            evaluation
                .costs
                .iter()
                .filter(|(s, cost)| helps(baseline[*s], *cost, config)),
        )
        .map(|(gain, (s, _))| statements[*s].total_ms * gain.improvement)
        .sum();
    Recommendation {
        table: evaluation.candidate.table.clone(),
        columns: evaluation.candidate.columns.clone(),
        create_sql: create_index_sql(&evaluation.candidate, true),
        estimated_size_bytes: evaluation.size_bytes,
        saved_ms,
        write_cost_ms: write_cost_ms(evaluation, writes, config),
        queries,
    }
}

fn rejection(
    evaluation: &Evaluation,
    statements: &[WorkloadStatement],
    baseline: &[Option<f64>],
    writes: &HashMap<String, f64>,
    config: &AdvisorConfig,
) -> String {
    let helped = evaluation
        .costs
        .iter()
        .filter(|(s, cost)| helps(baseline[*s], *cost, config))
        .count();
    if helped == 0 {
        return format!(
            "no statement's plan cost drops by {:.0}% or more with it (the planner would not use it, or barely gains)",
            config.improvement_min * 100.0
        );
    }
    let all = net_saving(evaluation, statements, baseline, baseline, writes, config);
    if all <= 0.0 {
        return "what it saves does not pay for its cost on the table's writes".to_owned();
    }
    "an index chosen before it already gives the statements it helps most of its gain".to_owned()
}

/// Why HypoPG could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AdvisorError {
    #[error(
        "HypoPG is not available in this database ({0}); install postgresql-15-hypopg and run CREATE EXTENSION hypopg to cost candidate indexes"
    )]
    NoHypoPg(String),
    #[error("cannot cost candidate indexes: {0}")]
    Database(String),
}

/// Costs the baseline and every candidate (as a hypothetical index, on
/// this connection only) against the statements on its table.
pub async fn evaluate(
    conn: &mut PgConnection,
    statements: &[WorkloadStatement],
    candidates: &BTreeMap<Candidate, Vec<usize>>,
    options: ExplainOptions,
) -> Result<(Vec<Option<f64>>, Vec<Evaluation>), AdvisorError> {
    sqlx::raw_sql(CREATE_HYPOPG)
        .execute(&mut *conn)
        .await
        .map_err(|e| AdvisorError::NoHypoPg(e.to_string()))?;
    let database = |e: sqlx::Error| AdvisorError::Database(e.to_string());
    sqlx::raw_sql(HYPOTHETICAL_RESET)
        .execute(&mut *conn)
        .await
        .map_err(database)?;
    let mut baseline = Vec::with_capacity(statements.len());
    for statement in statements {
        baseline.push(plan_cost(conn, &statement.query, options).await);
    }
    let mut evaluations = Vec::new();
    for (candidate, on_table) in candidates {
        let (indexrelid, size_bytes): (i64, i64) = sqlx::query_as(HYPOTHETICAL_INDEX)
            .bind(create_index_sql(candidate, false))
            .fetch_one(&mut *conn)
            .await
            .map_err(database)?;
        let mut costs = Vec::new();
        for &statement in on_table {
            if let Some(cost) = plan_cost(conn, &statements[statement].query, options).await {
                costs.push((statement, cost));
            }
        }
        sqlx::query(HYPOTHETICAL_DROP)
            .bind(indexrelid)
            .execute(&mut *conn)
            .await
            .map_err(database)?;
        evaluations.push(Evaluation {
            candidate: candidate.clone(),
            costs,
            size_bytes,
        });
    }
    Ok((baseline, evaluations))
}

/// The generic plan's total cost; none when the statement cannot be explained.
async fn plan_cost(conn: &mut PgConnection, sql: &str, options: ExplainOptions) -> Option<f64> {
    let plan = explain_on(conn, sql, options).await.ok()?;
    plan.get(0)?.get("Plan")?.get("Total Cost")?.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(queryid: i64, query: &str, calls: i64, total_ms: f64) -> WorkloadStatement {
        WorkloadStatement {
            queryid,
            query: query.into(),
            calls,
            total_ms,
        }
    }

    fn candidate(table: &str, columns: &[&str]) -> Candidate {
        Candidate {
            table: table.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn evaluation(columns: &[&str], costs: &[(usize, f64)]) -> Evaluation {
        Evaluation {
            candidate: candidate("public.users", columns),
            costs: costs.to_vec(),
            size_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_index_that_saves_the_most_time_is_chosen_and_one_that_adds_nothing_after_it_is_not() {
        let statements = [
            statement(1, "SELECT * FROM users WHERE email = $1", 1000, 5000.0),
            statement(
                2,
                "SELECT * FROM users WHERE tenant_id = $1 AND created_at > $2",
                100,
                2000.0,
            ),
        ];
        let baseline = [Some(1000.0), Some(1000.0)];
        let evaluations = [
            evaluation(&["email"], &[(0, 8.0), (1, 1000.0)]),
            evaluation(&["tenant_id", "created_at"], &[(0, 1000.0), (1, 50.0)]),
            evaluation(&["tenant_id"], &[(0, 1000.0), (1, 120.0)]),
            evaluation(&["created_at"], &[(0, 1000.0), (1, 990.0)]),
        ];
        let advice = choose(
            &statements,
            &baseline,
            &evaluations,
            &HashMap::new(),
            &AdvisorConfig::default(),
        );
        let chosen: Vec<Vec<String>> = advice.recommendations.iter().map(|r| r.columns.clone()).collect();
        assert_eq!(
            chosen,
            [
                vec!["email".to_owned()],
                vec!["tenant_id".to_owned(), "created_at".to_owned()]
            ]
        );
        assert_eq!(
            advice.recommendations[0].create_sql,
            r#"CREATE INDEX CONCURRENTLY ON "public"."users" ("email")"#
        );
        assert!((advice.recommendations[0].queries[0].improvement - 0.992).abs() < 1e-9);
        let reasons: BTreeMap<String, String> = advice
            .rejected
            .iter()
            .map(|r| (r.columns.join(","), r.reason.clone()))
            .collect();
        assert!(reasons["tenant_id"].contains("chosen before"), "{reasons:?}");
        assert!(
            reasons["created_at"].contains("no statement's plan cost drops"),
            "{reasons:?}"
        );
    }

    #[test]
    fn candidates_left_out_by_the_limit_say_so() {
        let statements = [
            statement(1, "SELECT * FROM users WHERE email = $1", 1000, 5000.0),
            statement(2, "SELECT * FROM users WHERE name = $1", 1000, 4000.0),
        ];
        let evaluations = [
            evaluation(&["email"], &[(0, 8.0)]),
            evaluation(&["name"], &[(1, 8.0)]),
        ];
        let config = AdvisorConfig {
            indexes_max: 1,
            ..AdvisorConfig::default()
        };
        let advice = choose(
            &statements,
            &[Some(1000.0), Some(1000.0)],
            &evaluations,
            &HashMap::new(),
            &config,
        );
        assert_eq!(advice.recommendations.len(), 1);
        assert!(
            advice.rejected[0].reason.contains("at most 1 indexes"),
            "{:?}",
            advice.rejected
        );
    }

    #[test]
    fn an_index_on_a_write_heavy_table_must_save_more_than_it_costs_the_writes() {
        let statements = [
            statement(1, "SELECT * FROM users WHERE email = $1", 10, 20.0),
            statement(2, "INSERT INTO users (email) VALUES ($1)", 1_000_000, 30_000.0),
        ];
        let writes = writes_per_table(&statements);
        assert_eq!(writes["public.users"], 1_000_000.0);
        let advice = choose(
            &statements,
            &[Some(1000.0), None],
            &[evaluation(&["email"], &[(0, 8.0)])],
            &writes,
            &AdvisorConfig::default(),
        );
        assert!(advice.recommendations.is_empty());
        assert!(
            advice.rejected[0].reason.contains("does not pay"),
            "{:?}",
            advice.rejected
        );
    }

    #[test]
    fn written_tables_are_found_for_inserts_updates_and_deletes() {
        assert_eq!(
            written_table("INSERT INTO users (a) VALUES ($1)").as_deref(),
            Some("public.users")
        );
        assert_eq!(
            written_table("UPDATE app.users SET a = $1 WHERE id = $2").as_deref(),
            Some("app.users")
        );
        assert_eq!(
            written_table("DELETE FROM users WHERE id = $1").as_deref(),
            Some("public.users")
        );
        assert_eq!(written_table("SELECT 1"), None);
    }

    #[test]
    fn written_tables_are_named_as_postgres_folds_them() {
        assert_eq!(
            written_table("WITH n AS (SELECT 1) UPDATE \"App\".\"Users\" SET a = $1").as_deref(),
            Some("App.Users")
        );
        assert_eq!(
            written_table("INSERT INTO Orders SELECT * FROM staging ON CONFLICT DO NOTHING").as_deref(),
            Some("public.orders")
        );
        assert_eq!(written_table("DELETE FROM"), None);
    }

    #[test]
    fn candidates_covered_by_an_existing_index_are_set_aside() {
        let catalog = Catalog::new(BTreeMap::from([(
            "public.users".to_owned(),
            vec!["id".to_owned(), "email".to_owned(), "tenant_id".to_owned()],
        )]));
        let existing = [ExistingIndex {
            name: "public.users_email".into(),
            table: "public.users".into(),
            columns: vec!["email".into()],
            unique: false,
            primary: false,
            valid: true,
        }];
        let statements = [
            statement(1, "SELECT * FROM users WHERE email = $1", 1, 1.0),
            statement(2, "SELECT * FROM users WHERE tenant_id = $1", 1, 1.0),
        ];
        let (kept, rejected) = candidates_of(&statements, &catalog, &existing, &AdvisorConfig::default());
        assert_eq!(
            kept.keys().cloned().collect::<Vec<_>>(),
            [candidate("public.users", &["tenant_id"])]
        );
        assert_eq!(
            kept[&candidate("public.users", &["tenant_id"])],
            [0, 1],
            "every statement on the table"
        );
        assert!(rejected[0].reason.contains("public.users_email"), "{rejected:?}");
    }
}
