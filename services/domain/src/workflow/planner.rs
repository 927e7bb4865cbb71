//! The rule-based planner: a request in plain English becomes a plan, or a
//! refusal that says what the planner can do; never a guessed plan.
//!
//! The request is split into steps at "then", "and" and commas; each step
//! must match one rule, and each rule yields tasks with their parameters
//! taken from the words (table, column, migration and projection names).
//! Steps run in the order written: each depends on the step before it
//! (a person who writes "back up, then migrate" means that order; parallel
//! branches are written as plans). A step that names no table uses the
//! table of an earlier step ("optimize queries in users and create an
//! index on email").

use serde_json::{Map, Value, json};

use super::plan::{Catalogue, PlanSpec, TaskSpec};

pub const REQUEST_BYTES_MAX: usize = 2000;

/// What the planner understands, shown when it does not understand.
pub const CAPABILITIES: [&str; 6] = [
    "optimize slow queries in the <table> table",
    "create an index on <column> [in <table>]",
    "back up the database [<name>]",
    "run migration <name>",
    "check integrity of <table>",
    "rebuild the <name> projection",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlannerError {
    #[error(
        "cannot plan \"{step}\": the planner understands requests such as: {}. Join steps with \"then\" or \"and\", or send a plan instead",
        CAPABILITIES.join("; ")
    )]
    NotUnderstood { step: String },
    #[error("\"{step}\": {why}")]
    MissingDetail { step: String, why: String },
    #[error("the request is empty")]
    Empty,
    #[error("the request is {0} bytes; at most {REQUEST_BYTES_MAX}")]
    TooLong(usize),
    #[error("\"{step}\" needs {operation}, which no agent serves; the operations served are: {served}")]
    NotServed {
        step: String,
        operation: String,
        served: String,
    },
}

impl PlannerError {
    /// What the planner cannot plan is the request's to change.
    pub fn code(&self) -> crate::Code {
        crate::Code::InvalidArgument
    }
}

/// [`plan_request`], refused when it needs an operation that `catalogue`
/// (what the agents serve) does not have.
pub fn plan_served(request: &str, catalogue: &Catalogue) -> Result<PlanSpec, PlannerError> {
    let spec = plan_request(request)?;
    if let Some(task) = spec
        .tasks
        .iter()
        .find(|t| catalogue.operation(&t.agent, &t.operation).is_none())
    {
        let served: Vec<String> = catalogue
            .agents()
            .flat_map(|agent| catalogue.operations(agent).map(move |op| format!("{agent}.{op}")))
            .collect();
        return Err(PlannerError::NotServed {
            step: request.to_owned(),
            operation: format!("{}.{}", task.agent, task.operation),
            served: served.join(", "),
        });
    }
    Ok(spec)
}

/// Turns `request` into a plan (to be validated against the catalogue like
/// any other plan).
pub fn plan_request(request: &str) -> Result<PlanSpec, PlannerError> {
    if request.len() > REQUEST_BYTES_MAX {
        return Err(PlannerError::TooLong(request.len()));
    }
    let steps = split_steps(request);
    if steps.is_empty() {
        return Err(PlannerError::Empty);
    }
    let mut tasks: Vec<TaskSpec> = Vec::new();
    let mut context = Context::default();
    for step in steps {
        let words = words(&step);
        let planned = plan_step(&words, &mut context).map_err(|e| match e {
            StepError::NotUnderstood => PlannerError::NotUnderstood { step: step.clone() },
            StepError::Missing(why) => PlannerError::MissingDetail {
                step: step.clone(),
                why,
            },
        })?;
        for (agent, operation, params) in planned {
            let id = unique_id(&tasks, &format!("{agent}_{operation}"));
            let dependencies = tasks.last().map(|t| vec![t.id.clone()]).unwrap_or_default();
            tasks.push(TaskSpec {
                id,
                agent: agent.to_owned(),
                operation: operation.to_owned(),
                params,
                dependencies,
                timeout: None,
                retries: None,
                compensation: None,
            });
        }
    }
    Ok(PlanSpec {
        name: request.trim().to_owned(),
        description: "planned by the rule-based planner".to_owned(),
        tasks,
    })
}

#[derive(Default)]
struct Context {
    table: Option<String>,
}

enum StepError {
    NotUnderstood,
    Missing(String),
}

type Planned = Vec<(&'static str, &'static str, Map<String, Value>)>;

fn plan_step(words: &[String], context: &mut Context) -> Result<Planned, StepError> {
    let has = |w: &str| words.iter().any(|x| x == w);
    let after = |w: &str| {
        words
            .iter()
            .position(|x| x == w)
            .and_then(|i| words.get(i + 1))
            .cloned()
    };
    let params = |value: Value| match value {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // "optimize slow queries in the users table"
    if has("optimize") || (has("slow") && (has("queries") || has("query"))) {
        let table = table_in(words)
            .or_else(|| context.table.clone())
            .ok_or_else(|| StepError::Missing("name the table, e.g. \"in the users table\"".into()))?;
        context.table = Some(table.clone());
        return Ok(vec![
            ("query", "analyze", params(json!({"table": table}))),
            ("query", "recommend_indexes", params(json!({"table": table}))),
        ]);
    }
    // "create an index on email [in users]"
    if has("index") && (has("create") || has("add")) {
        let column = after("on")
            .filter(|w| is_identifier(w))
            .ok_or_else(|| StepError::Missing("name the column, e.g. \"an index on email\"".into()))?;
        let table = table_in(words).or_else(|| context.table.clone()).ok_or_else(|| {
            StepError::Missing("name the table, e.g. \"an index on email in users\"".into())
        })?;
        context.table = Some(table.clone());
        return Ok(vec![(
            "query",
            "create_index",
            params(json!({"table": table, "columns": [column]})),
        )]);
    }
    // "back up the database [app]"
    if has("backup") || (has("back") && has("up")) {
        let database = after("database").filter(|w| is_identifier(w));
        let mut p = Map::new();
        if let Some(database) = database {
            p.insert("database".into(), json!(database));
        }
        return Ok(vec![("backup", "create", p)]);
    }
    // "run migration add_user_roles", "apply migration x", "migrate to x"
    if has("migration") || has("migrate") {
        let name = after("migration")
            .or_else(|| after("to"))
            .filter(|w| is_identifier(w) && !matches!(w.as_str(), "the" | "a"))
            .ok_or_else(|| {
                StepError::Missing("name the migration, e.g. \"run migration add_user_roles\"".into())
            })?;
        return Ok(vec![("schema", "apply", params(json!({"migration": name})))]);
    }
    // "check integrity of orders"
    if has("integrity") {
        let table = after("of")
            .or_else(|| after("on"))
            .filter(|w| is_identifier(w) && w != "the")
            .or_else(|| table_in(words))
            .or_else(|| context.table.clone())
            .ok_or_else(|| StepError::Missing("name the table, e.g. \"check integrity of orders\"".into()))?;
        context.table = Some(table.clone());
        return Ok(vec![("integrity", "check", params(json!({"table": table})))]);
    }
    // "rebuild the user_list projection", "rebuild projection user_list"
    if has("rebuild") && (has("projection") || has("read")) {
        let name = before("projection", words)
            .filter(|w| w != "the")
            .or_else(|| after("projection"))
            .filter(|w| is_identifier(w))
            .ok_or_else(|| {
                StepError::Missing("name the projection, e.g. \"rebuild the user_list projection\"".into())
            })?;
        return Ok(vec![(
            "eventsourcing",
            "rebuild_projection",
            params(json!({"projection": name})),
        )]);
    }
    Err(StepError::NotUnderstood)
}

/// "the users table" / "table users" / "in users".
fn table_in(words: &[String]) -> Option<String> {
    let candidate = before("table", words)
        .filter(|w| w != "the")
        .or_else(|| {
            words
                .iter()
                .position(|x| x == "table")
                .and_then(|i| words.get(i + 1).cloned())
        })
        .or_else(|| {
            words
                .iter()
                .position(|x| x == "in" || x == "of")
                .and_then(|i| words.get(i + 1))
                .filter(|w| *w != "the")
                .cloned()
        })?;
    is_identifier(&candidate).then_some(candidate)
}

fn before(word: &str, words: &[String]) -> Option<String> {
    let i = words.iter().position(|x| x == word)?;
    if i == 0 { None } else { words.get(i - 1).cloned() }
}

/// A name as PostgreSQL would take it unquoted (schema-qualified allowed).
fn is_identifier(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 63 * 2 + 1
        && word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Steps at "then", "and", ";" and ",".
fn split_steps(request: &str) -> Vec<String> {
    let lowered = request.to_lowercase();
    let mut steps = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for raw in lowered.split_whitespace() {
        let ends_step = raw.ends_with(',') || raw.ends_with(';');
        let word = raw.trim_end_matches([',', ';']);
        if matches!(word, "then" | "and") {
            if !current.is_empty() {
                steps.push(current.join(" "));
                current.clear();
            }
            continue;
        }
        if !word.is_empty() {
            current.push(word);
        }
        if ends_step && !current.is_empty() {
            steps.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        steps.push(current.join(" "));
    }
    steps
}

/// Words without punctuation around them (dots inside names stay).
fn words(step: &str) -> Vec<String> {
    step.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .to_owned()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn unique_id(tasks: &[TaskSpec], base: &str) -> String {
    if !tasks.iter().any(|t| t.id == base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}_{n}"))
        .find(|id| !tasks.iter().any(|t| t.id == *id))
        .unwrap_or_else(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(request: &str) -> Vec<(String, String, Value, Vec<String>)> {
        plan_request(request)
            .unwrap_or_else(|e| panic!("{request:?}: {e}"))
            .tasks
            .into_iter()
            .map(|t| {
                (
                    format!("{}.{}", t.agent, t.operation),
                    t.id,
                    Value::Object(t.params),
                    t.dependencies,
                )
            })
            .collect()
    }

    #[test]
    fn the_seed_request_optimizes_the_users_table_and_indexes_email() {
        let plan = steps("Optimize slow queries in the users table and create an index on email");
        let ops: Vec<&str> = plan.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            ops,
            ["query.analyze", "query.recommend_indexes", "query.create_index"]
        );
        assert_eq!(plan[0].2, json!({"table": "users"}));
        assert_eq!(plan[2].2, json!({"table": "users", "columns": ["email"]}));
        assert_eq!(plan[1].3, [plan[0].1.clone()], "steps run in the order written");
        assert_eq!(plan[2].3, [plan[1].1.clone()]);
    }

    #[test]
    fn backup_then_migration() {
        let plan = steps("back up the database then run migration add_user_roles");
        assert_eq!(plan[0].0, "backup.create");
        assert_eq!(plan[1].0, "schema.apply");
        assert_eq!(plan[1].2, json!({"migration": "add_user_roles"}));
        assert_eq!(plan[1].3, ["backup_create"]);
    }

    #[test]
    fn integrity_and_projection_requests() {
        let integrity = steps("check integrity of orders");
        assert_eq!(
            (integrity[0].0.as_str(), &integrity[0].2),
            ("integrity.check", &json!({"table": "orders"}))
        );
        let rebuild = steps("Rebuild the user_list projection.");
        assert_eq!(rebuild[0].0, "eventsourcing.rebuild_projection");
        assert_eq!(rebuild[0].2, json!({"projection": "user_list"}));
    }

    #[test]
    fn nonsense_gets_the_list_of_what_the_planner_can_do() {
        let error = plan_request("make it faster please").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("cannot plan \"make it faster please\""),
            "{message}"
        );
        for capability in CAPABILITIES {
            assert!(message.contains(capability), "{message}");
        }
        assert_eq!(plan_request("  ").unwrap_err(), PlannerError::Empty);
        let vague = plan_request("create an index").unwrap_err().to_string();
        assert!(vague.contains("name the column"), "{vague}");
        let partly = plan_request("check integrity of orders and dance").unwrap_err();
        assert_eq!(partly, PlannerError::NotUnderstood { step: "dance".into() });
    }
}
