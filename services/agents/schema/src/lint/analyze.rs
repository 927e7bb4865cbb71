//! The statement walk: locks, rewrites, scans, estimates and findings, with
//! a model of what the migration has done so far.
//!
//! Lock modes are PostgreSQL 15's ("Explicit Locking" and the notes of
//! ALTER TABLE): most ALTER TABLE forms take ACCESS EXCLUSIVE; ADD FOREIGN
//! KEY takes SHARE ROW EXCLUSIVE on both tables; VALIDATE CONSTRAINT takes
//! SHARE UPDATE EXCLUSIVE (and ROW SHARE on the referenced table of a
//! foreign key); SET/RESET (storage parameters) SHARE UPDATE EXCLUSIVE;
//! ENABLE/DISABLE TRIGGER and CREATE TRIGGER SHARE ROW EXCLUSIVE; CREATE
//! INDEX SHARE, CONCURRENTLY SHARE UPDATE EXCLUSIVE; DML ROW EXCLUSIVE.

use std::collections::BTreeMap;

use sqlparser::ast::{
    AlterColumnOperation, AlterTable, AlterTableOperation, CheckConstraint, ColumnDef, ColumnOption,
    ConstraintUsingIndex, ContextModifier, CreateIndex, CreateTable, DataType, DropBehavior, Expr,
    ForeignKeyConstraint, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, IndexColumn,
    LockTableMode, ObjectName, ObjectType, PrimaryKeyConstraint, RenameTableNameKind, Reset, SelectItem, Set,
    SetExpr, Statement, TableConstraint, TableFactor, TableObject, UniqueConstraint, Value,
};

use super::advice::{self, ident, script};
use super::catalog::{CatalogFacts, ConstraintKind, TableFacts};
use super::parse::ParsedStatement;
use super::rules::*;
use super::types::{TypeChange, classify, parse_type_name};
use super::volatility::volatile_part;
use super::{Finding, LockLevel, MigrationReport, MigrationSummary, Severity, StatementReport, TableLock};

mod postgres;

/// At most this many dependents are named in one message.
const DEPENDENTS_LISTED_MAX: usize = 10;

/// An identifier as PostgreSQL stores it (the agents' one rule, on a
/// parsed `Ident`).
pub(crate) fn fold(ident: &Ident) -> String {
    agents::sql::fold_ident(&ident.value, ident.quote_style.is_some())
}

/// Lints parsed statements against `facts`.
pub(crate) fn analyze(statements: &[ParsedStatement], facts: &CatalogFacts) -> MigrationReport {
    let mut linter = Linter::new(facts, statements);
    let reports: Vec<StatementReport> = statements
        .iter()
        .enumerate()
        .map(|(i, parsed)| linter.statement(i + 1, parsed))
        .collect();
    linter.finish(reports)
}

/// What a DROP statement says besides its names.
#[derive(Debug, Clone, Copy)]
struct DropStatement {
    object_type: ObjectType,
    if_exists: bool,
    cascade: bool,
    /// DROP INDEX CONCURRENTLY.
    concurrently: bool,
}

/// Whether a table exists at a point of the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// In the facts and not dropped since.
    Existing,
    /// Created earlier in the migration: empty and invisible to others.
    Created,
    /// Neither.
    Missing,
}

impl Presence {
    /// Whether hazards on the table matter (not a table the migration created).
    fn hazard(self) -> bool {
        self != Presence::Created
    }
}

#[derive(Debug, Clone)]
struct TableState {
    created: bool,
    estimated_rows: u64,
    total_bytes: u64,
    dependents: Vec<String>,
    columns_known: bool,
    columns: BTreeMap<String, ColumnState>,
    constraints: BTreeMap<String, ConstraintState>,
}

#[derive(Debug, Clone)]
struct ColumnState {
    data_type: Option<DataType>,
    not_null: bool,
    dependents: Vec<String>,
}

#[derive(Debug, Clone)]
struct ConstraintState {
    kind: ConstraintKind,
    validated: bool,
    not_null_column: Option<String>,
    references: Option<String>,
    /// Transaction and statement of an ADD ... NOT VALID inside an explicit transaction.
    added_not_valid_in: Option<(u32, usize)>,
}

#[derive(Debug, Clone)]
struct IndexState {
    table: String,
    columns: Vec<String>,
    unique: bool,
    valid: bool,
}

impl TableState {
    fn from_facts(facts: &TableFacts) -> TableState {
        TableState {
            created: false,
            estimated_rows: facts.estimated_rows,
            total_bytes: facts.total_bytes,
            dependents: facts.dependents.clone(),
            columns_known: !facts.columns.is_empty(),
            columns: facts
                .columns
                .iter()
                .map(|(name, c)| {
                    let column = ColumnState {
                        data_type: parse_type_name(&c.type_name),
                        not_null: c.not_null,
                        dependents: c.dependents.clone(),
                    };
                    (name.clone(), column)
                })
                .collect(),
            constraints: facts
                .constraints
                .iter()
                .map(|c| {
                    let constraint = ConstraintState {
                        kind: c.kind,
                        validated: c.validated,
                        not_null_column: c.not_null_column.clone(),
                        references: c.references.clone(),
                        added_not_valid_in: None,
                    };
                    (c.name.clone(), constraint)
                })
                .collect(),
        }
    }
}

/// Rows and bytes of a table; `None` when unknown.
#[derive(Debug, Clone, Copy)]
struct Size {
    rows: Option<u64>,
    bytes: Option<u64>,
}

/// What one statement does, gathered while walking it.
#[derive(Debug, Default)]
struct Ctx {
    tables: Vec<String>,
    locks: Vec<TableLock>,
    /// Tables read in full, with their size.
    scanned: Vec<(String, Size)>,
    /// Tables rewritten, and whether they exist before the migration.
    rewritten: Vec<(String, bool)>,
    /// The statement affects an unknown number of rows (DML with WHERE).
    rows_unknown: bool,
    findings: Vec<Finding>,
}

impl Ctx {
    fn touch(&mut self, table: &str) {
        if !self.tables.iter().any(|t| t == table) {
            self.tables.push(table.to_owned());
        }
    }

    fn lock(&mut self, table: &str, lock: LockLevel, pre_existing: bool) {
        self.touch(table);
        match self.locks.iter_mut().find(|l| l.table == table) {
            Some(existing) => existing.lock = existing.lock.max(lock),
            None => self.locks.push(TableLock {
                table: table.to_owned(),
                lock,
                pre_existing,
            }),
        }
    }

    fn scan(&mut self, table: &str, size: Size) {
        self.touch(table);
        if !self.scanned.iter().any(|(t, _)| t == table) {
            self.scanned.push((table.to_owned(), size));
        }
    }

    fn rewrite(&mut self, table: &str, size: Size, pre_existing: bool) {
        self.scan(table, size);
        if !self.rewritten.iter().any(|(t, _)| t == table) {
            self.rewritten.push((table.to_owned(), pre_existing));
        }
    }

    fn into_report(self, index: usize, sql: String) -> StatementReport {
        let (rows, bytes) = if self.rows_unknown {
            (None, None)
        } else {
            self.scanned
                .iter()
                .fold((Some(0u64), Some(0u64)), |(rows, bytes), (_, size)| {
                    (
                        rows.zip(size.rows).map(|(a, b)| a.saturating_add(b)),
                        bytes.zip(size.bytes).map(|(a, b)| a.saturating_add(b)),
                    )
                })
        };
        StatementReport {
            index,
            sql,
            lock: self.locks.iter().map(|l| l.lock).max(),
            locks: self.locks,
            tables: self.tables,
            rewrites_table: !self.rewritten.is_empty(),
            scans_table: !self.scanned.is_empty(),
            estimated_affected_rows: rows,
            estimated_affected_bytes: bytes,
            findings: self.findings,
        }
    }
}

struct Linter<'f> {
    facts: &'f CatalogFacts,
    default_schema: String,
    /// Tables touched so far; `None`: dropped by the migration. A table
    /// absent here is loaded from the facts on first use.
    tables: BTreeMap<String, Option<TableState>>,
    /// Indexes touched so far, by `schema.index`; `None`: dropped.
    indexes: BTreeMap<String, Option<IndexState>>,
    /// The explicit transaction block the walk is in.
    transaction: Option<u32>,
    transactions_started: u32,
    lock_timeout_session: bool,
    /// SET LOCAL inside the current transaction block.
    lock_timeout_local: Option<bool>,
    /// The migration cannot run as one transaction (it has CONCURRENTLY).
    non_atomic: bool,
    first_strong_lock: Option<usize>,
    lock_timeout_before_first_strong_lock: bool,
    /// Whether lock_timeout was in force at the last strong-lock statement.
    last_strong_lock_had_timeout: Option<bool>,
    /// Pre-existing tables rewritten so far.
    rewritten_tables: Vec<String>,
}

impl<'f> Linter<'f> {
    fn new(facts: &'f CatalogFacts, statements: &[ParsedStatement]) -> Linter<'f> {
        let non_atomic = statements.iter().any(ParsedStatement::concurrently);
        Linter {
            facts,
            default_schema: facts
                .default_schema
                .clone()
                .unwrap_or_else(|| "public".to_owned()),
            tables: BTreeMap::new(),
            indexes: BTreeMap::new(),
            transaction: None,
            transactions_started: 0,
            lock_timeout_session: false,
            lock_timeout_local: None,
            non_atomic,
            first_strong_lock: None,
            lock_timeout_before_first_strong_lock: true,
            last_strong_lock_had_timeout: None,
            rewritten_tables: Vec::new(),
        }
    }

    fn finish(self, statements: Vec<StatementReport>) -> MigrationReport {
        let count = |severity| {
            statements
                .iter()
                .flat_map(|s| &s.findings)
                .filter(|f| f.severity == severity)
                .count()
        };
        let summary = MigrationSummary {
            statement_count: statements.len(),
            blocking_count: count(Severity::Blocking),
            warning_count: count(Severity::Warning),
            lock_timeout_before_first_strong_lock: self.lock_timeout_before_first_strong_lock,
            first_strong_lock_statement: self.first_strong_lock,
            strongest_lock: statements
                .iter()
                .flat_map(|s| &s.locks)
                .filter(|l| l.pre_existing)
                .map(|l| l.lock)
                .max(),
            rewritten_tables: self.rewritten_tables,
        };
        MigrationReport { statements, summary }
    }

    // ---- model ------------------------------------------------------------

    fn table_key(&self, name: &ObjectName) -> String {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(fold).unwrap_or_else(|| p.to_string()))
            .collect();
        match parts.as_slice() {
            [] => String::new(),
            [table] => format!("{}.{table}", self.default_schema),
            [.., schema, table] => format!("{schema}.{table}"),
        }
    }

    /// `schema.index` of an index named `name` on a table of `schema` (or qualified).
    fn index_key(&self, name: &ObjectName, table_schema: Option<&str>) -> String {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(fold).unwrap_or_else(|| p.to_string()))
            .collect();
        match parts.as_slice() {
            [] => String::new(),
            [index] => format!("{}.{index}", table_schema.unwrap_or(&self.default_schema)),
            [.., schema, index] => format!("{schema}.{index}"),
        }
    }

    fn load(&mut self, key: &str) {
        if !self.tables.contains_key(key)
            && let Some(facts) = self.facts.tables.get(key)
        {
            self.tables
                .insert(key.to_owned(), Some(TableState::from_facts(facts)));
        }
    }

    fn presence(&mut self, key: &str) -> Presence {
        self.load(key);
        match self.tables.get(key) {
            Some(Some(t)) if t.created => Presence::Created,
            Some(Some(_)) => Presence::Existing,
            _ => Presence::Missing,
        }
    }

    fn table(&mut self, key: &str) -> Option<&mut TableState> {
        self.load(key);
        self.tables.get_mut(key).and_then(Option::as_mut)
    }

    fn size(&mut self, key: &str) -> Size {
        match self.table(key) {
            Some(t) if t.created => Size {
                rows: Some(0),
                bytes: Some(0),
            },
            Some(t) => Size {
                rows: Some(t.estimated_rows),
                bytes: Some(t.total_bytes),
            },
            None => Size {
                rows: None,
                bytes: None,
            },
        }
    }

    /// `public.orders (~1,000,000 rows, 512.0 MiB)`.
    fn describe(&mut self, key: &str) -> String {
        let size = self.size(key);
        match (size.rows, size.bytes) {
            (Some(rows), Some(bytes)) => format!("{key} (~{} rows, {})", thousands(rows), human_bytes(bytes)),
            _ => format!("{key} (size unknown)"),
        }
    }

    fn lock(&mut self, ctx: &mut Ctx, key: &str, lock: LockLevel) {
        let pre_existing = self.presence(key) != Presence::Created;
        ctx.lock(key, lock, pre_existing);
    }

    fn scan(&mut self, ctx: &mut Ctx, key: &str) {
        let size = self.size(key);
        ctx.scan(key, size);
    }

    fn rewrite(&mut self, ctx: &mut Ctx, key: &str) {
        let size = self.size(key);
        let pre_existing = self.presence(key) != Presence::Created;
        ctx.rewrite(key, size, pre_existing);
    }

    /// The column's state, `Err` with a finding when the table's columns are
    /// known and it has none of that name, `Ok(None)` when nothing is known.
    fn column(&mut self, key: &str, column: &str) -> Result<Option<ColumnState>, Finding> {
        match self.table(key) {
            Some(t) => match t.columns.get(column) {
                Some(c) => Ok(Some(c.clone())),
                None if t.columns_known => Err(Finding::blocking(
                    COLUMN_NOT_FOUND,
                    format!("{key} has no column {column}; the statement fails"),
                    "fix the column name or add the column earlier in the migration".to_owned(),
                )),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    fn validated_not_null_check(&mut self, key: &str, column: &str) -> bool {
        self.table(key).is_some_and(|t| {
            t.constraints
                .values()
                .any(|c| c.validated && c.not_null_column.as_deref() == Some(column))
        })
    }

    fn unvalidated_not_null_check(&mut self, key: &str, column: &str) -> Option<String> {
        self.table(key).and_then(|t| {
            t.constraints
                .iter()
                .find(|(_, c)| !c.validated && c.not_null_column.as_deref() == Some(column))
                .map(|(name, _)| name.clone())
        })
    }

    fn index(&mut self, key: &str) -> Option<IndexState> {
        if !self.indexes.contains_key(key)
            && let Some(facts) = self.facts.indexes.iter().find(|i| i.name == key)
        {
            let state = IndexState {
                table: facts.table.clone(),
                columns: facts.columns.clone(),
                unique: facts.unique,
                valid: facts.valid,
            };
            self.indexes.insert(key.to_owned(), Some(state));
        }
        self.indexes.get(key).cloned().flatten()
    }

    fn lock_timeout_in_force(&self) -> bool {
        self.lock_timeout_local.unwrap_or(self.lock_timeout_session)
    }

    fn table_already_exists(key: &str) -> Finding {
        Finding::blocking(
            TABLE_ALREADY_EXISTS,
            format!("table {key} already exists; the statement fails"),
            "use another name, or CREATE TABLE IF NOT EXISTS when the existing table is the intended one"
                .to_owned(),
        )
    }

    fn table_not_found(key: &str) -> Finding {
        Finding::blocking(
            TABLE_NOT_FOUND,
            format!("table {key} is not in the target's catalog and is not created earlier in the migration; the statement fails"),
            "fix the table name (unquoted names fold to lower case; unqualified ones resolve in the default schema), or create the table first".to_owned(),
        )
    }

    fn robust(&self, ctx: &mut Ctx, guarded: bool, what: &str, guard: &str) {
        if self.non_atomic && !guarded {
            ctx.findings.push(Finding::warning(
                PREFER_ROBUST_STMTS,
                format!(
                    "the migration uses CONCURRENTLY, so it cannot run as one transaction: if it stops part way, a retry fails at this {what}"
                ),
                format!("write it with {guard} so that the migration can be run again"),
            ));
        }
    }

    // ---- statements -------------------------------------------------------

    fn statement(&mut self, index: usize, parsed: &ParsedStatement) -> StatementReport {
        let mut ctx = Ctx::default();
        match &parsed.statement {
            Some(statement) => self.sqlparser_statement(&mut ctx, index, parsed, statement),
            None => self.postgres_statement(&mut ctx, parsed),
        }
        self.check_lock_timeout(&mut ctx);
        for (table, pre_existing) in &ctx.rewritten {
            if *pre_existing && !self.rewritten_tables.contains(table) {
                self.rewritten_tables.push(table.clone());
            }
        }
        if ctx
            .locks
            .iter()
            .any(|l| l.pre_existing && l.lock > LockLevel::RowExclusive)
            && self.first_strong_lock.is_none()
        {
            self.first_strong_lock = Some(index);
        }
        ctx.into_report(index, parsed.text.clone())
    }

    /// A statement on sqlparser's tree.
    fn sqlparser_statement(
        &mut self,
        ctx: &mut Ctx,
        index: usize,
        parsed: &ParsedStatement,
        statement: &Statement,
    ) {
        match statement {
            Statement::CreateIndex(ci) => self.create_index(ctx, ci),
            Statement::AlterTable(at) => self.alter_table(ctx, index, at),
            Statement::CreateTable(ct) => self.create_table(ctx, ct),
            Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => {
                let drop = DropStatement {
                    object_type: *object_type,
                    if_exists: *if_exists,
                    cascade: *cascade,
                    concurrently: parsed.drop_index_concurrently,
                };
                self.drop(ctx, drop, names)
            }
            Statement::Set(_)
            | Statement::Reset(_)
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { savepoint: None, .. }
            | Statement::Query(_) => self.session_statement(ctx, statement),
            Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Truncate(_)
            | Statement::Lock(_) => self.table_statement(ctx, statement),
            Statement::Vacuum(_)
            | Statement::Analyze(_)
            | Statement::CreateTrigger(_)
            | Statement::DropTrigger(_)
            | Statement::RefreshMaterializedView(_) => self.maintenance_statement(ctx, statement),
            // Statements that take no lock on a table's rows (or only on
            // objects the facts do not describe).
            Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::CreateView(_)
            | Statement::CreateFunction(_)
            | Statement::CreateProcedure { .. }
            | Statement::CreateSchema { .. }
            | Statement::CreateExtension(_)
            | Statement::CreateSequence { .. }
            | Statement::CreateType { .. }
            | Statement::CreateDomain(_)
            | Statement::CreateRole(_)
            | Statement::CreatePolicy(_)
            | Statement::AlterType(_)
            | Statement::AlterIndex { .. }
            | Statement::AlterRole { .. }
            | Statement::AlterSchema(_)
            | Statement::AlterFunction(_)
            | Statement::Comment { .. }
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::AlterDefaultPrivileges(_)
            | Statement::DropFunction(_)
            | Statement::DropExtension(_)
            | Statement::DropDomain(_)
            | Statement::DropProcedure { .. }
            | Statement::ShowVariable { .. }
            | Statement::Discard { .. } => {}
            other => ctx.findings.push(Finding::warning(
                UNANALYZED_STATEMENT,
                format!(
                    "the linter does not model the locks and effects of this {} statement",
                    statement_keyword(other)
                ),
                "review its locking by hand (PostgreSQL docs, Explicit Locking)".to_owned(),
            )),
        }
    }

    /// Transaction control, settings and `SELECT set_config(...)`.
    fn session_statement(&mut self, ctx: &mut Ctx, statement: &Statement) {
        match statement {
            Statement::Set(set) => self.set(ctx, set),
            Statement::Reset(reset) => {
                let name = match &reset.reset {
                    Reset::ALL => Some("lock_timeout".to_owned()),
                    Reset::ConfigurationParameter(name) => name.0.last().and_then(|p| p.as_ident()).map(fold),
                    Reset::SessionAuthorization => None,
                };
                if name.as_deref() == Some("lock_timeout") {
                    self.lock_timeout_session = false;
                    self.lock_timeout_local = None;
                }
            }
            Statement::StartTransaction { .. } if self.transaction.is_none() => {
                self.transactions_started += 1;
                self.transaction = Some(self.transactions_started);
            }
            Statement::Commit { .. } | Statement::Rollback { savepoint: None, .. } => {
                self.transaction = None;
                self.lock_timeout_local = None;
            }
            Statement::Query(query) => {
                if let SetExpr::Select(select) = query.body.as_ref() {
                    for item in &select.projection {
                        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                            self.set_config(ctx, e);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// DML, TRUNCATE and LOCK.
    fn table_statement(&mut self, ctx: &mut Ctx, statement: &Statement) {
        match statement {
            Statement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    self.dml(ctx, name, false, "INSERT");
                }
            }
            Statement::Update(update) => {
                if let TableFactor::Table { name, .. } = &update.table.relation {
                    self.dml(ctx, name, update.selection.is_none(), "UPDATE");
                }
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
                for table in from {
                    if let TableFactor::Table { name, .. } = &table.relation {
                        self.dml(ctx, name, delete.selection.is_none(), "DELETE");
                    }
                }
            }
            Statement::Truncate(truncate) => {
                for target in &truncate.table_names {
                    let key = self.table_key(&target.name);
                    if self.presence(&key) == Presence::Missing && !truncate.if_exists {
                        ctx.findings.push(Self::table_not_found(&key));
                    }
                    self.lock(ctx, &key, LockLevel::AccessExclusive);
                }
            }
            Statement::Lock(lock) => {
                let level = match lock.lock_mode {
                    Some(LockTableMode::AccessShare) => LockLevel::AccessShare,
                    Some(LockTableMode::RowShare) => LockLevel::RowShare,
                    Some(LockTableMode::RowExclusive) => LockLevel::RowExclusive,
                    Some(LockTableMode::ShareUpdateExclusive) => LockLevel::ShareUpdateExclusive,
                    Some(LockTableMode::Share) => LockLevel::Share,
                    Some(LockTableMode::ShareRowExclusive) => LockLevel::ShareRowExclusive,
                    Some(LockTableMode::Exclusive) => LockLevel::Exclusive,
                    Some(LockTableMode::AccessExclusive) | None => LockLevel::AccessExclusive,
                };
                for target in &lock.tables {
                    let key = self.table_key(&target.name);
                    if self.presence(&key) == Presence::Missing {
                        ctx.findings.push(Self::table_not_found(&key));
                    }
                    self.lock(ctx, &key, level);
                }
            }
            _ => {}
        }
    }

    /// VACUUM, ANALYZE, triggers and REFRESH MATERIALIZED VIEW.
    fn maintenance_statement(&mut self, ctx: &mut Ctx, statement: &Statement) {
        match statement {
            Statement::Vacuum(vacuum) => {
                if let Some(name) = &vacuum.table_name {
                    let key = self.table_key(name);
                    if vacuum.full {
                        self.lock(ctx, &key, LockLevel::AccessExclusive);
                        self.rewrite(ctx, &key);
                        if self.presence(&key).hazard() {
                            let table = self.describe(&key);
                            ctx.findings.push(Finding::blocking(
                                TABLE_REWRITE,
                                format!("VACUUM FULL rewrites {table} under ACCESS EXCLUSIVE, blocking reads and writes for the whole rewrite"),
                                "use plain VACUUM, or pg_repack / pg_squeeze to compact the table online".to_owned(),
                            ));
                        }
                    } else {
                        self.lock(ctx, &key, LockLevel::ShareUpdateExclusive);
                        self.scan(ctx, &key);
                    }
                }
            }
            Statement::Analyze(analyze) => {
                if let Some(name) = &analyze.table_name {
                    let key = self.table_key(name);
                    self.lock(ctx, &key, LockLevel::ShareUpdateExclusive);
                }
            }
            Statement::CreateTrigger(trigger) => {
                let key = self.table_key(&trigger.table_name);
                self.lock(ctx, &key, LockLevel::ShareRowExclusive);
            }
            Statement::DropTrigger(trigger) => {
                if let Some(name) = &trigger.table_name {
                    let key = self.table_key(name);
                    self.lock(ctx, &key, LockLevel::AccessExclusive);
                }
            }
            Statement::RefreshMaterializedView(refresh) => {
                let key = self.table_key(&refresh.name);
                let level = if refresh.concurrently {
                    LockLevel::Exclusive
                } else {
                    LockLevel::AccessExclusive
                };
                ctx.lock(&key, level, true);
            }
            _ => {}
        }
    }

    fn check_lock_timeout(&mut self, ctx: &mut Ctx) {
        let strong: Vec<&TableLock> = ctx
            .locks
            .iter()
            .filter(|l| l.pre_existing && l.lock > LockLevel::RowExclusive)
            .collect();
        if strong.is_empty() {
            return;
        }
        let in_force = self.lock_timeout_in_force();
        if self.first_strong_lock.is_none() {
            self.lock_timeout_before_first_strong_lock = in_force;
        }
        // One finding per stretch of strong-lock statements without a timeout.
        if !in_force && self.last_strong_lock_had_timeout != Some(false) {
            let locks = strong
                .iter()
                .map(|l| format!("{} on {}", l.lock, l.table))
                .collect::<Vec<_>>()
                .join(", ");
            ctx.findings.push(Finding::blocking(
                REQUIRE_TIMEOUT_SETTINGS,
                format!(
                    "takes {locks} without lock_timeout: while it waits behind a long-running transaction, every later query on the table queues behind it"
                ),
                script(
                    &[],
                    "before the first statement that takes a lock stronger than ROW EXCLUSIVE (SET LOCAL inside a transaction block); retry the migration when it times out",
                ),
            ));
        }
        self.last_strong_lock_had_timeout = Some(in_force);
    }

    fn set(&mut self, ctx: &mut Ctx, set: &Set) {
        if let Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } = set
        {
            let name = variable.0.last().and_then(|p| p.as_ident()).map(fold);
            if name.as_deref() != Some("lock_timeout") {
                return;
            }
            let on = values.first().is_some_and(timeout_is_set);
            self.apply_lock_timeout(ctx, on, matches!(scope, Some(ContextModifier::Local)));
        }
    }

    fn apply_lock_timeout(&mut self, ctx: &mut Ctx, on: bool, local: bool) {
        if !local {
            self.lock_timeout_session = on;
            self.lock_timeout_local = None;
        } else if self.transaction.is_some() {
            self.lock_timeout_local = Some(on);
        } else {
            ctx.findings.push(Finding::warning(
                SET_LOCAL_OUTSIDE_TRANSACTION,
                "SET LOCAL outside an explicit transaction block has no effect (PostgreSQL only warns)"
                    .to_owned(),
                "use SET lock_timeout, or put SET LOCAL after BEGIN".to_owned(),
            ));
        }
    }

    /// `SELECT set_config('lock_timeout', value, is_local)`.
    fn set_config(&mut self, ctx: &mut Ctx, expr: &Expr) {
        let Expr::Function(function) = expr else { return };
        let name = function.name.0.last().and_then(|p| p.as_ident()).map(fold);
        if name.as_deref() != Some("set_config") {
            return;
        }
        let FunctionArguments::List(list) = &function.args else {
            return;
        };
        let args: Vec<&Expr> = list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect();
        let [setting, value, is_local] = args.as_slice() else {
            return;
        };
        let is_lock_timeout = matches!(setting, Expr::Value(v)
            if matches!(&v.value, Value::SingleQuotedString(s) if s.eq_ignore_ascii_case("lock_timeout")));
        if !is_lock_timeout {
            return;
        }
        let local = matches!(is_local, Expr::Value(v) if v.value == Value::Boolean(true));
        self.apply_lock_timeout(ctx, timeout_is_set(value), local);
    }

    fn dml(&mut self, ctx: &mut Ctx, name: &ObjectName, every_row: bool, verb: &str) {
        let key = self.table_key(name);
        self.dml_on(ctx, key, every_row, verb);
    }

    /// INSERT, UPDATE or DELETE on the table `key`: ROW EXCLUSIVE, and of
    /// every row an unbatched backfill.
    fn dml_on(&mut self, ctx: &mut Ctx, key: String, every_row: bool, verb: &str) {
        let presence = self.presence(&key);
        if presence == Presence::Missing {
            ctx.findings.push(Self::table_not_found(&key));
        }
        self.lock(ctx, &key, LockLevel::RowExclusive);
        if verb == "INSERT" {
            return;
        }
        if !every_row {
            ctx.rows_unknown = true;
            return;
        }
        self.scan(ctx, &key);
        if presence == Presence::Existing && self.size(&key).rows.is_some_and(|r| r > 0) {
            let table = self.describe(&key);
            ctx.findings.push(Finding::warning(
                UNBATCHED_UPDATE,
                format!(
                    "{verb} of every row of {table} in one statement: all rows stay locked until commit and the whole table's dead rows are left for VACUUM"
                ),
                "backfill in batches by primary-key ranges (keyset), one short transaction per batch".to_owned(),
            ));
        }
    }

    fn create_index(&mut self, ctx: &mut Ctx, ci: &CreateIndex) {
        let key = self.table_key(&ci.table_name);
        let presence = self.presence(&key);
        if presence == Presence::Missing {
            ctx.findings.push(Self::table_not_found(&key));
        }
        let level = if ci.concurrently {
            LockLevel::ShareUpdateExclusive
        } else {
            LockLevel::Share
        };
        self.lock(ctx, &key, level);
        let schema = key.split_once('.').map(|(s, _)| s.to_owned());
        let index_key = ci.name.as_ref().map(|n| self.index_key(n, schema.as_deref()));
        if ci.if_not_exists
            && let Some(index_key) = &index_key
            && self.index(index_key).is_some()
        {
            return; // exists: a no-op
        }
        self.scan(ctx, &key);
        let mut safe = ci.clone();
        safe.concurrently = true;
        safe.if_not_exists = ci.name.is_some();
        if ci.concurrently && self.transaction.is_some() {
            ctx.findings.push(Finding::blocking(
                BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION,
                "CREATE INDEX CONCURRENTLY cannot run inside a transaction block; PostgreSQL refuses it"
                    .to_owned(),
                script(
                    &[safe.to_string()],
                    "after the COMMIT of the transaction block, on its own",
                ),
            ));
        }
        if !ci.concurrently && presence.hazard() {
            let table = self.describe(&key);
            ctx.findings.push(Finding::blocking(
                REQUIRE_CONCURRENT_INDEX_CREATION,
                format!(
                    "CREATE INDEX without CONCURRENTLY holds SHARE on {table} for the whole build, blocking writes (INSERT, UPDATE, DELETE)"
                ),
                script(
                    &[safe.to_string()],
                    "outside a transaction block; a build that fails leaves an INVALID index: DROP INDEX CONCURRENTLY it before retrying",
                ),
            ));
        }
        self.robust(ctx, ci.if_not_exists, "CREATE INDEX", "IF NOT EXISTS");
        if let Some(index_key) = index_key {
            let state = IndexState {
                table: key,
                columns: index_columns(&ci.columns),
                unique: ci.unique,
                valid: true,
            };
            self.indexes.insert(index_key, Some(state));
        }
    }

    fn create_table(&mut self, ctx: &mut Ctx, ct: &CreateTable) {
        let key = self.table_key(&ct.name);
        ctx.touch(&key);
        if self.presence(&key) != Presence::Missing {
            if !ct.if_not_exists {
                ctx.findings.push(Self::table_already_exists(&key));
            }
            return;
        }
        self.robust(ctx, ct.if_not_exists, "CREATE TABLE", "IF NOT EXISTS");
        let mut columns = BTreeMap::new();
        let mut references = Vec::new();
        for column in &ct.columns {
            let not_null = column
                .options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::NotNull | ColumnOption::PrimaryKey(_)));
            for option in &column.options {
                if let ColumnOption::ForeignKey(fk) = &option.option {
                    references.push(self.table_key(&fk.foreign_table));
                }
            }
            let state = ColumnState {
                data_type: Some(column.data_type.clone()),
                not_null,
                dependents: Vec::new(),
            };
            columns.insert(fold(&column.name), state);
        }
        for constraint in &ct.constraints {
            match constraint {
                TableConstraint::ForeignKey(fk) => references.push(self.table_key(&fk.foreign_table)),
                TableConstraint::PrimaryKey(pk) => {
                    for column in index_columns(&pk.columns) {
                        if let Some(c) = columns.get_mut(&column) {
                            c.not_null = true;
                        }
                    }
                }
                _ => {}
            }
        }
        let state = TableState {
            created: true,
            estimated_rows: 0,
            total_bytes: 0,
            dependents: Vec::new(),
            columns_known: !ct.columns.is_empty(),
            columns,
            constraints: BTreeMap::new(),
        };
        self.tables.insert(key.clone(), Some(state));
        for referenced in references {
            if referenced == key {
                continue;
            }
            if self.presence(&referenced) == Presence::Missing {
                ctx.findings.push(Self::table_not_found(&referenced));
            }
            self.lock(ctx, &referenced, LockLevel::ShareRowExclusive);
        }
    }

    fn drop(&mut self, ctx: &mut Ctx, drop: DropStatement, names: &[ObjectName]) {
        let DropStatement {
            object_type,
            if_exists,
            cascade,
            concurrently,
        } = drop;
        match object_type {
            ObjectType::Table => {
                for name in names {
                    let key = self.table_key(name);
                    let presence = self.presence(&key);
                    if presence == Presence::Missing {
                        ctx.touch(&key);
                        if !if_exists {
                            ctx.findings.push(Self::table_not_found(&key));
                        }
                        continue;
                    }
                    self.lock(ctx, &key, LockLevel::AccessExclusive);
                    if presence == Presence::Existing {
                        let table = self.describe(&key);
                        let dependents = self.table(&key).map(|t| t.dependents.clone()).unwrap_or_default();
                        ctx.findings.push(drop_or_rename_finding(
                            BAN_DROP_TABLE,
                            &format!("DROP TABLE {table}"),
                            &dependents,
                            cascade,
                            "drop the table only after every reader and writer has stopped using it (the contract step of expand/contract), in a later release than the code change",
                        ));
                    }
                    self.tables.insert(key.clone(), None);
                    let indexes: Vec<String> = self
                        .facts
                        .indexes
                        .iter()
                        .filter(|i| i.table == key)
                        .map(|i| i.name.clone())
                        .collect();
                    for index in indexes {
                        self.indexes.insert(index, None);
                    }
                    for state in self.indexes.values_mut() {
                        if state.as_ref().is_some_and(|s| s.table == key) {
                            *state = None;
                        }
                    }
                }
                self.robust(ctx, if_exists, "DROP TABLE", "IF EXISTS");
            }
            ObjectType::Index => {
                if concurrently && self.transaction.is_some() {
                    ctx.findings.push(Finding::blocking(
                        BAN_CONCURRENT_INDEX_DELETION_IN_TRANSACTION,
                        "DROP INDEX CONCURRENTLY cannot run inside a transaction block; PostgreSQL refuses it"
                            .to_owned(),
                        script(
                            &drop_indexes_concurrently(names),
                            "after the COMMIT of the transaction block, on its own",
                        ),
                    ));
                }
                for name in names {
                    self.drop_index(ctx, name, if_exists, concurrently);
                }
                self.robust(ctx, if_exists, "DROP INDEX", "IF EXISTS");
            }
            other => ctx.findings.push(Finding::warning(
                UNANALYZED_STATEMENT,
                format!("the linter does not model DROP {other}: objects that depend on it are not checked"),
                "check its dependents in pg_depend by hand before dropping".to_owned(),
            )),
        }
    }

    /// One index of a DROP INDEX: ACCESS EXCLUSIVE on its table, or SHARE
    /// UPDATE EXCLUSIVE when CONCURRENTLY.
    fn drop_index(&mut self, ctx: &mut Ctx, name: &ObjectName, if_exists: bool, concurrently: bool) {
        let index_key = self.index_key(name, None);
        let Some(index) = self.index(&index_key) else {
            if !if_exists {
                ctx.findings.push(Finding::blocking(
                    INDEX_NOT_FOUND,
                    format!("index {index_key} does not exist; the statement fails"),
                    "fix the index name, or use DROP INDEX IF EXISTS".to_owned(),
                ));
            }
            return;
        };
        let level = if concurrently {
            LockLevel::ShareUpdateExclusive
        } else {
            LockLevel::AccessExclusive
        };
        self.lock(ctx, &index.table, level);
        if !concurrently && self.presence(&index.table) == Presence::Existing {
            let table = self.describe(&index.table);
            ctx.findings.push(Finding::warning(
                REQUIRE_CONCURRENT_INDEX_DELETION,
                format!(
                    "DROP INDEX {index_key} takes ACCESS EXCLUSIVE on {table}, blocking reads and writes while it waits for and holds the lock"
                ),
                script(
                    &drop_indexes_concurrently(std::slice::from_ref(name)),
                    "outside a transaction block (SHARE UPDATE EXCLUSIVE: reads and writes go on)",
                ),
            ));
        }
        self.indexes.insert(index_key, None);
    }

    fn alter_table(&mut self, ctx: &mut Ctx, index: usize, at: &AlterTable) {
        let key = self.table_key(&at.name);
        let presence = self.presence(&key);
        if presence == Presence::Missing {
            ctx.touch(&key);
            if at.if_exists {
                return; // a no-op in PostgreSQL
            }
            ctx.findings.push(Self::table_not_found(&key));
        }
        let table_sql = at.name.to_string();
        for op in &at.operations {
            self.alter_operation(ctx, index, &key, &table_sql, presence, op);
        }
    }

    fn alter_operation(
        &mut self,
        ctx: &mut Ctx,
        index: usize,
        key: &str,
        table_sql: &str,
        presence: Presence,
        op: &AlterTableOperation,
    ) {
        use AlterTableOperation as Op;
        if let Some(level) = lock_only(op) {
            self.lock(ctx, key, level);
            return;
        }
        match op {
            Op::AddColumn {
                if_not_exists,
                column_def,
                ..
            } => {
                self.lock(ctx, key, LockLevel::AccessExclusive);
                self.add_column(ctx, key, table_sql, presence, *if_not_exists, column_def);
            }
            Op::DropColumn {
                column_names,
                if_exists,
                drop_behavior,
                ..
            } => {
                self.drop_columns(
                    ctx,
                    key,
                    presence,
                    column_names,
                    *if_exists,
                    drop_behavior.as_ref(),
                );
            }
            Op::AlterColumn { column_name, op } => {
                self.lock(ctx, key, LockLevel::AccessExclusive);
                self.alter_column(ctx, key, table_sql, presence, column_name, op);
            }
            Op::AddConstraint {
                constraint,
                not_valid,
            } => {
                self.add_constraint(ctx, index, key, table_sql, presence, constraint, *not_valid);
            }
            Op::ValidateConstraint { name } => {
                self.validate_constraint(ctx, key, table_sql, presence, name);
            }
            Op::DropConstraint { if_exists, name, .. } => {
                self.lock(ctx, key, LockLevel::AccessExclusive);
                let constraint_name = fold(name);
                if let Some(t) = self.table(key) {
                    t.constraints.remove(&constraint_name);
                }
                self.robust(ctx, *if_exists, "DROP CONSTRAINT", "IF EXISTS");
            }
            Op::RenameColumn {
                old_column_name,
                new_column_name,
            } => {
                self.rename_column(ctx, key, presence, old_column_name, new_column_name);
            }
            Op::RenameTable { table_name } => {
                self.rename_table(ctx, key, presence, table_name);
            }
            Op::RenameConstraint { old_name, new_name } => {
                self.lock(ctx, key, LockLevel::AccessExclusive);
                if let Some(t) = self.table(key)
                    && let Some(c) = t.constraints.remove(&fold(old_name))
                {
                    t.constraints.insert(fold(new_name), c);
                }
            }
            Op::SetLogged | Op::SetUnlogged => {
                self.set_logged(ctx, key, presence);
            }
            Op::AttachPartitionOf { .. } | Op::DetachPartitionOf { .. } => self.partition(ctx, key, op),
            other => {
                self.lock(ctx, key, LockLevel::AccessExclusive);
                ctx.findings.push(Finding::warning(
                    UNANALYZED_STATEMENT,
                    format!("the linter does not model ALTER TABLE ... {other}; assuming ACCESS EXCLUSIVE without a rewrite"),
                    "review its locking and rewrite behaviour by hand (PostgreSQL docs, ALTER TABLE notes)".to_owned(),
                ));
            }
        }
    }

    /// ATTACH PARTITION (SHARE UPDATE EXCLUSIVE on the parent, a scan of the
    /// partition) and DETACH PARTITION (CONCURRENTLY or not).
    fn partition(&mut self, ctx: &mut Ctx, key: &str, op: &AlterTableOperation) {
        use AlterTableOperation as Op;
        match op {
            Op::AttachPartitionOf { partition, .. } => {
                self.lock(ctx, key, LockLevel::ShareUpdateExclusive);
                let partition_key = self.table_key(partition);
                self.lock(ctx, &partition_key, LockLevel::AccessExclusive);
                // Scanned to check the bound unless a valid CHECK proves it.
                self.scan(ctx, &partition_key);
            }
            Op::DetachPartitionOf { partition, mode } => {
                let level = if mode.is_some() {
                    LockLevel::ShareUpdateExclusive
                } else {
                    LockLevel::AccessExclusive
                };
                self.lock(ctx, key, level);
                let partition_key = self.table_key(partition);
                self.lock(ctx, &partition_key, level);
            }
            _ => {}
        }
    }

    /// ALTER TABLE ... DROP COLUMN: ACCESS EXCLUSIVE, and the columns leave the model.
    fn drop_columns(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        presence: Presence,
        column_names: &[Ident],
        if_exists: bool,
        drop_behavior: Option<&DropBehavior>,
    ) {
        self.lock(ctx, key, LockLevel::AccessExclusive);
        let cascade = matches!(drop_behavior, Some(DropBehavior::Cascade));
        for name in column_names {
            let column = fold(name);
            let state = match self.column(key, &column) {
                Ok(state) => state,
                Err(finding) => {
                    if !if_exists {
                        ctx.findings.push(finding);
                    }
                    continue;
                }
            };
            if presence.hazard() {
                let dependents = state.map(|c| c.dependents).unwrap_or_default();
                ctx.findings.push(drop_or_rename_finding(
                    BAN_DROP_COLUMN,
                    &format!("DROP COLUMN {column} of {key}"),
                    &dependents,
                    cascade,
                    "stop reading and writing the column first (application code, views, functions), then drop it in a later migration: the contract step of expand/contract",
                ));
            }
            if let Some(t) = self.table(key) {
                t.columns.remove(&column);
            }
        }
        self.robust(ctx, if_exists, "DROP COLUMN", "IF EXISTS");
    }

    /// VALIDATE CONSTRAINT: SHARE UPDATE EXCLUSIVE (and ROW SHARE on the referenced table of a foreign key) for the scan.
    fn validate_constraint(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        name: &Ident,
    ) {
        self.lock(ctx, key, LockLevel::ShareUpdateExclusive);
        let constraint_name = fold(name);
        let state = self
            .table(key)
            .and_then(|t| t.constraints.get(&constraint_name).cloned());
        match state {
            None => {
                self.scan(ctx, key);
                if presence == Presence::Existing {
                    ctx.findings.push(Finding::warning(
                        CONSTRAINT_NOT_FOUND,
                        format!(
                            "constraint {constraint_name} is neither in the catalog facts of {key} nor added earlier in the migration"
                        ),
                        "check the constraint name".to_owned(),
                    ));
                }
            }
            Some(c) if c.validated => {} // already valid: a no-op
            Some(c) => {
                self.scan(ctx, key);
                if c.kind == ConstraintKind::ForeignKey
                    && let Some(referenced) = &c.references
                {
                    self.lock(ctx, referenced, LockLevel::RowShare);
                }
                if let (Some((transaction, added_at)), Some(current)) =
                    (c.added_not_valid_in, self.transaction)
                    && transaction == current
                    && presence.hazard()
                {
                    let (lock, blocks) = if c.kind == ConstraintKind::ForeignKey {
                        (
                            LockLevel::ShareRowExclusive,
                            LockLevel::ShareRowExclusive.blocks(),
                        )
                    } else {
                        (LockLevel::AccessExclusive, LockLevel::AccessExclusive.blocks())
                    };
                    let table = self.describe(key);
                    ctx.findings.push(Finding::blocking(
                        CONSTRAINT_MISSING_NOT_VALID,
                        format!(
                            "VALIDATE CONSTRAINT {constraint_name} runs in the same transaction as its ADD ... NOT VALID (statement {added_at}): the {lock} lock taken there is held through the validation scan of {table}, {blocks}"
                        ),
                        script(
                            &[format!("ALTER TABLE {table_sql} VALIDATE CONSTRAINT {name}")],
                            "in its own transaction, after the COMMIT of the one that added the constraint NOT VALID",
                        ),
                    ));
                }
                if let Some(t) = self.table(key)
                    && let Some(c) = t.constraints.get_mut(&constraint_name)
                {
                    c.validated = true;
                }
            }
        }
    }

    /// RENAME COLUMN: the column (and the NOT NULL checks on it) under the new name.
    fn rename_column(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        presence: Presence,
        old_column_name: &Ident,
        new_column_name: &Ident,
    ) {
        self.lock(ctx, key, LockLevel::AccessExclusive);
        let (old, new) = (fold(old_column_name), fold(new_column_name));
        let state = match self.column(key, &old) {
            Ok(state) => state,
            Err(finding) => {
                ctx.findings.push(finding);
                return;
            }
        };
        if presence.hazard() {
            let dependents = state.as_ref().map(|c| c.dependents.clone()).unwrap_or_default();
            ctx.findings.push(drop_or_rename_finding(
                RENAMING_COLUMN,
                &format!("RENAME COLUMN {old} TO {new} on {key}"),
                &dependents,
                false,
                &format!(
                    "expand/contract: add {new}, keep both columns in sync with a trigger, backfill in batches, move readers and writers to {new}, then drop {old} in a later migration"
                ),
            ));
        }
        if let Some(t) = self.table(key) {
            if let Some(c) = t.columns.remove(&old) {
                t.columns.insert(new.clone(), c);
            }
            for c in t.constraints.values_mut() {
                if c.not_null_column.as_deref() == Some(old.as_str()) {
                    c.not_null_column = Some(new.clone());
                }
            }
        }
    }

    /// RENAME TO: the table and its indexes under the new name.
    fn rename_table(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        presence: Presence,
        table_name: &RenameTableNameKind,
    ) {
        self.lock(ctx, key, LockLevel::AccessExclusive);
        let (RenameTableNameKind::To(new_name) | RenameTableNameKind::As(new_name)) = table_name;
        let schema = key
            .split_once('.')
            .map_or(self.default_schema.as_str(), |(s, _)| s);
        let relation = new_name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(fold)
            .unwrap_or_default();
        let new_key = format!("{schema}.{relation}");
        if presence == Presence::Existing {
            let table = self.describe(key);
            let dependents = self.table(key).map(|t| t.dependents.clone()).unwrap_or_default();
            ctx.findings.push(drop_or_rename_finding(
                RENAMING_TABLE,
                &format!("RENAME of {table} to {new_key}"),
                &dependents,
                false,
                &format!(
                    "expand/contract: move readers and writers first, or rename and create a view named {key} over {new_key} in the same transaction (a simple view is updatable) until every user has moved"
                ),
            ));
        }
        ctx.touch(&new_key);
        if presence != Presence::Missing {
            // Indexes follow their table.
            let indexes: Vec<String> = self
                .facts
                .indexes
                .iter()
                .filter(|i| i.table == key)
                .map(|i| i.name.clone())
                .collect();
            for index in indexes {
                self.index(&index);
            }
            for state in self.indexes.values_mut().flatten() {
                if state.table == key {
                    state.table = new_key.clone();
                }
            }
            let state = self.tables.insert(key.to_owned(), None).flatten();
            self.tables.insert(new_key, state);
        }
    }

    /// SET LOGGED / UNLOGGED: a rewrite under ACCESS EXCLUSIVE.
    fn set_logged(&mut self, ctx: &mut Ctx, key: &str, presence: Presence) {
        self.lock(ctx, key, LockLevel::AccessExclusive);
        self.rewrite(ctx, key);
        if presence.hazard() {
            let table = self.describe(key);
            ctx.findings.push(Finding::blocking(
                TABLE_REWRITE,
                format!("SET LOGGED / UNLOGGED rewrites {table} under ACCESS EXCLUSIVE, blocking reads and writes for the whole rewrite"),
                "create a new table with the wanted persistence, copy in batches and swap, or run it in a maintenance window".to_owned(),
            ));
        }
    }

    fn add_column(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        if_not_exists: bool,
        column_def: &ColumnDef,
    ) {
        let column = fold(&column_def.name);
        if if_not_exists && matches!(self.column(key, &column), Ok(Some(_))) {
            return; // exists: a no-op
        }
        let mut rewrite_reason = serial_type(&column_def.data_type).map(|t| {
            format!("the {t} type's nextval() default is volatile and is evaluated for every existing row")
        });
        let mut default = None;
        let mut not_null = false;
        let mut fills_itself = rewrite_reason.is_some();
        for option in &column_def.options {
            match &option.option {
                ColumnOption::Default(expr) => {
                    default = Some(expr);
                    if let Some(part) = volatile_part(expr) {
                        rewrite_reason.get_or_insert(format!(
                            "the default calls {part}, evaluated for every existing row"
                        ));
                    }
                }
                ColumnOption::NotNull => not_null = true,
                ColumnOption::Generated {
                    generation_expr: Some(_),
                    ..
                } => {
                    fills_itself = true;
                    rewrite_reason.get_or_insert(
                        "a stored generated column is computed for every existing row".to_owned(),
                    );
                }
                ColumnOption::Generated {
                    generation_expr: None,
                    ..
                }
                | ColumnOption::Identity(_) => {
                    fills_itself = true;
                    rewrite_reason.get_or_insert(
                        "an identity column takes a sequence value for every existing row".to_owned(),
                    );
                }
                ColumnOption::PrimaryKey(_)
                | ColumnOption::Unique(_)
                | ColumnOption::ForeignKey(_)
                | ColumnOption::Check(_) => {
                    not_null |= matches!(option.option, ColumnOption::PrimaryKey(_));
                    self.column_constraint(ctx, key, table_sql, presence, column_def, &option.option);
                }
                _ => {}
            }
        }
        if let Some(reason) = rewrite_reason {
            self.rewrite(ctx, key);
            if presence.hazard() {
                let table = self.describe(key);
                ctx.findings.push(Finding::blocking(
                    ADDING_FIELD_WITH_DEFAULT,
                    format!("ADD COLUMN {column} rewrites {table} under ACCESS EXCLUSIVE, blocking reads and writes for the whole rewrite: {reason}"),
                    default_advice(table_sql, key, column_def, default),
                ));
            }
        } else if not_null && default.is_none() && !fills_itself && presence.hazard() {
            let table = self.describe(key);
            ctx.findings.push(Finding::blocking(
                ADDING_REQUIRED_FIELD,
                format!("ADD COLUMN {column} ... NOT NULL without a default fails with \"column contains null values\" as soon as {table} has a row"),
                format!(
                    "ALTER TABLE {table_sql} ADD COLUMN {} {} NOT NULL DEFAULT <constant>; (a constant default is free since PostgreSQL 11), or add it nullable, backfill, and make it NOT NULL with the CHECK ... NOT VALID / VALIDATE / SET NOT NULL steps",
                    column_def.name, column_def.data_type
                ),
            ));
        }
        self.robust(ctx, if_not_exists, "ADD COLUMN", "IF NOT EXISTS");
        if let Some(t) = self.table(key) {
            let state = ColumnState {
                data_type: Some(column_def.data_type.clone()),
                not_null,
                dependents: Vec::new(),
            };
            t.columns.insert(column, state);
        }
    }

    /// A PRIMARY KEY, UNIQUE, REFERENCES or CHECK of an added column: built
    /// or validated under the ACCESS EXCLUSIVE of ADD COLUMN.
    fn column_constraint(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        column_def: &ColumnDef,
        option: &ColumnOption,
    ) {
        let column = fold(&column_def.name);
        let relation = key.split_once('.').map_or(key, |(_, t)| t);
        match option {
            ColumnOption::PrimaryKey(_) => {
                self.scan(ctx, key);
                if presence.hazard() {
                    let table = self.describe(key);
                    ctx.findings.push(Finding::blocking(
                    ADDING_SERIAL_PRIMARY_KEY_FIELD,
                    format!("ADD COLUMN {column} ... PRIMARY KEY builds a unique index on {table} under ACCESS EXCLUSIVE, blocking reads and writes for the build"),
                    format!("add the column, fill it in batches, CREATE UNIQUE INDEX CONCURRENTLY on it, make it NOT NULL with the CHECK ... NOT VALID / VALIDATE / SET NOT NULL steps, then ALTER TABLE {table_sql} ADD CONSTRAINT ... PRIMARY KEY USING INDEX ..."),
                ));
                }
            }
            ColumnOption::Unique(_) => {
                self.scan(ctx, key);
                if presence.hazard() {
                    let table = self.describe(key);
                    let name = ident(&format!("{relation}_{column}_key"));
                    let steps = [
                        advice::add_column_without(table_sql, column_def, |o| {
                            matches!(o, ColumnOption::Unique(_))
                        }),
                        format!(
                            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table_sql} ({})",
                            column_def.name
                        ),
                        format!("ALTER TABLE {table_sql} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}"),
                    ];
                    ctx.findings.push(Finding::blocking(
                    DISALLOWED_UNIQUE_CONSTRAINT,
                    format!("ADD COLUMN {column} ... UNIQUE builds a unique index on {table} under ACCESS EXCLUSIVE, blocking reads and writes for the build"),
                    script(&steps, "the index is built outside a transaction block, without blocking writes"),
                ));
                }
            }
            ColumnOption::ForeignKey(fk) => {
                let referenced = self.table_key(&fk.foreign_table);
                if self.presence(&referenced) == Presence::Missing && referenced != key {
                    ctx.findings.push(Self::table_not_found(&referenced));
                }
                self.lock(ctx, &referenced, LockLevel::ShareRowExclusive);
                self.scan(ctx, key);
                if presence.hazard() {
                    let table = self.describe(key);
                    let mut steps = vec![advice::add_column_without(table_sql, column_def, |o| {
                        matches!(o, ColumnOption::ForeignKey(_))
                    })];
                    steps.extend(advice::not_valid_then_validate(
                        table_sql,
                        &advice::column_foreign_key(&column_def.name, fk),
                        &format!("{relation}_{column}_fkey"),
                    ));
                    ctx.findings.push(Finding::blocking(
                    ADDING_FOREIGN_KEY_CONSTRAINT,
                    format!("ADD COLUMN {column} ... REFERENCES {referenced} validates the new foreign key by scanning {table} under ACCESS EXCLUSIVE, and locks {referenced} in SHARE ROW EXCLUSIVE"),
                    script(&steps, VALIDATE_NOTE),
                ));
                }
            }
            ColumnOption::Check(check) => {
                self.scan(ctx, key);
                if presence.hazard() {
                    let table = self.describe(key);
                    let mut steps = vec![advice::add_column_without(table_sql, column_def, |o| {
                        matches!(o, ColumnOption::Check(_))
                    })];
                    steps.extend(advice::not_valid_then_validate(
                        table_sql,
                        &advice::column_check(check),
                        &format!("{relation}_{column}_check"),
                    ));
                    ctx.findings.push(Finding::blocking(
                    CONSTRAINT_MISSING_NOT_VALID,
                    format!("ADD COLUMN {column} ... CHECK scans {table} under ACCESS EXCLUSIVE to validate the check, blocking reads and writes"),
                    script(&steps, VALIDATE_NOTE),
                ));
                }
            }
            _ => {}
        }
    }

    fn alter_column(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        column_name: &Ident,
        op: &AlterColumnOperation,
    ) {
        let column = fold(column_name);
        let state = match self.column(key, &column) {
            Ok(state) => state,
            Err(finding) => {
                // The statement fails: hazards (and advice) about a
                // column that is not there would mislead.
                ctx.findings.push(finding);
                return;
            }
        };
        match op {
            AlterColumnOperation::SetNotNull => {
                self.set_not_null(
                    ctx,
                    key,
                    table_sql,
                    presence,
                    &column,
                    state.as_ref(),
                    "SET NOT NULL",
                );
            }
            AlterColumnOperation::DropNotNull => {
                if let Some(t) = self.table(key)
                    && let Some(c) = t.columns.get_mut(&column)
                {
                    c.not_null = false;
                }
            }
            AlterColumnOperation::SetDataType { data_type, using, .. } => {
                let old = state.as_ref().and_then(|c| c.data_type.as_ref());
                let dependents = state.as_ref().map(|c| c.dependents.clone()).unwrap_or_default();
                match classify(old, data_type, using.as_ref(), &column) {
                    TypeChange::NoRewrite(_) => {
                        if !dependents.is_empty() && presence.hazard() {
                            ctx.findings.push(Finding::warning(
                                CHANGING_COLUMN_TYPE,
                                format!(
                                    "{column} of {key} is used by {}; PostgreSQL refuses to change the type of a column a view or rule uses",
                                    list(&dependents)
                                ),
                                "drop and recreate the dependent views around the change, in one transaction".to_owned(),
                            ));
                        }
                    }
                    TypeChange::Rewrite(reason) => {
                        self.rewrite(ctx, key);
                        if presence.hazard() {
                            let table = self.describe(key);
                            let used = if dependents.is_empty() {
                                String::new()
                            } else {
                                format!("; the column is used by {}", list(&dependents))
                            };
                            ctx.findings.push(Finding::blocking(
                                CHANGING_COLUMN_TYPE,
                                format!(
                                    "ALTER COLUMN {column} TYPE {data_type} rewrites {table} and rebuilds its indexes under ACCESS EXCLUSIVE, blocking reads and writes for the whole rewrite: {reason}{used}"
                                ),
                                format!(
                                    "expand/contract: add a new column of type {data_type}, keep it in sync with a trigger, backfill it in batches, move readers and writers to it, then drop {column}"
                                ),
                            ));
                        }
                    }
                }
                if let Some(t) = self.table(key)
                    && let Some(c) = t.columns.get_mut(&column)
                {
                    c.data_type = Some(data_type.clone());
                }
            }
            // SET/DROP DEFAULT, identity and options only change the catalog.
            _ => {}
        }
    }

    /// SET NOT NULL on `column` (also implied by PRIMARY KEY USING INDEX).
    #[allow(clippy::too_many_arguments)]
    fn set_not_null(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        column: &str,
        state: Option<&ColumnState>,
        what: &str,
    ) {
        if state.is_some_and(|c| c.not_null) || self.validated_not_null_check(key, column) {
            // Already NOT NULL, or a validated CHECK (col IS NOT NULL) proves
            // it: PostgreSQL 12+ skips the scan.
        } else {
            self.scan(ctx, key);
            if presence.hazard() {
                let table = self.describe(key);
                let pending_check = self.unvalidated_not_null_check(key, column);
                let pending = match &pending_check {
                    Some(name) => format!("; CHECK {name} exists but is NOT VALID: VALIDATE it first"),
                    None => String::new(),
                };
                let check = format!(
                    "{}_{column}_not_null",
                    key.split_once('.').map_or(key, |(_, t)| t)
                );
                let mut steps = advice::not_null_steps(table_sql, column, &check, pending_check.as_deref());
                let note = if what == "SET NOT NULL" {
                    steps.push(format!(
                        "ALTER TABLE {table_sql} ALTER COLUMN {} SET NOT NULL",
                        ident(column)
                    ));
                    "each in its own transaction: the validated check spares SET NOT NULL its scan, and may be dropped after it".to_owned()
                } else {
                    format!(
                        "each in its own transaction; then the {what}: the validated check spares it the scan"
                    )
                };
                ctx.findings.push(Finding::blocking(
                    ADDING_NOT_NULLABLE_FIELD,
                    format!(
                        "{what} on {column} scans {table} under ACCESS EXCLUSIVE to prove there is no NULL, blocking reads and writes for the scan: no validated CHECK ({column} IS NOT NULL) exists{pending}"
                    ),
                    script(&steps, &note),
                ));
            }
        }
        if let Some(t) = self.table(key)
            && let Some(c) = t.columns.get_mut(column)
        {
            c.not_null = true;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_constraint(
        &mut self,
        ctx: &mut Ctx,
        index: usize,
        key: &str,
        table_sql: &str,
        presence: Presence,
        constraint: &TableConstraint,
        not_valid: bool,
    ) {
        let added_not_valid_in = if not_valid {
            self.transaction.map(|t| (t, index))
        } else {
            None
        };
        let register = |linter: &mut Linter<'_>, name: String, state: ConstraintState| {
            if let Some(t) = linter.table(key) {
                t.constraints.insert(name, state);
            }
        };
        match constraint {
            TableConstraint::ForeignKey(fk) => {
                let (name, state) = self.add_foreign_key(
                    ctx,
                    key,
                    table_sql,
                    presence,
                    constraint,
                    fk,
                    not_valid,
                    added_not_valid_in,
                );
                register(self, name, state);
            }
            TableConstraint::Check(check) => {
                let (name, state) = self.add_check(
                    ctx,
                    key,
                    table_sql,
                    presence,
                    constraint,
                    check,
                    not_valid,
                    added_not_valid_in,
                );
                register(self, name, state);
            }
            TableConstraint::Unique(unique) => {
                let (name, state) = self.add_unique(ctx, key, table_sql, presence, unique);
                register(self, name, state);
            }
            TableConstraint::PrimaryKey(pk) => {
                let (name, state) = self.add_primary_key(ctx, key, table_sql, presence, pk);
                register(self, name, state);
            }
            TableConstraint::UniqueUsingIndex(using) | TableConstraint::PrimaryKeyUsingIndex(using) => {
                let (name, state) = self.add_using_index(ctx, key, table_sql, presence, constraint, using);
                register(self, name, state);
            }
            TableConstraint::Exclude(_) => {
                self.lock(ctx, key, LockLevel::AccessExclusive);
                self.scan(ctx, key);
                if presence.hazard() {
                    let table = self.describe(key);
                    ctx.findings.push(Finding::blocking(
                        ADDING_EXCLUSION_CONSTRAINT,
                        format!(
                            "ADD EXCLUDE builds its index on {table} under ACCESS EXCLUSIVE, blocking reads and writes for the whole build; PostgreSQL has no concurrent way to add an exclusion constraint"
                        ),
                        "run it in a maintenance window, or enforce the rule with a trigger plus a concurrently built index".to_owned(),
                    ));
                }
            }
            other => {
                self.lock(ctx, key, LockLevel::AccessExclusive);
                ctx.findings.push(Finding::warning(
                    UNANALYZED_STATEMENT,
                    format!("the linter does not model ADD {other} (not PostgreSQL syntax)"),
                    "write the constraint in PostgreSQL syntax".to_owned(),
                ));
            }
        }
    }
    /// ADD FOREIGN KEY: SHARE ROW EXCLUSIVE on both tables, and a validation scan unless NOT VALID.
    #[allow(clippy::too_many_arguments)]
    fn add_foreign_key(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        constraint: &TableConstraint,
        fk: &ForeignKeyConstraint,
        not_valid: bool,
        added_not_valid_in: Option<(u32, usize)>,
    ) -> (String, ConstraintState) {
        let relation = key.split_once('.').map_or(key, |(_, t)| t).to_owned();
        self.lock(ctx, key, LockLevel::ShareRowExclusive);
        let referenced = self.table_key(&fk.foreign_table);
        if referenced != key {
            if self.presence(&referenced) == Presence::Missing {
                ctx.findings.push(Self::table_not_found(&referenced));
            }
            self.lock(ctx, &referenced, LockLevel::ShareRowExclusive);
        }
        let columns: Vec<String> = fk.columns.iter().map(fold).collect();
        let name = fk
            .name
            .as_ref()
            .map_or_else(|| format!("{relation}_{}_fkey", columns.join("_")), fold);
        if !not_valid {
            self.scan(ctx, key);
            if presence.hazard() {
                let table = self.describe(key);
                ctx.findings.push(Finding::blocking(
                    ADDING_FOREIGN_KEY_CONSTRAINT,
                    format!(
                        "ADD FOREIGN KEY without NOT VALID scans {table} to validate it while holding SHARE ROW EXCLUSIVE on {key} and {referenced}, blocking writes to both"
                    ),
                    script(
                        &advice::not_valid_then_validate(table_sql, constraint, &name),
                        VALIDATE_NOTE,
                    ),
                ));
            }
        }
        let state = ConstraintState {
            kind: ConstraintKind::ForeignKey,
            validated: !not_valid,
            not_null_column: None,
            references: Some(referenced),
            added_not_valid_in,
        };
        (name, state)
    }

    /// ADD CHECK: a validation scan under ACCESS EXCLUSIVE unless NOT VALID.
    #[allow(clippy::too_many_arguments)]
    fn add_check(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        constraint: &TableConstraint,
        check: &CheckConstraint,
        not_valid: bool,
        added_not_valid_in: Option<(u32, usize)>,
    ) -> (String, ConstraintState) {
        let relation = key.split_once('.').map_or(key, |(_, t)| t).to_owned();
        self.lock(ctx, key, LockLevel::AccessExclusive);
        let not_null_column = not_null_column(&check.expr);
        let name = check.name.as_ref().map_or_else(
            || match &not_null_column {
                Some(column) => format!("{relation}_{column}_check"),
                None => format!("{relation}_check"),
            },
            fold,
        );
        if !not_valid {
            self.scan(ctx, key);
            if presence.hazard() {
                let table = self.describe(key);
                ctx.findings.push(Finding::blocking(
                    CONSTRAINT_MISSING_NOT_VALID,
                    format!(
                        "ADD CHECK without NOT VALID scans {table} to validate it under ACCESS EXCLUSIVE, blocking reads and writes for the scan"
                    ),
                    script(
                        &advice::not_valid_then_validate(table_sql, constraint, &name),
                        VALIDATE_NOTE,
                    ),
                ));
            }
        }
        let state = ConstraintState {
            kind: ConstraintKind::Check,
            validated: !not_valid,
            not_null_column,
            references: None,
            added_not_valid_in,
        };
        (name, state)
    }

    /// ADD UNIQUE: its index built under ACCESS EXCLUSIVE.
    fn add_unique(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        unique: &UniqueConstraint,
    ) -> (String, ConstraintState) {
        let relation = key.split_once('.').map_or(key, |(_, t)| t).to_owned();
        self.lock(ctx, key, LockLevel::AccessExclusive);
        self.scan(ctx, key);
        let columns = index_columns(&unique.columns);
        let name = unique
            .name
            .as_ref()
            .map_or_else(|| format!("{relation}_{}_key", columns.join("_")), fold);
        if presence.hazard() {
            let table = self.describe(key);
            let column_list = unique
                .columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let index = ident(&name);
            let steps = [
                format!(
                    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table_sql} ({column_list})"
                ),
                format!("ALTER TABLE {table_sql} ADD CONSTRAINT {index} UNIQUE USING INDEX {index}"),
            ];
            ctx.findings.push(Finding::blocking(
                DISALLOWED_UNIQUE_CONSTRAINT,
                format!(
                    "ADD UNIQUE builds its index on {table} under ACCESS EXCLUSIVE, blocking reads and writes for the whole build"
                ),
                script(
                    &steps,
                    "the index is built outside a transaction block, without blocking writes; the constraint then only takes it over",
                ),
            ));
        }
        let state = ConstraintState {
            kind: ConstraintKind::Unique,
            validated: true,
            not_null_column: None,
            references: None,
            added_not_valid_in: None,
        };
        (name, state)
    }

    /// ADD PRIMARY KEY: its index built, and its columns set NOT NULL, under ACCESS EXCLUSIVE.
    fn add_primary_key(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        pk: &PrimaryKeyConstraint,
    ) -> (String, ConstraintState) {
        let relation = key.split_once('.').map_or(key, |(_, t)| t).to_owned();
        self.lock(ctx, key, LockLevel::AccessExclusive);
        self.scan(ctx, key);
        let name = pk.name.as_ref().map_or_else(|| format!("{relation}_pkey"), fold);
        if presence.hazard() {
            let table = self.describe(key);
            let column_list = pk
                .columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let mut steps = Vec::new();
            for column in index_columns(&pk.columns) {
                let not_null = matches!(self.column(key, &column), Ok(Some(c)) if c.not_null);
                if !not_null && !self.validated_not_null_check(key, &column) {
                    let pending = self.unvalidated_not_null_check(key, &column);
                    let check = format!("{relation}_{column}_not_null");
                    steps.extend(advice::not_null_steps(
                        table_sql,
                        &column,
                        &check,
                        pending.as_deref(),
                    ));
                }
            }
            let index = ident(&name);
            steps.push(format!(
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table_sql} ({column_list})"
            ));
            steps.push(format!(
                "ALTER TABLE {table_sql} ADD CONSTRAINT {index} PRIMARY KEY USING INDEX {index}"
            ));
            ctx.findings.push(Finding::blocking(
                ADDING_SERIAL_PRIMARY_KEY_FIELD,
                format!(
                    "ADD PRIMARY KEY builds its index on {table} (and sets its columns NOT NULL) under ACCESS EXCLUSIVE, blocking reads and writes for the whole build"
                ),
                script(
                    &steps,
                    "each in its own transaction, the index outside one: validated NOT NULL checks spare the primary key its scan",
                ),
            ));
        }
        if let Some(t) = self.table(key) {
            for column in index_columns(&pk.columns) {
                if let Some(c) = t.columns.get_mut(&column) {
                    c.not_null = true;
                }
            }
        }
        let state = ConstraintState {
            kind: ConstraintKind::PrimaryKey,
            validated: true,
            not_null_column: None,
            references: None,
            added_not_valid_in: None,
        };
        (name, state)
    }

    /// ADD UNIQUE / PRIMARY KEY USING INDEX: takes over an index built before.
    fn add_using_index(
        &mut self,
        ctx: &mut Ctx,
        key: &str,
        table_sql: &str,
        presence: Presence,
        constraint: &TableConstraint,
        using: &ConstraintUsingIndex,
    ) -> (String, ConstraintState) {
        let relation = key.split_once('.').map_or(key, |(_, t)| t).to_owned();
        let primary = matches!(constraint, TableConstraint::PrimaryKeyUsingIndex(_));
        self.lock(ctx, key, LockLevel::AccessExclusive);
        let schema = key.split_once('.').map(|(s, _)| s.to_owned());
        let index_key = self.index_key(
            &ObjectName::from(vec![using.index_name.clone()]),
            schema.as_deref(),
        );
        match self.index(&index_key) {
            None => ctx.findings.push(Finding::blocking(
                INDEX_NOT_FOUND,
                format!("index {index_key} does not exist; the statement fails"),
                format!(
                    "CREATE UNIQUE INDEX CONCURRENTLY {} ON {table_sql} (...); first, outside a transaction block",
                    using.index_name
                ),
            )),
            Some(found) if found.table != key => ctx.findings.push(Finding::blocking(
                INDEX_NOT_FOUND,
                format!("index {index_key} is on {}, not on {key}; the statement fails", found.table),
                "name an index of this table".to_owned(),
            )),
            Some(found) => {
                if !found.valid {
                    ctx.findings.push(Finding::blocking(
                        DISALLOWED_UNIQUE_CONSTRAINT,
                        format!(
                            "index {index_key} is INVALID (a failed CREATE INDEX CONCURRENTLY); the statement fails"
                        ),
                        rebuild_advice(&index_key, table_sql, &found.columns),
                    ));
                }
                if !found.unique {
                    ctx.findings.push(Finding::blocking(
                        DISALLOWED_UNIQUE_CONSTRAINT,
                        format!("index {index_key} is not unique; the statement fails"),
                        format!(
                            "CREATE UNIQUE INDEX CONCURRENTLY on the same columns and use that index in ADD CONSTRAINT ... USING INDEX (statement on {table_sql})"
                        ),
                    ));
                }
                if primary {
                    for column in found.columns.iter().filter(|c| !c.is_empty()) {
                        let state = self.column(key, column).ok().flatten();
                        self.set_not_null(
                            ctx,
                            key,
                            table_sql,
                            presence,
                            column,
                            state.as_ref(),
                            "PRIMARY KEY USING INDEX (an implicit SET NOT NULL)",
                        );
                    }
                }
            }
        }
        let relation_default = if primary {
            format!("{relation}_pkey")
        } else {
            index_key.clone()
        };
        let name = using.name.as_ref().map_or(relation_default, fold);
        let kind = if primary {
            ConstraintKind::PrimaryKey
        } else {
            ConstraintKind::Unique
        };
        let state = ConstraintState {
            kind,
            validated: true,
            not_null_column: None,
            references: None,
            added_not_valid_in: None,
        };
        (name, state)
    }
}

/// The lock of an ALTER TABLE subcommand that does nothing else the linter
/// models (no scan, no rewrite, no change to the model).
fn lock_only(op: &AlterTableOperation) -> Option<LockLevel> {
    use AlterTableOperation as Op;
    match op {
        Op::SetOptionsParens { .. } | Op::ResetOptions { .. } => Some(LockLevel::ShareUpdateExclusive),
        Op::EnableTrigger { .. }
        | Op::DisableTrigger { .. }
        | Op::EnableAlwaysTrigger { .. }
        | Op::EnableReplicaTrigger { .. } => Some(LockLevel::ShareRowExclusive),
        Op::DisableRowLevelSecurity
        | Op::EnableRowLevelSecurity
        | Op::ForceRowLevelSecurity
        | Op::NoForceRowLevelSecurity
        | Op::ReplicaIdentity { .. }
        | Op::OwnerTo { .. }
        | Op::Inherit { .. }
        | Op::NoInherit { .. }
        | Op::EnableRule { .. }
        | Op::DisableRule { .. }
        | Op::EnableAlwaysRule { .. }
        | Op::EnableReplicaRule { .. } => Some(LockLevel::AccessExclusive),
        _ => None,
    }
}

/// The finding of DROP / RENAME of a column or table: blocking while
/// something still uses it, a warning otherwise (application code may).
fn drop_or_rename_finding(
    rule: &'static str,
    what: &str,
    dependents: &[String],
    cascade: bool,
    safe_alternative: &str,
) -> Finding {
    if dependents.is_empty() {
        Finding::warning(
            rule,
            format!(
                "{what}: the catalog shows no dependent object, but application code that still uses the old name breaks"
            ),
            safe_alternative.to_owned(),
        )
    } else {
        let consequence = if rule == BAN_DROP_COLUMN || rule == BAN_DROP_TABLE {
            if cascade {
                "CASCADE drops those objects too"
            } else {
                "PostgreSQL refuses the drop while they depend on it (CASCADE would drop them)"
            }
        } else {
            "function bodies and queries that use the old name break"
        };
        Finding::blocking(
            rule,
            format!("{what}: still used by {}; {consequence}", list(dependents)),
            safe_alternative.to_owned(),
        )
    }
}

/// Why each step of a NOT VALID + VALIDATE advice runs on its own.
const VALIDATE_NOTE: &str = "each in its own transaction: VALIDATE CONSTRAINT scans under SHARE UPDATE EXCLUSIVE (ROW SHARE on a referenced table), so reads and writes go on";

/// A column whose ADD would rewrite the table: added without what fills
/// it, then a default for new rows only (no rewrite); existing rows are
/// backfilled in batches.
fn default_advice(table_sql: &str, key: &str, column_def: &ColumnDef, default: Option<&Expr>) -> String {
    let note = "then backfill existing rows in batches by key range, one short transaction each (and for NOT NULL the CHECK ... NOT VALID / VALIDATE / SET NOT NULL steps)";
    let name = &column_def.name;
    let add = |data_type: &dyn std::fmt::Display| {
        format!("ALTER TABLE {table_sql} ADD COLUMN IF NOT EXISTS {name} {data_type}")
    };
    let set_default =
        |value: &str| format!("ALTER TABLE {table_sql} ALTER COLUMN {name} SET DEFAULT {value}");
    let (schema, relation) = key.split_once('.').unwrap_or(("public", key));
    if let Some(serial) = serial_type(&column_def.data_type) {
        let sequence = format!(
            "{}.{}",
            ident(schema),
            ident(&format!("{relation}_{}_seq", fold(name)))
        );
        // Owned by the column, as serial's own sequence is.
        let steps = [
            add(&serial_base(&serial)),
            format!("CREATE SEQUENCE IF NOT EXISTS {sequence} OWNED BY {table_sql}.{name}"),
            set_default(&format!("nextval('{}')", sequence.replace('\'', "''"))),
        ];
        return script(&steps, note);
    }
    let fills_itself = column_def.options.iter().any(|o| {
        matches!(
            o.option,
            ColumnOption::Identity(_) | ColumnOption::Generated { .. }
        )
    });
    match default {
        Some(default) if !fills_itself => script(
            &[add(&column_def.data_type), set_default(&default.to_string())],
            note,
        ),
        _ => format!(
            "PostgreSQL fills an identity or stored generated column by rewriting the table: add {name} as a plain {} column with a sequence default instead (no rewrite) and backfill existing rows in batches, or run the statement in a maintenance window",
            column_def.data_type
        ),
    }
}

/// The integer type under a serial type.
fn serial_base(serial: &str) -> &'static str {
    match serial {
        "bigserial" | "serial8" => "bigint",
        "smallserial" | "serial2" => "smallint",
        _ => "integer",
    }
}

/// An INVALID unique index dropped and built again, concurrently (in
/// words when it has expression columns, which the facts do not spell).
fn rebuild_advice(index_key: &str, table_sql: &str, columns: &[String]) -> String {
    let (schema, index) = index_key.split_once('.').unwrap_or(("public", index_key));
    if columns.is_empty() || columns.iter().any(String::is_empty) {
        return format!(
            "DROP INDEX CONCURRENTLY {index_key}, build it again with CREATE UNIQUE INDEX CONCURRENTLY (outside a transaction block), then run the statement again"
        );
    }
    let column_list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let steps = [
        format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
            ident(schema),
            ident(index)
        ),
        format!(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {table_sql} ({column_list})",
            ident(index)
        ),
    ];
    script(
        &steps,
        "outside a transaction block; then run the statement again",
    )
}

/// `DROP INDEX CONCURRENTLY IF EXISTS <name>` per index: PostgreSQL drops
/// one index per concurrent drop.
fn drop_indexes_concurrently(names: &[ObjectName]) -> Vec<String> {
    names
        .iter()
        .map(|name| format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        .collect()
}

/// `a, b, c and 4 more`.
fn list(items: &[String]) -> String {
    let shown = items
        .iter()
        .take(DEPENDENTS_LISTED_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(DEPENDENTS_LISTED_MAX) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The plain column names of index columns (empty for expressions).
fn index_columns(columns: &[IndexColumn]) -> Vec<String> {
    columns
        .iter()
        .map(|c| match &c.column.expr {
            Expr::Identifier(ident) => fold(ident),
            _ => String::new(),
        })
        .collect()
}

/// The column of a CHECK of the form `col IS NOT NULL`.
fn not_null_column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Nested(inner) => not_null_column(inner),
        Expr::IsNotNull(inner) => match inner.as_ref() {
            Expr::Identifier(ident) => Some(fold(ident)),
            Expr::Nested(nested) => match nested.as_ref() {
                Expr::Identifier(ident) => Some(fold(ident)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// `serial`, `bigserial`, `smallserial` (and their `serialN` spellings).
fn serial_type(data_type: &DataType) -> Option<String> {
    let DataType::Custom(name, modifiers) = data_type else {
        return None;
    };
    let last = name.0.last().and_then(|p| p.as_ident()).map(fold)?;
    let serial = matches!(
        last.as_str(),
        "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8"
    );
    (serial && modifiers.is_empty()).then_some(last)
}

/// Whether a `lock_timeout` value enables a timeout (0 and DEFAULT disable it).
fn timeout_is_set(value: &Expr) -> bool {
    match value {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<f64>() != Ok(0.0),
            Value::SingleQuotedString(s) => timeout_text_is_set(s),
            _ => true,
        },
        Expr::Identifier(ident) => !ident.value.eq_ignore_ascii_case("default"),
        _ => true,
    }
}

/// Whether a lock_timeout written as text (`'2s'`, `'0'`) is other than 0.
fn timeout_text_is_set(text: &str) -> bool {
    let digits: String = text
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse::<f64>() != Ok(0.0)
}

/// The first words of a statement, for messages.
fn statement_keyword(statement: &Statement) -> String {
    statement
        .to_string()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `512.0 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
