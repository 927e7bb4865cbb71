//! The schema agent's operations, served by the agents' runtime:
//! `schema.dependencies`, `schema.lint`, and the migration lifecycle
//! `schema.plan`, `schema.apply`, `schema.complete`, `schema.rollback`,
//! `schema.status` (see [`crate::migration`]).

use std::sync::Arc;

use agents::params::{TargetParams, Text, to_json};
use agents::{OpFuture, Operation, Served, TaskContext};
use domain::{Code, OperationError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::dependencies::dependents;
use crate::facts::read_facts;
use crate::lint::{Severity, lint};
use crate::migration::{Migrator, Target};

/// The agent these operations belong to.
pub const AGENT: &str = "schema";

/// `(operation, implementation)` of every operation of the schema agent.
pub fn operations(migrator: Migrator) -> Vec<(&'static str, Arc<dyn Served>)> {
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

async fn target(task: &TaskContext, database: Option<&Text>) -> Result<Target, OperationError> {
    let (name, pool, url) = task.target(AGENT, database.map(|d| &**d)).await?;
    Ok(Target { name, pool, url })
}

/// A failure reading the target's catalog: its connection is the likely cause.
fn catalog_error(
    url: &domain::target::ConnectionUrl,
    e: impl std::fmt::Display,
    code: Code,
) -> OperationError {
    OperationError::new(code, url.scrub(&e.to_string()))
}

/// The parameters of the migration operations: the target, and the
/// migration by name (from the directory) or as its definition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationParams {
    pub database: Option<Text>,
    pub migration: Option<Text>,
    /// An object, or its JSON/YAML text.
    pub definition: Option<Value>,
}

impl MigrationParams {
    fn migration(&self, migrator: &Migrator) -> Result<crate::migration::Migration, OperationError> {
        Ok(migrator.resolve(self.migration.as_deref(), self.definition.as_ref())?)
    }
}

/// `schema.apply`'s: a migration, and whether to contract it too.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyParams {
    pub database: Option<Text>,
    pub migration: Option<Text>,
    pub definition: Option<Value>,
    #[serde(default)]
    pub complete: bool,
}

/// The target and, optionally, the migration in progress by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedParams {
    pub database: Option<Text>,
    pub migration: Option<Text>,
}

/// `schema.dependencies`'.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependenciesParams {
    pub database: Option<Text>,
    /// `table`, `schema.table` or `schema.table.column`.
    pub object: Text,
}

/// `schema.lint`'s: SQL, or a migration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintParams {
    pub database: Option<Text>,
    pub sql: Option<Text>,
    pub migration: Option<Text>,
    pub definition: Option<Value>,
}

/// `schema.plan {database, migration | definition}`: every statement of
/// every phase, the lint of its SQL, what depends on what it changes, and
/// whether apply would start, resume or refuse it. Changes nothing.
pub struct Plan {
    migrator: Arc<Migrator>,
}

impl Operation for Plan {
    type Params = MigrationParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: MigrationParams) -> OpFuture<'a> {
        Box::pin(async move {
            let migration = params.migration(&self.migrator)?;
            let target = target(task, params.database.as_ref()).await?;
            let report = self.migrator.plan(&target, migration).await?;
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
    type Params = ApplyParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: ApplyParams) -> OpFuture<'a> {
        Box::pin(async move {
            let migration = self
                .migrator
                .resolve(params.migration.as_deref(), params.definition.as_ref())?;
            let target = target(task, params.database.as_ref()).await?;
            let report = self
                .migrator
                .apply(&target, migration, params.complete, task)
                .await?;
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
    type Params = NamedParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: NamedParams) -> OpFuture<'a> {
        Box::pin(async move {
            let target = target(task, params.database.as_ref()).await?;
            let report = self
                .migrator
                .complete(&target, params.migration.as_deref())
                .await?;
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
    type Params = NamedParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: NamedParams) -> OpFuture<'a> {
        Box::pin(async move {
            let target = target(task, params.database.as_ref()).await?;
            let report = self
                .migrator
                .rollback(&target, params.migration.as_deref())
                .await?;
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
    type Params = TargetParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: TargetParams) -> OpFuture<'a> {
        Box::pin(async move {
            let target = target(task, params.database.as_ref()).await?;
            let report = self.migrator.status(&target).await?;
            to_json(&report)
        })
    }
}

/// `schema.dependencies {database, object}`: what depends on a table
/// (`table` or `schema.table`) or a column (`schema.table.column`).
pub struct Dependencies;

impl Operation for Dependencies {
    type Params = DependenciesParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: DependenciesParams) -> OpFuture<'a> {
        Box::pin(async move {
            let object = &*params.object;
            let (schema, table, column) = parse_object(object).map_err(OperationError::invalid_argument)?;
            let (database, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            let found = dependents(&pool, schema, table, column).await.map_err(|e| {
                let code = match &e {
                    crate::dependencies::DependencyError::Database(e) => agents::database_code(e),
                    _ => Code::NotFound,
                };
                catalog_error(&url, e, code)
            })?;
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
    type Params = LintParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: LintParams) -> OpFuture<'a> {
        Box::pin(async move {
            let sql = match &params.sql {
                Some(sql) => sql.to_string(),
                None if params.migration.is_some() || params.definition.is_some() => {
                    let migration = self
                        .migrator
                        .resolve(params.migration.as_deref(), params.definition.as_ref())?;
                    let scripts: Vec<&str> = migration
                        .operations
                        .iter()
                        .filter_map(|op| match op {
                            crate::migration::Operation::Sql { up, .. } => Some(up.as_str()),
                            _ => None,
                        })
                        .collect();
                    if scripts.is_empty() {
                        return Err(OperationError::invalid_argument(format!(
                            "migration '{}' has no sql operations to lint; its structured operations are safe by construction (see schema.plan)",
                            migration.name
                        )));
                    }
                    scripts.join(";\n")
                }
                None => {
                    return Err(OperationError::invalid_argument(
                        "needs parameter 'sql', 'migration' or 'definition'",
                    ));
                }
            };
            let (_, pool, url) = task.target(AGENT, params.database.as_deref()).await?;
            let facts = read_facts(&pool).await.map_err(|e| {
                let code = match &e {
                    crate::facts::FactsError::Database(e) => agents::database_code(e),
                    crate::facts::FactsError::TooLarge(_) => Code::FailedPrecondition,
                };
                catalog_error(&url, e, code)
            })?;
            let report = lint(&sql, &facts).map_err(|e| OperationError::invalid_argument(e.to_string()))?;
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
                return to_json(&report);
            }
            let named: Vec<&str> = blocking
                .iter()
                .take(HAZARDS_NAMED_MAX)
                .map(String::as_str)
                .collect();
            Err(OperationError::failed_precondition(format!(
                "lint found {} blocking hazard(s): {}",
                blocking.len(),
                named.join("; ")
            )))
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
