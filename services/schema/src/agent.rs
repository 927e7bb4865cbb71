//! The schema agent's operations, served by the agents' runtime.
//! So far: `schema.dependencies` and `schema.lint` (of SQL given in the
//! task; named, versioned migrations come with the migration history).

use std::sync::Arc;

use agents::{OpFuture, Operation, TaskContext};
use serde_json::{Map, Value, json};

use crate::dependencies::dependents;
use crate::facts::read_facts;
use crate::lint::{Severity, lint};

/// The agent these operations belong to.
pub const AGENT: &str = "schema";

/// `(operation, implementation)` of every operation built so far.
pub fn operations() -> Vec<(&'static str, Arc<dyn Operation>)> {
    vec![("dependencies", Arc::new(Dependencies)), ("lint", Arc::new(Lint))]
}

/// `schema.dependencies {database, object}`: what depends on a table
/// (`table` or `schema.table`) or a column (`schema.table.column`).
pub struct Dependencies;

impl Operation for Dependencies {
    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let database = text_param(params, "database")?;
            let object = text_param(params, "object")?;
            let (schema, table, column) = parse_object(object)?;
            let (pool, url) = task
                .deps
                .targets
                .pool_for(AGENT, database)
                .await
                .map_err(|e| e.to_string())?;
            let found = dependents(&pool, schema, table, column)
                .await
                .map_err(|e| url.scrub(&e.to_string()))?;
            Ok(json!({"database": database, "object": object, "dependents": found}))
        })
    }
}

/// `schema.lint {database, sql}`: the lock level, rewrite and size of
/// every statement against the target's catalog, and the hazards. The task
/// succeeds with the report when nothing is blocking, and fails naming the
/// blocking hazards otherwise (so a workflow stops before applying it).
pub struct Lint;

/// Blocking hazards named in a failed lint task at most.
const HAZARDS_NAMED_MAX: usize = 10;

impl Operation for Lint {
    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let database = text_param(params, "database")?;
            let sql = match (params.get("sql"), params.get("migration")) {
                (Some(_), _) => text_param(params, "sql")?,
                (None, Some(_)) => {
                    return Err(
                        "named migrations are not kept yet; give the migration's SQL as 'sql'".into(),
                    );
                }
                (None, None) => return Err("needs parameter 'sql'".into()),
            };
            let (pool, url) = task
                .deps
                .targets
                .pool_for(AGENT, database)
                .await
                .map_err(|e| e.to_string())?;
            let facts = read_facts(&pool).await.map_err(|e| url.scrub(&e.to_string()))?;
            let report = lint(sql, &facts).map_err(|e| e.to_string())?;
            let blocking: Vec<String> = report
                .findings()
                .filter(|(_, finding)| finding.severity == Severity::Blocking)
                .map(|(statement, finding)| {
                    format!(
                        "statement {statement}: {} ({}); instead: {}",
                        finding.message, finding.rule, finding.safe_alternative
                    )
                })
                .collect();
            if blocking.is_empty() {
                return serde_json::to_value(&report).map_err(|e| e.to_string());
            }
            let named: Vec<&str> = blocking
                .iter()
                .take(HAZARDS_NAMED_MAX)
                .map(String::as_str)
                .collect();
            Err(format!(
                "lint found {} blocking hazard(s): {}",
                blocking.len(),
                named.join("; ")
            ))
        })
    }
}

fn text_param<'a>(params: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match params.get(name) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text),
        Some(other) => Err(format!(
            "parameter '{name}' must be a non-empty string, not {other}"
        )),
        None => Err(format!("needs parameter '{name}'")),
    }
}

/// `table`, `schema.table` or `schema.table.column`, names as stored in
/// the catalog.
fn parse_object(object: &str) -> Result<(&str, &str, Option<&str>), String> {
    let parts: Vec<&str> = object.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("object '{object}' has an empty name part"));
    }
    match parts.as_slice() {
        [table] => Ok(("public", table, None)),
        [schema, table] => Ok((schema, table, None)),
        [schema, table, column] => Ok((schema, table, Some(column))),
        _ => Err(format!(
            "object '{object}' must be table, schema.table or schema.table.column"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_name_a_table_or_a_column() {
        assert_eq!(parse_object("users").unwrap(), ("public", "users", None));
        assert_eq!(parse_object("app.users").unwrap(), ("app", "users", None));
        assert_eq!(
            parse_object("app.users.email").unwrap(),
            ("app", "users", Some("email"))
        );
        assert!(
            parse_object("a.b.c.d")
                .unwrap_err()
                .contains("schema.table.column")
        );
        assert!(parse_object("app..x").unwrap_err().contains("empty"));
    }
}
