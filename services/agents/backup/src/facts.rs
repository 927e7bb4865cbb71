//! What a database holds, read inside the snapshot a backup is taken from,
//! so that a restore test can compare the restored tables with exactly
//! what the backup captured: row counts of every table and order-
//! independent checksums of the chosen ones.

use sqlx::{AssertSqlSafe, PgConnection};

use crate::manifest::TableFacts;

const USER_TABLES: &str = include_str!("sql/user_tables.sql");
const RESOLVE_TABLE: &str = include_str!("sql/resolve_table.sql");
const TABLE_EXISTS: &str = include_str!("sql/table_exists.sql");

/// Tables whose facts are recorded at most.
pub const TABLES_MAX: i64 = 10_000;

/// A table and its size on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizedTable {
    /// Quoted by the server (`format('%I.%I')`): safe to place in SQL.
    pub name: String,
    pub bytes: i64,
}

pub async fn user_tables(conn: &mut PgConnection) -> Result<Vec<SizedTable>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(USER_TABLES)
        .bind(TABLES_MAX)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(name, bytes)| SizedTable { name, bytes })
        .collect())
}

/// Resolves the tables a user named; `Err` names the first that is not a
/// table of the database.
pub async fn resolve_tables(conn: &mut PgConnection, names: &[String]) -> Result<Vec<SizedTable>, String> {
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let row: Option<(String, i64)> = sqlx::query_as(RESOLVE_TABLE)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| format!("table '{name}': {e}"))?;
        match row {
            Some((name, bytes)) => tables.push(SizedTable { name, bytes }),
            None => return Err(format!("table '{name}' does not exist in the database")),
        }
    }
    Ok(tables)
}

/// Row count of `table` (quoted by the server).
pub async fn row_count(conn: &mut PgConnection, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(conn)
        .await
}

/// The sum of the first 60 bits of every row's md5: the same for the same
/// rows in any order and any physical layout, different (with near
/// certainty) when a row differs.
pub async fn checksum(conn: &mut PgConnection, table: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text FROM {table} AS t"
    )))
    .fetch_one(conn)
    .await
}

/// Counts of `tables`, with checksums of those no larger than
/// `checksum_bytes_max` or named in `checksum_tables`.
pub async fn table_facts(
    conn: &mut PgConnection,
    tables: &[SizedTable],
    checksum_tables: &[String],
    checksum_bytes_max: i64,
) -> Result<Vec<TableFacts>, sqlx::Error> {
    let mut facts = Vec::with_capacity(tables.len());
    for table in tables {
        let rows = row_count(conn, &table.name).await?;
        let wanted = table.bytes <= checksum_bytes_max || checksum_tables.contains(&table.name);
        let checksum = if wanted {
            Some(checksum(conn, &table.name).await?)
        } else {
            None
        };
        facts.push(TableFacts {
            table: table.name.clone(),
            rows,
            checksum,
        });
    }
    Ok(facts)
}

/// What differs between the facts recorded at backup time and a
/// restored database's: one line per table.
pub async fn compare(conn: &mut PgConnection, expected: &[TableFacts]) -> Result<Vec<String>, sqlx::Error> {
    let mut problems = Vec::new();
    for fact in expected {
        let exists: Option<String> = sqlx::query_scalar(TABLE_EXISTS)
            .bind(&fact.table)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_none() {
            problems.push(format!(
                "table {} is missing from the restored database",
                fact.table
            ));
            continue;
        }
        let rows = row_count(conn, &fact.table).await?;
        if rows != fact.rows {
            problems.push(format!(
                "table {}: {rows} rows restored, {} at backup time",
                fact.table, fact.rows
            ));
            continue;
        }
        if let Some(expected_sum) = &fact.checksum {
            let restored = checksum(conn, &fact.table).await?;
            if &restored != expected_sum {
                problems.push(format!(
                    "table {}: checksum {restored} restored, {expected_sum} at backup time",
                    fact.table
                ));
            }
        }
    }
    Ok(problems)
}
