//! The gRPC edge of dbswarm.
//!
//! **Architecture Invariant:** among the server's crates, only this one
//! names generated proto types. Requests are converted with `TryFrom` /
//! `convert::*` into validated domain types at the boundary, and store
//! errors are mapped onto gRPC status codes once, in `status.rs`.

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("dbswarm.v1");

    /// For gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dbswarm_descriptor");
}

mod admin_service;
mod convert;
mod event_store_service;
pub mod health;
mod projections_service;
pub mod runtime;
mod status;
mod workflows_service;

pub use admin_service::AdminService;
pub use convert::EVENT_TYPE_FILTERS_MAX;
pub use event_store_service::EventStoreService;
pub use projections_service::ProjectionsService;
pub use status::{projection_error_status, saga_error_status, store_error_status, validation_status};
pub use workflows_service::WorkflowsService;
