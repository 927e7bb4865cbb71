//! Read models built from the event store (issue 4): declarative
//! projections ([`definition`]), the runtime that keeps them in step with
//! the store exactly once and rebuilds them blue/green ([`runtime`]),
//! queries over them ([`query`]).

pub mod cache;
pub mod definition;
pub mod query;
pub mod runtime;
pub mod sqlgen;

pub use runtime::{ProjectionError, ProjectionState, ProjectionStatus, Projections, RuntimeConfig};
