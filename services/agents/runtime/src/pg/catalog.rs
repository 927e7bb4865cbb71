//! Catalog readers more than one agent needs: SQL against `pg_catalog`
//! of a target (in `sql/`), each answering one question.

use sqlx::PgPool;

use super::ExecError;

const INDEX_VALID: &str = include_str!("../sql/index_valid.sql");

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
