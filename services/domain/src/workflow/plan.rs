//! Workflow plans: a DAG of tasks `{id, agent, operation, params,
//! dependencies, timeout, retries, compensation}`, validated against the
//! catalogue of what the agents can do. Validation names every problem at
//! once: duplicate or malformed ids, missing dependencies, cycles (with the
//! cycle), unknown agents or operations, parameters that do not fit the
//! operation's schema, out-of-range timeouts and retries.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const TASKS_MAX: usize = 100;
pub const RETRIES_MAX: u32 = 10;
pub const TASK_ID_BYTES_MAX: usize = 64;
pub const TIMEOUT_MS_DEFAULT: u64 = 5 * 60 * 1000;
pub const TIMEOUT_MS_MIN: u64 = 100;
pub const TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;
pub const PLAN_BYTES_MAX: usize = 256 * 1024;

// ---------------------------------------------------------------- catalogue

/// The JSON type a parameter must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    /// Any JSON value (e.g. an object or its text).
    Any,
}

impl ParamType {
    fn accepts(self, value: &Value) -> bool {
        match self {
            ParamType::Any => true,
            ParamType::String => value.is_string(),
            ParamType::Integer => value.is_i64() || value.is_u64(),
            ParamType::Number => value.is_number(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::Array => value.is_array(),
            ParamType::Object => value.is_object(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub param_type: ParamType,
    #[serde(default)]
    pub required: bool,
}

/// What an operation takes. Unknown parameters are refused: a typo must
/// not silently fall back to a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationSpec {
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
}

impl OperationSpec {
    /// What is wrong with `params` for this operation (`what`, e.g.
    /// `backup.create`): parameters missing, of the wrong JSON type, unknown.
    pub fn problems(&self, what: &str, params: &Map<String, Value>) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, param) in &self.params {
            match params.get(name) {
                None if param.required => problems.push(format!(
                    "{what} needs parameter '{name}' ({:?})",
                    param.param_type
                )),
                Some(value) if !param.param_type.accepts(value) => problems.push(format!(
                    "parameter '{name}' of {what} must be {:?}, not {value}",
                    param.param_type
                )),
                _ => {}
            }
        }
        for name in params.keys() {
            if !self.params.contains_key(name) {
                let known: Vec<&str> = self.params.keys().map(String::as_str).collect();
                problems.push(format!(
                    "{what} has no parameter '{name}' (it takes: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        problems
    }
}

/// Agents and their operations, as the agents declare them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    agents: BTreeMap<String, BTreeMap<String, OperationSpec>>,
}

impl Catalogue {
    pub fn with(mut self, agent: &str, operation: &str, spec: OperationSpec) -> Catalogue {
        self.agents
            .entry(agent.to_owned())
            .or_default()
            .insert(operation.to_owned(), spec);
        self
    }

    pub fn operation(&self, agent: &str, operation: &str) -> Option<&OperationSpec> {
        self.agents.get(agent)?.get(operation)
    }

    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }

    /// The operations `agent` declares, by name (none for an unknown agent).
    pub fn operations(&self, agent: &str) -> impl Iterator<Item = &str> {
        self.agents
            .get(agent)
            .into_iter()
            .flat_map(|ops| ops.keys().map(String::as_str))
    }

    fn operations_of(&self, agent: &str) -> Vec<&str> {
        self.agents
            .get(agent)
            .map(|ops| ops.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------- wire form

/// A plan as clients write it, and as answers show it ([`Plan::to_spec`]):
/// what is left out is left out when serialized too, so an answer reads
/// like a plan a person wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub tasks: Vec<TaskSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: String,
    pub agent: String,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// Seconds (a number) or a duration such as "500ms", "30s", "5m", "1h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationSpec>,
}

/// What undoes a task: another operation of the same agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationSpec {
    pub operation: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

/// A compensation undoes its task, so it works on what the task worked
/// on: it takes the task's parameters that its own operation declares,
/// unless it sets them itself (`rollback` after `apply` gets `database`
/// and `migration`, not `complete`).
fn inherit_params(
    mut compensation: CompensationSpec,
    task_params: &Map<String, Value>,
    spec: Option<&OperationSpec>,
) -> CompensationSpec {
    let Some(spec) = spec else {
        return compensation;
    };
    for (name, value) in task_params {
        if spec.params.contains_key(name) && !compensation.params.contains_key(name) {
            compensation.params.insert(name.clone(), value.clone());
        }
    }
    compensation
}

// ---------------------------------------------------------------- validated

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanError {
    pub problems: Vec<String>,
}

impl PlanError {
    /// A plan that does not validate is the request's fault.
    pub fn code(&self) -> crate::Code {
        crate::Code::InvalidArgument
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plan: {}", self.problems.join("; "))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub agent: String,
    pub operation: String,
    pub params: Map<String, Value>,
    /// Indices into [`Plan::tasks`]; every one is earlier in the list.
    pub dependencies: Vec<usize>,
    pub timeout_ms: u64,
    pub retries: u32,
    pub compensation: Option<CompensationSpec>,
}

/// A validated plan: tasks in a topological order (a task comes after all
/// its dependencies), ids unique, every agent and operation known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub tasks: Vec<Task>,
}

impl Plan {
    pub fn from_json(text: &str, catalogue: &Catalogue) -> Result<Plan, PlanError> {
        check_size(text)?;
        let spec: PlanSpec = serde_json::from_str(text).map_err(|e| PlanError {
            problems: vec![format!("not a plan: {e}")],
        })?;
        Plan::validate(spec, catalogue)
    }

    /// The same plan written as YAML (the seed writes its workflows so).
    pub fn from_yaml(text: &str, catalogue: &Catalogue) -> Result<Plan, PlanError> {
        check_size(text)?;
        let spec: PlanSpec = serde_norway::from_str(text).map_err(|e| PlanError {
            problems: vec![format!("not a YAML plan: {e}")],
        })?;
        Plan::validate(spec, catalogue)
    }

    pub fn validate(spec: PlanSpec, catalogue: &Catalogue) -> Result<Plan, PlanError> {
        let mut problems = Vec::new();
        if spec.tasks.is_empty() {
            problems.push("the plan has no tasks".to_owned());
        }
        if spec.tasks.len() > TASKS_MAX {
            problems.push(format!("{} tasks; at most {TASKS_MAX}", spec.tasks.len()));
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, task) in spec.tasks.iter().enumerate() {
            if !valid_id(&task.id) {
                problems.push(format!(
                    "task id '{}' is not valid: use 1 to {TASK_ID_BYTES_MAX} of a-z, A-Z, 0-9, '_' and '-'",
                    task.id
                ));
            }
            if index.insert(task.id.as_str(), i).is_some() {
                problems.push(format!("task id '{}' is used twice", task.id));
            }
        }
        let tasks: Vec<Task> = spec
            .tasks
            .iter()
            .map(|task| validate_task(task, &index, catalogue, &mut problems))
            .collect();
        if let Some(cycle) = find_cycle(&tasks) {
            let names: Vec<&str> = cycle.iter().map(|&i| tasks[i].id.as_str()).collect();
            problems.push(format!("the dependencies form a cycle: {}", names.join(" -> ")));
        }
        if !problems.is_empty() {
            return Err(PlanError { problems });
        }
        Ok(Plan {
            name: spec.name,
            tasks: topological(tasks),
        })
    }

    pub fn task(&self, id: &str) -> Option<(usize, &Task)> {
        self.tasks.iter().enumerate().find(|(_, t)| t.id == id)
    }

    /// The plan written in the input shape, so that what a dry run shows
    /// can be sent back and is this same plan again: dependencies by task
    /// id, the timeout as a duration, and every value validation filled in
    /// (default timeout, no retries, inherited compensation parameters)
    /// written out, since a person reviewing the plan should see what runs.
    pub fn to_spec(&self) -> PlanSpec {
        PlanSpec {
            name: self.name.clone(),
            description: String::new(),
            tasks: self.tasks.iter().map(|task| task.to_spec(&self.tasks)).collect(),
        }
    }
}

impl Task {
    /// `tasks` are the plan's, which the dependency indices point into.
    fn to_spec(&self, tasks: &[Task]) -> TaskSpec {
        TaskSpec {
            id: self.id.clone(),
            agent: self.agent.clone(),
            operation: self.operation.clone(),
            params: self.params.clone(),
            dependencies: self.dependencies.iter().map(|&d| tasks[d].id.clone()).collect(),
            timeout: Some(Value::String(format_timeout(self.timeout_ms))),
            retries: Some(self.retries),
            compensation: self.compensation.clone(),
        }
    }
}

/// One task of a plan checked against the catalogue and the plan's task
/// ids (`index`), its problems added to `problems`.
fn validate_task(
    task: &TaskSpec,
    index: &HashMap<&str, usize>,
    catalogue: &Catalogue,
    problems: &mut Vec<String>,
) -> Task {
    let context = format!("task '{}'", task.id);
    check_operation(
        &context,
        catalogue,
        &task.agent,
        &task.operation,
        &task.params,
        problems,
    );
    let compensation = task.compensation.clone().map(|c| {
        let spec = catalogue.operation(&task.agent, &c.operation);
        inherit_params(c, &task.params, spec)
    });
    if let Some(compensation) = &compensation {
        check_operation(
            &format!("{context} compensation"),
            catalogue,
            &task.agent,
            &compensation.operation,
            &compensation.params,
            problems,
        );
    }
    let mut dependencies = Vec::new();
    for dependency in &task.dependencies {
        match index.get(dependency.as_str()) {
            Some(_) if *dependency == task.id => {
                problems.push(format!("{context} depends on itself"));
            }
            Some(&d) if dependencies.contains(&d) => {
                problems.push(format!("{context} lists dependency '{dependency}' twice"));
            }
            Some(&d) => dependencies.push(d),
            None => problems.push(format!(
                "{context} depends on '{dependency}', which is not in the plan"
            )),
        }
    }
    let timeout_ms = match &task.timeout {
        None => TIMEOUT_MS_DEFAULT,
        Some(value) => match parse_timeout_ms(value) {
            Ok(ms) if (TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&ms) => ms,
            Ok(ms) => {
                problems.push(format!(
                    "{context}: timeout {ms} ms is outside {TIMEOUT_MS_MIN} ms..24 h"
                ));
                TIMEOUT_MS_DEFAULT
            }
            Err(why) => {
                problems.push(format!("{context}: {why}"));
                TIMEOUT_MS_DEFAULT
            }
        },
    };
    let retries = task.retries.unwrap_or(0);
    if retries > RETRIES_MAX {
        problems.push(format!("{context}: {retries} retries; at most {RETRIES_MAX}"));
    }
    Task {
        id: task.id.clone(),
        agent: task.agent.clone(),
        operation: task.operation.clone(),
        params: task.params.clone(),
        dependencies,
        timeout_ms,
        retries,
        compensation,
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= TASK_ID_BYTES_MAX
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_operation(
    context: &str,
    catalogue: &Catalogue,
    agent: &str,
    operation: &str,
    params: &Map<String, Value>,
    problems: &mut Vec<String>,
) {
    if !catalogue.agents().any(|a| a == agent) {
        let known: Vec<&str> = catalogue.agents().collect();
        problems.push(format!(
            "{context}: unknown agent '{agent}' (known: {})",
            known.join(", ")
        ));
        return;
    }
    let Some(spec) = catalogue.operation(agent, operation) else {
        problems.push(format!(
            "{context}: agent '{agent}' has no operation '{operation}' (it has: {})",
            catalogue.operations_of(agent).join(", ")
        ));
        return;
    };
    let what = format!("{agent}.{operation}");
    problems.extend(
        spec.problems(&what, params)
            .into_iter()
            .map(|problem| format!("{context}: {problem}")),
    );
}

/// A plan's text is bounded before it is parsed.
fn check_size(text: &str) -> Result<(), PlanError> {
    if text.len() > PLAN_BYTES_MAX {
        return Err(PlanError {
            problems: vec![format!(
                "the plan is {} bytes; at most {PLAN_BYTES_MAX}",
                text.len()
            )],
        });
    }
    Ok(())
}

/// Seconds as a number, or "<n>ms|s|m|h".
pub fn parse_timeout_ms(value: &Value) -> Result<u64, String> {
    if let Some(seconds) = value.as_u64() {
        return seconds
            .checked_mul(1000)
            .ok_or_else(|| format!("timeout {seconds} s is too large"));
    }
    let Some(text) = value.as_str() else {
        return Err(format!(
            "timeout {value} is neither seconds nor a duration like \"30s\""
        ));
    };
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        return Err(format!("timeout \"{text}\" needs a unit: ms, s, m or h"));
    };
    let n: u64 = number.trim().parse().map_err(|_| {
        format!(
            "timeout \"{text}\" is not a whole number of {}",
            &text[number.len()..]
        )
    })?;
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("timeout \"{text}\" is too large"))
}

/// `ms` as the duration [`parse_timeout_ms`] reads back to `ms`, in the
/// largest unit that divides it ("30m", not "1800000ms").
pub fn format_timeout(ms: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1000, "s")];
    UNITS
        .iter()
        .find(|&&(unit_ms, _)| ms != 0 && ms.is_multiple_of(unit_ms))
        .map(|&(unit_ms, unit)| format!("{}{unit}", ms / unit_ms))
        .unwrap_or_else(|| format!("{ms}ms"))
}

/// A cycle in the dependency graph, as task indices with the first
/// repeated at the end; `None` when the graph is acyclic.
fn find_cycle(tasks: &[Task]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(node: usize, tasks: &[Task], marks: &mut [Mark], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        marks[node] = Mark::OnPath;
        path.push(node);
        for &next in &tasks[node].dependencies {
            match marks[next] {
                Mark::OnPath => {
                    let start = path.iter().position(|&n| n == next).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[start..].to_vec();
                    cycle.push(next);
                    // Shown in execution order: a dependency before its dependent.
                    cycle.reverse();
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, tasks, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[node] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; tasks.len()];
    for node in 0..tasks.len() {
        if marks[node] == Mark::New
            && let Some(cycle) = visit(node, tasks, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

/// The tasks reordered so that each comes after its dependencies (stable:
/// the written order where the graph allows), with indices remapped.
fn topological(tasks: Vec<Task>) -> Vec<Task> {
    let mut placed = vec![false; tasks.len()];
    let mut order = Vec::with_capacity(tasks.len());
    while order.len() < tasks.len() {
        let before = order.len();
        for (i, task) in tasks.iter().enumerate() {
            if !placed[i] && task.dependencies.iter().all(|&d| placed[d]) {
                placed[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            break; // a cycle: refused before this is called
        }
    }
    let mut new_index = vec![0; tasks.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let mut slots: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&old| slots[old].take())
        .map(|mut task| {
            task.dependencies = task.dependencies.iter().map(|&d| new_index[d]).collect();
            task
        })
        .collect()
}

#[cfg(test)]
mod tests;
