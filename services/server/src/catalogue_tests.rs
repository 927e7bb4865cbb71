//! Given the catalogue a server derives from its agents' operations, when
//! plans are validated against it, then only what is served is accepted.

use domain::workflow::catalogue::{AGENTS, PROBE};
use domain::workflow::{Catalogue, Plan, plan_request, plan_served};
use serde_json::json;

use crate::{Config, Settings};

fn catalogue() -> Catalogue {
    let config = Config::from_settings(Settings {
        database_url: Some("postgres://dbswarm@127.0.0.1:1/never_connected".into()),
        ..Settings::default()
    })
    .expect("a config");
    crate::catalogue(&config).expect("the catalogue")
}

#[tokio::test]
async fn every_operation_in_the_catalogue_is_served_and_every_agent_has_a_probe() {
    // Given: the agents a server runs, and the catalogue derived from them
    let config = Config::from_settings(Settings {
        database_url: Some("postgres://dbswarm@127.0.0.1:1/never_connected".into()),
        ..Settings::default()
    })
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy(&config.database_url)
        .unwrap();
    let (appender, _committers) = event_store::Appender::start(pool.clone(), config.append);
    let reader = event_store::Reader::new(pool, config.read);
    let swarm = crate::agent_swarm(&config, &appender, &reader);
    let catalogue = agents::catalogue(&swarm);
    // Then: each operation it lists is one an agent implements, and back
    let mut listed = 0;
    for agent in catalogue.agents() {
        let spec = swarm.iter().find(|s| s.name == agent).expect(agent);
        for operation in catalogue.operations(agent) {
            assert!(spec.operations.contains_key(operation), "{agent}.{operation}");
            listed += 1;
        }
    }
    assert_eq!(listed, swarm.iter().map(|s| s.operations.len()).sum::<usize>());
    for agent in AGENTS {
        assert!(catalogue.operation(agent, PROBE).is_some(), "{agent}");
    }
    // The 22 operations of the schema, query and backup agents, and probes.
    assert_eq!(listed, 21 + AGENTS.len());
}

#[tokio::test]
async fn operation_parameters_are_derived_from_their_types() {
    let catalogue = catalogue();
    let create_index = catalogue.operation("query", "create_index").unwrap();
    let required: Vec<&str> = create_index
        .params
        .iter()
        .filter(|(_, p)| p.required)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(required, ["columns", "table"]);
    let delete = catalogue.operation("backup", "delete").unwrap();
    assert!(delete.params["backup_id"].required);
    assert!(!delete.params["database"].required);
    let probe = catalogue.operation("backup", PROBE).unwrap();
    assert_eq!(probe.params.keys().collect::<Vec<_>>(), ["database", "simulate"]);
}

#[tokio::test]
async fn the_seed_migration_workflow_naming_unserved_operations_is_refused_with_what_exists() {
    // Given: the seed's migration plan, which names integrity, cache and
    // eventsourcing operations no agent implements yet
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
    // When: it is validated
    let refused = Plan::from_json(&plan.to_string(), &catalogue()).unwrap_err();
    // Then: each unserved operation is named with what its agent has
    assert_eq!(
        refused.problems,
        [
            "task 'validate_data': agent 'integrity' has no operation 'check' (it has: probe)",
            "task 'invalidate_cache': agent 'cache' has no operation 'invalidate' (it has: probe)",
            "task 'rebuild_projections': agent 'eventsourcing' has no operation 'rebuild_projection' (it has: probe)",
        ]
    );
}

/// A compensation takes only the task's parameters its own operation
/// declares, and keeps those it sets itself.
#[tokio::test]
async fn compensations_inherit_the_parameters_they_declare() {
    let plan = json!({"name": "m", "tasks": [
        {"id": "apply", "agent": "schema", "operation": "apply",
         "params": {"database": "app", "migration": "m1", "complete": true},
         "compensation": {"operation": "rollback", "params": {"database": "other"}}}]});
    let plan = Plan::from_json(&plan.to_string(), &catalogue()).unwrap();
    let rollback = plan.tasks[0].compensation.as_ref().unwrap();
    assert_eq!(rollback.params.get("database"), Some(&json!("other")));
    assert_eq!(rollback.params.get("migration"), Some(&json!("m1")));
    assert!(!rollback.params.contains_key("complete"));
}

/// The plan shown in the README, as written there.
#[tokio::test]
async fn the_readme_plan_is_valid() {
    let readme = include_str!("../../../README.md");
    let yaml = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block in the README");
    let plan = Plan::from_yaml(yaml, &catalogue()).unwrap();
    assert_eq!(plan.tasks.len(), 5);
    assert_eq!(plan.tasks[4].dependencies, [2, 3]);
}

#[tokio::test]
async fn the_planner_plans_what_is_served_and_refuses_the_rest_naming_what_exists() {
    let catalogue = catalogue();
    for request in [
        "Optimize slow queries in the users table and create an index on email",
        "back up the database then run migration add_user_roles",
    ] {
        let spec = plan_served(request, &catalogue).unwrap_or_else(|e| panic!("{request}: {e}"));
        Plan::validate(spec, &catalogue).unwrap_or_else(|e| panic!("{request}: {e}"));
    }
    for (request, operation) in [
        ("check integrity of orders", "integrity.check"),
        (
            "rebuild the user_list projection",
            "eventsourcing.rebuild_projection",
        ),
    ] {
        // The rules understand it...
        assert!(plan_request(request).is_ok());
        // ...but nothing serves it.
        let refused = plan_served(request, &catalogue).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("needs {operation}, which no agent serves")),
            "{refused}"
        );
        assert!(refused.contains("schema.apply"), "{refused}");
    }
}
