//! One runtime per agent: health, lifecycle events, the JetStream consumer
//! of its task subjects, the priority queue and the workers.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use domain::workflow::derive::operation_spec;
use domain::workflow::{Catalogue, OperationSpec, Priority, StopRequest, TaskCommand, TaskKind};
use domain::{
    AppendRequest, Code, EventData, EventType, ExpectedVersion, Limits, OperationError, ProposedEvent,
    StreamAppend, StreamId,
};
use event_store::Appender;
use event_store::clock::now_ms;
use event_store::leader::stopping;
use event_store::relay::RelayConfig;
use futures_util::StreamExt;
use sagas::{Orchestrator, STOP_SUBJECT, ensure_tasks_stream};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::directory::{AgentStatus, Directory};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsConfig {
    /// Tasks one agent works on at once (per server).
    pub concurrency_max: usize,
    /// Commands delivered but not finished at most (the consumer's
    /// `max_ack_pending`): the queue in which priority orders them.
    pub queue_max: usize,
    /// Tasks one agent starts per second at most (per server); 0 = no limit.
    pub tasks_per_s_max: u32,
    /// A command not acknowledged for this long is redelivered: how fast
    /// another server takes over the commands of a crashed one. Every
    /// command this server holds, queued or running, has its ack extended
    /// every third of this, so it can be short.
    pub ack_wait_ms: u64,
    /// Deliveries of one command at most.
    pub max_deliver: i64,
    /// A heartbeat event (and health check) this often.
    pub heartbeat_interval_ms: u64,
    /// While recovering, the health check is repeated this often.
    pub recovery_interval_ms: u64,
    /// On shutdown, running tasks get this long to finish.
    pub drain_timeout_ms: u64,
    /// Progress events of one task at most this often.
    pub progress_interval_ms: u64,
    /// Each health check's dependency calls get this long.
    pub health_timeout_ms: u64,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            concurrency_max: 4,
            queue_max: 256,
            tasks_per_s_max: 0,
            ack_wait_ms: 5_000,
            max_deliver: 10,
            heartbeat_interval_ms: 30_000,
            recovery_interval_ms: 1_000,
            drain_timeout_ms: 10_000,
            progress_interval_ms: 1_000,
            health_timeout_ms: 2_000,
        }
    }
}

/// What agents work with besides the orchestrator.
#[derive(Clone)]
pub struct Dependencies {
    /// The event store's database.
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Registered target databases and the pools to them.
    pub targets: crate::targets::Targets,
}

pub type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, OperationError>> + Send + 'a>>;

/// One operation of an agent. An `Err` is the task's failure: its code
/// decides whether the orchestrator tries again.
pub trait Operation: Send + Sync {
    /// What the operation takes, read once from the task's parameters by
    /// the runtime before `run` (a plain struct, `deny_unknown_fields`;
    /// optional fields `Option` or `#[serde(default)]`). The catalogue
    /// plans are validated against is derived from it.
    type Params: DeserializeOwned + Send + 'static;

    fn run<'a>(&'a self, task: &'a TaskContext, params: Self::Params) -> OpFuture<'a>;

    /// True when the operation changes nothing (it reads and reports):
    /// such an operation may start before its start is recorded, since
    /// running it for a stale command has no effect.
    fn read_only(&self) -> bool {
        false
    }
}

/// An [`Operation`] whatever its parameters: what the runtime holds.
pub trait Served: Send + Sync {
    /// Reads the task's parameters, then runs the operation.
    fn serve<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a>;
    fn read_only(&self) -> bool;
    /// What the operation takes (derived from its `Params`).
    fn spec(&self) -> OperationSpec;
}

impl<O: Operation> Served for O {
    fn serve<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        match read_params::<O::Params>(&task.command) {
            Ok(params) => self.run(task, params),
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }

    fn read_only(&self) -> bool {
        Operation::read_only(self)
    }

    fn spec(&self) -> OperationSpec {
        operation_spec::<O::Params>()
    }
}

/// The command's parameters as `P`; what does not fit is an
/// `InvalidArgument` naming the parameter.
fn read_params<P: DeserializeOwned>(command: &TaskCommand) -> Result<P, OperationError> {
    let what = format!("{}.{}", command.agent, command.operation);
    let problems = operation_spec::<P>().problems(&what, &command.params);
    if !problems.is_empty() {
        return Err(OperationError::invalid_argument(problems.join("; ")));
    }
    let current = std::cell::RefCell::new(None);
    P::deserialize(Params {
        params: &command.params,
        current: &current,
    })
    .map_err(|e| {
        let message = match current.borrow().as_deref() {
            Some(name) => format!("parameter '{name}' of {what}: {e}"),
            None => format!("the parameters of {what}: {e}"),
        };
        OperationError::invalid_argument(message)
    })
}

/// A task's parameters as a deserializer that remembers the parameter it
/// is reading, so that a value that does not fit is named.
struct Params<'a> {
    params: &'a serde_json::Map<String, Value>,
    current: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> serde::Deserializer<'de> for Params<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(ParamsAccess {
            entries: self.params.iter(),
            value: None,
            current: self.current,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct ParamsAccess<'a> {
    entries: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
    current: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::MapAccess<'de> for ParamsAccess<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((name, value)) = self.entries.next() else {
            *self.current.borrow_mut() = None;
            return Ok(None);
        };
        *self.current.borrow_mut() = Some(name.clone());
        self.value = Some(value);
        seed.deserialize(serde::de::value::StrDeserializer::new(name))
            .map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self.value.take().cloned().unwrap_or(Value::Null);
        seed.deserialize(value)
    }
}

/// Every operation of `agents` by agent and name, with what it takes: the
/// catalogue plans are validated against.
pub fn catalogue(agents: &[AgentSpec]) -> Catalogue {
    agents.iter().fold(Catalogue::default(), |catalogue, agent| {
        agent
            .operations
            .iter()
            .fold(catalogue, |c, (name, op)| c.with(&agent.name, name, op.spec()))
    })
}

/// What an operation sees of the task it works on.
pub struct TaskContext {
    pub command: TaskCommand,
    pub deps: Dependencies,
    orchestrator: Orchestrator,
    progress_interval: Duration,
    last_progress: Mutex<Option<Instant>>,
}

impl TaskContext {
    /// The target named by `database`, or, when none is named and exactly
    /// one is registered, that one (so "optimize slow queries in the users
    /// table" needs no database when there is only one).
    pub async fn target(
        &self,
        agent: &str,
        database: Option<&str>,
    ) -> Result<(String, PgPool, domain::target::ConnectionUrl), OperationError> {
        let named;
        let name = match database {
            Some(name) => name,
            None => {
                let registered = self.deps.targets.list().await.map_err(target_error)?;
                named = match registered.as_slice() {
                    [only] => only.name.clone(),
                    [] => {
                        return Err(OperationError::invalid_argument(
                            "needs parameter 'database'; no target database is registered",
                        ));
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|t| t.name.as_str()).collect();
                        return Err(OperationError::invalid_argument(format!(
                            "needs parameter 'database': the registered ones are {}",
                            names.join(", ")
                        )));
                    }
                };
                &named
            }
        };
        let (pool, url) = self
            .deps
            .targets
            .pool_for(agent, name)
            .await
            .map_err(target_error)?;
        Ok((name.to_owned(), pool, url))
    }

    /// Reports progress on long work (as a `TaskProgressed` event), at most
    /// every `progress_interval_ms`; a report that cannot be recorded is
    /// only logged, the work goes on.
    pub async fn progress(&self, percent: f64, message: impl Into<String>) {
        {
            let mut last = self.last_progress.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.progress_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(error) = self
            .orchestrator
            .progress(&self.command, percent, message.into())
            .await
        {
            tracing::warn!(%error, task = %self.command.task_id, "cannot record progress");
        }
    }
}

/// A database error met by an operation, described by `message` (scrubbed
/// of any connection URL by the caller): `Unavailable` when the connection
/// was lost, else `Internal` ([`event_store::database_code`]).
pub fn database_error(e: &sqlx::Error, message: impl Into<String>) -> OperationError {
    OperationError::new(event_store::database_code(e), message)
}

/// A target that cannot be had, as an operation's failure (its code).
pub fn target_error(e: crate::TargetsError) -> OperationError {
    OperationError::new(e.code(), e.to_string())
}

/// An agent's name and operations.
pub struct AgentSpec {
    pub name: String,
    pub operations: BTreeMap<String, Arc<dyn Served>>,
}

/// Runs all agents until stopped.
pub struct AgentsRuntime {
    shared: Arc<Shared>,
    agents: Vec<AgentSpec>,
}

struct Shared {
    orchestrator: Orchestrator,
    directory: Directory,
    appender: Appender,
    limits: Limits,
    deps: Dependencies,
    js: jetstream::Context,
    subjects: RelayConfig,
    config: AgentsConfig,
    server_id: String,
    /// Tasks running on this server: their stop signals, by workflow and task.
    running: Mutex<HashMap<(String, String), RunningTask>>,
}

struct RunningTask {
    attempt: u32,
    kind: TaskKind,
    stop: watch::Sender<bool>,
}

impl AgentsRuntime {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        orchestrator: Orchestrator,
        directory: Directory,
        appender: Appender,
        limits: Limits,
        deps: Dependencies,
        subjects: RelayConfig,
        config: AgentsConfig,
        server_id: String,
        agents: Vec<AgentSpec>,
    ) -> AgentsRuntime {
        let js = jetstream::new(deps.nats.clone());
        // Registered before anything is served: until an agent is ready the
        // health gate waits for it rather than calling it unknown.
        for agent in &agents {
            directory.register(&agent.name, agent.operations.keys().cloned());
            // On /metrics from start (0: not ready yet, nothing dropped).
            let _ = metrics::gauge!("dbswarm_agent_ready", "agent" => agent.name.clone());
            let _ = metrics::counter!("dbswarm_agent_stale_commands_total", "agent" => agent.name.clone());
        }
        AgentsRuntime {
            agents,
            shared: Arc::new(Shared {
                orchestrator,
                directory,
                appender,
                limits,
                deps,
                js,
                subjects,
                config,
                server_id,
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Every agent of the swarm with the operations built so far.
    pub fn swarm() -> Vec<AgentSpec> {
        domain::workflow::catalogue::AGENTS
            .iter()
            .map(|name| {
                let mut operations: BTreeMap<String, Arc<dyn Served>> = BTreeMap::new();
                operations.insert(
                    domain::workflow::catalogue::PROBE.to_owned(),
                    Arc::new(crate::probe::Probe {
                        agent: (*name).to_owned(),
                    }),
                );
                AgentSpec {
                    name: (*name).to_owned(),
                    operations,
                }
            })
            .collect()
    }

    /// Runs the agents until `stop` turns true, then drains them.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        tasks.spawn(route_stop_requests(self.shared.clone(), stop.clone()));
        for agent in self.agents {
            tasks.spawn(run_agent(self.shared.clone(), agent, stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Checks what every agent depends on: the event store's database and
/// NATS. Returns their round-trip times in ms.
pub(crate) async fn check_dependencies(deps: &Dependencies, timeout_ms: u64) -> Result<(f64, f64), String> {
    // Both at once: a check costs the slower round trip, not the sum.
    let (postgres, nats) = tokio::join!(
        timed_check("PostgreSQL", timeout_ms, async {
            sqlx::query("SELECT 1").execute(&deps.pool).await.map(|_| ())
        }),
        timed_check("NATS", timeout_ms, deps.nats.flush()),
    );
    Ok((postgres?, nats?))
}

/// Runs one dependency check under `timeout_ms`; its round trip in ms.
async fn timed_check<E: std::fmt::Display>(
    what: &str,
    timeout_ms: u64,
    check: impl Future<Output = Result<(), E>>,
) -> Result<f64, String> {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_millis(timeout_ms), check).await {
        Ok(Ok(())) => Ok(started.elapsed().as_secs_f64() * 1000.0),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {timeout_ms} ms")),
    }
}

/// A command waiting for a worker: higher priority first, then older.
struct Queued {
    rank: u8,
    sequence: u64,
    command: TaskCommand,
    message: jetstream::Message,
    /// Keeps the message's ack extended until the command is answered.
    held: HeldMessage,
}

/// The messages this server holds, queued or being worked on. The ack of
/// each is extended every third of the ack wait until it is answered, so
/// that a short ack wait redelivers only the commands of a server that is
/// gone: a command waiting here for a worker longer than one ack wait
/// would otherwise be redelivered, each time spending one of its
/// `max_deliver` deliveries. At most `queue_max` (the consumer's
/// `max_ack_pending`) are held at once.
#[derive(Default)]
struct Held {
    next_id: AtomicU64,
    /// Reply subjects (where acks go), by hold id.
    replies: Mutex<HashMap<u64, async_nats::Subject>>,
}

impl Held {
    fn hold(self: &Arc<Self>, message: &jetstream::Message) -> HeldMessage {
        let id = self.next_id.fetch_add(1, AtomicOrdering::Relaxed);
        if let Some(reply) = &message.reply {
            self.replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, reply.clone());
        }
        HeldMessage {
            held: self.clone(),
            id,
        }
    }

    fn replies(&self) -> Vec<async_nats::Subject> {
        let replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        replies.values().cloned().collect()
    }
}

/// One held message; dropping it stops the extensions (drop it before a
/// NAK with a delay: an extension after it would postpone the redelivery).
struct HeldMessage {
    held: Arc<Held>,
    id: u64,
}

impl Drop for HeldMessage {
    fn drop(&mut self) {
        self.held
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Extends the ack of every held message every third of the ack wait. A
/// task of its own: an operation that keeps its worker's thread busy
/// cannot delay the extensions, as it would in the worker's own loop.
async fn keep_alive(shared: Arc<Shared>, held: Arc<Held>) {
    let period = Duration::from_millis((shared.config.ack_wait_ms / 3).max(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for reply in held.replies() {
            // What `Message::ack_with(AckKind::Progress)` sends; one that
            // cannot be sent (NATS is down) is lost with the connection anyway.
            let _ = shared.deps.nats.publish(reply, AckKind::Progress.into()).await;
        }
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank
            .cmp(&other.rank)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

/// One agent's queue, shared by its fetcher and workers.
struct Agent {
    name: String,
    operations: BTreeMap<String, Arc<dyn Served>>,
    queue: Mutex<BinaryHeap<Queued>>,
    queued: Notify,
    /// True while the agent is healthy: workers take tasks only then.
    ready: watch::Sender<bool>,
    /// The state last recorded (`None` before the first): only a change
    /// is an `AgentStateChanged` event.
    recorded: Mutex<Option<AgentStatus>>,
    /// Next start time allowed by the rate limit.
    next_start: tokio::sync::Mutex<Instant>,
    /// The messages whose ack `keep_alive` extends.
    held: Arc<Held>,
}

async fn run_agent(shared: Arc<Shared>, spec: AgentSpec, mut stop: watch::Receiver<bool>) {
    let agent = Arc::new(Agent {
        name: spec.name,
        operations: spec.operations,
        queue: Mutex::new(BinaryHeap::new()),
        queued: Notify::new(),
        ready: watch::channel(false).0,
        recorded: Mutex::new(None),
        next_start: tokio::sync::Mutex::new(Instant::now()),
        held: Arc::default(),
    });
    set_status(&shared, &agent, AgentStatus::Initializing, None).await;
    let consumer = loop {
        match become_ready(&shared, &agent).await {
            Ok(consumer) => break consumer,
            Err(reason) => {
                set_status(&shared, &agent, AgentStatus::Recovering, Some(reason)).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(shared.config.recovery_interval_ms)) => {}
                    _ = stopping(&mut stop) => {
                        set_status(&shared, &agent, AgentStatus::Stopped, None).await;
                        return;
                    }
                }
            }
        }
    };
    set_status(&shared, &agent, AgentStatus::Ready, None).await;
    let _ = agent.ready.send_replace(true);

    // Aborted when dropped, after the drain below.
    let mut keeping_alive = JoinSet::new();
    keeping_alive.spawn(keep_alive(shared.clone(), agent.held.clone()));
    let mut workers = JoinSet::new();
    for _ in 0..shared.config.concurrency_max.max(1) {
        workers.spawn(work(shared.clone(), agent.clone(), stop.clone()));
    }
    let fetching = fetch(shared.clone(), agent.clone(), consumer, stop.clone());
    let watching = watch_health(shared.clone(), agent.clone(), stop.clone());
    tokio::join!(fetching, watching);

    // Draining: the workers finish what they run (bounded), whatever is
    // still queued goes back to JetStream for another server.
    set_status(&shared, &agent, AgentStatus::Draining, None).await;
    agent.queued.notify_waiters();
    let drained = tokio::time::timeout(Duration::from_millis(shared.config.drain_timeout_ms), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(agent = %agent.name, "tasks still running after the drain timeout; they are redelivered");
        workers.abort_all();
    }
    let left: Vec<Queued> = agent
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    for Queued { message, held, .. } in left {
        drop(held);
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
    set_status(&shared, &agent, AgentStatus::Stopped, None).await;
}

/// The health check, then the agent's durable consumer.
async fn become_ready(
    shared: &Shared,
    agent: &Agent,
) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
    check_dependencies(&shared.deps, shared.config.health_timeout_ms).await?;
    ensure_tasks_stream(&shared.js, &shared.subjects)
        .await
        .map_err(|e| e.to_string())?;
    let stream = shared
        .js
        .get_stream(&shared.subjects.tasks_stream_name)
        .await
        .map_err(|e| format!("JetStream: {e}"))?;
    let name = format!("agent_{}", agent.name);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: format!("{}.task.{}.>", shared.subjects.subject_prefix, agent.name),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_millis(shared.config.ack_wait_ms),
        max_deliver: shared.config.max_deliver,
        max_ack_pending: shared.config.queue_max as i64,
        ..Default::default()
    };
    // Created with this configuration, or brought to it (JetStream applies
    // the limits that can change).
    stream
        .create_consumer(config)
        .await
        .map_err(|e| format!("JetStream consumer {name}: {e}"))
}

/// Moves delivered commands into the priority queue until stopped.
async fn fetch(
    shared: Arc<Shared>,
    agent: Arc<Agent>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sequence = 0u64;
    while !*stop.borrow() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(shared.config.queue_max)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, agent = %agent.name, "cannot pull task commands; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stopping(&mut stop) => return,
                }
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = stopping(&mut stop) => return,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, agent = %agent.name, "task command stream interrupted; pulling again");
                    break;
                }
                None => break,
            };
            let command: TaskCommand = match serde_json::from_slice(&message.payload) {
                Ok(command) => command,
                Err(error) => {
                    tracing::warn!(%error, subject = %message.subject, "not a task command; dropped");
                    let _ = message.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            sequence += 1;
            let held = agent.held.hold(&message);
            agent
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Queued {
                    rank: rank(command.priority),
                    sequence,
                    command,
                    message,
                    held,
                });
            agent.queued.notify_one();
        }
    }
}

/// A worker: takes the most urgent command while the agent is ready.
async fn work(shared: Arc<Shared>, agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let mut ready = agent.ready.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        if !*ready.borrow() {
            tokio::select! {
                _ = ready.wait_for(|r| *r) => {}
                _ = stopping(&mut stop) => return,
            }
            continue;
        }
        let next = agent.queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match next {
            Some(queued) => process(&shared, &agent, queued).await,
            None => {
                tokio::select! {
                    _ = agent.queued.notified() => {}
                    _ = stopping(&mut stop) => return,
                }
            }
        }
    }
}

async fn process(shared: &Shared, agent: &Agent, queued: Queued) {
    // `held` extends the message's ack until it is answered.
    let Queued {
        command,
        message,
        held,
        ..
    } = queued;
    let key = (command.workflow_id.clone(), command.task_id.clone());
    let already_here = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .is_some_and(|r| r.attempt == command.attempt && r.kind == command.kind);
    if already_here {
        // A resend of a command this server is working on.
        let _ = message.ack().await;
        return;
    }
    wait_for_rate_limit(shared, agent).await;
    let redelivered = message.info().map(|info| info.delivered > 1).unwrap_or(false);
    let started = Instant::now();
    let (began, outcome) = begin_and_run(shared, agent, &command, &key, redelivered).await;
    match began {
        Ok(true) => {}
        Ok(false) => {
            metrics::counter!("dbswarm_agent_stale_commands_total", "agent" => agent.name.clone())
                .increment(1);
            let _ = message.ack().await;
            return;
        }
        Err(error) => {
            tracing::warn!(%error, agent = %agent.name, task = %command.task_id, "cannot begin the task; redelivered later");
            drop(held);
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    }
    let labels = [
        ("agent", agent.name.clone()),
        ("operation", command.operation.clone()),
    ];
    metrics::histogram!("dbswarm_agent_task_seconds", &labels).record(started.elapsed().as_secs_f64());
    let Some(outcome) = outcome else {
        // Cancelled: the workflow no longer waits for it.
        metrics::counter!("dbswarm_agent_tasks_cancelled_total", &labels).increment(1);
        let _ = message.ack().await;
        return;
    };
    let result = if outcome.is_ok() { "succeeded" } else { "failed" };
    metrics::counter!(
        "dbswarm_agent_tasks_total",
        &[
            ("agent", agent.name.clone()),
            ("operation", command.operation.clone()),
            ("result", result.to_owned())
        ]
    )
    .increment(1);
    match shared.orchestrator.finish(&command, outcome).await {
        Ok(_) => {
            let _ = message.ack().await;
        }
        Err(error) => {
            // Redelivered: begin() says whether it is still wanted.
            tracing::warn!(%error, agent = %agent.name, task = %command.task_id, "cannot record the outcome; redelivered later");
            drop(held);
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

/// Asks the orchestrator whether the attempt is still current and runs
/// it, marked running on this server meanwhile; `None` as the outcome: it
/// did not run to an end (not begun, or cancelled).
async fn begin_and_run(
    shared: &Shared,
    agent: &Agent,
    command: &TaskCommand,
    key: &(String, String),
    redelivered: bool,
) -> (
    Result<bool, sagas::SagaError>,
    Option<Result<Value, OperationError>>,
) {
    let operation = agent.operations.get(&command.operation).cloned();
    let (stop_tx, stopped) = watch::channel(false);
    let running = RunningTask {
        attempt: command.attempt,
        kind: command.kind,
        stop: stop_tx,
    };
    // A read-only operation starts while its start is being recorded (it
    // changes nothing, so a stale command only wastes its work); any other
    // starts only once recorded, so a stale command never runs.
    let speculative = operation.as_ref().is_some_and(|op| op.read_only());
    let (began, outcome) = if speculative {
        shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), running);
        tokio::join!(
            shared.orchestrator.begin(command, redelivered),
            run_attempt(shared, agent, operation.as_deref(), command, stopped),
        )
    } else {
        let began = shared.orchestrator.begin(command, redelivered).await;
        if matches!(began, Ok(true)) {
            shared
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), running);
            let outcome = run_attempt(shared, agent, operation.as_deref(), command, stopped).await;
            (began, outcome)
        } else {
            (began, None)
        }
    };
    shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key);
    (began, outcome)
}

/// Runs one attempt of `command` under its deadline (its message is kept
/// from being redelivered meanwhile by `keep_alive`). `None`: stopped
/// (cancelled).
async fn run_attempt(
    shared: &Shared,
    agent: &Agent,
    operation: Option<&dyn Served>,
    command: &TaskCommand,
    mut stopped: watch::Receiver<bool>,
) -> Option<Result<Value, OperationError>> {
    let started = Instant::now();
    let context = TaskContext {
        command: command.clone(),
        deps: shared.deps.clone(),
        orchestrator: shared.orchestrator.clone(),
        progress_interval: Duration::from_millis(shared.config.progress_interval_ms),
        last_progress: Mutex::new(None),
    };
    let run: OpFuture<'_> = match operation {
        Some(operation) => operation.serve(&context),
        None => {
            let served: Vec<&str> = agent.operations.keys().map(String::as_str).collect();
            let error = OperationError::new(
                Code::Unimplemented,
                format!(
                    "agent {} does not serve operation {} (it serves: {})",
                    agent.name,
                    command.operation,
                    served.join(", ")
                ),
            );
            Box::pin(async move { Err(error) })
        }
    };
    let remaining_ms = command.deadline_ms.saturating_sub(now_ms());
    let deadline = Instant::now() + Duration::from_millis(remaining_ms);
    // A stop sender gone (no pattern match) only disables its branch.
    tokio::select! {
        outcome = run => Some(outcome),
        _ = tokio::time::sleep_until(deadline) => Some(Err(OperationError::timeout(format!(
            "exceeded its timeout (deadline passed after {} ms)",
            started.elapsed().as_millis()
        )))),
        Ok(()) = stopped.changed() => None,
    }
}

async fn wait_for_rate_limit(shared: &Shared, agent: &Agent) {
    let per_s = shared.config.tasks_per_s_max;
    if per_s == 0 {
        return;
    }
    let slot = {
        let mut next = agent.next_start.lock().await;
        let slot = (*next).max(Instant::now());
        *next = slot + Duration::from_secs(1) / per_s;
        slot
    };
    tokio::time::sleep_until(slot).await;
}

/// Heartbeats, and the health check behind them: an agent whose
/// dependencies fail stops taking tasks (recovering) until they answer.
async fn watch_health(shared: Arc<Shared>, agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let mut status = AgentStatus::Ready;
    loop {
        let wait = match status {
            AgentStatus::Ready => shared.config.heartbeat_interval_ms,
            _ => shared.config.recovery_interval_ms,
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = stopping(&mut stop) => return,
        }
        match check_dependencies(&shared.deps, shared.config.health_timeout_ms).await {
            Ok((postgres_ms, nats_ms)) => {
                if status != AgentStatus::Ready {
                    status = AgentStatus::Ready;
                    set_status(&shared, &agent, status, None).await;
                    let _ = agent.ready.send_replace(true);
                }
                heartbeat(&shared, &agent, postgres_ms, nats_ms).await;
            }
            Err(reason) => {
                if status == AgentStatus::Ready {
                    status = AgentStatus::Recovering;
                    let _ = agent.ready.send_replace(false);
                    set_status(&shared, &agent, status, Some(reason)).await;
                }
            }
        }
    }
}

/// Enters `status`. Only a change is recorded (event, log, gauge): a retry
/// that fails again, e.g. every recovery interval while NATS is down from
/// the start, only updates the reason the health gate reports, so an outage
/// of any length costs one `recovering` event.
async fn set_status(shared: &Shared, agent: &Agent, status: AgentStatus, reason: Option<String>) {
    shared.directory.set_status(&agent.name, status, reason.clone());
    let previous = agent
        .recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(status);
    if previous == Some(status) {
        return;
    }
    metrics::gauge!("dbswarm_agent_ready", "agent" => agent.name.clone())
        .set(if status == AgentStatus::Ready { 1.0 } else { 0.0 });
    tracing::info!(agent = %agent.name, status = status.as_str(), reason = reason.as_deref().unwrap_or(""), "agent state");
    let data = json!({
        "agent": agent.name,
        "status": status.as_str(),
        "reason": reason,
        "server": shared.server_id,
        "version": env!("CARGO_PKG_VERSION"),
    });
    record(shared, agent, "AgentStateChanged", data).await;
}

async fn heartbeat(shared: &Shared, agent: &Agent, postgres_ms: f64, nats_ms: f64) {
    let data = json!({
        "agent": agent.name,
        "status": AgentStatus::Ready.as_str(),
        "server": shared.server_id,
        "version": env!("CARGO_PKG_VERSION"),
        "postgres_ms": postgres_ms,
        "nats_ms": nats_ms,
    });
    record(shared, agent, "AgentHeartbeat", data).await;
}

/// Appends a lifecycle event to `agent-<name>`; one that cannot be recorded
/// (the database is what failed) is only logged.
async fn record(shared: &Shared, agent: &Agent, event_type: &str, data: Value) {
    let request = (|| {
        let event = ProposedEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: EventType::parse(event_type, &shared.limits)?,
            data: EventData::json(data.to_string().into_bytes())?,
            metadata: r#"{"actor":"dbswarm"}"#.to_owned(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
        };
        AppendRequest::new(
            vec![StreamAppend {
                stream_id: StreamId::parse(&format!("agent-{}", agent.name), &shared.limits)?,
                expected: ExpectedVersion::Any,
                events: vec![event],
            }],
            &shared.limits,
        )
    })();
    let outcome = match request {
        Ok(request) => shared
            .appender
            .append(request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = outcome {
        tracing::warn!(%error, agent = %agent.name, event_type, "cannot record an agent event");
    }
}

/// Stop requests (core NATS, sent when a workflow is cancelled) reach the
/// tasks running here.
async fn route_stop_requests(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let subject = format!("{}.{STOP_SUBJECT}", shared.subjects.subject_prefix);
    let mut subscription = match shared.deps.nats.subscribe(subject).await {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::warn!(%error, "cannot subscribe to stop requests; cancelled tasks run to their end");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            message = subscription.next() => message,
            _ = stopping(&mut stop) => return,
        };
        let Some(message) = message else { return };
        let Ok(request) = serde_json::from_slice::<StopRequest>(&message.payload) else {
            tracing::warn!("not a stop request; ignored");
            continue;
        };
        let running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
        for task_id in &request.task_ids {
            if let Some(task) = running.get(&(request.workflow_id.clone(), task_id.clone())) {
                tracing::info!(workflow_id = %request.workflow_id, %task_id, reason = %request.reason, "stopping a task");
                let _ = task.stop.send(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Text;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Params {
        database: Option<Text>,
        tables: Option<Vec<Text>>,
        #[serde(default)]
        analyze: bool,
    }

    fn command(params: Value) -> TaskCommand {
        TaskCommand {
            workflow_id: "w".into(),
            task_id: "t".into(),
            agent: "backup".into(),
            operation: "create".into(),
            kind: TaskKind::Run,
            attempt: 1,
            priority: Priority::Normal,
            params: params.as_object().cloned().unwrap_or_default(),
            deadline_ms: 0,
        }
    }

    #[test]
    fn parameters_that_do_not_fit_are_invalid_arguments_naming_the_parameter() {
        // Given: parameters read into the operation's type
        let read = |params: Value| read_params::<Params>(&command(params));
        // Then: what fits is read
        let ok = read(json!({"database": "app", "tables": ["a"], "analyze": true})).unwrap();
        assert_eq!(ok.database.as_deref(), Some("app"));
        // and what does not is an InvalidArgument naming the parameter
        for (params, named) in [
            (
                json!({"tables": [""]}),
                "parameter 'tables' of backup.create: must be a non-empty string",
            ),
            (
                json!({"analyze": "yes"}),
                "parameter 'analyze' of backup.create must be Boolean",
            ),
            (json!({"typo": 1}), "backup.create has no parameter 'typo'"),
            (
                json!({"database": " "}),
                "parameter 'database' of backup.create: must be a non-empty string",
            ),
        ] {
            let error = read(params.clone()).unwrap_err();
            assert_eq!(error.code, Code::InvalidArgument, "{params}");
            assert!(error.message.contains(named), "{params}: {}", error.message);
        }
    }
}
