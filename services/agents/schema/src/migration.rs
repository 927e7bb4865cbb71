//! Named, versioned migrations of a target database: definitions
//! ([`definition`]), the history as events ([`history`]), the SQL of each
//! phase ([`steps`]), the backfill in bounded batches ([`backfill`]) and
//! the engine that ties them together ([`engine`]); each statement runs
//! under lock_timeout with retries (`agents::pg`).

pub mod backfill;
pub mod definition;
pub mod engine;
pub mod history;
pub mod steps;

pub use definition::{Format, Migration, Operation};
pub use engine::{
    HistoryStore, MigrationConfig, MigrationError, Migrator, NoProgress, PlanReport, ProgressSink, RunReport,
    SchemaHistory, StatusReport, Target, list_names, load_file, load_named,
};
