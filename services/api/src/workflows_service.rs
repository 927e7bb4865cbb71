//! `dbswarm.v1.Workflows`: plans and plain-English requests become
//! workflows run by the orchestrator; their state is read from their
//! events (Get, Watch) or from the `workflows` read model (List).

use std::pin::Pin;
use std::time::{Duration, Instant};

use domain::workflow::schedule::{MissedRunPolicy, ScheduleCommand, ScheduleState};
use domain::workflow::{
    Catalogue, CompensationStatus, Plan, Priority, TaskStatus, WorkflowEvent, WorkflowState, WorkflowStatus,
    evolve, plan_served,
};
use domain::{EventData, Limits, StreamId};
use event_store::{CommitSignal, Reader};
use llm_planner::LlmPlanner;
use projections::Projections;
use projections::query::{FilterRequest, ListRequest};
use projections::sqlgen::FilterOp;
use sagas::{
    NewSchedule, Orchestrator, SagaError, Scheduler, StartRequest, WorkflowIdentity, workflow_stream,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::event_store_service::observe;
use crate::proto;
use crate::proto::workflows_server;
use crate::status::{self, plan_error_status, projection_error_status, saga_error_status};

/// `wait` answers within this long by default, and never later than the max.
const WAIT_TIMEOUT_MS_DEFAULT: u64 = 60_000;
const WAIT_TIMEOUT_MS_MAX: u64 = 600_000;
/// States a Watch may have buffered for a slow client.
const WATCH_BUFFER_STATES_MAX: usize = 16;
const LIST_PAGE_ROWS_MAX: u32 = 1000;
const REASON_BYTES_MAX: usize = 1000;
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 200;

pub struct WorkflowsService {
    orchestrator: Orchestrator,
    llm: Option<LlmPlanner>,
    scheduler: Scheduler,
    reader: Reader,
    commits: CommitSignal,
    projections: Projections,
    catalogue: Catalogue,
    limits: Limits,
}

impl WorkflowsService {
    /// `catalogue`: what plans are validated against, derived from the
    /// agents' operations (`agents::catalogue`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        orchestrator: Orchestrator,
        llm: Option<LlmPlanner>,
        scheduler: Scheduler,
        reader: Reader,
        commits: CommitSignal,
        projections: Projections,
        catalogue: Catalogue,
        limits: Limits,
    ) -> Self {
        WorkflowsService {
            orchestrator,
            llm,
            scheduler,
            reader,
            commits,
            projections,
            catalogue,
            limits,
        }
    }

    pub fn into_server(self) -> workflows_server::WorkflowsServer<Self> {
        workflows_server::WorkflowsServer::new(self)
    }

    /// The validated plan a request asks for, and which planner made it
    /// ("plan" when given as one, "llm" or "rules").
    async fn plan(&self, source: Option<PlanSource<'_>>) -> Result<(Plan, &'static str), Status> {
        match source {
            Some(PlanSource::Json(text)) => Plan::from_json(text, &self.catalogue)
                .map(|plan| (plan, "plan"))
                .map_err(|e| plan_error_status("plan_json", e)),
            Some(PlanSource::Yaml(text)) => Plan::from_yaml(text, &self.catalogue)
                .map(|plan| (plan, "plan"))
                .map_err(|e| plan_error_status("plan_yaml", e)),
            Some(PlanSource::English(text)) => {
                // The LLM first when there is one; its plan is validated
                // like any other, and the rules stay the fallback.
                let llm_failure = match &self.llm {
                    Some(llm) => match llm.plan(text, &self.catalogue).await {
                        Ok(plan) => return Ok((plan, "llm")),
                        Err(error) => {
                            metrics::counter!("dbswarm_planner_llm_failures_total").increment(1);
                            tracing::warn!(%error, "the LLM planner failed; planning by the rules");
                            Some(error.to_string())
                        }
                    },
                    None => None,
                };
                let spec = plan_served(text, &self.catalogue).map_err(|e| {
                    let message = match &llm_failure {
                        Some(llm) => format!("{e} (the LLM planner failed too: {llm})"),
                        None => e.to_string(),
                    };
                    status::planner_error_status("operation", &e, message)
                })?;
                Plan::validate(spec, &self.catalogue)
                    .map(|plan| (plan, "rules"))
                    .map_err(|e| status::internal(format!("the planner made an invalid plan: {e}")))
            }
            None => Err(status::invalid_argument(
                "give plan_json or plan_yaml (a plan), or operation (a request in plain English)",
            )),
        }
    }

    async fn execute(&self, request: proto::ExecuteRequest) -> Result<proto::ExecuteResponse, Status> {
        use proto::execute_request::Request as Asked;
        let (plan, planner) = self
            .plan(request.request.as_ref().map(|asked| match asked {
                Asked::PlanJson(text) => PlanSource::Json(text),
                Asked::PlanYaml(text) => PlanSource::Yaml(text),
                Asked::Operation(text) => PlanSource::English(text),
            }))
            .await?;
        let plan_json = plan_text(&plan)?;
        let priority = priority_from_proto(request.priority)?;
        if request.dry_run {
            return Ok(proto::ExecuteResponse {
                workflow_id: String::new(),
                created: false,
                plan_json,
                workflow: None,
                planner: planner.to_owned(),
            });
        }
        let idempotency_key = match request.idempotency_key.as_str() {
            "" => None,
            key if key.len() > IDEMPOTENCY_KEY_BYTES_MAX => {
                return Err(status::invalid_argument(format!(
                    "idempotency_key is {} bytes; at most {IDEMPOTENCY_KEY_BYTES_MAX}",
                    key.len()
                )));
            }
            key => Some(key.to_owned()),
        };
        let wait_timeout_ms = match request.wait_timeout_ms {
            0 => WAIT_TIMEOUT_MS_DEFAULT,
            ms if ms > WAIT_TIMEOUT_MS_MAX => {
                return Err(status::invalid_argument(format!(
                    "wait_timeout_ms is {ms}; at most {WAIT_TIMEOUT_MS_MAX}"
                )));
            }
            ms => ms,
        };
        let identity = match idempotency_key {
            Some(key) => WorkflowIdentity::Key(key),
            None => WorkflowIdentity::new_workflow(),
        };
        let workflow_id = identity.workflow_id();
        // Listening before it starts: it may finish before start returns.
        let finished_here = request
            .wait
            .then(|| self.orchestrator.when_finished_here(workflow_id));
        let started = self
            .orchestrator
            .start(StartRequest {
                plan,
                priority,
                identity,
            })
            .await;
        let started = match started {
            Ok(started) => started,
            Err(error) => {
                drop(finished_here);
                self.orchestrator.stop_waiting(workflow_id);
                return Err(saga_error_status(error));
            }
        };
        let (state, version) = if let Some(here) = finished_here {
            self.wait_until_finished(workflow_id, here, Duration::from_millis(wait_timeout_ms))
                .await?
        } else {
            (started.state, started.version)
        };
        Ok(proto::ExecuteResponse {
            workflow_id: workflow_id.to_string(),
            created: started.created,
            plan_json,
            workflow: Some(workflow(&state, version)),
            planner: planner.to_owned(),
        })
    }

    async fn wait_until_finished(
        &self,
        workflow_id: Uuid,
        here: tokio::sync::oneshot::Receiver<(WorkflowState, u64)>,
        timeout: Duration,
    ) -> Result<(WorkflowState, u64), Status> {
        let mut states = self.follow(workflow_id)?;
        // Finished by this server (told at once), or by another one (seen
        // in the stream).
        let followed = async {
            while let Some(item) = states.recv().await {
                let (state, version) = item?;
                if state.status.is_final() {
                    return Ok((state, version));
                }
            }
            Err(status::unavailable(
                "the server is stopping; Get the workflow later",
            ))
        };
        let here = async {
            match here.await {
                Ok(finished) => Ok(finished),
                Err(_) => std::future::pending().await,
            }
        };
        let waited = tokio::time::timeout(timeout, async {
            tokio::select! {
                finished = here => finished,
                finished = followed => finished,
            }
        })
        .await;
        self.orchestrator.stop_waiting(workflow_id);
        waited.unwrap_or_else(|_| {
            Err(status::timeout(format!(
                "workflow {workflow_id} is not finished after {} ms; it runs on (Get or Watch it)",
                timeout.as_millis()
            )))
        })
    }

    /// The workflow's state after each change, from its stream.
    fn follow(&self, workflow_id: Uuid) -> Result<mpsc::Receiver<VersionedState>, Status> {
        let stream_id = StreamId::parse(&workflow_stream(workflow_id), &self.limits)
            .map_err(crate::status::validation_status)?;
        let mut events = self
            .reader
            .subscribe_to_stream(stream_id, 1, self.commits.clone());
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER_STATES_MAX);
        tokio::spawn(async move {
            let mut state = WorkflowState::default();
            while let Some(event) = events.recv().await {
                let folded = event
                    .map_err(crate::status::store_error_status)
                    .and_then(|event| decode(&event).map(|decoded| (decoded, event.event_version)));
                let (decoded, event_version) = match folded {
                    Ok(folded) => folded,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                state = evolve(state, &decoded);
                let version = event_version;
                // One state per batch of events that arrived together.
                if events.is_empty() || state.status.is_final() {
                    let finished = state.status.is_final();
                    if sender.send(Ok((state.clone(), version))).await.is_err() || finished {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }

    async fn get(&self, workflow_id: Uuid) -> Result<(WorkflowState, u64), Status> {
        let (state, version) = self
            .orchestrator
            .store()
            .load(&workflow_id.to_string())
            .await
            .map_err(saga_error_status)?;
        if version == 0 {
            return Err(saga_error_status(SagaError::workflow_not_found(workflow_id)));
        }
        Ok((state, version))
    }
}

impl WorkflowsService {
    async fn change_schedule(
        &self,
        method: &'static str,
        request: Request<proto::ScheduleRequest>,
        command: ScheduleCommand,
    ) -> Result<Response<proto::Schedule>, Status> {
        let started = Instant::now();
        let id = &request.get_ref().schedule_id;
        let result = async {
            // NOT_FOUND for an id that names nothing, before deciding.
            self.scheduler.get(id).await.map_err(saga_error_status)?;
            let executed = self
                .scheduler
                .execute(id, command)
                .await
                .map_err(saga_error_status)?;
            Ok(Response::new(schedule(&executed.state)))
        }
        .await;
        observe(method, started, &result);
        result
    }
}

/// The plan as a client writes one (never the stored form, whose
/// dependencies are indices), so that an answer sent back as `plan_json`
/// is the same plan.
fn plan_text(plan: &Plan) -> Result<String, Status> {
    serde_json::to_string(&plan.to_spec()).map_err(|e| status::internal(e.to_string()))
}

/// Where a plan comes from: JSON or YAML, or plain English for the planner.
enum PlanSource<'a> {
    Json(&'a str),
    Yaml(&'a str),
    English(&'a str),
}

fn decode(event: &event_store::RecordedEvent) -> Result<WorkflowEvent, Status> {
    let data = match &event.data {
        EventData::Json(text) => serde_json::from_str(text).map_err(|e| status::internal(e.to_string()))?,
        EventData::Binary(_) => return Err(status::internal("a workflow event is binary")),
    };
    WorkflowEvent::from_stored(&event.event_type, data).map_err(status::internal)
}

fn workflow_id(text: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(text)
        .map_err(|e| status::invalid_argument(format!("workflow_id '{text}' is not a UUID: {e}")))
}

fn priority_from_proto(value: i32) -> Result<Priority, Status> {
    match proto::Priority::try_from(value) {
        Ok(proto::Priority::Normal) => Ok(Priority::Normal),
        Ok(proto::Priority::Low) => Ok(Priority::Low),
        Ok(proto::Priority::High) => Ok(Priority::High),
        Err(_) => Err(status::invalid_argument(format!(
            "priority {value} is not one of PRIORITY_NORMAL (0), PRIORITY_LOW (1), PRIORITY_HIGH (2)"
        ))),
    }
}

fn priority_to_proto(priority: Priority) -> proto::Priority {
    match priority {
        Priority::Low => proto::Priority::Low,
        Priority::Normal => proto::Priority::Normal,
        Priority::High => proto::Priority::High,
    }
}

fn text<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

/// The proto view of a workflow's state.
fn workflow(state: &WorkflowState, version: u64) -> proto::Workflow {
    let Some(plan) = &state.plan else {
        return proto::Workflow::default();
    };
    let tasks: Vec<proto::TaskResult> = plan
        .tasks
        .iter()
        .zip(&state.tasks)
        .map(|(task, task_state)| proto::TaskResult {
            task_id: task.id.clone(),
            agent: task.agent.clone(),
            operation: task.operation.clone(),
            status: text(task_state.status),
            attempt: task_state.attempt,
            result_json: task_state
                .result
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default(),
            error: task_state.error.clone().unwrap_or_default(),
            error_code: code_text(task_state.error_code),
            compensation: text(task_state.compensation),
        })
        .collect();
    let tasks_completed = state
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Succeeded)
        .count() as u32;
    proto::Workflow {
        workflow_id: state.workflow_id.clone(),
        name: plan.name.clone(),
        status: text(state.status),
        priority: priority_to_proto(state.priority) as i32,
        tasks_total: plan.tasks.len() as u32,
        tasks_completed,
        summary: summary(state, plan, tasks_completed),
        error: state.error.clone().unwrap_or_default(),
        error_code: code_text(state.error_code),
        version,
        tasks_compensated: state.tasks_compensated,
        tasks,
    }
}

/// A failure's code as answers show it (empty: none).
fn code_text(code: Option<domain::Code>) -> String {
    code.map(|c| c.as_str().to_owned()).unwrap_or_default()
}

fn summary(state: &WorkflowState, plan: &Plan, tasks_completed: u32) -> String {
    let total = plan.tasks.len();
    let names = |wanted: fn(&domain::workflow::aggregate::TaskState) -> bool| {
        plan.tasks
            .iter()
            .zip(&state.tasks)
            .filter(|(_, t)| wanted(t))
            .map(|(task, _)| task.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match state.status {
        WorkflowStatus::Completed => format!("completed: all {total} tasks succeeded"),
        WorkflowStatus::Failed => format!(
            "failed: {}; {} of the {tasks_completed} completed tasks compensated",
            state.error.as_deref().unwrap_or("a task failed"),
            state.tasks_compensated
        ),
        WorkflowStatus::Cancelled => format!(
            "{} after {tasks_completed} of {total} tasks",
            state.error.as_deref().unwrap_or("cancelled")
        ),
        WorkflowStatus::Compensating => format!(
            "compensating ({}): undoing {}",
            state.error.as_deref().unwrap_or("a task failed"),
            names(|t| t.compensation == CompensationStatus::Running)
        ),
        _ => {
            let running = names(|t| matches!(t.status, TaskStatus::Scheduled | TaskStatus::Running));
            let waiting = names(|t| t.status == TaskStatus::WaitingRetry);
            let mut line = format!(
                "{}: {tasks_completed} of {total} tasks succeeded",
                text(state.status)
            );
            if !running.is_empty() {
                line.push_str(&format!("; running: {running}"));
            }
            if !waiting.is_empty() {
                line.push_str(&format!("; waiting to retry: {waiting}"));
            }
            line
        }
    }
}

/// A workflow's state and the stream version it is at, or why not.
type VersionedState = Result<(WorkflowState, u64), Status>;

type WorkflowStream = Pin<Box<dyn Stream<Item = Result<proto::Workflow, Status>> + Send>>;

#[tonic::async_trait]
impl workflows_server::Workflows for WorkflowsService {
    async fn execute(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<proto::ExecuteResponse>, Status> {
        let started = Instant::now();
        let result = WorkflowsService::execute(self, request.into_inner())
            .await
            .map(Response::new);
        observe("Workflows.Execute", started, &result);
        result
    }

    async fn get(
        &self,
        request: Request<proto::WorkflowRequest>,
    ) -> Result<Response<proto::Workflow>, Status> {
        let started = Instant::now();
        let result = async {
            let id = workflow_id(&request.get_ref().workflow_id)?;
            let (state, version) = WorkflowsService::get(self, id).await?;
            Ok(Response::new(workflow(&state, version)))
        }
        .await;
        observe("Workflows.Get", started, &result);
        result
    }

    type WatchStream = WorkflowStream;

    async fn watch(
        &self,
        request: Request<proto::WorkflowRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = Instant::now();
        let result = async {
            let id = workflow_id(&request.get_ref().workflow_id)?;
            // NOT_FOUND up front rather than a stream that never moves.
            WorkflowsService::get(self, id).await?;
            let states = self.follow(id)?;
            let stream = tokio_stream::StreamExt::map(ReceiverStream::new(states), |item| {
                item.map(|(state, version)| workflow(&state, version))
            });
            Ok(Response::new(Box::pin(stream) as WorkflowStream))
        }
        .await;
        observe("Workflows.Watch", started, &result);
        result
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::Workflow>, Status> {
        let started = Instant::now();
        let result = async {
            let request = request.into_inner();
            let id = workflow_id(&request.workflow_id)?;
            if request.reason.len() > REASON_BYTES_MAX {
                return Err(status::invalid_argument(format!(
                    "reason is {} bytes; at most {REASON_BYTES_MAX}",
                    request.reason.len()
                )));
            }
            let reason = match request.reason.trim() {
                "" => "cancelled by request".to_owned(),
                reason => reason.to_owned(),
            };
            let executed = self
                .orchestrator
                .cancel(id, reason)
                .await
                .map_err(saga_error_status)?;
            Ok(Response::new(workflow(&executed.state, executed.version)))
        }
        .await;
        observe("Workflows.Cancel", started, &result);
        result
    }

    async fn list(
        &self,
        request: Request<proto::ListWorkflowsRequest>,
    ) -> Result<Response<proto::ListWorkflowsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let request = request.into_inner();
            if request.page_size > LIST_PAGE_ROWS_MAX {
                return Err(status::invalid_argument(format!(
                    "page_size is {}; at most {LIST_PAGE_ROWS_MAX}",
                    request.page_size
                )));
            }
            let filters = match request.status.as_str() {
                "" => vec![],
                status => vec![FilterRequest {
                    column: "state".into(),
                    op: FilterOp::Eq,
                    value: Some(status.to_owned()),
                }],
            };
            let list = ListRequest {
                filters,
                order_by: Some("started_at".into()),
                descending: true,
                page_size: request.page_size as usize,
                cursor: Some(request.cursor),
            };
            let page = self
                .projections
                .list_rows("workflows", list)
                .await
                .map_err(projection_error_status)?;
            let workflows = page
                .rows
                .iter()
                .map(|row| summary_row(row))
                .collect::<Result<Vec<_>, Status>>()?;
            Ok(Response::new(proto::ListWorkflowsResponse {
                workflows,
                next_cursor: page.next_cursor.unwrap_or_default(),
            }))
        }
        .await;
        observe("Workflows.List", started, &result);
        result
    }

    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::Schedule>, Status> {
        use proto::create_schedule_request::Request as Asked;
        let started = Instant::now();
        let result = async {
            let request = request.into_inner();
            // The name first: planning may ask the LLM, which is wasted on
            // a request refused anyway.
            domain::workflow::schedule::validate_name(&request.name)
                .map_err(|e| saga_error_status(SagaError::Schedule(e)))?;
            let (plan, _) = self
                .plan(request.request.as_ref().map(|asked| match asked {
                    Asked::PlanJson(text) => PlanSource::Json(text),
                    Asked::PlanYaml(text) => PlanSource::Yaml(text),
                    Asked::Operation(text) => PlanSource::English(text),
                }))
                .await?;
            let new = NewSchedule {
                schedule_id: (!request.schedule_id.is_empty()).then_some(request.schedule_id),
                name: request.name,
                cron: request.cron,
                plan,
                priority: priority_from_proto(request.priority)?,
                policy: policy_from_proto(request.missed_run_policy)?,
            };
            let executed = self.scheduler.create(new).await.map_err(saga_error_status)?;
            Ok(Response::new(schedule(&executed.state)))
        }
        .await;
        observe("Workflows.CreateSchedule", started, &result);
        result
    }

    async fn get_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::Schedule>, Status> {
        let started = Instant::now();
        let result = self
            .scheduler
            .get(&request.get_ref().schedule_id)
            .await
            .map(|(state, _)| Response::new(schedule(&state)))
            .map_err(saga_error_status);
        observe("Workflows.GetSchedule", started, &result);
        result
    }

    async fn list_schedules(
        &self,
        _request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        let started = Instant::now();
        let result = self
            .scheduler
            .list()
            .await
            .map(|all| {
                Response::new(proto::ListSchedulesResponse {
                    schedules: all.iter().map(|(state, _)| schedule(state)).collect(),
                })
            })
            .map_err(saga_error_status);
        observe("Workflows.ListSchedules", started, &result);
        result
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::Schedule>, Status> {
        self.change_schedule("Workflows.PauseSchedule", request, ScheduleCommand::Pause)
            .await
    }

    async fn resume_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::Schedule>, Status> {
        self.change_schedule("Workflows.ResumeSchedule", request, ScheduleCommand::Resume)
            .await
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::Schedule>, Status> {
        self.change_schedule("Workflows.DeleteSchedule", request, ScheduleCommand::Delete)
            .await
    }
}

/// Fire times shown for a schedule.
const NEXT_RUNS_SHOWN: usize = 5;

fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn policy_from_proto(value: i32) -> Result<MissedRunPolicy, Status> {
    match proto::MissedRunPolicy::try_from(value) {
        Ok(proto::MissedRunPolicy::MissedRunSkip) => Ok(MissedRunPolicy::Skip),
        Ok(proto::MissedRunPolicy::MissedRunCatchUpOnce) => Ok(MissedRunPolicy::CatchUpOnce),
        Err(_) => Err(status::invalid_argument(format!(
            "missed_run_policy {value} is not one of MISSED_RUN_SKIP (0), MISSED_RUN_CATCH_UP_ONCE (1)"
        ))),
    }
}

fn schedule(state: &ScheduleState) -> proto::Schedule {
    proto::Schedule {
        schedule_id: state.schedule_id.clone(),
        name: state.name.clone(),
        cron: state.cron.clone(),
        priority: priority_to_proto(state.priority) as i32,
        missed_run_policy: match state.policy {
            MissedRunPolicy::Skip => proto::MissedRunPolicy::MissedRunSkip,
            MissedRunPolicy::CatchUpOnce => proto::MissedRunPolicy::MissedRunCatchUpOnce,
        } as i32,
        paused: state.paused,
        deleted: state.deleted,
        next_runs: state
            .next_runs(NEXT_RUNS_SHOWN)
            .into_iter()
            .map(rfc3339_ms)
            .collect(),
        last_fired_at: state.last_fired_at_ms.map(rfc3339_ms).unwrap_or_default(),
        last_workflow_id: state
            .last_workflow_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        fired_count: state.fired_count,
        skipped_runs: state.skipped_runs,
        plan_json: state
            .plan
            .as_ref()
            .and_then(|p| plan_text(p).ok())
            .unwrap_or_default(),
    }
}

fn summary_row(row: &str) -> Result<proto::WorkflowSummary, Status> {
    let row: serde_json::Value = serde_json::from_str(row).map_err(|e| status::internal(e.to_string()))?;
    let text = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
    let count = |name: &str| row[name].as_u64().unwrap_or(0) as u32;
    Ok(proto::WorkflowSummary {
        workflow_id: text("workflow_id"),
        name: text("name"),
        status: text("state"),
        priority: text("priority"),
        tasks_scheduled: count("tasks_scheduled"),
        tasks_succeeded: count("tasks_succeeded"),
        tasks_failed: count("tasks_failed"),
        error: text("error"),
        started_at: text("started_at"),
        finished_at: text("finished_at"),
    })
}
