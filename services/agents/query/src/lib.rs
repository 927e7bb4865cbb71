//! The query optimization agent.
//!
//! Pure parts: [`plan_analysis`] reads EXPLAIN (FORMAT JSON) plans and
//! names what is slow in them, with rewrite hints from the SQL;
//! [`candidates`] derives candidate indexes from a query's predicates,
//! joins and orderings; [`workload`] turns pg_stat_statements snapshots
//! into periods and finds regressions between them.
//!
//! IO: [`workload::read_snapshot`], [`explain`] (generic plans of
//! normalized statements on PostgreSQL 15), [`indexes`] (use, size and
//! write cost of a target's indexes), [`journal`] (the agent's events,
//! stream `workload-<database>`), and the operations ([`agent`]).

pub mod advisor;
pub mod agent;
pub mod candidates;
pub mod create;
pub mod explain;
pub mod indexes;
pub mod journal;
pub mod plan_analysis;
pub mod workload;
