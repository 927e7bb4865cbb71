//! The list of metrics (`server::metric_list::METRICS`) against README.md,
//! the source's `metrics::*!` calls and a fresh server's `/metrics`.
//! Metrics are process-wide, so the servers whose `/metrics` is read are
//! `dbswarm serve` processes of their own, not in-process servers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use server::metric_list::{METRICS, Series};
use tests::*;

use crate::server::http_get;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// README.md's table of metrics: (name, type, labels, from start), in order.
fn readme_table() -> Vec<(String, String, String, String)> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics and health\n")
        .nth(1)
        .expect("README.md has a section \"Metrics and health\"");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| `dbswarm_"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 5, "a row of five cells: {line}");
            let plain = |cell: &str| cell.replace('`', "");
            (plain(cells[0]), plain(cells[1]), plain(cells[2]), plain(cells[3]))
        })
        .collect()
}

#[test]
fn readme_lists_exactly_the_metrics_of_the_list() {
    let listed: Vec<(String, String, String, String)> = METRICS
        .iter()
        .map(|m| {
            (
                m.name.to_owned(),
                m.kind.as_str().to_owned(),
                m.labels.join(", "),
                m.series.readme_text().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        readme_table(),
        listed,
        "README.md's table differs from metric_list.rs"
    );
}

/// Every `metrics::counter!/gauge!/histogram!("dbswarm_..")` of a server
/// crate, by name: the kinds it is recorded as.
fn recorded_in_source() -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut files = Vec::new();
    for dir in ["services", "event-store", "projections"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let mut recorded: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for file in files {
        let path = file.to_string_lossy();
        // The bench reports its own results; the consumer library's metrics
        // are the application's, on the application's recorder.
        if path.contains("/services/bench/") || path.ends_with("event-store/src/consumer.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for kind in ["counter", "gauge", "histogram"] {
            let call = format!("metrics::{kind}!(");
            for (at, _) in source.match_indices(&call) {
                let rest = source[at + call.len()..].trim_start();
                let Some(literal) = rest.strip_prefix('"') else {
                    continue;
                };
                let name = literal.split('"').next().unwrap();
                recorded.entry(name.to_owned()).or_default().insert(kind);
            }
        }
    }
    recorded
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with("target") {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn the_list_holds_every_metric_the_code_records_and_nothing_else() {
    let recorded = recorded_in_source();
    let listed: BTreeMap<String, &'static str> = METRICS
        .iter()
        .map(|m| (m.name.to_owned(), m.kind.as_str()))
        .collect();
    for (name, kinds) in &recorded {
        let kind = listed
            .get(name)
            .unwrap_or_else(|| panic!("{name} is recorded but not in metric_list.rs"));
        assert_eq!(
            kinds,
            &BTreeSet::from([*kind]),
            "{name} is recorded as another type"
        );
    }
    for name in listed.keys() {
        assert!(recorded.contains_key(name), "{name} is listed but never recorded");
    }
}

/// `# TYPE` lines of a Prometheus text answer: name -> type.
fn types(metrics: &str) -> BTreeMap<String, String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Whether a series of `name` carries `label="value"`.
fn has_series(metrics: &str, name: &str, label: &str, value: &str) -> bool {
    let wanted = format!("{label}=\"{value}\"");
    metrics.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(['{', '_']) && rest.contains(&wanted))
    })
}

/// The value of the series `name` without labels.
fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_shows_every_metric_known_at_start_on_its_first_scrape() {
    // Given a server that has just started (agents, projections, relay on)
    let db = TestDb::create().await;
    let server = ServerChild::spawn(&db, &[]).await;
    // When /metrics is read at once
    let metrics = http_get(server.http_addr(), "/metrics").await;
    // Then every metric whose series are known at start is there, typed
    let types = types(&metrics);
    for metric in METRICS {
        if metric.series == Series::FirstSample {
            continue;
        }
        assert_eq!(
            types.get(metric.name).map(String::as_str),
            Some(metric.kind.as_str()),
            "{} is missing from a fresh server's /metrics:\n{metrics}",
            metric.name
        );
        assert!(
            metrics.contains(&format!("# HELP {} {}", metric.name, metric.help)),
            "{} has no HELP line",
            metric.name
        );
        match metric.series {
            Series::Fixed(values) => {
                for value in values {
                    assert!(
                        has_series(&metrics, metric.name, metric.labels[0], value),
                        "{} has no series {value}",
                        metric.name
                    );
                }
            }
            Series::PerProjection => assert!(
                has_series(&metrics, metric.name, "projection", "stream_catalogue"),
                "{} has no series for stream_catalogue",
                metric.name
            ),
            Series::PerAgent => assert!(
                has_series(&metrics, metric.name, "agent", "schema"),
                "{} has no series for the schema agent",
                metric.name
            ),
            Series::Single | Series::FirstSample => {}
        }
    }
    // And with their true values: nothing happened yet, and Redis answers
    // (on a loaded machine its first probe may miss the 50 ms deadline, so
    // the cache may start degraded and recover at its next probe)
    assert!(value(&metrics, "dbswarm_cache_degraded").is_some(), "{metrics}");
    let mut degraded = value(&metrics, "dbswarm_cache_degraded");
    for _ in 0..100 {
        if degraded == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        degraded = value(
            &http_get(server.http_addr(), "/metrics").await,
            "dbswarm_cache_degraded",
        );
    }
    assert_eq!(degraded, Some(0.0), "the cache recovers with Redis up");
    assert_eq!(value(&metrics, "dbswarm_snapshots_saved_total"), Some(0.0));
    assert!(value(&metrics, "dbswarm_db_pool_connections").is_some_and(|v| v >= 1.0));
    // The agents record their start as events, so batches may already have
    // been written: never more than the events stored since.
    let batches = value(&metrics, "dbswarm_append_batch_events_count").expect("batch histogram present");
    let pool = db.pool().await;
    let stored = event_count(&pool).await;
    pool.close().await;
    assert!(
        batches <= stored as f64,
        "{batches} batches but {stored} events stored"
    );
    drop(server);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_without_redis_shows_the_cache_degraded_at_once() {
    // Given Redis unreachable at start
    let db = TestDb::create().await;
    let redis_url = format!("redis://127.0.0.1:{}", closed_port());
    let server = ServerChild::spawn(&db, &[("DBSWARM_REDIS_URL", &redis_url)]).await;
    // When /metrics is read at once
    let metrics = http_get(server.http_addr(), "/metrics").await;
    // Then the cache says it is degraded
    assert_eq!(value(&metrics, "dbswarm_cache_degraded"), Some(1.0), "{metrics}");
    drop(server);
    db.drop_database().await;
}
