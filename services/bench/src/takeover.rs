//! `takeover`: how long after a server is killed with SIGKILL another
//! server runs the task it was working on, at the default
//! `agent_ack_wait_ms`; the baseline is the same with the old default of
//! 30 s, in alternating rounds of the same run.
//!
//! Each round on a database of its own: a first server starts a workflow
//! of one long `probe` task and works on it; a second server starts and
//! its agent is ready; a while later (`settle`) the first is killed with
//! SIGKILL. The figure runs from the kill
//! to the commit of the progress report the second server's run of the
//! task makes as it starts (the probe reports progress as its simulated
//! work begins). Both clocks are this machine's (the bench and PostgreSQL
//! run on one host).

use std::time::{Duration, Instant};

use anyhow::bail;
use api::proto;
use api::proto::workflows_client::WorkflowsClient;
use event_store::clock::now_us;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::read_models::call;
use crate::{Args, ScratchDb, Serve, ServerProcess, median, nats_url, print, round, round2};

/// The ack wait before it was shortened: the baseline.
const OLD_DEFAULT_ACK_WAIT_MS: u64 = 30_000;
/// The agent and the task the workflow runs.
const AGENT: &str = "schema";
const TASK: &str = "long";
/// Longer than any round's takeover: the task is still running when the
/// first server is killed, and when the second starts it.
const TASK_DELAY_MS: u64 = 300_000;
/// Longest wait for each step (a server's agent ready, a progress report).
const STEP_LIMIT: Duration = Duration::from_secs(120);
const PROGRESS_TIMES: &str = "SELECT (extract(epoch FROM created_at) * 1000)::float8 FROM events \
    WHERE stream_id = $1 AND event_type = 'TaskProgressed' ORDER BY event_version";

pub(crate) async fn takeover(args: &Args, admin_url: &str) -> anyhow::Result<()> {
    if args.takeover_rounds == 0 {
        bail!("--takeover-rounds must be at least 1");
    }
    let (mut defaults, mut baselines) = (Vec::new(), Vec::new());
    let mut default_ack_wait_ms = 0;
    for number in 1..=args.takeover_rounds {
        for old in [false, true] {
            let ack_wait_ms = old.then_some(OLD_DEFAULT_ACK_WAIT_MS);
            let label = if old { "old default" } else { "default" };
            eprintln!("takeover round {number}: {label} agent_ack_wait_ms");
            let db = ScratchDb::create(admin_url).await?;
            let result = one_takeover(&db, ack_wait_ms).await;
            db.drop_database(admin_url).await?;
            let measured = result?;
            eprintln!(
                "  {} ms (ack wait {} ms)",
                round(measured.takeover_ms),
                measured.ack_wait_ms
            );
            if old {
                baselines.push(measured.takeover_ms);
            } else {
                defaults.push(measured.takeover_ms);
                default_ack_wait_ms = measured.ack_wait_ms;
            }
        }
    }
    let (value, baseline) = (median(&defaults), median(&baselines));
    print(json!({
        "name": "takeover", "value": round(value), "unit": "ms",
        "agent_ack_wait_ms": default_ack_wait_ms,
        "rounds": defaults.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        "baseline_name": "takeover_old_default_ack_wait", "baseline_value": round(baseline),
        "baseline_agent_ack_wait_ms": OLD_DEFAULT_ACK_WAIT_MS,
        "baseline_rounds": baselines.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        "ratio": round2(value / baseline),
    }));
    Ok(())
}

struct Measured {
    takeover_ms: f64,
    /// The ack wait in effect (the agent consumer's, as the server set it).
    ack_wait_ms: u64,
}

/// One kill and takeover; `ack_wait_ms` None: the server's default.
async fn one_takeover(db: &ScratchDb, ack_wait_ms: Option<u64>) -> anyhow::Result<Measured> {
    let env: Vec<(&str, String)> = ack_wait_ms
        .map(|ms| vec![("DBSWARM_AGENT_ACK_WAIT_MS", ms.to_string())])
        .unwrap_or_default();
    let serve = Serve {
        workflows: true,
        ..Serve::EVENT_STORE
    };
    let pool = PgPoolOptions::new().max_connections(1).connect(&db.url).await?;
    let mut first = ServerProcess::start_with(db, serve, &env)?;
    let outcome = async {
        let channel = first.channels(1, 1).await?.remove(0);
        wait_agent_ready(&mut first).await?;
        let workflow_id = start_long_task(channel).await?;
        let stream_id = format!("workflow-{workflow_id}");
        progress_report(&pool, &stream_id, 0).await?;
        let ack_wait_ms = consumer_ack_wait_ms(db).await?;
        let mut second = ServerProcess::start_with(db, serve, &env)?;
        second.channels(1, 1).await?;
        wait_agent_ready(&mut second).await?;
        tokio::time::sleep(settle(ack_wait_ms)).await;
        let killed_at_ms = now_us() as f64 / 1000.0;
        first.kill_9();
        let resumed_at_ms = progress_report(&pool, &stream_id, 1).await?;
        // Its drain would wait for the long task: nothing is left to keep.
        second.kill_9();
        anyhow::Ok(Measured {
            takeover_ms: resumed_at_ms - killed_at_ms,
            ack_wait_ms,
        })
    }
    .await;
    first.stop();
    pool.close().await;
    outcome
}

/// How long to wait between the second server's agent being ready and the
/// kill: a third of the ack wait, so that the kill comes in the steady
/// state of the first server's extensions (a kill right after the second
/// server's start measured the full ack wait every time: its consumer's
/// binding seems to restart the clock of pending messages), plus a random
/// part of the extension period, so that the rounds sample where in it a
/// crash falls.
fn settle(ack_wait_ms: u64) -> Duration {
    let period_ms = (ack_wait_ms / 3).max(1);
    let random_ms = (uuid::Uuid::new_v4().as_u128() % u128::from(period_ms)) as u64;
    Duration::from_millis(period_ms + random_ms)
}

/// Starts the workflow of one long probe task; its id.
async fn start_long_task(channel: tonic::transport::Channel) -> anyhow::Result<String> {
    let plan = json!({"name": "takeover", "tasks": [{
        "id": TASK, "agent": AGENT, "operation": "probe",
        "params": {"simulate": {"delay_ms": TASK_DELAY_MS}}}]});
    let request = proto::ExecuteRequest {
        request: Some(proto::execute_request::Request::PlanJson(plan.to_string())),
        ..Default::default()
    };
    let mut client = WorkflowsClient::new(channel);
    let started = call("Workflows.Execute", client.execute(request)).await?;
    Ok(started.workflow_id)
}

/// Waits for the task's progress report number `index` (from 0); its
/// commit time, ms since the epoch.
async fn progress_report(pool: &PgPool, stream_id: &str, index: usize) -> anyhow::Result<f64> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let times: Vec<f64> = sqlx::query_scalar(PROGRESS_TIMES)
            .bind(stream_id)
            .fetch_all(pool)
            .await?;
        if let Some(at) = times.get(index) {
            return Ok(*at);
        }
        if Instant::now() > deadline {
            bail!(
                "no progress report {} of the task within {} s",
                index + 1,
                STEP_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_agent_ready(server: &mut ServerProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_LIMIT;
    let ready = format!("dbswarm_agent_ready{{agent=\"{AGENT}\"}}");
    loop {
        server.check_running()?;
        if server.metrics().await?.value(&ready) >= 1.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "agent {AGENT} not ready {} s after the start",
                STEP_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ack wait of the agent's JetStream consumer.
async fn consumer_ack_wait_ms(db: &ScratchDb) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await?);
    let stream = js.get_stream(db.tasks_stream()).await?;
    let info = stream.consumer_info(format!("agent_{AGENT}")).await?;
    Ok(info.config.ack_wait.as_millis() as u64)
}
