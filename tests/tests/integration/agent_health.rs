//! Agents' lifecycle events and what gRPC health says about the services,
//! with NATS down from the start (a nats-server of the test's own).

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;
use tests::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health_client(server: &TestServer) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(server.channel_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn status(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let answer = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

/// Waits (bounded: 30 s) until `service` reports `wanted`.
async fn wait_for_status(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    wanted: ServingStatus,
) {
    for _ in 0..300 {
        if status(health, service).await == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} did not turn {wanted:?} within 30 s");
}

/// The states each agent recorded (`AgentStateChanged`), by stream, in
/// order.
async fn recorded_states(pool: &PgPool) -> BTreeMap<String, Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT stream_id, event_data->>'status' FROM events \
         WHERE event_type = 'AgentStateChanged' ORDER BY stream_id, event_version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut states: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (stream, status) in rows {
        states.entry(stream).or_default().push(status);
    }
    states
}

fn every_agent(states: &[&str]) -> BTreeMap<String, Vec<String>> {
    domain::workflow::catalogue::AGENTS
        .iter()
        .map(|agent| {
            (
                format!("agent-{agent}"),
                states.iter().map(|s| (*s).to_owned()).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_started_while_nats_is_down_records_recovering_once_and_ready_once() {
    // Given a NATS that is down when the server starts
    let mut nats = PrivateNats::start().await;
    nats.stop().await;
    let db = TestDb::create().await;
    let mut settings = with_workflows(settings_for(&db));
    settings.nats_url = Some(nats.url());
    let server = TestServer::start(settings).await;
    let mut health = health_client(&server).await;
    let pool = db.pool().await;

    // When the agents retry for a while (a retry every recovery interval,
    // 1 s, plus the failed check, at most 2 s: at least three here)
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Then each agent recorded the change to recovering once
    assert_eq!(
        recorded_states(&pool).await,
        every_agent(&["initializing", "recovering"])
    );
    // And Workflows, which cannot start a plan, is not serving, the rest is
    assert_eq!(
        status(&mut health, "dbswarm.v1.Workflows").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        status(&mut health, "dbswarm.v1.EventStore").await,
        ServingStatus::Serving
    );

    // When NATS comes back
    nats.restart().await;
    // Then Workflows serves again once the agents are ready
    wait_for_status(&mut health, "dbswarm.v1.Workflows", ServingStatus::Serving).await;
    // And each agent recorded ready once
    assert_eq!(
        recorded_states(&pool).await,
        every_agent(&["initializing", "recovering", "ready"])
    );

    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn workflows_is_not_serving_on_a_server_without_agents() {
    // Given a server that does not run the agents (workflows_enabled = false)
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let mut health = health_client(&server).await;
    // Then Workflows, whose health gate would refuse every plan, is not
    // serving, while the services that need only PostgreSQL are
    assert_eq!(
        status(&mut health, "dbswarm.v1.Workflows").await,
        ServingStatus::NotServing
    );
    for service in [
        "dbswarm.v1.EventStore",
        "dbswarm.v1.Admin",
        "dbswarm.v1.Projections",
        "",
    ] {
        assert_eq!(
            status(&mut health, service).await,
            ServingStatus::Serving,
            "{service}"
        );
    }
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_stops_serving_while_its_agents_recover() {
    // Given a server whose agents are ready
    let mut nats = PrivateNats::start().await;
    let db = TestDb::create().await;
    let mut settings = with_workflows(settings_for(&db));
    settings.nats_url = Some(nats.url());
    settings.agent_heartbeat_interval_ms = Some(200);
    let server = TestServer::start(settings).await;
    let mut health = health_client(&server).await;
    wait_for_status(&mut health, "dbswarm.v1.Workflows", ServingStatus::Serving).await;
    // When NATS goes away, Workflows stops serving
    nats.stop().await;
    wait_for_status(&mut health, "dbswarm.v1.Workflows", ServingStatus::NotServing).await;
    assert_eq!(
        status(&mut health, "dbswarm.v1.EventStore").await,
        ServingStatus::Serving
    );
    // And serves again once NATS is back
    nats.restart().await;
    wait_for_status(&mut health, "dbswarm.v1.Workflows", ServingStatus::Serving).await;
    // And each agent recorded one event per change
    let pool = db.pool().await;
    assert_eq!(
        recorded_states(&pool).await,
        every_agent(&["initializing", "ready", "recovering", "ready"])
    );
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}
