//! The event store on PostgreSQL: group-committed appends, stream and $all
//! reads.
//!
//! **Architecture Invariant:** this crate is the only writer of the `events`
//! table. Every append goes through [`Appender`], which decides it with the
//! domain's `decide` and writes it with a statement that refuses any gap.

pub mod aggregate;
mod append;
pub mod clock;
pub mod consumer;
mod error;
pub mod leader;
mod read;
pub mod relay;
pub mod snapshot;

pub use aggregate::{
    Aggregate, AggregateError, AggregateStore, CONFLICT_ATTEMPTS_MAX, Executed, Loaded, Snapshotted,
    tagged_event_data, tagged_event_from_stored,
};
pub use append::{AppendConfig, AppendOutcome, Appender, EventPosition, StreamOutcome};
pub use error::{StoreError, database_code};
pub use read::{
    AllPage, AllPosition, CommitSignal, Direction, EventReceiver, ReadAllQuery, ReadConfig, ReadStreamQuery,
    Reader, RecordedEvent, watch_commits,
};
pub use snapshot::{Snapshot, SnapshotStore};

/// The migrations of dbswarm's own database (`migrations/` at the repo root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
