use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::json;
use server::config::LogFormat;
use tests::*;
use tokio_stream::wrappers::TcpListenerStream;

/// A minimal OTLP collector that keeps the names of the spans it receives.
#[derive(Clone, Default)]
struct Collector {
    span_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut names = self.span_names.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                names.extend(scope.spans.into_iter().map(|s| s.name));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The only test that installs the global tracing subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_are_traced_over_otlp() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let telemetry = server::telemetry::init_tracing(LogFormat::Text, Some(endpoint)).unwrap();

    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    server
        .client
        .append_to_stream(append_request("traced", None, vec![json_event("E", json!({}))]))
        .await
        .unwrap();

    let telemetry = Arc::new(telemetry);
    let mut exported = false;
    for _ in 0..50 {
        let flushing = telemetry.clone();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .unwrap();
        if collector.span_names.lock().unwrap().iter().any(|n| n == "grpc") {
            exported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exported,
        "spans received: {:?}",
        collector.span_names.lock().unwrap()
    );
    server.stop().await;
    db.drop_database().await;
    // Shutting the provider down blocks on the export thread.
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();
    collector_task.abort();
}
