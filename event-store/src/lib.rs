//! The event store on PostgreSQL: group-committed appends, stream and
//! `$all` reads, catch-up subscriptions, the relay to NATS JetStream and
//! the consumer library, aggregates with snapshots, leader election.
//!
//! # Tables
//! `events` (`migrations/0001_events.sql`): `global_position` (identity),
//! `event_id` (unique), `stream_id`, `aggregate_type` (the stream id before
//! its first `-`), `aggregate_id` (the rest, when it is a UUID),
//! `event_version` (per stream, from 1), `event_type`, `schema_version`,
//! `event_data jsonb` or `data_binary bytea` (exactly one), `metadata`,
//! `correlation_id`, `causation_id`, `transaction_id xid8`, `created_at`;
//! unique `(stream_id, event_version)`, index `(transaction_id,
//! global_position)` for `$all`. A stream's version is its highest
//! `event_version` (one backwards probe of the unique index): no streams
//! table to update on every append, which measured a third faster.
//! `relay_checkpoints` holds how far the relay released; a statement
//! trigger on `events` sends `NOTIFY dbswarm_events`. `snapshots` keeps the
//! newest snapshot per stream. `dbswarm_check(ok, message)` raises
//! SQLSTATE `DBS01`, so one autocommit statement can assert and abort.
//!
//! # Appends ([`Appender`])
//! Requests queue (bounded: RESOURCE_EXHAUSTED when full); a committer takes
//! a batch of what has queued. The optimistic path decides every request
//! against cached stream versions (pure `domain::decide`) and writes all
//! accepted events with ONE autocommit `INSERT .. unnest(..)` that also
//! checks each stream's first new version follows a stored one: one round
//! trip, one fsync per batch. Requests the cache refuses, and batches whose
//! statement failed (nothing of it was written), take the careful path:
//! ids already stored? (idempotency), advisory-lock the streams, read their
//! versions, decide, write, commit; a batch that loses a race there too is
//! retried one request per transaction. The version cache is only a guess
//! (versions only grow, so it is never ahead); two servers on one database
//! are safe. Idempotency is answered from `events` itself (unique
//! `event_id`): durable, no expiry; same ids and content = the original
//! positions, other content or some ids stored = ALREADY_EXISTS. A failed
//! COMMIT answers every request UNAVAILABLE "outcome unknown, retry with
//! the same ids".
//!
//! # Reads
//! Stream reads check every event's version follows the previous one.
//! `$all` is read in `(transaction_id, global_position)` order and only
//! below `dbswarm_horizon()` (`migrations/0010_horizon.sql`): the oldest
//! transaction of the reading statement's snapshot that is still running
//! and may belong to this database, else the snapshot's xmax. A position is
//! assigned at insert but visible at commit, so stopping at the oldest
//! running writer means no reader passes an event that will still appear.
//! Transactions the backend status places in another database are passed
//! over: a long transaction elsewhere on the cluster does not hold `$all`
//! back. Subscriptions repeat the same reads after each commit signal
//! (LISTEN, with a fallback poll), through a bounded channel: a slow client
//! only reads later.
//!
//! # Relay ([`relay`])
//! One leader per database ([`leader`]) reads pages of `$all` behind the
//! horizon and publishes them in order with `Nats-Msg-Id` = event id (acks
//! in flight across pages, bounded), and stores its checkpoint only at the
//! end of a page JetStream fully acknowledged: every committed event
//! reaches JetStream at least once, and a republished one is dropped within
//! the duplicate window. Every `relay_reconcile_interval_s` it republishes
//! what the events stream lacks of the last `relay_reconcile_window_events`.
//! The [`consumer`] library fills a stream's version gap from the store,
//! skips what it already applied, and parks an event that failed
//! `max_deliver` times in `dead_letters` until an explicit replay.
//!
//! # Aggregates ([`aggregate`])
//! An aggregate is a pure `decide`/`evolve` pair on stream `<kind>-<id>`.
//! The store loads it (from its newest snapshot when it keeps snapshots),
//! decides, appends at exactly the loaded version, and decides again when
//! another writer got there first (bounded). A snapshot is a cache: saved
//! only if not ahead of its stream, ignored when its schema version differs
//! or its state does not deserialize.
//!
//! **Architecture Invariant:** this crate is the only writer of the
//! `events` table. Every append goes through [`Appender`], which decides it
//! with the domain's `decide` and writes it with a statement that refuses
//! any gap.

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
