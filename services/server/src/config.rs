//! One validated `Config`, from (lowest to highest precedence) built-in
//! defaults, a TOML file, `DBSWARM_*` environment variables and CLI flags.
//! A bad value fails at start with a message that names the setting.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agents::AgentsConfig;
use agents::pg::Timeouts;
use backup::crypto::BackupKey;
use backup::engine::BackupConfig;
use domain::Limits;
use event_store::relay::RelayConfig;
use event_store::{AppendConfig, ReadConfig};
use llm_planner::{LlmConfig, LlmPlanner};
use projections::RuntimeConfig;
use projections::cache::CacheConfig;
use query::agent::QueryAgentConfig;
use sagas::OrchestratorConfig;
use schema::migration::MigrationConfig;
use serde::Deserialize;

/// Largest request the server accepts, whatever the configuration says.
const APPEND_BYTES_CEILING: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{setting}` (flag --{flag}, env {env}): {message}")]
    Invalid {
        setting: &'static str,
        flag: String,
        env: String,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        flag: setting.replace('_', "-"),
        env: format!("DBSWARM_{}", setting.to_uppercase()),
        message: message.into(),
    }
}

/// A setting that must not be shown: `Debug` prints `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret(text.to_owned())
    }
}

/// Settings as given on the command line / environment, or in the file.
/// Every field is optional so the layers can be merged.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// PostgreSQL URL of dbswarm's own database (event store, read models).
    #[arg(long, env = "DBSWARM_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// NATS URL (JetStream enabled) the relay publishes events to.
    #[arg(long, env = "DBSWARM_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// Redis URL of the read-model query cache (a cache only: queries are answered without it).
    #[arg(long, env = "DBSWARM_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Address of the gRPC server [default: 127.0.0.1:50051].
    #[arg(long, env = "DBSWARM_GRPC_ADDR", value_name = "HOST:PORT")]
    pub grpc_addr: Option<String>,
    /// Address of the HTTP server (/metrics, /healthz) [default: 127.0.0.1:8080].
    #[arg(long, env = "DBSWARM_HTTP_ADDR", value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// Directory of dbswarm's own files: the backup repository and scratch instances go in it unless set apart; a relative path is resolved against the working directory at start [default: /var/lib/dbswarm as root, else $XDG_DATA_HOME/dbswarm or ~/.local/share/dbswarm].
    #[arg(long, env = "DBSWARM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Connections in the PostgreSQL pool [default: 16].
    #[arg(long, env = "DBSWARM_DB_POOL_CONNECTIONS_MAX", value_name = "N")]
    pub db_pool_connections_max: Option<u32>,
    /// Wait for a pooled connection before UNAVAILABLE, ms [default: 5000].
    #[arg(long, env = "DBSWARM_DB_ACQUIRE_TIMEOUT_MS", value_name = "MS")]
    pub db_acquire_timeout_ms: Option<u64>,
    /// Longest stream id, bytes [default: 256].
    #[arg(long, env = "DBSWARM_STREAM_ID_BYTES_MAX", value_name = "BYTES")]
    pub stream_id_bytes_max: Option<usize>,
    /// Longest event type, bytes [default: 128].
    #[arg(long, env = "DBSWARM_EVENT_TYPE_BYTES_MAX", value_name = "BYTES")]
    pub event_type_bytes_max: Option<usize>,
    /// Largest event, data + metadata, bytes [default: 1048576].
    #[arg(long, env = "DBSWARM_EVENT_BYTES_MAX", value_name = "BYTES")]
    pub event_bytes_max: Option<usize>,
    /// Most events in one append request [default: 1000].
    #[arg(long, env = "DBSWARM_APPEND_EVENTS_MAX", value_name = "N")]
    pub append_events_max: Option<usize>,
    /// Largest append request, bytes of data + metadata [default: 4194304].
    #[arg(long, env = "DBSWARM_APPEND_BYTES_MAX", value_name = "BYTES")]
    pub append_bytes_max: Option<usize>,
    /// Most streams in one AppendMulti [default: 100].
    #[arg(long, env = "DBSWARM_APPEND_STREAMS_MAX", value_name = "N")]
    pub append_streams_max: Option<usize>,
    /// Append requests waiting for a committer before RESOURCE_EXHAUSTED [default: 4096].
    #[arg(long, env = "DBSWARM_APPEND_QUEUE_MAX", value_name = "N")]
    pub append_queue_max: Option<usize>,
    /// Most requests sharing one group-commit transaction [default: 256].
    #[arg(long, env = "DBSWARM_APPEND_BATCH_REQUESTS_MAX", value_name = "N")]
    pub append_batch_requests_max: Option<usize>,
    /// A group-commit batch stops growing at this many events [default: 2000].
    #[arg(long, env = "DBSWARM_APPEND_BATCH_EVENTS_MAX", value_name = "N")]
    pub append_batch_events_max: Option<usize>,
    /// Extra wait for more requests after the first of a batch, µs [default: 0].
    #[arg(long, env = "DBSWARM_APPEND_BATCH_WAIT_US", value_name = "US")]
    pub append_batch_wait_us: Option<u64>,
    /// Group-commit transactions in flight at once [default: 1].
    #[arg(long, env = "DBSWARM_APPEND_COMMITTERS", value_name = "N")]
    pub append_committers: Option<usize>,
    /// Rows fetched per query when reading [default: 500].
    #[arg(long, env = "DBSWARM_READ_PAGE_EVENTS_MAX", value_name = "N")]
    pub read_page_events_max: Option<usize>,
    /// Events buffered per reader for a slow client [default: 256].
    #[arg(long, env = "DBSWARM_READ_BUFFER_EVENTS_MAX", value_name = "N")]
    pub read_buffer_events_max: Option<usize>,
    /// Contend for the relay (PostgreSQL -> JetStream) on this server [default: true].
    #[arg(long, env = "DBSWARM_RELAY_ENABLED", value_name = "BOOL")]
    pub relay_enabled: Option<bool>,
    /// First token of every NATS subject dbswarm uses [default: dbswarm].
    #[arg(long, env = "DBSWARM_NATS_SUBJECT_PREFIX", value_name = "TOKEN")]
    pub nats_subject_prefix: Option<String>,
    /// JetStream stream the relay publishes events to [default: DBSWARM_EVENTS].
    #[arg(long, env = "DBSWARM_EVENTS_STREAM_NAME", value_name = "NAME")]
    pub events_stream_name: Option<String>,
    /// JetStream work-queue stream of commands to agents [default: DBSWARM_TASKS].
    #[arg(long, env = "DBSWARM_TASKS_STREAM_NAME", value_name = "NAME")]
    pub tasks_stream_name: Option<String>,
    /// Replicas of the events and tasks streams [default: 1].
    #[arg(long, env = "DBSWARM_EVENTS_STREAM_REPLICAS", value_name = "N")]
    pub events_stream_replicas: Option<usize>,
    /// Age after which JetStream drops relayed events, s; 0 = never [default: 0].
    #[arg(long, env = "DBSWARM_EVENTS_STREAM_MAX_AGE_S", value_name = "S")]
    pub events_stream_max_age_s: Option<u64>,
    /// Size at which JetStream drops the oldest relayed events, bytes; 0 = no limit [default: 0].
    #[arg(long, env = "DBSWARM_EVENTS_STREAM_MAX_BYTES", value_name = "BYTES")]
    pub events_stream_max_bytes: Option<u64>,
    /// How long JetStream drops a republished event id, s [default: 120].
    #[arg(long, env = "DBSWARM_NATS_DUPLICATE_WINDOW_S", value_name = "S")]
    pub nats_duplicate_window_s: Option<u64>,
    /// Relay publishes awaiting their JetStream ack at once [default: 4000].
    #[arg(long, env = "DBSWARM_RELAY_ACKS_IN_FLIGHT_MAX", value_name = "N")]
    pub relay_acks_in_flight_max: Option<usize>,
    /// Payload + metadata bytes of relay publishes awaiting their ack [default: 67108864].
    #[arg(long, env = "DBSWARM_RELAY_IN_FLIGHT_BYTES_MAX", value_name = "BYTES")]
    pub relay_in_flight_bytes_max: Option<usize>,
    /// Events the relay reads and publishes per page [default: 2000].
    #[arg(long, env = "DBSWARM_RELAY_PAGE_EVENTS_MAX", value_name = "N")]
    pub relay_page_events_max: Option<usize>,
    /// Relay wake-up when no commit notification arrives, ms [default: 1000].
    #[arg(long, env = "DBSWARM_RELAY_POLL_INTERVAL_MS", value_name = "MS")]
    pub relay_poll_interval_ms: Option<u64>,
    /// Relay's wait after a commit notification, to take several commits per step, ms [default: 2].
    #[arg(long, env = "DBSWARM_RELAY_STEP_DELAY_MS", value_name = "MS")]
    pub relay_step_delay_ms: Option<u64>,
    /// Relay stores its checkpoint at most this often, ms [default: 200].
    #[arg(long, env = "DBSWARM_RELAY_CHECKPOINT_INTERVAL_MS", value_name = "MS")]
    pub relay_checkpoint_interval_ms: Option<u64>,
    /// How often the relay leader reconciles JetStream with the store, s; 0 = never [default: 300].
    #[arg(long, env = "DBSWARM_RELAY_RECONCILE_INTERVAL_S", value_name = "S")]
    pub relay_reconcile_interval_s: Option<u64>,
    /// Most recently relayed events each reconciliation checks [default: 10000].
    #[arg(long, env = "DBSWARM_RELAY_RECONCILE_WINDOW_EVENTS", value_name = "N")]
    pub relay_reconcile_window_events: Option<usize>,
    /// Report a transaction holding the event horizon back after this long, s [default: 30].
    #[arg(long, env = "DBSWARM_HORIZON_WARN_AFTER_S", value_name = "S")]
    pub horizon_warn_after_s: Option<u64>,
    /// Run the projection runners (read models) on this server [default: true].
    #[arg(long, env = "DBSWARM_PROJECTIONS_ENABLED", value_name = "BOOL")]
    pub projections_enabled: Option<bool>,
    /// Directory of declarative projection definitions (*.json), defined at start.
    #[arg(long, env = "DBSWARM_PROJECTIONS_DIR", value_name = "DIR")]
    pub projections_dir: Option<PathBuf>,
    /// Events a projection applies per transaction [default: 1000].
    #[arg(long, env = "DBSWARM_PROJECTION_BATCH_EVENTS_MAX", value_name = "N")]
    pub projection_batch_events_max: Option<usize>,
    /// Rows per read-model query page at most [default: 1000].
    #[arg(long, env = "DBSWARM_PROJECTION_PAGE_ROWS_MAX", value_name = "N")]
    pub projection_page_rows_max: Option<usize>,
    /// Cache read-model queries in Redis (redis_url) [default: true].
    #[arg(long, env = "DBSWARM_CACHE_ENABLED", value_name = "BOOL")]
    pub cache_enabled: Option<bool>,
    /// Lifetime of a cached answer, ms: the staleness bound should an invalidation be lost [default: 5000].
    #[arg(long, env = "DBSWARM_CACHE_TTL_MS", value_name = "MS")]
    pub cache_ttl_ms: Option<u64>,
    /// Deadline of each Redis round trip, ms; past it the query goes to PostgreSQL [default: 50].
    #[arg(long, env = "DBSWARM_CACHE_OP_TIMEOUT_MS", value_name = "MS")]
    pub cache_op_timeout_ms: Option<u64>,
    /// Run the agents, the workflow driver and the scheduler on this server [default: true].
    #[arg(long, env = "DBSWARM_WORKFLOWS_ENABLED", value_name = "BOOL")]
    pub workflows_enabled: Option<bool>,
    /// How often the workflow driver times out and retries what is due, ms [default: 100].
    #[arg(long, env = "DBSWARM_WORKFLOW_TICK_INTERVAL_MS", value_name = "MS")]
    pub workflow_tick_interval_ms: Option<u64>,
    /// How long Execute waits for the agents a plan needs to be healthy, ms [default: 5000].
    #[arg(long, env = "DBSWARM_WORKFLOW_HEALTH_WAIT_MS", value_name = "MS")]
    pub workflow_health_wait_ms: Option<u64>,
    /// Tasks each agent works on at once on this server [default: 4].
    #[arg(long, env = "DBSWARM_AGENT_CONCURRENCY_MAX", value_name = "N")]
    pub agent_concurrency_max: Option<usize>,
    /// Task commands delivered to an agent and not finished at most (its priority queue) [default: 256].
    #[arg(long, env = "DBSWARM_AGENT_QUEUE_MAX", value_name = "N")]
    pub agent_queue_max: Option<usize>,
    /// Tasks each agent starts per second on this server at most; 0 = no limit [default: 0].
    #[arg(long, env = "DBSWARM_AGENT_TASKS_PER_S_MAX", value_name = "N")]
    pub agent_tasks_per_s_max: Option<u32>,
    /// A task command not acknowledged for this long goes to another agent instance (how fast a crashed server's tasks move on), ms; a server extends the commands it holds, queued or running, every third of it [default: 5000].
    #[arg(long, env = "DBSWARM_AGENT_ACK_WAIT_MS", value_name = "MS")]
    pub agent_ack_wait_ms: Option<u64>,
    /// Agent heartbeat (and health check) interval, ms [default: 30000].
    #[arg(long, env = "DBSWARM_AGENT_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub agent_heartbeat_interval_ms: Option<u64>,
    /// Base URL of an OpenAI-compatible chat-completions API (e.g. http://127.0.0.1:1234/v1) for the optional LLM planner; the rule-based planner stays the fallback [default: none, rule-based only].
    #[arg(long, env = "DBSWARM_PLANNER_LLM_BASE_URL", value_name = "URL")]
    pub planner_llm_base_url: Option<String>,
    /// Model name the LLM planner asks for (required with planner_llm_base_url).
    #[arg(long, env = "DBSWARM_PLANNER_LLM_MODEL", value_name = "NAME")]
    pub planner_llm_model: Option<String>,
    /// API key of the LLM planner (sent as a bearer token; never logged).
    #[arg(
        long,
        env = "DBSWARM_PLANNER_LLM_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub planner_llm_api_key: Option<Secret>,
    /// Deadline of one LLM planning, ms [default: 60000].
    #[arg(long, env = "DBSWARM_PLANNER_LLM_TIMEOUT_MS", value_name = "MS")]
    pub planner_llm_timeout_ms: Option<u64>,
    /// Directory of named schema migrations (<name>.yaml|yml|json|sql) that schema.apply and status read [default: none].
    #[arg(long, env = "DBSWARM_SCHEMA_MIGRATIONS_DIR", value_name = "DIR")]
    pub schema_migrations_dir: Option<PathBuf>,
    /// How long a migration's DDL waits for a table lock before giving up and retrying, ms; writers queue behind it at most this long [default: 1000].
    #[arg(long, env = "DBSWARM_SCHEMA_LOCK_TIMEOUT_MS", value_name = "MS")]
    pub schema_lock_timeout_ms: Option<u64>,
    /// statement_timeout of a migration's catalog DDL, SQL operations and backfill batches, ms [default: 60000].
    #[arg(long, env = "DBSWARM_SCHEMA_STATEMENT_TIMEOUT_MS", value_name = "MS")]
    pub schema_statement_timeout_ms: Option<u64>,
    /// statement_timeout of concurrent index builds and constraint validations, ms [default: 3600000].
    #[arg(long, env = "DBSWARM_SCHEMA_BUILD_TIMEOUT_MS", value_name = "MS")]
    pub schema_build_timeout_ms: Option<u64>,
    /// Attempts at a DDL statement whose lock is not granted within schema_lock_timeout_ms [default: 20].
    #[arg(long, env = "DBSWARM_SCHEMA_DDL_ATTEMPTS_MAX", value_name = "N")]
    pub schema_ddl_attempts_max: Option<u32>,
    /// Rows one backfill transaction touches at most [default: 1000].
    #[arg(long, env = "DBSWARM_SCHEMA_BACKFILL_BATCH_ROWS", value_name = "N")]
    pub schema_backfill_batch_rows: Option<u32>,
    /// Pause between backfill batches, ms [default: 10].
    #[arg(long, env = "DBSWARM_SCHEMA_BACKFILL_PAUSE_MS", value_name = "MS")]
    pub schema_backfill_pause_ms: Option<u64>,
    /// How long query.create_index measures its statements after building an index (a task's measure_ms overrides it), ms [default: 30000].
    #[arg(long, env = "DBSWARM_QUERY_MEASURE_WINDOW_MS", value_name = "MS")]
    pub query_measure_window_ms: Option<u64>,
    /// Directory of the backup repository (backups and archived WAL, encrypted) [default: <data_dir>/backups].
    #[arg(long, env = "DBSWARM_BACKUP_REPOSITORY_DIR", value_name = "DIR")]
    pub backup_repository_dir: Option<PathBuf>,
    /// File holding the AES-256 backup key (64 hex characters; `dbswarm backup generate-key` writes one); keep it away from the repository. Without it the backup agent refuses to work [default: none].
    #[arg(long, env = "DBSWARM_BACKUP_KEY_FILE", value_name = "FILE")]
    pub backup_key_file: Option<PathBuf>,
    /// gzip level pg_dump / pg_basebackup compress with before encryption, 0 (none) to 9 [default: 0].
    #[arg(long, env = "DBSWARM_BACKUP_COMPRESSION_LEVEL", value_name = "0-9")]
    pub backup_compression_level: Option<u32>,
    /// Target databases whose WAL archiving the backup agent may configure (ALTER SYSTEM), comma-separated [default: none].
    #[arg(
        long,
        env = "DBSWARM_BACKUP_ARCHIVE_TARGETS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub backup_archive_targets: Option<Vec<String>>,
    /// Where restore tests and point-in-time restores without a named directory create instances [default: <data_dir>/scratch].
    #[arg(long, env = "DBSWARM_BACKUP_SCRATCH_DIR", value_name = "DIR")]
    pub backup_scratch_dir: Option<PathBuf>,
    /// The dbswarm executable PostgreSQL runs as archive_command / restore_command [default: this executable].
    #[arg(long, env = "DBSWARM_BACKUP_EXECUTABLE", value_name = "FILE")]
    pub backup_executable: Option<PathBuf>,
    /// Directory of pg_dump, pg_restore, pg_basebackup and pg_ctl [default: /usr/lib/postgresql/15/bin].
    #[arg(long, env = "DBSWARM_BACKUP_PG_BIN_DIR", value_name = "DIR")]
    pub backup_pg_bin_dir: Option<PathBuf>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "DBSWARM_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub nats_url: String,
    pub redis_url: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Absolute.
    pub data_dir: PathBuf,
    pub db_pool_connections_max: u32,
    pub db_acquire_timeout_ms: u64,
    pub limits: Limits,
    pub append: AppendConfig,
    pub read: ReadConfig,
    pub relay: RelayConfig,
    pub relay_enabled: bool,
    pub projections_enabled: bool,
    pub projections_dir: Option<PathBuf>,
    pub projections: RuntimeConfig,
    /// `url` is None when the cache is off.
    pub cache: CacheConfig,
    pub workflows_enabled: bool,
    pub orchestrator: OrchestratorConfig,
    pub agents: AgentsConfig,
    /// None: plain-English requests are planned by the rules only.
    pub planner_llm: Option<LlmConfig>,
    pub schema: MigrationConfig,
    pub query: QueryAgentConfig,
    pub backup: BackupConfig,
    pub log_format: LogFormat,
}

impl Settings {
    /// `self` wins over `lower` field by field.
    pub fn over(self, lower: Settings) -> Settings {
        macro_rules! merge {
            ($($field:ident),* $(,)?) => {
                Settings { $($field: self.$field.or(lower.$field)),* }
            };
        }
        merge!(
            database_url,
            nats_url,
            redis_url,
            grpc_addr,
            http_addr,
            data_dir,
            db_pool_connections_max,
            db_acquire_timeout_ms,
            stream_id_bytes_max,
            event_type_bytes_max,
            event_bytes_max,
            append_events_max,
            append_bytes_max,
            append_streams_max,
            append_queue_max,
            append_batch_requests_max,
            append_batch_events_max,
            append_batch_wait_us,
            append_committers,
            read_page_events_max,
            read_buffer_events_max,
            relay_enabled,
            nats_subject_prefix,
            events_stream_name,
            tasks_stream_name,
            events_stream_replicas,
            events_stream_max_age_s,
            events_stream_max_bytes,
            nats_duplicate_window_s,
            relay_acks_in_flight_max,
            relay_in_flight_bytes_max,
            relay_page_events_max,
            relay_poll_interval_ms,
            relay_step_delay_ms,
            relay_checkpoint_interval_ms,
            relay_reconcile_interval_s,
            relay_reconcile_window_events,
            horizon_warn_after_s,
            projections_enabled,
            projections_dir,
            projection_batch_events_max,
            projection_page_rows_max,
            cache_enabled,
            cache_ttl_ms,
            cache_op_timeout_ms,
            workflows_enabled,
            workflow_tick_interval_ms,
            workflow_health_wait_ms,
            agent_concurrency_max,
            agent_queue_max,
            agent_tasks_per_s_max,
            agent_ack_wait_ms,
            agent_heartbeat_interval_ms,
            planner_llm_base_url,
            planner_llm_model,
            planner_llm_api_key,
            planner_llm_timeout_ms,
            schema_migrations_dir,
            schema_lock_timeout_ms,
            schema_statement_timeout_ms,
            schema_build_timeout_ms,
            schema_ddl_attempts_max,
            schema_backfill_batch_rows,
            schema_backfill_pause_ms,
            query_measure_window_ms,
            backup_repository_dir,
            backup_key_file,
            backup_compression_level,
            backup_archive_targets,
            backup_scratch_dir,
            backup_executable,
            backup_pg_bin_dir,
            log_format,
        )
    }

    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

fn url(
    setting: &'static str,
    value: Option<String>,
    default: &str,
    schemes: &[&str],
) -> Result<String, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    let scheme_ok = schemes.iter().any(|s| value.starts_with(&format!("{s}://")));
    if !scheme_ok {
        return Err(invalid(
            setting,
            format!(
                "'{value}' must start with {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ));
    }
    Ok(value)
}

fn addr(setting: &'static str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    value.parse().map_err(|e| {
        invalid(
            setting,
            format!("'{value}' is not HOST:PORT with an IP address: {e}"),
        )
    })
}

fn positive<T: Copy + PartialOrd + From<u8> + std::fmt::Display>(
    setting: &'static str,
    value: Option<T>,
    default: T,
    max: T,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if value < T::from(1) || value > max {
        return Err(invalid(setting, format!("{value} is outside 1..={max}")));
    }
    Ok(value)
}

impl Config {
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let orchestrator = orchestrator_config(&s)?;
        let agents = agents_config(&s)?;
        let planner_llm = planner_llm_config(&s)?;
        let schema = schema_config(&s)?;
        let query = query_config(&s)?;
        let data_dir = data_dir(&s)?;
        let backup = backup_config(&s, &data_dir)?;
        let limits = limits_config(&s)?;
        let append = append_config(&s)?;
        let read = read_config(&s)?;
        let db_pool_connections_max =
            positive("db_pool_connections_max", s.db_pool_connections_max, 16, 1000)?;
        if (append.committers as u32) >= db_pool_connections_max {
            return Err(invalid(
                "append_committers",
                format!(
                    "{} committers need fewer than db_pool_connections_max ({db_pool_connections_max}) connections, or reads starve",
                    append.committers
                ),
            ));
        }
        let relay = relay_config(&s)?;
        let log_format = match s.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("'{other}' is not one of: text, json"),
                ));
            }
        };
        let database_url = url(
            "database_url",
            s.database_url.clone(),
            "postgres://postgres@127.0.0.1:54320/dbswarm",
            &["postgres", "postgresql"],
        )?;
        let redis_url = url(
            "redis_url",
            s.redis_url.clone(),
            "redis://127.0.0.1:63790",
            &["redis", "rediss"],
        )?;
        let projections = projections_config(&s)?;
        let cache_defaults = CacheConfig::default();
        let cache = CacheConfig {
            url: s.cache_enabled.unwrap_or(true).then(|| redis_url.clone()),
            ttl_ms: positive("cache_ttl_ms", s.cache_ttl_ms, cache_defaults.ttl_ms, 86_400_000)?,
            op_timeout_ms: positive(
                "cache_op_timeout_ms",
                s.cache_op_timeout_ms,
                cache_defaults.op_timeout_ms,
                60_000,
            )?,
            // Keys are per database: servers of different databases may share a Redis.
            key_prefix: format!("dbswarm:{}:", database_name(&database_url)),
            ..cache_defaults
        };
        Ok(Config {
            database_url,
            nats_url: url("nats_url", s.nats_url, "nats://127.0.0.1:42220", &["nats", "tls"])?,
            redis_url,
            grpc_addr: addr("grpc_addr", s.grpc_addr, "127.0.0.1:50051")?,
            http_addr: addr("http_addr", s.http_addr, "127.0.0.1:8080")?,
            data_dir,
            db_pool_connections_max,
            db_acquire_timeout_ms: positive("db_acquire_timeout_ms", s.db_acquire_timeout_ms, 5000, 600_000)?,
            limits,
            append,
            read,
            relay,
            relay_enabled: s.relay_enabled.unwrap_or(true),
            projections_enabled: s.projections_enabled.unwrap_or(true),
            projections_dir: s.projections_dir.clone(),
            projections,
            cache,
            workflows_enabled: s.workflows_enabled.unwrap_or(true),
            orchestrator,
            agents,
            planner_llm,
            schema,
            query,
            backup,
            log_format,
        })
    }
}

/// The limits of appends and their events.
fn limits_config(s: &Settings) -> Result<Limits, ConfigError> {
    let limit_defaults = Limits::default();
    let limits = Limits {
        stream_id_bytes_max: positive(
            "stream_id_bytes_max",
            s.stream_id_bytes_max,
            limit_defaults.stream_id_bytes_max,
            4096,
        )?,
        event_type_bytes_max: positive(
            "event_type_bytes_max",
            s.event_type_bytes_max,
            limit_defaults.event_type_bytes_max,
            1024,
        )?,
        event_bytes_max: positive(
            "event_bytes_max",
            s.event_bytes_max,
            limit_defaults.event_bytes_max,
            APPEND_BYTES_CEILING,
        )?,
        append_events_max: positive(
            "append_events_max",
            s.append_events_max,
            limit_defaults.append_events_max,
            100_000,
        )?,
        append_bytes_max: positive(
            "append_bytes_max",
            s.append_bytes_max,
            limit_defaults.append_bytes_max,
            APPEND_BYTES_CEILING,
        )?,
        append_streams_max: positive(
            "append_streams_max",
            s.append_streams_max,
            limit_defaults.append_streams_max,
            10_000,
        )?,
    };
    if limits.event_bytes_max > limits.append_bytes_max {
        return Err(invalid(
            "event_bytes_max",
            format!(
                "{} is larger than append_bytes_max ({}), so such an event could never be appended",
                limits.event_bytes_max, limits.append_bytes_max
            ),
        ));
    }
    Ok(limits)
}

/// The appender's queue, batches and committers.
fn append_config(s: &Settings) -> Result<AppendConfig, ConfigError> {
    let append_defaults = AppendConfig::default();
    let append = AppendConfig {
        queue_max: positive(
            "append_queue_max",
            s.append_queue_max,
            append_defaults.queue_max,
            1_000_000,
        )?,
        batch_requests_max: positive(
            "append_batch_requests_max",
            s.append_batch_requests_max,
            append_defaults.batch_requests_max,
            100_000,
        )?,
        batch_events_max: positive(
            "append_batch_events_max",
            s.append_batch_events_max,
            append_defaults.batch_events_max,
            1_000_000,
        )?,
        batch_wait_us: match s.append_batch_wait_us.unwrap_or(append_defaults.batch_wait_us) {
            us if us > 1_000_000 => {
                return Err(invalid(
                    "append_batch_wait_us",
                    format!("{us} is over 1000000 (1 s)"),
                ));
            }
            us => us,
        },
        committers: positive(
            "append_committers",
            s.append_committers,
            append_defaults.committers,
            256,
        )?,
        race_attempts_max: append_defaults.race_attempts_max,
        version_cache_streams_max: append_defaults.version_cache_streams_max,
    };
    Ok(append)
}

/// Reads' pages and buffers.
fn read_config(s: &Settings) -> Result<ReadConfig, ConfigError> {
    let read_defaults = ReadConfig::default();
    let read = ReadConfig {
        page_events_max: positive(
            "read_page_events_max",
            s.read_page_events_max,
            read_defaults.page_events_max,
            100_000,
        )?,
        buffer_events_max: positive(
            "read_buffer_events_max",
            s.read_buffer_events_max,
            read_defaults.buffer_events_max,
            100_000,
        )?,
    };
    Ok(read)
}

/// The projection runners' batches and pages.
fn projections_config(s: &Settings) -> Result<RuntimeConfig, ConfigError> {
    let projection_defaults = RuntimeConfig::default();
    let projections = RuntimeConfig {
        batch_events_max: positive(
            "projection_batch_events_max",
            s.projection_batch_events_max,
            projection_defaults.batch_events_max,
            100_000,
        )?,
        page_rows_max: positive(
            "projection_page_rows_max",
            s.projection_page_rows_max,
            projection_defaults.page_rows_max,
            100_000,
        )?,
        ..projection_defaults
    };
    Ok(projections)
}

fn absolute(setting: &'static str, path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|e| invalid(setting, format!("{}: {e}", path.display())))
}

/// The parts of `data_dir` that settings default to.
const BACKUPS_SUBDIR: &str = "backups";
const SCRATCH_SUBDIR: &str = "scratch";

/// `data_dir`, absolute: as given (resolved against the working
/// directory), or the default for this user.
fn data_dir(s: &Settings) -> Result<PathBuf, ConfigError> {
    let dir = match &s.data_dir {
        Some(dir) => absolute("data_dir", dir)?,
        None => default_data_dir(
            backup::tools::is_root(),
            std::env::var_os("XDG_DATA_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        )
        .map_err(|message| invalid("data_dir", message))?,
    };
    directory_or_absent("data_dir", &dir)?;
    Ok(dir)
}

/// Where `data_dir` defaults to. Root: `/var/lib/dbswarm`, a system
/// service's state (FHS); also, PostgreSQL's archive_command runs as
/// `postgres` and must reach the repository, which it cannot under
/// `/root`. Anyone else: the XDG data directory, `$XDG_DATA_HOME/dbswarm`
/// or `$HOME/.local/share/dbswarm` (a relative value is ignored, as the
/// XDG spec says). Never the working directory, which depends on where
/// the server happened to be started.
fn default_data_dir(
    root: bool,
    xdg_data_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> Result<PathBuf, String> {
    if root {
        return Ok(PathBuf::from("/var/lib/dbswarm"));
    }
    if let Some(data_home) = absolute_path(xdg_data_home) {
        return Ok(data_home.join("dbswarm"));
    }
    if let Some(home) = absolute_path(home) {
        return Ok(home.join(".local/share/dbswarm"));
    }
    Err("has no default: neither XDG_DATA_HOME nor HOME is an absolute path; set it".into())
}

fn absolute_path(value: Option<&OsStr>) -> Option<&Path> {
    value.map(Path::new).filter(|path| path.is_absolute())
}

/// A directory setting names a directory or a path not created yet
/// (directories are created when first written): anything else fails at
/// start, not at the first backup.
fn directory_or_absent(setting: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(invalid(
            setting,
            format!("{} exists and is not a directory", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(invalid(
            setting,
            format!(
                "{}: a part of the path is a file, not a directory",
                path.display()
            ),
        )),
        Err(e) => Err(invalid(setting, format!("{}: {e}", path.display()))),
    }
}

fn backup_config(s: &Settings, data_dir: &Path) -> Result<BackupConfig, ConfigError> {
    let d = BackupConfig::default();
    let (key, key_file) = match &s.backup_key_file {
        Some(path) => {
            let path = absolute("backup_key_file", path)?;
            let key = BackupKey::from_file(&path).map_err(|e| invalid("backup_key_file", e.to_string()))?;
            (Some(key), Some(path))
        }
        None => (None, None),
    };
    let compression_level = s.backup_compression_level.unwrap_or(d.compression_level);
    if compression_level > 9 {
        return Err(invalid(
            "backup_compression_level",
            format!("{compression_level} is outside 0..=9"),
        ));
    }
    let archive_targets = s.backup_archive_targets.clone().unwrap_or_default();
    for name in &archive_targets {
        domain::target::TargetName::parse(name)
            .map_err(|e| invalid("backup_archive_targets", e.to_string()))?;
    }
    let repository_dir = match &s.backup_repository_dir {
        Some(dir) => absolute("backup_repository_dir", dir)?,
        None => data_dir.join(BACKUPS_SUBDIR),
    };
    directory_or_absent("backup_repository_dir", &repository_dir)?;
    let scratch_dir = match &s.backup_scratch_dir {
        Some(dir) => absolute("backup_scratch_dir", dir)?,
        None => data_dir.join(SCRATCH_SUBDIR),
    };
    directory_or_absent("backup_scratch_dir", &scratch_dir)?;
    let executable = absolute(
        "backup_executable",
        s.backup_executable.as_deref().unwrap_or(&d.executable),
    )?;
    Ok(BackupConfig {
        repository_dir,
        key,
        key_file,
        tools: backup::tools::Tools {
            bin_dir: s.backup_pg_bin_dir.clone().unwrap_or(d.tools.bin_dir.clone()),
        },
        compression_level,
        scratch_dir,
        archive_targets,
        executable,
        ..d
    })
}

fn query_config(s: &Settings) -> Result<QueryAgentConfig, ConfigError> {
    let d = QueryAgentConfig::default();
    let window = s.query_measure_window_ms.unwrap_or(d.measure_window_ms);
    if window > 3_600_000 {
        return Err(invalid(
            "query_measure_window_ms",
            format!("{window} is more than 3600000"),
        ));
    }
    Ok(QueryAgentConfig {
        measure_window_ms: window,
        ..d
    })
}

fn schema_config(s: &Settings) -> Result<MigrationConfig, ConfigError> {
    let d = MigrationConfig::default();
    let t = &d.timeouts;
    let timeouts = Timeouts {
        lock_timeout_ms: positive(
            "schema_lock_timeout_ms",
            s.schema_lock_timeout_ms,
            t.lock_timeout_ms,
            600_000,
        )?,
        statement_timeout_ms: positive(
            "schema_statement_timeout_ms",
            s.schema_statement_timeout_ms,
            t.statement_timeout_ms,
            86_400_000,
        )?,
        build_timeout_ms: positive(
            "schema_build_timeout_ms",
            s.schema_build_timeout_ms,
            t.build_timeout_ms,
            7 * 86_400_000,
        )?,
        attempts_max: positive(
            "schema_ddl_attempts_max",
            s.schema_ddl_attempts_max,
            t.attempts_max,
            1_000,
        )?,
        ..t.clone()
    };
    if timeouts.lock_timeout_ms >= timeouts.statement_timeout_ms {
        return Err(invalid(
            "schema_lock_timeout_ms",
            format!(
                "{} is not less than schema_statement_timeout_ms ({}): a lock wait would end as a statement timeout, which is not retried",
                timeouts.lock_timeout_ms, timeouts.statement_timeout_ms
            ),
        ));
    }
    let pause = s.schema_backfill_pause_ms.unwrap_or(d.backfill_pause_ms);
    if pause > 60_000 {
        return Err(invalid(
            "schema_backfill_pause_ms",
            format!("{pause} is more than 60000"),
        ));
    }
    Ok(MigrationConfig {
        timeouts,
        backfill_batch_rows: positive(
            "schema_backfill_batch_rows",
            s.schema_backfill_batch_rows,
            d.backfill_batch_rows,
            1_000_000,
        )?,
        backfill_pause_ms: pause,
        migrations_dir: s.schema_migrations_dir.clone(),
        ..d
    })
}

fn planner_llm_config(s: &Settings) -> Result<Option<LlmConfig>, ConfigError> {
    let Some(base_url) = s.planner_llm_base_url.clone() else {
        if s.planner_llm_model.is_some() || s.planner_llm_api_key.is_some() {
            return Err(invalid(
                "planner_llm_base_url",
                "planner_llm_model or planner_llm_api_key is set, but no base URL: set it or remove them",
            ));
        }
        return Ok(None);
    };
    let Some(model) = s.planner_llm_model.clone() else {
        return Err(invalid("planner_llm_model", "required with planner_llm_base_url"));
    };
    let config = LlmConfig {
        base_url,
        model,
        api_key: s.planner_llm_api_key.as_ref().map(|key| key.0.clone()),
        timeout_ms: positive(
            "planner_llm_timeout_ms",
            s.planner_llm_timeout_ms,
            llm_planner::TIMEOUT_MS_DEFAULT,
            600_000,
        )?,
        response_bytes_max: llm_planner::RESPONSE_BYTES_MAX_DEFAULT,
    };
    // Checked now (URL, key, TLS roots) so that a mistake stops the start.
    LlmPlanner::new(config.clone()).map_err(|e| invalid("planner_llm_base_url", e.to_string()))?;
    Ok(Some(config))
}

fn orchestrator_config(s: &Settings) -> Result<OrchestratorConfig, ConfigError> {
    let d = OrchestratorConfig::default();
    Ok(OrchestratorConfig {
        tick_interval_ms: positive(
            "workflow_tick_interval_ms",
            s.workflow_tick_interval_ms,
            d.tick_interval_ms,
            60_000,
        )?,
        health_wait_ms: match s.workflow_health_wait_ms {
            Some(ms) if ms > 600_000 => {
                return Err(invalid(
                    "workflow_health_wait_ms",
                    format!("{ms} is more than 600000"),
                ));
            }
            Some(ms) => ms,
            None => d.health_wait_ms,
        },
        ..d
    })
}

/// The shortest `agent_ack_wait_ms` accepted.
const ACK_WAIT_MS_MIN: u64 = 1_000;

fn agents_config(s: &Settings) -> Result<AgentsConfig, ConfigError> {
    let d = AgentsConfig::default();
    let queue_max = positive("agent_queue_max", s.agent_queue_max, d.queue_max, 10_000)?;
    let concurrency_max = positive(
        "agent_concurrency_max",
        s.agent_concurrency_max,
        d.concurrency_max,
        256,
    )?;
    if concurrency_max > queue_max {
        return Err(invalid(
            "agent_concurrency_max",
            format!(
                "{concurrency_max} is more than agent_queue_max ({queue_max}): workers would wait for nothing"
            ),
        ));
    }
    let tasks_per_s_max = s.agent_tasks_per_s_max.unwrap_or(d.tasks_per_s_max);
    if tasks_per_s_max > 100_000 {
        return Err(invalid(
            "agent_tasks_per_s_max",
            format!("{tasks_per_s_max} is more than 100000 (0 means no limit)"),
        ));
    }
    Ok(AgentsConfig {
        concurrency_max,
        queue_max,
        tasks_per_s_max,
        ack_wait_ms: match s.agent_ack_wait_ms.unwrap_or(d.ack_wait_ms) {
            // Extended every third of it: below a second, a pause of a few
            // hundred ms (NATS, the scheduler) redelivers running tasks.
            ms if !(ACK_WAIT_MS_MIN..=3_600_000).contains(&ms) => {
                return Err(invalid(
                    "agent_ack_wait_ms",
                    format!("{ms} is outside {ACK_WAIT_MS_MIN}..=3600000"),
                ));
            }
            ms => ms,
        },
        heartbeat_interval_ms: positive(
            "agent_heartbeat_interval_ms",
            s.agent_heartbeat_interval_ms,
            d.heartbeat_interval_ms,
            86_400_000,
        )?,
        ..d
    })
}

/// The database name in a PostgreSQL URL (the path, without parameters).
fn database_name(url: &str) -> &str {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    without_query.rsplit_once('/').map_or("", |(_, name)| name)
}

/// A NATS subject token or stream name: letters, digits, `_` and `-`.
fn nats_name(setting: &'static str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(invalid(
            setting,
            format!("'{value}' must be 1..=64 of ASCII letters, digits, _ and -"),
        ));
    }
    Ok(value)
}

fn relay_config(s: &Settings) -> Result<RelayConfig, ConfigError> {
    let d = RelayConfig::default();
    let max_bytes = s.events_stream_max_bytes.unwrap_or(0);
    Ok(RelayConfig {
        subject_prefix: nats_name(
            "nats_subject_prefix",
            s.nats_subject_prefix.clone(),
            &d.subject_prefix,
        )?,
        stream_name: nats_name("events_stream_name", s.events_stream_name.clone(), &d.stream_name)?,
        tasks_stream_name: nats_name(
            "tasks_stream_name",
            s.tasks_stream_name.clone(),
            &d.tasks_stream_name,
        )?,
        stream_replicas: positive(
            "events_stream_replicas",
            s.events_stream_replicas,
            d.stream_replicas,
            5,
        )?,
        stream_max_age_s: s.events_stream_max_age_s.unwrap_or(d.stream_max_age_s),
        stream_max_bytes: if max_bytes == 0 {
            -1
        } else {
            i64::try_from(max_bytes).map_err(|_| invalid("events_stream_max_bytes", "is out of range"))?
        },
        duplicate_window_s: positive(
            "nats_duplicate_window_s",
            s.nats_duplicate_window_s,
            d.duplicate_window_s,
            86_400,
        )?,
        acks_in_flight_max: positive(
            "relay_acks_in_flight_max",
            s.relay_acks_in_flight_max,
            d.acks_in_flight_max,
            100_000,
        )?,
        in_flight_bytes_max: positive(
            "relay_in_flight_bytes_max",
            s.relay_in_flight_bytes_max,
            d.in_flight_bytes_max,
            1 << 34,
        )?,
        page_events_max: positive(
            "relay_page_events_max",
            s.relay_page_events_max,
            d.page_events_max,
            100_000,
        )?,
        poll_interval_ms: positive(
            "relay_poll_interval_ms",
            s.relay_poll_interval_ms,
            d.poll_interval_ms,
            600_000,
        )?,
        step_delay_ms: match s.relay_step_delay_ms.unwrap_or(d.step_delay_ms) {
            ms if ms > 1000 => return Err(invalid("relay_step_delay_ms", format!("{ms} is over 1000"))),
            ms => ms,
        },
        checkpoint_interval_ms: positive(
            "relay_checkpoint_interval_ms",
            s.relay_checkpoint_interval_ms,
            d.checkpoint_interval_ms,
            60_000,
        )?,
        reconcile_interval_s: s.relay_reconcile_interval_s.unwrap_or(d.reconcile_interval_s),
        reconcile_window_events: positive(
            "relay_reconcile_window_events",
            s.relay_reconcile_window_events,
            d.reconcile_window_events,
            1_000_000,
        )?,
        horizon_warn_after_s: positive(
            "horizon_warn_after_s",
            s.horizon_warn_after_s,
            d.horizon_warn_after_s,
            86_400,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.grpc_addr.port(), 50051);
    }

    #[test]
    fn higher_layer_wins() {
        let file = Settings {
            grpc_addr: Some("127.0.0.1:1".into()),
            http_addr: Some("127.0.0.1:2".into()),
            ..Settings::default()
        };
        let cli = Settings {
            grpc_addr: Some("127.0.0.1:3".into()),
            ..Settings::default()
        };
        let config = Config::from_settings(cli.over(file)).unwrap();
        assert_eq!(config.grpc_addr.port(), 3);
        assert_eq!(config.http_addr.port(), 2);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            Settings {
                append_queue_max: Some(0),
                ..Settings::default()
            },
            Settings {
                database_url: Some("mysql://x".into()),
                ..Settings::default()
            },
            Settings {
                grpc_addr: Some("localhost".into()),
                ..Settings::default()
            },
            Settings {
                log_format: Some("xml".into()),
                ..Settings::default()
            },
        ];
        let names = ["append_queue_max", "database_url", "grpc_addr", "log_format"];
        for (settings, name) in cases.into_iter().zip(names) {
            let err = Config::from_settings(settings).unwrap_err().to_string();
            assert!(err.contains(&format!("`{name}`")), "{err}");
            assert!(err.contains(&format!("DBSWARM_{}", name.to_uppercase())), "{err}");
        }
    }

    #[test]
    fn file_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("dbswarm-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "grpc_adr = \"127.0.0.1:1\"\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("grpc_adr"), "{err}");
        std::fs::write(&path, "grpc_addr = \"127.0.0.1:7\"\nappend_committers = 2\n").unwrap();
        let settings = Settings::from_file(&path).unwrap();
        assert_eq!(settings.append_committers, Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod workflow_settings_tests {
    use super::*;

    fn refused(settings: Settings) -> String {
        Config::from_settings(settings).unwrap_err().to_string()
    }

    #[test]
    fn the_llm_planner_needs_a_model_and_a_sound_url_and_never_shows_its_key() {
        let no_model = refused(Settings {
            planner_llm_base_url: Some("http://127.0.0.1:1234/v1".into()),
            ..Settings::default()
        });
        assert!(no_model.contains("planner_llm_model"), "{no_model}");
        let no_url = refused(Settings {
            planner_llm_api_key: Some("sk-secret-123".into()),
            ..Settings::default()
        });
        assert!(
            no_url.contains("planner_llm_base_url") && !no_url.contains("sk-secret"),
            "{no_url}"
        );
        let bad_url = refused(Settings {
            planner_llm_base_url: Some("ftp://models".into()),
            planner_llm_model: Some("m".into()),
            planner_llm_api_key: Some("sk-secret-123".into()),
            ..Settings::default()
        });
        assert!(
            bad_url.contains("planner_llm_base_url") && !bad_url.contains("sk-secret"),
            "{bad_url}"
        );
        let config = Config::from_settings(Settings {
            planner_llm_base_url: Some("http://127.0.0.1:1234/v1".into()),
            planner_llm_model: Some("qwen".into()),
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(config.planner_llm.unwrap().model, "qwen");
    }

    #[test]
    fn agent_limits_are_checked() {
        let too_concurrent = refused(Settings {
            agent_concurrency_max: Some(300),
            agent_queue_max: Some(10),
            ..Settings::default()
        });
        assert!(
            too_concurrent.contains("agent_concurrency_max"),
            "{too_concurrent}"
        );
        let zero_tick = refused(Settings {
            workflow_tick_interval_ms: Some(0),
            ..Settings::default()
        });
        assert!(zero_tick.contains("workflow_tick_interval_ms"), "{zero_tick}");
    }
}

#[cfg(test)]
mod data_dir_tests {
    use super::*;

    fn refused(settings: Settings) -> String {
        Config::from_settings(settings).unwrap_err().to_string()
    }

    /// A scratch directory of this test process, removed by the test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dbswarm-data-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_default_data_dir_is_absolute_for_root_and_for_a_user() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            default_data_dir(true, os("/x"), os("/root")).unwrap(),
            Path::new("/var/lib/dbswarm")
        );
        assert_eq!(
            default_data_dir(false, os("/data"), os("/home/u")).unwrap(),
            Path::new("/data/dbswarm")
        );
        // A relative XDG_DATA_HOME is ignored (XDG base directory spec).
        assert_eq!(
            default_data_dir(false, os("data"), os("/home/u")).unwrap(),
            Path::new("/home/u/.local/share/dbswarm")
        );
        let none = default_data_dir(false, None, os("relative")).unwrap_err();
        assert!(none.contains("HOME"), "{none}");
    }

    #[test]
    fn backups_and_scratch_instances_default_to_the_data_dir() {
        let config = Config::from_settings(Settings::default()).unwrap();
        assert!(config.data_dir.is_absolute(), "{}", config.data_dir.display());
        assert_eq!(config.backup.repository_dir, config.data_dir.join("backups"));
        assert_eq!(config.backup.scratch_dir, config.data_dir.join("scratch"));

        let dir = scratch("given");
        let config = Config::from_settings(Settings {
            data_dir: Some(dir.clone()),
            backup_scratch_dir: Some(dir.join("elsewhere")),
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(config.backup.repository_dir, dir.join("backups"));
        assert_eq!(config.backup.scratch_dir, dir.join("elsewhere"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_relative_data_dir_is_resolved_against_the_working_directory() {
        let config = Config::from_settings(Settings {
            data_dir: Some("not-created-yet/dbswarm".into()),
            ..Settings::default()
        })
        .unwrap();
        let expected = std::env::current_dir().unwrap().join("not-created-yet/dbswarm");
        assert_eq!(config.data_dir, expected);
        assert_eq!(config.backup.repository_dir, expected.join("backups"));
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_refused_with_the_path() {
        let dir = scratch("file");
        let file = dir.join("a-file");
        std::fs::write(&file, "not a directory").unwrap();
        let is_file = refused(Settings {
            data_dir: Some(file.clone()),
            ..Settings::default()
        });
        assert!(is_file.contains("`data_dir`"), "{is_file}");
        assert!(is_file.contains("DBSWARM_DATA_DIR"), "{is_file}");
        assert!(
            is_file.contains(&format!("{} exists and is not a directory", file.display())),
            "{is_file}"
        );
        let under_file = refused(Settings {
            data_dir: Some(file.join("dbswarm")),
            ..Settings::default()
        });
        assert!(
            under_file.contains("a part of the path is a file"),
            "{under_file}"
        );
        let repository_is_file = refused(Settings {
            data_dir: Some(dir.clone()),
            backup_repository_dir: Some(file.clone()),
            ..Settings::default()
        });
        assert!(
            repository_is_file.contains("`backup_repository_dir`"),
            "{repository_is_file}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ack_wait_is_short_by_default_and_not_below_a_second() {
        let config = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(config.agents.ack_wait_ms, 5_000);
        let too_short = refused(Settings {
            agent_ack_wait_ms: Some(999),
            ..Settings::default()
        });
        assert!(too_short.contains("`agent_ack_wait_ms`"), "{too_short}");
        assert!(too_short.contains("1000..=3600000"), "{too_short}");
    }
}
