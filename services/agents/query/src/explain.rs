//! EXPLAIN (FORMAT JSON) of a statement on a target, safely: inside a
//! transaction that is always rolled back, under statement_timeout, and
//! read-only when the statement is executed (ANALYZE).
//!
//! Statements from pg_stat_statements are normalized (`$1` for constants)
//! and cannot be explained as they are before PostgreSQL 16's
//! `EXPLAIN (GENERIC_PLAN)`. The same plan is had on 15 by preparing the
//! statement (PostgreSQL infers the parameters' types) and explaining its
//! execution with NULL parameters under `plan_cache_mode =
//! force_generic_plan`: the generic plan does not depend on the values.

use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

const PARAMETER_COUNT: &str = include_str!("sql/prepared_parameter_count.sql");
const PREPARED_EXISTS: &str = include_str!("sql/prepared_exists.sql");

/// The name the explained statement is prepared under.
const PREPARED: &str = "dbswarm_explain";

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("the statement cannot be explained: {0}")]
    Invalid(String),
    #[error(
        "a statement with parameters ($1, ...) can only be explained without ANALYZE (its values are unknown)"
    )]
    AnalyzeWithParameters,
    #[error("cannot explain: {0}")]
    Database(String),
}

/// How to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExplainOptions {
    /// Run the statement (read-only, rolled back) for actual rows and times.
    pub analyze: bool,
    pub statement_timeout_ms: u64,
}

/// The plan of `sql` as PostgreSQL prints it with FORMAT JSON (the array).
pub async fn explain(pool: &PgPool, sql: &str, options: ExplainOptions) -> Result<Value, ExplainError> {
    let mut conn = pool.acquire().await.map_err(database)?;
    explain_on(&mut conn, sql, options).await
}

/// [`explain`] on one connection: what the session has (HypoPG's
/// hypothetical indexes) is seen by the plan.
pub async fn explain_on(
    conn: &mut PgConnection,
    sql: &str,
    options: ExplainOptions,
) -> Result<Value, ExplainError> {
    let sql = sql.trim().trim_end_matches(';').trim();
    if sql.is_empty() {
        return Err(ExplainError::Invalid("it is empty".into()));
    }
    let parameterized = has_parameters(sql);
    if parameterized && options.analyze {
        return Err(ExplainError::AnalyzeWithParameters);
    }
    let plan = {
        let mut tx = conn.begin().await.map_err(database)?;
        let plan = explain_in(&mut tx, sql, options, parameterized).await;
        // Never keep what the statement did (ANALYZE executes it).
        tx.rollback().await.map_err(database)?;
        plan
    };
    // PREPARE is not undone by rollback, and a failed EXPLAIN leaves it.
    let prepared: bool = sqlx::query_scalar(PREPARED_EXISTS)
        .bind(PREPARED)
        .fetch_one(&mut *conn)
        .await
        .map_err(database)?;
    if prepared {
        sqlx::raw_sql(AssertSqlSafe(format!("DEALLOCATE {PREPARED}")))
            .execute(&mut *conn)
            .await
            .map_err(database)?;
    }
    plan
}

async fn explain_in(
    tx: &mut PgConnection,
    sql: &str,
    options: ExplainOptions,
    parameterized: bool,
) -> Result<Value, ExplainError> {
    let mut settings = format!("SET LOCAL statement_timeout = {}", options.statement_timeout_ms);
    if options.analyze {
        settings.push_str("; SET TRANSACTION READ ONLY");
    }
    sqlx::raw_sql(AssertSqlSafe(settings))
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    if parameterized {
        return explain_generic(tx, sql).await;
    }
    let verb = if options.analyze {
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)"
    } else {
        "EXPLAIN (FORMAT JSON)"
    };
    sqlx::query_scalar(AssertSqlSafe(format!("{verb} {sql}")))
        .fetch_one(&mut *tx)
        .await
        .map_err(statement_error)
}

async fn explain_generic(tx: &mut PgConnection, sql: &str) -> Result<Value, ExplainError> {
    sqlx::raw_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    sqlx::raw_sql(AssertSqlSafe(format!("PREPARE {PREPARED} AS {sql}")))
        .execute(&mut *tx)
        .await
        .map_err(statement_error)?;
    let parameters: i64 = sqlx::query_scalar(PARAMETER_COUNT)
        .bind(PREPARED)
        .fetch_one(&mut *tx)
        .await
        .map_err(database)?;
    let nulls = vec!["NULL"; parameters.max(0) as usize].join(", ");
    let arguments = if nulls.is_empty() {
        String::new()
    } else {
        format!("({nulls})")
    };
    sqlx::query_scalar(AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) EXECUTE {PREPARED}{arguments}"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(statement_error)
}

/// Whether the statement has `$n` placeholders outside string literals,
/// quoted identifiers and comments.
pub fn has_parameters(sql: &str) -> bool {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = PostgreSqlDialect {};
    match Tokenizer::new(&dialect, sql).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .any(|t| matches!(t, Token::Placeholder(p) if p.starts_with('$'))),
        Err(_) => sql.contains('$'),
    }
}

fn database(error: sqlx::Error) -> ExplainError {
    ExplainError::Database(error.to_string())
}

/// An error of the statement itself (syntax, unknown table or column)
/// says so; others are the database's.
fn statement_error(error: sqlx::Error) -> ExplainError {
    match error.as_database_error() {
        Some(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("42") || c.starts_with("22")) =>
        {
            ExplainError::Invalid(format!(
                "{} (SQLSTATE {})",
                db.message(),
                db.code().unwrap_or_default()
            ))
        }
        _ => database(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_outside_strings_only() {
        assert!(has_parameters("SELECT * FROM users WHERE email = $1"));
        assert!(!has_parameters("SELECT '$1' FROM users"));
        assert!(!has_parameters("SELECT 1 -- $1"));
        assert!(!has_parameters("SELECT $$ $1 $$"));
    }
}
