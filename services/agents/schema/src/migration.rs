//! Named, versioned migrations of a target database: definitions
//! ([`definition`]), the history as events ([`history`]), the SQL of each
//! phase ([`steps`]), running it under lock_timeout with retries
//! ([`executor`]) and the engine that ties them together ([`engine`]).

pub mod definition;
pub mod engine;
pub mod executor;
pub mod history;
pub mod steps;

pub use definition::{Format, Migration, Operation};
pub use engine::{
    HistoryStore, MigrationConfig, MigrationError, Migrator, NoProgress, PlanReport, ProgressSink, RunReport,
    SchemaHistory, StatusReport, Target, list_names, load_file, load_named,
};
pub use executor::Timeouts;
