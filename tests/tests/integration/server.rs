use serde_json::json;
use tests::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_reflection_and_metrics_are_served() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    server
        .client
        .append_to_stream(append_request("m-1", None, vec![json_event("E", json!({}))]))
        .await
        .unwrap();

    let channel = tonic::transport::Endpoint::from_shared(server.channel_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let serving = health
        .check(HealthCheckRequest {
            service: "dbswarm.v1.EventStore".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let metrics = http_get(server.running.http_addr, "/metrics").await;
    assert!(metrics.contains("dbswarm_grpc_requests_total"), "{metrics}");
    assert!(metrics.contains("method=\"AppendToStream\""), "{metrics}");
    assert!(metrics.contains("dbswarm_append_batch_events"), "{metrics}");
    assert!(
        http_get(server.running.http_addr, "/healthz")
            .await
            .ends_with("ok\n")
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_bad_database_url_fails_start_naming_the_setting() {
    let mut settings = server::Settings {
        database_url: Some("http://nope".into()),
        ..Default::default()
    };
    let err = server::Config::from_settings(settings.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`database_url`") && err.contains("DBSWARM_DATABASE_URL"),
        "{err}"
    );
    settings.database_url = Some("postgres://postgres@127.0.0.1:1/none".into());
    let config = server::Config::from_settings(settings).unwrap();
    let err = server::start(config)
        .await
        .err()
        .expect("no database on port 1")
        .to_string();
    assert!(err.contains("database_url"), "{err}");
}

/// A minimal HTTP/1.1 GET, enough for the metrics endpoint.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
