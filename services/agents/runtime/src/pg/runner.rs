//! Runs SQL on a target: every statement under `lock_timeout` and
//! `statement_timeout`, retried with backoff when a lock is not granted in
//! time (so a migration or an index build waits behind a long transaction
//! instead of making every writer queue behind it).

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use super::LockLevel;
use super::catalog::index_valid;
use crate::sql::quote_ident as quote;

/// How DDL runs on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// A statement waits this long for a lock before giving up (and
    /// releasing the writers queued behind it).
    pub lock_timeout_ms: u64,
    /// Catalog DDL, scripts and each backfill batch get this long.
    pub statement_timeout_ms: u64,
    /// Concurrent index builds and constraint validations get this long.
    pub build_timeout_ms: u64,
    /// Attempts at a statement whose lock is not granted.
    pub attempts_max: u32,
    /// Backoff after the first lock timeout; doubles, at most 5 s, half jittered.
    pub retry_backoff_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            lock_timeout_ms: 1_000,
            statement_timeout_ms: 60_000,
            build_timeout_ms: 3_600_000,
            attempts_max: 20,
            retry_backoff_ms: 100,
        }
    }
}

/// Why a statement did not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "{what}: the lock was not granted within lock_timeout ({lock_timeout_ms} ms) in {attempts} attempts; a long transaction holds the table"
    )]
    LockNotGranted {
        what: String,
        attempts: u32,
        lock_timeout_ms: u64,
    },
    #[error("{what}: {error}")]
    Failed { what: String, error: String },
}

impl ExecError {
    /// `error` of the statement described as `what`.
    pub fn failed(what: &str, error: &sqlx::Error) -> ExecError {
        ExecError::Failed {
            what: what.to_owned(),
            error: describe(error),
        }
    }
}

/// A database error with its SQLSTATE, detail and hint; others as they are.
pub fn describe(error: &sqlx::Error) -> String {
    match error.as_database_error() {
        Some(db) => {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().unwrap_or_default());
            if let Some(detail) = pg.and_then(|p| p.detail()) {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = pg.and_then(|p| p.hint()) {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => error.to_string(),
    }
}

/// Lock timeouts, deadlocks and serialization failures: worth another try.
fn retryable(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|db| db.code());
    matches!(code.as_deref(), Some("55P03" | "40P01" | "40001"))
}

fn backoff(timeouts: &Timeouts, attempt: u32) -> Duration {
    let base = timeouts
        .retry_backoff_ms
        .saturating_mul(1 << attempt.min(16))
        .min(5_000);
    let jitter =
        (u64::from(std::process::id()) ^ u64::from(attempt).wrapping_mul(0x9e37_79b9)) % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// A transaction whose statements wait at most `lock_timeout_ms` for a
/// lock and run at most `statement_timeout_ms`.
pub async fn begin(
    pool: &PgPool,
    lock_timeout_ms: u64,
    statement_timeout_ms: u64,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = {lock_timeout_ms}; SET LOCAL statement_timeout = {statement_timeout_ms}"
    )))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Runs `attempt` until it succeeds, fails for another reason than a lock
/// not granted in time (or a deadlock or serialization failure), or has
/// been tried `attempts_max` times, sleeping `backoff` between tries. Each
/// try must start afresh (a new transaction or session settings), since
/// the failed one was rolled back.
pub async fn retrying<T, F, Fut>(timeouts: &Timeouts, what: &str, mut attempt: F) -> Result<T, ExecError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if retryable(&error) && tries < timeouts.attempts_max => {
                tracing::info!(what, attempt = tries, error = %describe(&error), "lock not granted; retrying");
                tokio::time::sleep(backoff(timeouts, tries)).await;
            }
            Err(error) if retryable(&error) => {
                return Err(ExecError::LockNotGranted {
                    what: what.to_owned(),
                    attempts: tries,
                    lock_timeout_ms: timeouts.lock_timeout_ms,
                });
            }
            Err(error) => return Err(ExecError::failed(what, &error)),
        }
    }
}

/// Runs `statements` in one transaction, again while a lock is not granted.
pub async fn run_transaction(
    pool: &PgPool,
    timeouts: &Timeouts,
    what: &str,
    statements: &[String],
    statement_timeout_ms: u64,
) -> Result<(), ExecError> {
    retrying(timeouts, what, || async move {
        let mut tx = begin(pool, timeouts.lock_timeout_ms, statement_timeout_ms).await?;
        for statement in statements {
            sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })
    .await
}

/// Runs one statement that PostgreSQL refuses inside a transaction block
/// (CREATE INDEX CONCURRENTLY...), with the timeouts set for its session
/// and reset before the connection goes back to the pool.
pub async fn run_outside_transaction(
    pool: &PgPool,
    timeouts: &Timeouts,
    what: &str,
    statement: &str,
    statement_timeout_ms: u64,
) -> Result<(), ExecError> {
    retrying(timeouts, what, || async move {
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET lock_timeout = {}; SET statement_timeout = {statement_timeout_ms}",
            timeouts.lock_timeout_ms
        )))
        .execute(&mut *conn)
        .await?;
        let result = sqlx::raw_sql(AssertSqlSafe(statement.to_owned()))
            .execute(&mut *conn)
            .await;
        sqlx::raw_sql("RESET lock_timeout; RESET statement_timeout")
            .execute(&mut *conn)
            .await?;
        result.map(|_| ())
    })
    .await
}

/// A statement (or script) of a phase and whether it may run inside a
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub description: String,
    pub sql: String,
    /// False for CREATE/DROP INDEX CONCURRENTLY.
    pub transactional: bool,
    /// The index a concurrent build creates, `(schema, name)`: a build
    /// that fails leaves it invalid, and it is dropped and built again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builds_index: Option<(String, String)>,
    /// The strongest lock it takes on the migrated table (held only for
    /// the catalog change unless it is a build or validation, which take
    /// a lock that lets writers go on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockLevel>,
}

/// Runs a step: in a transaction, or alone; a concurrent index build
/// whose index is left invalid (by this or an earlier failed attempt) is
/// dropped and built once more.
pub async fn run_step(pool: &PgPool, timeouts: &Timeouts, step: &Step) -> Result<(), ExecError> {
    if step.transactional {
        return run_transaction(
            pool,
            timeouts,
            &step.description,
            std::slice::from_ref(&step.sql),
            timeouts.statement_timeout_ms,
        )
        .await;
    }
    let build = || {
        run_outside_transaction(
            pool,
            timeouts,
            &step.description,
            &step.sql,
            timeouts.build_timeout_ms,
        )
    };
    let Some((schema, index)) = &step.builds_index else {
        return build().await;
    };
    for _ in 0..2 {
        let valid = index_valid(pool, schema, index, &step.description).await?;
        if valid == Some(false) {
            tracing::warn!(%schema, %index, "dropping the invalid index an interrupted build left");
            drop_index(pool, timeouts, &step.description, schema, index).await?;
        }
        let built = build().await;
        match (built, index_valid(pool, schema, index, &step.description).await?) {
            (Ok(()), Some(true)) => return Ok(()),
            (Err(error), _) => {
                // Leave no invalid index behind a failed build.
                let _ = drop_index(pool, timeouts, &step.description, schema, index).await;
                return Err(error);
            }
            (Ok(()), _) => continue,
        }
    }
    Err(ExecError::Failed {
        what: step.description.clone(),
        error: format!("index {schema}.{index} is still invalid after building it again"),
    })
}

/// Drops `schema.index` if it exists, without blocking writers.
async fn drop_index(
    pool: &PgPool,
    timeouts: &Timeouts,
    what: &str,
    schema: &str,
    index: &str,
) -> Result<(), ExecError> {
    let drop = format!(
        "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
        quote(schema),
        quote(index)
    );
    run_outside_transaction(pool, timeouts, what, &drop, timeouts.build_timeout_ms).await
}
