//! Harness for the integration tests: a fresh database per test on the
//! private test PostgreSQL (`make test` starts it), and an in-process
//! dbswarm server on ephemeral ports. Panics rather than returns errors.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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

/// A database of its own for one test, dropped by `drop_database`, or,
/// when the test panics (or never calls it), when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Set by `drop_database`, so that `Drop` does not clean up twice.
    dropped: bool,
}

/// How long `Drop` waits for the cleanup of a test that did not call
/// `drop_database`: a cleanup that hangs must not hang the test run.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

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
            dropped: false,
        }
    }

    /// NATS names of servers on this database: each test database gets
    /// its own subject prefix and streams, named after it.
    pub fn relay_config(&self) -> event_store::relay::RelayConfig {
        relay_config_of(&self.name)
    }

    /// The JetStream events stream of servers on this database.
    pub async fn events_stream(&self) -> async_nats::jetstream::stream::Stream {
        wait_for_stream(&nats_url(), &self.relay_config().stream_name).await
    }

    /// Drops the database and the test's streams. Dropping what is already
    /// gone succeeds, so this and `Drop` never conflict.
    pub async fn drop_database(mut self) {
        remove_test_resources(&self.name)
            .await
            .expect("drop test database");
        self.dropped = true;
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    /// A panicking test unwinds past its `drop_database`: clean up here.
    /// `Drop` cannot await, and the test's runtime may be the one that is
    /// unwinding, so the cleanup runs on a thread with its own runtime,
    /// waited for at most `CLEANUP_TIMEOUT`. Nothing here panics: a panic
    /// during unwinding would abort the whole test binary.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("test-db-cleanup".into())
            .spawn(move || {
                let _ = done.send(remove_blocking(&name));
            });
        let outcome = match spawned {
            Ok(_) => finished
                .recv_timeout(CLEANUP_TIMEOUT)
                .unwrap_or_else(|_| Err(format!("not done within {CLEANUP_TIMEOUT:?}"))),
            Err(e) => Err(format!("no cleanup thread: {e}")),
        };
        if let Err(error) = outcome {
            eprintln!("test database {} was not dropped: {error}", self.name);
        }
    }
}

/// `remove_test_resources` on a runtime of its own (see `Drop for TestDb`).
fn remove_blocking(name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        tokio::time::timeout(CLEANUP_TIMEOUT, remove_test_resources(name))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())
    })
}

fn relay_config_of(database: &str) -> event_store::relay::RelayConfig {
    let suffix = database.trim_start_matches("dbswarm_test_");
    event_store::relay::RelayConfig {
        subject_prefix: format!("t{suffix}"),
        stream_name: format!("T{suffix}_EVENTS"),
        tasks_stream_name: format!("T{suffix}_TASKS"),
        ..Default::default()
    }
}

/// Drops the test database (its connections too) and deletes the test's
/// JetStream streams. Idempotent: what is gone already is not an error;
/// an unreachable NATS is not either (its streams are then no one's).
async fn remove_test_resources(database: &str) -> Result<(), sqlx::Error> {
    let names = relay_config_of(database);
    if let Ok(client) = async_nats::connect(nats_url()).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(&names.stream_name).await;
        let _ = js.delete_stream(&names.tasks_stream_name).await;
    }
    let mut conn = PgConnection::connect(&admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
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
/// Only transactions of the test's own database hold its horizon back
/// (migrations/0010_horizon.sql): a server's background work there may
/// hold it briefly, and tests wait that out.
pub async fn wait_for_horizon(pool: &PgPool) {
    for _ in 0..600 {
        let caught_up: bool =
            sqlx::query_scalar("SELECT coalesce(max(transaction_id) < dbswarm_horizon(), true) FROM events")
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

/// Waits (bounded) until stream `name` exists (the relay leader creates the
/// events stream, the orchestrator the tasks stream) on the
/// NATS server at `url`.
pub async fn wait_for_stream(url: &str, name: &str) -> async_nats::jetstream::stream::Stream {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    for _ in 0..200 {
        if let Ok(stream) = js.get_stream(name).await {
            return stream;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} was not created within 10 s");
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

/// Whether this process runs as root (PostgreSQL refuses root: its tools
/// then run as `postgres`, see `postgres_command`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL 15 program (`initdb`, `pg_ctl`, `psql`...): in
/// `DBSWARM_PG_BIN` if set, else in /usr/lib/postgresql/15/bin, as
/// `scripts/services.sh` finds them.
pub fn pg_bin(name: &str) -> PathBuf {
    std::env::var_os("DBSWARM_PG_BIN")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
        .join(name)
}

/// `program args` as the `postgres` user when we are root (`runuser -u
/// postgres --`, from `/`, as `as_pg` of `scripts/services.sh`), directly
/// otherwise; stdin is empty.
pub fn postgres_command<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> std::process::Command {
    let mut command = if is_root() {
        let mut command = std::process::Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(program)
            .current_dir("/");
        command
    } else {
        std::process::Command::new(program)
    };
    command.args(args).stdin(std::process::Stdio::null());
    command
}

/// Runs `program args` as the `postgres` user when we are root, directly
/// otherwise (`postgres_command`), and returns its output.
pub fn run_as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    postgres_command(program, args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// `run_as_postgres` without blocking the runtime.
async fn run_as_postgres_async<S: AsRef<OsStr>>(
    program: &Path,
    args: impl IntoIterator<Item = S>,
) -> std::process::Output {
    tokio::process::Command::from(postgres_command(program, args))
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// The uid and gid of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    static IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *IDS.get_or_init(|| {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buffer` (which
        // the strings of `entry` point into) outlives the use of `entry`.
        let rc = unsafe {
            libc::getpwnam_r(
                c"postgres".as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        assert!(
            rc == 0 && !found.is_null(),
            "running as root but there is no 'postgres' user to run PostgreSQL as"
        );
        (entry.pw_uid, entry.pw_gid)
    })
}

/// Creates directory `path` with `mode`, owned by `postgres` when we are
/// root.
fn create_postgres_dir(path: &Path, mode: u32) {
    std::fs::create_dir(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
    }
}

/// Gives a file or directory to the `postgres` user (when we are root),
/// e.g. a backup key PostgreSQL's archive_command reads.
pub fn give_to_postgres(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
    }
}

/// `<repo>/.dbswarm/test/instances`, traversable by `postgres`.
fn pg_instances_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let dbswarm = repo.join(".dbswarm");
    let dir = dbswarm.join("test").join("instances");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    // PostgreSQL runs as `postgres`: it must traverse the whole chain (the
    // chmod fails harmlessly when another user made them, as root did).
    for traversed in [dbswarm.clone(), dbswarm.join("test")] {
        if let Ok(meta) = std::fs::metadata(&traversed) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(&traversed, std::fs::Permissions::from_mode(mode | 0o001));
            }
        }
    }
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    dir
}

/// A PostgreSQL 15 cluster of a test's own (loopback, a free port, trust
/// auth, user `postgres`), for backup and point-in-time-recovery tests that
/// stop, crash, archive or restore it (never the shared test instance).
/// Its directories are under `<repo>/.dbswarm/test/instances/`. `fsync`
/// stays on: the tests rely on crash-recovery semantics.
pub struct PrivatePostgres {
    pub port: u16,
    pub data_dir: PathBuf,
    /// What drop removes: the instance directory (data, socket, log) of
    /// `start`, nothing for `start_existing` (set it to have drop remove
    /// the restored directory).
    pub owned: Option<PathBuf>,
    /// Socket directory (`socket`) and server log (`log`) of this run.
    run_dir: PathBuf,
    /// `run_dir` is a scratch directory of `start_existing`, which drop
    /// removes.
    scratch: bool,
}

impl PrivatePostgres {
    /// A fresh, empty directory under `<repo>/.dbswarm/test/instances/`,
    /// owned by `postgres` (when we are root): for restored data
    /// directories and WAL archives. The caller removes it (or makes it a
    /// `PrivatePostgres`'s `owned`).
    pub fn new_instance_dir() -> PathBuf {
        let id = Uuid::new_v4().simple().to_string();
        let dir = pg_instances_dir().join(format!("pg-{}", &id[..16]));
        create_postgres_dir(&dir, 0o755);
        dir
    }

    /// initdb into a fresh instance directory, `extra_conf` lines appended
    /// to postgresql.conf (after the harness's own: they win), started.
    /// Panics with the log if it does not start.
    pub async fn start(extra_conf: &[&str]) -> PrivatePostgres {
        let instance = PrivatePostgres::new_instance_dir();
        let data_dir = instance.join("data");
        create_postgres_dir(&data_dir, 0o700);
        create_postgres_dir(&instance.join("socket"), 0o755);
        // Built before initdb so that drop cleans up after a failure.
        let mut pg = PrivatePostgres {
            port: free_loopback_port(),
            data_dir,
            owned: Some(instance.clone()),
            run_dir: instance,
            scratch: false,
        };
        let initdb = run_as_postgres_async(
            &pg_bin("initdb"),
            [
                OsStr::new("-D"),
                pg.data_dir.as_os_str(),
                OsStr::new("--auth=trust"),
                OsStr::new("--username=postgres"),
                OsStr::new("--encoding=UTF8"),
                OsStr::new("--locale=C"),
            ],
        )
        .await;
        assert!(
            initdb.status.success(),
            "initdb {} failed:\n{}{}",
            pg.data_dir.display(),
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut conf = format!(
            "\n# PrivatePostgres (tests/src/lib.rs)\n\
             port = {}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             shared_buffers = 32MB\n\
             max_wal_senders = 4\n\
             wal_level = replica\n\
             logging_collector = off\n",
            pg.port,
            pg.socket_setting()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = pg.data_dir.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut file| file.write_all(conf.as_bytes()))
            .unwrap_or_else(|e| panic!("append to {}: {e}", conf_path.display()));
        pg.launch().await;
        pg
    }

    /// Starts a cluster on an existing data directory (one a restore
    /// produced, say), already owned by `postgres` when we are root, on the
    /// `port` its configuration names. Its socket and log go to a scratch
    /// directory of its own; drop removes `data_dir` only if `owned` is set
    /// to it. Panics with the log if it does not start.
    pub async fn start_existing(data_dir: PathBuf, port: u16) -> PrivatePostgres {
        let run_dir = PrivatePostgres::new_instance_dir();
        create_postgres_dir(&run_dir.join("socket"), 0o755);
        let mut pg = PrivatePostgres {
            port,
            data_dir,
            owned: None,
            run_dir,
            scratch: true,
        };
        pg.launch().await;
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server log of this run so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("log")).unwrap_or_default()
    }

    /// `pg_ctl stop -m fast` (a shutdown checkpoint); nothing if it is not
    /// running.
    pub async fn stop(&mut self) {
        self.stop_mode("fast").await;
    }

    /// `pg_ctl stop -m immediate`: no shutdown checkpoint, so the next
    /// start recovers from the WAL, as after a crash.
    pub async fn crash(&mut self) {
        self.stop_mode("immediate").await;
    }

    /// Stops it if it runs and starts it again on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// The socket directory, or '' (TCP only) when its path is too long for
    /// a unix socket (`sun_path` is 108 bytes, as in `scripts/services.sh`).
    fn socket_setting(&self) -> String {
        let socket = self.run_dir.join("socket").display().to_string();
        if socket.len() > 90 { String::new() } else { socket }
    }

    async fn launch(&mut self) {
        let log = self.run_dir.join("log");
        // The port and socket directory also on the command line: a
        // restored configuration names its source's socket directory.
        let options = format!(
            "-p {} -c unix_socket_directories='{}'",
            self.port,
            self.socket_setting()
        );
        let started = run_as_postgres_async(
            &pg_bin("pg_ctl"),
            [
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(&options),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("start"),
            ],
        )
        .await;
        assert!(
            started.status.success(),
            "PostgreSQL on {} (port {}) did not start:\n{}{}\n--- {} ---\n{}",
            self.data_dir.display(),
            self.port,
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr),
            log.display(),
            self.log()
        );
    }

    async fn stop_mode(&mut self, mode: &str) {
        let stopped = run_as_postgres_async(&pg_bin("pg_ctl"), self.pg_ctl_stop_args(mode)).await;
        if stopped.status.success() {
            return;
        }
        // pg_ctl status exits 3 when no server runs on the directory.
        let status = run_as_postgres_async(
            &pg_bin("pg_ctl"),
            [OsStr::new("status"), OsStr::new("-D"), self.data_dir.as_os_str()],
        )
        .await;
        assert!(
            status.status.code() == Some(3),
            "pg_ctl stop -m {mode} failed on {}:\n{}{}\n--- log ---\n{}",
            self.data_dir.display(),
            String::from_utf8_lossy(&stopped.stdout),
            String::from_utf8_lossy(&stopped.stderr),
            self.log()
        );
    }

    fn pg_ctl_stop_args<'a>(&'a self, mode: &'a str) -> [&'a OsStr; 8] {
        [
            OsStr::new("-D"),
            self.data_dir.as_os_str(),
            OsStr::new("-m"),
            OsStr::new(mode),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new("60"),
            OsStr::new("stop"),
        ]
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            // Data about to be removed need no shutdown checkpoint.
            let discarded = self
                .owned
                .as_ref()
                .is_some_and(|dir| self.data_dir.starts_with(dir));
            let mode = if discarded { "immediate" } else { "fast" };
            let stopped = postgres_command(pg_bin("pg_ctl"), self.pg_ctl_stop_args(mode)).output();
            if !stopped.is_ok_and(|output| output.status.success()) && !discarded {
                let _ = postgres_command(pg_bin("pg_ctl"), self.pg_ctl_stop_args("immediate")).output();
            }
        }
        if self.scratch {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
        if let Some(dir) = &self.owned {
            let _ = std::fs::remove_dir_all(dir);
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
    http_port: u16,
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
            // Without HOME (cleared above) a non-root user has no default.
            .env("DBSWARM_DATA_DIR", std::env::temp_dir().join("dbswarm-test-data"))
            .stdout(std::process::Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start dbswarm serve");
        wait_listening(grpc_port, "dbswarm serve").await;
        ServerChild {
            child,
            grpc_port,
            http_port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Its HTTP address (`/metrics`, `/healthz`).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.http_port))
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
