//! dbswarm's domain: validated value types and pure decisions.
//!
//! **Architecture Invariant:** this crate does no IO and never depends on
//! sqlx, tonic or async-nats. Everything here is a pure function of its
//! inputs, so it is tested with plain unit tests (given/when/then).

pub mod error;
pub mod limits;
pub mod stream;
pub mod subject;
pub mod target;
pub mod types;
pub mod workflow;

pub use error::{Code, OperationError};
pub use limits::Limits;
pub use stream::{
    AppendError, ContiguityViolation, ExistingEvent, IdempotencyOutcome, StreamState, VersionedEvent,
    classify_replay, decide, evolve, verify_contiguous,
};
pub use types::{
    AppendRequest, EventData, EventType, ExpectedVersion, ProposedEvent, StreamAppend, StreamId,
    ValidationError,
};
