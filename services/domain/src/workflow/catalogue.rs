//! The agents of the swarm and what they share. The catalogue plans are
//! validated against ([`super::plan::Catalogue`]) is not written here: it
//! is derived from the operations the agents implement (each operation's
//! parameter type, see [`super::derive`]), so a plan naming an operation
//! nobody serves is refused with the list of what exists; whether a
//! running agent is ready is checked when the workflow starts (the health
//! gate).

use serde::{Deserialize, Serialize};

/// The agents of the swarm, as named in plans and task subjects.
pub const AGENTS: [&str; 8] = [
    "backup",
    "cache",
    "eventsourcing",
    "integrity",
    "monitoring",
    "query",
    "schema",
    "sync",
];

/// The operation every agent serves: connectivity and latency to the
/// agent's dependencies (and to a target database when one is named).
pub const PROBE: &str = "probe";

/// What `probe`'s `simulate` parameter asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    /// Work for this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Fail attempts 1..=n, then succeed.
    #[serde(default)]
    pub fail_attempts: u32,
    /// Fail every attempt.
    #[serde(default)]
    pub fail: bool,
    /// The code of the simulated failures: `unavailable` (retried) unless
    /// told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::Code>,
}

/// Longest simulated work: a drill must not hold an agent slot for hours.
pub const SIMULATED_DELAY_MS_MAX: u64 = 10 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulation_reads_its_code_and_leaves_it_out_when_unset() {
        let simulation: Simulation =
            serde_json::from_value(serde_json::json!({"fail": true, "code": "invalid_argument"})).unwrap();
        assert_eq!(simulation.code, Some(crate::Code::InvalidArgument));
        let unset = serde_json::to_value(Simulation::default()).unwrap();
        assert!(unset.get("code").is_none(), "{unset}");
    }
}
