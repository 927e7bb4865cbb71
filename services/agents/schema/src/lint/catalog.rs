//! What the target's catalog says about the objects a migration touches;
//! the IO side fills it, the linter only reads it.
//!
//! Names are as PostgreSQL stores them (`pg_namespace.nspname`,
//! `pg_class.relname`, `pg_attribute.attname`), without quoting: unquoted
//! identifiers in the migration are folded to lower case before lookup.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The catalog facts of a target database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogFacts {
    /// Schema of unqualified names (the head of the migration's search_path);
    /// `public` when `None`.
    #[serde(default)]
    pub default_schema: Option<String>,
    /// Tables keyed by `schema.table`.
    #[serde(default)]
    pub tables: BTreeMap<String, TableFacts>,
    /// Indexes of those tables.
    #[serde(default)]
    pub indexes: Vec<IndexFacts>,
}

/// One table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFacts {
    /// Estimated live rows (`pg_class.reltuples`, 0 when never analyzed).
    pub estimated_rows: u64,
    /// Heap, indexes and TOAST (`pg_total_relation_size`).
    pub total_bytes: u64,
    /// Human descriptions of the objects that use the table as a whole:
    /// views, functions, foreign keys of other tables (from `pg_depend`).
    #[serde(default)]
    pub dependents: Vec<String>,
    /// Columns keyed by name; empty when unknown (the linter then does not
    /// report missing columns and treats every type change as a rewrite).
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnFacts>,
    /// Constraints of the table.
    #[serde(default)]
    pub constraints: Vec<ConstraintFacts>,
}

/// One column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnFacts {
    /// The type as `format_type(atttypid, atttypmod)` prints it, e.g.
    /// `character varying(20)` or `numeric(12,2)`.
    pub type_name: String,
    /// `pg_attribute.attnotnull`.
    #[serde(default)]
    pub not_null: bool,
    /// Human descriptions of the objects that use this column (views,
    /// functions, indexes, constraints, foreign keys).
    #[serde(default)]
    pub dependents: Vec<String>,
}

/// The kinds of table constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    /// CHECK.
    Check,
    /// FOREIGN KEY.
    ForeignKey,
    /// UNIQUE.
    Unique,
    /// PRIMARY KEY.
    PrimaryKey,
    /// EXCLUDE.
    Exclusion,
}

/// One constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstraintFacts {
    /// `pg_constraint.conname`.
    pub name: String,
    /// Its kind.
    pub kind: ConstraintKind,
    /// `pg_constraint.convalidated` (false: added NOT VALID and not validated yet).
    pub validated: bool,
    /// For a CHECK of the form `col IS NOT NULL`: the column.
    #[serde(default)]
    pub not_null_column: Option<String>,
    /// For a FOREIGN KEY: the referenced table, `schema.table`.
    #[serde(default)]
    pub references: Option<String>,
}

/// One index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFacts {
    /// `schema.index`.
    pub name: String,
    /// The indexed table, `schema.table`.
    pub table: String,
    /// Key columns (empty entries for expressions).
    #[serde(default)]
    pub columns: Vec<String>,
    /// `pg_index.indisunique`.
    pub unique: bool,
    /// `pg_index.indisvalid` (false after a failed CREATE INDEX CONCURRENTLY).
    pub valid: bool,
}
