//! The migration linter: lint / impact assessment of every statement of a
//! migration before anything runs, in the manner of squawk.
//!
//! [`lint`] parses the migration with PostgreSQL's own parser (libpg_query,
//! through `pg_query`: every statement PostgreSQL accepts is linted, and
//! invalid SQL is refused with PostgreSQL's message and place; most rules
//! read `sqlparser`'s tree of the statement, see `parse`), then walks the statements in order while keeping a
//! model of what the migration has done so far: tables and columns it
//! created, renamed or dropped, constraints it added (and whether they are
//! validated yet), indexes it built, whether it is inside an explicit
//! transaction and whether `lock_timeout` is in force. Each statement gets
//! a [`StatementReport`]: the PostgreSQL lock mode it takes per table (as
//! documented for PostgreSQL 15: `ALTER TABLE` subcommands differ), whether
//! it rewrites or scans a table, the rows and bytes that touches according to
//! [`CatalogFacts`], and [`Finding`]s with a rule id (squawk's where squawk
//! has the rule), a severity and the safe alternative.
//!
//! Tables created by the migration itself are empty and invisible to other
//! sessions until commit, so hazards on them are not reported; a table that
//! is neither in the facts nor created earlier in the migration is linted
//! all the same, with a `table-not-found` finding.
//!
//! Pure: no IO, no clock, no randomness; the same input gives the same report.

mod advice;
mod analyze;
mod catalog;
pub(crate) mod parse;
mod types;
mod volatility;

#[cfg(test)]
mod tests;

use agents::pg::LockLevel;
use serde::Serialize;

pub use catalog::{CatalogFacts, ColumnFacts, ConstraintFacts, ConstraintKind, IndexFacts, TableFacts};

/// At most this many statements are linted in one migration.
pub const STATEMENTS_MAX: usize = 1000;
/// At most this many bytes of SQL are linted in one migration (1 MiB).
pub const SQL_BYTES_MAX: usize = 1 << 20;

/// Lints a migration: `sql` is its text (any number of statements separated
/// by `;`), `facts` what the target's catalog says about the tables it
/// touches.
///
/// Errors: the SQL is larger than [`SQL_BYTES_MAX`], has more than
/// [`STATEMENTS_MAX`] statements, has none, or a statement does not parse
/// (the error names the statement's 1-based number and the parser's
/// message, whose line and column count from the start of the migration).
pub fn lint(sql: &str, facts: &CatalogFacts) -> Result<MigrationReport, LintError> {
    let statements = parse::parse_migration(sql)?;
    Ok(analyze::analyze(&statements, facts))
}

/// Why a migration could not be linted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LintError {
    /// The SQL text is larger than [`SQL_BYTES_MAX`].
    #[error("the migration is {size_bytes} bytes of SQL; the linter accepts at most {sql_bytes_max} bytes")]
    TooLarge {
        /// Size of the migration's text.
        size_bytes: usize,
        /// The limit, [`SQL_BYTES_MAX`].
        sql_bytes_max: usize,
    },
    /// The migration has more than [`STATEMENTS_MAX`] statements.
    #[error(
        "the migration has more than {statements_max} statements; the linter accepts at most {statements_max}"
    )]
    TooManyStatements {
        /// The limit, [`STATEMENTS_MAX`].
        statements_max: usize,
    },
    /// The migration has no statement (only whitespace, comments or `;`).
    #[error("the migration contains no SQL statement")]
    Empty,
    /// A statement is not valid SQL for the parser.
    #[error("statement {statement} is not valid SQL: {message}")]
    InvalidSql {
        /// 1-based number of the statement in the migration.
        statement: usize,
        /// The parser's message (line and column count from the start of the migration).
        message: String,
    },
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Advice: the statement is acceptable but has a risk worth a look.
    Warning,
    /// The statement must not run as written: it blocks traffic for a time that
    /// grows with the table, fails, or breaks users of what it changes.
    Blocking,
}

/// One hazard of one statement, with the safe way to reach the same result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Rule id, squawk's where squawk has the rule (see [`rules`]).
    pub rule: &'static str,
    /// How serious it is.
    pub severity: Severity,
    /// What happens, with the lock, the tables and their size.
    pub message: String,
    /// The safe alternative. Where it can be written as SQL, the whole
    /// statement sequence, ready to run in autocommit: `SET lock_timeout`
    /// first, notes in a trailing `--` comment; it lints without a
    /// blocking finding. Otherwise what to do, in words.
    pub safe_alternative: String,
}

impl Finding {
    pub(crate) fn blocking(rule: &'static str, message: String, safe_alternative: String) -> Finding {
        Finding {
            rule,
            severity: Severity::Blocking,
            message,
            safe_alternative,
        }
    }

    pub(crate) fn warning(rule: &'static str, message: String, safe_alternative: String) -> Finding {
        Finding {
            rule,
            severity: Severity::Warning,
            message,
            safe_alternative,
        }
    }
}

/// The lock a statement takes on one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLock {
    /// `schema.table`.
    pub table: String,
    /// The strongest mode the statement takes on it.
    pub lock: LockLevel,
    /// Whether the table exists before the migration (false: created by it).
    pub pre_existing: bool,
}

/// The assessment of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementReport {
    /// 1-based position of the statement in the migration.
    pub index: usize,
    /// The statement's text as written in the migration (without the `;`).
    pub sql: String,
    /// The strongest lock it takes on any table; `None` when it takes no
    /// table lock (SET, BEGIN, CREATE FUNCTION, ...).
    pub lock: Option<LockLevel>,
    /// The lock per table, in order of appearance.
    pub locks: Vec<TableLock>,
    /// The tables it touches (`schema.table`), in order of appearance,
    /// including a table it creates.
    pub tables: Vec<String>,
    /// Whether it rewrites a table (new heap and indexes) while holding its lock.
    pub rewrites_table: bool,
    /// Whether it reads every row of a table (true also when it rewrites or builds an index).
    pub scans_table: bool,
    /// Rows it rewrites or scans, from the facts (0 when it only changes the
    /// catalog); `None` when a table it scans is unknown.
    pub estimated_affected_rows: Option<u64>,
    /// Bytes (heap, indexes and TOAST) of the tables it rewrites or scans;
    /// `None` when a table it scans is unknown.
    pub estimated_affected_bytes: Option<u64>,
    /// Hazards found, each with its safe alternative.
    pub findings: Vec<Finding>,
}

/// Migration-level results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationSummary {
    /// Number of statements linted.
    pub statement_count: usize,
    /// Findings of severity [`Severity::Blocking`] over all statements.
    pub blocking_count: usize,
    /// Findings of severity [`Severity::Warning`] over all statements.
    pub warning_count: usize,
    /// Whether a non-zero `lock_timeout` is in force before the first
    /// statement that takes a lock stronger than ROW EXCLUSIVE on a table that
    /// exists before the migration (true when no statement does).
    pub lock_timeout_before_first_strong_lock: bool,
    /// 1-based number of that first statement, if any.
    pub first_strong_lock_statement: Option<usize>,
    /// The strongest lock of the migration on a table that exists before it.
    pub strongest_lock: Option<LockLevel>,
    /// Pre-existing tables some statement rewrites.
    pub rewritten_tables: Vec<String>,
}

/// The assessment of a whole migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// One report per statement, in order.
    pub statements: Vec<StatementReport>,
    /// Totals and the lock_timeout verdict.
    pub summary: MigrationSummary,
}

impl MigrationReport {
    /// Whether no finding is blocking.
    pub fn is_safe(&self) -> bool {
        self.summary.blocking_count == 0
    }

    /// All findings with the number of their statement, in order.
    pub fn findings(&self) -> impl Iterator<Item = (usize, &Finding)> {
        self.statements
            .iter()
            .flat_map(|s| s.findings.iter().map(move |f| (s.index, f)))
    }
}

/// The rule ids findings carry. Where squawk has the rule, the id is squawk's.
pub mod rules {
    /// CREATE INDEX without CONCURRENTLY on an existing table (SHARE lock for the whole build).
    pub const REQUIRE_CONCURRENT_INDEX_CREATION: &str = "require-concurrent-index-creation";
    /// CREATE INDEX CONCURRENTLY inside an explicit transaction block (PostgreSQL refuses it).
    pub const BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION: &str =
        "ban-concurrent-index-creation-in-transaction";
    /// DROP INDEX without CONCURRENTLY (ACCESS EXCLUSIVE on the table).
    pub const REQUIRE_CONCURRENT_INDEX_DELETION: &str = "require-concurrent-index-deletion";
    /// DROP INDEX CONCURRENTLY inside an explicit transaction block (PostgreSQL refuses it).
    pub const BAN_CONCURRENT_INDEX_DELETION_IN_TRANSACTION: &str =
        "ban-concurrent-index-deletion-in-transaction";
    /// ADD CHECK without NOT VALID, or VALIDATE in the same transaction as the NOT VALID add.
    pub const CONSTRAINT_MISSING_NOT_VALID: &str = "constraint-missing-not-valid";
    /// ADD FOREIGN KEY without NOT VALID (SHARE ROW EXCLUSIVE on both tables during the scan).
    pub const ADDING_FOREIGN_KEY_CONSTRAINT: &str = "adding-foreign-key-constraint";
    /// SET NOT NULL (or a primary key on nullable columns) without a validated `CHECK (col IS NOT NULL)`.
    pub const ADDING_NOT_NULLABLE_FIELD: &str = "adding-not-nullable-field";
    /// ADD COLUMN ... NOT NULL without a default on an existing table (fails when it has rows).
    pub const ADDING_REQUIRED_FIELD: &str = "adding-required-field";
    /// ALTER COLUMN TYPE that rewrites the table.
    pub const CHANGING_COLUMN_TYPE: &str = "changing-column-type";
    /// ADD COLUMN with a volatile default, a serial or identity type, or a stored generated expression.
    pub const ADDING_FIELD_WITH_DEFAULT: &str = "adding-field-with-default";
    /// ADD UNIQUE built under ACCESS EXCLUSIVE, or UNIQUE USING INDEX with an unusable index.
    pub const DISALLOWED_UNIQUE_CONSTRAINT: &str = "disallowed-unique-constraint";
    /// ADD PRIMARY KEY built under ACCESS EXCLUSIVE.
    pub const ADDING_SERIAL_PRIMARY_KEY_FIELD: &str = "adding-serial-primary-key-field";
    /// ADD EXCLUDE: an index built under ACCESS EXCLUSIVE, with no concurrent way.
    pub const ADDING_EXCLUSION_CONSTRAINT: &str = "adding-exclusion-constraint";
    /// A lock stronger than ROW EXCLUSIVE on an existing table without lock_timeout in force.
    pub const REQUIRE_TIMEOUT_SETTINGS: &str = "require-timeout-settings";
    /// RENAME COLUMN.
    pub const RENAMING_COLUMN: &str = "renaming-column";
    /// RENAME TO of a table.
    pub const RENAMING_TABLE: &str = "renaming-table";
    /// DROP COLUMN.
    pub const BAN_DROP_COLUMN: &str = "ban-drop-column";
    /// DROP TABLE.
    pub const BAN_DROP_TABLE: &str = "ban-drop-table";
    /// A statement that fails when retried after a partial run of a migration that cannot be one transaction.
    pub const PREFER_ROBUST_STMTS: &str = "prefer-robust-stmts";
    /// SET LOGGED / UNLOGGED, VACUUM FULL: a full rewrite under ACCESS EXCLUSIVE.
    pub const TABLE_REWRITE: &str = "table-rewrite";
    /// UPDATE or DELETE of every row of an existing table in one statement.
    pub const UNBATCHED_UPDATE: &str = "unbatched-update";
    /// The statement names a table that neither exists nor is created earlier in the migration.
    pub const TABLE_NOT_FOUND: &str = "table-not-found";
    /// CREATE TABLE without IF NOT EXISTS of a table that exists.
    pub const TABLE_ALREADY_EXISTS: &str = "table-already-exists";
    /// The statement names a column the table does not have.
    pub const COLUMN_NOT_FOUND: &str = "column-not-found";
    /// The statement names an index that does not exist.
    pub const INDEX_NOT_FOUND: &str = "index-not-found";
    /// VALIDATE CONSTRAINT of a constraint neither in the facts nor added by the migration.
    pub const CONSTRAINT_NOT_FOUND: &str = "constraint-not-found";
    /// SET LOCAL outside an explicit transaction block has no effect.
    pub const SET_LOCAL_OUTSIDE_TRANSACTION: &str = "set-local-outside-transaction";
    /// A statement whose locks the linter does not model.
    pub const UNANALYZED_STATEMENT: &str = "unanalyzed-statement";

    /// Every rule, in the order above.
    pub const ALL: [&str; 28] = [
        REQUIRE_CONCURRENT_INDEX_CREATION,
        BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION,
        REQUIRE_CONCURRENT_INDEX_DELETION,
        BAN_CONCURRENT_INDEX_DELETION_IN_TRANSACTION,
        CONSTRAINT_MISSING_NOT_VALID,
        ADDING_FOREIGN_KEY_CONSTRAINT,
        ADDING_NOT_NULLABLE_FIELD,
        ADDING_REQUIRED_FIELD,
        CHANGING_COLUMN_TYPE,
        ADDING_FIELD_WITH_DEFAULT,
        DISALLOWED_UNIQUE_CONSTRAINT,
        ADDING_SERIAL_PRIMARY_KEY_FIELD,
        ADDING_EXCLUSION_CONSTRAINT,
        REQUIRE_TIMEOUT_SETTINGS,
        RENAMING_COLUMN,
        RENAMING_TABLE,
        BAN_DROP_COLUMN,
        BAN_DROP_TABLE,
        PREFER_ROBUST_STMTS,
        TABLE_REWRITE,
        UNBATCHED_UPDATE,
        TABLE_NOT_FOUND,
        TABLE_ALREADY_EXISTS,
        COLUMN_NOT_FOUND,
        INDEX_NOT_FOUND,
        CONSTRAINT_NOT_FOUND,
        SET_LOCAL_OUTSIDE_TRANSACTION,
        UNANALYZED_STATEMENT,
    ];
}

/// One statement of a script, as the migration engine runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptStatement {
    /// As written, without the `;`.
    pub sql: String,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT...: the engine runs each script
    /// in a transaction of its own and refuses these.
    pub transaction_control: bool,
    /// CREATE/DROP INDEX, REINDEX and DETACH PARTITION CONCURRENTLY, VACUUM:
    /// PostgreSQL refuses them inside a transaction block.
    pub outside_transaction: bool,
}

/// Splits a script into its statements (with the same parser and limits
/// as [`lint`]).
pub fn split_script(sql: &str) -> Result<Vec<ScriptStatement>, LintError> {
    let statements = parse::parse_migration(sql)?;
    Ok(statements
        .into_iter()
        .map(|parsed| ScriptStatement {
            transaction_control: parsed.transaction_control(),
            outside_transaction: parsed.outside_transaction(),
            sql: parsed.text,
        })
        .collect())
}
