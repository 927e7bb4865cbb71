//! The schema agent: migrations that never take the application down.
//!
//! [`lint`](mod@lint) assesses a migration before anything runs on a target: for every
//! statement the PostgreSQL lock it takes and on which tables, whether it
//! rewrites or scans a table, how many rows and bytes that touches (from
//! [`CatalogFacts`] the IO side reads from the target's catalog), and
//! findings in the manner of squawk, each with a severity and the safe
//! alternative. It parses SQL with PostgreSQL's own parser (`pg_query`;
//! most rules still read `sqlparser`'s tree of the same statement) and does
//! no IO.
//!
//! [`migration`] runs named, versioned migrations on a target: expand
//! (twin columns, sync triggers, views of the new version), batched
//! backfill, complete (contract) and rollback, every statement under
//! lock_timeout with retries, the history kept as events.
//!
//! [`dependencies`] reads from a target's catalog what depends on a table
//! or column (the IO side of the impact assessment); [`agent`] serves it
//! as the operation `schema.dependencies`.

pub mod agent;
pub mod dependencies;
pub mod facts;
pub mod lint;
pub mod migration;

pub use lint::{
    CatalogFacts, ColumnFacts, ConstraintFacts, ConstraintKind, Finding, IndexFacts, LintError,
    MigrationReport, MigrationSummary, SQL_BYTES_MAX, STATEMENTS_MAX, ScriptStatement, Severity,
    StatementReport, TableFacts, TableLock, lint, rules, split_script,
};
