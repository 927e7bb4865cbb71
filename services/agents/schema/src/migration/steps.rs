//! From a migration and the shape of the tables it changes to the SQL of
//! each phase: expand (new columns, sync triggers, the new version's
//! views), backfill (bounded keyset batches), validate, complete
//! (contract) and rollback. Pure: the catalog is read by the caller.
//!
//! The expand/contract model is pgroll's: the physical table keeps the old
//! shape until complete; a column whose type or nullability changes gets a
//! twin `_dbswarm_new_<column>`; a trigger keeps old and twin in sync for
//! writers of either version (a writer whose `search_path` starts with the
//! version schema writes the new version); views in the version schema
//! `<schema>_<migration>` show the new shape. Every generated statement is
//! idempotent (`IF [NOT] EXISTS`, `OR REPLACE`), so an interrupted apply
//! or rollback can simply run again.

use std::collections::BTreeMap;

// Identifiers are quoted the agents' one way; the short name keeps the
// SQL built below readable.
use agents::pg::{LockLevel, Step};
use agents::sql::quote_ident as quote;
use serde::Serialize;

use super::definition::{IDENTIFIER_BYTES_MAX, Migration, Operation, RESERVED_PREFIX};

/// One column as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnShape {
    pub name: String,
    /// `format_type` of it, e.g. `character(84)`.
    pub type_name: String,
    pub not_null: bool,
    /// `pg_get_expr` of its default.
    pub default: Option<String>,
    /// What uses it besides the table itself (kind and name), e.g.
    /// `("view", "public.v")`, `("index", "public.t_c_idx")`.
    pub dependents: Vec<(String, String)>,
}

/// One table as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// In `attnum` order.
    pub columns: Vec<ColumnShape>,
    /// Primary key columns, in key order.
    pub primary_key: Vec<String>,
    pub estimated_rows: u64,
}

impl TableShape {
    fn column(&self, name: &str) -> Option<&ColumnShape> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Rows of one table to fill through the sync trigger, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backfill {
    /// `schema.table`, for reports.
    pub table: String,
    /// The table, quoted.
    pub relation: String,
    /// The single-column primary key, quoted, and its type.
    pub key: String,
    pub key_type: String,
    pub estimated_rows: u64,
}

/// A SQL operation of the migration, run where it stands in the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Script {
    /// 1-based position of the operation in the migration.
    pub operation: usize,
    pub up: String,
    pub down: Option<String>,
}

/// Everything a migration will run, phase by phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationPlan {
    pub version_schema: String,
    /// The version schema is created first; it also records which SQL
    /// operations are done (see `progress_comment`).
    pub create_version_schema: Step,
    /// Steps and scripts in the migration's order.
    pub expand: Vec<ExpandItem>,
    pub backfills: Vec<Backfill>,
    pub validate: Vec<Step>,
    /// Run in one transaction.
    pub complete: Vec<Step>,
    /// Catalog steps of rollback, before the scripts' `down`s (reverse
    /// order) and the index drops.
    pub rollback: Vec<Step>,
    pub rollback_indexes: Vec<Step>,
    pub rollback_scripts: Vec<Script>,
    pub drop_version_schema: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExpandItem {
    Step(Step),
    Script(Script),
}

/// Why a migration cannot be planned against this database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation {operation} ({kind}): {message}")]
pub struct PlanError {
    pub operation: usize,
    pub kind: &'static str,
    pub message: String,
}

/// Quotes a string literal for PostgreSQL.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn relation(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

/// The twin of a changed or added column.
pub fn twin(column: &str) -> String {
    bounded_name(&format!("{RESERVED_PREFIX}_new_{column}"))
}

fn not_null_check(column: &str) -> String {
    bounded_name(&format!("{RESERVED_PREFIX}_nn_{column}"))
}

/// The sync trigger and its function, per table.
fn sync_name(table: &TableShape) -> String {
    format!("{RESERVED_PREFIX}_sync_{}", table.oid)
}

fn bounded_name(name: &str) -> String {
    let mut end = name.len().min(IDENTIFIER_BYTES_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// The comment on the version schema saying how many of the migration's
/// operations (in order) have run; a SQL operation and its comment commit
/// together, so a resumed apply or a rollback knows exactly which ran.
pub fn progress_comment(version_schema: &str, migration: &str, operations_done: usize) -> String {
    format!(
        "COMMENT ON SCHEMA {} IS {}",
        quote(version_schema),
        literal(&format!(
            "dbswarm migration {migration}: operations done: {operations_done}"
        ))
    )
}

/// The comment complete leaves, in its own transaction: a complete that
/// committed but was not recorded is recognised and only recorded.
pub fn completed_comment(version_schema: &str, migration: &str) -> String {
    format!(
        "COMMENT ON SCHEMA {} IS {}",
        quote(version_schema),
        literal(&format!("dbswarm migration {migration}: {COMPLETED}"))
    )
}

const COMPLETED: &str = "completed";

/// What the version schema's comment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    OperationsDone(usize),
    Completed,
}

/// Reads [`progress_comment`] or [`completed_comment`] back.
pub fn read_progress(comment: &str) -> Option<Progress> {
    if comment.ends_with(&format!(": {COMPLETED}")) {
        return Some(Progress::Completed);
    }
    let done = comment.rsplit("operations done: ").next()?.trim().parse().ok()?;
    Some(Progress::OperationsDone(done))
}

/// What the migration does to one table's columns.
#[derive(Default)]
struct TableChange<'a> {
    renamed: BTreeMap<&'a str, &'a str>,
    /// Old column → (new type, not null, up, down).
    altered: BTreeMap<&'a str, Altered>,
    added: Vec<Added<'a>>,
    /// Dropped column → its `down`.
    dropped: BTreeMap<&'a str, Option<&'a str>>,
}

struct Altered {
    type_name: String,
    not_null: bool,
    up: String,
    down: String,
}

struct Added<'a> {
    column: &'a str,
    type_name: &'a str,
    default: Option<&'a str>,
    not_null: bool,
    up: Option<&'a str>,
}

impl TableChange<'_> {
    fn needs_trigger(&self) -> bool {
        !self.altered.is_empty()
            || self.added.iter().any(|a| a.up.is_some() || a.default.is_some())
            || self.dropped.values().any(Option::is_some)
    }

    fn changes_shape(&self) -> bool {
        !(self.renamed.is_empty()
            && self.altered.is_empty()
            && self.added.is_empty()
            && self.dropped.is_empty())
    }

    fn needs_backfill(&self) -> bool {
        !self.altered.is_empty() || self.added.iter().any(|a| a.up.is_some() || a.default.is_some())
    }
}

/// Plans `migration` against `tables` (keyed by table name, in the
/// migration's schema). `older_version_schemas` are dropped on complete
/// (their views use columns complete removes).
pub fn plan(
    migration: &Migration,
    tables: &BTreeMap<String, TableShape>,
    older_version_schemas: &[String],
) -> Result<MigrationPlan, PlanError> {
    let version_schema = migration.version_schema();
    let mut operations = PlannedOperations::default();
    for (index, op) in migration.operations.iter().enumerate() {
        plan_operation(migration, tables, index + 1, op, &mut operations)?;
    }
    let PlannedOperations {
        mut expand,
        changes,
        rollback_indexes,
        mut rollback_scripts,
    } = operations;
    let mut backfills = Vec::new();
    let mut validate = Vec::new();
    let mut complete: Vec<Step> = older_version_schemas
        .iter()
        .map(|s| drop_older_views(s))
        .collect();
    let mut rollback = Vec::new();
    for (table_name, change) in &changes {
        if !change.changes_shape() {
            continue;
        }
        let planned =
            plan_table(&tables[*table_name], change, &version_schema).map_err(|message| PlanError {
                operation: first_operation_on(migration, table_name),
                kind: "table",
                message,
            })?;
        expand.extend(planned.expand.into_iter().map(ExpandItem::Step));
        backfills.extend(planned.backfill);
        validate.extend(planned.validate);
        complete.extend(planned.complete);
        rollback.extend(planned.rollback);
    }
    rollback_scripts.reverse();
    Ok(MigrationPlan {
        create_version_schema: transactional_step(
            format!("create version schema {version_schema}"),
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote(&version_schema)),
            None,
        ),
        drop_version_schema: transactional_step(
            format!("drop version schema {version_schema}"),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&version_schema)),
            None,
        ),
        version_schema,
        expand,
        backfills,
        validate,
        complete,
        rollback,
        rollback_indexes,
        rollback_scripts,
    })
}

/// What the operations give, read in order, before each table's change
/// is planned as a whole.
#[derive(Default)]
struct PlannedOperations<'a> {
    /// Scripts and index builds, in the migration's order.
    expand: Vec<ExpandItem>,
    /// Per table, what its column operations do together.
    changes: BTreeMap<&'a str, TableChange<'a>>,
    rollback_indexes: Vec<Step>,
    /// In the migration's order (rollback runs them reversed).
    rollback_scripts: Vec<Script>,
}

/// Checks operation `number` against the tables and adds it to `planned`.
fn plan_operation<'a>(
    migration: &Migration,
    tables: &BTreeMap<String, TableShape>,
    number: usize,
    op: &'a Operation,
    planned: &mut PlannedOperations<'a>,
) -> Result<(), PlanError> {
    let error = |message: String| PlanError {
        operation: number,
        kind: op.kind(),
        message,
    };
    if let Operation::Sql { up, down, .. } = op {
        let script = Script {
            operation: number,
            up: up.clone(),
            down: down.clone(),
        };
        planned.rollback_scripts.push(script.clone());
        planned.expand.push(ExpandItem::Script(script));
        return Ok(());
    }
    let table_name = op.table().unwrap_or_default();
    let table = tables.get(table_name).ok_or_else(|| {
        error(format!(
            "there is no table {}.{table_name} (a table created by this migration's SQL cannot be changed by a structured operation of the same migration)",
            migration.schema
        ))
    })?;
    if let Some(column) = op.existing_column()
        && table.column(column).is_none()
    {
        return Err(error(format!(
            "table {}.{} has no column {column}",
            table.schema, table.name
        )));
    }
    let change = planned.changes.entry(table_name).or_default();
    match op {
        Operation::Sql { .. } => Ok(()),
        Operation::RenameColumn { from, to, .. } => rename_column(table, change, from, to),
        Operation::AlterColumn {
            column,
            type_name,
            not_null,
            up,
            down,
            ..
        } => alter_column(table, change, column, type_name.as_deref(), *not_null, up, down),
        Operation::AddColumn {
            column,
            type_name,
            default,
            not_null,
            up,
            ..
        } => add_column(
            table,
            change,
            Added {
                column,
                type_name,
                default: default.as_deref(),
                not_null: *not_null,
                up: up.as_deref(),
            },
        ),
        Operation::DropColumn { column, down, .. } => drop_column(table, change, column, down.as_deref()),
        Operation::CreateIndex {
            name,
            columns,
            unique,
            ..
        } => create_index(&migration.schema, table, name, columns, *unique).map(|(build, drop)| {
            planned.expand.push(ExpandItem::Step(build));
            planned.rollback_indexes.push(drop);
        }),
    }
    .map_err(error)
}

fn rename_column<'a>(
    table: &TableShape,
    change: &mut TableChange<'a>,
    from: &'a str,
    to: &'a str,
) -> Result<(), String> {
    if table.column(to).is_some() {
        return Err(format!("table {} already has a column {to}", table.name));
    }
    refuse_dependents(
        table,
        from,
        &["view", "materialized view", "function", "procedure", "policy"],
    )?;
    change.renamed.insert(from, to);
    Ok(())
}

/// The column gets a twin of the new type and nullability, filled by
/// `up` (by default a cast) and written back by `down`.
fn alter_column<'a>(
    table: &TableShape,
    change: &mut TableChange<'a>,
    column: &'a str,
    type_name: Option<&str>,
    not_null: bool,
    up: &Option<String>,
    down: &Option<String>,
) -> Result<(), String> {
    let old = table.column(column).expect("checked by the caller");
    refuse_dependents(table, column, &[])?;
    let new_type = type_name.map_or_else(|| old.type_name.clone(), str::to_owned);
    let cast = |name: &str, to: &str| format!("CAST({} AS {to})", quote(name));
    let (default_up, default_down) = match type_name {
        Some(new_type) => (cast(column, new_type), cast(column, &old.type_name)),
        None => (quote(column), quote(column)),
    };
    change.altered.insert(
        column,
        Altered {
            type_name: new_type,
            not_null: not_null || old.not_null,
            up: up.clone().unwrap_or(default_up),
            down: down.clone().unwrap_or(default_down),
        },
    );
    Ok(())
}

fn add_column<'a>(table: &TableShape, change: &mut TableChange<'a>, added: Added<'a>) -> Result<(), String> {
    let column = added.column;
    if table.column(column).is_some() {
        return Err(format!("table {} already has a column {column}", table.name));
    }
    if added.not_null && added.up.is_none() && added.default.is_none() {
        return Err(format!(
            "a NOT NULL column needs 'up' or 'default' to fill the {} existing rows",
            table.estimated_rows
        ));
    }
    change.added.push(added);
    Ok(())
}

fn drop_column<'a>(
    table: &TableShape,
    change: &mut TableChange<'a>,
    column: &'a str,
    down: Option<&'a str>,
) -> Result<(), String> {
    let old = table.column(column).expect("checked by the caller");
    refuse_dependents(
        table,
        column,
        &[
            "view",
            "materialized view",
            "function",
            "procedure",
            "policy",
            "foreign key",
        ],
    )?;
    if old.not_null && old.default.is_none() && down.is_none() {
        return Err(format!(
            "column {column} is NOT NULL without a default: new-version inserts need 'down' to fill it"
        ));
    }
    if table.primary_key.iter().any(|k| k == column) {
        return Err(format!("column {column} is part of the primary key"));
    }
    change.dropped.insert(column, down);
    Ok(())
}

/// The concurrent build of the index and the drop that rolls it back.
fn create_index(
    schema: &str,
    table: &TableShape,
    name: &str,
    columns: &[String],
    unique: bool,
) -> Result<(Step, Step), String> {
    for column in columns {
        if table.column(column).is_none() {
            return Err(format!("table {} has no column {column}", table.name));
        }
    }
    let keys: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let build = Step {
        description: format!("build index {name} without blocking writes"),
        sql: format!(
            "CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})",
            if unique { "UNIQUE " } else { "" },
            quote(name),
            relation(schema, &table.name),
            keys.join(", ")
        ),
        transactional: false,
        builds_index: Some((schema.to_owned(), name.to_owned())),
        lock: Some(LockLevel::ShareUpdateExclusive),
    };
    let drop = Step {
        description: format!("drop index {name}"),
        sql: format!("DROP INDEX CONCURRENTLY IF EXISTS {}", relation(schema, name)),
        transactional: false,
        builds_index: None,
        lock: Some(LockLevel::ShareUpdateExclusive),
    };
    Ok((build, drop))
}

/// Complete drops an older version's views: they use columns it removes.
fn drop_older_views(schema: &str) -> Step {
    transactional_step(
        format!("drop the views of older version {schema}"),
        format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(schema)),
        None,
    )
}

/// 1-based position of the migration's first operation on `table` (0: none).
fn first_operation_on(migration: &Migration, table: &str) -> usize {
    migration
        .operations
        .iter()
        .position(|op| op.table() == Some(table))
        .map_or(0, |i| i + 1)
}

/// Refuses a change of `column` while objects of `kinds` use it (all
/// kinds when empty: a twin column would leave every dependent behind).
fn refuse_dependents(table: &TableShape, column: &str, kinds: &[&str]) -> Result<(), String> {
    let column_shape = table.column(column).expect("checked by the caller");
    let blocking: Vec<String> = column_shape
        .dependents
        .iter()
        .filter(|(kind, _)| kinds.is_empty() || kinds.contains(&kind.as_str()))
        .map(|(kind, name)| format!("{kind} {name}"))
        .collect();
    if blocking.is_empty() {
        return Ok(());
    }
    Err(format!(
        "column {}.{}.{column} is used by {}; change or drop those first (in an earlier migration)",
        table.schema,
        table.name,
        blocking.join(", ")
    ))
}

struct TablePlan {
    expand: Vec<Step>,
    backfill: Option<Backfill>,
    validate: Vec<Step>,
    complete: Vec<Step>,
    rollback: Vec<Step>,
}

fn plan_table(table: &TableShape, change: &TableChange, version_schema: &str) -> Result<TablePlan, String> {
    let rel = relation(&table.schema, &table.name);
    let twins = twins(change);
    let mut plan = TablePlan {
        expand: Vec::new(),
        backfill: None,
        validate: Vec::new(),
        complete: Vec::new(),
        rollback: drop_sync(table),
    };
    plan.complete.extend(plan.rollback.iter().cloned());
    for twin in &twins {
        expand_twin(&rel, twin, &mut plan)?;
    }
    plan.expand.extend(twin_defaults(table, change, &rel));
    if change.needs_trigger() {
        plan.expand.extend(create_sync(table, change, version_schema));
    }
    let view = relation(version_schema, &table.name);
    plan.expand.push(transactional_step(
        format!("view {version_schema}.{} of the new version", table.name),
        format!(
            "CREATE OR REPLACE VIEW {view} AS SELECT {} FROM {rel}",
            new_version_columns(table, change).join(", ")
        ),
        Some(LockLevel::AccessShare),
    ));
    plan.rollback.insert(
        0,
        transactional_step(
            format!("drop view {version_schema}.{}", table.name),
            format!("DROP VIEW IF EXISTS {view}"),
            None,
        ),
    );
    if change.needs_backfill() {
        plan.backfill = Some(backfill(table, &rel)?);
    }
    plan.complete.extend(contract(change, &rel, &twins));
    Ok(plan)
}

/// A column of the new shape written to a twin until complete: an altered
/// column's new type or an added column.
struct Twin<'a> {
    column: &'a str,
    type_name: &'a str,
    not_null: bool,
}

/// One twin per altered or added column, altered ones first.
fn twins<'a>(change: &'a TableChange) -> Vec<Twin<'a>> {
    change
        .altered
        .iter()
        .map(|(c, a)| Twin {
            column: c,
            type_name: a.type_name.as_str(),
            not_null: a.not_null,
        })
        .chain(change.added.iter().map(|a| Twin {
            column: a.column,
            type_name: a.type_name,
            not_null: a.not_null,
        }))
        .collect()
}

/// A step run in a transaction (every step but concurrent index builds).
fn transactional_step(description: String, sql: String, lock: Option<LockLevel>) -> Step {
    Step {
        description,
        sql,
        transactional: true,
        builds_index: None,
        lock,
    }
}

/// Drops the sync trigger and its function: the start of rollback and of
/// complete alike.
fn drop_sync(table: &TableShape) -> Vec<Step> {
    let rel = relation(&table.schema, &table.name);
    let sync = sync_name(table);
    vec![
        transactional_step(
            format!("drop the sync trigger of {}", table.name),
            format!("DROP TRIGGER IF EXISTS {} ON {rel}", quote(&sync)),
            Some(LockLevel::AccessExclusive),
        ),
        transactional_step(
            format!("drop the sync function of {}", table.name),
            format!("DROP FUNCTION IF EXISTS {}()", relation(&table.schema, &sync)),
            None,
        ),
    ]
}

/// Adds the twin column (and, for a NOT NULL one, a check that is
/// validated later without a write lock), and its drop on rollback.
fn expand_twin(rel: &str, twin_column: &Twin, plan: &mut TablePlan) -> Result<(), String> {
    let Twin {
        column,
        type_name,
        not_null,
    } = *twin_column;
    let twin = twin(column);
    if twin.len() < RESERVED_PREFIX.len() + 5 + column.len() {
        return Err(format!(
            "column name {column} is too long for its twin column; rename it first"
        ));
    }
    plan.expand.push(transactional_step(
        format!("add {twin} ({type_name}), {column} of the new version"),
        format!(
            "ALTER TABLE {rel} ADD COLUMN IF NOT EXISTS {} {type_name}",
            quote(&twin)
        ),
        Some(LockLevel::AccessExclusive),
    ));
    plan.rollback.push(transactional_step(
        format!("drop {twin}"),
        format!("ALTER TABLE {rel} DROP COLUMN IF EXISTS {}", quote(&twin)),
        Some(LockLevel::AccessExclusive),
    ));
    if not_null {
        let check = not_null_check(column);
        plan.expand.push(transactional_step(
            format!("require {twin} to be set, for new rows now and for old ones once validated"),
            format!(
                "DO $dbswarm$ BEGIN ALTER TABLE {rel} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $dbswarm$",
                quote(&check),
                quote(&twin)
            ),
            Some(LockLevel::AccessExclusive),
        ));
        plan.validate.push(transactional_step(
            format!("validate that every row has {twin} (no write lock)"),
            format!("ALTER TABLE {rel} VALIDATE CONSTRAINT {}", quote(&check)),
            Some(LockLevel::ShareUpdateExclusive),
        ));
    }
    Ok(())
}

/// Defaults: the old column's on an altered twin, the given one on an added column.
fn twin_defaults(table: &TableShape, change: &TableChange, rel: &str) -> Vec<Step> {
    let set_default = |description: String, column: &str, default: &str| {
        transactional_step(
            description,
            format!(
                "ALTER TABLE {rel} ALTER COLUMN {} SET DEFAULT {default}",
                quote(&twin(column))
            ),
            Some(LockLevel::AccessExclusive),
        )
    };
    let altered = change.altered.keys().filter_map(|column| {
        let default = table.column(column).and_then(|c| c.default.as_ref())?;
        Some(set_default(
            format!("give {} the default of {column}", twin(column)),
            column,
            default,
        ))
    });
    let added = change.added.iter().filter_map(|added| {
        let default = added.default?;
        Some(set_default(
            format!("default of {}", added.column),
            added.column,
            default,
        ))
    });
    altered.chain(added).collect()
}

/// The sync function and its trigger: old and new version writers both
/// keep both shapes.
fn create_sync(table: &TableShape, change: &TableChange, version_schema: &str) -> [Step; 2] {
    let rel = relation(&table.schema, &table.name);
    let sync = sync_name(table);
    let function = relation(&table.schema, &sync);
    [
        transactional_step(
            format!(
                "sync function of {}: old and new version writers both keep both shapes",
                table.name
            ),
            sync_function(table, change, version_schema, &function),
            None,
        ),
        transactional_step(
            format!("sync trigger on {}", table.name),
            format!(
                "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE ON {rel} FOR EACH ROW EXECUTE FUNCTION {function}()",
                quote(&sync)
            ),
            Some(LockLevel::ShareRowExclusive),
        ),
    ]
}

/// The batched backfill of the twins, in the order of the table's
/// single-column primary key.
fn backfill(table: &TableShape, rel: &str) -> Result<Backfill, String> {
    let [key] = table.primary_key.as_slice() else {
        return Err(format!(
            "table {}.{} needs a single-column primary key for the batched backfill (it has {})",
            table.schema,
            table.name,
            if table.primary_key.is_empty() {
                "none".to_owned()
            } else {
                table.primary_key.join(", ")
            }
        ));
    };
    let key_type = table.column(key).map(|c| c.type_name.clone()).unwrap_or_default();
    Ok(Backfill {
        table: format!("{}.{}", table.schema, table.name),
        relation: rel.to_owned(),
        key: quote(key),
        key_type,
        estimated_rows: table.estimated_rows,
    })
}

/// Contract: renames, drops, and each twin taking its column's place
/// (with NOT NULL proven by the validated check).
fn contract(change: &TableChange, rel: &str, twins: &[Twin]) -> Vec<Step> {
    let alter = |description: String, action: String| {
        transactional_step(
            description,
            format!("ALTER TABLE {rel} {action}"),
            Some(LockLevel::AccessExclusive),
        )
    };
    let mut complete = Vec::new();
    for (from, to) in &change.renamed {
        complete.push(alter(
            format!("rename {from} to {to}"),
            format!("RENAME COLUMN {} TO {}", quote(from), quote(to)),
        ));
    }
    for column in change.dropped.keys() {
        complete.push(alter(
            format!("drop {column}"),
            format!("DROP COLUMN {}", quote(column)),
        ));
    }
    for &Twin { column, not_null, .. } in twins {
        let twin = twin(column);
        if change.altered.contains_key(column) {
            complete.push(alter(
                format!("drop the old {column}"),
                format!("DROP COLUMN {}", quote(column)),
            ));
        }
        complete.push(alter(
            format!("{twin} becomes {column}"),
            format!("RENAME COLUMN {} TO {}", quote(&twin), quote(column)),
        ));
        if not_null {
            complete.push(alter(
                format!("{column} NOT NULL (proven by the validated check: no scan)"),
                format!("ALTER COLUMN {} SET NOT NULL", quote(column)),
            ));
            complete.push(alter(
                format!("drop the check that proved {column} NOT NULL"),
                format!("DROP CONSTRAINT {}", quote(&not_null_check(column))),
            ));
        }
    }
    complete
}

/// The new version's select list: old columns in order (renamed, twins
/// under the old name, dropped ones left out), then added ones.
fn new_version_columns(table: &TableShape, change: &TableChange) -> Vec<String> {
    let mut columns = Vec::new();
    for column in &table.columns {
        let name = column.name.as_str();
        if change.dropped.contains_key(name) {
            continue;
        }
        if let Some(to) = change.renamed.get(name) {
            columns.push(format!("{} AS {}", quote(name), quote(to)));
        } else if change.altered.contains_key(name) {
            columns.push(format!("{} AS {}", quote(&twin(name)), quote(name)));
        } else {
            columns.push(quote(name));
        }
    }
    for added in &change.added {
        columns.push(format!(
            "{} AS {}",
            quote(&twin(added.column)),
            quote(added.column)
        ));
    }
    columns
}

/// The sync trigger's function. A writer whose search_path holds the
/// version schema writes the new version: the old columns are derived
/// with `down` from the new row. Any other writer writes the old version:
/// twins are derived with `up` from the old row. Each side declares the
/// columns under its own names, so `up` and `down` are written as plain
/// expressions over the columns of their version.
fn sync_function(table: &TableShape, change: &TableChange, version_schema: &str, function: &str) -> String {
    let declare = |vars: &[(String, String, String)]| -> String {
        vars.iter()
            .map(|(name, type_name, source)| {
                format!("        {} {type_name} := NEW.{};\n", quote(name), quote(source))
            })
            .collect()
    };
    // New version: its column names, typed as the new version sees them.
    let mut new_vars = Vec::new();
    for column in &table.columns {
        let name = column.name.as_str();
        if change.dropped.contains_key(name) {
            continue;
        }
        if let Some(to) = change.renamed.get(name) {
            new_vars.push((to.to_string(), column.type_name.clone(), name.to_owned()));
        } else if let Some(altered) = change.altered.get(name) {
            new_vars.push((name.to_owned(), altered.type_name.clone(), twin(name)));
        } else {
            new_vars.push((name.to_owned(), column.type_name.clone(), name.to_owned()));
        }
    }
    for added in &change.added {
        new_vars.push((
            added.column.to_owned(),
            added.type_name.to_owned(),
            twin(added.column),
        ));
    }
    let mut new_assignments = String::new();
    for (column, altered) in &change.altered {
        new_assignments.push_str(&format!("        NEW.{} := ({});\n", quote(column), altered.down));
    }
    for (column, down) in &change.dropped {
        if let Some(down) = down {
            new_assignments.push_str(&format!("        NEW.{} := ({down});\n", quote(column)));
        }
    }
    // Old version: the physical columns.
    let old_vars: Vec<(String, String, String)> = table
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.type_name.clone(), c.name.clone()))
        .collect();
    let mut old_assignments = String::new();
    for (column, altered) in &change.altered {
        old_assignments.push_str(&format!(
            "        NEW.{} := ({});\n",
            quote(&twin(column)),
            altered.up
        ));
    }
    for added in &change.added {
        let target = quote(&twin(added.column));
        match (added.up, added.default) {
            (Some(up), _) => old_assignments.push_str(&format!("        NEW.{target} := ({up});\n")),
            (None, Some(default)) => old_assignments.push_str(&format!(
                "        IF TG_OP = 'UPDATE' AND NEW.{target} IS NULL THEN NEW.{target} := ({default}); END IF;\n"
            )),
            (None, None) => {}
        }
    }
    let block = |vars: &[(String, String, String)], body: &str| {
        if body.is_empty() {
            "    NULL;\n".to_owned()
        } else {
            format!("    DECLARE\n{}    BEGIN\n{body}    END;\n", declare(vars))
        }
    };
    format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $dbswarm$\n\
         BEGIN\n\
         IF {} = ANY (string_to_array(replace(replace(current_setting('search_path'), ' ', ''), '\"', ''), ',')) THEN\n\
         {}\
         ELSE\n\
         {}\
         END IF;\n\
         RETURN NEW;\n\
         END\n\
         $dbswarm$",
        literal(version_schema),
        block(&new_vars, &new_assignments),
        block(&old_vars, &old_assignments),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::definition::Format;

    fn accounts() -> TableShape {
        let column = |name: &str, type_name: &str, not_null: bool| ColumnShape {
            name: name.into(),
            type_name: type_name.into(),
            not_null,
            default: None,
            dependents: Vec::new(),
        };
        TableShape {
            oid: 16400,
            schema: "public".into(),
            name: "pgbench_accounts".into(),
            columns: vec![
                column("aid", "integer", true),
                column("bid", "integer", false),
                column("abalance", "integer", false),
                column("filler", "character(84)", false),
            ],
            primary_key: vec!["aid".into()],
            estimated_rows: 100_000,
        }
    }

    fn tables(table: TableShape) -> BTreeMap<String, TableShape> {
        BTreeMap::from([(table.name.clone(), table)])
    }

    fn migration(yaml: &str) -> Migration {
        Migration::parse(yaml, Format::Yaml, None).unwrap()
    }

    const RENAME_AND_RETYPE: &str = "name: m2\noperations:\n\
        - rename_column: {table: pgbench_accounts, from: filler, to: note}\n\
        - alter_column: {table: pgbench_accounts, column: abalance, type: bigint}\n";

    fn sqls(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.sql.as_str()).collect()
    }

    #[test]
    fn rename_and_retype_expand_with_a_twin_a_trigger_and_a_view() {
        let plan = plan(
            &migration(RENAME_AND_RETYPE),
            &tables(accounts()),
            &["public_m1".into()],
        )
        .unwrap();
        let expand: Vec<&str> = plan
            .expand
            .iter()
            .map(|item| match item {
                ExpandItem::Step(s) => s.sql.as_str(),
                ExpandItem::Script(_) => "script",
            })
            .collect();
        assert_eq!(
            expand[0],
            r#"ALTER TABLE "public"."pgbench_accounts" ADD COLUMN IF NOT EXISTS "_dbswarm_new_abalance" bigint"#
        );
        assert!(
            expand[1].contains(r#"NEW."_dbswarm_new_abalance" := (CAST("abalance" AS bigint))"#),
            "{}",
            expand[1]
        );
        assert!(expand[1].contains(r#"NEW."abalance" := (CAST("abalance" AS integer))"#));
        assert!(expand[1].contains(r#""note" character(84) := NEW."filler""#));
        assert!(expand[1].contains("'public_m2' = ANY"));
        assert!(
            expand[2]
                .starts_with(r#"CREATE OR REPLACE TRIGGER "_dbswarm_sync_16400" BEFORE INSERT OR UPDATE"#)
        );
        assert_eq!(
            expand[3],
            r#"CREATE OR REPLACE VIEW "public_m2"."pgbench_accounts" AS SELECT "aid", "bid", "_dbswarm_new_abalance" AS "abalance", "filler" AS "note" FROM "public"."pgbench_accounts""#
        );
        assert_eq!(plan.backfills.len(), 1);
        assert_eq!(plan.backfills[0].key, r#""aid""#);
        assert!(
            plan.validate.is_empty(),
            "abalance may be NULL: nothing to validate"
        );
        assert_eq!(
            sqls(&plan.complete),
            vec![
                r#"DROP SCHEMA IF EXISTS "public_m1" CASCADE"#,
                r#"DROP TRIGGER IF EXISTS "_dbswarm_sync_16400" ON "public"."pgbench_accounts""#,
                r#"DROP FUNCTION IF EXISTS "public"."_dbswarm_sync_16400"()"#,
                r#"ALTER TABLE "public"."pgbench_accounts" RENAME COLUMN "filler" TO "note""#,
                r#"ALTER TABLE "public"."pgbench_accounts" DROP COLUMN "abalance""#,
                r#"ALTER TABLE "public"."pgbench_accounts" RENAME COLUMN "_dbswarm_new_abalance" TO "abalance""#,
            ]
        );
        assert_eq!(
            sqls(&plan.rollback),
            vec![
                r#"DROP VIEW IF EXISTS "public_m2"."pgbench_accounts""#,
                r#"DROP TRIGGER IF EXISTS "_dbswarm_sync_16400" ON "public"."pgbench_accounts""#,
                r#"DROP FUNCTION IF EXISTS "public"."_dbswarm_sync_16400"()"#,
                r#"ALTER TABLE "public"."pgbench_accounts" DROP COLUMN IF EXISTS "_dbswarm_new_abalance""#,
            ]
        );
    }

    #[test]
    fn not_null_goes_through_a_validated_check() {
        let m = migration(
            "name: m3\noperations:\n- alter_column: {table: pgbench_accounts, column: bid, not_null: true, up: 'coalesce(bid, 0)'}",
        );
        let plan = plan(&m, &tables(accounts()), &[]).unwrap();
        assert_eq!(
            sqls(&plan.validate),
            vec![r#"ALTER TABLE "public"."pgbench_accounts" VALIDATE CONSTRAINT "_dbswarm_nn_bid""#]
        );
        assert_eq!(
            plan.validate[0].lock,
            Some(LockLevel::ShareUpdateExclusive),
            "writers go on"
        );
        assert!(
            plan.complete
                .iter()
                .filter_map(|s| s.lock)
                .all(|lock| lock == LockLevel::AccessExclusive),
            "complete is brief catalog changes under ACCESS EXCLUSIVE"
        );
        let complete = sqls(&plan.complete);
        assert!(
            complete.contains(&r#"ALTER TABLE "public"."pgbench_accounts" ALTER COLUMN "bid" SET NOT NULL"#)
        );
        assert!(
            complete
                .contains(&r#"ALTER TABLE "public"."pgbench_accounts" DROP CONSTRAINT "_dbswarm_nn_bid""#)
        );
    }

    #[test]
    fn split_column_is_two_adds_and_a_drop() {
        let m = migration(
            "name: m4\noperations:\n\
             - add_column: {table: pgbench_accounts, column: region, type: text, up: \"split_part(filler, '-', 1)\"}\n\
             - add_column: {table: pgbench_accounts, column: code, type: text, up: \"split_part(filler, '-', 2)\"}\n\
             - drop_column: {table: pgbench_accounts, column: filler, down: \"region || '-' || code\"}",
        );
        let plan = plan(&m, &tables(accounts()), &[]).unwrap();
        let function = plan
            .expand
            .iter()
            .find_map(|item| match item {
                ExpandItem::Step(s) if s.sql.starts_with("CREATE OR REPLACE FUNCTION") => Some(s.sql.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            function.contains(r#"NEW."filler" := (region || '-' || code);"#),
            "{function}"
        );
        assert!(function.contains(r#""region" text := NEW."_dbswarm_new_region""#));
        let view = plan
            .expand
            .iter()
            .find_map(|item| match item {
                ExpandItem::Step(s) if s.sql.starts_with("CREATE OR REPLACE VIEW") => Some(s.sql.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            view.contains(r#""bid", "abalance", "_dbswarm_new_region" AS "region""#),
            "{view}"
        );
        assert!(!view.contains(r#""filler""#));
    }

    #[test]
    fn unknown_tables_columns_and_used_columns_are_refused_by_name() {
        let unknown = plan(
            &migration("name: x\noperations: [{rename_column: {table: nope, from: a, to: b}}]"),
            &tables(accounts()),
            &[],
        )
        .unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("operation 1 (rename_column): there is no table public.nope"),
            "{unknown}"
        );
        let column = plan(
            &migration("name: x\noperations: [{drop_column: {table: pgbench_accounts, column: nope}}]"),
            &tables(accounts()),
            &[],
        )
        .unwrap_err();
        assert!(column.to_string().contains("has no column nope"), "{column}");
        let mut used = accounts();
        used.columns[2]
            .dependents
            .push(("view".into(), "public.balances".into()));
        let retype = plan(
            &migration("name: x\noperations: [{alter_column: {table: pgbench_accounts, column: abalance, type: bigint}}]"),
            &tables(used),
            &[],
        )
        .unwrap_err();
        assert!(
            retype.to_string().contains("is used by view public.balances"),
            "{retype}"
        );
        let mut keyless = accounts();
        keyless.primary_key.clear();
        let backfill = plan(&migration(RENAME_AND_RETYPE), &tables(keyless), &[]).unwrap_err();
        assert!(
            backfill.to_string().contains("single-column primary key"),
            "{backfill}"
        );
    }

    #[test]
    fn progress_comments_round_trip() {
        let sql = progress_comment("public_m2", "m2", 3);
        assert_eq!(
            sql,
            "COMMENT ON SCHEMA \"public_m2\" IS 'dbswarm migration m2: operations done: 3'"
        );
        assert_eq!(
            read_progress("dbswarm migration m2: operations done: 3"),
            Some(Progress::OperationsDone(3))
        );
        assert_eq!(
            read_progress("dbswarm migration m2: completed"),
            Some(Progress::Completed)
        );
        assert!(completed_comment("public_m2", "m2").ends_with("'dbswarm migration m2: completed'"));
        assert_eq!(read_progress("something else"), None);
    }
}
