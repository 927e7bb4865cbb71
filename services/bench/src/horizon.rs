//! `subscribe_beside_long_transaction`: a subscriber's delivery latency
//! while a transaction in ANOTHER database of the same PostgreSQL cluster
//! holds a transaction id open for the whole window (a batch job in the
//! application's database), against the same run with no such
//! transaction. The server runs at its defaults (relay and projections
//! on); a projection's lag after the last append is reported too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use api::proto;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::{
    Args, Latencies, ScratchDb, Serve, ServerProcess, one_event, open_loop, percentiles, print, round2,
};

/// Appends per second during each window: steady, well below capacity, so
/// the figure is the horizon's and not the load's.
const RATE_PER_S: f64 = 100.0;

pub async fn subscribe_beside_long_transaction(
    args: &Args,
    db: &ScratchDb,
    admin_url: &str,
) -> anyhow::Result<()> {
    let mut server = ServerProcess::start(
        db,
        Serve {
            relay: true,
            projections: true,
            ..Serve::EVENT_STORE
        },
    )?;
    let outcome = async {
        let client = server.clients(1, 1).await?.remove(0);
        let seconds = args.horizon_seconds;
        eprintln!("horizon: baseline, {RATE_PER_S} appends/s for {seconds} s, nothing else running");
        let (baseline, _) = window(&client, db, "quiet", seconds).await?;
        let elsewhere = ScratchDb::create(admin_url).await?;
        let result = async {
            let mut foreign = PgConnection::connect(&elsewhere.url).await?;
            sqlx::query("BEGIN").execute(&mut foreign).await?;
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&mut foreign)
                .await?;
            eprintln!("horizon: the same, while another database's transaction holds an xid");
            let measured = window(&client, db, "beside", seconds).await?;
            sqlx::query("COMMIT").execute(&mut foreign).await?;
            anyhow::Ok(measured)
        }
        .await;
        elsewhere.drop_database(admin_url).await?;
        let (beside, projection_lag_ms) = result?;
        print(json!({
            "name": "subscribe_beside_long_transaction", "value": beside.p99_ms, "unit": "ms",
            "p50_ms": beside.p50_ms, "p99_ms": beside.p99_ms, "events": beside.count,
            "rate_per_s": RATE_PER_S, "foreign_transaction_s": seconds, "target_p99_ms": 100,
            "projection_caught_up_ms": projection_lag_ms,
            "baseline_name": "subscribe_quiet", "baseline_value": baseline.p99_ms,
            "baseline_p50_ms": baseline.p50_ms,
            "ratio": round2(beside.p99_ms / baseline.p99_ms.max(0.01)),
            "server_rss_mb_max": server.peak_rss_mb(),
        }));
        anyhow::Ok(())
    }
    .await;
    server.stop();
    outcome
}

/// Appends to stream `<label>-<run>` at RATE_PER_S for `seconds` while a
/// subscriber to that stream records when each event arrives: the latency
/// from each append's answer to its arrival, and the ms from the last
/// answer until the stream_catalogue read model shows the last version.
async fn window(
    client: &api::proto::event_store_client::EventStoreClient<tonic::transport::Channel>,
    db: &ScratchDb,
    label: &str,
    seconds: u64,
) -> anyhow::Result<(Latencies, f64)> {
    let stream_id = format!("{label}-{}", Uuid::new_v4().simple());
    let total = (RATE_PER_S * seconds as f64) as usize;
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut subscription = client
        .clone()
        .subscribe_to_stream(proto::SubscribeToStreamRequest {
            stream_id: stream_id.clone(),
            from_version: 0,
        })
        .await?
        .into_inner();
    let receiver = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            for _ in 0..total {
                let Ok(Some(message)) = subscription.message().await else {
                    break;
                };
                if let Some(event) = message.event {
                    arrived
                        .lock()
                        .expect("lock")
                        .insert(event.event_id, Instant::now());
                }
            }
        })
    };
    let answered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let answered = answered.clone();
        let client = client.clone();
        let stream_id = stream_id.clone();
        open_loop(RATE_PER_S, seconds, 64, move |k| {
            let mut client = client.clone();
            let event = one_event(k);
            let id = event.event_id.clone();
            let answered = answered.clone();
            let request = proto::AppendToStreamRequest {
                stream_id: stream_id.clone(),
                expected_version: None,
                events: vec![event],
            };
            async move {
                client.append_to_stream(request).await?;
                answered.lock().expect("lock").insert(id, Instant::now());
                Ok(())
            }
        })
        .await?;
    }
    let last_answer = Instant::now();
    let projection_ms = projection_caught_up_ms(db, &stream_id, total, last_answer).await?;
    tokio::time::timeout(Duration::from_secs(60), receiver)
        .await
        .context("the subscriber did not get every event within 60 s of the last append")??;
    let answered = answered.lock().expect("lock");
    let arrived = arrived.lock().expect("lock");
    let samples: Vec<f64> = answered
        .iter()
        .filter_map(|(id, at)| {
            arrived
                .get(id)
                .map(|got| got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    if samples.len() != total {
        bail!("{} of {total} events reached the subscriber", samples.len());
    }
    Ok((percentiles(samples), projection_ms))
}

/// Polls the built-in stream_catalogue read model until it shows the
/// stream's last version; ms since `since`. Bounded: 60 s.
async fn projection_caught_up_ms(
    db: &ScratchDb,
    stream_id: &str,
    version: usize,
    since: Instant,
) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(&db.url).await?;
    while since.elapsed() < Duration::from_secs(60) {
        let shown: Option<i64> =
            sqlx::query_scalar("SELECT version FROM read_models.stream_catalogue WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_optional(&mut conn)
                .await?
                .flatten();
        if shown == Some(version as i64) {
            return Ok(round2(since.elapsed().as_secs_f64() * 1000.0));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("stream_catalogue did not reach version {version} of {stream_id} within 60 s")
}
