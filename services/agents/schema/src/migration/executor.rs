//! Runs a migration's SQL on a target: every statement under
//! `lock_timeout` and `statement_timeout`, retried with backoff when a
//! lock is not granted in time (so a migration waits behind a long
//! transaction instead of making every writer queue behind it), and the
//! backfill in bounded keyset batches.

use std::future::Future;
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use agents::sql::quote_ident as quote;

use super::steps::{Backfill, Step};

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
    fn failed(what: &str, error: &sqlx::Error) -> ExecError {
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

async fn begin(
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
async fn retrying<T, F, Fut>(timeouts: &Timeouts, what: &str, mut attempt: F) -> Result<T, ExecError>
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

const INDEX_VALID: &str = include_str!("../sql/index_valid.sql");

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
    let Some((schema, index)) = &step.builds_index else {
        return run_outside_transaction(
            pool,
            timeouts,
            &step.description,
            &step.sql,
            timeouts.build_timeout_ms,
        )
        .await;
    };
    for _ in 0..2 {
        let valid = index_valid(pool, schema, index, &step.description).await?;
        if valid == Some(false) {
            tracing::warn!(%schema, %index, "dropping the invalid index an interrupted build left");
            drop_index(pool, timeouts, &step.description, schema, index).await?;
        }
        let built = run_outside_transaction(
            pool,
            timeouts,
            &step.description,
            &step.sql,
            timeouts.build_timeout_ms,
        )
        .await;
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

/// Whether the index exists and is valid (`None`: it does not exist).
pub async fn index_valid(
    pool: &PgPool,
    schema: &str,
    index: &str,
    what: &str,
) -> Result<Option<bool>, ExecError> {
    sqlx::query_scalar(INDEX_VALID)
        .bind(schema)
        .bind(index)
        .fetch_optional(pool)
        .await
        .map_err(|e| ExecError::failed(what, &e))
}

/// A backfill in progress: rows are touched (through the sync trigger) in
/// key order, a bounded batch per transaction, up to the largest key that
/// existed when it began, so rows inserted meanwhile (already written
/// through the trigger) do not keep it going on a busy table.
pub struct Backfiller<'a> {
    pool: &'a PgPool,
    timeouts: &'a Timeouts,
    batch_rows: u32,
    first: String,
    next: String,
    bound: Option<String>,
    after: Option<String>,
    pub rows_done: u64,
}

impl<'a> Backfiller<'a> {
    pub async fn start(
        pool: &'a PgPool,
        timeouts: &'a Timeouts,
        backfill: &Backfill,
        batch_rows: u32,
    ) -> Result<Backfiller<'a>, ExecError> {
        let what = format!("backfill of {}", backfill.table);
        let (rel, key, key_type) = (&backfill.relation, &backfill.key, &backfill.key_type);
        let bound: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            // Qualified: an unqualified ORDER BY would sort the text output.
            "SELECT t.{key}::text AS bound FROM {rel} AS t ORDER BY t.{key} DESC LIMIT 1"
        )))
        .fetch_optional(pool)
        .await
        .map_err(|e| ExecError::failed(&what, &e))?;
        let batch = |lower: &str| {
            format!(
                "WITH batch AS (SELECT {key} AS k FROM {rel} WHERE {lower}{key} <= $2::text::{key_type} ORDER BY {key} LIMIT $3), \
                 touched AS (UPDATE {rel} AS t SET {key} = t.{key} FROM batch WHERE t.{key} = batch.k RETURNING 1) \
                 SELECT (SELECT b.k::text AS last FROM batch AS b ORDER BY b.k DESC LIMIT 1), (SELECT count(*) FROM touched)"
            )
        };
        Ok(Backfiller {
            pool,
            timeouts,
            batch_rows,
            first: batch("$1::text IS NULL AND "),
            next: batch(&format!("{key} > $1::text::{key_type} AND ")),
            bound,
            after: None,
            rows_done: 0,
        })
    }

    /// Touches the next batch; `false` when there was none left.
    pub async fn next_batch(&mut self, what: &str) -> Result<bool, ExecError> {
        let Some(bound) = self.bound.clone() else {
            return Ok(false);
        };
        let sql = if self.after.is_some() {
            &self.next
        } else {
            &self.first
        };
        // References only, so that each try's future copies them.
        let (pool, timeouts, after, batch_rows) =
            (self.pool, self.timeouts, self.after.as_deref(), self.batch_rows);
        let bound = bound.as_str();
        let row = retrying(timeouts, what, || async move {
            let mut tx = begin(pool, timeouts.lock_timeout_ms, timeouts.statement_timeout_ms).await?;
            let row: (Option<String>, i64) = sqlx::query_as(AssertSqlSafe(sql.clone()))
                .bind(after)
                .bind(bound)
                .bind(i64::from(batch_rows))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row)
        })
        .await?;
        match row {
            (Some(last), touched) => {
                self.after = Some(last);
                self.rows_done += touched.max(0) as u64;
                Ok(true)
            }
            (None, _) => {
                self.bound = None;
                Ok(false)
            }
        }
    }
}
