//! The one integration-test binary: real PostgreSQL (started by
//! `make test`), a fresh database per test, an in-process server.

mod append;
mod bad_input;
mod concurrency;
mod consumer;
mod read;
mod relay;
mod server;
mod subscribe;
mod telemetry;
