//! `probe`, served by every agent: connectivity and latency to what the
//! agent depends on. It feeds the health gate and the tests; its
//! `simulate` parameter rehearses slow, flaky and failing tasks.

use std::time::Duration;

use domain::workflow::TaskKind;
use domain::workflow::catalogue::{SIMULATED_DELAY_MS_MAX, Simulation};
use serde_json::json;

use crate::runtime::{OpFuture, Operation, TaskContext, check_dependencies};

/// Each dependency gets this long to answer a probe.
const PROBE_TIMEOUT_MS: u64 = 2_000;

pub struct Probe {
    pub agent: String,
}

impl Operation for Probe {
    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let target = match params.get("database") {
                Some(serde_json::Value::String(name)) => Some(name.as_str()),
                Some(other) => {
                    return Err(format!("parameter 'database' must be a target name, not {other}"));
                }
                None => None,
            };
            let simulation: Simulation = match params.get("simulate") {
                Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                    format!("parameter 'simulate': {e} (it takes delay_ms, fail_attempts, fail)")
                })?,
                None => Simulation::default(),
            };
            if simulation.delay_ms > SIMULATED_DELAY_MS_MAX {
                return Err(format!(
                    "parameter 'simulate': delay_ms {} is more than {SIMULATED_DELAY_MS_MAX}",
                    simulation.delay_ms
                ));
            }
            let (postgres_ms, nats_ms) = check_dependencies(&task.deps, PROBE_TIMEOUT_MS).await?;
            let target_ms = match target {
                Some(name) => Some(
                    task.deps
                        .targets
                        .ping(&self.agent, name)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            if simulation.delay_ms > 0 {
                task.progress(0.0, "simulated work started").await;
                tokio::time::sleep(Duration::from_millis(simulation.delay_ms)).await;
            }
            let attempt = task.command.attempt;
            let compensating = task.command.kind == TaskKind::Compensate;
            if !compensating && (simulation.fail || attempt <= simulation.fail_attempts) {
                return Err(format!("simulated failure of attempt {attempt}"));
            }
            Ok(json!({
                "agent": self.agent,
                "attempt": attempt,
                "postgres_ms": postgres_ms,
                "nats_ms": nats_ms,
                "target": target,
                "target_ms": target_ms,
            }))
        })
    }
}
