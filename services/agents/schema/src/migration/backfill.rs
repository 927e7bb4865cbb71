//! The backfill of a migration: rows touched through the sync trigger in
//! bounded keyset batches, each batch a transaction under the target's
//! timeouts and retried while its lock is not granted.

use sqlx::{AssertSqlSafe, PgPool};

use agents::pg::{ExecError, Timeouts, begin, retrying};

use super::steps::Backfill;

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
