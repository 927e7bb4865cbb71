//! The one integration-test binary: real PostgreSQL (started by
//! `make test`), a fresh database per test, an in-process server.

mod agent_health;
mod append;
mod backup_agent;
mod bad_input;
mod cache;
mod concurrency;
mod consumer;
mod harness;
mod horizon;
mod llm_planner;
mod metrics;
mod orchestration;
mod private_postgres;
mod projections;
mod query_agent;
mod read;
mod read_models;
mod relay;
mod schedules;
mod schema_dependencies;
mod schema_migrations;
mod server;
mod snapshot;
mod subscribe;
mod targets;
mod telemetry;
mod workflows;
