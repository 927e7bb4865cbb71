//! The safe alternatives of findings written out as SQL: the whole
//! statement sequence, ready to run in autocommit (each statement its own
//! transaction), starting with `SET lock_timeout` because every step that
//! takes a lock stronger than ROW EXCLUSIVE needs it, with what cannot be
//! said in SQL as a trailing `--` comment. Such advice lints without a
//! blocking finding: advice that the same linter refuses is no advice.
//! Findings whose safe way is not a fixed statement sequence (expand/
//! contract over releases, pg_repack, fixing a name) say it in words.

use sqlparser::ast::{
    CheckConstraint, ColumnDef, ColumnOption, ForeignKeyConstraint, Ident, TableConstraint,
};

/// The first statement of every SQL advice.
pub(crate) const LOCK_TIMEOUT: &str = "SET lock_timeout = '2s';";

/// `SET lock_timeout = '2s'; <s1>; <s2>; ... -- <note>`.
pub(crate) fn script(statements: &[String], note: &str) -> String {
    let mut out = LOCK_TIMEOUT.to_owned();
    for statement in statements {
        out.push(' ');
        out.push_str(statement);
        out.push(';');
    }
    if !note.is_empty() {
        out.push_str(" -- ");
        out.push_str(note);
    }
    out
}

/// A name as PostgreSQL stores it, written so that it reads back the
/// same: quoted unless it is a plain lower-case, unreserved name.
pub(crate) fn ident(name: &str) -> String {
    agents::sql::quote_ident_if_needed(name)
}

/// A stored name as an AST identifier (quoted when it must be).
fn ast_ident(name: &str) -> Ident {
    match ident(name) {
        plain if !plain.starts_with('"') => Ident::new(plain),
        _ => Ident::with_quote('"', name),
    }
}

/// `ADD CONSTRAINT <name> <constraint> NOT VALID`, then its validation.
pub(crate) fn not_valid_then_validate(
    table_sql: &str,
    constraint: &TableConstraint,
    name: &str,
) -> Vec<String> {
    let named = with_name(constraint, name);
    vec![
        format!("ALTER TABLE {table_sql} ADD {named} NOT VALID"),
        format!("ALTER TABLE {table_sql} VALIDATE CONSTRAINT {}", ident(name)),
    ]
}

/// The constraint under `name` (an unnamed one gets the name the advice
/// validates it by).
fn with_name(constraint: &TableConstraint, name: &str) -> TableConstraint {
    let mut named = constraint.clone();
    match &mut named {
        TableConstraint::Check(check) => check.name = Some(ast_ident(name)),
        TableConstraint::ForeignKey(fk) => fk.name = Some(ast_ident(name)),
        _ => {}
    }
    named
}

/// A column's `CHECK` as a table constraint of its own.
pub(crate) fn column_check(check: &CheckConstraint) -> TableConstraint {
    TableConstraint::Check(CheckConstraint {
        name: None,
        ..check.clone()
    })
}

/// A column's `REFERENCES` as a table constraint on that column.
pub(crate) fn column_foreign_key(column: &Ident, fk: &ForeignKeyConstraint) -> TableConstraint {
    TableConstraint::ForeignKey(ForeignKeyConstraint {
        name: None,
        columns: vec![column.clone()],
        ..fk.clone()
    })
}

/// `ADD COLUMN IF NOT EXISTS` of the column without the options `drop`
/// picks (the constraint the advice adds separately).
pub(crate) fn add_column_without(
    table_sql: &str,
    column_def: &ColumnDef,
    drop: impl Fn(&ColumnOption) -> bool,
) -> String {
    let mut column = column_def.clone();
    column.options.retain(|o| !drop(&o.option));
    format!("ALTER TABLE {table_sql} ADD COLUMN IF NOT EXISTS {column}")
}

/// The check-constraint way to NOT NULL: a NOT VALID check, validated
/// under SHARE UPDATE EXCLUSIVE, lets SET NOT NULL skip its scan.
pub(crate) fn not_null_steps(
    table_sql: &str,
    column: &str,
    check: &str,
    pending: Option<&str>,
) -> Vec<String> {
    let mut steps = Vec::new();
    let validated = match pending {
        Some(existing) => existing,
        None => {
            steps.push(format!(
                "ALTER TABLE {table_sql} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID",
                ident(check),
                ident(column)
            ));
            check
        }
    };
    steps.push(format!(
        "ALTER TABLE {table_sql} VALIDATE CONSTRAINT {}",
        ident(validated)
    ));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_only_when_they_must_be() {
        assert_eq!(ident("orders_pkey"), "orders_pkey");
        assert_eq!(ident("Orders"), "\"Orders\"");
        assert_eq!(ident("order"), "\"order\"");
        assert_eq!(ident("a b\"c"), "\"a b\"\"c\"");
        assert_eq!(ident("1st"), "\"1st\"");
    }

    #[test]
    fn a_script_sets_lock_timeout_first_and_ends_with_its_note() {
        assert_eq!(
            script(&["ALTER TABLE t VALIDATE CONSTRAINT c".into()], "why"),
            "SET lock_timeout = '2s'; ALTER TABLE t VALIDATE CONSTRAINT c; -- why"
        );
    }
}
