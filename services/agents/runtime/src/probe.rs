//! `probe`, served by every agent: connectivity and latency to what the
//! agent depends on. It feeds the health gate and the tests; its
//! `simulate` parameter rehearses slow, flaky and failing tasks.

use std::time::Duration;

use domain::workflow::TaskKind;
use domain::workflow::catalogue::{SIMULATED_DELAY_MS_MAX, Simulation};
use domain::{Code, OperationError};
use serde::{Deserialize, Serialize};

use crate::params::Text;
use crate::runtime::{OpFuture, Operation, TaskContext, check_dependencies, target_error};

/// Each dependency gets this long to answer a probe.
const PROBE_TIMEOUT_MS: u64 = 2_000;

pub struct Probe {
    pub agent: String,
}

/// `probe {database?, simulate?}`. Besides the target, a probe can be
/// told to simulate work and failures: this is how drills (and the tests)
/// rehearse slow, flaky and failing tasks through the real runtime.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeParams {
    pub database: Option<Text>,
    pub simulate: Option<Simulation>,
}

#[derive(Debug, Serialize)]
struct ProbeResult<'a> {
    agent: &'a str,
    attempt: u32,
    postgres_ms: f64,
    nats_ms: f64,
    target: Option<&'a str>,
    target_ms: Option<f64>,
}

impl Operation for Probe {
    type Params = ProbeParams;

    fn read_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, task: &'a TaskContext, params: ProbeParams) -> OpFuture<'a> {
        Box::pin(async move {
            let simulation = params.simulate.unwrap_or_default();
            if simulation.delay_ms > SIMULATED_DELAY_MS_MAX {
                return Err(OperationError::invalid_argument(format!(
                    "parameter 'simulate': delay_ms {} is more than {SIMULATED_DELAY_MS_MAX}",
                    simulation.delay_ms
                )));
            }
            let (postgres_ms, nats_ms) = check_dependencies(&task.deps, PROBE_TIMEOUT_MS)
                .await
                .map_err(OperationError::unavailable)?;
            let target = params.database.as_deref();
            let target_ms = match target {
                Some(name) => Some(
                    task.deps
                        .targets
                        .ping(&self.agent, name)
                        .await
                        .map_err(target_error)?,
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
                return Err(OperationError::new(
                    simulation.code.unwrap_or(Code::Unavailable),
                    format!("simulated failure of attempt {attempt}"),
                ));
            }
            serde_json::to_value(ProbeResult {
                agent: &self.agent,
                attempt,
                postgres_ms,
                nats_ms,
                target,
                target_ms,
            })
            .map_err(|e| OperationError::internal(e.to_string()))
        })
    }
}
