//! Reads [`CatalogFacts`] from a target's catalog: what the linter needs
//! to know about existing tables (size, columns and types, constraints,
//! indexes, and what uses them). Bounded: at most `ROWS_MAX` rows of each
//! kind are read; a catalog beyond that is refused rather than half-read.

use sqlx::PgPool;

use crate::lint::{CatalogFacts, ColumnFacts, ConstraintFacts, ConstraintKind, IndexFacts, TableFacts};

const TABLES: &str = include_str!("sql/facts_tables.sql");
const COLUMNS: &str = include_str!("sql/facts_columns.sql");
const CONSTRAINTS: &str = include_str!("sql/facts_constraints.sql");
const INDEXES: &str = include_str!("sql/facts_indexes.sql");
const DEPENDENTS: &str = include_str!("sql/facts_dependents.sql");

/// Rows of each kind (tables, columns, constraints, indexes, dependents).
pub const ROWS_MAX: i64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("the target's catalog has more than {ROWS_MAX} {0}; lint against a smaller database")]
    TooLarge(&'static str),
    #[error("cannot read the target's catalog: {0}")]
    Database(#[from] sqlx::Error),
}

/// A row of `facts_constraints.sql`.
#[derive(sqlx::FromRow)]
struct ConstraintRow {
    schema: String,
    table: String,
    name: String,
    kind: String,
    validated: bool,
    not_null_column: Option<String>,
    references: Option<String>,
}

fn key(schema: &str, table: &str) -> String {
    format!("{schema}.{table}")
}

fn bounded<T>(rows: Vec<T>, what: &'static str) -> Result<Vec<T>, FactsError> {
    if rows.len() as i64 > ROWS_MAX - 1 {
        return Err(FactsError::TooLarge(what));
    }
    Ok(rows)
}

pub async fn read_facts(pool: &PgPool) -> Result<CatalogFacts, FactsError> {
    let mut facts = CatalogFacts::default();
    let tables: Vec<(String, String, i64, i64)> =
        sqlx::query_as(TABLES).bind(ROWS_MAX).fetch_all(pool).await?;
    for (schema, table, rows, bytes) in bounded(tables, "tables")? {
        let table_facts = TableFacts {
            estimated_rows: rows.max(0) as u64,
            total_bytes: bytes.max(0) as u64,
            ..TableFacts::default()
        };
        facts.tables.insert(key(&schema, &table), table_facts);
    }
    let columns: Vec<(String, String, String, String, bool)> =
        sqlx::query_as(COLUMNS).bind(ROWS_MAX).fetch_all(pool).await?;
    for (schema, table, column, type_name, not_null) in bounded(columns, "columns")? {
        if let Some(t) = facts.tables.get_mut(&key(&schema, &table)) {
            let column_facts = ColumnFacts {
                type_name,
                not_null,
                dependents: Vec::new(),
            };
            t.columns.insert(column, column_facts);
        }
    }
    let constraints: Vec<ConstraintRow> = sqlx::query_as(CONSTRAINTS).bind(ROWS_MAX).fetch_all(pool).await?;
    for row in bounded(constraints, "constraints")? {
        let ConstraintRow {
            schema,
            table,
            name,
            kind,
            validated,
            not_null_column,
            references,
        } = row;
        let kind = match kind.as_str() {
            "c" => ConstraintKind::Check,
            "f" => ConstraintKind::ForeignKey,
            "u" => ConstraintKind::Unique,
            "p" => ConstraintKind::PrimaryKey,
            _ => ConstraintKind::Exclusion,
        };
        if let Some(t) = facts.tables.get_mut(&key(&schema, &table)) {
            t.constraints.push(ConstraintFacts {
                name,
                kind,
                validated,
                not_null_column,
                references,
            });
        }
    }
    let indexes: Vec<(String, String, Vec<String>, bool, bool)> =
        sqlx::query_as(INDEXES).bind(ROWS_MAX).fetch_all(pool).await?;
    for (name, table, columns, unique, valid) in bounded(indexes, "indexes")? {
        facts.indexes.push(IndexFacts {
            name,
            table,
            columns,
            unique,
            valid,
        });
    }
    let dependents: Vec<(String, String, Option<String>, String, bool)> =
        sqlx::query_as(DEPENDENTS).bind(ROWS_MAX).fetch_all(pool).await?;
    for (schema, table, column, dependent, own) in bounded(dependents, "dependencies")? {
        let Some(t) = facts.tables.get_mut(&key(&schema, &table)) else {
            continue;
        };
        // What uses any part of the table breaks when it is dropped or
        // renamed, except its own indexes, constraints and triggers, which
        // go with it.
        if !own && !t.dependents.contains(&dependent) {
            t.dependents.push(dependent.clone());
        }
        // Whatever uses a column breaks when it is dropped, renamed or retyped.
        if let Some(c) = column.and_then(|column| t.columns.get_mut(&column)) {
            c.dependents.push(dependent);
        }
    }
    Ok(facts)
}
