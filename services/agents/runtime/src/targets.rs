//! Registered target databases and the agents' connection pools to them.
//!
//! **Architecture Invariant:** a target's connection URL is read from the
//! `target_databases` table only to connect; events, logs, errors and
//! answers carry `url_masked` (and errors pass through
//! [`ConnectionUrl::scrub`]), so a password never leaves that table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::target::{ConnectionUrl, TargetError, TargetName};
use domain::{
    AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend, StreamId,
    ValidationError,
};
use event_store::{Appender, StoreError};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

const TARGET_INSERT: &str = include_str!("sql/target_insert.sql");
const TARGET_GET: &str = include_str!("sql/target_get.sql");
const TARGETS_LIST: &str = include_str!("sql/targets_list.sql");
const TARGET_DELETE: &str = include_str!("sql/target_delete.sql");

pub const DESCRIPTION_BYTES_MAX: usize = 1000;
pub const TARGETS_LISTED_MAX: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetsConfig {
    /// Connections each agent keeps to one target at most.
    pub pool_connections_max: u32,
    /// Connecting to a target (and checking it on registration) gets this long.
    pub connect_timeout_ms: u64,
}

impl Default for TargetsConfig {
    fn default() -> Self {
        TargetsConfig {
            pool_connections_max: 4,
            connect_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error(transparent)]
    Invalid(#[from] TargetError),
    #[error("description is {0} bytes; at most {DESCRIPTION_BYTES_MAX}")]
    DescriptionTooLong(usize),
    #[error(
        "target database '{name}' is already registered with {url_masked}; remove it first to register another URL under that name"
    )]
    AlreadyRegistered { name: String, url_masked: String },
    #[error("no target database named '{0}' is registered")]
    NotFound(String),
    #[error("cannot reach target database '{name}' at {url_masked}: {why}")]
    Unreachable {
        name: String,
        url_masked: String,
        why: String,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
}

impl TargetsError {
    pub fn code(&self) -> domain::Code {
        use domain::Code;
        match self {
            TargetsError::Invalid(_) | TargetsError::DescriptionTooLong(_) | TargetsError::Validation(_) => {
                Code::InvalidArgument
            }
            TargetsError::AlreadyRegistered { .. } => Code::AlreadyExists,
            TargetsError::NotFound(_) => Code::NotFound,
            TargetsError::Unreachable { .. } => Code::Unavailable,
            TargetsError::Store(e) => e.code(),
            TargetsError::Database(e) => event_store::database_code(e),
        }
    }
}

/// A registered target as shown to people: no secret in it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetDatabase {
    pub name: String,
    pub url_masked: String,
    pub description: String,
    pub server_version: String,
    pub registered_at: DateTime<Utc>,
}

/// A target an agent works on: its name, the agent's pool to it, and its
/// URL, kept for scrubbing the password out of error messages.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub pool: PgPool,
    pub url: ConnectionUrl,
}

type Row = (String, String, String, String, String, DateTime<Utc>);

fn shown(row: Row) -> TargetDatabase {
    let (name, _, url_masked, description, server_version, registered_at) = row;
    TargetDatabase {
        name,
        url_masked,
        description,
        server_version,
        registered_at,
    }
}

#[derive(Clone)]
pub struct Targets {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    appender: Appender,
    limits: Limits,
    config: TargetsConfig,
    /// One pool per (agent, target), with the URL it connects to.
    pools: Mutex<HashMap<(String, String), (PgPool, ConnectionUrl)>>,
}

impl Targets {
    pub fn new(pool: PgPool, appender: Appender, limits: Limits, config: TargetsConfig) -> Targets {
        Targets {
            inner: Arc::new(Inner {
                pool,
                appender,
                limits,
                config,
                pools: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Registers a target after checking that it answers. Registering the
    /// same name with the same URL again changes nothing.
    pub async fn register(
        &self,
        name: &str,
        url: &str,
        description: &str,
    ) -> Result<TargetDatabase, TargetsError> {
        let name = TargetName::parse(name)?;
        let url = ConnectionUrl::parse(url)?;
        if description.len() > DESCRIPTION_BYTES_MAX {
            return Err(TargetsError::DescriptionTooLong(description.len()));
        }
        let server_version = self.check(&name, &url).await?;
        let inserted = sqlx::query(TARGET_INSERT)
            .bind(name.as_str())
            .bind(url.expose())
            .bind(url.masked())
            .bind(description)
            .bind(&server_version)
            .execute(&self.inner.pool)
            .await?
            .rows_affected();
        let row: Row = sqlx::query_as(TARGET_GET)
            .bind(name.as_str())
            .fetch_one(&self.inner.pool)
            .await?;
        if inserted == 0 {
            if row.1 == url.expose() {
                return Ok(shown(row));
            }
            return Err(TargetsError::AlreadyRegistered {
                name: name.to_string(),
                url_masked: row.2,
            });
        }
        let event = json!({
            "name": name.as_str(),
            "url_masked": url.masked(),
            "description": description,
            "server_version": server_version,
        });
        if let Err(e) = self.record(&name, "DatabaseRegistered", event).await {
            // Not registered without its event: undo the row.
            sqlx::query(TARGET_DELETE)
                .bind(name.as_str())
                .execute(&self.inner.pool)
                .await?;
            return Err(e);
        }
        tracing::info!(target_name = %name, url = %url, "target database registered");
        Ok(shown(row))
    }

    pub async fn list(&self) -> Result<Vec<TargetDatabase>, TargetsError> {
        let rows: Vec<Row> = sqlx::query_as(TARGETS_LIST)
            .bind(TARGETS_LISTED_MAX)
            .fetch_all(&self.inner.pool)
            .await?;
        Ok(rows.into_iter().map(shown).collect())
    }

    /// Forgets a target and closes the agents' pools to it.
    pub async fn remove(&self, name: &str) -> Result<(), TargetsError> {
        let name = TargetName::parse(name)?;
        let deleted = sqlx::query(TARGET_DELETE)
            .bind(name.as_str())
            .execute(&self.inner.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(TargetsError::NotFound(name.to_string()));
        }
        self.record(&name, "DatabaseRemoved", json!({"name": name.as_str()}))
            .await?;
        let closed: Vec<PgPool> = {
            let mut pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<_> = pools
                .keys()
                .filter(|(_, t)| t == name.as_str())
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| pools.remove(&k))
                .map(|(pool, _)| pool)
                .collect()
        };
        for pool in closed {
            pool.close().await;
        }
        Ok(())
    }

    /// The pool `agent` uses for target `name` (made on first use), and
    /// the target's URL (to scrub errors with).
    pub async fn pool_for(&self, agent: &str, name: &str) -> Result<(PgPool, ConnectionUrl), TargetsError> {
        let key = (agent.to_owned(), name.to_owned());
        if let Some(entry) = self.pools().get(&key) {
            return Ok(entry.clone());
        }
        let target = TargetName::parse(name)?;
        let row: Option<Row> = sqlx::query_as(TARGET_GET)
            .bind(target.as_str())
            .fetch_optional(&self.inner.pool)
            .await?;
        let Some(row) = row else {
            return Err(TargetsError::NotFound(name.to_owned()));
        };
        let url = ConnectionUrl::parse(&row.1)?;
        let pool = PgPoolOptions::new()
            .max_connections(self.inner.config.pool_connections_max)
            .acquire_timeout(Duration::from_millis(self.inner.config.connect_timeout_ms))
            .connect_lazy(url.expose())
            .map_err(|e| TargetsError::Unreachable {
                name: name.to_owned(),
                url_masked: url.masked(),
                why: url.scrub(&e.to_string()),
            })?;
        Ok(self.pools().entry(key).or_insert((pool, url)).clone())
    }

    /// A round trip to the target through `agent`'s pool, in ms.
    pub async fn ping(&self, agent: &str, name: &str) -> Result<f64, TargetsError> {
        let (pool, url) = self.pool_for(agent, name).await?;
        let started = std::time::Instant::now();
        sqlx::query("SELECT 1")
            .execute(&pool)
            .await
            .map_err(|e| TargetsError::Unreachable {
                name: name.to_owned(),
                url_masked: url.masked(),
                why: url.scrub(&e.to_string()),
            })?;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Every statement an agent runs on a target is logged with its time.
        tracing::info!(
            agent,
            target_name = name,
            sql = "SELECT 1",
            elapsed_ms,
            "target statement"
        );
        Ok(elapsed_ms)
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (PgPool, ConnectionUrl)>> {
        self.inner.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects once and asks for the server version.
    async fn check(&self, name: &TargetName, url: &ConnectionUrl) -> Result<String, TargetsError> {
        let unreachable = |why: String| TargetsError::Unreachable {
            name: name.to_string(),
            url_masked: url.masked(),
            why: url.scrub(&why),
        };
        let timeout = Duration::from_millis(self.inner.config.connect_timeout_ms);
        let connecting = tokio::time::timeout(timeout, async {
            let mut conn = PgConnection::connect(url.expose()).await?;
            let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(version)
        })
        .await;
        match connecting {
            Ok(Ok(version)) => Ok(version),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn record(
        &self,
        name: &TargetName,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<(), TargetsError> {
        let limits = &self.inner.limits;
        let event = ProposedEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: EventType::parse(event_type, limits)?,
            data: EventData::json(data.to_string().into_bytes())?,
            metadata: r#"{"actor":"dbswarm"}"#.to_owned(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
        };
        let request = AppendRequest::new(
            vec![StreamAppend {
                stream_id: StreamId::parse(&format!("database-{name}"), limits)?,
                expected: ExpectedVersion::Any,
                events: vec![event],
            }],
            limits,
        )?;
        self.inner.appender.append(request).await?;
        Ok(())
    }
}
