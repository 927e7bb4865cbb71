//! Harness for the integration tests: a fresh database per test on the
//! private test PostgreSQL (`make test` starts it), and an in-process
//! dbswarm server on ephemeral ports. Panics rather than returns errors.

use std::time::Duration;

use api::proto;
use api::proto::event_store_client::EventStoreClient;
use server::{Config, RunningServer, Settings};
use sqlx::{Connection, PgConnection, PgPool};
use tonic::transport::Channel;
use uuid::Uuid;

/// The admin URL of the test instance (its `postgres` database).
pub fn admin_url() -> String {
    if let Ok(url) = std::env::var("DBSWARM_ADMIN_DATABASE_URL") {
        return url;
    }
    let url = std::env::var("DBSWARM_DATABASE_URL").expect(
        "DBSWARM_DATABASE_URL is not set: run the tests with `make test`, which starts the test services",
    );
    let (base, _) = url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/postgres")
}

/// A database of its own for one test, dropped by `drop_database`.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let name = format!("dbswarm_test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let (base, _) = admin.rsplit_once('/').unwrap();
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// NATS names of servers on this database: each test database gets
    /// its own subject prefix and streams, named after it.
    pub fn relay_config(&self) -> event_store::relay::RelayConfig {
        let suffix = self.name.trim_start_matches("dbswarm_test_");
        event_store::relay::RelayConfig {
            subject_prefix: format!("t{suffix}"),
            stream_name: format!("T{suffix}_EVENTS"),
            tasks_stream_name: format!("T{suffix}_TASKS"),
            ..Default::default()
        }
    }

    /// The JetStream events stream of servers on this database.
    pub async fn events_stream(&self) -> async_nats::jetstream::stream::Stream {
        wait_for_stream(&nats_url(), &self.relay_config().stream_name).await
    }

    /// Drops the database and the test's events stream.
    pub async fn drop_database(self) {
        let suffix = self.name.trim_start_matches("dbswarm_test_");
        if let Ok(client) = async_nats::connect(nats_url()).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(format!("T{suffix}_EVENTS"))
                .await;
        }
        let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop test database");
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.unwrap()
    }
}

/// The test NATS server (`make test` starts it).
pub fn nats_url() -> String {
    std::env::var("DBSWARM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:42230".into())
}

/// The shared test Redis (the read-model cache).
pub fn redis_url() -> String {
    std::env::var("DBSWARM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:63800".into())
}

/// Settings for a server on `db` with ephemeral ports. NATS is shared by
/// all tests, so each database gets its own subject prefix and events
/// stream (named after the database), and servers on one database share
/// them, as servers of one deployment do.
pub fn settings_for(db: &TestDb) -> Settings {
    let names = db.relay_config();
    Settings {
        database_url: Some(db.url.clone()),
        nats_url: Some(nats_url()),
        redis_url: Some(redis_url()),
        grpc_addr: Some("127.0.0.1:0".into()),
        http_addr: Some("127.0.0.1:0".into()),
        nats_subject_prefix: Some(names.subject_prefix),
        events_stream_name: Some(names.stream_name),
        tasks_stream_name: Some(names.tasks_stream_name),
        relay_poll_interval_ms: Some(200),
        // The agents record their lifecycle as events: tests that count
        // the events of $all run without them (see `with_workflows`).
        workflows_enabled: Some(false),
        ..Settings::default()
    }
}

/// `settings_for` with the agents and the workflow driver running.
pub fn with_workflows(settings: Settings) -> Settings {
    Settings {
        workflows_enabled: Some(true),
        ..settings
    }
}

pub struct TestServer {
    pub running: RunningServer,
    pub client: EventStoreClient<Channel>,
}

impl TestServer {
    pub async fn start(settings: Settings) -> TestServer {
        let config = Config::from_settings(settings).expect("valid test config");
        let running = server::start(config).await.expect("server starts");
        let client = EventStoreClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .expect("connect to the test server")
            .max_decoding_message_size(64 * 1024 * 1024);
        TestServer { running, client }
    }

    /// Registers a target database under `name` (Admin.RegisterDatabase).
    pub async fn register_target(&self, name: &str, url: &str) {
        let mut admin = proto::admin_client::AdminClient::connect(self.channel_url())
            .await
            .expect("connect to the test server");
        admin
            .register_database(proto::RegisterDatabaseRequest {
                name: name.to_owned(),
                url: url.to_owned(),
                description: String::new(),
            })
            .await
            .expect("register the target");
    }

    pub fn channel_url(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    pub async fn stop(self) {
        drop(self.client);
        tokio::time::timeout(Duration::from_secs(30), self.running.shutdown())
            .await
            .expect("server stops within 30 s")
            .expect("server stops cleanly");
    }
}

/// A JSON event with a fresh id.
pub fn json_event(event_type: &str, data: serde_json::Value) -> proto::ProposedEvent {
    proto::ProposedEvent {
        event_id: Uuid::new_v4().to_string(),
        event_type: event_type.into(),
        content_type: proto::ContentType::Json as i32,
        data: serde_json::to_vec(&data).unwrap(),
        ..Default::default()
    }
}

pub fn exact(version: u64) -> Option<proto::ExpectedVersion> {
    Some(proto::ExpectedVersion {
        kind: Some(proto::expected_version::Kind::Exact(version)),
    })
}

pub fn no_stream() -> Option<proto::ExpectedVersion> {
    Some(proto::ExpectedVersion {
        kind: Some(proto::expected_version::Kind::NoStream(true)),
    })
}

pub fn stream_exists() -> Option<proto::ExpectedVersion> {
    Some(proto::ExpectedVersion {
        kind: Some(proto::expected_version::Kind::StreamExists(true)),
    })
}

pub fn append_request(
    stream_id: &str,
    expected_version: Option<proto::ExpectedVersion>,
    events: Vec<proto::ProposedEvent>,
) -> proto::AppendToStreamRequest {
    proto::AppendToStreamRequest {
        stream_id: stream_id.into(),
        expected_version,
        events,
    }
}

/// Every event of a server stream, panicking on an error status.
pub async fn collect_stream<T>(mut stream: tonic::Streaming<T>) -> Vec<T> {
    let mut items = Vec::new();
    while let Some(item) = stream.message().await.expect("stream item") {
        items.push(item);
    }
    items
}

/// Count of rows in `events`.
pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Resident memory of this process, bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Waits (bounded) until every stored event is behind the $all horizon.
/// Transaction ids are cluster-wide, so a transaction of a test running
/// beside this one can briefly hold the horizon back: that is the design
/// (no reader may pass an open transaction), and tests wait it out.
pub async fn wait_for_horizon(pool: &PgPool) {
    for _ in 0..600 {
        let caught_up: bool = sqlx::query_scalar(
            "SELECT coalesce(max(transaction_id) < pg_snapshot_xmin(pg_current_snapshot()), true) FROM events",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if caught_up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the $all horizon did not pass the stored events within 30 s");
}

/// Waits (bounded) until the events stream holds `count` messages, and
/// returns them in stream order.
pub async fn relayed_messages(
    stream: &mut async_nats::jetstream::stream::Stream,
    count: u64,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    for _ in 0..300 {
        let messages = stream.info().await.unwrap().state.messages;
        assert!(
            messages <= count,
            "{messages} messages relayed, expected {count}: duplicates"
        );
        if messages == count {
            let mut all = Vec::new();
            for sequence in 1..=count {
                all.push(stream.get_raw_message(sequence).await.unwrap());
            }
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} messages were not relayed within 15 s");
}

/// A header of a relayed message, as text.
pub fn header(message: &async_nats::jetstream::message::StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// A port nothing listens on now (the OS's choice), for a private server.
fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits (bounded: 10 s) until something accepts connections on `port`.
async fn wait_listening(port: u16, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on port {port} within 10 s");
}

/// A nats-server of a test's own (JetStream on, loopback, a free port), for
/// tests that stop and restart NATS without disturbing the shared one.
pub struct PrivateNats {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl PrivateNats {
    pub async fn start() -> PrivateNats {
        let port = free_loopback_port();
        let dir = std::env::temp_dir().join(format!("dbswarm-nats-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats = PrivateNats {
            child: None,
            port,
            dir,
        };
        nats.launch().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let binary = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts (make test installs it)");
        self.child = Some(child);
        wait_listening(self.port, "private nats-server").await;
    }

    /// Stops it gracefully (SIGTERM: JetStream flushes what it acknowledged).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (bounded) until the relay leader has created stream `name` on the
/// NATS server at `url`.
pub async fn wait_for_stream(url: &str, name: &str) -> async_nats::jetstream::stream::Stream {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    for _ in 0..200 {
        if let Ok(stream) = js.get_stream(name).await {
            return stream;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the relay did not create stream {name} within 10 s");
}

/// A redis-server of its own, for tests that stop, restart, freeze or
/// flush Redis (never the shared test Redis). Nothing is persisted: a
/// restart comes back empty.
pub struct PrivateRedis {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = free_loopback_port();
        let mut redis = PrivateRedis { child: None, port };
        redis.launch().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("redis-server");
        let child = std::process::Command::new(binary)
            .args(["--save", "", "--appendonly", "no", "--port"])
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (make test installs it)");
        self.child = Some(child);
        wait_listening(self.port, "private redis-server").await;
    }

    /// Kills it (nothing to flush: it persists nothing).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// SIGSTOP: connections stay open and nothing answers (a hung Redis),
    /// and its data survive until `thaw`.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("private redis-server runs");
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// A connection of the test's own, to inspect or flush.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private redis-server")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `dbswarm` binary next to the test binary (`scripts/test.sh` builds it).
pub fn dbswarm_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("dbswarm"))
        .expect("target directory");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p server --bin dbswarm` (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// A `dbswarm serve` process of its own on `db` (the binary built next to
/// the test binary: `scripts/test.sh` builds it), for tests that kill a
/// server with SIGKILL. Its gRPC address is `url()`.
pub struct ServerChild {
    child: std::process::Child,
    grpc_port: u16,
}

impl ServerChild {
    pub async fn spawn(db: &TestDb, env: &[(&str, &str)]) -> ServerChild {
        let binary = dbswarm_binary();
        let names = db.relay_config();
        let grpc_port = free_loopback_port();
        let http_port = free_loopback_port();
        let mut command = std::process::Command::new(&binary);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DBSWARM_DATABASE_URL", &db.url)
            .env("DBSWARM_NATS_URL", nats_url())
            .env("DBSWARM_REDIS_URL", redis_url())
            .env("DBSWARM_NATS_SUBJECT_PREFIX", names.subject_prefix)
            .env("DBSWARM_EVENTS_STREAM_NAME", names.stream_name)
            .env("DBSWARM_TASKS_STREAM_NAME", names.tasks_stream_name)
            .env("DBSWARM_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("DBSWARM_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start dbswarm serve");
        wait_listening(grpc_port, "dbswarm serve").await;
        ServerChild { child, grpc_port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let _ = self.child.wait();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
