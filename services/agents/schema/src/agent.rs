//! The schema agent's operations, served by the agents' runtime:
//! `schema.dependencies`, `schema.lint`, and the migration lifecycle
//! `schema.plan`, `schema.apply`, `schema.complete`, `schema.rollback`,
//! `schema.status` (see [`crate::migration`]).

use std::sync::Arc;

use agents::params::{flag, optional_text, text as text_param};
use agents::{OpFuture, Operation, TaskContext};
use serde_json::{Value, json};

use crate::dependencies::dependents;
use crate::facts::read_facts;
use crate::lint::{Severity, lint};
use crate::migration::{Migrator, Target};

/// The agent these operations belong to.
pub const AGENT: &str = "schema";

/// `(operation, implementation)` of every operation of the schema agent.
pub fn operations(migrator: Migrator) -> Vec<(&'static str, Arc<dyn Operation>)> {
    let migrator = Arc::new(migrator);
    vec![
        ("dependencies", Arc::new(Dependencies)),
        (
            "lint",
            Arc::new(Lint {
                migrator: migrator.clone(),
            }),
        ),
        (
            "plan",
            Arc::new(Plan {
                migrator: migrator.clone(),
            }),
        ),
        (
            "apply",
            Arc::new(Apply {
                migrator: migrator.clone(),
            }),
        ),
        (
            "complete",
            Arc::new(Complete {
                migrator: migrator.clone(),
            }),
        ),
        (
            "rollback",
            Arc::new(Rollback {
                migrator: migrator.clone(),
            }),
        ),
        ("status", Arc::new(Status { migrator })),
    ]
}

async fn target(task: &TaskContext) -> Result<Target, String> {
    let name = text_param(&task.command.params, "database")?;
    let (pool, url) = task
        .deps
        .targets
        .pool_for(AGENT, name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Target {
        name: name.to_owned(),
        pool,
        url,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

/// `schema.plan {database, migration | definition}`: every statement of
/// every phase, the lint of its SQL, what depends on what it changes, and
/// whether apply would start, resume or refuse it. Changes nothing.
pub struct Plan {
    migrator: Arc<Migrator>,
}

impl Operation for Plan {
    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let migration = self
                .migrator
                .from_params(&task.command.params)
                .map_err(|e| e.to_string())?;
            let target = target(task).await?;
            let report = self
                .migrator
                .plan(&target, migration)
                .await
                .map_err(|e| e.to_string())?;
            to_json(&report)
        })
    }
}

/// `schema.apply {database, migration | definition, complete?}`: expand,
/// backfill (progress as events) and validate; with `complete: true` the
/// contract too. Applying a migration in progress resumes it.
pub struct Apply {
    migrator: Arc<Migrator>,
}

impl Operation for Apply {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let migration = self.migrator.from_params(params).map_err(|e| e.to_string())?;
            let complete = flag(params, "complete")?;
            let target = target(task).await?;
            let report = self
                .migrator
                .apply(&target, migration, complete, task)
                .await
                .map_err(|e| e.to_string())?;
            to_json(&report)
        })
    }
}

/// `schema.complete {database, migration?}`: the contract of the
/// migration in progress (or the one named).
pub struct Complete {
    migrator: Arc<Migrator>,
}

impl Operation for Complete {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let name = optional_text(&task.command.params, "migration")?;
            let target = target(task).await?;
            let report = self
                .migrator
                .complete(&target, name)
                .await
                .map_err(|e| e.to_string())?;
            to_json(&report)
        })
    }
}

/// `schema.rollback {database, migration?}`: undoes the migration in
/// progress (before complete); the database is left as it was.
pub struct Rollback {
    migrator: Arc<Migrator>,
}

impl Operation for Rollback {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let name = optional_text(&task.command.params, "migration")?;
            let target = target(task).await?;
            let report = self
                .migrator
                .rollback(&target, name)
                .await
                .map_err(|e| e.to_string())?;
            to_json(&report)
        })
    }
}

/// `schema.status {database}`: applied migrations, the one in progress
/// (phase, backfill progress) and those waiting in the directory.
pub struct Status {
    migrator: Arc<Migrator>,
}

impl Operation for Status {
    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let target = target(task).await?;
            let report = self.migrator.status(&target).await.map_err(|e| e.to_string())?;
            to_json(&report)
        })
    }
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

/// `schema.lint {database, sql | migration | definition}`: the lock
/// level, rewrite and size of every statement against the target's
/// catalog, and the hazards. The task succeeds with the report when
/// nothing is blocking, and fails naming the blocking hazards otherwise
/// (so a workflow stops before applying it). A named migration's SQL is
/// its `sql` operations' `up`, in order.
pub struct Lint {
    migrator: Arc<Migrator>,
}

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
            let sql = match params.get("sql") {
                Some(_) => text_param(params, "sql")?.to_owned(),
                None if params.contains_key("migration") || params.contains_key("definition") => {
                    let migration = self.migrator.from_params(params).map_err(|e| e.to_string())?;
                    let scripts: Vec<&str> = migration
                        .operations
                        .iter()
                        .filter_map(|op| match op {
                            crate::migration::Operation::Sql { up, .. } => Some(up.as_str()),
                            _ => None,
                        })
                        .collect();
                    if scripts.is_empty() {
                        return Err(format!(
                            "migration '{}' has no sql operations to lint; its structured operations are safe by construction (see schema.plan)",
                            migration.name
                        ));
                    }
                    scripts.join(";\n")
                }
                None => return Err("needs parameter 'sql', 'migration' or 'definition'".into()),
            };
            let (pool, url) = task
                .deps
                .targets
                .pool_for(AGENT, database)
                .await
                .map_err(|e| e.to_string())?;
            let facts = read_facts(&pool).await.map_err(|e| url.scrub(&e.to_string()))?;
            let report = lint(&sql, &facts).map_err(|e| e.to_string())?;
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
