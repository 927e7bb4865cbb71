//! gRPC health and reflection of dbswarm's services (README.md, "Metrics
//! and health"), here because they name the generated service types.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

use crate::proto::admin_server::AdminServer;
use crate::proto::event_store_server::EventStoreServer;
use crate::proto::projections_server::ProjectionsServer;
use crate::proto::workflows_server::WorkflowsServer;
use crate::{AdminService, EventStoreService, ProjectionsService, WorkflowsService};

/// The health of this server's services, as `grpc.health.v1` reports it.
#[derive(Clone)]
pub struct Health(HealthReporter);

/// The health reporter and the `grpc.health.v1` service answering from it.
/// Every service serves from the start but `Workflows`, which follows its
/// agents ([`Health::set_workflows`]).
pub async fn health_service() -> (
    Health,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<EventStoreServer<EventStoreService>>()
        .await;
    reporter.set_serving::<AdminServer<AdminService>>().await;
    reporter
        .set_serving::<ProjectionsServer<ProjectionsService>>()
        .await;
    reporter
        .set_not_serving::<WorkflowsServer<WorkflowsService>>()
        .await;
    (Health(reporter), service)
}

impl Health {
    /// `Workflows` is SERVING only while every agent of the server is
    /// ready: its health gate refuses any plan that needs one that is not.
    pub async fn set_workflows(&self, agents_ready: bool) {
        if agents_ready {
            self.0.set_serving::<WorkflowsServer<WorkflowsService>>().await;
        } else {
            self.0
                .set_not_serving::<WorkflowsServer<WorkflowsService>>()
                .await;
        }
    }

    /// Once the server stops: every service, and `""` (the server as a
    /// whole), NOT_SERVING.
    pub async fn set_stopped(&self) {
        self.0
            .set_not_serving::<EventStoreServer<EventStoreService>>()
            .await;
        self.0.set_not_serving::<AdminServer<AdminService>>().await;
        self.0
            .set_not_serving::<ProjectionsServer<ProjectionsService>>()
            .await;
        self.0
            .set_not_serving::<WorkflowsServer<WorkflowsService>>()
            .await;
        self.0.set_service_status("", ServingStatus::NotServing).await;
    }
}

/// gRPC reflection (v1) over dbswarm's services and the health service.
pub fn reflection() -> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error>
{
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}
