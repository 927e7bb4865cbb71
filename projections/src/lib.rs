//! Read models built from the event store: declarative projections
//! ([`definition`], pure; [`sqlgen`], their SQL), the runtime that keeps
//! them in step exactly once and rebuilds them blue/green ([`runtime`]),
//! queries over them ([`query`]) through a Redis cache ([`cache`]).
//!
//! A runner (one per generation of each projection, on every server with
//! `projections_enabled`) reads a page of `$all` below the horizon, of its
//! event types only, and in ONE transaction locks its checkpoint row (the
//! fence: another runner of the generation only makes it re-read), applies
//! the page as runs in which each key appears once (one DELETE and one
//! MERGE per run; consecutive operations on one key folded where exact),
//! moves the checkpoint and commits; then invalidates the cache tags of
//! the rows it changed. A rebuild builds a new generation in its own table
//! from the start of `$all` while the view `read_models."<name>"` shows the
//! live one, and swaps the view in one transaction once it reaches the
//! horizon. An event whose value cannot be stored stops its projection
//! there (recorded with the error) until Resume, or SkipEvent, which
//! records a `ProjectionEventSkipped` event.
//!
//! Names from a request never reach SQL unchecked: validated
//! (`[a-z_][a-z0-9_]*`, no `pg_`, no `__`, bounded) and quoted anyway;
//! values are converted in Rust first, then bound as text and cast.
//!
//! The cache decides validity by tag versions: an entry records the
//! versions (of the read model, its rows, the row, and a global epoch) it
//! was loaded under, and a read is one `MGET` of the entry and the current
//! versions. A miss reads the versions before it loads, so an entry whose
//! load started before an invalidation is a miss afterwards. Any Redis
//! error or timeout degrades the cache (Redis skipped); recovery changes
//! the epoch, voiding entries from before a lost invalidation. Every entry
//! expires `cache_ttl_ms` after it was stored.

pub mod cache;
pub mod definition;
pub mod query;
pub mod runtime;
pub mod sqlgen;

pub use runtime::{ProjectionError, ProjectionState, ProjectionStatus, Projections, RuntimeConfig};
