//! Candidate indexes from a query (pure, no IO), in the manner of Dexter.
//!
//! The IO side takes normalized statements from pg_stat_statements
//! (`SELECT * FROM users WHERE email = $1`), calls [`shape`] with the
//! target's [`Catalog`] to learn how each statement uses the columns of the
//! tables it reads, asks [`candidates`] for the indexes worth trying, drops
//! those an existing index already serves ([`covered_by`]), and costs the
//! rest with HypoPG hypothetical indexes. [`duplicates`] names existing
//! indexes that another index of the same table makes redundant.
//!
//! # Reading a statement
//!
//! The statement is parsed with sqlparser's PostgreSQL dialect. SELECT
//! (with its subqueries in FROM, WHERE, the select list and CTEs), the WHERE
//! clauses of UPDATE and DELETE (with their FROM / USING tables), the SELECT
//! of an INSERT and the ON condition of a MERGE are read (an INSERT of
//! VALUES reads nothing: its shape has no tables); anything else (DDL, SET,
//! EXPLAIN, ...) is refused. Every reference to a table of the catalog
//! gives one [`TableUse`] (a self-join gives two): a multi-column index only
//! helps when its columns are filtered in the same scan, so two references
//! are not merged.
//!
//! Every column reference is resolved to a table reference: through an
//! alias, `table.column`, `schema.table.column`, or, unqualified, through
//! the one table of the FROM clause that has the column (innermost query
//! level first, then the enclosing ones, as PostgreSQL does for correlated
//! subqueries). A column that two sources could have, or that a source of
//! unknown columns (a table missing from the catalog, a function, a derived
//! table selecting `*` from one) might have, is skipped rather than
//! guessed. Derived tables and CTEs are sources with their own output
//! columns, not tables: their bodies contribute their own table uses, and a
//! column of theirs is never indexed through them. Identifiers fold to
//! lower case unless quoted, as in PostgreSQL.
//!
//! # Classifying a column
//!
//! Only predicates an index scan can serve count, each on a bare column
//! (`lower(email) = $1` or `created_at::date = $1` need an expression
//! index, which the plan analysis module hints at instead):
//!
//! - equality: `col = v`, `col IN (v, ...)`, `col = ANY(v)`, `col IS NULL`,
//!   a boolean column on its own (`WHERE active`, `WHERE NOT active`);
//! - range: `<`, `<=`, `>`, `>=` (also `col < ANY(v)`), `BETWEEN`, and
//!   `LIKE` with a pattern that is a placeholder or starts with a literal
//!   that is not a wildcard (`LIKE 'ab%'`, `LIKE $1`, `LIKE $1 || '%'`);
//!   whether a B-tree serves LIKE depends on the collation, which costing
//!   settles (ILIKE and SIMILAR TO are left out: a plain B-tree can't);
//! - join: `col = other` where `other` references columns of other sources
//!   only, `JOIN ... USING (col)`, `NATURAL JOIN`, and `col IN (SELECT c
//!   ...)` (both `col` and the subquery's bare column `c`); a comparison with
//!   `<`, `>`, ... against another source's column is a range on both sides;
//! - order by: the ORDER BY columns of a SELECT, recorded only when every
//!   item is a plain column of one table reference (also through an output
//!   alias or position) and all items sort the same way with the default
//!   NULLS placement, since only then can one B-tree, read forwards or
//!   backwards, deliver the order.
//!
//! A value (`v`) is anything that references no column: placeholders,
//! literals, `now()`, casts of those, scalar subqueries. A comparison whose
//! other side references a column of the same table reference, or a column
//! that cannot be resolved, is not usable and is skipped. `AND`, `OR` and
//! parentheses are looked through (a column under an `OR` still counts);
//! under `NOT` only a bare boolean column counts, since a negated
//! comparison is no index condition.
//!
//! # Generating candidates
//!
//! For each table use, with E its equality, R its range, J its join and O
//! its order-by columns, [`candidates`] proposes:
//!
//! 1. single-column indexes on every column of E, R and J, and on the first
//!    of O;
//! 2. equality prefixes: E, and E with each join column not in E (a join
//!    column is an equality in a parameterized nested-loop scan); within a
//!    prefix the columns are sorted by name, so that the same set of
//!    equalities written in another order gives the same candidate; when E
//!    has more columns than fit, the first ones in order of appearance are
//!    kept;
//! 3. each prefix on its own, each prefix followed by one range column not
//!    in it (`(tenant_id, created_at)` for `tenant_id = $1 AND created_at >
//!    $2`), and each prefix followed by the order-by columns not in it
//!    (`(tenant_id, created_at)` for `tenant_id = $1 ORDER BY created_at`:
//!    a sorted index scan, no sort);
//! 4. O itself when it has two columns or more.
//!
//! Every candidate is cut to `columns_max` key columns (leading columns
//! win), deduplicated, and the list is sorted by table then columns. A column
//! that appears only in the select list gives no candidate.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    BinaryOperator, Delete, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    InTarget, JoinConstraint, JoinOperator, Merge, ObjectName, OrderBy, OrderByKind, OrderByOptions,
    OrderBySort, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, Table,
    TableAlias, TableFactor, TableWithJoins, UnaryOperator, Update, UpdateTableFromKind, Value, With,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

/// The tables a query may name, as the target's catalog describes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// `"schema.table"` (as PostgreSQL stores the names, so usually lower
    /// case) -> the table's column names.
    pub tables: BTreeMap<String, Vec<String>>,
    /// Schemas an unqualified table name is looked up in, in order (the
    /// target's `search_path`; `["public"]` by default).
    #[serde(default = "default_search_path")]
    pub search_path: Vec<String>,
}

/// PostgreSQL's default `search_path`, without `"$user"` (rarely a schema).
fn default_search_path() -> Vec<String> {
    vec!["public".to_owned()]
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new(BTreeMap::new())
    }
}

impl Catalog {
    /// A catalog of `tables` with the default search path `["public"]`.
    pub fn new(tables: BTreeMap<String, Vec<String>>) -> Self {
        Self {
            tables,
            search_path: default_search_path(),
        }
    }

    /// The catalog key and columns of a table named by `parts`
    /// (`[table]`, `[schema, table]` or `[database, schema, table]`).
    fn table(&self, parts: &[String]) -> Option<(&String, &Vec<String>)> {
        match parts {
            [table] => self
                .search_path
                .iter()
                .find_map(|schema| self.tables.get_key_value(&format!("{schema}.{table}"))),
            [.., schema, table] => self.tables.get_key_value(&format!("{schema}.{table}")),
            [] => None,
        }
    }
}

/// Why a statement gives no shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    /// sqlparser refused the text.
    #[error("not valid SQL: {0}")]
    InvalidSql(String),
    /// The text holds only whitespace, comments or semicolons.
    #[error("no statement")]
    NoStatement,
    /// A shape describes one statement.
    #[error("more than one statement")]
    SeveralStatements,
    /// DDL, SET, EXPLAIN, ...: nothing an index on a table would speed up.
    #[error("not a query that reads tables")]
    NotAQuery,
}

/// How one statement uses the tables it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryShape {
    /// One per reference to a catalog table, in order of appearance (a
    /// table read twice, as in a self-join or a subquery, appears twice).
    pub tables: Vec<TableUse>,
}

/// How one reference to a table uses its columns. Each list holds column
/// names, deduplicated, in order of appearance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableUse {
    /// `"schema.table"`, the catalog's key.
    pub table: String,
    /// Compared for equality with a value: `= $1`, `IN (...)`, `= ANY($1)`,
    /// `IS NULL`.
    pub equality: Vec<String>,
    /// Compared with a value by `<`, `<=`, `>`, `>=`, `BETWEEN`, or a prefix
    /// `LIKE`.
    pub range: Vec<String>,
    /// Equated to another table's column.
    pub join: Vec<String>,
    /// The ORDER BY columns, in order, when every ORDER BY item is a plain
    /// column of this table reference.
    pub order_by: Vec<String>,
}

/// An index worth costing: its table and key columns in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Candidate {
    /// `"schema.table"`.
    pub table: String,
    /// Key columns, leading first.
    pub columns: Vec<String>,
}

/// An index the target already has. Pass B-tree indexes without a WHERE
/// predicate only: key columns alone cannot tell whether a partial, GIN or
/// hash index serves the same lookups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistingIndex {
    /// The index name (`"schema.index"` in the agent).
    pub name: String,
    /// `"schema.table"`.
    pub table: String,
    /// Key columns in order (no INCLUDE columns); `""` for an expression.
    pub columns: Vec<String>,
    /// It is a unique index.
    pub unique: bool,
    /// It backs the primary key.
    pub primary: bool,
    /// The planner may use it (false after a failed CREATE INDEX
    /// CONCURRENTLY).
    pub valid: bool,
}

/// An existing index that another index of its table makes redundant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// The index that may be dropped.
    pub redundant: String,
    /// The index that serves its lookups.
    pub covered_by: String,
    /// Why, in words.
    pub reason: String,
}

/// How each column of each table a statement reads is used.
pub fn shape(sql: &str, catalog: &Catalog) -> Result<QueryShape, CandidateError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(invalid_sql)?;
    let statement = match statements.as_slice() {
        [statement] => statement,
        [] => return Err(CandidateError::NoStatement),
        _ => return Err(CandidateError::SeveralStatements),
    };
    let mut walker = Walker {
        catalog,
        uses: Vec::new(),
        sources_made: 0,
    };
    if !walker.statement(statement, &Scope::root()) {
        return Err(CandidateError::NotAQuery);
    }
    Ok(QueryShape { tables: walker.uses })
}

/// The parser's own message, without its "sql parser error: " prefix.
fn invalid_sql(error: ParserError) -> CandidateError {
    let message = match error {
        ParserError::TokenizerError(message) | ParserError::ParserError(message) => message,
        ParserError::RecursionLimitExceeded => "nested too deeply".to_owned(),
    };
    CandidateError::InvalidSql(message)
}

/// Candidate indexes for `shape` of at most `columns_max` key columns,
/// deduplicated and sorted (see the module documentation for the rules);
/// none when `columns_max` is 0.
pub fn candidates(shape: &QueryShape, columns_max: usize) -> Vec<Candidate> {
    let mut found = BTreeSet::new();
    if columns_max == 0 {
        return Vec::new();
    }
    for table_use in &shape.tables {
        for mut columns in key_column_lists(table_use, columns_max) {
            columns.truncate(columns_max);
            if !columns.is_empty() {
                found.insert(Candidate {
                    table: table_use.table.clone(),
                    columns,
                });
            }
        }
    }
    found.into_iter().collect()
}

/// Every key column list the rules give for one table use, before cutting
/// to `columns_max`.
fn key_column_lists(table_use: &TableUse, columns_max: usize) -> Vec<Vec<String>> {
    let TableUse {
        equality,
        range,
        join,
        order_by,
        ..
    } = table_use;
    let mut lists: Vec<Vec<String>> = equality
        .iter()
        .chain(range)
        .chain(join)
        .chain(order_by.first())
        .map(|column| vec![column.clone()])
        .collect();
    for prefix in equality_prefixes(equality, join, columns_max) {
        for column in range.iter().filter(|column| !prefix.contains(column)) {
            lists.push(followed_by(&prefix, std::slice::from_ref(column)));
        }
        if !order_by.is_empty() {
            lists.push(followed_by(&prefix, order_by));
        }
        lists.push(prefix);
    }
    if order_by.len() >= 2 {
        lists.push(order_by.clone());
    }
    lists
}

/// The equality columns alone, and with each join column not among them:
/// each sorted by name so the order predicates were written in doesn't
/// matter, keeping the first equality columns when they don't all fit.
fn equality_prefixes(equality: &[String], join: &[String], columns_max: usize) -> Vec<Vec<String>> {
    let mut prefixes = Vec::new();
    if !equality.is_empty() {
        prefixes.push(sorted(equality.iter().take(columns_max)));
    }
    for column in join.iter().filter(|column| !equality.contains(column)) {
        let kept = equality.iter().take(columns_max.saturating_sub(1));
        prefixes.push(sorted(kept.chain(std::iter::once(column))));
    }
    prefixes
}

/// `columns` sorted by name.
fn sorted<'a>(columns: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut columns: Vec<String> = columns.cloned().collect();
    columns.sort();
    columns
}

/// `prefix` followed by those of `next` it doesn't hold yet.
fn followed_by(prefix: &[String], next: &[String]) -> Vec<String> {
    let mut columns = prefix.to_vec();
    for column in next {
        push_new(&mut columns, column);
    }
    columns
}

/// The existing index whose leading key columns already are `candidate`'s
/// columns, in order (so the candidate adds nothing); the one with the
/// fewest key columns when several are. Invalid indexes serve nothing.
pub fn covered_by<'a>(candidate: &Candidate, existing: &'a [ExistingIndex]) -> Option<&'a ExistingIndex> {
    existing
        .iter()
        .filter(|index| index.valid && index.table == candidate.table)
        .filter(|index| index.columns.starts_with(&candidate.columns))
        .min_by_key(|index| index.columns.len())
}

/// Pairs (redundant, kept) of valid indexes of one table where the
/// redundant one's key columns are a leading prefix of, or equal to, the
/// kept one's. A primary key is never redundant, a unique index only with a
/// unique index on the same columns (a longer unique index doesn't enforce
/// its uniqueness), and of two equal indexes the plain one goes, or, when
/// both are alike, the one whose name sorts last. Each redundant index is
/// reported once, kept by an index that is not redundant itself when there
/// is one, then by the one with the fewest columns. Indexes on expressions
/// (a `""` column in the compared prefix) are never reported.
pub fn duplicates(existing: &[ExistingIndex]) -> Vec<Duplicate> {
    // Compare within each table only: the agent passes a whole database's indexes.
    let mut by_table: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (position, index) in existing.iter().enumerate() {
        by_table.entry(index.table.as_str()).or_default().push(position);
    }
    // Positions of the indexes that make each one redundant.
    let mut covering: Vec<Vec<usize>> = vec![Vec::new(); existing.len()];
    for positions in by_table.values() {
        for &redundant in positions {
            covering[redundant] = positions
                .iter()
                .copied()
                .filter(|&kept| makes_redundant(&existing[kept], &existing[redundant]))
                .collect();
        }
    }
    existing
        .iter()
        .zip(&covering)
        .filter_map(|(index, covering_it)| {
            let kept = covering_it
                .iter()
                .map(|&kept| (!covering[kept].is_empty(), &existing[kept]))
                .min_by_key(|(redundant, kept)| (*redundant, kept.columns.len(), kept.name.as_str()))
                .map(|(_, kept)| kept)?;
            Some(Duplicate {
                redundant: index.name.clone(),
                covered_by: kept.name.clone(),
                reason: redundancy_reason(index, kept),
            })
        })
        .collect()
}

/// Whether `kept` serves every lookup `redundant` serves and enforces what
/// it enforces.
fn makes_redundant(kept: &ExistingIndex, redundant: &ExistingIndex) -> bool {
    let comparable = kept.name != redundant.name
        && kept.table == redundant.table
        && kept.valid
        && redundant.valid
        && !redundant.primary
        && !redundant.columns.is_empty()
        && !redundant.columns.iter().any(String::is_empty)
        && kept.columns.starts_with(&redundant.columns);
    if !comparable {
        return false;
    }
    let same_columns = kept.columns.len() == redundant.columns.len();
    if redundant.unique && !(same_columns && kept.unique) {
        return false;
    }
    if !same_columns {
        return true;
    }
    // Equal key columns: exactly one of the two must go, the weaker one.
    let strength = |index: &ExistingIndex| u8::from(index.primary) + u8::from(index.unique);
    match strength(kept).cmp(&strength(redundant)) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => kept.name < redundant.name,
    }
}

/// Why `redundant` adds nothing next to `kept`, in words.
fn redundancy_reason(redundant: &ExistingIndex, kept: &ExistingIndex) -> String {
    let columns = redundant.columns.join(", ");
    if redundant.columns.len() == kept.columns.len() {
        let kind = if kept.primary {
            " (the primary key)"
        } else if kept.unique {
            " (unique)"
        } else {
            ""
        };
        format!("same key columns ({columns}) as {}{kind}", kept.name)
    } else {
        format!(
            "key columns ({columns}) are a leading prefix of {}'s ({})",
            kept.name,
            kept.columns.join(", ")
        )
    }
}

/// How a predicate lets an index on a column help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Equality,
    Range,
    Join,
}

/// A comparison operator an index can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Equal,
    Ordering,
}

/// The comparison `op` is, if an index can serve it (`<>` can't).
fn comparison_of(op: &BinaryOperator) -> Option<Comparison> {
    match op {
        BinaryOperator::Eq => Some(Comparison::Equal),
        BinaryOperator::Lt | BinaryOperator::LtEq | BinaryOperator::Gt | BinaryOperator::GtEq => {
            Some(Comparison::Ordering)
        }
        _ => None,
    }
}

/// A column of one table use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnRef {
    use_index: usize,
    column: String,
}

/// What a column reference denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    /// A column of a catalog table reference (`source` is that reference).
    Column { source: usize, column: ColumnRef },
    /// A column of a derived table, CTE, function or unknown table.
    Opaque { source: usize },
    /// Unknown or ambiguous: nothing may be concluded.
    Unknown,
}

impl Resolved {
    /// The source the column belongs to, when known.
    fn source(&self) -> Option<usize> {
        match self {
            Self::Column { source, .. } | Self::Opaque { source } => Some(*source),
            Self::Unknown => None,
        }
    }
}

/// One relation of a FROM clause.
#[derive(Debug, Clone)]
struct Source {
    /// Unique in the statement, to tell two references to one table apart.
    id: usize,
    /// The name a qualified column uses for it: its alias, else its name.
    binding: Option<String>,
    /// `"schema.table"` for an unaliased catalog table, which
    /// `schema.table.column` may name.
    unaliased_table: Option<String>,
    /// The table use, for a catalog table.
    use_index: Option<usize>,
    /// Its column names as the query sees them (after alias renames); `None`
    /// when unknown.
    columns: Option<Vec<String>>,
    /// For a catalog table, the real column behind each visible one.
    real_columns: Vec<String>,
}

/// A CTE visible by name.
#[derive(Debug, Clone)]
struct CteDef {
    name: String,
    columns: Option<Vec<String>>,
}

/// One query level: its FROM sources and the CTEs it declares, with the
/// enclosing level (whose columns a correlated subquery may use).
struct Scope<'p> {
    sources: Vec<Source>,
    ctes: Vec<CteDef>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    /// The empty level around a statement.
    fn root() -> Self {
        Scope {
            sources: Vec::new(),
            ctes: Vec::new(),
            parent: None,
        }
    }

    /// A level inside `parent`.
    fn inside(parent: &'p Scope<'p>, sources: Vec<Source>, ctes: Vec<CteDef>) -> Self {
        Scope {
            sources,
            ctes,
            parent: Some(parent),
        }
    }

    /// This level and the enclosing ones, innermost first.
    fn levels(&self) -> impl Iterator<Item = &Scope<'p>> {
        std::iter::successors(Some(self), |level| level.parent)
    }

    /// The innermost visible CTE called `name`.
    fn cte(&self, name: &str) -> Option<&CteDef> {
        self.levels()
            .find_map(|level| level.ctes.iter().rev().find(|cte| cte.name == name))
    }
}

/// A column of a query's output.
#[derive(Debug, Clone)]
struct OutputColumn {
    name: String,
    /// The table column it is, when it is a bare one.
    origin: Option<ColumnRef>,
}

/// A query's output columns; `None` when a `*` over a source of unknown
/// columns (or a statement's RETURNING) hides them.
type Output = Option<Vec<OutputColumn>>;

/// A join constraint to read once every source of the FROM clause is known.
struct PendingJoin<'f> {
    /// The sources left of the join (for USING and NATURAL).
    left: Range<usize>,
    /// The sources of the joined relation.
    right: Range<usize>,
    operator: &'f JoinOperator,
}

/// Walks one statement, building its table uses.
struct Walker<'c> {
    catalog: &'c Catalog,
    uses: Vec<TableUse>,
    sources_made: usize,
}

impl Walker<'_> {
    /// Reads `statement`; false when it is not one that reads tables.
    fn statement(&mut self, statement: &Statement, scope: &Scope<'_>) -> bool {
        match statement {
            Statement::Query(query) => {
                self.query(query, scope);
            }
            Statement::Insert(insert) => {
                if let Some(source) = &insert.source {
                    self.query(source, scope);
                }
            }
            Statement::Update(update) => self.update(update, scope),
            Statement::Delete(delete) => self.delete(delete, scope),
            Statement::Merge(merge) => self.merge(merge, scope),
            _ => return false,
        }
        true
    }

    /// Reads a query (with its CTEs) and returns its output columns.
    fn query(&mut self, query: &Query, scope: &Scope<'_>) -> Output {
        match &query.with {
            Some(with) => {
                let with_scope = self.with_clause(with, scope);
                self.query_body(query, &with_scope)
            }
            None => self.query_body(query, scope),
        }
    }

    /// Reads a query's body; its ORDER BY belongs to it only when the body
    /// is one SELECT (after a UNION it sorts the combined rows).
    fn query_body(&mut self, query: &Query, scope: &Scope<'_>) -> Output {
        match query.body.as_ref() {
            SetExpr::Select(select) => self.select(select, query.order_by.as_ref(), scope),
            body => self.set_expr(body, scope),
        }
    }

    /// Reads the CTEs of `with`; each sees the ones before it (and itself
    /// when recursive), and the returned level makes them all visible.
    fn with_clause<'p>(&mut self, with: &With, scope: &'p Scope<'p>) -> Scope<'p> {
        let mut ctes: Vec<CteDef> = Vec::new();
        for cte in &with.cte_tables {
            let name = folded(&cte.alias.name);
            let renames = alias_columns(Some(&cte.alias));
            let mut visible = ctes.clone();
            if with.recursive {
                let columns = (!renames.is_empty()).then(|| renames.clone());
                visible.push(CteDef {
                    name: name.clone(),
                    columns,
                });
            }
            let output = self.query(&cte.query, &Scope::inside(scope, Vec::new(), visible));
            ctes.push(CteDef {
                name,
                columns: renamed(output_names(output), &renames),
            });
        }
        Scope::inside(scope, Vec::new(), ctes)
    }

    /// Reads every branch of a set operation (iteratively: a long UNION
    /// chain is as deep as it is long); the output is the first branch's.
    fn set_expr(&mut self, body: &SetExpr, scope: &Scope<'_>) -> Output {
        let mut branches = vec![body];
        let mut output = None;
        let mut first = true;
        while let Some(branch) = branches.pop() {
            let branch_output = match branch {
                SetExpr::SetOperation { left, right, .. } => {
                    branches.push(right);
                    branches.push(left);
                    continue;
                }
                SetExpr::Select(select) => self.select(select, None, scope),
                SetExpr::Query(query) => self.query(query, scope),
                SetExpr::Values(values) => {
                    for expr in values.rows.iter().flat_map(|row| row.content.iter()) {
                        self.subqueries_in(expr, scope);
                    }
                    None
                }
                SetExpr::Insert(statement)
                | SetExpr::Update(statement)
                | SetExpr::Delete(statement)
                | SetExpr::Merge(statement) => {
                    self.statement(statement, scope);
                    None
                }
                SetExpr::Table(table) => self.table_command(table, scope),
            };
            if first {
                output = branch_output;
                first = false;
            }
        }
        output
    }

    /// `TABLE name`: reads the whole table.
    fn table_command(&mut self, table: &Table, scope: &Scope<'_>) -> Output {
        let parts: Vec<String> = table
            .schema_name
            .iter()
            .chain(&table.table_name)
            .map(folded)
            .collect();
        let source = self.named_relation(&parts, None, scope);
        source_output(&source)
    }

    /// Reads a SELECT: its FROM and join conditions, WHERE, subqueries of
    /// the select list and HAVING, and `order_by`; returns its output.
    fn select(&mut self, select: &Select, order_by: Option<&OrderBy>, parent: &Scope<'_>) -> Output {
        let scope = self.read_from(select.from.iter(), parent);
        if let Some(selection) = &select.selection {
            self.condition(selection, &scope);
        }
        for item in &select.projection {
            if let Some(expr) = item_expr(item) {
                self.subqueries_in(expr, &scope);
            }
        }
        if let Some(having) = &select.having {
            self.subqueries_in(having, &scope);
        }
        let output = select_output(&select.projection, &scope);
        if let Some(order_by) = order_by {
            self.order_by(order_by, &scope, output.as_deref());
        }
        output
    }

    /// Reads UPDATE's target and FROM tables and its WHERE clause.
    fn update(&mut self, update: &Update, parent: &Scope<'_>) {
        let from: &[TableWithJoins] = match &update.from {
            Some(UpdateTableFromKind::BeforeSet(tables) | UpdateTableFromKind::AfterSet(tables)) => tables,
            None => &[],
        };
        let scope = self.read_from(std::iter::once(&update.table).chain(from), parent);
        if let Some(selection) = &update.selection {
            self.condition(selection, &scope);
        }
        for assignment in &update.assignments {
            self.subqueries_in(&assignment.value, &scope);
        }
    }

    /// Reads DELETE's target and USING tables and its WHERE clause.
    fn delete(&mut self, delete: &Delete, parent: &Scope<'_>) {
        let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &delete.from;
        let using: &[TableWithJoins] = delete.using.as_deref().unwrap_or_default();
        let scope = self.read_from(tables.iter().chain(using), parent);
        if let Some(selection) = &delete.selection {
            self.condition(selection, &scope);
        }
    }

    /// Reads MERGE's target and source and its ON condition.
    fn merge(&mut self, merge: &Merge, parent: &Scope<'_>) {
        let mut sources = Vec::new();
        let mut pending = Vec::new();
        self.table_factor(&merge.table, parent, &mut sources, &mut pending);
        self.table_factor(&merge.source, parent, &mut sources, &mut pending);
        let scope = self.joined(sources, pending, parent);
        self.condition(&merge.on, &scope);
    }

    /// The query level of a FROM clause, its join conditions read.
    fn read_from<'p, 'f>(
        &mut self,
        items: impl Iterator<Item = &'f TableWithJoins>,
        parent: &'p Scope<'p>,
    ) -> Scope<'p> {
        let mut sources = Vec::new();
        let mut pending = Vec::new();
        for item in items {
            self.table_with_joins(item, parent, &mut sources, &mut pending);
        }
        self.joined(sources, pending, parent)
    }

    /// The level of `sources`, after reading the `pending` join conditions
    /// in it (an ON condition may name any source of the FROM clause).
    fn joined<'p>(
        &mut self,
        sources: Vec<Source>,
        pending: Vec<PendingJoin<'_>>,
        parent: &'p Scope<'p>,
    ) -> Scope<'p> {
        let scope = Scope::inside(parent, sources, Vec::new());
        for join in pending {
            self.join_constraint(&join, &scope);
        }
        scope
    }

    /// Adds the sources of `item` and remembers its join constraints.
    fn table_with_joins<'f>(
        &mut self,
        item: &'f TableWithJoins,
        parent: &Scope<'_>,
        sources: &mut Vec<Source>,
        pending: &mut Vec<PendingJoin<'f>>,
    ) {
        let left_start = sources.len();
        self.table_factor(&item.relation, parent, sources, pending);
        for join in &item.joins {
            let right_start = sources.len();
            self.table_factor(&join.relation, parent, sources, pending);
            pending.push(PendingJoin {
                left: left_start..right_start,
                right: right_start..sources.len(),
                operator: &join.join_operator,
            });
        }
    }

    /// Adds the source(s) of one FROM item.
    fn table_factor<'f>(
        &mut self,
        factor: &'f TableFactor,
        parent: &Scope<'_>,
        sources: &mut Vec<Source>,
        pending: &mut Vec<PendingJoin<'f>>,
    ) {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let source = match object_name_parts(name) {
                    Some(parts) => self.named_relation(&parts, alias.as_ref(), parent),
                    None => self.opaque_source(alias.as_ref(), None),
                };
                sources.push(source);
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let output = if *lateral {
                    // A LATERAL subquery sees the FROM items before it.
                    let before = Scope::inside(parent, sources.clone(), Vec::new());
                    self.query(subquery, &before)
                } else {
                    self.query(subquery, parent)
                };
                let source = self.opaque_source(alias.as_ref(), output_names(output));
                sources.push(source);
            }
            TableFactor::NestedJoin { table_with_joins, .. } => {
                self.table_with_joins(table_with_joins, parent, sources, pending);
            }
            other => {
                let source = self.opaque_source(factor_alias(other), None);
                sources.push(source);
            }
        }
    }

    /// The source a table name denotes: a visible CTE, a catalog table
    /// (which gets a table use), or a table of unknown columns.
    fn named_relation(&mut self, parts: &[String], alias: Option<&TableAlias>, scope: &Scope<'_>) -> Source {
        // Qualified by its alias when it has one, else by its own name.
        let binding = alias
            .map(|alias| folded(&alias.name))
            .or_else(|| parts.last().cloned());
        let renames = alias_columns(alias);
        if let [name] = parts
            && let Some(cte) = scope.cte(name)
        {
            return self.source(binding, renamed(cte.columns.clone(), &renames));
        }
        let Some((key, columns)) = self.catalog.table(parts) else {
            return self.source(binding, None);
        };
        let use_index = self.uses.len();
        self.uses.push(TableUse {
            table: key.clone(),
            equality: Vec::new(),
            range: Vec::new(),
            join: Vec::new(),
            order_by: Vec::new(),
        });
        let mut source = self.source(binding, renamed(Some(columns.clone()), &renames));
        source.unaliased_table = alias.is_none().then(|| key.clone());
        source.use_index = Some(use_index);
        source.real_columns = columns.clone();
        source
    }

    /// A source whose columns are not indexable here.
    fn opaque_source(&mut self, alias: Option<&TableAlias>, columns: Option<Vec<String>>) -> Source {
        let binding = alias.map(|alias| folded(&alias.name));
        let columns = renamed(columns, &alias_columns(alias));
        self.source(binding, columns)
    }

    /// A new source with a fresh id.
    fn source(&mut self, binding: Option<String>, columns: Option<Vec<String>>) -> Source {
        self.sources_made += 1;
        Source {
            id: self.sources_made,
            binding,
            unaliased_table: None,
            use_index: None,
            columns,
            real_columns: Vec::new(),
        }
    }

    /// Reads a join's ON, USING or NATURAL constraint.
    fn join_constraint(&mut self, join: &PendingJoin<'_>, scope: &Scope<'_>) {
        if let JoinOperator::AsOf { match_condition, .. } = join.operator {
            self.condition(match_condition, scope);
        }
        let Some(constraint) = join_constraint_of(join.operator) else {
            return;
        };
        match constraint {
            JoinConstraint::On(expr) => self.condition(expr, scope),
            JoinConstraint::Using(names) | JoinConstraint::UsingAlias(names, _) => {
                for name in names {
                    if let Some([column]) = object_name_parts(name).as_deref() {
                        self.using_column(column, join, scope);
                    }
                }
            }
            JoinConstraint::Natural => {
                for column in natural_join_columns(join, scope) {
                    self.using_column(&column, join, scope);
                }
            }
            JoinConstraint::None => {}
        }
    }

    /// `USING (column)`: the column of each side is a join column, when
    /// exactly one source of that side has it.
    fn using_column(&mut self, column: &str, join: &PendingJoin<'_>, scope: &Scope<'_>) {
        for side in [join.left.clone(), join.right.clone()] {
            let holders: Vec<&Source> = scope
                .sources
                .get(side)
                .unwrap_or_default()
                .iter()
                .filter(|source| {
                    source
                        .columns
                        .as_ref()
                        .is_some_and(|columns| has(columns, column))
                })
                .collect();
            if let [holder] = holders.as_slice()
                && let Resolved::Column { column, .. } = column_of_source(holder, column)
            {
                self.mark(&column, Usage::Join);
            }
        }
    }

    /// Reads a condition: every subquery in it, then every AND/OR term.
    fn condition(&mut self, expr: &Expr, scope: &Scope<'_>) {
        let subqueries = self.subqueries_in(expr, scope);
        for (term, negated) in predicate_terms(expr) {
            self.term(term, negated, scope, &subqueries);
        }
    }

    /// Reads every subquery found in `expr` (not inside other subqueries:
    /// reading those reads theirs) and returns their outputs.
    fn subqueries_in<'e>(&mut self, expr: &'e Expr, scope: &Scope<'_>) -> Vec<(&'e Query, Output)> {
        let mut found = Vec::new();
        for_each_node(expr, |node| {
            if let Some(query) = subquery_of(node) {
                found.push(query);
            }
        });
        found
            .into_iter()
            .map(|query| (query, self.query(query, scope)))
            .collect()
    }

    /// Classifies the columns of one AND/OR term.
    fn term(&mut self, term: &Expr, negated: bool, scope: &Scope<'_>, subqueries: &[(&Query, Output)]) {
        if negated {
            // `NOT active` is `active = false`; any other negation is no index condition.
            if let Some(Resolved::Column { column, .. }) = column_reference(term, scope) {
                self.mark(&column, Usage::Equality);
            }
            return;
        }
        match term {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                if let Some(Resolved::Column { column, .. }) = column_reference(term, scope) {
                    self.mark(&column, Usage::Equality);
                }
            }
            Expr::IsNull(expr) => self.compared(expr, Usage::Equality, &[], scope),
            Expr::BinaryOp { left, op, right } => {
                if let Some(comparison) = comparison_of(op) {
                    self.comparison(left, comparison, right, scope);
                }
            }
            Expr::In {
                expr,
                target: InTarget::List(items),
                negated: false,
                ..
            } => {
                let items: Vec<&Expr> = items.iter().collect();
                self.compared(expr, Usage::Equality, &items, scope);
            }
            Expr::In {
                expr,
                target: InTarget::Subquery(query),
                negated: false,
                ..
            } => {
                self.matched_to_subquery(expr, query, scope, subqueries);
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } => {
                self.compared(expr, Usage::Range, &[low, high], scope);
            }
            Expr::Like {
                negated: false,
                any: false,
                expr,
                pattern,
                ..
            } if is_prefix_pattern(pattern) => {
                self.compared(expr, Usage::Range, &[pattern], scope);
            }
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            } => match (comparison_of(compare_op), right.as_ref()) {
                (Some(Comparison::Equal), Expr::Subquery(query)) => {
                    self.matched_to_subquery(left, query, scope, subqueries);
                }
                (Some(Comparison::Equal), _) => self.compared(left, Usage::Equality, &[right], scope),
                (Some(Comparison::Ordering), _) => self.compared(left, Usage::Range, &[right], scope),
                (None, _) => {}
            },
            _ => {}
        }
    }

    /// `left op right`, each side a bare column usable against the other.
    fn comparison(&mut self, left: &Expr, comparison: Comparison, right: &Expr, scope: &Scope<'_>) {
        for (side, other) in [(left, right), (right, left)] {
            if let Some(Resolved::Column { source, column }) = column_reference(side, scope)
                && let Some(usage) = usage_against(comparison, source, other, scope)
            {
                self.mark(&column, usage);
            }
        }
    }

    /// `expr` (IN list, BETWEEN, LIKE, ANY, IS NULL) used as `usage`, when it
    /// is a bare column and none of `others` depends on its row.
    fn compared(&mut self, expr: &Expr, usage: Usage, others: &[&Expr], scope: &Scope<'_>) {
        let Some(Resolved::Column { source, column }) = column_reference(expr, scope) else {
            return;
        };
        let independent = others
            .iter()
            .all(|other| usage_against(Comparison::Equal, source, other, scope).is_some());
        if independent {
            self.mark(&column, usage);
        }
    }

    /// `expr IN (SELECT c ...)`: a semi-join, so `expr` and the
    /// subquery's bare column `c` are join columns.
    fn matched_to_subquery(
        &mut self,
        expr: &Expr,
        query: &Query,
        scope: &Scope<'_>,
        subqueries: &[(&Query, Output)],
    ) {
        if let Some(Resolved::Column { column, .. }) = column_reference(expr, scope) {
            self.mark(&column, Usage::Join);
        }
        let output = subqueries
            .iter()
            .find(|(read, _)| std::ptr::eq(*read, query))
            .map(|(_, output)| output);
        if let Some(Some(columns)) = output
            && let [
                OutputColumn {
                    origin: Some(column), ..
                },
            ] = columns.as_slice()
        {
            self.mark(column, Usage::Join);
        }
    }

    /// Records the ORDER BY of a SELECT when one B-tree on one table
    /// reference can deliver it.
    fn order_by(&mut self, order_by: &OrderBy, scope: &Scope<'_>, output: Option<&[OutputColumn]>) {
        let OrderByKind::Expressions(items) = &order_by.kind else {
            return;
        };
        let mut direction = None;
        let mut use_index = None;
        let mut columns = Vec::new();
        for item in items {
            let Some(descending) = index_scan_direction(&item.options) else {
                return;
            };
            let Some(column) = order_item_column(&item.expr, scope, output) else {
                return;
            };
            if *direction.get_or_insert(descending) != descending
                || *use_index.get_or_insert(column.use_index) != column.use_index
            {
                return;
            }
            push_new(&mut columns, &column.column);
        }
        if let Some(table_use) = use_index.and_then(|index| self.uses.get_mut(index)) {
            for column in &columns {
                push_new(&mut table_use.order_by, column);
            }
        }
    }

    /// Records that `column` is used as `usage`.
    fn mark(&mut self, column: &ColumnRef, usage: Usage) {
        let Some(table_use) = self.uses.get_mut(column.use_index) else {
            return;
        };
        let list = match usage {
            Usage::Equality => &mut table_use.equality,
            Usage::Range => &mut table_use.range,
            Usage::Join => &mut table_use.join,
        };
        push_new(list, &column.column);
    }
}

/// How a column of `source` compared with `other` can use an index: not at
/// all when `other` depends on the same row or on an unresolvable column,
/// a join when it depends on other sources' columns, else a lookup of a
/// value.
fn usage_against(comparison: Comparison, source: usize, other: &Expr, scope: &Scope<'_>) -> Option<Usage> {
    let references = column_references(other, scope);
    if references
        .iter()
        .any(|reference| reference.source().is_none_or(|other| other == source))
    {
        return None;
    }
    Some(match comparison {
        Comparison::Equal if references.is_empty() => Usage::Equality,
        Comparison::Equal => Usage::Join,
        Comparison::Ordering => Usage::Range,
    })
}

/// What a bare column expression (parentheses allowed, nothing else)
/// denotes; `None` when `expr` is not a bare column.
fn column_reference(expr: &Expr, scope: &Scope<'_>) -> Option<Resolved> {
    match strip_parentheses(expr) {
        Expr::Identifier(ident) => Some(resolve(std::slice::from_ref(ident), scope)),
        Expr::CompoundIdentifier(idents) => Some(resolve(idents, scope)),
        _ => None,
    }
}

/// Every column reference in `expr`, outside its subqueries (which are
/// values to it).
fn column_references(expr: &Expr, scope: &Scope<'_>) -> Vec<Resolved> {
    let mut references = Vec::new();
    for_each_node(expr, |node| match node {
        Expr::Identifier(ident) => references.push(resolve(std::slice::from_ref(ident), scope)),
        Expr::CompoundIdentifier(idents) => references.push(resolve(idents, scope)),
        _ => {}
    });
    references
}

/// `expr` without the parentheses around it.
fn strip_parentheses(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// Resolves a (possibly qualified) column name in `scope`.
fn resolve(idents: &[Ident], scope: &Scope<'_>) -> Resolved {
    let names: Vec<String> = idents.iter().map(folded).collect();
    match names.as_slice() {
        [column] => resolve_unqualified(column, scope),
        [binding, column] => resolve_qualified(column, scope, |source| {
            source.binding.as_deref() == Some(binding.as_str())
        }),
        [.., schema, table, column] => {
            let table = format!("{schema}.{table}");
            resolve_qualified(column, scope, |source| {
                source.unaliased_table.as_deref() == Some(table.as_str())
            })
        }
        [] => Resolved::Unknown,
    }
}

/// A column of the one source, innermost level first, that `names_it`.
fn resolve_qualified(column: &str, scope: &Scope<'_>, names_it: impl Fn(&Source) -> bool) -> Resolved {
    for level in scope.levels() {
        let named: Vec<&Source> = level.sources.iter().filter(|source| names_it(source)).collect();
        match named.as_slice() {
            [] => continue,
            [source] => return column_of_source(source, column),
            _ => return Resolved::Unknown,
        }
    }
    Resolved::Unknown
}

/// An unqualified column: the one source of the innermost level that has
/// it, when no other source of that level has or may have it.
fn resolve_unqualified(column: &str, scope: &Scope<'_>) -> Resolved {
    for level in scope.levels() {
        let mut holders = level.sources.iter().filter(|source| {
            source
                .columns
                .as_ref()
                .is_some_and(|columns| has(columns, column))
        });
        let maybe_holder = level.sources.iter().any(|source| source.columns.is_none());
        match (holders.next(), holders.next(), maybe_holder) {
            (Some(source), None, false) => return column_of_source(source, column),
            (None, None, false) => continue,
            _ => return Resolved::Unknown,
        }
    }
    Resolved::Unknown
}

/// `column` of `source`, unknown when the source is known not to have it.
fn column_of_source(source: &Source, column: &str) -> Resolved {
    let position = match &source.columns {
        Some(columns) => match columns.iter().position(|name| name == column) {
            Some(position) => Some(position),
            None => return Resolved::Unknown,
        },
        None => None,
    };
    let real = source
        .use_index
        .zip(position.and_then(|position| source.real_columns.get(position)));
    match real {
        Some((use_index, real)) => Resolved::Column {
            source: source.id,
            column: ColumnRef {
                use_index,
                column: real.clone(),
            },
        },
        None => Resolved::Opaque { source: source.id },
    }
}

/// Whether `columns` holds `column`.
fn has(columns: &[String], column: &str) -> bool {
    columns.iter().any(|name| name == column)
}

/// The columns a NATURAL join matches: those of the joined relation that a
/// source on the left also has.
fn natural_join_columns(join: &PendingJoin<'_>, scope: &Scope<'_>) -> Vec<String> {
    let known = |range: Range<usize>| -> Vec<String> {
        scope
            .sources
            .get(range)
            .unwrap_or_default()
            .iter()
            .flat_map(|source| source.columns.iter().flatten().cloned())
            .collect()
    };
    let left = known(join.left.clone());
    known(join.right.clone())
        .into_iter()
        .filter(|column| left.contains(column))
        .collect()
}

/// The terms joined by AND and OR, each with whether an odd number of NOTs
/// covers it; iterative, since a long AND/OR chain is as deep as it is
/// long and sqlparser does not bound that.
fn predicate_terms(expr: &Expr) -> Vec<(&Expr, bool)> {
    let mut terms = Vec::new();
    let mut pending = vec![(expr, false)];
    while let Some((expr, negated)) = pending.pop() {
        match expr {
            Expr::Nested(inner) => pending.push((inner, negated)),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And | BinaryOperator::Or,
                right,
            } => {
                pending.push((right, negated));
                pending.push((left, negated));
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => pending.push((expr, !negated)),
            _ => terms.push((expr, negated)),
        }
    }
    terms
}

/// Whether a LIKE pattern can start a range scan: a placeholder, or text
/// (maybe concatenated) that starts with a literal that is not a wildcard.
fn is_prefix_pattern(pattern: &Expr) -> bool {
    let mut leading = pattern;
    loop {
        match leading {
            Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => leading = inner,
            Expr::BinaryOp {
                left,
                op: BinaryOperator::StringConcat,
                ..
            } => leading = left,
            Expr::Value(value) => {
                return match &value.value {
                    Value::Placeholder(_) => true,
                    other => other.clone().into_string().is_some_and(|text| {
                        text.chars()
                            .next()
                            .is_some_and(|first| first != '%' && first != '_')
                    }),
                };
            }
            _ => return false,
        }
    }
}

/// The direction (descending?) a forward or backward B-tree scan gives
/// `options`, or `None` when no plain B-tree can (USING an operator, or
/// NULLS placed against the direction's default).
fn index_scan_direction(options: &OrderByOptions) -> Option<bool> {
    let descending = match options.sort {
        None | Some(OrderBySort::Asc) => false,
        Some(OrderBySort::Desc) => true,
        Some(OrderBySort::Using(_)) => return None,
    };
    let nulls_first = options.nulls_first.unwrap_or(descending);
    (nulls_first == descending).then_some(descending)
}

/// The table column an ORDER BY item sorts by: a position in the output, an
/// output column's name (which PostgreSQL tries first), or an input column.
fn order_item_column(expr: &Expr, scope: &Scope<'_>, output: Option<&[OutputColumn]>) -> Option<ColumnRef> {
    match expr {
        Expr::Value(value) => {
            let Value::Number(number, _) = &value.value else {
                return None;
            };
            let position: usize = number.parse().ok()?;
            output?.get(position.checked_sub(1)?)?.origin.clone()
        }
        Expr::Identifier(ident) => {
            let name = folded(ident);
            let named: Vec<&OutputColumn> = output
                .unwrap_or_default()
                .iter()
                .filter(|column| column.name == name)
                .collect();
            match named.as_slice() {
                [] => origin_of(expr, scope),
                [column] => column.origin.clone(),
                _ => None,
            }
        }
        _ => origin_of(expr, scope),
    }
}

/// The table column `expr` is, when it is a bare one.
fn origin_of(expr: &Expr, scope: &Scope<'_>) -> Option<ColumnRef> {
    match column_reference(expr, scope)? {
        Resolved::Column { column, .. } => Some(column),
        _ => None,
    }
}

/// A SELECT's output columns, `*` expanded.
fn select_output(projection: &[SelectItem], scope: &Scope<'_>) -> Output {
    let mut columns = Vec::new();
    for item in projection {
        match item {
            SelectItem::UnnamedExpr(expr) => {
                columns.push(OutputColumn {
                    name: output_name(expr),
                    origin: origin_of(expr, scope),
                });
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                columns.push(OutputColumn {
                    name: folded(alias),
                    origin: origin_of(expr, scope),
                });
            }
            SelectItem::ExprWithAliases { expr, aliases } => {
                let name = aliases.first().map_or_else(|| output_name(expr), folded);
                columns.push(OutputColumn {
                    name,
                    origin: origin_of(expr, scope),
                });
            }
            SelectItem::Wildcard(_) => {
                for source in &scope.sources {
                    columns.extend(source_output(source)?);
                }
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                let [binding] = object_name_parts(name)?.try_into().ok()?;
                let source = scope
                    .sources
                    .iter()
                    .find(|source| source.binding.as_ref() == Some(&binding))?;
                columns.extend(source_output(source)?);
            }
            SelectItem::QualifiedWildcard(..) => return None,
        }
    }
    Some(columns)
}

/// The columns `*` gives for `source`.
fn source_output(source: &Source) -> Output {
    let columns = source.columns.as_ref()?;
    let origin = |position: usize| {
        let use_index = source.use_index?;
        let real = source.real_columns.get(position)?;
        Some(ColumnRef {
            use_index,
            column: real.clone(),
        })
    };
    Some(
        columns
            .iter()
            .enumerate()
            .map(|(position, name)| OutputColumn {
                name: name.clone(),
                origin: origin(position),
            })
            .collect(),
    )
}

/// The names of an output's columns.
fn output_names(output: Output) -> Option<Vec<String>> {
    output.map(|columns| columns.into_iter().map(|column| column.name).collect())
}

/// The name PostgreSQL gives an unaliased output expression (roughly).
fn output_name(expr: &Expr) -> String {
    let mut current = expr;
    loop {
        match current {
            Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => current = inner,
            Expr::Identifier(ident) => return folded(ident),
            Expr::CompoundIdentifier(idents) => return idents.last().map_or_else(unnamed, folded),
            Expr::Function(function) => {
                return function
                    .name
                    .0
                    .last()
                    .and_then(|part| part.as_ident())
                    .map_or_else(unnamed, folded);
            }
            _ => return unnamed(),
        }
    }
}

/// PostgreSQL's name for an output column it cannot name.
fn unnamed() -> String {
    "?column?".to_owned()
}

/// The expression of a select list item, if it has one.
fn item_expr(item: &SelectItem) -> Option<&Expr> {
    match item {
        SelectItem::UnnamedExpr(expr)
        | SelectItem::ExprWithAlias { expr, .. }
        | SelectItem::ExprWithAliases { expr, .. } => Some(expr),
        SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(expr), _) => Some(expr),
        _ => None,
    }
}

/// `columns` with the first ones renamed by an alias column list
/// (`AS t(a, b)`).
fn renamed(columns: Option<Vec<String>>, renames: &[String]) -> Option<Vec<String>> {
    let mut columns = columns?;
    for (column, rename) in columns.iter_mut().zip(renames) {
        column.clone_from(rename);
    }
    Some(columns)
}

/// The column names of an alias (`AS t(a, b)`).
fn alias_columns(alias: Option<&TableAlias>) -> Vec<String> {
    alias
        .map(|alias| alias.columns.iter().map(|column| folded(&column.name)).collect())
        .unwrap_or_default()
}

/// The alias of a FROM item other than a table or a derived table.
fn factor_alias(factor: &TableFactor) -> Option<&TableAlias> {
    match factor {
        TableFactor::Table { alias, .. }
        | TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. }
        | TableFactor::JsonTable { alias, .. }
        | TableFactor::OpenJsonTable { alias, .. }
        | TableFactor::NestedJoin { alias, .. }
        | TableFactor::Pivot { alias, .. }
        | TableFactor::Unpivot { alias, .. } => alias.as_ref(),
        _ => None,
    }
}

/// The folded parts of a name; `None` when a part is not an identifier.
fn object_name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0.iter().map(|part| part.as_ident().map(folded)).collect()
}

/// An identifier as PostgreSQL sees it (the agents' one rule, on a parsed
/// `Ident`); the plan analysis folds with it too.
pub(crate) fn folded(ident: &Ident) -> String {
    agents::sql::fold_ident(&ident.value, ident.quote_style.is_some())
}

/// Appends `column` unless `list` holds it already.
fn push_new(list: &mut Vec<String>, column: &str) {
    if !has(list, column) {
        list.push(column.to_owned());
    }
}

/// The subquery a node holds directly, if any.
fn subquery_of(expr: &Expr) -> Option<&Query> {
    match expr {
        Expr::Subquery(query)
        | Expr::Exists { subquery: query, .. }
        | Expr::In {
            target: InTarget::Subquery(query),
            ..
        } => Some(query),
        Expr::Function(function) => match &function.args {
            FunctionArguments::Subquery(query) => Some(query),
            _ => None,
        },
        _ => None,
    }
}

/// Visits `root` and every expression under it, in order of appearance,
/// without entering subqueries; iterative, since sqlparser builds a chain of
/// `a + b + ...` or `a AND b AND ...` as deep as it is long.
fn for_each_node<'e>(root: &'e Expr, mut visit: impl FnMut(&'e Expr)) {
    let mut pending = vec![root];
    while let Some(expr) = pending.pop() {
        visit(expr);
        let first_child = pending.len();
        push_children(expr, &mut pending);
        pending[first_child..].reverse();
    }
}

/// Pushes the expressions directly under `expr`, in order. Variants that
/// only other dialects produce are left out: their subqueries go unread.
fn push_children<'e>(expr: &'e Expr, children: &mut Vec<&'e Expr>) {
    match expr {
        Expr::CompoundFieldAccess { root: inner, .. }
        | Expr::JsonAccess { value: inner, .. }
        | Expr::IsFalse(inner)
        | Expr::IsNotFalse(inner)
        | Expr::IsTrue(inner)
        | Expr::IsNotTrue(inner)
        | Expr::IsNull(inner)
        | Expr::IsNotNull(inner)
        | Expr::IsUnknown(inner)
        | Expr::IsNotUnknown(inner)
        | Expr::IsJson { expr: inner, .. }
        | Expr::IsNormalized { expr: inner, .. }
        | Expr::UnaryOp { expr: inner, .. }
        | Expr::Cast { expr: inner, .. }
        | Expr::Extract { expr: inner, .. }
        | Expr::Ceil { expr: inner, .. }
        | Expr::Floor { expr: inner, .. }
        | Expr::Collate { expr: inner, .. }
        | Expr::Nested(inner)
        | Expr::Prefixed { value: inner, .. }
        | Expr::Named { expr: inner, .. }
        | Expr::OuterJoin(inner)
        | Expr::Prior(inner) => children.push(inner),
        Expr::IsDistinctFrom(left, right)
        | Expr::IsNotDistinctFrom(left, right)
        | Expr::BinaryOp { left, right, .. }
        | Expr::AnyOp { left, right, .. }
        | Expr::AllOp { left, right, .. }
        | Expr::AtTimeZone {
            timestamp: left,
            time_zone: right,
        }
        | Expr::Position {
            expr: left,
            r#in: right,
        }
        | Expr::SimilarTo {
            expr: left,
            pattern: right,
            ..
        }
        | Expr::RLike {
            expr: left,
            pattern: right,
            ..
        } => children.extend([&**left, &**right]),
        _ => push_compound_children(expr, children),
    }
}

/// [`push_children`] of the expressions with more than two operands or
/// with optional ones (LIKE ... ESCAPE, IN, BETWEEN, functions, CASE, ...).
fn push_compound_children<'e>(expr: &'e Expr, children: &mut Vec<&'e Expr>) {
    match expr {
        Expr::Like {
            expr,
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            expr,
            pattern,
            escape_char,
            ..
        } => {
            children.extend([&**expr, &**pattern]);
            children.extend(escape_char.as_deref());
        }
        Expr::In { expr, target, .. } => {
            children.push(expr);
            match target {
                InTarget::List(items) => children.extend(items),
                InTarget::Unnest(array) => children.push(array),
                InTarget::Subquery(_) | InTarget::Table { .. } => {}
            }
        }
        Expr::Between { expr, low, high, .. } => children.extend([&**expr, &**low, &**high]),
        Expr::Convert { expr, styles, .. } => {
            children.push(expr);
            children.extend(styles);
        }
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            children.push(expr);
            children.extend(substring_from.as_deref());
            children.extend(substring_for.as_deref());
        }
        Expr::Trim {
            expr,
            trim_what,
            trim_characters,
            ..
        } => {
            children.extend(trim_what.as_deref());
            children.push(expr);
            children.extend(trim_characters.iter().flatten());
        }
        Expr::Overlay {
            expr,
            overlay_what,
            overlay_from,
            overlay_for,
        } => {
            children.extend([&**expr, &**overlay_what, &**overlay_from]);
            children.extend(overlay_for.as_deref());
        }
        Expr::Function(function) => {
            if let FunctionArguments::List(list) = &function.args {
                children.extend(list.args.iter().filter_map(function_arg_expr));
            }
            children.extend(function.within_group.iter().map(|item| &item.expr));
            children.extend(function.filter.as_deref());
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            children.extend(operand.as_deref());
            for when in conditions {
                children.extend([&when.condition, &when.result]);
            }
            children.extend(else_result.as_deref());
        }
        Expr::Tuple(items) | Expr::Struct { values: items, .. } => children.extend(items),
        Expr::Array(array) => children.extend(&array.elem),
        Expr::Interval(interval) => children.push(&interval.value),
        Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
            children.extend(sets.iter().flatten());
        }
        _ => {}
    }
}

/// The expression of a function argument, if it is one.
fn function_arg_expr(arg: &FunctionArg) -> Option<&Expr> {
    let (FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } | FunctionArg::Unnamed(arg)) =
        arg;
    match arg {
        FunctionArgExpr::Expr(expr) => Some(expr),
        _ => None,
    }
}

/// The ON, USING or NATURAL constraint of a join, whatever its kind
/// (none for CROSS APPLY and the like).
pub(crate) fn join_constraint_of(operator: &JoinOperator) -> Option<&JoinConstraint> {
    match operator {
        JoinOperator::Join(constraint)
        | JoinOperator::Inner(constraint)
        | JoinOperator::Left(constraint)
        | JoinOperator::LeftOuter(constraint)
        | JoinOperator::Right(constraint)
        | JoinOperator::RightOuter(constraint)
        | JoinOperator::FullOuter(constraint)
        | JoinOperator::CrossJoin(constraint)
        | JoinOperator::Semi(constraint)
        | JoinOperator::LeftSemi(constraint)
        | JoinOperator::RightSemi(constraint)
        | JoinOperator::Anti(constraint)
        | JoinOperator::LeftAnti(constraint)
        | JoinOperator::RightAnti(constraint)
        | JoinOperator::StraightJoin(constraint)
        | JoinOperator::AsOf { constraint, .. } => Some(constraint),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let table = |name: &str, columns: &[&str]| {
            (
                name.to_owned(),
                columns
                    .iter()
                    .map(|column| column.to_string())
                    .collect::<Vec<_>>(),
            )
        };
        Catalog::new(BTreeMap::from([
            table(
                "public.users",
                &["id", "email", "tenant_id", "name", "active", "created_at"],
            ),
            table(
                "public.orders",
                &["id", "user_id", "tenant_id", "status", "created_at", "total"],
            ),
            table("billing.invoices", &["id", "order_id", "due_on", "paid"]),
        ]))
    }

    fn read(sql: &str) -> QueryShape {
        match shape(sql, &catalog()) {
            Ok(shape) => shape,
            Err(error) => panic!("{sql}: {error}"),
        }
    }

    fn use_of<'a>(shape: &'a QueryShape, table: &str) -> &'a TableUse {
        match shape.tables.iter().find(|table_use| table_use.table == table) {
            Some(table_use) => table_use,
            None => panic!("no use of {table} in {shape:?}"),
        }
    }

    fn names(columns: &[String]) -> Vec<&str> {
        columns.iter().map(String::as_str).collect()
    }

    fn keys(candidates: &[Candidate], table: &str) -> Vec<String> {
        candidates
            .iter()
            .filter(|candidate| candidate.table == table)
            .map(|candidate| candidate.columns.join(","))
            .collect()
    }

    fn index(name: &str, columns: &[&str]) -> ExistingIndex {
        ExistingIndex {
            name: name.to_owned(),
            table: "public.users".to_owned(),
            columns: columns.iter().map(|column| column.to_string()).collect(),
            unique: false,
            primary: false,
            valid: true,
        }
    }

    fn candidate(columns: &[&str]) -> Candidate {
        Candidate {
            table: "public.users".to_owned(),
            columns: columns.iter().map(|column| column.to_string()).collect(),
        }
    }

    #[test]
    fn an_email_lookup_gives_one_single_column_candidate() {
        let shape = read("SELECT * FROM users WHERE email = $1");
        assert_eq!(
            shape.tables,
            [TableUse {
                table: "public.users".into(),
                equality: vec!["email".into()],
                range: vec![],
                join: vec![],
                order_by: vec![],
            }]
        );
        assert_eq!(candidates(&shape, 3), [candidate(&["email"])]);
    }

    #[test]
    fn an_equality_and_a_range_give_the_equality_column_first() {
        let shape = read("SELECT id FROM orders WHERE tenant_id = $1 AND created_at > $2");
        assert_eq!(
            keys(&candidates(&shape, 3), "public.orders"),
            ["created_at", "tenant_id", "tenant_id,created_at"]
        );
    }

    #[test]
    fn an_equality_and_an_order_by_give_a_sorted_scan_candidate() {
        let shape = read("SELECT id FROM orders WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT $2");
        let orders = use_of(&shape, "public.orders");
        assert_eq!(names(&orders.order_by), ["created_at"]);
        assert_eq!(
            keys(&candidates(&shape, 3), "public.orders"),
            ["created_at", "tenant_id", "tenant_id,created_at"]
        );
    }

    #[test]
    fn a_join_through_aliases_marks_both_sides_and_keeps_each_tables_predicates() {
        let shape = read(
            "SELECT id FROM orders o JOIN users u ON u.id = o.user_id \
             WHERE u.tenant_id = $1 AND o.created_at > $2 ORDER BY o.created_at DESC LIMIT $3",
        );
        let orders = use_of(&shape, "public.orders");
        let users = use_of(&shape, "public.users");
        assert_eq!(names(&orders.join), ["user_id"]);
        assert_eq!(names(&orders.range), ["created_at"]);
        assert_eq!(names(&orders.order_by), ["created_at"]);
        assert_eq!(names(&users.join), ["id"]);
        assert_eq!(names(&users.equality), ["tenant_id"]);
        let found = candidates(&shape, 3);
        assert_eq!(
            keys(&found, "public.orders"),
            ["created_at", "user_id", "user_id,created_at"],
            "the join column is an equality of a nested-loop scan, followed by the range"
        );
        assert_eq!(keys(&found, "public.users"), ["id", "id,tenant_id", "tenant_id"]);
    }

    #[test]
    fn unqualified_columns_resolve_to_the_one_table_that_has_them() {
        let shape = read(
            "SELECT 1 FROM orders o JOIN billing.invoices i ON i.order_id = o.id WHERE status = $1 AND paid",
        );
        assert_eq!(names(&use_of(&shape, "public.orders").equality), ["status"]);
        assert_eq!(names(&use_of(&shape, "billing.invoices").equality), ["paid"]);
    }

    #[test]
    fn an_ambiguous_unqualified_column_is_skipped() {
        let shape = read("SELECT 1 FROM orders o JOIN users u ON u.id = o.user_id WHERE tenant_id = $1");
        assert!(shape.tables.iter().all(|table_use| table_use.equality.is_empty()));
    }

    #[test]
    fn a_table_missing_from_the_catalog_makes_unqualified_columns_unknown() {
        let shape = read(
            "SELECT 1 FROM users JOIN audit a ON a.user_id = users.id WHERE email = $1 AND users.name = $2",
        );
        let users = use_of(&shape, "public.users");
        assert_eq!(names(&users.equality), ["name"], "email might be audit's");
        assert_eq!(names(&users.join), ["id"]);
        assert_eq!(shape.tables.len(), 1);
    }

    #[test]
    fn schema_qualified_and_quoted_names_resolve() {
        let shape =
            read(r#"SELECT 1 FROM billing.invoices WHERE billing.invoices.due_on < $1 AND "ORDER_ID" = $2"#);
        let invoices = use_of(&shape, "billing.invoices");
        assert_eq!(names(&invoices.range), ["due_on"]);
        assert!(
            invoices.equality.is_empty(),
            "a quoted upper-case name is another column"
        );
        let unqualified =
            shape_of_search_path("SELECT 1 FROM invoices WHERE PAID = $1", &["public", "billing"]);
        assert_eq!(
            names(&use_of(&unqualified, "billing.invoices").equality),
            ["paid"]
        );
    }

    fn shape_of_search_path(sql: &str, search_path: &[&str]) -> QueryShape {
        let catalog = Catalog {
            search_path: search_path.iter().map(|schema| schema.to_string()).collect(),
            ..catalog()
        };
        match shape(sql, &catalog) {
            Ok(shape) => shape,
            Err(error) => panic!("{sql}: {error}"),
        }
    }

    #[test]
    fn subqueries_in_where_contribute_their_own_table_uses() {
        let shape = read(
            "SELECT * FROM users u WHERE u.tenant_id = $1 \
             AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.status = $2) \
             AND u.id IN (SELECT user_id FROM orders WHERE total > $3)",
        );
        assert_eq!(shape.tables.len(), 3);
        let correlated = &shape.tables[1];
        assert_eq!(names(&correlated.join), ["user_id"]);
        assert_eq!(names(&correlated.equality), ["status"]);
        let semi_joined = &shape.tables[2];
        assert_eq!(names(&semi_joined.join), ["user_id"]);
        assert_eq!(names(&semi_joined.range), ["total"]);
        let users = &shape.tables[0];
        assert_eq!(names(&users.equality), ["tenant_id"]);
        assert_eq!(names(&users.join), ["id"]);
        assert!(keys(&candidates(&shape, 3), "public.orders").contains(&"status,user_id".to_owned()));
    }

    #[test]
    fn a_cte_name_is_not_a_table_and_its_body_contributes() {
        let shape = read(
            "WITH recent AS (SELECT user_id, created_at FROM orders WHERE created_at > $1) \
             SELECT * FROM recent r JOIN users ON users.id = r.user_id WHERE users.email = $2",
        );
        assert_eq!(shape.tables.len(), 2);
        assert_eq!(names(&use_of(&shape, "public.orders").range), ["created_at"]);
        let users = use_of(&shape, "public.users");
        assert_eq!(names(&users.equality), ["email"]);
        assert_eq!(names(&users.join), ["id"], "a CTE's column is another source");
    }

    #[test]
    fn a_derived_table_is_a_source_with_its_own_columns() {
        let shape = read(
            "SELECT name FROM (SELECT user_id, count(*) AS n FROM orders WHERE status = $1 \
             GROUP BY user_id) c \
             JOIN users u ON u.id = c.user_id WHERE n > $2 AND email LIKE $3",
        );
        assert_eq!(names(&use_of(&shape, "public.orders").equality), ["status"]);
        let users = use_of(&shape, "public.users");
        assert_eq!(
            names(&users.range),
            ["email"],
            "email is only users'; n is only the derived table's"
        );
        assert_eq!(names(&users.join), ["id"]);
    }

    #[test]
    fn update_and_delete_read_their_where_clauses() {
        let update = read("UPDATE orders SET status = $1 WHERE id = $2");
        assert_eq!(names(&use_of(&update, "public.orders").equality), ["id"]);
        let delete = read("DELETE FROM orders o USING users u WHERE o.user_id = u.id AND u.tenant_id = $1");
        assert_eq!(names(&use_of(&delete, "public.orders").join), ["user_id"]);
        assert_eq!(names(&use_of(&delete, "public.users").equality), ["tenant_id"]);
        let insert = read("INSERT INTO orders (user_id) SELECT id FROM users WHERE email = $1");
        assert_eq!(insert.tables.len(), 1, "the table inserted into is not read");
        assert_eq!(names(&use_of(&insert, "public.users").equality), ["email"]);
    }

    #[test]
    fn functions_and_casts_on_a_column_give_no_candidate_but_on_a_value_do() {
        let shape = read(
            "SELECT * FROM users WHERE lower(email) = $1 AND created_at::date = $2 \
             AND tenant_id = $3::bigint AND id > now() - interval '1 day'",
        );
        let users = use_of(&shape, "public.users");
        assert_eq!(names(&users.equality), ["tenant_id"]);
        assert_eq!(names(&users.range), ["id"]);
    }

    #[test]
    fn in_lists_any_is_null_between_and_prefix_like_are_classified() {
        let shape = read(
            "SELECT * FROM users WHERE id IN ($1, $2) OR tenant_id = ANY($3) OR (name IS NULL) \
             OR created_at BETWEEN $4 AND $5 OR email LIKE 'ab%' OR name LIKE '%x' OR email <> $6",
        );
        let users = use_of(&shape, "public.users");
        assert_eq!(names(&users.equality), ["id", "tenant_id", "name"]);
        assert_eq!(names(&users.range), ["created_at", "email"]);
    }

    #[test]
    fn negations_count_only_for_a_boolean_column() {
        let shape = read("SELECT * FROM users WHERE NOT active AND NOT (email = $1) AND id NOT IN ($2)");
        let users = use_of(&shape, "public.users");
        assert_eq!(names(&users.equality), ["active"]);
        assert!(users.range.is_empty() && users.join.is_empty());
    }

    #[test]
    fn a_join_condition_with_a_value_gives_an_equality_and_using_gives_joins() {
        let on = read("SELECT 1 FROM orders a JOIN orders b ON a.user_id = b.user_id AND b.status = $1");
        assert_eq!(on.tables.len(), 2, "each reference of a self-join is its own use");
        assert_eq!(names(&on.tables[0].join), ["user_id"]);
        assert_eq!(names(&on.tables[1].join), ["user_id"]);
        assert_eq!(names(&on.tables[1].equality), ["status"]);
        let using = read(
            "SELECT 1 FROM orders JOIN billing.invoices ON invoices.order_id = orders.id \
             JOIN users USING (tenant_id)",
        );
        assert_eq!(names(&use_of(&using, "public.users").join), ["tenant_id"]);
        assert_eq!(names(&use_of(&using, "public.orders").join), ["id", "tenant_id"]);
    }

    #[test]
    fn a_column_only_in_the_select_list_gives_no_candidate() {
        let shape = read("SELECT email, name FROM users WHERE id = $1");
        assert_eq!(candidates(&shape, 3), [candidate(&["id"])]);
    }

    #[test]
    fn an_order_by_over_two_tables_or_mixed_directions_is_not_recorded() {
        let mixed_tables =
            read("SELECT 1 FROM orders o JOIN users u ON u.id = o.user_id ORDER BY o.created_at, u.name");
        assert!(
            mixed_tables
                .tables
                .iter()
                .all(|table_use| table_use.order_by.is_empty())
        );
        let mixed_directions = read("SELECT * FROM users ORDER BY tenant_id, created_at DESC");
        assert!(use_of(&mixed_directions, "public.users").order_by.is_empty());
        let expression = read("SELECT * FROM users ORDER BY lower(name)");
        assert!(use_of(&expression, "public.users").order_by.is_empty());
        let through_output = read("SELECT tenant_id AS t, created_at FROM users ORDER BY t DESC, 2 DESC");
        assert_eq!(
            names(&use_of(&through_output, "public.users").order_by),
            ["tenant_id", "created_at"]
        );
        assert!(
            keys(&candidates(&through_output, 3), "public.users")
                .contains(&"tenant_id,created_at".to_owned())
        );
    }

    #[test]
    fn candidates_are_cut_to_columns_max_and_sorted() {
        let shape =
            read("SELECT * FROM users WHERE tenant_id = $1 AND name = $2 AND email = $3 AND created_at > $4");
        let found = candidates(&shape, 2);
        assert!(found.iter().all(|candidate| candidate.columns.len() <= 2));
        assert!(found.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(keys(&found, "public.users").contains(&"name,tenant_id".to_owned()));
        assert!(candidates(&shape, 0).is_empty());
    }

    #[test]
    fn a_long_or_chain_is_read_without_deep_recursion() {
        let terms = vec!["email = $1"; 20_000].join(" OR ");
        let shape = read(&format!("SELECT * FROM users WHERE {terms}"));
        assert_eq!(names(&use_of(&shape, "public.users").equality), ["email"]);
    }

    #[test]
    fn an_email_index_covers_an_email_candidate() {
        let existing = [index("users_email_idx", &["email"])];
        assert_eq!(
            covered_by(&candidate(&["email"]), &existing).map(|i| i.name.as_str()),
            Some("users_email_idx")
        );
    }

    #[test]
    fn a_two_column_index_covers_its_leading_column_only() {
        let existing = [index("users_tenant_created_idx", &["tenant_id", "created_at"])];
        assert!(covered_by(&candidate(&["tenant_id"]), &existing).is_some());
        assert!(covered_by(&candidate(&["created_at"]), &existing).is_none());
        let mut invalid = index("users_email_idx", &["email"]);
        invalid.valid = false;
        assert!(covered_by(&candidate(&["email"]), &[invalid]).is_none());
    }

    #[test]
    fn an_index_on_a_leading_prefix_of_another_is_redundant() {
        let found = duplicates(&[
            index("a_idx", &["a"]),
            index("a_b_idx", &["a", "b"]),
            index("b_idx", &["b"]),
        ]);
        assert_eq!(
            found,
            [Duplicate {
                redundant: "a_idx".into(),
                covered_by: "a_b_idx".into(),
                reason: "key columns (a) are a leading prefix of a_b_idx's (a, b)".into(),
            }]
        );
        let chain = duplicates(&[
            index("a_idx", &["a"]),
            index("a_b_idx", &["a", "b"]),
            index("a_b_c_idx", &["a", "b", "c"]),
        ]);
        let pairs: Vec<(&str, &str)> = chain
            .iter()
            .map(|d| (d.redundant.as_str(), d.covered_by.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("a_idx", "a_b_c_idx"), ("a_b_idx", "a_b_c_idx")],
            "each is kept by the index that stays"
        );
    }

    #[test]
    fn a_unique_index_is_not_redundant_with_a_longer_plain_one() {
        let mut unique = index("a_key", &["a"]);
        unique.unique = true;
        assert!(duplicates(&[unique.clone(), index("a_b_idx", &["a", "b"])]).is_empty());
        let mut primary = index("pkey", &["a"]);
        primary.primary = true;
        primary.unique = true;
        let found = duplicates(&[unique, primary, index("a_idx", &["a"])]);
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|d| (d.redundant.as_str(), d.covered_by.as_str()))
            .collect();
        assert_eq!(pairs, [("a_key", "pkey"), ("a_idx", "pkey")]);
    }

    #[test]
    fn of_two_identical_indexes_one_is_reported() {
        let found = duplicates(&[
            index("b_idx", &["a"]),
            index("a_idx", &["a"]),
            index("expr_idx", &[""]),
        ]);
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|d| (d.redundant.as_str(), d.covered_by.as_str()))
            .collect();
        assert_eq!(pairs, [("b_idx", "a_idx")]);
    }

    #[test]
    fn bad_sql_ddl_and_several_statements_are_refused() {
        assert!(matches!(
            shape("SELEC * FROM users", &catalog()),
            Err(CandidateError::InvalidSql(_))
        ));
        let error = shape("SELECT * FROM", &catalog())
            .err()
            .map(|error| error.to_string());
        assert!(error.is_some_and(|message| message.starts_with("not valid SQL: ")));
        assert_eq!(
            shape("CREATE TABLE t (a int)", &catalog()),
            Err(CandidateError::NotAQuery)
        );
        assert_eq!(
            CandidateError::NotAQuery.to_string(),
            "not a query that reads tables"
        );
        assert_eq!(
            shape("SELECT 1; SELECT 2", &catalog()),
            Err(CandidateError::SeveralStatements)
        );
        assert_eq!(shape("  ", &catalog()), Err(CandidateError::NoStatement));
    }
}
