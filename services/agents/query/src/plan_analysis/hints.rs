//! Rewrite hints from the SQL text: predicates no index can serve as written.

use agents::sql::quote_ident_if_needed;
use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget,
    JoinConstraint, JoinOperator, ObjectName, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    TableWithJoins, UnaryOperator, UpdateTableFromKind,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::candidates::folded;

use super::*;

/// Hints for predicates in `sql` (WHERE and JOIN ... ON of every query,
/// subquery, CTE, UPDATE and DELETE) that no index can serve as written.
///
/// `indexed` tells whether a column is the (leading) column of an index; it
/// receives `table.column` (or `schema.table.column`, as the query names the
/// table) when the table is known from the FROM clause, aliases resolved,
/// else the bare `column`. Functions, casts and arithmetic on a column are
/// only reported on indexed columns, where they defeat an index; OR across
/// columns, leading-wildcard LIKE and NOT IN are always reported.
pub fn rewrite_hints(sql: &str, indexed: &dyn Fn(&str) -> bool) -> Result<Vec<RewriteHint>, PlanError> {
    check_operator_count(sql)?;
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(invalid_sql)?;
    if statements.is_empty() {
        return Err(PlanError::NoStatement);
    }
    let mut finder = HintFinder {
        indexed,
        hints: Vec::new(),
    };
    for statement in &statements {
        finder.statement(statement);
    }
    Ok(finder.hints)
}

/// At most this many AND, OR and arithmetic operators (and `*`, which the
/// tokens do not tell from a multiplication) in a SQL text or plan
/// condition: far more than hand-written predicates chain.
pub(super) const MAX_OPERATORS: usize = 128;

/// A chain of `a OR b OR c ...` parses into an expression as deep as it is
/// long, and sqlparser (like the walk here) recurses over it to print, walk
/// and drop it: an overlong chain would overflow the stack. Counted on the
/// tokens, which need no recursion.
pub(super) fn check_operator_count(sql: &str) -> Result<(), PlanError> {
    let found = operator_count(sql).map_err(PlanError::InvalidSql)?;
    if found > MAX_OPERATORS {
        return Err(PlanError::TooManyOperators {
            found,
            max: MAX_OPERATORS,
        });
    }
    Ok(())
}

pub(super) fn operator_count(sql: &str) -> Result<usize, String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|error| error.to_string())?;
    Ok(tokens
        .iter()
        .filter(|token| match token {
            Token::Word(word) => matches!(word.keyword, Keyword::AND | Keyword::OR),
            Token::Plus | Token::Minus | Token::Mul | Token::Div | Token::Mod | Token::StringConcat => true,
            _ => false,
        })
        .count())
}

pub(super) fn invalid_sql(error: ParserError) -> PlanError {
    PlanError::InvalidSql(match error {
        ParserError::TokenizerError(message) | ParserError::ParserError(message) => message,
        ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_owned(),
    })
}

/// A column as the query names it, identifiers folded the way PostgreSQL
/// folds them (unquoted to lower case).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ColumnRef {
    /// `t` in `t.col`, `s.t` in `s.t.col`.
    pub(super) qualifier: Option<String>,
    pub(super) name: String,
}

impl ColumnRef {
    /// As SQL text: `o.created_at`, `"Name"`.
    pub(super) fn written(&self) -> String {
        match &self.qualifier {
            Some(qualifier) => format!(
                "{}.{}",
                quote_relation(qualifier),
                quote_ident_if_needed(&self.name)
            ),
            None => quote_ident_if_needed(&self.name),
        }
    }
}

pub(super) fn column_ref(expression: &Expr) -> Option<ColumnRef> {
    match expression {
        Expr::Identifier(ident) => Some(ColumnRef {
            qualifier: None,
            name: folded(ident),
        }),
        Expr::CompoundIdentifier(parts) => {
            let (name, qualifier) = parts.split_last()?;
            Some(ColumnRef {
                qualifier: (!qualifier.is_empty())
                    .then(|| qualifier.iter().map(folded).collect::<Vec<_>>().join(".")),
                name: folded(name),
            })
        }
        _ => None,
    }
}

pub(super) fn object_name_text(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| part.as_ident().map(folded).unwrap_or_else(|| part.to_string()))
        .collect::<Vec<_>>()
        .join(".")
}

/// A column resolved against the FROM clause.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResolvedColumn {
    pub(super) table: Option<String>,
    pub(super) column: String,
    /// As the query wrote it (`o.created_at`), quoted where needed.
    pub(super) written: String,
}

impl ResolvedColumn {
    /// What [`rewrite_hints`]' `indexed` receives.
    pub(super) fn key(&self) -> String {
        match &self.table {
            Some(table) => format!("{table}.{}", self.column),
            None => self.column.clone(),
        }
    }
}

/// The tables a query level reads, by the name its columns use for them.
pub(super) struct Scope<'p> {
    pub(super) entries: Vec<ScopeEntry>,
    pub(super) parent: Option<&'p Scope<'p>>,
}

pub(super) struct ScopeEntry {
    /// The alias, else the table's own name.
    pub(super) name: String,
    /// The table as the query names it; `None` for subqueries and functions.
    pub(super) table: Option<String>,
}

impl<'p> Scope<'p> {
    pub(super) fn new(tables: &[TableWithJoins], parent: Option<&'p Scope<'p>>) -> Self {
        let mut entries = Vec::new();
        for table in tables {
            add_tables(&mut entries, table);
        }
        Self { entries, parent }
    }

    pub(super) fn resolve(&self, column: &ColumnRef) -> ResolvedColumn {
        let table = match &column.qualifier {
            Some(qualifier) => self.table_named(qualifier),
            // Unqualified: only certain when the level reads a single table.
            None => match self.entries.as_slice() {
                [only] => only.table.clone(),
                _ => None,
            },
        };
        ResolvedColumn {
            table,
            column: column.name.clone(),
            written: column.written(),
        }
    }

    pub(super) fn table_named(&self, qualifier: &str) -> Option<String> {
        let entry = self
            .entries
            .iter()
            .find(|entry| entry.name == qualifier || entry.table.as_deref() == Some(qualifier));
        match entry {
            Some(entry) => entry.table.clone(),
            None => self.parent.and_then(|parent| parent.table_named(qualifier)),
        }
    }

    /// The name to qualify an unqualified column of this level with.
    pub(super) fn sole_name(&self) -> Option<&str> {
        match self.entries.as_slice() {
            [only] => Some(&only.name),
            _ => None,
        }
    }
}

pub(super) fn add_tables(entries: &mut Vec<ScopeEntry>, tables: &TableWithJoins) {
    add_table_factor(entries, &tables.relation);
    for join in &tables.joins {
        add_table_factor(entries, &join.relation);
    }
}

pub(super) fn add_table_factor(entries: &mut Vec<ScopeEntry>, factor: &TableFactor) {
    match factor {
        TableFactor::Table { name, alias, .. } => {
            let table = object_name_text(name);
            let own_name = table.rsplit('.').next().unwrap_or(&table).to_owned();
            entries.push(ScopeEntry {
                name: alias
                    .as_ref()
                    .map(|alias| folded(&alias.name))
                    .unwrap_or(own_name),
                table: Some(table),
            });
        }
        TableFactor::NestedJoin { table_with_joins, .. } => add_tables(entries, table_with_joins),
        TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. } => {
            if let Some(alias) = alias {
                entries.push(ScopeEntry {
                    name: folded(&alias.name),
                    table: None,
                });
            }
        }
        _ => {}
    }
}

pub(super) struct HintFinder<'a> {
    pub(super) indexed: &'a dyn Fn(&str) -> bool,
    pub(super) hints: Vec<RewriteHint>,
}

impl HintFinder<'_> {
    pub(super) fn push(&mut self, hint: RewriteHint) {
        if !self.hints.contains(&hint) {
            self.hints.push(hint);
        }
    }

    pub(super) fn statement(&mut self, statement: &Statement) {
        match statement {
            Statement::Query(query) => self.query(query, None),
            Statement::Insert(insert) => {
                if let Some(source) = &insert.source {
                    self.query(source, None);
                }
            }
            Statement::Update(update) => {
                let mut tables = vec![update.table.clone()];
                if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) =
                    &update.from
                {
                    tables.extend(from.iter().cloned());
                }
                self.filtered_tables(&tables, update.selection.as_ref(), None);
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
                let mut tables = from.clone();
                tables.extend(delete.using.iter().flatten().cloned());
                self.filtered_tables(&tables, delete.selection.as_ref(), None);
            }
            Statement::Explain { statement, .. } => self.statement(statement),
            _ => {}
        }
    }

    pub(super) fn query(&mut self, query: &Query, outer: Option<&Scope<'_>>) {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.query(&cte.query, outer);
            }
        }
        self.set_expr(&query.body, outer);
    }

    pub(super) fn set_expr(&mut self, body: &SetExpr, outer: Option<&Scope<'_>>) {
        match body {
            SetExpr::Select(select) => self.select(select, outer),
            SetExpr::Query(query) => self.query(query, outer),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, outer);
                self.set_expr(right, outer);
            }
            SetExpr::Insert(statement) | SetExpr::Update(statement) | SetExpr::Delete(statement) => {
                self.statement(statement);
            }
            _ => {}
        }
    }

    pub(super) fn select(&mut self, select: &Select, outer: Option<&Scope<'_>>) {
        let scope = self.filtered_tables(&select.from, select.selection.as_ref(), outer);
        for item in &select.projection {
            if let SelectItem::UnnamedExpr(expression) | SelectItem::ExprWithAlias { expr: expression, .. } =
                item
            {
                self.nested_queries(expression, &scope);
            }
        }
        if let Some(having) = &select.having {
            self.nested_queries(having, &scope);
        }
    }

    /// The hints of a FROM list (its join conditions and derived tables) and
    /// WHERE clause; returns the scope they were resolved in.
    pub(super) fn filtered_tables<'p>(
        &mut self,
        tables: &[TableWithJoins],
        selection: Option<&Expr>,
        outer: Option<&'p Scope<'p>>,
    ) -> Scope<'p> {
        let scope = Scope::new(tables, outer);
        for table in tables {
            self.joined_tables(table, &scope);
        }
        if let Some(selection) = selection {
            self.predicate(selection, &scope);
        }
        scope
    }

    pub(super) fn joined_tables(&mut self, tables: &TableWithJoins, scope: &Scope<'_>) {
        self.table_factor(&tables.relation, scope);
        for join in &tables.joins {
            self.table_factor(&join.relation, scope);
            if let Some(condition) = join_condition(&join.join_operator) {
                self.predicate(condition, scope);
            }
        }
    }

    pub(super) fn table_factor(&mut self, factor: &TableFactor, scope: &Scope<'_>) {
        match factor {
            TableFactor::Derived { subquery, .. } => self.query(subquery, Some(scope)),
            TableFactor::NestedJoin { table_with_joins, .. } => self.joined_tables(table_with_joins, scope),
            _ => {}
        }
    }

    /// Hints in a boolean condition.
    pub(super) fn predicate(&mut self, predicate: &Expr, scope: &Scope<'_>) {
        match predicate {
            Expr::Nested(inner) => self.predicate(inner, scope),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => self.predicate(expr, scope),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                self.predicate(left, scope);
                self.predicate(right, scope);
            }
            Expr::BinaryOp {
                op: BinaryOperator::Or,
                ..
            } => {
                let alternatives = disjuncts(predicate);
                self.or_across_columns(predicate, &alternatives, scope);
                for alternative in alternatives {
                    self.predicate(alternative, scope);
                }
            }
            Expr::BinaryOp { left, op, right } if is_comparison(op) => {
                self.operand(
                    left,
                    predicate,
                    Some(Comparison {
                        op,
                        other: right,
                        operand_is_left: true,
                    }),
                    scope,
                );
                self.operand(
                    right,
                    predicate,
                    Some(Comparison {
                        op,
                        other: left,
                        operand_is_left: false,
                    }),
                    scope,
                );
            }
            Expr::Like {
                negated,
                expr,
                pattern,
                ..
            }
            | Expr::ILike {
                negated,
                expr,
                pattern,
                ..
            } => {
                if !negated && pattern_starts_with_wildcard(pattern) {
                    self.leading_wildcard_like(predicate, expr, scope);
                }
                self.operand(expr, predicate, None, scope);
                self.nested_queries(pattern, scope);
            }
            Expr::In {
                expr,
                target: InTarget::Subquery(subquery),
                negated,
                ..
            } => {
                if *negated {
                    self.not_in_subquery(predicate, expr, subquery, scope);
                }
                self.operand(expr, predicate, None, scope);
                self.query(subquery, Some(scope));
            }
            Expr::In { expr, .. }
            | Expr::Between { expr, .. }
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsNotFalse(expr) => {
                self.operand(expr, predicate, None, scope);
                for other in child_expressions(predicate).into_iter().skip(1) {
                    self.nested_queries(other, scope);
                }
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                self.operand(left, predicate, None, scope);
                self.nested_queries(right, scope);
            }
            other => self.nested_queries(other, scope),
        }
    }

    /// Hints for one side of a comparison: a function, cast or arithmetic
    /// around an indexed column keeps its index from serving the predicate.
    pub(super) fn operand(
        &mut self,
        operand: &Expr,
        predicate: &Expr,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        match strip_parentheses(operand) {
            Expr::Cast { expr, data_type, .. } if column_ref(strip_parentheses(expr)).is_some() => {
                self.cast_on_column(predicate, operand, &data_type.to_string(), comparison, scope);
            }
            Expr::Cast { expr, .. } => self.operand(expr, predicate, None, scope),
            Expr::Function(function) => {
                let name = function_name(function);
                self.function_on_column(predicate, operand, &name, comparison, scope);
            }
            Expr::Extract { .. } => self.function_on_column(predicate, operand, "extract", comparison, scope),
            Expr::Substring { .. } => {
                self.function_on_column(predicate, operand, "substring", comparison, scope)
            }
            Expr::Trim { .. } => self.function_on_column(predicate, operand, "trim", comparison, scope),
            Expr::Ceil { .. } => self.function_on_column(predicate, operand, "ceil", comparison, scope),
            Expr::Floor { .. } => self.function_on_column(predicate, operand, "floor", comparison, scope),
            Expr::AtTimeZone { .. } => {
                self.function_on_column(predicate, operand, "timezone", comparison, scope)
            }
            Expr::BinaryOp { op, .. } if is_arithmetic(op) => {
                self.arithmetic_on_column(predicate, operand, comparison, scope);
            }
            _ => {}
        }
        self.nested_queries(operand, scope);
    }

    /// The indexed columns among those an expression reads.
    pub(super) fn indexed_columns(&self, expression: &Expr, scope: &Scope<'_>) -> Vec<ResolvedColumn> {
        let mut found: Vec<ResolvedColumn> = Vec::new();
        for column in columns_in(expression) {
            let resolved = scope.resolve(&column);
            if (self.indexed)(&resolved.key()) && !found.contains(&resolved) {
                found.push(resolved);
            }
        }
        found
    }

    pub(super) fn function_on_column(
        &mut self,
        predicate: &Expr,
        call: &Expr,
        function: &str,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        let columns = self.indexed_columns(call, scope);
        let Some(first) = columns.first() else {
            return;
        };
        let message = format!(
            "`{}` applies {function}() to the indexed column {}, so an index on the column cannot serve it",
            excerpt(predicate),
            column_list(&columns),
        );
        let advice = if is_date_function(function) {
            let rewrite = period_of(call)
                .zip(comparison)
                .and_then(|(period, comparison)| period_comparison(&first.written, &period, comparison));
            date_range_advice(&first.written, &format!("{function}()"), rewrite)
        } else {
            let mut advice = format!(
                "Create an expression index matching it (the function must be IMMUTABLE): {}",
                expression_index(first, call)
            );
            if matches!(function, "lower" | "upper") {
                advice.push_str(&format!(
                    " Or make {} case-insensitive by type (citext) and compare it directly.",
                    first.column
                ));
            }
            advice
        };
        self.push(RewriteHint {
            kind: HintKind::FunctionOnColumn,
            message,
            advice,
        });
    }

    pub(super) fn cast_on_column(
        &mut self,
        predicate: &Expr,
        cast: &Expr,
        data_type: &str,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        let columns = self.indexed_columns(cast, scope);
        let Some(first) = columns.first() else {
            return;
        };
        let target_type = data_type.to_lowercase();
        let message = format!(
            "`{}` casts the indexed column {} to {target_type}, so an index on the column cannot serve it",
            excerpt(predicate),
            column_list(&columns),
        );
        let advice = if target_type == "date" {
            let rewrite =
                comparison.and_then(|comparison| period_comparison(&first.written, &Period::Day, comparison));
            date_range_advice(&first.written, "a cast to date", rewrite)
        } else {
            let column = &first.written;
            let example = match comparison {
                Some(comparison) => {
                    let op = comparison_from_operand(comparison);
                    let other = without_cast(comparison.other);
                    format!("{column} {op} {other}::<type of {column}>")
                }
                None => format!("{column} = $1::<type of {column}>"),
            };
            format!(
                "Compare the column with a value of its own type instead, casting the other side (`{example}`); \
                 if the cast is really needed, create an expression index: {}",
                expression_index(first, cast)
            )
        };
        self.push(RewriteHint {
            kind: HintKind::CastOnColumn,
            message,
            advice,
        });
    }

    pub(super) fn arithmetic_on_column(
        &mut self,
        predicate: &Expr,
        arithmetic: &Expr,
        comparison: Option<Comparison<'_>>,
        scope: &Scope<'_>,
    ) {
        let columns = self.indexed_columns(arithmetic, scope);
        let Some(first) = columns.first() else {
            return;
        };
        let message = format!(
            "`{}` computes `{}` from the indexed column {} before comparing, so an index on the column \
             cannot serve it",
            excerpt(predicate),
            excerpt(arithmetic),
            column_list(&columns),
        );
        let rewritten = comparison.and_then(|comparison| isolated_column_comparison(arithmetic, comparison));
        let advice = match rewritten {
            Some(rewritten) => {
                format!("Move the arithmetic to the other side so the column stands alone: `{rewritten}`.")
            }
            None => format!(
                "Move the arithmetic to the other side so the column stands alone, or create an \
                 expression index: {}",
                expression_index(first, arithmetic)
            ),
        };
        self.push(RewriteHint {
            kind: HintKind::ArithmeticOnColumn,
            message,
            advice,
        });
    }

    /// `a = $1 OR b = $2`: a single index serves only one of the columns.
    pub(super) fn or_across_columns(&mut self, predicate: &Expr, alternatives: &[&Expr], scope: &Scope<'_>) {
        let mut column_sets: Vec<Vec<String>> = Vec::new();
        for alternative in alternatives {
            let mut columns: Vec<String> = columns_in(alternative)
                .iter()
                .map(|column| scope.resolve(column).key())
                .collect();
            columns.sort();
            columns.dedup();
            if !columns.is_empty() && !column_sets.contains(&columns) {
                column_sets.push(columns);
            }
        }
        // A column every branch tests (`(a = $1 AND b = $2) OR a = $3`) lets
        // one index serve all of them.
        let shared_by_all = column_sets.first().is_some_and(|first| {
            first
                .iter()
                .any(|column| column_sets.iter().all(|set| set.contains(column)))
        });
        if column_sets.len() < 2 || shared_by_all {
            return;
        }
        let mut columns: Vec<String> = Vec::new();
        for column in column_sets.into_iter().flatten() {
            if !columns.contains(&column) {
                columns.push(column);
            }
        }
        self.push(RewriteHint {
            kind: HintKind::OrAcrossColumns,
            message: format!(
                "`{}` ORs conditions on different columns ({}): one index cannot serve it, and without an \
                 index for every branch PostgreSQL scans the whole table",
                excerpt(predicate),
                columns.join(", "),
            ),
            advice: "Index each branch's column so the planner can combine the indexes with a BitmapOr, \
                     or split the query into one SELECT per branch joined by UNION (UNION ALL when the \
                     branches cannot match the same row), each served by its own index."
                .to_owned(),
        });
    }

    pub(super) fn leading_wildcard_like(&mut self, predicate: &Expr, subject: &Expr, scope: &Scope<'_>) {
        let subject = strip_parentheses(subject);
        let column = columns_in(subject).first().map(|column| scope.resolve(column));
        let table = column
            .as_ref()
            .and_then(|column| column.table.as_deref())
            .map(quote_relation)
            .unwrap_or_else(|| "<table>".to_owned());
        let indexed_expression = match column_ref(subject) {
            Some(column) => quote_ident_if_needed(&column.name),
            None => format!("({})", without_qualifiers(subject)),
        };
        let subject_text = match column_ref(subject) {
            Some(column) => quote_ident_if_needed(&column.name),
            None => without_qualifiers(subject).to_string(),
        };
        self.push(RewriteHint {
            kind: HintKind::LeadingWildcardLike,
            message: format!(
                "`{}` starts its pattern with a wildcard, so no B-tree index on {subject_text} can serve it \
                 and every row is read",
                excerpt(predicate),
            ),
            advice: format!(
                "Create a trigram index, which serves LIKE and ILIKE with wildcards anywhere: CREATE \
                 EXTENSION IF NOT EXISTS pg_trgm; CREATE INDEX CONCURRENTLY ON {table} USING gin \
                 ({indexed_expression} gin_trgm_ops); for a pure suffix search ('%x'), an index on \
                 reverse({subject_text}) queried with reverse({subject_text}) LIKE reverse('x') || '%' \
                 also works."
            ),
        });
    }

    pub(super) fn not_in_subquery(
        &mut self,
        predicate: &Expr,
        subject: &Expr,
        subquery: &Query,
        scope: &Scope<'_>,
    ) {
        let example = not_exists_rewrite(subject, subquery, scope)
            .map(|rewrite| format!(", here `{rewrite}`"))
            .unwrap_or_default();
        self.push(RewriteHint {
            kind: HintKind::NotInSubquery,
            message: format!(
                "`{}` cannot be planned as an anti-join (a NULL from the subquery makes it false for every \
                 row), so PostgreSQL runs the subquery as a SubPlan: hashed while it fits in work_mem, \
                 otherwise re-scanned for every row",
                excerpt(predicate),
            ),
            advice: format!(
                "Rewrite it as NOT EXISTS (SELECT 1 FROM ... WHERE <subquery column> = <outer column>){example}, \
                 which plans as an anti-join; the two differ only when the subquery can return NULL."
            ),
        });
    }

    /// Runs the hint search on the subqueries inside an expression.
    pub(super) fn nested_queries(&mut self, expression: &Expr, scope: &Scope<'_>) {
        match expression {
            Expr::Subquery(query) | Expr::Exists { subquery: query, .. } => self.query(query, Some(scope)),
            Expr::In {
                expr,
                target: InTarget::Subquery(query),
                ..
            } => {
                self.nested_queries(expr, scope);
                self.query(query, Some(scope));
            }
            other => {
                for child in child_expressions(other) {
                    self.nested_queries(child, scope);
                }
            }
        }
    }
}

/// The comparison an operand is part of, for rewriting it.
#[derive(Clone, Copy)]
pub(super) struct Comparison<'a> {
    pub(super) op: &'a BinaryOperator,
    pub(super) other: &'a Expr,
    pub(super) operand_is_left: bool,
}

pub(super) fn join_condition(operator: &JoinOperator) -> Option<&Expr> {
    match crate::candidates::join_constraint_of(operator)? {
        JoinConstraint::On(condition) => Some(condition),
        _ => None,
    }
}

pub(super) fn is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

pub(super) fn is_arithmetic(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo
    )
}

/// The comparison operator seen from the other side (`a < b` is `b > a`).
pub(super) fn mirrored(op: &BinaryOperator) -> BinaryOperator {
    match op {
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        other => other.clone(),
    }
}

/// `col + k > x` rewritten as `col > x - k` (and `col - k`, `k + col`
/// likewise); `None` for other arithmetic, where the direction of the
/// comparison may change.
pub(super) fn isolated_column_comparison(arithmetic: &Expr, comparison: Comparison<'_>) -> Option<String> {
    let Expr::BinaryOp { left, op, right } = strip_parentheses(arithmetic) else {
        return None;
    };
    let (column, constant, inverse) = match (column_ref(strip_parentheses(left)), op) {
        (Some(_), BinaryOperator::Plus) => (left, right, "-"),
        (Some(_), BinaryOperator::Minus) => (left, right, "+"),
        (None, BinaryOperator::Plus) if column_ref(strip_parentheses(right)).is_some() => (right, left, "-"),
        _ => return None,
    };
    if !columns_in(constant).is_empty() {
        return None;
    }
    let op = comparison_from_operand(comparison);
    let other = comparison.other;
    Some(format!("{column} {op} {other} {inverse} {constant}"))
}

pub(super) fn pattern_starts_with_wildcard(pattern: &Expr) -> bool {
    match strip_parentheses(pattern) {
        Expr::Value(value) => value
            .value
            .clone()
            .into_string()
            .is_some_and(|text| text.starts_with('%') || text.starts_with('_')),
        Expr::Cast { expr, .. } => pattern_starts_with_wildcard(expr),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            ..
        } => pattern_starts_with_wildcard(left),
        _ => false,
    }
}

pub(super) fn is_date_function(function: &str) -> bool {
    matches!(
        function,
        "date" | "date_trunc" | "extract" | "date_part" | "to_char"
    )
}

/// The period a date function of a column stands for: comparing the bare
/// column with the period's bounds lets the column's index serve it.
pub(super) enum Period {
    /// `date(col)`, `col::date`.
    Day,
    /// `date_trunc('month', col)`: the unit.
    Truncated(String),
    /// `extract(year FROM col)`, `date_part('year', col)`.
    Year,
}

pub(super) fn period_of(call: &Expr) -> Option<Period> {
    match strip_parentheses(call) {
        Expr::Cast { data_type, .. } => data_type
            .to_string()
            .eq_ignore_ascii_case("date")
            .then_some(Period::Day),
        Expr::Extract { field, .. } => field
            .to_string()
            .eq_ignore_ascii_case("year")
            .then_some(Period::Year),
        Expr::Function(function) => match function_name(function).as_str() {
            "date" => Some(Period::Day),
            "date_trunc" => first_text_argument(function).map(|unit| Period::Truncated(unit.to_lowercase())),
            "date_part" => first_text_argument(function)
                .filter(|field| field.eq_ignore_ascii_case("year"))
                .map(|_| Period::Year),
            _ => None,
        },
        _ => None,
    }
}

/// `created_at >= $1::date AND created_at < $1::date + 1` for `date(created_at) = $1`;
/// `None` for comparisons a range cannot express (`<>`).
pub(super) fn period_comparison(column: &str, period: &Period, comparison: Comparison<'_>) -> Option<String> {
    let value = comparison.other;
    let value = if matches!(
        value,
        Expr::Value(_)
            | Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Function(_)
            | Expr::Nested(_)
    ) {
        value.to_string()
    } else {
        format!("({value})")
    };
    let (start, next) = match period {
        Period::Day => (format!("{value}::date"), format!("{value}::date + 1")),
        Period::Truncated(unit) => (value.clone(), format!("{value} + interval '1 {unit}'")),
        Period::Year => (
            format!("make_date({value}, 1, 1)"),
            format!("make_date({value} + 1, 1, 1)"),
        ),
    };
    Some(match comparison_from_operand(comparison) {
        BinaryOperator::Eq => format!("{column} >= {start} AND {column} < {next}"),
        BinaryOperator::GtEq => format!("{column} >= {start}"),
        BinaryOperator::Gt => format!("{column} >= {next}"),
        BinaryOperator::Lt => format!("{column} < {start}"),
        BinaryOperator::LtEq => format!("{column} < {next}"),
        _ => return None,
    })
}

pub(super) fn date_range_advice(column: &str, what: &str, rewrite: Option<String>) -> String {
    let rewrite = rewrite.unwrap_or_else(|| format!("{column} >= <start> AND {column} < <end>"));
    format!(
        "Compare the bare column with the bounds of the period instead: `{rewrite}`, so the index on {column} \
         serves it (on a timestamptz column {what} depends on the session time zone, so it could not even be \
         indexed)."
    )
}

/// The comparison operator with the operand on its left (`$1 < f(col)` is
/// `f(col) > $1`).
pub(super) fn comparison_from_operand(comparison: Comparison<'_>) -> BinaryOperator {
    if comparison.operand_is_left {
        comparison.op.clone()
    } else {
        mirrored(comparison.op)
    }
}

pub(super) fn without_cast(expression: &Expr) -> &Expr {
    match expression {
        Expr::Cast { expr, .. } => expr,
        other => other,
    }
}

/// A function's own name, without schema, lower case.
pub(super) fn function_name(function: &sqlparser::ast::Function) -> String {
    let name = object_name_text(&function.name);
    name.rsplit('.').next().unwrap_or(&name).to_lowercase()
}

pub(super) fn first_text_argument(function: &sqlparser::ast::Function) -> Option<String> {
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    match function_argument(list.args.first()?)? {
        Expr::Value(value) => value.value.clone().into_string(),
        _ => None,
    }
}

/// `CREATE INDEX CONCURRENTLY ON users ((lower(email)));` for an expression
/// over `column`.
pub(super) fn expression_index(column: &ResolvedColumn, expression: &Expr) -> String {
    let table = column
        .table
        .as_deref()
        .map(quote_relation)
        .unwrap_or_else(|| "<table>".to_owned());
    format!(
        "CREATE INDEX CONCURRENTLY ON {table} (({}));",
        without_qualifiers(strip_parentheses(expression))
    )
}

pub(super) fn column_list(columns: &[ResolvedColumn]) -> String {
    columns
        .iter()
        .map(ResolvedColumn::key)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `NOT EXISTS (SELECT 1 FROM <from> WHERE <where> AND <selected> = <outer>)`
/// for a simple one-column subquery, with the outer column qualified so the
/// subquery cannot capture it.
pub(super) fn not_exists_rewrite(subject: &Expr, subquery: &Query, scope: &Scope<'_>) -> Option<String> {
    let SetExpr::Select(select) = subquery.body.as_ref() else {
        return None;
    };
    if subquery.with.is_some() || select.from.is_empty() || select.having.is_some() {
        return None;
    }
    let [SelectItem::UnnamedExpr(selected) | SelectItem::ExprWithAlias { expr: selected, .. }] =
        select.projection.as_slice()
    else {
        return None;
    };
    let subject_column = column_ref(strip_parentheses(subject))?;
    let outer = match &subject_column.qualifier {
        Some(_) => subject.to_string(),
        None => format!("{}.{}", scope.sole_name()?, subject),
    };
    let from = select
        .from
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let correlation = format!("{selected} = {outer}");
    let condition = match &select.selection {
        Some(selection) => format!("{selection} AND {correlation}"),
        None => correlation,
    };
    Some(format!("NOT EXISTS (SELECT 1 FROM {from} WHERE {condition})"))
}

/// The columns an expression reads, outside its subqueries.
pub(super) fn columns_in(expression: &Expr) -> Vec<ColumnRef> {
    if let Some(column) = column_ref(expression) {
        return vec![column];
    }
    child_expressions(expression)
        .into_iter()
        .flat_map(columns_in)
        .collect()
}

/// The direct sub-expressions of an expression, subqueries excluded.
pub(super) fn child_expressions(expression: &Expr) -> Vec<&Expr> {
    match expression {
        Expr::BinaryOp { left, right, .. }
        | Expr::AnyOp { left, right, .. }
        | Expr::AllOp { left, right, .. }
        | Expr::IsDistinctFrom(left, right)
        | Expr::IsNotDistinctFrom(left, right) => vec![left, right],
        Expr::UnaryOp { expr, .. }
        | Expr::Nested(expr)
        | Expr::Cast { expr, .. }
        | Expr::IsNull(expr)
        | Expr::IsNotNull(expr)
        | Expr::IsTrue(expr)
        | Expr::IsFalse(expr)
        | Expr::IsNotTrue(expr)
        | Expr::IsNotFalse(expr)
        | Expr::IsUnknown(expr)
        | Expr::IsNotUnknown(expr)
        | Expr::Extract { expr, .. }
        | Expr::Ceil { expr, .. }
        | Expr::Floor { expr, .. }
        | Expr::Collate { expr, .. }
        | Expr::Named { expr, .. } => vec![expr],
        Expr::Like { expr, pattern, .. }
        | Expr::ILike { expr, pattern, .. }
        | Expr::SimilarTo { expr, pattern, .. }
        | Expr::RLike { expr, pattern, .. } => vec![expr, pattern],
        Expr::In { expr, target, .. } => {
            let mut children: Vec<&Expr> = vec![expr];
            match target {
                InTarget::List(items) => children.extend(items),
                InTarget::Unnest(array) => children.push(array),
                _ => {}
            }
            children
        }
        Expr::Between { expr, low, high, .. } => vec![expr, low, high],
        Expr::AtTimeZone { timestamp, time_zone } => vec![timestamp, time_zone],
        Expr::Position { expr, r#in } => vec![expr, r#in],
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => std::iter::once(expr.as_ref())
            .chain(substring_from.as_deref())
            .chain(substring_for.as_deref())
            .collect(),
        Expr::Trim {
            expr,
            trim_what,
            trim_characters,
            ..
        } => std::iter::once(expr.as_ref())
            .chain(trim_what.as_deref())
            .chain(trim_characters.iter().flatten())
            .collect(),
        Expr::Function(function) => {
            let mut children = Vec::new();
            if let FunctionArguments::List(list) = &function.args {
                children.extend(list.args.iter().filter_map(function_argument));
            }
            children.extend(function.filter.as_deref());
            children
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => operand
            .as_deref()
            .into_iter()
            .chain(conditions.iter().flat_map(|when| [&when.condition, &when.result]))
            .chain(else_result.as_deref())
            .collect(),
        Expr::Tuple(items) => items.iter().collect(),
        Expr::Array(array) => array.elem.iter().collect(),
        Expr::CompoundFieldAccess { root, .. } => vec![root],
        Expr::JsonAccess { value, .. } => vec![value],
        _ => Vec::new(),
    }
}

pub(super) fn function_argument(argument: &FunctionArg) -> Option<&Expr> {
    match argument {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expression))
        | FunctionArg::Named {
            arg: FunctionArgExpr::Expr(expression),
            ..
        }
        | FunctionArg::ExprNamed {
            arg: FunctionArgExpr::Expr(expression),
            ..
        } => Some(expression),
        _ => None,
    }
}

pub(super) fn function_argument_mut(argument: &mut FunctionArg) -> Option<&mut Expr> {
    match argument {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expression))
        | FunctionArg::Named {
            arg: FunctionArgExpr::Expr(expression),
            ..
        }
        | FunctionArg::ExprNamed {
            arg: FunctionArgExpr::Expr(expression),
            ..
        } => Some(expression),
        _ => None,
    }
}

/// The expression with `alias.column` written as `column`: an index
/// definition names its table's columns bare.
pub(super) fn without_qualifiers(expression: &Expr) -> Expr {
    let mut copy = expression.clone();
    drop_qualifiers(&mut copy);
    copy
}

pub(super) fn drop_qualifiers(expression: &mut Expr) {
    if let Expr::CompoundIdentifier(parts) = expression {
        if let Some(last) = parts.last().cloned() {
            *expression = Expr::Identifier(last);
        }
        return;
    }
    match expression {
        Expr::BinaryOp { left, right, .. } => {
            drop_qualifiers(left);
            drop_qualifiers(right);
        }
        Expr::AtTimeZone { timestamp, time_zone } => {
            drop_qualifiers(timestamp);
            drop_qualifiers(time_zone);
        }
        Expr::UnaryOp { expr, .. }
        | Expr::Nested(expr)
        | Expr::Cast { expr, .. }
        | Expr::Extract { expr, .. }
        | Expr::Ceil { expr, .. }
        | Expr::Floor { expr, .. }
        | Expr::Collate { expr, .. }
        | Expr::Substring { expr, .. }
        | Expr::Trim { expr, .. } => drop_qualifiers(expr),
        Expr::Function(function) => {
            if let FunctionArguments::List(list) = &mut function.args {
                for argument in list.args.iter_mut().filter_map(function_argument_mut) {
                    drop_qualifiers(argument);
                }
            }
        }
        _ => {}
    }
}

/// An expression as SQL, cut short for messages.
pub(super) fn excerpt(expression: &Expr) -> String {
    const MAX_CHARS: usize = 120;
    let text = expression.to_string();
    if text.chars().count() <= MAX_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_CHARS).collect();
    cut.push('…');
    cut
}
