//! Every metric the server exports: the one list that `/metrics`, its
//! `# HELP` lines and README.md's table of metrics are checked against
//! (tests/tests/integration/metrics.rs).
//!
//! A metric exists in the Prometheus output only once it is registered,
//! and an alert cannot fire on a metric that does not exist: `register`
//! (called before anything else at start) registers every series whose
//! labels are known at start, so each shows its value (0 until something
//! happens) from the first scrape.

use Kind::{Counter, Gauge, Histogram};
use Series::{FirstSample, Fixed, PerAgent, PerProjection, Single};

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As in `# TYPE` lines and README.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Which series of a metric exist from start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// One series without labels, registered by `register`.
    Single,
    /// Exactly these label values (of the metric's one label), registered
    /// by `register`.
    Fixed(&'static [&'static str]),
    /// One series per projection, registered when the projections' status
    /// is first published (at start, when `projections_enabled`).
    PerProjection,
    /// One series per agent, registered when the agents are set up (at
    /// start).
    PerAgent,
    /// Labelled by what happens (a method and status code, an operation
    /// and result): a series appears with its first sample.
    FirstSample,
}

impl Series {
    /// README.md's "from start" column.
    pub fn readme_text(self) -> &'static str {
        match self {
            Series::Single | Series::Fixed(_) => "yes",
            Series::PerProjection => "each projection",
            Series::PerAgent => "each agent",
            Series::FirstSample => "first sample",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub series: Series,
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    series: Series,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        series,
        help,
    }
}

/// The metrics of a server, in README.md's order.
#[rustfmt::skip]
pub const METRICS: &[Metric] = &[
    metric("dbswarm_grpc_requests_total", Counter, &["method", "code"], FirstSample, "gRPC requests answered, by method and status code"),
    metric("dbswarm_grpc_request_duration_seconds", Histogram, &["method"], FirstSample, "gRPC request latency"),
    metric("dbswarm_append_batch_requests", Histogram, &[], Single, "append requests per group commit"),
    metric("dbswarm_append_batch_events", Histogram, &[], Single, "events per group commit"),
    metric("dbswarm_append_optimistic_conflicts_total", Counter, &[], Single, "batches whose optimistic write failed and went the careful way"),
    metric("dbswarm_append_race_fallbacks_total", Counter, &[], Single, "batches retried one request per transaction after losing a race"),
    metric("dbswarm_db_pool_connections", Gauge, &[], Single, "connections in the PostgreSQL pool"),
    metric("dbswarm_db_pool_connections_idle", Gauge, &[], Single, "idle connections in the PostgreSQL pool"),
    metric("dbswarm_relay_leader", Gauge, &[], Single, "1 while this server leads the relay"),
    metric("dbswarm_relay_events_total", Counter, &[], Single, "events the relay published to JetStream"),
    metric("dbswarm_relay_errors_total", Counter, &[], Single, "relay failures (it retries with backoff)"),
    metric("dbswarm_relay_reconciled_total", Counter, &[], Single, "events republished by reconciliation because NATS lacked them"),
    metric("dbswarm_relay_lag_events", Gauge, &[], Single, "events stored but not yet acknowledged by JetStream (leader only; 0 elsewhere)"),
    metric("dbswarm_relay_lag_seconds", Gauge, &[], Single, "age of the oldest event not yet acknowledged by JetStream (leader only; 0 elsewhere)"),
    metric("dbswarm_horizon_oldest_transaction_seconds", Gauge, &[], Single, "age of the transaction holding the $all horizon back (leader only; 0 elsewhere)"),
    metric("dbswarm_projection_lag_events", Gauge, &["projection"], PerProjection, "events of the projection's types not yet applied"),
    metric("dbswarm_projection_lag_seconds", Gauge, &["projection"], PerProjection, "age of the oldest event not yet applied"),
    metric("dbswarm_projection_position", Gauge, &["projection"], PerProjection, "global position of the projection's checkpoint"),
    metric("dbswarm_projection_state", Gauge, &["projection", "state"], PerProjection, "1 for the projection's current state"),
    metric("dbswarm_projection_events_applied_total", Counter, &["projection"], PerProjection, "events applied by this server's runners"),
    metric("dbswarm_projection_batch_seconds", Histogram, &["projection"], PerProjection, "time of one applied page (one transaction)"),
    metric("dbswarm_cache_requests_total", Counter, &["result"], Fixed(&["hit", "miss", "bypass", "error"]), "read-model queries by cache outcome: hit, miss, bypass (degraded), error"),
    metric("dbswarm_cache_op_seconds", Histogram, &["op"], FirstSample, "Redis round trips"),
    metric("dbswarm_cache_invalidations_total", Counter, &[], Single, "cache tags invalidated"),
    metric("dbswarm_cache_degraded", Gauge, &[], Single, "1 while the read cache bypasses Redis (unreachable, failing or too slow)"),
    metric("dbswarm_snapshot_loads_total", Counter, &["source"], Fixed(&["snapshot", "replay"]), "aggregate loads: from a snapshot, or replayed from the first event"),
    metric("dbswarm_snapshots_saved_total", Counter, &[], Single, "snapshots saved"),
    metric("dbswarm_workflow_driver", Gauge, &[], Single, "1 while this server drives workflows (timeouts, retries, resends)"),
    metric("dbswarm_workflow_commands_sent_total", Counter, &[], Single, "task commands sent to agents"),
    metric("dbswarm_agent_ready", Gauge, &["agent"], PerAgent, "1 while the agent is ready on this server"),
    metric("dbswarm_agent_tasks_total", Counter, &["agent", "operation", "result"], FirstSample, "tasks finished, by result: succeeded, failed"),
    metric("dbswarm_agent_task_seconds", Histogram, &["agent", "operation"], FirstSample, "task run time"),
    metric("dbswarm_agent_tasks_cancelled_total", Counter, &["agent", "operation"], FirstSample, "tasks stopped because their workflow no longer waits for them"),
    metric("dbswarm_agent_stale_commands_total", Counter, &["agent"], PerAgent, "task commands dropped because the workflow waits for another attempt"),
    metric("dbswarm_scheduler_leader", Gauge, &[], Single, "1 while this server fires schedules"),
    metric("dbswarm_schedule_firings_total", Counter, &[], Single, "schedule runs fired"),
    metric("dbswarm_schedule_runs_skipped_total", Counter, &[], Single, "missed schedule runs recorded as skipped"),
    metric("dbswarm_schedule_start_failures_total", Counter, &[], Single, "fired runs whose workflow could not be started"),
    metric("dbswarm_planner_llm_failures_total", Counter, &[], Single, "plain-English requests the LLM planner failed on (the rules answered)"),
];

/// Describes every metric and registers each series known at start (at
/// 0: a series already registered, by an earlier server of this process,
/// keeps its value). Call once the recorder is installed.
pub fn register() {
    for metric in METRICS {
        describe(metric);
        match metric.series {
            Single => register_series(metric, &[]),
            Fixed(values) => {
                if let [label] = metric.labels {
                    for value in values {
                        register_series(metric, &[(label, value)]);
                    }
                }
            }
            PerProjection | PerAgent | FirstSample => {}
        }
    }
}

fn describe(metric: &Metric) {
    match metric.kind {
        Counter => metrics::describe_counter!(metric.name, metric.help),
        Gauge => metrics::describe_gauge!(metric.name, metric.help),
        Histogram => metrics::describe_histogram!(metric.name, metric.help),
    }
}

/// Registration alone creates the series; nothing is recorded.
fn register_series(metric: &Metric, labels: &[(&'static str, &'static str)]) {
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, *v)).collect();
    match metric.kind {
        Counter => drop(metrics::counter!(metric.name, labels)),
        Gauge => drop(metrics::gauge!(metric.name, labels)),
        Histogram => drop(metrics::histogram!(metric.name, labels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fixed_series_have_one_label() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric is listed twice");
        for metric in METRICS {
            assert!(metric.name.starts_with("dbswarm_"), "{}", metric.name);
            if let Fixed(_) = metric.series {
                assert_eq!(metric.labels.len(), 1, "{}", metric.name);
            }
            if metric.series == Single {
                assert!(metric.labels.is_empty(), "{}", metric.name);
            } else {
                assert!(!metric.labels.is_empty(), "{}", metric.name);
            }
            if metric.kind == Counter {
                assert!(metric.name.ends_with("_total"), "{}", metric.name);
            }
        }
    }
}
