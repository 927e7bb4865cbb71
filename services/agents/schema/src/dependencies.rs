//! What depends on a table or a column of a target database, read from
//! its catalog (pg_depend and the catalogs it points into): views and
//! materialized views, foreign keys both ways, indexes, constraints,
//! triggers, functions and procedures with SQL-standard bodies, policies,
//! sequences owned by it. Shown before a migration changes the object.
//!
//! PostgreSQL does not track what a PL/pgSQL body uses, so such functions
//! are not found; dependents are direct (a view on a view is found by
//! asking about the first view).

use serde::Serialize;
use sqlx::PgPool;

const DEPENDENTS: &str = include_str!("sql/dependents.sql");
const RELATION_EXISTS: &str = include_str!("sql/relation_exists.sql");

/// One object that depends on the one asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Dependent {
    /// view, materialized view, foreign key, check constraint, index, trigger, ...
    pub kind: String,
    /// Qualified where the object has a schema of its own.
    pub name: String,
    /// The table it is defined on, if any.
    pub on_table: Option<String>,
    /// Its definition as PostgreSQL prints it, where there is one.
    pub definition: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    #[error("there is no table {schema}.{table}")]
    NoTable { schema: String, table: String },
    #[error("table {schema}.{table} has no column {column}")]
    NoColumn {
        schema: String,
        table: String,
        column: String,
    },
    #[error("cannot read the target's catalog: {0}")]
    Database(#[from] sqlx::Error),
}

/// The dependents of `schema.table`, or of its `column`.
pub async fn dependents(
    pool: &PgPool,
    schema: &str,
    table: &str,
    column: Option<&str>,
) -> Result<Vec<Dependent>, DependencyError> {
    let (table_exists, column_exists): (bool, bool) = sqlx::query_as(RELATION_EXISTS)
        .bind(schema)
        .bind(table)
        .bind(column)
        .fetch_one(pool)
        .await?;
    if !table_exists {
        return Err(DependencyError::NoTable {
            schema: schema.to_owned(),
            table: table.to_owned(),
        });
    }
    if let Some(column) = column
        && !column_exists
    {
        return Err(DependencyError::NoColumn {
            schema: schema.to_owned(),
            table: table.to_owned(),
            column: column.to_owned(),
        });
    }
    Ok(sqlx::query_as(DEPENDENTS)
        .bind(schema)
        .bind(table)
        .bind(column)
        .fetch_all(pool)
        .await?)
}
