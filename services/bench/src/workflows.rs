//! Workflow benchmarks: a five-task DAG of `probe` tasks, a → {b, c, d} → e
//! on five agents (a critical path of three), run through
//! `Workflows.Execute` with `wait`: one at a time (`workflow_latency`) and
//! many in flight (`workflow_throughput`).
//!
//! The baseline, `critical_path_commits`, is what the critical path cannot
//! do without, done directly against the same server and NATS: three
//! sequential steps, each one event appended through the server's
//! EventStore (a durable record of the step) and one JetStream round trip
//! (publish, await the ack, receive it through a pull consumer: the
//! command to the next agent).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use api::proto;
use api::proto::event_store_client::EventStoreClient;
use api::proto::workflows_client::WorkflowsClient;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use event_store::clock::now_us;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::read_models::call;
use crate::{
    Args, ScratchDb, Serve, ServerProcess, median, nats_url, one_event, percentiles, print, round, round2,
};

/// The plan's agents, task a to e: every task on an agent of its own.
const PLAN_AGENTS: [&str; 5] = ["backup", "schema", "integrity", "cache", "monitoring"];
const PLAN_TASKS: usize = PLAN_AGENTS.len();
/// Tasks one after another on the plan's longest path (a, one of b/c/d, e).
const CRITICAL_PATH_STEPS: usize = 3;
/// How long Execute may wait for a workflow; the call itself gets
/// `call`'s 60 s, so the server's DEADLINE_EXCEEDED comes first.
const EXECUTE_WAIT_MS: u64 = 50_000;
/// Longest wait for each NATS call of the baseline.
const NATS_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for the plan's agents to be ready after the start.
const AGENTS_READY_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for one throughput run.
const THROUGHPUT_LIMIT: Duration = Duration::from_secs(900);
/// Baseline runs per measured workflow in workflow_throughput: the
/// baseline is over ten times faster, and as many runs as workflows would
/// be timed over a fraction of a second.
const BASELINE_RUNS_PER_WORKFLOW: usize = 10;
/// Workflows whose events are read back for the phase breakdown at most.
const PHASE_WORKFLOWS_MAX: usize = 10_000;
const WORKFLOW_EVENTS: &str = "SELECT stream_id, event_type, \
    (extract(epoch FROM created_at) * 1000)::float8 \
    FROM events WHERE stream_id = ANY($1) ORDER BY stream_id, event_version";

/// Both benchmarks on one server, latency first (on a server that has run
/// nothing yet). The relay, projections and the cache are off: the figures
/// are the workflow path's, not shared on two cores with publishing every
/// event or projecting it.
pub(crate) async fn run(args: &Args, db: &ScratchDb) -> anyhow::Result<()> {
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    let mut server = ServerProcess::start(
        db,
        Serve {
            workflows: true,
            ..Serve::EVENT_STORE
        },
    )?;
    let outcome = async {
        let in_flight = if wanted("workflow_throughput") {
            args.workflows_in_flight
        } else {
            1
        };
        let channels = server.channels(in_flight, args.connections).await?;
        wait_agents_ready(&mut server).await?;
        let js = jetstream::new(async_nats::connect(nats_url()).await?);
        let stream = js
            .create_stream(stream::Config {
                name: db.bench_stream(),
                subjects: vec![format!("{}.bench.>", db.subject_prefix())],
                // As the agents' tasks stream: on disk, gone once acked.
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("creating JetStream stream {}: {e}", db.bench_stream()))?;
        let mut paths = Vec::with_capacity(channels.len());
        for (i, channel) in channels.iter().enumerate() {
            paths.push(CriticalPath::new(channel.clone(), &js, &stream, db, i).await?);
        }
        if wanted("workflow_latency") {
            latency(args, db, &server, &channels[0], &mut paths[0]).await?;
        }
        if wanted("workflow_throughput") {
            throughput(args, &server, &channels, paths).await?;
        }
        anyhow::Ok(())
    }
    .await;
    server.stop();
    outcome
}

/// p50/p99 of one workflow at a time, against one baseline run at a time.
async fn latency(
    args: &Args,
    db: &ScratchDb,
    server: &ServerProcess,
    channel: &Channel,
    path: &mut CriticalPath,
) -> anyhow::Result<()> {
    let mut client = WorkflowsClient::new(channel.clone());
    let plan = plan_json();
    eprintln!(
        "workflow_latency: warm-up, {} workflows and {} baseline runs",
        args.workflow_warm_up, args.workflow_warm_up
    );
    for _ in 0..args.workflow_warm_up {
        execute(&mut client, &plan).await?;
        path.run().await?;
    }
    let probes_before = server
        .metrics()
        .await?
        .histogram_totals("dbswarm_agent_task_seconds");
    eprintln!(
        "workflow_latency: {} workflows of {PLAN_TASKS} probe tasks (critical path {CRITICAL_PATH_STEPS}), \
         one at a time, alternating with a baseline run",
        args.workflows
    );
    // Alternating one for one: this machine's speed drifts within a
    // minute, so both figures see the same machine.
    let (mut timed, mut steps) = (
        Vec::with_capacity(args.workflows),
        Vec::with_capacity(args.workflows),
    );
    for _ in 0..args.workflows {
        timed.push(timed_execute(&mut client, &plan).await?);
        steps.push(path.run().await?);
    }
    let probes_after = server
        .metrics()
        .await?
        .histogram_totals("dbswarm_agent_task_seconds");
    let probe_mean_ms = mean_ms(probes_after, probes_before);
    let phases = phases(db, &timed).await?;

    let workflow = percentiles(timed.iter().map(|t| t.ms).collect());
    let baseline = percentiles(steps.iter().map(|s| s.total_ms).collect());
    let append = percentiles(steps.iter().map(|s| s.append_ms).collect());
    let jetstream = percentiles(steps.iter().map(|s| s.jetstream_ms).collect());
    let ratio = workflow.p50_ms / baseline.p50_ms.max(0.01);
    print(json!({
        "name": "critical_path_commits", "value": baseline.p50_ms, "unit": "ms",
        "p50_ms": baseline.p50_ms, "p99_ms": baseline.p99_ms, "runs": baseline.count,
        "steps": CRITICAL_PATH_STEPS,
        // Per run (the three steps together): the appends, the JetStream
        // round trips.
        "append_p50_ms": append.p50_ms, "jetstream_p50_ms": jetstream.p50_ms,
    }));
    print(json!({
        "name": "workflow_latency", "value": workflow.p50_ms, "unit": "ms",
        "p50_ms": workflow.p50_ms, "p99_ms": workflow.p99_ms, "workflows": workflow.count,
        "tasks": PLAN_TASKS, "critical_path": CRITICAL_PATH_STEPS,
        "baseline_name": "critical_path_commits", "baseline_value": baseline.p50_ms,
        "baseline_p50_ms": baseline.p50_ms, "baseline_p99_ms": baseline.p99_ms,
        "ratio": round2(ratio),
        "target_ratio_max": 3, "target_p99_ms": 250,
        "target_met": ratio <= 3.0 && workflow.p99_ms < 250.0,
        // Where a workflow's time goes, from its events' commit times.
        "phases_p50_ms": phases.p50_ms, "appends_per_workflow_p50": phases.appends_p50,
        "agent_probe_mean_ms": probe_mean_ms,
        "server_rss_mb_max": server.peak_rss_mb(),
    }));
    Ok(())
}

/// Workflows/s with `--workflows-in-flight` clients each running Execute
/// (wait) back to back, against as many loops of the baseline's three
/// steps; alternating rounds, medians.
async fn throughput(
    args: &Args,
    server: &ServerProcess,
    channels: &[Channel],
    paths: Vec<CriticalPath>,
) -> anyhow::Result<()> {
    let plan = Arc::new(plan_json());
    let total = args.throughput_workflows;
    let baseline_runs = total * BASELINE_RUNS_PER_WORKFLOW;
    let warm_up = (total / 10).max(channels.len());
    let run_workflows = |count: usize| {
        let clients = channels.iter().cloned().map(WorkflowsClient::new).collect();
        let plan = plan.clone();
        closed_loops(clients, count, move |mut client| {
            let plan = plan.clone();
            async move {
                execute(&mut client, &plan).await?;
                anyhow::Ok(client)
            }
        })
    };
    let run_paths = |paths: Vec<CriticalPath>, count: usize| {
        closed_loops(paths, count, |mut path| async move {
            path.run().await?;
            anyhow::Ok(path)
        })
    };
    eprintln!(
        "workflow_throughput: warm-up, {warm_up} workflows and baseline runs, {} in flight",
        channels.len()
    );
    run_workflows(warm_up).await?;
    let (mut paths, _) = run_paths(paths, warm_up * BASELINE_RUNS_PER_WORKFLOW).await?;
    let (mut baselines, mut throughputs) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        eprintln!(
            "round {round}: baseline, {baseline_runs} runs of {CRITICAL_PATH_STEPS} append + JetStream steps, {} in flight",
            channels.len()
        );
        let (returned, rate) = run_paths(paths, baseline_runs).await?;
        paths = returned;
        baselines.push(rate);
        eprintln!(
            "round {round}: dbswarm, {total} workflows of {PLAN_TASKS} probe tasks, {} in flight",
            channels.len()
        );
        throughputs.push(run_workflows(total).await?.1);
    }
    let baseline = median(&baselines);
    let throughput = median(&throughputs);
    print(json!({
        "name": "critical_path_commits_throughput", "value": round2(baseline), "unit": "runs/s",
        "in_flight": channels.len(), "runs": baseline_runs, "steps": CRITICAL_PATH_STEPS,
        "rounds": baselines.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
    }));
    print(json!({
        "name": "workflow_throughput", "value": round2(throughput), "unit": "workflows/s",
        "in_flight": channels.len(), "workflows": total, "tasks": PLAN_TASKS,
        "tasks_per_s": round(throughput * PLAN_TASKS as f64),
        "rounds": throughputs.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "baseline_name": "critical_path_commits_throughput", "baseline_value": round2(baseline),
        "ratio": round2(throughput / baseline),
        "server_rss_mb_max": server.peak_rss_mb(),
    }));
    Ok(())
}

/// a → {b, c, d} → e, probes with no `simulate`: they answer at once (after
/// their PostgreSQL and NATS round trips).
fn plan_json() -> String {
    let task = |i: usize, dependencies: &[&str]| {
        json!({"id": task_id(i), "agent": PLAN_AGENTS[i], "operation": "probe",
               "dependencies": dependencies, "params": {}})
    };
    let tasks = vec![
        task(0, &[]),
        task(1, &["a"]),
        task(2, &["a"]),
        task(3, &["a"]),
        task(4, &["b", "c", "d"]),
    ];
    json!({"name": "bench: five probes, critical path three", "tasks": tasks}).to_string()
}

fn task_id(i: usize) -> String {
    ((b'a' + i as u8) as char).to_string()
}

/// Execute with wait; an error unless the workflow completed.
async fn execute(client: &mut WorkflowsClient<Channel>, plan: &str) -> anyhow::Result<proto::Workflow> {
    let request = proto::ExecuteRequest {
        request: Some(proto::execute_request::Request::PlanJson(plan.to_owned())),
        wait: true,
        wait_timeout_ms: EXECUTE_WAIT_MS,
        ..Default::default()
    };
    let response = call("Workflows.Execute", client.execute(request)).await?;
    let workflow = response
        .workflow
        .context("Workflows.Execute answered without a workflow")?;
    if workflow.status != "completed" {
        bail!(
            "workflow {} ended {}: {}",
            response.workflow_id,
            workflow.status,
            workflow.summary
        );
    }
    Ok(workflow)
}

/// One workflow's latency, and its send and answer times on the wall
/// clock (which PostgreSQL's commit times share, on this one machine).
struct Timed {
    ms: f64,
    workflow_id: String,
    sent_wall_ms: f64,
    answered_wall_ms: f64,
}

async fn timed_execute(client: &mut WorkflowsClient<Channel>, plan: &str) -> anyhow::Result<Timed> {
    let sent_wall_ms = wall_ms();
    let started = Instant::now();
    let workflow = execute(client, plan).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(Timed {
        ms,
        workflow_id: workflow.workflow_id,
        sent_wall_ms,
        answered_wall_ms: wall_ms(),
    })
}

fn wall_ms() -> f64 {
    now_us() as f64 / 1000.0
}

struct Phases {
    p50_ms: Value,
    appends_p50: f64,
}

/// Where the time of each measured workflow went, from its events' commit
/// times (`created_at`, the start of the append's statement): each gap
/// between consecutive events is charged to the later event's type, the
/// send → first event and last event → answer gaps to `start` and
/// `to_answer`. Medians over workflows of each one's sums.
async fn phases(db: &ScratchDb, timed: &[Timed]) -> anyhow::Result<Phases> {
    let timed = &timed[..timed.len().min(PHASE_WORKFLOWS_MAX)];
    let pool = PgPoolOptions::new().max_connections(1).connect(&db.url).await?;
    let streams: Vec<String> = timed
        .iter()
        .map(|t| format!("workflow-{}", t.workflow_id))
        .collect();
    let rows: Vec<(String, String, f64)> = sqlx::query_as(WORKFLOW_EVENTS)
        .bind(&streams)
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    let mut by_stream: HashMap<&str, Vec<(&str, f64)>> = HashMap::with_capacity(streams.len());
    for (stream_id, event_type, at_ms) in &rows {
        by_stream.entry(stream_id).or_default().push((event_type, *at_ms));
    }
    const NAMES: [&str; 5] = [
        "start",
        "to_task_started",
        "to_task_succeeded",
        "other_events",
        "to_answer",
    ];
    let mut sums: Vec<Vec<f64>> = vec![Vec::with_capacity(timed.len()); NAMES.len()];
    let mut appends = Vec::with_capacity(timed.len());
    for (t, stream_id) in timed.iter().zip(&streams) {
        let Some(events) = by_stream.get(stream_id.as_str()) else {
            bail!("no events of {stream_id} in the store");
        };
        let mut sum = [0.0; NAMES.len()];
        let mut previous = t.sent_wall_ms;
        let mut statements = 0;
        for (i, &(event_type, at_ms)) in events.iter().enumerate() {
            let phase = match (i, event_type) {
                (0, _) => 0,
                (_, "TaskStarted") => 1,
                (_, "TaskSucceeded") => 2,
                _ => 3,
            };
            // Events of one append share the statement's start time.
            if i == 0 || at_ms != previous {
                statements += 1;
            }
            sum[phase] += at_ms - previous;
            previous = at_ms;
        }
        sum[4] += t.answered_wall_ms - previous;
        for (all, one) in sums.iter_mut().zip(sum) {
            all.push(one);
        }
        appends.push(statements as f64);
    }
    let p50_ms: serde_json::Map<String, Value> = NAMES
        .iter()
        .zip(&sums)
        .map(|(name, values)| ((*name).to_owned(), json!(round2(median(values)))))
        .collect();
    Ok(Phases {
        p50_ms: Value::Object(p50_ms),
        appends_p50: median(&appends),
    })
}

/// Mean ms of a histogram's new samples between two (sum s, count) totals.
fn mean_ms(after: (f64, f64), before: (f64, f64)) -> f64 {
    let count = after.1 - before.1;
    if count > 0.0 {
        round2((after.0 - before.0) / count * 1000.0)
    } else {
        0.0
    }
}

/// Waits (bounded) until every agent of the plan reports ready: before
/// that, Execute waits for them (the health gate) and the first figures
/// would include the agents' start.
async fn wait_agents_ready(server: &mut ServerProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + AGENTS_READY_LIMIT;
    loop {
        server.check_running()?;
        let metrics = server.metrics().await?;
        let waiting: Vec<&str> = PLAN_AGENTS
            .into_iter()
            .filter(|agent| metrics.value(&format!("dbswarm_agent_ready{{agent=\"{agent}\"}}")) < 1.0)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "agents not ready {} s after the start: {}",
                AGENTS_READY_LIMIT.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run's time, and the part of it in appends and in JetStream.
struct StepTimes {
    total_ms: f64,
    append_ms: f64,
    jetstream_ms: f64,
}

/// One client's copy of the baseline: its own event stream, subject and
/// pull consumer, so that concurrent copies never share work.
struct CriticalPath {
    events: EventStoreClient<Channel>,
    js: jetstream::Context,
    stream_id: String,
    subject: String,
    /// The consumer's continuous pull (as the agents' fetch loop).
    messages: pull::Stream,
    sent: usize,
}

impl CriticalPath {
    async fn new(
        channel: Channel,
        js: &jetstream::Context,
        stream: &stream::Stream,
        db: &ScratchDb,
        i: usize,
    ) -> anyhow::Result<CriticalPath> {
        let subject = format!("{}.bench.{i}", db.subject_prefix());
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("creating a consumer of {subject}: {e}"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| anyhow!("pulling from {subject}: {e}"))?;
        Ok(CriticalPath {
            events: EventStoreClient::new(channel),
            js: js.clone(),
            stream_id: format!("crit-{}-{i}", Uuid::new_v4().simple()),
            subject,
            messages,
            sent: 0,
        })
    }

    /// The three steps, one after another.
    async fn run(&mut self) -> anyhow::Result<StepTimes> {
        let started = Instant::now();
        let (mut append, mut jetstream) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..CRITICAL_PATH_STEPS {
            let step = Instant::now();
            self.append().await?;
            let appended = Instant::now();
            self.round_trip().await?;
            append += appended - step;
            jetstream += appended.elapsed();
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok(StepTimes {
            total_ms: ms(started.elapsed()),
            append_ms: ms(append),
            jetstream_ms: ms(jetstream),
        })
    }

    async fn append(&mut self) -> anyhow::Result<()> {
        self.sent += 1;
        let request = proto::AppendToStreamRequest {
            stream_id: self.stream_id.clone(),
            expected_version: None,
            events: vec![one_event(self.sent)],
        };
        call("EventStore.AppendToStream", self.events.append_to_stream(request)).await?;
        Ok(())
    }

    /// Publish with a message id (as task commands are), await the ack,
    /// receive the message through the pull consumer and ack it.
    async fn round_trip(&mut self) -> anyhow::Result<()> {
        let id = Uuid::new_v4().to_string();
        let message = PublishMessage::build()
            .payload(format!(r#"{{"step":{}}}"#, self.sent).into_bytes().into())
            .message_id(&id);
        let published = async {
            self.js
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| anyhow!("publishing to {}: {e}", self.subject))?
                .await
                .map_err(|e| anyhow!("the ack of a publish to {}: {e}", self.subject))
        };
        tokio::time::timeout(NATS_LIMIT, published)
            .await
            .with_context(|| format!("no JetStream ack within {} s", NATS_LIMIT.as_secs()))??;
        let received = tokio::time::timeout(NATS_LIMIT, self.messages.next())
            .await
            .with_context(|| {
                format!(
                    "nothing received on {} within {} s",
                    self.subject,
                    NATS_LIMIT.as_secs()
                )
            })?
            .with_context(|| format!("the pull of {} ended", self.subject))?
            .map_err(|e| anyhow!("receiving on {}: {e}", self.subject))?;
        let received_id = received
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        if received_id.as_deref() != Some(id.as_str()) {
            bail!(
                "received {received_id:?} on {}, not the message {id} just published",
                self.subject
            );
        }
        received
            .ack()
            .await
            .map_err(|e| anyhow!("acking on {}: {e}", self.subject))
    }
}

/// Closed loop: one task per worker, each taking the next of `total` jobs
/// until none is left. Returns the workers and the jobs/s.
async fn closed_loops<W, F, Fut>(workers: Vec<W>, total: usize, job: F) -> anyhow::Result<(Vec<W>, f64)>
where
    W: Send + 'static,
    F: Fn(W) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<W>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in workers {
        let (job, next) = (job.clone(), next.clone());
        tasks.spawn(async move {
            let mut worker = worker;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                worker = job(worker).await?;
            }
            anyhow::Ok(worker)
        });
    }
    let finished = tokio::time::timeout(THROUGHPUT_LIMIT, async {
        let mut workers = Vec::with_capacity(tasks.len());
        while let Some(done) = tasks.join_next().await {
            workers.push(done??);
        }
        anyhow::Ok(workers)
    })
    .await
    .with_context(|| format!("{total} jobs took longer than {} s", THROUGHPUT_LIMIT.as_secs()))??;
    Ok((finished, total as f64 / started.elapsed().as_secs_f64()))
}
