//! The agents' PostgreSQL toolkit: how an agent changes and reads a
//! target database, so that every agent takes locks, waits for them and
//! reads the catalog the same way.
//!
//! - [`runner`]: statements under `lock_timeout` and `statement_timeout`,
//!   retried with backoff while a lock is not granted ([`run_step`],
//!   [`run_transaction`], [`run_outside_transaction`], [`retrying`]),
//!   configured by [`Timeouts`], failing with [`ExecError`].
//! - [`LockLevel`]: PostgreSQL's table-level lock modes.
//! - [`catalog`]: readers of `pg_catalog` that more than one agent needs
//!   (their SQL is in `sql/`).
//!
//! Identifiers (quoting, folding) are in [`crate::sql`].

pub mod catalog;
mod lock;
pub mod runner;

pub use catalog::index_valid;
pub use lock::LockLevel;
pub use runner::{
    ExecError, Step, Timeouts, begin, describe, retrying, run_outside_transaction, run_step, run_transaction,
};
