//! Projections and read models through gRPC: the seed's UserCreated ->
//! user_list declarative projection, control (pause, resume, skip, reset,
//! rebuild), failures, queries and bad input.

use std::time::Duration;

use api::proto;
use api::proto::projections_client::ProjectionsClient;
use serde_json::{Value, json};
use tests::*;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

pub fn user_list_definition() -> Value {
    json!({
        "name": "user_list",
        "key": {"column": "user_id", "type": "uuid", "path": "$.user_id"},
        "columns": {"email": "text", "name": "text", "logins": "integer", "created_at": "timestamptz"},
        "indexes": ["email"],
        "handlers": {
            "UserCreated": {"op": "upsert", "set": {"email": "$.email", "name": "$.name"},
                            "set_on_insert": {"created_at": "$event.created_at"}},
            "UserRenamed": {"op": "upsert", "set": {"name": "$.name"}},
            "UserLoggedIn": {"op": "increment", "increment": {"logins": {"const": 1}}},
            "UserDeleted": {"op": "delete"}
        }
    })
}

pub async fn projections_client(server: &TestServer) -> ProjectionsClient<Channel> {
    ProjectionsClient::connect(server.channel_url()).await.unwrap()
}

pub async fn define(client: &mut ProjectionsClient<Channel>, definition: &Value) -> proto::ProjectionStatus {
    client
        .define(proto::DefineProjectionRequest {
            definition_json: definition.to_string(),
        })
        .await
        .expect("definition accepted")
        .into_inner()
}

pub async fn append(server: &mut TestServer, stream: &str, events: Vec<proto::ProposedEvent>) {
    server
        .client
        .append_to_stream(append_request(stream, None, events))
        .await
        .expect("append");
}

/// Waits (bounded) until `check` holds for the projection's status.
pub async fn wait_for_status(
    client: &mut ProjectionsClient<Channel>,
    name: &str,
    what: &str,
    check: impl Fn(&proto::ProjectionStatus) -> bool,
) -> proto::ProjectionStatus {
    wait_until(client, name, what, Duration::from_secs(30), check).await
}

/// Polls the projection's status until `check` holds; panics with the last
/// status after `timeout`.
pub async fn wait_until(
    client: &mut ProjectionsClient<Channel>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&proto::ProjectionStatus) -> bool,
) -> proto::ProjectionStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = client
            .get(proto::ProjectionRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner();
        if check(&status) {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("projection {name}: {what} did not happen within {timeout:?}; last status {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn caught_up(status: &proto::ProjectionStatus) -> bool {
    status
        .generations
        .iter()
        .all(|g| g.lag_events == 0 && g.failure.is_none())
}

pub async fn get_row(client: &mut ProjectionsClient<Channel>, model: &str, key: &str) -> Option<Value> {
    match client
        .get_row(proto::GetRowRequest {
            read_model: model.into(),
            key: key.into(),
        })
        .await
    {
        Ok(row) => Some(serde_json::from_str(&row.into_inner().json).unwrap()),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("get_row failed: {status:?}"),
    }
}

#[tokio::test]
async fn user_created_feeds_user_list_with_updates_and_deletes() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    // Given the seed's declarative projection
    let status = define(&mut client, &user_list_definition()).await;
    assert_eq!(status.live_generation, 1);
    // When users are created, renamed, log in and one is deleted
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    append(
        &mut server,
        &format!("user-{ada}"),
        vec![
            json_event(
                "UserCreated",
                json!({"user_id": ada, "email": "ada@example.com", "name": "Ada"}),
            ),
            json_event("UserLoggedIn", json!({"user_id": ada})),
            json_event("UserLoggedIn", json!({"user_id": ada})),
            json_event("UserRenamed", json!({"user_id": ada, "name": "Ada L."})),
        ],
    )
    .await;
    append(
        &mut server,
        &format!("user-{bob}"),
        vec![
            json_event(
                "UserCreated",
                json!({"user_id": bob, "email": "bob@example.com", "name": "Bob"}),
            ),
            json_event("UserDeleted", json!({"user_id": bob})),
        ],
    )
    .await;
    wait_for_status(&mut client, "user_list", "catching up", caught_up).await;
    // Then the read model has Ada's current state and no Bob
    let row = get_row(&mut client, "user_list", &ada.to_string())
        .await
        .expect("ada's row");
    assert_eq!(row["email"], "ada@example.com");
    assert_eq!(row["name"], "Ada L.");
    assert_eq!(row["logins"], 2);
    assert!(row["created_at"].is_string());
    assert_eq!(get_row(&mut client, "user_list", &bob.to_string()).await, None);
    // And the status says where it is
    let status = client
        .get(proto::ProjectionRequest {
            name: "user_list".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, proto::ProjectionState::Running as i32);
    assert_eq!(status.generations[0].events_applied, 6);
    // And defining the same again changes nothing
    assert_eq!(
        define(&mut client, &user_list_definition()).await.live_generation,
        1
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn bad_definitions_are_refused_with_every_reason() {
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    let bad = json!({
        "name": "user list",
        "key": {"column": "id", "type": "uuid", "path": "$event.stream_id"},
        "columns": {"email": "text", "n": "integer"},
        "handlers": {
            "UserCreated": {"op": "upsert", "set": {"mail": "$.email", "email": "email"}},
            "UserLoggedIn": {"op": "increment", "increment": {"email": {"const": 1}}},
            "UserAged": {"op": "upsert", "set": {"n": "$event.created_at"}}
        }
    });
    let status = client
        .define(proto::DefineProjectionRequest {
            definition_json: bad.to_string(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let message = status.message();
    for reason in [
        "projection name 'user list' is not a valid name",
        "key path $event.stream_id gives text but the key column is uuid",
        "set 'mail': no such column",
        "path 'email' must start with '$.'",
        "increment 'email': column is text",
        "$event.created_at gives timestamptz but the column is integer",
    ] {
        assert!(message.contains(reason), "missing {reason:?} in {message}");
    }
    let not_json = client
        .define(proto::DefineProjectionRequest {
            definition_json: "{".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(not_json.code(), Code::InvalidArgument);
    // Nothing was created by the refusals.
    let all = client
        .list(proto::ListProjectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        all.projections
            .iter()
            .all(|p| p.name != "user_list" && p.name != "user list")
    );
    // Unknown names and bad requests
    let missing = client
        .get(proto::ProjectionRequest { name: "nope".into() })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
    let bad_skip = client
        .skip_event(proto::SkipEventRequest {
            name: "stream_catalogue".into(),
            event_id: "not-a-uuid".into(),
            reason: "x".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(bad_skip.code(), Code::InvalidArgument);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_failing_event_stops_the_projection_until_skipped_on_record() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    define(&mut client, &user_list_definition()).await;
    let (good, later) = (Uuid::new_v4(), Uuid::new_v4());
    // Given an event without its key between two good ones
    let bad = json_event("UserCreated", json!({"email": "nobody@example.com"}));
    let bad_id = bad.event_id.clone();
    append(
        &mut server,
        "user-a",
        vec![
            json_event("UserCreated", json!({"user_id": good, "email": "a@example.com"})),
            bad,
            json_event("UserCreated", json!({"user_id": later, "email": "c@example.com"})),
        ],
    )
    .await;
    // Then the projection stops exactly there, with the reason
    let status = wait_for_status(&mut client, "user_list", "failure", |s| {
        s.state == proto::ProjectionState::Failed as i32
    })
    .await;
    let failure = status.generations[0].failure.clone().unwrap();
    assert_eq!(failure.event_id, bad_id);
    assert!(
        failure
            .error
            .contains("the key path $.user_id is missing or null"),
        "{}",
        failure.error
    );
    assert!(
        get_row(&mut client, "user_list", &good.to_string())
            .await
            .is_some()
    );
    assert!(
        get_row(&mut client, "user_list", &later.to_string())
            .await
            .is_none()
    );
    // And it does not move by itself, nor when resumed without a fix
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .resume(proto::ProjectionRequest {
            name: "user_list".into(),
        })
        .await
        .unwrap();
    wait_for_status(&mut client, "user_list", "failing again", |s| {
        s.state == proto::ProjectionState::Failed as i32
    })
    .await;
    // When skipping another event, it is refused
    let wrong = client
        .skip_event(proto::SkipEventRequest {
            name: "user_list".into(),
            event_id: Uuid::new_v4().to_string(),
            reason: "typo".into(),
        })
        .await
        .expect_err("not the failed event");
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    // When told to skip exactly that event
    client
        .skip_event(proto::SkipEventRequest {
            name: "user_list".into(),
            event_id: bad_id.clone(),
            reason: "written without a user id by a bug, fixed since".into(),
        })
        .await
        .unwrap();
    // Then it goes on, and the skip is on record as an event
    wait_for_status(&mut client, "user_list", "recovery", |s| {
        s.state == proto::ProjectionState::Running as i32 && caught_up(s)
    })
    .await;
    assert!(
        get_row(&mut client, "user_list", &later.to_string())
            .await
            .is_some()
    );
    let record = collect_stream(
        server
            .client
            .read_stream(proto::ReadStreamRequest {
                stream_id: "projection-user_list".into(),
                from_version: 1,
                direction: proto::ReadDirection::Forwards as i32,
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(record.len(), 1);
    let event = record[0].event.clone().unwrap();
    assert_eq!(event.event_type, "ProjectionEventSkipped");
    let data: Value = serde_json::from_slice(&event.data).unwrap();
    assert_eq!(data["event_id"], bad_id);
    assert_eq!(data["reason"], "written without a user id by a bug, fixed since");
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn pause_holds_events_back_and_resume_applies_them() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    define(&mut client, &user_list_definition()).await;
    let paused = client
        .pause(proto::ProjectionRequest {
            name: "user_list".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.state, proto::ProjectionState::Paused as i32);
    let id = Uuid::new_v4();
    append(
        &mut server,
        "user-p",
        vec![json_event("UserCreated", json!({"user_id": id, "email": "p@x"}))],
    )
    .await;
    let status = wait_for_status(&mut client, "user_list", "lag to show", |s| {
        s.generations[0].lag_events == 1
    })
    .await;
    assert_eq!(status.state, proto::ProjectionState::Paused as i32);
    assert!(get_row(&mut client, "user_list", &id.to_string()).await.is_none());
    client
        .resume(proto::ProjectionRequest {
            name: "user_list".into(),
        })
        .await
        .unwrap();
    wait_for_status(&mut client, "user_list", "catching up", caught_up).await;
    assert!(get_row(&mut client, "user_list", &id.to_string()).await.is_some());
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn list_rows_filters_orders_and_pages_with_a_cursor() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    define(&mut client, &user_list_definition()).await;
    let mut events = Vec::new();
    for i in 0..25 {
        events.push(json_event(
            "UserCreated",
            json!({"user_id": Uuid::new_v4(), "email": format!("u{i:02}@{}", if i % 5 == 0 { "vip.com" } else { "x.com" }), "name": format!("n{i}")}),
        ));
    }
    append(&mut server, "users-bulk", events).await;
    wait_for_status(&mut client, "user_list", "catching up", caught_up).await;
    // Paging through everything by email, 10 at a time
    let mut emails = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_rows(proto::ListRowsRequest {
                read_model: "user_list".into(),
                order_by: "email".into(),
                page_size: 10,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for row in &page.rows {
            let row: Value = serde_json::from_str(&row.json).unwrap();
            emails.push(row["email"].as_str().unwrap().to_owned());
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let mut sorted = emails.clone();
    sorted.sort();
    assert_eq!(emails.len(), 25);
    assert_eq!(emails, sorted);
    // A filter, descending
    let vip = client
        .list_rows(proto::ListRowsRequest {
            read_model: "user_list".into(),
            filters: vec![proto::RowFilter {
                column: "email".into(),
                op: proto::FilterOp::Prefix as i32,
                value: "u1".into(),
            }],
            order_by: "email".into(),
            descending: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<String> = vip
        .rows
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.json).unwrap()["email"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], "u19@x.com");
    // Bad queries say what is wrong
    for (request, expected) in [
        (
            proto::ListRowsRequest {
                read_model: "user_list".into(),
                order_by: "nope".into(),
                ..Default::default()
            },
            "order_by 'nope': read model 'user_list' has no such column",
        ),
        (
            proto::ListRowsRequest {
                read_model: "user_list".into(),
                page_size: 1_000_000,
                ..Default::default()
            },
            "page_size 1000000 is over the limit of 1000",
        ),
        (
            proto::ListRowsRequest {
                read_model: "user_list".into(),
                filters: vec![proto::RowFilter {
                    column: "logins".into(),
                    op: proto::FilterOp::Gt as i32,
                    value: "many".into(),
                }],
                ..Default::default()
            },
            "filter on 'logins': \"many\" is not an integer",
        ),
        (
            proto::ListRowsRequest {
                read_model: "user_list".into(),
                cursor: "zz".into(),
                ..Default::default()
            },
            "cursor is not one this server gave out",
        ),
    ] {
        let status = client.list_rows(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "{:?} lacks {expected:?}",
            status.message()
        );
    }
    let bad_key = client
        .get_row(proto::GetRowRequest {
            read_model: "user_list".into(),
            key: "not-a-uuid".into(),
        })
        .await
        .expect_err("bad key");
    assert_eq!(bad_key.code(), Code::InvalidArgument);
    let unknown = client
        .get_row(proto::GetRowRequest {
            read_model: "nope".into(),
            key: "1".into(),
        })
        .await
        .expect_err("unknown model");
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn builtin_read_models_catalogue_streams_and_audit_events() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    let mut event = json_event("OrderPlaced", json!({"total": 10}));
    event.metadata = json!({"actor": "alice"}).to_string().into_bytes();
    let event_id = event.event_id.clone();
    append(
        &mut server,
        "order-1",
        vec![event, json_event("OrderPaid", json!({}))],
    )
    .await;
    wait_for_status(&mut client, "stream_catalogue", "catching up", caught_up).await;
    wait_for_status(&mut client, "audit_log", "catching up", caught_up).await;
    let stream = get_row(&mut client, "stream_catalogue", "order-1").await.unwrap();
    assert_eq!(stream["version"], 2);
    assert_eq!(stream["events"], 2);
    assert_eq!(stream["aggregate_type"], "order");
    assert_eq!(stream["last_event_type"], "OrderPaid");
    let audit = get_row(&mut client, "audit_log", &event_id).await.unwrap();
    assert_eq!(audit["actor"], "alice");
    assert_eq!(audit["event_type"], "OrderPlaced");
    let all = client
        .list(proto::ListProjectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = all.projections.iter().map(|p| p.name.as_str()).collect();
    for builtin in ["agents", "audit_log", "backups", "stream_catalogue", "workflows"] {
        assert!(names.contains(&builtin), "{names:?}");
    }
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn projections_are_defined_from_files_and_a_bad_file_stops_the_start() {
    let db = TestDb::create().await;
    let dir = std::env::temp_dir().join(format!("dbswarm-projections-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("user_list.json"), user_list_definition().to_string()).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a definition, not read").unwrap();
    let mut settings = settings_for(&db);
    settings.projections_dir = Some(dir.clone());
    let server = TestServer::start(settings.clone()).await;
    let mut client = projections_client(&server).await;
    let status = client
        .get(proto::ProjectionRequest {
            name: "user_list".into(),
        })
        .await
        .expect("defined from the file")
        .into_inner();
    assert_eq!(status.live_generation, 1);
    server.stop().await;

    std::fs::write(
        dir.join("broken.json"),
        json!({"name": "Broken!", "key": {"column": "k", "type": "text"}, "handlers": {}}).to_string(),
    )
    .unwrap();
    let error = match server::start(server::Config::from_settings(settings).unwrap()).await {
        Ok(_) => panic!("a bad definition file must stop the start"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("broken.json"), "{error}");
    assert!(
        error.contains("projection name 'Broken!' is not a valid name"),
        "{error}"
    );
    assert!(error.contains("no handlers"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn reset_empties_the_read_model_and_applies_everything_again() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    define(&mut client, &user_list_definition()).await;
    let id = Uuid::new_v4();
    append(
        &mut server,
        "user-r",
        vec![
            json_event("UserCreated", json!({"user_id": id, "email": "r@x", "name": "R"})),
            json_event("UserLoggedIn", json!({"user_id": id})),
        ],
    )
    .await;
    wait_for_status(&mut client, "user_list", "catching up", caught_up).await;
    let before = get_row(&mut client, "user_list", &id.to_string()).await.unwrap();
    let reset = client
        .reset(proto::ProjectionRequest {
            name: "user_list".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.live_generation, 1, "reset works in place, unlike rebuild");
    let status = wait_for_status(&mut client, "user_list", "re-applying", |s| {
        caught_up(s) && s.generations[0].events_applied == 2
    })
    .await;
    assert_eq!(status.generations.len(), 1);
    let after = get_row(&mut client, "user_list", &id.to_string()).await.unwrap();
    assert_eq!(after["logins"], before["logins"]);
    assert_eq!(after["email"], before["email"]);
    let unknown = client
        .reset(proto::ProjectionRequest { name: "nope".into() })
        .await
        .expect_err("unknown projection");
    assert_eq!(unknown.code(), Code::NotFound);
    let empty = client
        .pause(proto::ProjectionRequest { name: String::new() })
        .await
        .expect_err("no name");
    assert_eq!(empty.code(), Code::InvalidArgument);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_changed_definition_is_built_beside_the_live_one_and_switched_to() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    let v1 = json!({
        "name": "people",
        "key": {"column": "id", "type": "text", "path": "$.id"},
        "columns": {"email": "text"},
        "handlers": {"PersonAdded": {"op": "upsert", "set": {"email": "$.email"}}}
    });
    define(&mut client, &v1).await;
    append(
        &mut server,
        "people-1",
        vec![
            json_event(
                "PersonAdded",
                json!({"id": "p1", "email": "p1@x", "city": "Oslo"}),
            ),
            json_event(
                "PersonAdded",
                json!({"id": "p2", "email": "p2@x", "city": "Rome"}),
            ),
        ],
    )
    .await;
    wait_for_status(&mut client, "people", "catching up", caught_up).await;
    // When the definition changes (a new column)
    let mut v2 = v1.clone();
    v2["columns"]["city"] = json!("text");
    v2["handlers"]["PersonAdded"]["set"]["city"] = json!("$.city");
    let status = define(&mut client, &v2).await;
    assert_eq!(status.live_generation, 1);
    // Then the new generation replaces the old once it has caught up
    wait_for_status(&mut client, "people", "switch to generation 2", |s| {
        s.live_generation == 2 && s.generations.len() == 1 && caught_up(s)
    })
    .await;
    let row = get_row(&mut client, "people", "p2").await.unwrap();
    assert_eq!(row["city"], "Rome");
    // Defining it again changes nothing; going back and forth calls a
    // rebuild off.
    assert_eq!(define(&mut client, &v2).await.live_generation, 2);
    client
        .pause(proto::ProjectionRequest {
            name: "people".into(),
        })
        .await
        .unwrap();
    let building = define(&mut client, &v1).await;
    assert_eq!(building.generations.len(), 2, "{building:#?}");
    let back = define(&mut client, &v2).await;
    assert_eq!(back.live_generation, 2);
    assert_eq!(back.generations.len(), 1, "{back:#?}");
    client
        .resume(proto::ProjectionRequest {
            name: "people".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        get_row(&mut client, "people", "p1").await.unwrap()["city"],
        "Oslo"
    );
    server.stop().await;
    db.drop_database().await;
}
