//! The indexes of a target and how they are used: unused ones (never
//! scanned since the statistics were reset, yet maintained by every
//! write of their table) and duplicates (the same leading key columns as
//! another index of the table), with their size and write cost.

use serde::Serialize;
use sqlx::PgPool;

use crate::candidates::{Duplicate, ExistingIndex, duplicates};

const INDEX_USAGE: &str = include_str!("sql/index_usage.sql");

/// Indexes read at most; a catalog beyond that is refused rather than half-read.
pub const INDEXES_MAX: i64 = 50_000;

/// One index with its use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct IndexUsage {
    /// `schema.index`.
    pub name: String,
    /// `schema.table`.
    pub table_name: String,
    pub columns: Vec<String>,
    pub is_unique: bool,
    pub is_primary: bool,
    pub is_valid: bool,
    pub size_bytes: i64,
    /// Index scans since the statistics were reset.
    pub scans: i64,
    /// Rows the table took in, changed or removed since then: each one
    /// also wrote this index (less for HOT updates).
    pub table_writes: i64,
    /// It enforces a primary key, unique or exclusion constraint.
    pub backs_constraint: bool,
    /// A B-tree without a predicate: the only kind compared for duplicates
    /// (a partial or GIN index on the same columns serves other queries).
    pub plain_btree: bool,
}

/// What `unused_indexes` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexReport {
    /// Never scanned, not enforcing a constraint: candidates to drop.
    pub unused: Vec<IndexUsage>,
    pub duplicates: Vec<Duplicate>,
    /// Left by a failed CREATE INDEX CONCURRENTLY: maintained, never used.
    pub invalid: Vec<IndexUsage>,
    /// Bytes the unused, duplicate and invalid indexes take.
    pub reclaimable_bytes: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the target has more than {INDEXES_MAX} indexes; ask about a smaller database")]
    TooMany,
    #[error("cannot read the target's indexes: {0}")]
    Database(#[from] sqlx::Error),
}

impl IndexError {
    pub fn code(&self) -> domain::Code {
        match self {
            IndexError::TooMany => domain::Code::FailedPrecondition,
            IndexError::Database(e) => agents::database_code(e),
        }
    }
}

impl From<IndexError> for domain::OperationError {
    fn from(e: IndexError) -> domain::OperationError {
        domain::OperationError::new(e.code(), e.to_string())
    }
}

pub async fn read_indexes(pool: &PgPool) -> Result<Vec<IndexUsage>, IndexError> {
    let rows: Vec<IndexUsage> = sqlx::query_as(INDEX_USAGE)
        .bind(INDEXES_MAX)
        .fetch_all(pool)
        .await?;
    if rows.len() as i64 >= INDEXES_MAX {
        return Err(IndexError::TooMany);
    }
    Ok(rows)
}

/// Unused, duplicate and invalid indexes among `indexes` (pure).
pub fn report(indexes: &[IndexUsage]) -> IndexReport {
    let unused: Vec<IndexUsage> = indexes
        .iter()
        .filter(|i| i.is_valid && i.scans == 0 && !i.backs_constraint && !i.is_unique)
        .cloned()
        .collect();
    let invalid: Vec<IndexUsage> = indexes.iter().filter(|i| !i.is_valid).cloned().collect();
    let existing: Vec<ExistingIndex> = indexes
        .iter()
        .filter(|i| i.is_valid && i.plain_btree)
        .map(|i| ExistingIndex {
            name: i.name.clone(),
            table: i.table_name.clone(),
            columns: i.columns.clone(),
            unique: i.is_unique,
            primary: i.is_primary,
            valid: i.is_valid,
        })
        .collect();
    let duplicates = duplicates(&existing);
    let size_of = |name: &str| {
        indexes
            .iter()
            .find(|i| i.name == name)
            .map_or(0, |i| i.size_bytes)
    };
    let mut counted: Vec<&str> = unused.iter().chain(&invalid).map(|i| i.name.as_str()).collect();
    counted.extend(duplicates.iter().map(|d| d.redundant.as_str()));
    counted.sort_unstable();
    counted.dedup();
    IndexReport {
        reclaimable_bytes: counted.iter().map(|name| size_of(name)).sum(),
        unused,
        duplicates,
        invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(name: &str, columns: &[&str], scans: i64) -> IndexUsage {
        IndexUsage {
            name: format!("public.{name}"),
            table_name: "public.users".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            is_unique: false,
            is_primary: false,
            is_valid: true,
            size_bytes: 8192,
            scans,
            table_writes: 1000,
            backs_constraint: false,
            plain_btree: true,
        }
    }

    #[test]
    fn never_scanned_indexes_are_unused_unless_they_enforce_a_constraint() {
        let mut pkey = index("users_pkey", &["id"], 0);
        pkey.is_primary = true;
        pkey.is_unique = true;
        pkey.backs_constraint = true;
        let mut broken = index("users_name_idx", &["name"], 0);
        broken.is_valid = false;
        let found = report(&[
            pkey,
            index("users_email_idx", &["email"], 0),
            index("users_tenant_idx", &["tenant_id"], 9),
            broken,
        ]);
        let unused: Vec<&str> = found.unused.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(unused, ["public.users_email_idx"]);
        assert_eq!(found.invalid.len(), 1);
        assert_eq!(found.reclaimable_bytes, 2 * 8192);
    }
}
