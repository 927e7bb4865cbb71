//! The backup and recovery agent (DESIGN.md section 8).

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
