//! The backup and recovery agent.
//!
//! [`engine`] (`Backups`) takes logical backups (pg_dump from an exported
//! snapshot) and [`physical`] ones (pg_basebackup, WAL archived by
//! PostgreSQL through `dbswarm backup wal-push`), each encrypted as it
//! streams ([`crypto`]: chunked AES-256-GCM, SHA-256 of both sides) into
//! the [`repository`] (written under `<id>.partial/`, published by rename
//! after its signed [`manifest`] and every file are fsynced). It verifies,
//! restores (logical, or point in time into a new instance), proves
//! restores with [`restore_test`], applies [`retention`], and keeps its
//! [`catalogue`] as events (`backups-<database>`, a pure aggregate).
//! [`tools`] runs PostgreSQL's programs as child processes;
//! [`archive_access`] decides which OS user archive_command runs as and
//! what key copy it may read; [`facts`] are row counts and checksums
//! compared after a restore; [`agent`] serves the operations.

pub mod agent;
pub mod archive_access;
pub mod catalogue;
pub mod crypto;
pub mod engine;
pub mod facts;
pub mod manifest;
pub mod physical;
pub mod repository;
pub mod restore_test;
pub mod retention;
pub mod tools;
