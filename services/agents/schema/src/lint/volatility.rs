//! Whether a column default is volatile, which decides whether
//! `ADD COLUMN ... DEFAULT` rewrites the table (PostgreSQL 11+ stores a
//! non-volatile default once in the catalog; a volatile one is evaluated
//! for every existing row, rewriting the table).
//!
//! Like squawk, the check is conservative: constants, casts, operators and
//! calls of functions known to be immutable or stable are non-volatile;
//! a call of any other function counts as volatile.

use sqlparser::ast::{Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments};

/// Built-in functions known to be volatile (named in messages as such).
const VOLATILE_FUNCTIONS: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "gen_random_bytes",
    "nextval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
    "setseed",
];

/// Functions known to be immutable or stable, so fine as defaults.
const NON_VOLATILE_FUNCTIONS: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "transaction_timestamp",
    "statement_timestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_schema",
    "current_database",
    "lower",
    "upper",
    "btrim",
    "ltrim",
    "rtrim",
    "trim",
    "concat",
    "concat_ws",
    "length",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "abs",
    "round",
    "floor",
    "ceil",
    "md5",
    "to_json",
    "to_jsonb",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "to_timestamp",
    "to_date",
    "date_trunc",
    "array_fill",
];

/// `None` when `expr` is non-volatile as a default; otherwise why it counts
/// as volatile (the function or construct), for messages.
pub(crate) fn volatile_part(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(_) | Expr::TypedString(_) | Expr::Identifier(_) => None,
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } | Expr::Cast { expr: inner, .. } => {
            volatile_part(inner)
        }
        Expr::BinaryOp { left, right, .. } => volatile_part(left).or_else(|| volatile_part(right)),
        Expr::Array(array) => array.elem.iter().find_map(volatile_part),
        Expr::Function(function) => function_volatility(function),
        other => Some(format!(
            "the expression `{other}`, which the linter cannot classify"
        )),
    }
}

fn function_volatility(function: &Function) -> Option<String> {
    let name = function
        .name
        .0
        .last()
        .and_then(|part| part.as_ident())
        .map(super::analyze::fold)
        .unwrap_or_default();
    if VOLATILE_FUNCTIONS.contains(&name.as_str()) {
        return Some(format!("{name}(), a volatile function"));
    }
    if !NON_VOLATILE_FUNCTIONS.contains(&name.as_str()) {
        return Some(format!(
            "{name}(), not known to be immutable or stable and so taken as volatile"
        ));
    }
    match &function.args {
        FunctionArguments::None | FunctionArguments::Subquery(_) => None,
        FunctionArguments::List(list) => list.args.iter().find_map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
            | FunctionArg::Named {
                arg: FunctionArgExpr::Expr(e),
                ..
            }
            | FunctionArg::ExprNamed {
                arg: FunctionArgExpr::Expr(e),
                ..
            } => volatile_part(e),
            _ => None,
        }),
    }
}
