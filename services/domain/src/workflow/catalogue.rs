//! What the agents declare: every agent's operations and the parameters
//! each takes. Plans are validated against this catalogue (so a plan for
//! an operation is accepted, or refused with the problem named, the same
//! way on every server); whether a running agent serves the operation is
//! checked when the workflow starts (the health gate).

use serde::{Deserialize, Serialize};

use super::plan::{Catalogue, OperationSpec, ParamSpec, ParamType};

/// The agents of the swarm, as named in plans and task subjects.
pub const AGENTS: [&str; 8] = [
    "backup",
    "cache",
    "eventsourcing",
    "integrity",
    "monitoring",
    "query",
    "schema",
    "sync",
];

/// The operation every agent serves: connectivity and latency to the
/// agent's dependencies (and to a target database when one is named).
pub const PROBE: &str = "probe";

use ParamType::{Array, Boolean, Integer, Object, String as Text};

/// `(name, type, required)` of each parameter.
type Params = &'static [(&'static str, ParamType, bool)];

const TARGET: (&str, ParamType, bool) = ("database", Text, false);

/// Each agent's operations besides `probe`.
const OPERATIONS: &[(&str, &str, Params)] = &[
    (
        "backup",
        "create",
        &[
            TARGET,
            ("kind", Text, false),
            ("tables", Array, false),
            ("checksum_tables", Array, false),
        ],
    ),
    ("backup", "delete", &[TARGET, ("backup_id", Text, true)]),
    ("backup", "verify", &[TARGET, ("backup_id", Text, false)]),
    (
        "backup",
        "restore",
        &[TARGET, ("backup_id", Text, false), ("into_database", Text, false)],
    ),
    (
        "backup",
        "restore_pitr",
        &[
            TARGET,
            ("target_time", Text, true),
            ("backup_id", Text, false),
            ("data_directory", Text, false),
            ("port", Integer, false),
        ],
    ),
    ("backup", "test_restore", &[TARGET, ("backup_id", Text, false)]),
    ("backup", "list", &[TARGET]),
    (
        "backup",
        "apply_retention",
        &[
            TARGET,
            ("keep_full", Integer, false),
            ("window_days", Integer, false),
        ],
    ),
    (
        "cache",
        "invalidate",
        &[("tags", Array, false), ("projection", Text, false)],
    ),
    ("cache", "warm", &[("projection", Text, false)]),
    ("cache", "stats", &[]),
    (
        "eventsourcing",
        "rebuild_projection",
        &[("projection", Text, true)],
    ),
    ("eventsourcing", "replay", &[("projection", Text, true)]),
    ("eventsourcing", "snapshot", &[("stream", Text, true)]),
    (
        "integrity",
        "check",
        &[TARGET, ("table", Text, false), ("checks", Array, false)],
    ),
    (
        "integrity",
        "repair",
        &[TARGET, ("table", Text, true), ("dry_run", Boolean, false)],
    ),
    ("monitoring", "collect", &[TARGET]),
    ("monitoring", "detect_anomalies", &[TARGET]),
    ("query", "analyze", &[TARGET, ("table", Text, false)]),
    ("query", "recommend_indexes", &[TARGET, ("table", Text, false)]),
    (
        "query",
        "create_index",
        &[
            TARGET,
            ("table", Text, true),
            ("columns", Array, true),
            ("name", Text, false),
            ("measure_ms", Integer, false),
        ],
    ),
    (
        "query",
        "explain",
        &[TARGET, ("sql", Text, true), ("analyze", Boolean, false)],
    ),
    ("query", "detect_regressions", &[TARGET]),
    ("query", "unused_indexes", &[TARGET]),
    (
        "schema",
        "plan",
        &[TARGET, ("migration", Text, false), ("definition", Object, false)],
    ),
    (
        "schema",
        "lint",
        &[
            TARGET,
            ("migration", Text, false),
            ("definition", Object, false),
            ("sql", Text, false),
        ],
    ),
    (
        "schema",
        "apply",
        &[
            TARGET,
            ("migration", Text, false),
            ("definition", Object, false),
            ("complete", Boolean, false),
        ],
    ),
    ("schema", "complete", &[TARGET, ("migration", Text, false)]),
    ("schema", "rollback", &[TARGET, ("migration", Text, false)]),
    ("schema", "status", &[TARGET]),
    ("schema", "dependencies", &[TARGET, ("object", Text, true)]),
    (
        "sync",
        "compare",
        &[
            ("source", Text, true),
            ("target", Text, true),
            ("table", Text, true),
        ],
    ),
    (
        "sync",
        "sync",
        &[
            ("source", Text, true),
            ("target", Text, true),
            ("table", Text, true),
            ("policy", Text, false),
        ],
    ),
];

/// The parameters of `probe`. Besides the target, a probe can be told to
/// simulate work and failures: this is how drills (and the tests) rehearse
/// slow, flaky and failing tasks through the real runtime.
const PROBE_PARAMS: Params = &[TARGET, ("simulate", Object, false)];

fn spec(params: Params) -> OperationSpec {
    let mut spec = OperationSpec::default();
    for &(name, param_type, required) in params {
        spec.params
            .insert(name.to_owned(), ParamSpec { param_type, required });
    }
    spec
}

/// The catalogue every server validates plans against.
pub fn declared() -> Catalogue {
    let with_probes = AGENTS.iter().fold(Catalogue::default(), |c, agent| {
        c.with(agent, PROBE, spec(PROBE_PARAMS))
    });
    OPERATIONS
        .iter()
        .fold(with_probes, |c, (agent, operation, params)| {
            c.with(agent, operation, spec(params))
        })
}

/// What `probe`'s `simulate` parameter asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    /// Work for this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Fail attempts 1..=n, then succeed.
    #[serde(default)]
    pub fail_attempts: u32,
    /// Fail every attempt.
    #[serde(default)]
    pub fail: bool,
}

/// Longest simulated work: a drill must not hold an agent slot for hours.
pub const SIMULATED_DELAY_MS_MAX: u64 = 10 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Plan;
    use serde_json::json;

    #[test]
    fn the_seed_migration_workflow_is_accepted_as_written() {
        let plan = json!({
            "name": "Database Migration",
            "tasks": [
                {"id": "pre_migration_backup", "agent": "backup", "operation": "create",
                 "params": {"database": "app"}, "timeout": "30m"},
                {"id": "run_migration", "agent": "schema", "operation": "apply",
                 "params": {"migration": "add_user_roles"}, "dependencies": ["pre_migration_backup"],
                 "compensation": {"operation": "rollback"}},
                {"id": "validate_data", "agent": "integrity", "operation": "check", "dependencies": ["run_migration"]},
                {"id": "invalidate_cache", "agent": "cache", "operation": "invalidate", "dependencies": ["run_migration"]},
                {"id": "rebuild_projections", "agent": "eventsourcing", "operation": "rebuild_projection",
                 "params": {"projection": "user_list"}, "dependencies": ["validate_data", "invalidate_cache"]}
            ]
        });
        let plan = Plan::from_json(&plan.to_string(), &declared()).unwrap();
        // The rollback works on the migration its task applied
        let (_, run) = plan.task("run_migration").unwrap();
        let rollback = run.compensation.as_ref().unwrap();
        assert_eq!(rollback.params.get("migration"), Some(&json!("add_user_roles")));
    }

    /// A compensation takes only the task's parameters its own operation
    /// declares, and keeps those it sets itself.
    #[test]
    fn compensations_inherit_the_parameters_they_declare() {
        let plan = json!({"name": "m", "tasks": [
            {"id": "apply", "agent": "schema", "operation": "apply",
             "params": {"database": "app", "migration": "m1", "complete": true},
             "compensation": {"operation": "rollback", "params": {"database": "other"}}}]});
        let plan = Plan::from_json(&plan.to_string(), &declared()).unwrap();
        let rollback = plan.tasks[0].compensation.as_ref().unwrap();
        assert_eq!(rollback.params.get("database"), Some(&json!("other")));
        assert_eq!(rollback.params.get("migration"), Some(&json!("m1")));
        assert!(!rollback.params.contains_key("complete"));
    }

    /// The plan shown in the README, as written there.
    #[test]
    fn the_readme_plan_is_valid() {
        let readme = include_str!("../../../../README.md");
        let yaml = readme
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a yaml block in the README");
        let plan = Plan::from_yaml(yaml, &declared()).unwrap();
        assert_eq!(plan.tasks.len(), 5);
        assert_eq!(plan.tasks[4].dependencies, [2, 3]);
    }

    #[test]
    fn every_planner_capability_plans_against_the_declared_catalogue() {
        for request in [
            "Optimize slow queries in the users table and create an index on email",
            "back up the database then run migration add_user_roles",
            "check integrity of orders",
            "rebuild the user_list projection",
        ] {
            let spec = crate::workflow::plan_request(request).unwrap();
            Plan::validate(spec, &declared()).unwrap_or_else(|e| panic!("{request}: {e}"));
        }
    }

    #[test]
    fn every_agent_has_a_probe() {
        let catalogue = declared();
        for agent in AGENTS {
            assert!(catalogue.operation(agent, PROBE).is_some(), "{agent}");
        }
    }
}
