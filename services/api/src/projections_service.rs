//! `dbswarm.v1.Projections`: definitions, control, status and queries of
//! read models.

use std::time::Instant;

use projections::definition::Definition;
use projections::query::{FilterRequest, ListRequest};
use projections::runtime::{GenerationStatus, ProjectionState, ProjectionStatus};
use projections::sqlgen::FilterOp;
use projections::{ProjectionError, Projections};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::event_store_service::observe;
use crate::proto;
use crate::proto::projections_server;
use crate::status::{self, projection_error_status};

pub struct ProjectionsService {
    projections: Projections,
}

impl ProjectionsService {
    pub fn new(projections: Projections) -> Self {
        ProjectionsService { projections }
    }

    pub fn into_server(self) -> projections_server::ProjectionsServer<Self> {
        projections_server::ProjectionsServer::new(self)
    }
}

fn state(state: ProjectionState) -> proto::ProjectionState {
    match state {
        ProjectionState::Running => proto::ProjectionState::Running,
        ProjectionState::Paused => proto::ProjectionState::Paused,
        ProjectionState::Rebuilding => proto::ProjectionState::Rebuilding,
        ProjectionState::Failed => proto::ProjectionState::Failed,
    }
}

fn generation(g: GenerationStatus) -> proto::GenerationStatus {
    proto::GenerationStatus {
        generation: g.generation,
        status: g.status,
        definition_json: g.definition.to_string(),
        position: Some(proto::AllPosition {
            transaction_id: g.position.transaction_id,
            global_position: g.position.global_position,
        }),
        events_applied: g.events_applied,
        lag_events: g.lag_events,
        lag_seconds: g.lag_seconds,
        failure: g.failure.map(|f| proto::ProjectionFailure {
            event_id: f.event_id.to_string(),
            global_position: f.global_position,
            error: f.error,
            failed_at: f.failed_at.to_rfc3339(),
        }),
        started_at: g.started_at.to_rfc3339(),
        caught_up_at: g.caught_up_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
    }
}

fn status(s: ProjectionStatus) -> proto::ProjectionStatus {
    proto::ProjectionStatus {
        name: s.name,
        state: state(s.state) as i32,
        paused: s.paused,
        live_generation: s.live_generation.unwrap_or(0),
        generations: s.generations.into_iter().map(generation).collect(),
    }
}

fn filter_op(op: i32) -> Result<FilterOp, Status> {
    use proto::FilterOp as P;
    match P::try_from(op) {
        Ok(P::Eq) => Ok(FilterOp::Eq),
        Ok(P::Ne) => Ok(FilterOp::Ne),
        Ok(P::Lt) => Ok(FilterOp::Lt),
        Ok(P::Le) => Ok(FilterOp::Le),
        Ok(P::Gt) => Ok(FilterOp::Gt),
        Ok(P::Ge) => Ok(FilterOp::Ge),
        Ok(P::Prefix) => Ok(FilterOp::Prefix),
        Ok(P::IsNull) => Ok(FilterOp::IsNull),
        Ok(P::IsNotNull) => Ok(FilterOp::IsNotNull),
        Ok(P::Unspecified) | Err(_) => Err(status::invalid_argument(format!(
            "filters[].op {op} is not an operator: use FILTER_OP_EQ .. FILTER_OP_IS_NOT_NULL"
        ))),
    }
}

fn name_of(request: &proto::ProjectionRequest) -> Result<&str, Status> {
    if request.name.is_empty() {
        return Err(status::invalid_argument("name is required"));
    }
    Ok(&request.name)
}

fn answer<T, U>(
    method: &'static str,
    started: Instant,
    result: Result<T, ProjectionError>,
    map: impl FnOnce(T) -> U,
) -> Result<Response<U>, Status> {
    let result = result
        .map(map)
        .map(Response::new)
        .map_err(projection_error_status);
    observe(method, started, &result);
    result
}

#[tonic::async_trait]
impl projections_server::Projections for ProjectionsService {
    async fn define(
        &self,
        request: Request<proto::DefineProjectionRequest>,
    ) -> Result<Response<proto::ProjectionStatus>, Status> {
        let started = Instant::now();
        let result = match Definition::from_json(&request.get_ref().definition_json) {
            Ok(definition) => self.projections.define(definition).await,
            Err(e) => Err(e.into()),
        };
        answer("Projections.Define", started, result, status)
    }

    async fn get(
        &self,
        request: Request<proto::ProjectionRequest>,
    ) -> Result<Response<proto::ProjectionStatus>, Status> {
        let started = Instant::now();
        let name = name_of(request.get_ref())?;
        answer(
            "Projections.Get",
            started,
            self.projections.status(name).await,
            status,
        )
    }

    async fn list(
        &self,
        _request: Request<proto::ListProjectionsRequest>,
    ) -> Result<Response<proto::ListProjectionsResponse>, Status> {
        let started = Instant::now();
        answer(
            "Projections.List",
            started,
            self.projections.list().await,
            |all| proto::ListProjectionsResponse {
                projections: all.into_iter().map(status).collect(),
            },
        )
    }

    async fn pause(
        &self,
        request: Request<proto::ProjectionRequest>,
    ) -> Result<Response<proto::ProjectionStatus>, Status> {
        let started = Instant::now();
        let name = name_of(request.get_ref())?;
        answer(
            "Projections.Pause",
            started,
            self.projections.pause(name).await,
            status,
        )
    }

    async fn resume(
        &self,
        request: Request<proto::ProjectionRequest>,
    ) -> Result<Response<proto::ProjectionStatus>, Status> {
        let started = Instant::now();
        let name = name_of(request.get_ref())?;
        answer(
            "Projections.Resume",
            started,
            self.projections.resume(name).await,
            status,
        )
    }

    async fn reset(
        &self,
        request: Request<proto::ProjectionRequest>,
    ) -> Result<Response<proto::ProjectionStatus>, Status> {
        let started = Instant::now();
        let name = name_of(request.get_ref())?;
        answer(
            "Projections.Reset",
            started,
            self.projections.reset(name).await,
            status,
        )
    }

    async fn rebuild(
        &self,
        request: Request<proto::ProjectionRequest>,
    ) -> Result<Response<proto::ProjectionStatus>, Status> {
        let started = Instant::now();
        let name = name_of(request.get_ref())?;
        answer(
            "Projections.Rebuild",
            started,
            self.projections.rebuild(name).await,
            status,
        )
    }

    async fn skip_event(
        &self,
        request: Request<proto::SkipEventRequest>,
    ) -> Result<Response<proto::ProjectionStatus>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(status::invalid_argument("name is required"));
        }
        let event_id = Uuid::parse_str(&request.event_id).map_err(|_| {
            status::invalid_argument(format!("event_id '{}' is not a UUID", request.event_id))
        })?;
        if request.reason.trim().is_empty() || request.reason.len() > 1000 {
            return Err(status::invalid_argument(
                "reason is required (1 to 1000 bytes): it is kept with the skip record",
            ));
        }
        let result = self
            .projections
            .skip_event(&request.name, event_id, &request.reason)
            .await;
        answer("Projections.SkipEvent", started, result, status)
    }

    async fn get_row(&self, request: Request<proto::GetRowRequest>) -> Result<Response<proto::Row>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        if request.read_model.is_empty() {
            return Err(status::invalid_argument("read_model is required"));
        }
        let result = match self.projections.get_row(&request.read_model, &request.key).await {
            Ok(Some(json)) => Ok(Response::new(proto::Row { json })),
            Ok(None) => Err(status::not_found(format!(
                "read model '{}' has no row with key '{}'",
                request.read_model, request.key
            ))),
            Err(e) => Err(projection_error_status(e)),
        };
        observe("Projections.GetRow", started, &result);
        result
    }

    async fn list_rows(
        &self,
        request: Request<proto::ListRowsRequest>,
    ) -> Result<Response<proto::ListRowsResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        if request.read_model.is_empty() {
            return Err(status::invalid_argument("read_model is required"));
        }
        let mut filters = Vec::with_capacity(request.filters.len());
        for filter in request.filters {
            filters.push(FilterRequest {
                op: filter_op(filter.op)?,
                column: filter.column,
                value: Some(filter.value),
            });
        }
        let list = ListRequest {
            filters,
            order_by: Some(request.order_by),
            descending: request.descending,
            page_size: request.page_size as usize,
            cursor: Some(request.cursor),
        };
        let result = self.projections.list_rows(&request.read_model, list).await;
        answer("Projections.ListRows", started, result, |page| {
            proto::ListRowsResponse {
                rows: page.rows.into_iter().map(|json| proto::Row { json }).collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            }
        })
    }
}
