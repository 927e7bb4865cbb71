//! Given a definition, when events are planned and folded, then ...

use super::*;
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

fn user_list() -> Definition {
    Definition::from_json(
        &json!({
            "name": "user_list",
            "key": {"column": "user_id", "type": "uuid", "path": "$.user_id"},
            "columns": {"email": "text", "logins": "integer", "created_at": "timestamptz"},
            "indexes": ["email"],
            "handlers": {
                "UserCreated": {"op": "upsert", "set": {"email": "$.email"},
                                "set_on_insert": {"created_at": "$event.created_at"}},
                "UserLoggedIn": {"op": "increment", "increment": {"logins": {"const": 1}}},
                "UserDeleted": {"op": "delete"}
            }
        })
        .to_string(),
    )
    .expect("valid definition")
}

fn event(event_type: &str, data: Value) -> RecordedEvent {
    RecordedEvent {
        global_position: 1,
        transaction_id: 1,
        event_id: Uuid::new_v4(),
        stream_id: "user-1".into(),
        aggregate_type: "user".into(),
        aggregate_id: None,
        event_version: 1,
        event_type: event_type.into(),
        schema_version: 1,
        data: EventData::Json(data.to_string()),
        metadata: "{}".into(),
        correlation_id: None,
        causation_id: None,
        created_at: Utc::now(),
    }
}

fn problems_of(definition: Value) -> Vec<String> {
    Definition::from_json(&definition.to_string())
        .expect_err("definition is refused")
        .problems
}

#[test]
fn a_valid_definition_reads_only_its_event_types() {
    let definition = user_list();
    assert_eq!(
        definition.event_types(),
        ["UserCreated", "UserDeleted", "UserLoggedIn"]
    );
    assert_eq!(definition.indexed_columns().count(), 1);
}

#[test]
fn bad_names_paths_columns_and_types_are_all_named() {
    let problems = problems_of(json!({
        "name": "Users; DROP TABLE x",
        "key": {"column": "id", "type": "jsonb"},
        "columns": {"email": "text", "pg_x": "text"},
        "handlers": {
            "A": {"op": "upsert", "set": {"missing": "$.x", "email": "email"}},
            "B": {"op": "increment", "increment": {"email": {"const": 1}}},
            "C": {"op": "upsert", "set": {"email": "$event.nope"}},
            "D": {"op": "upsert", "set": {"email": {"const": 1}}, "increment": {"email": {"const": 1}}}
        }
    }));
    let all = problems.join("\n");
    for expected in [
        "projection name 'Users; DROP TABLE x' is not a valid name",
        "key column 'id' has type jsonb",
        "column 'pg_x' is not a valid name",
        "handler 'A': set 'missing': no such column",
        "path 'email' must start with '$.'",
        "handler 'B': increment 'email': column is text",
        "unknown envelope field 'nope'",
        "handler 'A': no key path",
    ] {
        assert!(all.contains(expected), "missing problem {expected:?} in:\n{all}");
    }
}

#[test]
fn type_clashes_of_envelope_fields_and_constants_are_refused() {
    let problems = problems_of(json!({
        "name": "x",
        "key": {"column": "id", "type": "uuid", "path": "$event.stream_id"},
        "columns": {"n": "integer"},
        "handlers": {"A": {"op": "upsert", "set": {"n": "$event.created_at"}},
                     "B": {"op": "upsert", "set": {"n": {"const": "ten"}}}}
    }));
    let all = problems.join("\n");
    assert!(
        all.contains("key path $event.stream_id gives text but the key column is uuid"),
        "{all}"
    );
    assert!(
        all.contains("$event.created_at gives timestamptz but the column is integer"),
        "{all}"
    );
    assert!(
        all.contains("constant \"ten\": \"ten\" is not an integer"),
        "{all}"
    );
}

#[test]
fn unknown_fields_in_the_definition_are_refused() {
    let problems = problems_of(json!({"name": "x", "key": {"column": "id", "type": "text"},
                                      "handlers": {}, "colums": {}}));
    assert!(problems[0].contains("unknown field `colums`"), "{problems:?}");
}

#[test]
fn an_event_without_its_key_cannot_be_applied() {
    let error = user_list()
        .plan(&event("UserCreated", json!({"email": "a@b"})))
        .expect_err("no key");
    assert_eq!(error, "the key path $.user_id is missing or null");
}

#[test]
fn a_value_of_the_wrong_type_names_column_and_path() {
    let definition = Definition::from_json(
        &json!({"name": "ages", "key": {"column": "id", "type": "text", "path": "$.id"},
                "columns": {"age": "integer"},
                "handlers": {"Aged": {"op": "upsert", "set": {"age": "$.age"}}}})
        .to_string(),
    )
    .unwrap();
    let error = definition
        .plan(&event("Aged", json!({"id": "a", "age": "old"})))
        .expect_err("not an integer");
    assert_eq!(error, "column 'age' from $.age: \"old\" is not an integer");
}

#[test]
fn absent_paths_leave_columns_and_unhandled_types_do_nothing() {
    let definition = user_list();
    let id = Uuid::new_v4();
    let (key, op) = definition
        .plan(&event("UserCreated", json!({"user_id": id})))
        .unwrap()
        .unwrap();
    assert_eq!(key, id.to_string());
    let RowOp::Patch(ops) = op else {
        panic!("patch expected")
    };
    // Columns in name order: created_at, email, logins.
    assert!(matches!(ops[0], Some(ColumnOp::InsertOnly(Some(_)))));
    assert_eq!(ops[1], None);
    assert_eq!(definition.plan(&event("Other", json!({}))).unwrap(), None);
}

#[test]
fn folding_sums_integer_increments_and_lets_a_delete_win() {
    let definition = user_list();
    let id = Uuid::new_v4();
    let login = event("UserLoggedIn", json!({"user_id": id}));
    let mut run = Run::default();
    for _ in 0..3 {
        let (key, op) = definition.plan(&login).unwrap().unwrap();
        assert!(run.try_push(key, op));
    }
    let RowOp::Patch(ops) = &run.ops()[0].1 else {
        panic!("patch expected")
    };
    assert_eq!(
        ops[2],
        Some(ColumnOp::Add {
            delta: "3".into(),
            int: Some(3)
        })
    );
    let (key, delete) = definition
        .plan(&event("UserDeleted", json!({"user_id": id})))
        .unwrap()
        .unwrap();
    assert!(run.try_push(key.clone(), delete));
    assert_eq!(run.ops()[0].1, RowOp::Delete);
    // Re-creating after a delete must wait for the next run.
    let (_, create) = definition
        .plan(&event("UserCreated", json!({"user_id": id, "email": "x"})))
        .unwrap()
        .unwrap();
    assert!(!run.try_push(key, create));
    assert_eq!(run.events(), 4);
}

#[test]
fn values_convert_to_the_column_type_or_say_why_not() {
    assert_eq!(convert(ColumnType::Integer, &json!(5)).unwrap(), Some("5".into()));
    assert_eq!(
        convert(ColumnType::Integer, &json!("7")).unwrap(),
        Some("7".into())
    );
    assert!(
        convert(ColumnType::Integer, &json!(1.5))
            .unwrap_err()
            .contains("not a 64-bit integer")
    );
    assert!(
        convert(ColumnType::Uuid, &json!("nope"))
            .unwrap_err()
            .contains("not a UUID")
    );
    assert!(
        convert(ColumnType::Boolean, &json!(1))
            .unwrap_err()
            .contains("a number cannot be stored as boolean")
    );
    assert_eq!(
        convert(ColumnType::Jsonb, &json!({"a": 1})).unwrap(),
        Some("{\"a\":1}".into())
    );
    assert_eq!(convert(ColumnType::Text, &Value::Null).unwrap(), None);
}
