//! Plan conditions (Filter, Index Cond, ...) read as expressions: the columns they test and the index that would serve them.

use agents::sql::quote_ident_if_needed;
use sqlparser::ast::{BinaryOperator, Expr};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::*;

/// A column, or an expression over one, that a plan condition compares
/// with something.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ColumnCondition {
    /// The table or alias the plan qualified the column with, if any.
    pub(super) qualifier: Option<String>,
    pub(super) target: IndexTarget,
    /// `=`, `IN`, `= ANY`, `IS NULL`, rather than a range.
    pub(super) equality: bool,
}

/// What an index (or extended statistics) would be built on.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum IndexTarget {
    /// A column, by name.
    Column(String),
    /// An expression over a column, as SQL with the column unqualified
    /// (`lower(email)`).
    Expression(String),
}

impl IndexTarget {
    /// As written in messages.
    pub(super) fn label(&self) -> &str {
        match self {
            Self::Column(text) | Self::Expression(text) => text,
        }
    }

    /// As written in CREATE INDEX and CREATE STATISTICS.
    pub(super) fn sql(&self) -> String {
        match self {
            Self::Column(name) => quote_ident_if_needed(name),
            Self::Expression(expression) => format!("({expression})"),
        }
    }
}

/// The columns of a plan condition, by how an index could use them.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum FilterShape {
    /// Conditions all of which must hold: one composite index serves them.
    Conjunction(Vec<ColumnCondition>),
    /// Alternatives: an index per column, combined by a BitmapOr.
    Disjunction(Vec<ColumnCondition>),
}

/// Parses plan conditions (PostgreSQL's own deparsed SQL) and sorts their
/// columns; `None` when none parses (e.g. `(NOT (hashed SubPlan 1))`).
pub(super) fn filter_shape(conditions: &[&str]) -> Option<FilterShape> {
    let mut conjunction = Vec::new();
    let mut parsed_any = false;
    for condition in conditions {
        let Some(expression) = parse_plan_expression(condition) else {
            continue;
        };
        parsed_any = true;
        let disjuncts = disjuncts(&expression);
        if disjuncts.len() > 1 {
            if conditions.len() == 1 {
                let alternatives = disjuncts.iter().flat_map(|d| conjunct_conditions(d)).collect();
                return Some(FilterShape::Disjunction(alternatives));
            }
            continue;
        }
        conjunction.extend(conjunct_conditions(&expression));
    }
    parsed_any.then_some(FilterShape::Conjunction(conjunction))
}

/// A plan condition as an expression; `None` when it does not parse, or
/// chains too many operators to walk safely (see [`check_operator_count`]).
pub(super) fn parse_plan_expression(text: &str) -> Option<Expr> {
    if operator_count(text).ok()? > MAX_OPERATORS {
        return None;
    }
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .ok()?
        .parse_expr()
        .ok()
}

pub(super) fn conjunct_conditions(expression: &Expr) -> Vec<ColumnCondition> {
    conjuncts(expression)
        .into_iter()
        .flat_map(column_conditions)
        .collect()
}

/// The parts of an AND chain (parentheses looked through).
pub(super) fn conjuncts(expression: &Expr) -> Vec<&Expr> {
    match strip_parentheses(expression) {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut parts = conjuncts(left);
            parts.extend(conjuncts(right));
            parts
        }
        other => vec![other],
    }
}

/// The parts of an OR chain (parentheses looked through).
pub(super) fn disjuncts(expression: &Expr) -> Vec<&Expr> {
    match strip_parentheses(expression) {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            let mut parts = disjuncts(left);
            parts.extend(disjuncts(right));
            parts
        }
        other => vec![other],
    }
}

pub(super) fn strip_parentheses(expression: &Expr) -> &Expr {
    match expression {
        Expr::Nested(inner) => strip_parentheses(inner),
        other => other,
    }
}

/// The columns (or expressions over one) one condition compares, and
/// whether as equality or range.
pub(super) fn column_conditions(condition: &Expr) -> Vec<ColumnCondition> {
    let (sides, equality): (Vec<&Expr>, bool) = match strip_parentheses(condition) {
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Eq => (vec![left, right], true),
            BinaryOperator::Lt | BinaryOperator::LtEq | BinaryOperator::Gt | BinaryOperator::GtEq => {
                (vec![left, right], false)
            }
            _ => return Vec::new(),
        },
        Expr::AnyOp {
            left,
            compare_op: BinaryOperator::Eq,
            ..
        } => (vec![left], true),
        Expr::In {
            expr, negated: false, ..
        } => (vec![expr], true),
        Expr::IsNull(expr) => (vec![expr], true),
        Expr::Between {
            expr, negated: false, ..
        } => (vec![expr], false),
        _ => return Vec::new(),
    };
    sides
        .into_iter()
        .filter_map(plan_index_target)
        .map(|(qualifier, target)| ColumnCondition {
            qualifier,
            target,
            equality,
        })
        .collect()
}

/// What an index on one side of a plan condition would be built on: the
/// column, or the expression when the side computes from a single column.
pub(super) fn plan_index_target(side: &Expr) -> Option<(Option<String>, IndexTarget)> {
    if let Some(column) = plan_column(side) {
        return Some((column.qualifier, IndexTarget::Column(column.name)));
    }
    let columns = columns_in(side);
    let first = columns.first()?;
    if columns.iter().any(|column| column != first) {
        return None;
    }
    let expression = without_qualifiers(strip_parentheses(side)).to_string();
    Some((first.qualifier.clone(), IndexTarget::Expression(expression)))
}

/// A column in a plan condition; PostgreSQL's own casts (`(city)::text` for
/// a varchar) are looked through, they do not stop an index on the column.
pub(super) fn plan_column(expression: &Expr) -> Option<ColumnRef> {
    match expression {
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => plan_column(inner),
        other => column_ref(other),
    }
}

/// What an index serving the conditions is built on, in order: equality
/// targets first, then one range target (a B-tree uses no column after a
/// range).
pub(super) fn ordered_index_targets(conditions: &[&ColumnCondition]) -> Vec<IndexTarget> {
    let mut targets = distinct_targets(conditions.iter().copied().filter(|condition| condition.equality));
    if let Some(range) = conditions
        .iter()
        .find(|condition| !condition.equality && !targets.contains(&condition.target))
    {
        targets.push(range.target.clone());
    }
    targets
}

pub(super) fn distinct_targets<'a>(
    conditions: impl Iterator<Item = &'a ColumnCondition>,
) -> Vec<IndexTarget> {
    let mut targets: Vec<IndexTarget> = Vec::new();
    for condition in conditions {
        if !targets.contains(&condition.target) {
            targets.push(condition.target.clone());
        }
    }
    targets
}

/// The index to create on `relation` for the conditions `accept` keeps.
pub(super) fn index_advice(
    relation: &str,
    shape: Option<&FilterShape>,
    accept: &dyn Fn(&ColumnCondition) -> bool,
    purpose: &str,
) -> String {
    let table = quote_relation(relation);
    match shape {
        Some(FilterShape::Conjunction(conditions)) => {
            let accepted: Vec<&ColumnCondition> = conditions.iter().filter(|c| accept(c)).collect();
            let targets = ordered_index_targets(&accepted);
            if targets.is_empty() {
                return generic_index_advice(&table, purpose);
            }
            let labels = targets
                .iter()
                .map(IndexTarget::label)
                .collect::<Vec<_>>()
                .join(", ");
            let list = targets
                .iter()
                .map(IndexTarget::sql)
                .collect::<Vec<_>>()
                .join(", ");
            let order_note = if targets.len() > 1 && accepted.iter().any(|c| !c.equality) {
                " (equality conditions first, then the range)"
            } else {
                ""
            };
            format!(
                "Create an index on {table} ({labels}){order_note} {purpose}: CREATE INDEX CONCURRENTLY ON \
                 {table} ({list});"
            )
        }
        Some(FilterShape::Disjunction(conditions)) => {
            let targets = distinct_targets(conditions.iter().filter(|c| accept(c)));
            if targets.is_empty() {
                return generic_index_advice(&table, purpose);
            }
            let statements: Vec<String> = targets
                .iter()
                .map(|target| format!("CREATE INDEX CONCURRENTLY ON {table} ({});", target.sql()))
                .collect();
            format!(
                "The condition is an OR across {}: create one index per column so PostgreSQL can combine \
                 them with a BitmapOr: {}",
                targets
                    .iter()
                    .map(IndexTarget::label)
                    .collect::<Vec<_>>()
                    .join(", "),
                statements.join(" ")
            )
        }
        None => generic_index_advice(&table, purpose),
    }
}

pub(super) fn generic_index_advice(table: &str, purpose: &str) -> String {
    format!("Create an index on {table} covering the columns of the condition {purpose}.")
}
