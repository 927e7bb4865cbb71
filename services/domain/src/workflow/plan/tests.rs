//! Given a catalogue, when a plan is validated, then ...

use super::*;
use serde_json::json;

fn param(param_type: ParamType, required: bool) -> ParamSpec {
    ParamSpec { param_type, required }
}

fn catalogue() -> Catalogue {
    let mut create_backup = OperationSpec::default();
    create_backup
        .params
        .insert("database".into(), param(ParamType::String, true));
    create_backup
        .params
        .insert("kind".into(), param(ParamType::String, false));
    let mut apply = OperationSpec::default();
    apply
        .params
        .insert("migration".into(), param(ParamType::String, true));
    let mut rebuild = OperationSpec::default();
    rebuild
        .params
        .insert("projection".into(), param(ParamType::String, true));
    Catalogue::default()
        .with("backup", "create", create_backup)
        .with("backup", "delete", OperationSpec::default())
        .with("schema", "apply", apply)
        .with("schema", "rollback", OperationSpec::default())
        .with("integrity", "check", OperationSpec::default())
        .with("cache", "invalidate", OperationSpec::default())
        .with("eventsourcing", "rebuild_projection", rebuild)
}

/// What the planner's requests and the compensation tests need, each with
/// the parameters its operation takes (derived from a parameter type, as
/// the agents' are).
fn wide_catalogue() -> Catalogue {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Apply {
        database: Option<String>,
        migration: Option<String>,
        #[serde(default)]
        complete: bool,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Named {
        database: Option<String>,
        migration: Option<String>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Table {
        database: Option<String>,
        table: Option<String>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct CreateIndex {
        database: Option<String>,
        table: String,
        columns: Vec<String>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Projection {
        projection: String,
    }
    use crate::workflow::derive::operation_spec;
    Catalogue::default()
        .with("backup", "create", operation_spec::<Table>())
        .with("schema", "apply", operation_spec::<Apply>())
        .with("schema", "rollback", operation_spec::<Named>())
        .with("query", "analyze", operation_spec::<Table>())
        .with("query", "recommend_indexes", operation_spec::<Table>())
        .with("query", "create_index", operation_spec::<CreateIndex>())
        .with("integrity", "check", operation_spec::<Table>())
        .with(
            "eventsourcing",
            "rebuild_projection",
            operation_spec::<Projection>(),
        )
}

/// The seed's "Database Migration" shape: backup -> migration -> (validate,
/// invalidate cache) -> rebuild projections.
fn migration_plan() -> Value {
    json!({
        "name": "Database Migration",
        "tasks": [
            {"id": "pre_migration_backup", "agent": "backup", "operation": "create",
             "params": {"database": "app"}, "timeout": "30m", "compensation": {"operation": "delete"}},
            {"id": "run_migration", "agent": "schema", "operation": "apply",
             "params": {"migration": "add_user_roles"}, "dependencies": ["pre_migration_backup"],
             "retries": 2, "compensation": {"operation": "rollback"}},
            {"id": "validate_data", "agent": "integrity", "operation": "check", "dependencies": ["run_migration"]},
            {"id": "invalidate_cache", "agent": "cache", "operation": "invalidate", "dependencies": ["run_migration"]},
            {"id": "rebuild_projections", "agent": "eventsourcing", "operation": "rebuild_projection",
             "params": {"projection": "user_list"}, "dependencies": ["validate_data", "invalidate_cache"]}
        ]
    })
}

fn problems(plan: Value) -> String {
    Plan::from_json(&plan.to_string(), &catalogue())
        .expect_err("refused")
        .problems
        .join("\n")
}

#[test]
fn the_migration_plan_is_accepted_in_dependency_order() {
    let plan = Plan::from_json(&migration_plan().to_string(), &catalogue()).unwrap();
    let ids: Vec<&str> = plan.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "pre_migration_backup",
            "run_migration",
            "validate_data",
            "invalidate_cache",
            "rebuild_projections"
        ]
    );
    assert_eq!(plan.tasks[0].timeout_ms, 30 * 60 * 1000);
    assert_eq!(plan.tasks[1].retries, 2);
    assert_eq!(plan.tasks[4].dependencies, [2, 3]);
    assert_eq!(plan.tasks[2].timeout_ms, TIMEOUT_MS_DEFAULT);
}

#[test]
fn tasks_written_out_of_order_are_sorted_after_their_dependencies() {
    let plan = Plan::from_json(
        &json!({"tasks": [
            {"id": "b", "agent": "cache", "operation": "invalidate", "dependencies": ["a"]},
            {"id": "a", "agent": "integrity", "operation": "check"}
        ]})
        .to_string(),
        &catalogue(),
    )
    .unwrap();
    assert_eq!(plan.tasks[0].id, "a");
    assert_eq!(plan.tasks[1].dependencies, [0]);
}

#[test]
fn a_cycle_is_named() {
    let all = problems(json!({"tasks": [
        {"id": "a", "agent": "integrity", "operation": "check", "dependencies": ["c"]},
        {"id": "b", "agent": "integrity", "operation": "check", "dependencies": ["a"]},
        {"id": "c", "agent": "integrity", "operation": "check", "dependencies": ["b"]}
    ]}));
    assert!(all.contains("the dependencies form a cycle: "), "{all}");
    for id in ["a", "b", "c"] {
        assert!(all.contains(id), "{all}");
    }
}

#[test]
fn every_kind_of_problem_is_named_at_once() {
    let all = problems(json!({"tasks": [
        {"id": "x", "agent": "nobody", "operation": "run"},
        {"id": "y", "agent": "backup", "operation": "explode"},
        {"id": "z", "agent": "backup", "operation": "create", "params": {"database": 5, "compress": true},
         "dependencies": ["missing", "z"], "timeout": "soon", "retries": 99},
        {"id": "x", "agent": "schema", "operation": "apply"},
        {"id": "bad id!", "agent": "cache", "operation": "invalidate", "timeout": 0}
    ]}));
    for expected in [
        "task 'x': unknown agent 'nobody' (known: backup, cache, eventsourcing, integrity, schema)",
        "task 'y': agent 'backup' has no operation 'explode' (it has: create, delete)",
        "parameter 'database' of backup.create must be String, not 5",
        "backup.create has no parameter 'compress' (it takes: database, kind)",
        "task 'z' depends on 'missing', which is not in the plan",
        "task 'z' depends on itself",
        "timeout \"soon\" needs a unit",
        "99 retries; at most 10",
        "task id 'x' is used twice",
        "schema.apply needs parameter 'migration'",
        "task id 'bad id!' is not valid",
        "timeout 0 ms is outside",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn a_compensation_must_be_an_operation_of_the_same_agent() {
    let all = problems(json!({"tasks": [
        {"id": "a", "agent": "cache", "operation": "invalidate", "compensation": {"operation": "restore"}}
    ]}));
    assert!(
        all.contains("task 'a' compensation: agent 'cache' has no operation 'restore'"),
        "{all}"
    );
}

#[test]
fn empty_and_unreadable_plans_are_refused() {
    assert!(problems(json!({"tasks": []})).contains("the plan has no tasks"));
    assert!(problems(json!({"tasks": [], "steps": []})).contains("unknown field `steps`"));
    let not_json = Plan::from_json("{", &catalogue()).unwrap_err();
    assert!(not_json.problems[0].starts_with("not a plan:"));
}

#[test]
fn timeouts_read_numbers_as_seconds_and_strings_with_units() {
    assert_eq!(parse_timeout_ms(&json!(30)), Ok(30_000));
    assert_eq!(parse_timeout_ms(&json!("250ms")), Ok(250));
    assert_eq!(parse_timeout_ms(&json!("5m")), Ok(300_000));
    assert_eq!(parse_timeout_ms(&json!("2h")), Ok(7_200_000));
    assert!(parse_timeout_ms(&json!("1.5s")).is_err());
    assert!(parse_timeout_ms(&json!(true)).is_err());
}

#[test]
fn the_migration_plan_reads_the_same_in_yaml() {
    let yaml = r#"
name: Database Migration
tasks:
  - id: pre_migration_backup
    agent: backup
    operation: create
    params: {database: app}
    timeout: 30m
    compensation: {operation: delete}
  - id: run_migration
    agent: schema
    operation: apply
    params:
      migration: add_user_roles
    dependencies: [pre_migration_backup]
    retries: 2
    compensation:
      operation: rollback
  - id: validate_data
    agent: integrity
    operation: check
    dependencies: [run_migration]
  - id: invalidate_cache
    agent: cache
    operation: invalidate
    dependencies: [run_migration]
  - id: rebuild_projections
    agent: eventsourcing
    operation: rebuild_projection
    params: {projection: user_list}
    dependencies: [validate_data, invalidate_cache]
"#;
    let from_yaml = Plan::from_yaml(yaml, &catalogue()).unwrap();
    let from_json = Plan::from_json(&migration_plan().to_string(), &catalogue()).unwrap();
    assert_eq!(from_yaml, from_json);
}

#[test]
fn bad_yaml_is_refused_with_its_line() {
    let problems = Plan::from_yaml("name: x\ntasks:\n  - id: [unclosed\n", &catalogue())
        .unwrap_err()
        .problems;
    assert!(problems[0].starts_with("not a YAML plan"), "{problems:?}");
    assert!(problems[0].contains("line"), "{problems:?}");
    let unknown = Plan::from_yaml("tasks: []\nsteps: 3\n", &catalogue())
        .unwrap_err()
        .problems;
    assert!(unknown[0].contains("steps"), "{unknown:?}");
}

/// What a dry run answers: the plan in the input shape, as JSON.
fn written(plan: &Plan) -> String {
    serde_json::to_string(&plan.to_spec()).unwrap()
}

/// Given a validated plan, when it is written out and read back, then it
/// is the same plan, and writing it again gives the same text.
fn assert_round_trip(plan: &Plan, catalogue: &Catalogue) {
    let text = written(plan);
    let read_back = Plan::from_json(&text, catalogue).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(&read_back, plan, "{text}");
    assert_eq!(written(&read_back), text);
    // JSON is YAML too: the answer is a valid plan_yaml as well
    assert_eq!(&Plan::from_yaml(&text, catalogue).unwrap(), plan, "{text}");
}

#[test]
fn a_plan_written_out_is_in_the_input_shape_and_reads_back_as_the_same_plan() {
    let plan = Plan::from_json(&migration_plan().to_string(), &catalogue()).unwrap();
    assert_round_trip(&plan, &catalogue());
    let shown: Value = serde_json::from_str(&written(&plan)).unwrap();
    let tasks = &shown["tasks"];
    assert_eq!(shown["name"], "Database Migration");
    assert_eq!(
        tasks[4]["dependencies"],
        json!(["validate_data", "invalidate_cache"])
    );
    assert_eq!(tasks[0]["timeout"], "30m");
    assert_eq!(tasks[2]["timeout"], "5m", "the default is written out");
    assert_eq!(tasks[1]["retries"], 2);
    assert_eq!(tasks[2]["retries"], 0);
    assert_eq!(tasks[1]["compensation"], json!({"operation": "rollback"}));
    for task in tasks.as_array().unwrap() {
        assert!(task.get("timeout_ms").is_none(), "{task}");
    }
    assert!(
        tasks[0].get("dependencies").is_none(),
        "no dependencies, none written"
    );
}

#[test]
fn a_yaml_plan_and_one_written_out_of_order_read_back_the_same() {
    let yaml = "
name: nightly
tasks:
  - {id: last, agent: cache, operation: invalidate, dependencies: [first, middle], timeout: 1500ms}
  - {id: middle, agent: integrity, operation: check, dependencies: [first], timeout: 90, retries: 3}
  - {id: first, agent: backup, operation: create, params: {database: app, kind: logical},
     timeout: 2h, compensation: {operation: delete}}
";
    let plan = Plan::from_yaml(yaml, &catalogue()).unwrap();
    assert_round_trip(&plan, &catalogue());
    let shown: Value = serde_json::from_str(&written(&plan)).unwrap();
    let ids: Vec<&str> = shown["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["first", "middle", "last"], "in dependency order");
    assert_eq!(shown["tasks"][1]["timeout"], "90s", "seconds as a duration");
    assert_eq!(shown["tasks"][2]["timeout"], "1500ms");
    assert_eq!(shown["tasks"][0]["timeout"], "2h");
}

#[test]
fn inherited_compensation_parameters_are_written_out_and_read_back_the_same() {
    let catalogue = wide_catalogue();
    let plan = Plan::from_json(
        &json!({"name": "m", "tasks": [
            {"id": "apply", "agent": "schema", "operation": "apply",
             "params": {"database": "app", "migration": "m1", "complete": true},
             "compensation": {"operation": "rollback", "params": {"database": "other"}}}]})
        .to_string(),
        &catalogue,
    )
    .unwrap();
    assert_round_trip(&plan, &catalogue);
    let shown: Value = serde_json::from_str(&written(&plan)).unwrap();
    assert_eq!(
        shown["tasks"][0]["compensation"],
        json!({"operation": "rollback", "params": {"database": "other", "migration": "m1"}})
    );
}

#[test]
fn what_the_rule_based_planner_makes_reads_back_as_the_same_plan() {
    let catalogue = wide_catalogue();
    for request in [
        "Optimize slow queries in the users table and create an index on email",
        "back up the database then run migration add_user_roles",
        "check integrity of orders",
        "rebuild the user_list projection",
    ] {
        let spec = crate::workflow::plan_request(request).unwrap();
        let plan = Plan::validate(spec, &catalogue).unwrap();
        assert_round_trip(&plan, &catalogue);
    }
}

#[test]
fn the_stored_shape_is_not_a_plan() {
    // What dry runs answered before: indices and milliseconds
    let stored =
        serde_json::to_string(&Plan::from_json(&migration_plan().to_string(), &catalogue()).unwrap())
            .unwrap();
    assert!(problems(serde_json::from_str(&stored).unwrap()).contains("unknown field `timeout_ms`"));
    // An answer edited badly is refused like any plan
    let plan = Plan::from_json(&migration_plan().to_string(), &catalogue()).unwrap();
    let mut shown: Value = serde_json::from_str(&written(&plan)).unwrap();
    shown["tasks"][1]["dependencies"] = json!([0]);
    assert!(problems(shown.clone()).contains("expected a string"), "{shown}");
    shown["tasks"][1]["dependencies"] = json!(["rebuild_projections"]);
    assert!(problems(shown.clone()).contains("cycle"), "{shown}");
    shown["tasks"][1]["timeout"] = json!("half an hour");
    assert!(problems(shown).contains("needs a unit"));
}

#[test]
fn timeouts_are_written_in_the_largest_exact_unit_and_read_back_the_same() {
    for (ms, text) in [
        (100, "100ms"),
        (1500, "1500ms"),
        (1000, "1s"),
        (90_000, "90s"),
        (300_000, "5m"),
        (5_400_000, "90m"),
        (7_200_000, "2h"),
        (TIMEOUT_MS_MAX, "24h"),
    ] {
        assert_eq!(format_timeout(ms), text);
        assert_eq!(parse_timeout_ms(&json!(text)), Ok(ms));
    }
    for ms in (TIMEOUT_MS_MIN..TIMEOUT_MS_MAX).step_by(99_991) {
        assert_eq!(parse_timeout_ms(&json!(format_timeout(ms))), Ok(ms));
    }
}
