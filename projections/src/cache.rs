//! Redis as a cache of read-model answers: never the truth, never needed.
//!
//! Queries are answered cache-aside: [`ReadCache::get_or_load`] serves a
//! stored answer while it is valid and otherwise calls `load` (the
//! PostgreSQL query) and stores what it returns. Redis may be down, slow,
//! flushed or restarted at any moment: every answer still comes, from
//! `load`, and an answer that an invalidation has voided is never served.
//!
//! Validity is decided by tag versions, not by deleting keys. Each tag has a
//! version in Redis (`{prefix}tag:{tag}`), and every entry also depends on
//! a global epoch (`{prefix}epoch`). An entry (`{prefix}entry:{key}`) holds
//! the versions it was loaded under next to its value, and a read is ONE
//! `MGET` of the entry and the current versions (an atomic snapshot): a hit
//! only when they are equal. [`ReadCache::invalidate`] changes the versions
//! of its tags, which voids every entry depending on them at once, without
//! knowing their keys.
//!
//! Staleness bound. A miss reads the versions *before* it calls `load` and
//! stores the entry under those. So once an invalidation has changed a
//! version, every entry whose load started before it is a miss, and an
//! entry that hits afterwards was loaded afterwards: a caller that
//! invalidates after its commit never reads its own write's predecessor
//! from the cache. Whatever else fails, an entry expires `ttl_ms` after it
//! was stored: no answer is older than `ttl_ms` plus its load's duration.
//!
//! Lost invalidations. Any Redis error or timeout (every round trip has the
//! deadline `op_timeout_ms`) turns the cache Degraded: calls skip Redis and
//! load, invalidations are skipped, and a probe task retries every
//! `recheck_interval_ms`. Before it turns Healthy it changes the epoch, so
//! whatever was cached before an invalidation that failed or was skipped is
//! void after recovery. Every degradation and every skipped invalidation
//! advances a generation next to the status; a probe that sees it move
//! while recovering changes the epoch again before turning Healthy.
//!
//! Versions do not count from 1: a missing version is created with a random
//! 62-bit value and then `INCR`ed. A version lost to FLUSHALL, eviction or a
//! restart therefore never comes back with a value an old entry recorded,
//! as a counter restarting at 1 would.
//!
//! Stampedes. On a miss one caller wins `SET {prefix}lock:{key} NX PX` and
//! loads; the others poll the entry for up to `lock_wait_ms` and load
//! themselves if it does not come (or as soon as the lock is gone without
//! an entry: the winner failed or its value was too large to store). The
//! lock is released only by its holder (token compared in a Lua script);
//! a cancelled winner's lock expires after `lock_ttl_ms`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

/// Deletes the lock only when it still holds the caller's token: a winner
/// slower than `lock_ttl_ms` must not release a later winner's lock.
const RELEASE_LOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// How often a stampede loser looks for the winner's entry.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Deadline of opening a connection (off the request path: only the probe
/// and `connect` open connections).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Epoch changes a probe tries when degradations keep racing with it.
const RECOVER_ATTEMPTS: usize = 3;
/// Format marker at the start of every entry.
const ENTRY_MAGIC: &str = "dbswarm-cache/1";

/// The status shares one atomic with a generation: the low bits are the
/// status, the rest counts degradations and skipped invalidations.
const DISABLED: u64 = 0;
const HEALTHY: u64 = 1;
const DEGRADED: u64 = 2;
const STATUS_BITS: u64 = 0b11;
const GENERATION: u64 = 0b100;

#[derive(Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// `None` = cache off: every query goes to PostgreSQL.
    pub url: Option<String>,
    /// Lifetime of an entry: the staleness bound when invalidations are lost.
    pub ttl_ms: u64,
    /// Deadline of every Redis round trip; a slower Redis costs a query at
    /// most this, once, before the cache degrades.
    pub op_timeout_ms: u64,
    /// Lifetime of a stampede lock (a crashed or cancelled winner's lock
    /// expires after it).
    pub lock_ttl_ms: u64,
    /// How long a stampede loser waits for the winner's entry before it
    /// loads itself.
    pub lock_wait_ms: u64,
    /// Larger answers are returned but not stored.
    pub value_bytes_max: usize,
    /// While degraded, how often Redis is probed.
    pub recheck_interval_ms: u64,
    /// Prefix of every key, so that several deployments (and tests) can
    /// share one Redis.
    pub key_prefix: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            url: None,
            ttl_ms: 5000,
            op_timeout_ms: 50,
            lock_ttl_ms: 2000,
            lock_wait_ms: 200,
            value_bytes_max: 1024 * 1024,
            recheck_interval_ms: 500,
            key_prefix: "dbswarm:".into(),
        }
    }
}

/// The URL may carry a password: it is not printed.
impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("ttl_ms", &self.ttl_ms)
            .field("op_timeout_ms", &self.op_timeout_ms)
            .field("lock_ttl_ms", &self.lock_ttl_ms)
            .field("lock_wait_ms", &self.lock_wait_ms)
            .field("value_bytes_max", &self.value_bytes_max)
            .field("recheck_interval_ms", &self.recheck_interval_ms)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// No Redis configured: every query loads.
    Disabled,
    /// Redis answers: queries are served from it when valid.
    Healthy,
    /// Redis failed: every query loads until the probe reaches it again.
    Degraded,
}

/// Outcomes of `get_or_load` since the cache was created, one per call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Served from Redis (including a stampede loser served the winner's entry).
    pub hits: u64,
    /// Loaded, and stored when possible.
    pub misses: u64,
    /// Loaded without asking Redis: cache disabled or degraded.
    pub bypasses: u64,
    /// Redis failed during the call: loaded, and the cache degraded.
    pub errors: u64,
}

impl CacheStats {
    pub fn requests(&self) -> u64 {
        self.hits + self.misses + self.bypasses + self.errors
    }

    /// Hits among all calls; 0 before the first.
    pub fn hit_ratio(&self) -> f64 {
        match self.requests() {
            0 => 0.0,
            requests => self.hits as f64 / requests as f64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CacheError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer {op} within {timeout_ms} ms")]
    Timeout { op: &'static str, timeout_ms: u64 },
    #[error("unexpected Redis reply to {op}: {reply}")]
    Reply { op: &'static str, reply: String },
    #[error("no Redis client (invalid URL)")]
    NoClient,
    #[error("no Redis connection")]
    NoConnection,
}

fn unexpected(op: &'static str, reply: &Value) -> CacheError {
    CacheError::Reply {
        op,
        reply: format!("{reply:?}"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Hit,
    Miss,
    Bypass,
    Error,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    errors: AtomicU64,
}

struct Inner {
    config: CacheConfig,
    client: Option<Client>,
    /// Replaced by the probe on recovery; requests clone it (a multiplexed
    /// connection is a handle to one shared socket).
    connection: RwLock<Option<MultiplexedConnection>>,
    /// Status (low bits) and generation, see [`GENERATION`].
    state: AtomicU64,
    counters: Counters,
}

/// The read cache. Clones share one connection, status and statistics; the
/// probe task ends when the last clone is dropped.
#[derive(Clone)]
pub struct ReadCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("status", &self.status())
            .field("key_prefix", &self.inner.config.key_prefix)
            .finish()
    }
}

/// The keys one `get_or_load` touches.
struct Keys {
    entry: String,
    lock: String,
    /// The epoch, then the entry's tags: the order of the recorded versions.
    versions: Vec<String>,
}

/// What one read saw.
struct Snapshot {
    entry: Option<Vec<u8>>,
    lock_held: bool,
    /// `None` when a version is missing (never created, flushed, evicted).
    versions: Option<Vec<i64>>,
}

impl Snapshot {
    fn hit(&self) -> Option<String> {
        let current = self.versions.as_ref()?;
        let (recorded, value) = decode_entry(self.entry.as_deref()?)?;
        (recorded == *current).then_some(value)
    }
}

/// What `get_or_load` does after asking Redis.
enum Plan {
    Serve(String),
    Load {
        /// The versions read before loading; `None`: do not store.
        versions: Option<Vec<i64>>,
        /// The stampede lock's token, when this call holds it.
        lock: Option<String>,
    },
}

impl ReadCache {
    /// Connects to `config.url`. Never fails: if Redis is unreachable the
    /// cache starts degraded and recovers by itself. `url: None` gives a
    /// disabled cache.
    pub async fn connect(config: CacheConfig) -> ReadCache {
        let Some(url) = config.url.clone() else {
            return ReadCache::with(config, None, DISABLED);
        };
        let client = match Client::open(url.as_str()) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::error!(%error, "invalid Redis URL; the read cache stays degraded");
                None
            }
        };
        let cache = ReadCache::with(config, client, DEGRADED);
        metrics::gauge!("dbswarm_cache_degraded").set(1.0);
        if cache.recover().await {
            tracing::info!("read cache connected to Redis");
        } else if cache.inner.client.is_some() {
            tracing::warn!(
                "Redis unreachable; the read cache starts degraded (queries go to PostgreSQL) and retries"
            );
        }
        if cache.inner.client.is_some() {
            let interval = Duration::from_millis(cache.inner.config.recheck_interval_ms.max(10));
            tokio::spawn(probe(Arc::downgrade(&cache.inner), interval));
        }
        cache
    }

    /// A cache that never asks Redis: every query loads.
    pub fn disabled() -> ReadCache {
        ReadCache::with(CacheConfig::default(), None, DISABLED)
    }

    fn with(config: CacheConfig, client: Option<Client>, status: u64) -> ReadCache {
        ReadCache {
            inner: Arc::new(Inner {
                config,
                client,
                connection: RwLock::new(None),
                state: AtomicU64::new(status),
                counters: Counters::default(),
            }),
        }
    }

    pub fn status(&self) -> CacheStatus {
        match self.inner.state.load(Ordering::SeqCst) & STATUS_BITS {
            HEALTHY => CacheStatus::Healthy,
            DEGRADED => CacheStatus::Degraded,
            _ => CacheStatus::Disabled,
        }
    }

    pub fn stats(&self) -> CacheStats {
        let counters = &self.inner.counters;
        CacheStats {
            hits: counters.hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            bypasses: counters.bypasses.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
        }
    }

    /// Cache-aside: the stored answer of `key` if it is valid, else
    /// `load()`'s, stored (when `Ok` and not over `value_bytes_max`) as
    /// depending on `tags`. Redis trouble never fails the call: it loads.
    pub async fn get_or_load<E, F, Fut>(&self, key: &str, tags: &[String], load: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
    {
        let Some(mut connection) = self.healthy_connection() else {
            self.record(Outcome::Bypass);
            return load().await;
        };
        let keys = self.keys(key, tags);
        let (versions, lock) = match self.prepare(&mut connection, &keys).await {
            Ok(Plan::Serve(value)) => {
                self.record(Outcome::Hit);
                return Ok(value);
            }
            Ok(Plan::Load { versions, lock }) => (versions, lock),
            Err(error) => {
                self.degrade(&error);
                self.record(Outcome::Error);
                return load().await;
            }
        };
        self.record(Outcome::Miss);
        let loaded = load().await;
        let storable = loaded
            .as_ref()
            .ok()
            .filter(|value| value.len() <= self.inner.config.value_bytes_max);
        self.store(&mut connection, &keys, versions, storable, lock).await;
        loaded
    }

    /// Voids every entry that depends on any of `tags`. Call it after the
    /// change is committed. Never fails: if Redis does not take it, the
    /// cache degrades, and the epoch change on recovery voids everything
    /// the lost invalidation should have.
    pub async fn invalidate(&self, tags: &[String]) {
        if tags.is_empty() || self.status() == CacheStatus::Disabled {
            return;
        }
        metrics::counter!("dbswarm_cache_invalidations_total").increment(tags.len() as u64);
        let mut current = self.inner.state.load(Ordering::SeqCst);
        loop {
            match current & STATUS_BITS {
                HEALTHY => break,
                DEGRADED => {
                    // Skipped: advancing the generation makes a probe that
                    // is recovering right now change the epoch once more.
                    let next = current.wrapping_add(GENERATION);
                    match self
                        .inner
                        .state
                        .compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst)
                    {
                        Ok(_) => return,
                        Err(actual) => current = actual,
                    }
                }
                _ => return,
            }
        }
        let Some(mut connection) = self.connection() else {
            self.degrade(&CacheError::NoConnection);
            return;
        };
        let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
        if let Err(error) = self.bump(&mut connection, &keys, "invalidate").await {
            self.degrade(&error);
        }
    }

    fn keys(&self, key: &str, tags: &[String]) -> Keys {
        let prefix = &self.inner.config.key_prefix;
        let mut versions = Vec::with_capacity(tags.len() + 1);
        versions.push(self.epoch_key());
        versions.extend(tags.iter().map(|tag| self.tag_key(tag)));
        Keys {
            entry: format!("{prefix}entry:{key}"),
            lock: format!("{prefix}lock:{key}"),
            versions,
        }
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.inner.config.key_prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}epoch", self.inner.config.key_prefix)
    }

    /// Lifetime of a tag's version key. Any lifetime is safe: a version
    /// that expires comes back at a fresh random value, which no entry has
    /// recorded, so its entries miss (never hit stale). It only bounds
    /// Redis memory: one key per invalidated row would otherwise stay for
    /// ever. The epoch has none: its expiry would void every entry at once.
    fn tag_ttl_ms(&self) -> u64 {
        self.inner.config.ttl_ms.saturating_mul(10).max(60_000)
    }

    /// `SET key <random> NX`, with the tag lifetime unless it is the epoch.
    fn create_version(&self, pipe: &mut redis::Pipeline, key: &str) {
        let command = pipe.cmd("SET").arg(key).arg(fresh_version()).arg("NX");
        if key != self.epoch_key() {
            command.arg("PX").arg(self.tag_ttl_ms());
        }
        command.ignore();
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn healthy_connection(&self) -> Option<MultiplexedConnection> {
        if self.inner.state.load(Ordering::SeqCst) & STATUS_BITS != HEALTHY {
            return None;
        }
        self.connection()
    }

    fn is_healthy(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) & STATUS_BITS == HEALTHY
    }

    fn record(&self, outcome: Outcome) {
        let counters = &self.inner.counters;
        let (counter, label) = match outcome {
            Outcome::Hit => (&counters.hits, "hit"),
            Outcome::Miss => (&counters.misses, "miss"),
            Outcome::Bypass => (&counters.bypasses, "bypass"),
            Outcome::Error => (&counters.errors, "error"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("dbswarm_cache_requests_total", "result" => label).increment(1);
    }

    /// Turns the cache Degraded (and advances the generation); warns only
    /// on the transition from Healthy.
    fn degrade(&self, error: &CacheError) {
        let mut current = self.inner.state.load(Ordering::SeqCst);
        loop {
            if current & STATUS_BITS == DISABLED {
                return;
            }
            let next = (current & !STATUS_BITS).wrapping_add(GENERATION) | DEGRADED;
            match self
                .inner
                .state
                .compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if current & STATUS_BITS == HEALTHY {
            metrics::gauge!("dbswarm_cache_degraded").set(1.0);
            tracing::warn!(%error, "Redis failed; the read cache is degraded and queries go to PostgreSQL");
        }
    }

    /// One Redis round trip under `op_timeout_ms`, timed.
    async fn round_trip<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        let timeout_ms = self.inner.config.op_timeout_ms;
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_millis(timeout_ms), request).await;
        metrics::histogram!("dbswarm_cache_op_seconds", "op" => op).record(started.elapsed().as_secs_f64());
        match result {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(CacheError::Timeout { op, timeout_ms }),
        }
    }

    /// `MGET` of the entry, (the lock,) and the versions: one snapshot.
    async fn snapshot(
        &self,
        connection: &mut MultiplexedConnection,
        keys: &Keys,
        with_lock: bool,
        op: &'static str,
    ) -> Result<Snapshot, CacheError> {
        let mut command = redis::cmd("MGET");
        command.arg(&keys.entry);
        if with_lock {
            command.arg(&keys.lock);
        }
        command.arg(&keys.versions);
        let reply: Value = self.round_trip(op, command.query_async(connection)).await?;
        let mut items = array(reply, 1 + usize::from(with_lock) + keys.versions.len(), op)?.into_iter();
        let entry = items.next().map(|v| bytes(v, op)).transpose()?.flatten();
        let lock_held = match with_lock {
            true => items
                .next()
                .map(|v| bytes(v, op))
                .transpose()?
                .flatten()
                .is_some(),
            false => false,
        };
        let versions = versions(items.collect(), op)?;
        Ok(Snapshot {
            entry,
            lock_held,
            versions,
        })
    }

    /// Everything before `load`: the read, and on a miss the lock and the
    /// versions to record (read before loading: see the module doc).
    async fn prepare(&self, connection: &mut MultiplexedConnection, keys: &Keys) -> Result<Plan, CacheError> {
        let first = self.snapshot(connection, keys, false, "read").await?;
        if let Some(value) = first.hit() {
            return Ok(Plan::Serve(value));
        }
        // Miss: create missing versions (random, see the module doc), try
        // the lock, and read the versions again if some were missing; one
        // round trip.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let missing = first.versions.is_none();
        let mut pipe = redis::pipe();
        if missing {
            for key in &keys.versions {
                self.create_version(&mut pipe, key);
            }
        }
        pipe.cmd("SET")
            .arg(&keys.lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.inner.config.lock_ttl_ms.max(1));
        if missing {
            pipe.cmd("MGET").arg(&keys.versions);
        }
        let replies: Vec<Value> = self.round_trip("lock", pipe.query_async(connection)).await?;
        let mut replies = replies.into_iter();
        let won = match replies.next() {
            Some(Value::Okay) => true,
            Some(Value::SimpleString(s)) if s == "OK" => true,
            Some(Value::Nil) => false,
            other => return Err(unexpected("lock", &other.unwrap_or(Value::Nil))),
        };
        let mut versions = match missing {
            true => match replies.next() {
                Some(reply) => versions(array(reply, keys.versions.len(), "lock")?, "lock")?,
                None => return Err(unexpected("lock", &Value::Nil)),
            },
            false => first.versions,
        };
        if won {
            return Ok(Plan::Load {
                versions,
                lock: Some(token),
            });
        }
        // Lost: wait for the winner's entry, or until its lock is gone.
        let deadline = Instant::now() + Duration::from_millis(self.inner.config.lock_wait_ms);
        loop {
            let now = Instant::now();
            if now >= deadline || !self.is_healthy() {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
            let seen = self.snapshot(connection, keys, true, "wait").await?;
            if let Some(value) = seen.hit() {
                return Ok(Plan::Serve(value));
            }
            // Fresher, and still read before loading.
            versions = seen.versions;
            if !seen.lock_held {
                break;
            }
        }
        Ok(Plan::Load { versions, lock: None })
    }

    /// Stores the loaded value (if any, and if the cache is still healthy)
    /// and releases the lock (if held), in one round trip.
    async fn store(
        &self,
        connection: &mut MultiplexedConnection,
        keys: &Keys,
        versions: Option<Vec<i64>>,
        value: Option<&String>,
        lock: Option<String>,
    ) {
        let ttl_ms = self.inner.config.ttl_ms;
        let mut pipe = redis::pipe();
        let mut commands = 0;
        if let (Some(versions), Some(value)) = (versions, value)
            && ttl_ms > 0
            && self.is_healthy()
        {
            pipe.cmd("SET")
                .arg(&keys.entry)
                .arg(encode_entry(&versions, value))
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            commands += 1;
        }
        if let Some(token) = lock {
            pipe.cmd("EVAL")
                .arg(RELEASE_LOCK)
                .arg(1)
                .arg(&keys.lock)
                .arg(token)
                .ignore();
            commands += 1;
        }
        if commands == 0 {
            return;
        }
        if let Err(error) = self.round_trip("store", pipe.exec_async(connection)).await {
            self.degrade(&error);
        }
    }

    /// Changes versions to values no entry has recorded: a missing version
    /// is created at random first, then every one is incremented. Atomic,
    /// so that a FLUSHALL cannot slip between the two.
    async fn bump(
        &self,
        connection: &mut MultiplexedConnection,
        keys: &[String],
        op: &'static str,
    ) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys {
            self.create_version(&mut pipe, key);
            pipe.cmd("INCR").arg(key).ignore();
            if *key != self.epoch_key() {
                pipe.cmd("PEXPIRE").arg(key).arg(self.tag_ttl_ms()).ignore();
            }
        }
        self.round_trip(op, pipe.exec_async(connection)).await
    }

    async fn open(&self) -> Result<MultiplexedConnection, CacheError> {
        let client = self.inner.client.as_ref().ok_or(CacheError::NoClient)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(connection) => Ok(connection?),
            Err(_) => Err(CacheError::Timeout {
                op: "connect",
                timeout_ms: CONNECT_TIMEOUT.as_millis() as u64,
            }),
        }
    }

    /// From Degraded to Healthy: a new connection, an epoch change (entries
    /// from before are void: invalidations may have been lost), then the
    /// status, unless the generation moved meanwhile (then again). Returns
    /// whether the cache is healthy.
    async fn recover(&self) -> bool {
        if self.inner.state.load(Ordering::SeqCst) & STATUS_BITS != DEGRADED {
            return self.is_healthy();
        }
        let mut connection = match self.open().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "Redis still unreachable");
                return false;
            }
        };
        let epoch = [self.epoch_key()];
        for _ in 0..RECOVER_ATTEMPTS {
            let observed = self.inner.state.load(Ordering::SeqCst);
            if observed & STATUS_BITS != DEGRADED {
                return self.is_healthy();
            }
            if let Err(error) = self.bump(&mut connection, &epoch, "probe").await {
                tracing::debug!(%error, "Redis still unusable");
                return false;
            }
            *self
                .inner
                .connection
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
            let healthy = (observed & !STATUS_BITS) | HEALTHY;
            if self
                .inner
                .state
                .compare_exchange(observed, healthy, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                metrics::gauge!("dbswarm_cache_degraded").set(0.0);
                return true;
            }
        }
        false
    }
}

/// While the cache lives: every `interval`, a degraded cache tries to
/// recover. Holds only a weak reference between probes, so it ends after
/// the last `ReadCache` clone is dropped.
async fn probe(weak: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let cache = ReadCache { inner };
        if cache.status() == CacheStatus::Degraded && cache.recover().await {
            tracing::info!("Redis answers again; the read cache is healthy (entries from before are void)");
        }
    }
}

/// A random start for a missing version, below 2^62 so that `INCR` never
/// overflows.
fn fresh_version() -> i64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 2) as i64
}

fn array(reply: Value, len: usize, op: &'static str) -> Result<Vec<Value>, CacheError> {
    match reply {
        Value::Array(items) if items.len() == len => Ok(items),
        other => Err(unexpected(op, &other)),
    }
}

fn bytes(reply: Value, op: &'static str) -> Result<Option<Vec<u8>>, CacheError> {
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(unexpected(op, &other)),
    }
}

/// The versions, or `None` if one is missing or not a number (such an
/// answer is loaded and not stored until the version is created again).
fn versions(items: Vec<Value>, op: &'static str) -> Result<Option<Vec<i64>>, CacheError> {
    let mut versions = Vec::with_capacity(items.len());
    for item in items {
        let Some(raw) = bytes(item, op)? else {
            return Ok(None);
        };
        match std::str::from_utf8(&raw).ok().and_then(|s| s.parse().ok()) {
            Some(version) => versions.push(version),
            None => return Ok(None),
        }
    }
    Ok(Some(versions))
}

/// `dbswarm-cache/1 <v1> <v2> ..\n<value>`: the versions the value was
/// loaded under, then the value as is.
fn encode_entry(versions: &[i64], value: &str) -> Vec<u8> {
    let mut entry = String::with_capacity(ENTRY_MAGIC.len() + 21 * versions.len() + 1 + value.len());
    entry.push_str(ENTRY_MAGIC);
    for version in versions {
        entry.push(' ');
        entry.push_str(&version.to_string());
    }
    entry.push('\n');
    entry.push_str(value);
    entry.into_bytes()
}

/// The recorded versions and the value; `None` for anything else (another
/// format, a damaged entry): a miss, never an error.
fn decode_entry(entry: &[u8]) -> Option<(Vec<i64>, String)> {
    let newline = entry.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&entry[..newline]).ok()?;
    let mut fields = header.split(' ');
    if fields.next()? != ENTRY_MAGIC {
        return None;
    }
    let versions = fields
        .map(|field| field.parse().ok())
        .collect::<Option<Vec<i64>>>()?;
    let value = String::from_utf8(entry[newline + 1..].to_vec()).ok()?;
    Some((versions, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_with_its_versions() {
        let entry = encode_entry(&[7, 1 << 61, -3], "{\"total\":\n42}\n");
        assert_eq!(
            decode_entry(&entry),
            Some((vec![7, 1 << 61, -3], "{\"total\":\n42}\n".to_string()))
        );
    }

    #[test]
    fn an_empty_value_round_trips() {
        assert_eq!(
            decode_entry(&encode_entry(&[1], "")),
            Some((vec![1], String::new()))
        );
    }

    #[test]
    fn damaged_or_foreign_entries_decode_to_nothing() {
        assert_eq!(decode_entry(b""), None);
        assert_eq!(decode_entry(b"dbswarm-cache/1 1 2"), None, "no header end");
        assert_eq!(decode_entry(b"dbswarm-cache/2 1\nvalue"), None, "other format");
        assert_eq!(decode_entry(b"dbswarm-cache/1 1 x\nvalue"), None, "bad version");
        assert_eq!(decode_entry(b"dbswarm-cache/1  1\nvalue"), None, "empty version");
        assert_eq!(decode_entry(b"dbswarm-cache/1 1\n\xff"), None, "not UTF-8");
        assert_eq!(decode_entry(b"plain value"), None);
    }

    fn snapshot(entry: Option<Vec<u8>>, versions: Option<Vec<i64>>) -> Snapshot {
        Snapshot {
            entry,
            lock_held: false,
            versions,
        }
    }

    #[test]
    fn a_hit_needs_every_recorded_version_to_be_current() {
        let entry = encode_entry(&[10, 20], "answer");
        assert_eq!(
            snapshot(Some(entry.clone()), Some(vec![10, 20])).hit(),
            Some("answer".to_string())
        );
        assert_eq!(
            snapshot(Some(entry.clone()), Some(vec![10, 21])).hit(),
            None,
            "tag invalidated"
        );
        assert_eq!(
            snapshot(Some(entry.clone()), Some(vec![11, 20])).hit(),
            None,
            "epoch changed"
        );
        assert_eq!(
            snapshot(Some(entry.clone()), Some(vec![10])).hit(),
            None,
            "other tags"
        );
        assert_eq!(snapshot(Some(entry), None).hit(), None, "a version missing");
        assert_eq!(snapshot(None, Some(vec![10, 20])).hit(), None, "no entry");
    }

    #[test]
    fn fresh_versions_leave_room_to_increment() {
        for _ in 0..1000 {
            let version = fresh_version();
            assert!((0..1 << 62).contains(&version));
        }
    }

    #[test]
    fn hit_ratio_counts_every_outcome() {
        let stats = CacheStats {
            hits: 3,
            misses: 1,
            bypasses: 0,
            errors: 0,
        };
        assert_eq!(stats.hit_ratio(), 0.75);
        assert_eq!(CacheStats::default().hit_ratio(), 0.0);
    }
}
