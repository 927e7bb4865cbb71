//! Read-model benchmarks: rebuilding a declarative projection from stored
//! events (`projection_rebuild`), and reading its rows back by key without
//! and with the Redis query cache (`query_uncached`, `query_cached`).
//!
//! Every phase stores its `UserCreated` events first, through
//! `AppendToStream`, with a server that runs no projection (the built-in
//! read models would otherwise project the events while they are written),
//! then starts a server with projections on and waits until every read
//! model has caught up before it measures anything.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use api::proto;
use api::proto::projections_client::ProjectionsClient;
use futures_util::TryStreamExt;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    Args, Latencies, ScratchDb, Serve, ServerProcess, median, percentiles, print, redis_url, round, round2,
};

/// The read model both benchmarks use.
const READ_MODEL: &str = "user_list";
const USER_LIST_DEFINITION: &str = r#"{
  "name": "user_list",
  "key": { "column": "user_id", "type": "uuid", "path": "$.user_id" },
  "columns": { "email": "text", "name": "text" },
  "handlers": { "UserCreated": { "op": "upsert", "set": { "email": "$.email", "name": "$.name" } } }
}"#;
/// Events per AppendToStream while storing the users.
const FILL_REQUEST_EVENTS: usize = 1000;
/// Concurrent AppendToStream clients (one connection each) while storing.
const FILL_CLIENTS: usize = 4;
/// Longest wait for storing the users.
const FILL_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for the read models to catch up, and for one rebuild.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
/// Longest wait for any single gRPC call or query.
const CALL_LIMIT: Duration = Duration::from_secs(60);
/// Rows per batch of the pg_scan_upsert baseline (= the projection's
/// default batch, projection_batch_events_max).
const BASELINE_BATCH_ROWS: usize = 1000;
/// Keys the cached query benchmark warms and then asks for.
const HOT_KEYS: usize = 10_000;
/// Concurrent GetRow clients of the warming pass.
const WARM_CLIENTS: usize = 8;
/// Unmeasured closed-loop time before each query measurement (connections,
/// prepared statements, the server's definition cache).
const QUERY_WARM_UP: Duration = Duration::from_secs(1);

const BASELINE_SCAN: &str =
    "SELECT event_data FROM events WHERE event_type = 'UserCreated' ORDER BY global_position";
const BASELINE_TABLE_DROP: &str = "DROP TABLE IF EXISTS bench_user_list";
/// The shape of the projection's table: key column primary key, text columns.
const BASELINE_TABLE_CREATE: &str =
    "CREATE TABLE bench_user_list (user_id uuid PRIMARY KEY, email text, name text)";
const BASELINE_UPSERT: &str = "INSERT INTO bench_user_list (user_id, email, name) \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) \
    ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name";
const BASELINE_COUNT: &str = "SELECT count(*) FROM bench_user_list";
const POINT_SELECT: &str = "SELECT to_jsonb(t)::text FROM read_models.user_list t WHERE user_id = $1";
const READ_MODEL_COUNT: &str = "SELECT count(*) FROM read_models.user_list";
/// The projection registry as the server keeps it: read by the bench only
/// to watch a rebuild without loading the server (see `--rebuild-poll`).
const REGISTRY_POLL: &str = "SELECT p.live_generation, g.error, g.events_applied \
    FROM projections p \
    LEFT JOIN projection_generations g ON g.projection = p.name AND g.generation = $2 \
    WHERE p.name = $1";

/// Events/s of a blue/green rebuild of `user_list` from `--rebuild-events`
/// stored events, against a hand-written scan + batched upsert loop over
/// the same events into a table of the same shape, in the same database.
pub(crate) async fn projection_rebuild(args: &Args, db: &ScratchDb) -> anyhow::Result<()> {
    let events = args.rebuild_events;
    let (_, fill_rate) = store_users(db, events).await?;
    eprintln!("rebuild: starting dbswarm with projections on; waiting for every read model to catch up");
    // The cache is off: nothing here queries, and the figure should not
    // depend on Redis.
    let mut server = ServerProcess::start(
        db,
        Serve {
            projections: true,
            ..Serve::EVENT_STORE
        },
    )?;
    let outcome = async {
        let channel = server.channels(1, 1).await?.remove(0);
        let mut client = ProjectionsClient::new(channel);
        let started = Instant::now();
        define_user_list(&mut client).await?;
        wait_caught_up(&mut server, &mut client).await?;
        let catch_up_s = started.elapsed().as_secs_f64();
        eprintln!("rebuild: every read model caught up after {catch_up_s:.1} s");
        let pool = PgPoolOptions::new().max_connections(2).connect(&db.url).await?;
        let projected: i64 = sqlx::query_scalar(READ_MODEL_COUNT).fetch_one(&pool).await?;
        if projected != events as i64 {
            bail!("the first build of {READ_MODEL} holds {projected} rows, not {events}");
        }

        // Alternating rounds, medians (the machine's speed drifts). Each
        // timed phase starts from a vacuumed, checkpointed database, so
        // that neither pays for the other's dirty pages or autovacuum.
        let (mut baselines, mut rebuilds, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=args.rebuild_rounds {
            settle(&pool).await?;
            eprintln!(
                "round {round}: baseline, scan of events + one upsert statement per {BASELINE_BATCH_ROWS} rows"
            );
            let seconds = scan_upsert(&db.url, events).await?;
            baselines.push(events as f64 / seconds);
            eprintln!("round {round}: baseline took {seconds:.1} s");
            settle(&pool).await?;
            eprintln!("round {round}: dbswarm, Projections.Rebuild of {READ_MODEL}");
            let rebuilt = timed_rebuild(&mut server, &mut client, &pool, args.rebuild_poll == "grpc", events).await?;
            rebuilds.push(events as f64 / rebuilt.seconds);
            shares.push(rebuilt.apply_share);
            eprintln!("round {round}: rebuild took {:.1} s", rebuilt.seconds);
        }
        pool.close().await;
        let baseline = median(&baselines);
        let rebuild = median(&rebuilds);
        print(json!({
            "name": "pg_scan_upsert", "value": round(baseline), "unit": "events/s",
            "events": events, "batch_rows": BASELINE_BATCH_ROWS,
            "rounds": baselines.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        }));
        print(json!({
            "name": "projection_rebuild", "value": round(rebuild), "unit": "events/s",
            "events": events, "rounds": rebuilds.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            "baseline_name": "pg_scan_upsert", "baseline_value": round(baseline),
            "ratio": round2(rebuild / baseline), "target_ratio": 0.7,
            "server_rss_mb_max": server.peak_rss_mb(),
            // Share of the rebuild's time inside the runner's write
            // transactions (apply + checkpoint + commit), from the server's
            // dbswarm_projection_batch_seconds; the rest is reading pages.
            "apply_commit_share": round2(median(&shares)),
            "status_poll": args.rebuild_poll,
            "fill_events_per_s": round(fill_rate), "catch_up_s": round2(catch_up_s),
        }));
        anyhow::Ok(())
    }
    .await;
    server.stop();
    outcome
}

/// p50/p99 of `Projections.GetRow` by key at `--clients` closed-loop
/// clients over `--connections` connections: with the cache off against
/// the same SELECT straight from PostgreSQL, then with the cache on and
/// warmed against the uncached figure.
pub(crate) async fn queries(args: &Args, db: &ScratchDb) -> anyhow::Result<()> {
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    let users = args.query_users;
    let seconds = Duration::from_secs(args.latency_seconds);
    let (ids, _) = store_users(db, users).await?;

    eprintln!("queries: starting dbswarm with projections on, cache off; waiting for {READ_MODEL}");
    let mut server = ServerProcess::start(
        db,
        Serve {
            projections: true,
            ..Serve::EVENT_STORE
        },
    )?;
    let uncached = measure_uncached(args, db, &mut server, &ids).await;
    server.stop();
    let ((plain, plain_rate), (uncached, uncached_rate), uncached_rss) = uncached?;
    if wanted("query_uncached") {
        // ratio = baseline p99 / dbswarm p99: above 1 means dbswarm is
        // faster (note: append_latency's ratio runs the other way).
        print(json!({
            "name": "query_uncached", "value": uncached.p99_ms, "unit": "ms",
            "p50_ms": uncached.p50_ms, "p99_ms": uncached.p99_ms,
            "rate_per_s": round(uncached_rate), "requests": uncached.count,
            "clients": args.clients, "connections": args.connections, "rows": users,
            "baseline_name": "pg_point_select", "baseline_value": plain.p99_ms,
            "baseline_p50_ms": plain.p50_ms, "baseline_p99_ms": plain.p99_ms,
            "baseline_rate_per_s": round(plain_rate),
            "ratio": round2(plain.p99_ms / uncached.p99_ms.max(0.01)), "ratio_above_1_means": "dbswarm faster",
            "server_rss_mb_max": uncached_rss,
        }));
    }
    if !wanted("query_cached") {
        return Ok(());
    }

    // Entries outlive the run: the figure is the warmed cache's, not that
    // of entries expiring (default cache_ttl_ms, 5 s) and loading again.
    let ttl_ms = (seconds + QUERY_WARM_UP).as_millis() as u64 + 120_000;
    eprintln!(
        "queries: starting dbswarm with the cache on (Redis {})",
        redis_url()
    );
    let mut server = ServerProcess::start(
        db,
        Serve {
            projections: true,
            cache_ttl_ms: Some(ttl_ms),
            ..Serve::EVENT_STORE
        },
    )?;
    let cached = async {
        let channels = server.channels(args.clients, args.connections).await?;
        let hot: Vec<Uuid> = ids.iter().take(HOT_KEYS).copied().collect();
        eprintln!("dbswarm: warming the cache with one pass over {} keys", hot.len());
        warm_cache(&server, &channels, &hot).await?;
        let before = cache_requests(&server).await?;
        if before.hit + before.miss == 0.0 {
            bail!(
                "the query cache took no request while warming (bypassed {}, errors {}): is Redis up at {}?",
                before.bypass,
                before.error,
                redis_url()
            );
        }
        eprintln!(
            "dbswarm: Projections.GetRow, cache on, {} hot keys, {} clients on {} connections, {} s",
            hot.len(),
            args.clients,
            args.connections,
            seconds.as_secs()
        );
        let measured = get_rows(&channels, &hot, seconds).await?;
        let after = cache_requests(&server).await?;
        let hits = after.hit - before.hit;
        let total =
            hits + (after.miss - before.miss) + (after.bypass - before.bypass) + (after.error - before.error);
        if hits == 0.0 {
            bail!("the query cache served no hits: is Redis up at {}?", redis_url());
        }
        anyhow::Ok((measured, hits / total.max(1.0), hot.len(), server.peak_rss_mb()))
    }
    .await;
    server.stop();
    let ((cached, cached_rate), hit_ratio, hot_keys, cached_rss) = cached?;
    // ratio = uncached p99 / cached p99: above 1 means the cache helps.
    print(json!({
        "name": "query_cached", "value": cached.p99_ms, "unit": "ms",
        "p50_ms": cached.p50_ms, "p99_ms": cached.p99_ms,
        "rate_per_s": round(cached_rate), "requests": cached.count,
        "clients": args.clients, "connections": args.connections, "hot_keys": hot_keys,
        "cache_hit_ratio": round2(hit_ratio), "cache_ttl_ms": ttl_ms,
        "baseline_name": "query_uncached", "baseline_value": uncached.p99_ms,
        "baseline_p50_ms": uncached.p50_ms, "baseline_p99_ms": uncached.p99_ms,
        "baseline_rate_per_s": round(uncached_rate),
        "ratio": round2(uncached.p99_ms / cached.p99_ms.max(0.01)), "ratio_above_1_means": "cached faster",
        "server_rss_mb_max": cached_rss,
    }));
    Ok(())
}

/// Projections.GetRow with the cache off, and the same SELECT straight
/// from PostgreSQL: ((baseline, rate), (dbswarm, rate), peak RSS).
async fn measure_uncached(
    args: &Args,
    db: &ScratchDb,
    server: &mut ServerProcess,
    ids: &Arc<Vec<Uuid>>,
) -> anyhow::Result<((Latencies, f64), (Latencies, f64), f64)> {
    let (users, seconds) = (args.query_users, Duration::from_secs(args.latency_seconds));
    let channels = server.channels(args.clients, args.connections).await?;
    let mut control = ProjectionsClient::new(channels[0].clone());
    define_user_list(&mut control).await?;
    wait_caught_up(server, &mut control).await?;
    let pool = PgPoolOptions::new()
        .max_connections(args.clients as u32)
        .test_before_acquire(false)
        .connect(&db.url)
        .await?;
    let projected: i64 = sqlx::query_scalar(READ_MODEL_COUNT).fetch_one(&pool).await?;
    if projected != users as i64 {
        bail!("{READ_MODEL} holds {projected} rows, not {users}");
    }
    settle(&pool).await?;
    eprintln!(
        "baseline: SELECT by key straight from PostgreSQL, {} clients on {} connections, {} s",
        args.clients,
        args.clients,
        seconds.as_secs()
    );
    let plain = point_selects(&pool, ids, args.clients, seconds).await?;
    pool.close().await;
    eprintln!(
        "dbswarm: Projections.GetRow, cache off, {} clients on {} connections, {} s",
        args.clients,
        args.connections,
        seconds.as_secs()
    );
    let dbswarm = get_rows(&channels, ids, seconds).await?;
    Ok((plain, dbswarm, server.peak_rss_mb()))
}

/// One pass over `hot` through the cache; again after waiting for the
/// cache when it degraded meanwhile.
async fn warm_cache(server: &ServerProcess, channels: &[Channel], hot: &[Uuid]) -> anyhow::Result<()> {
    warm(channels, hot).await?;
    // A Redis round trip over cache_op_timeout_ms (50 ms: this 2-core
    // machine runs everything) degrades the cache, and its recovery
    // voids every entry: then wait for it and warm once more.
    let warmed = cache_requests(server).await?;
    if warmed.error > 0.0 || warmed.degraded {
        eprintln!("dbswarm: the cache degraded while warming; waiting for it and warming again");
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache_requests(server).await?.degraded {
            if Instant::now() > deadline {
                bail!(
                    "the query cache stayed degraded for 30 s: is Redis up at {}?",
                    redis_url()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warm(channels, hot).await?;
    }
    Ok(())
}

fn user_created(i: usize, user_id: Uuid) -> proto::ProposedEvent {
    proto::ProposedEvent {
        event_id: Uuid::new_v4().to_string(),
        event_type: "UserCreated".into(),
        content_type: proto::ContentType::Json as i32,
        data: format!(r#"{{"user_id":"{user_id}","email":"u{i}@example.com","name":"n{i}"}}"#).into_bytes(),
        ..Default::default()
    }
}

/// Stores `users` UserCreated events through AppendToStream, 1,000 per
/// request (stream `user-<request>`), with a server that runs neither
/// projections nor the relay. Returns the user ids and the events/s.
async fn store_users(db: &ScratchDb, users: usize) -> anyhow::Result<(Arc<Vec<Uuid>>, f64)> {
    eprintln!(
        "storing {users} UserCreated events, {FILL_REQUEST_EVENTS} per AppendToStream, {FILL_CLIENTS} clients (projections off)"
    );
    let ids: Arc<Vec<Uuid>> = Arc::new((0..users).map(|_| Uuid::new_v4()).collect());
    let mut server = ServerProcess::start(db, Serve::EVENT_STORE)?;
    let stored = async {
        let clients = server.clients(FILL_CLIENTS, FILL_CLIENTS).await?;
        let requests = users.div_ceil(FILL_REQUEST_EVENTS);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for mut client in clients {
            let (next, ids) = (next.clone(), ids.clone());
            tasks.spawn(async move {
                loop {
                    let r = next.fetch_add(1, Ordering::Relaxed);
                    if r >= requests {
                        return anyhow::Ok(());
                    }
                    let range = r * FILL_REQUEST_EVENTS..((r + 1) * FILL_REQUEST_EVENTS).min(ids.len());
                    let request = proto::AppendToStreamRequest {
                        stream_id: format!("user-{r}"),
                        expected_version: None,
                        events: range.map(|i| user_created(i, ids[i])).collect(),
                    };
                    tokio::time::timeout(CALL_LIMIT, client.append_to_stream(request))
                        .await
                        .with_context(|| format!("AppendToStream to user-{r} did not answer within 60 s"))?
                        .with_context(|| format!("AppendToStream to user-{r}"))?;
                }
            });
        }
        let deadline = tokio::time::Instant::now() + FILL_LIMIT;
        let mut progress = tokio::time::interval(Duration::from_secs(10));
        progress.tick().await;
        loop {
            tokio::select! {
                done = tasks.join_next() => match done {
                    None => break,
                    Some(result) => result??,
                },
                _ = progress.tick() => eprintln!(
                    "  {} of {users} stored",
                    (next.load(Ordering::Relaxed) * FILL_REQUEST_EVENTS).min(users)
                ),
                _ = tokio::time::sleep_until(deadline) => {
                    bail!("storing {users} events took longer than {} s", FILL_LIMIT.as_secs())
                }
            }
        }
        let rate = users as f64 / started.elapsed().as_secs_f64();
        eprintln!("  stored at {rate:.0} events/s");
        anyhow::Ok(rate)
    }
    .await;
    server.stop();
    Ok((ids, stored?))
}

/// A gRPC call under CALL_LIMIT, its error with the call's name.
pub(crate) async fn call<T>(
    what: &str,
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL_LIMIT, request).await {
        Err(_) => bail!("{what} did not answer within {} s", CALL_LIMIT.as_secs()),
        Ok(Err(status)) => bail!("{what} failed: {:?}: {}", status.code(), status.message()),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

async fn define_user_list(client: &mut ProjectionsClient<Channel>) -> anyhow::Result<()> {
    let status = call(
        "Projections.Define of user_list",
        client.define(proto::DefineProjectionRequest {
            definition_json: USER_LIST_DEFINITION.into(),
        }),
    )
    .await?;
    if status.live_generation == 0 {
        bail!("the first generation of {READ_MODEL} is not live after Define: {status:?}");
    }
    Ok(())
}

/// Why a projection is not caught up: None when every generation of it has
/// no lag and none has failed; an error when one has failed.
fn pending(status: &proto::ProjectionStatus) -> anyhow::Result<Option<String>> {
    let mut behind = Vec::new();
    for g in &status.generations {
        if let Some(failure) = &g.failure {
            bail!(
                "projection {} (generation {}) stopped at event {}: {}",
                status.name,
                g.generation,
                failure.event_id,
                failure.error
            );
        }
        if g.lag_events > 0 {
            behind.push(format!("g{} {} behind", g.generation, g.lag_events));
        }
    }
    if status.live_generation == 0 {
        behind.push("no live generation".into());
    }
    Ok((!behind.is_empty()).then(|| format!("{} ({})", status.name, behind.join(", "))))
}

/// Waits (bounded) until every projection, built-in or `user_list`, has
/// caught up; progress on stderr.
async fn wait_caught_up(
    server: &mut ServerProcess,
    client: &mut ProjectionsClient<Channel>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        server.check_running()?;
        let list = call("Projections.List", client.list(proto::ListProjectionsRequest {})).await?;
        let mut behind = Vec::new();
        for status in &list.projections {
            behind.extend(pending(status)?);
        }
        if !list.projections.iter().any(|p| p.name == READ_MODEL) {
            bail!("Projections.List does not name {READ_MODEL}");
        }
        // Confirmed on the projection's own status.
        if behind.is_empty() {
            let status = call(
                "Projections.Get",
                client.get(proto::ProjectionRequest {
                    name: READ_MODEL.into(),
                }),
            )
            .await?;
            if pending(&status)?.is_none() {
                return Ok(());
            }
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            bail!(
                "read models still behind after {} s: {}",
                CATCH_UP_LIMIT.as_secs(),
                behind.join("; ")
            );
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            reported = Instant::now();
            eprintln!("  catching up: {}", behind.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Vacuums and checkpoints the database, so that a timed phase neither
/// pays for the previous one's dirty pages nor meets autovacuum.
async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    let settled = async {
        sqlx::query("VACUUM (ANALYZE)").execute(pool).await?;
        sqlx::query("CHECKPOINT").execute(pool).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(CATCH_UP_LIMIT, settled)
        .await
        .context("VACUUM + CHECKPOINT did not finish within 600 s")?
        .context("VACUUM (ANALYZE) + CHECKPOINT of the scratch database")
}

/// Seconds of the baseline: the UserCreated events streamed in $all order
/// on one connection (a cursor, not fetched whole), each 1,000 written
/// with ONE upsert statement in a transaction of its own on another.
async fn scan_upsert(url: &str, events: usize) -> anyhow::Result<f64> {
    let mut scan = PgConnection::connect(url).await?;
    let mut write = PgConnection::connect(url).await?;
    sqlx::query(BASELINE_TABLE_DROP).execute(&mut write).await?;
    sqlx::query(BASELINE_TABLE_CREATE).execute(&mut write).await?;
    let timed = async {
        let started = Instant::now();
        let mut rows = sqlx::query_scalar::<_, serde_json::Value>(BASELINE_SCAN).fetch(&mut scan);
        let mut ids: Vec<Uuid> = Vec::with_capacity(BASELINE_BATCH_ROWS);
        let mut emails: Vec<String> = Vec::with_capacity(BASELINE_BATCH_ROWS);
        let mut names: Vec<String> = Vec::with_capacity(BASELINE_BATCH_ROWS);
        let mut written = 0usize;
        loop {
            let row = rows.try_next().await?;
            if let Some(data) = &row {
                let field = |name: &str| {
                    data.get(name)
                        .and_then(serde_json::Value::as_str)
                        .with_context(|| format!("a UserCreated event without a text {name}: {data}"))
                };
                ids.push(field("user_id")?.parse()?);
                emails.push(field("email")?.to_owned());
                names.push(field("name")?.to_owned());
            }
            if ids.len() == BASELINE_BATCH_ROWS || (row.is_none() && !ids.is_empty()) {
                let mut tx = write.begin().await?;
                sqlx::query(BASELINE_UPSERT)
                    .bind(&ids)
                    .bind(&emails)
                    .bind(&names)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                written += ids.len();
                ids.clear();
                emails.clear();
                names.clear();
            }
            if row.is_none() {
                break;
            }
        }
        anyhow::Ok((started.elapsed().as_secs_f64(), written))
    };
    let (seconds, written) = tokio::time::timeout(CATCH_UP_LIMIT, timed)
        .await
        .context("the pg_scan_upsert baseline did not finish within 600 s")?
        .context("the pg_scan_upsert baseline")?;
    let stored: i64 = sqlx::query_scalar(BASELINE_COUNT).fetch_one(&mut write).await?;
    if written != events || stored != events as i64 {
        bail!("the baseline wrote {written} rows and holds {stored}, not {events}");
    }
    Ok(seconds)
}

struct Rebuilt {
    seconds: f64,
    /// Share of the time in the runner's write transactions.
    apply_share: f64,
}

/// From the Rebuild call until the projection's status shows the new
/// generation live with no lag. The switch is watched in the registry
/// (`poll_grpc` false) or with Projections.Get, every 100 ms either way;
/// the end is always confirmed with Projections.Get.
async fn timed_rebuild(
    server: &mut ServerProcess,
    client: &mut ProjectionsClient<Channel>,
    pool: &PgPool,
    poll_grpc: bool,
    events: usize,
) -> anyhow::Result<Rebuilt> {
    let batch_seconds = format!("dbswarm_projection_batch_seconds_sum{{projection=\"{READ_MODEL}\"}}");
    let applied_before = server.metrics().await?.value(&batch_seconds);
    let started = Instant::now();
    let status = call(
        "Projections.Rebuild of user_list",
        client.rebuild(proto::ProjectionRequest {
            name: READ_MODEL.into(),
        }),
    )
    .await?;
    let Some(building) = status
        .generations
        .iter()
        .find(|g| g.status == "building")
        .map(|g| g.generation)
    else {
        bail!("Projections.Rebuild answered without a building generation: {status:?}");
    };
    let mut reported = Instant::now();
    let mut switched = false;
    loop {
        if started.elapsed() > CATCH_UP_LIMIT {
            bail!(
                "generation {building} of {READ_MODEL} did not go live within {} s",
                CATCH_UP_LIMIT.as_secs()
            );
        }
        server.check_running()?;
        if poll_grpc || switched {
            let status = call(
                "Projections.Get",
                client.get(proto::ProjectionRequest {
                    name: READ_MODEL.into(),
                }),
            )
            .await?;
            let caught_up = pending(&status)?.is_none();
            if status.live_generation == building && caught_up {
                break;
            }
            if reported.elapsed() >= Duration::from_secs(5) {
                reported = Instant::now();
                let applied = status
                    .generations
                    .iter()
                    .find(|g| g.generation == building)
                    .map_or(0, |g| g.events_applied);
                eprintln!("  rebuild: {applied} of {events} applied");
            }
        } else {
            let (live, error, applied): (Option<i32>, Option<String>, Option<i64>) =
                sqlx::query_as(REGISTRY_POLL)
                    .bind(READ_MODEL)
                    .bind(building)
                    .fetch_one(pool)
                    .await?;
            if let Some(error) = error {
                bail!("generation {building} of {READ_MODEL} failed: {error}");
            }
            if live == Some(building) {
                // Switched: confirmed (lag 0) on the wire, at once.
                switched = true;
                continue;
            }
            if reported.elapsed() >= Duration::from_secs(5) {
                reported = Instant::now();
                eprintln!("  rebuild: {} of {events} applied", applied.unwrap_or(0));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let applied_after = server.metrics().await?.value(&batch_seconds);
    let projected: i64 = sqlx::query_scalar(READ_MODEL_COUNT).fetch_one(pool).await?;
    if projected != events as i64 {
        bail!("the rebuilt {READ_MODEL} holds {projected} rows, not {events}");
    }
    Ok(Rebuilt {
        seconds,
        apply_share: (applied_after - applied_before) / seconds,
    })
}

/// A small fast generator of uniformly random keys (splitmix64): the bench
/// has no rand dependency and needs nothing stronger.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Closed loop: `clients` tasks, each sending `request(client, random)`
/// back to back for `QUERY_WARM_UP` (unmeasured) and then `seconds`.
/// Returns the measured latencies and the achieved requests/s.
async fn closed_loop<F, Fut>(
    clients: usize,
    seconds: Duration,
    request: F,
) -> anyhow::Result<(Latencies, f64)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let request = Arc::new(request);
    let seed = Uuid::new_v4().as_u64_pair().0;
    let measure_from = Instant::now() + QUERY_WARM_UP;
    let until = measure_from + seconds;
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let request = request.clone();
        tasks.spawn(async move {
            let mut random = SplitMix(seed ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut samples = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= until {
                    return anyhow::Ok(samples);
                }
                tokio::time::timeout(CALL_LIMIT, request(c, random.next()))
                    .await
                    .context("a query did not answer within 60 s")??;
                if sent >= measure_from {
                    samples.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        samples.extend(done??);
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    if samples.is_empty() {
        bail!("no request finished within the measured {} s", seconds.as_secs());
    }
    let rate = samples.len() as f64 / elapsed;
    Ok((percentiles(samples), rate))
}

/// The baseline: the query GetRow runs, straight through sqlx.
async fn point_selects(
    pool: &PgPool,
    ids: &Arc<Vec<Uuid>>,
    clients: usize,
    seconds: Duration,
) -> anyhow::Result<(Latencies, f64)> {
    let (pool, ids) = (pool.clone(), ids.clone());
    closed_loop(clients, seconds, move |_, random| {
        let pool = pool.clone();
        let id = ids[(random % ids.len() as u64) as usize];
        async move {
            let row: Option<String> = sqlx::query_scalar(POINT_SELECT)
                .bind(id)
                .fetch_optional(&pool)
                .await?;
            if row.is_none() {
                bail!("user {id} is not in read_models.user_list");
            }
            Ok(())
        }
    })
    .await
}

/// `Projections.GetRow` of uniformly random keys of `keys`, one closed-loop
/// client per channel handle.
async fn get_rows(
    channels: &[Channel],
    keys: &[Uuid],
    seconds: Duration,
) -> anyhow::Result<(Latencies, f64)> {
    let channels = channels.to_vec();
    let keys: Arc<Vec<String>> = Arc::new(keys.iter().map(Uuid::to_string).collect());
    closed_loop(channels.len(), seconds, move |c, random| {
        let mut client = ProjectionsClient::new(channels[c].clone());
        let keys = keys.clone();
        async move {
            let key = &keys[(random % keys.len() as u64) as usize];
            let row = client
                .get_row(proto::GetRowRequest {
                    read_model: READ_MODEL.into(),
                    key: key.clone(),
                })
                .await
                .with_context(|| format!("Projections.GetRow of {key}"))?
                .into_inner();
            if !row.json.contains(key.as_str()) {
                bail!("Projections.GetRow of {key} answered another row: {}", row.json);
            }
            Ok(())
        }
    })
    .await
}

/// One GetRow of each key, by at most WARM_CLIENTS tasks (gentler than
/// the measurement: a miss costs three Redis round trips and a SELECT).
async fn warm(channels: &[Channel], keys: &[Uuid]) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let warmers = channels.len().min(WARM_CLIENTS);
    for (c, channel) in channels.iter().take(warmers).enumerate() {
        let mut client = ProjectionsClient::new(channel.clone());
        let mine: Vec<String> = keys
            .iter()
            .skip(c)
            .step_by(warmers)
            .map(Uuid::to_string)
            .collect();
        tasks.spawn(async move {
            for key in mine {
                call(
                    "Projections.GetRow",
                    client.get_row(proto::GetRowRequest {
                        read_model: READ_MODEL.into(),
                        key,
                    }),
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// The server's query-cache counters so far.
struct CacheRequests {
    hit: f64,
    miss: f64,
    bypass: f64,
    error: f64,
    /// The cache is degraded now (queries go to PostgreSQL).
    degraded: bool,
}

async fn cache_requests(server: &ServerProcess) -> anyhow::Result<CacheRequests> {
    let metrics = server.metrics().await?;
    let count = |result: &str| metrics.value(&format!("dbswarm_cache_requests_total{{result=\"{result}\"}}"));
    Ok(CacheRequests {
        hit: count("hit"),
        miss: count("miss"),
        bypass: count("bypass"),
        error: count("error"),
        degraded: metrics.value("dbswarm_cache_degraded") > 0.0,
    })
}
