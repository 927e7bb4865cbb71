//! `dbswarm.v1.Admin`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use domain::ValidationError;
use event_store::{consumer, relay};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::event_store_service::observe;
use crate::proto;
use crate::proto::admin_server::Admin;
use crate::status::{self, targets_error_status, validation_status};
use agents::{TargetDatabase, Targets};

fn target(t: TargetDatabase) -> proto::TargetDatabase {
    proto::TargetDatabase {
        name: t.name,
        url_masked: t.url_masked,
        description: t.description,
        server_version: t.server_version,
        registered_at: t.registered_at.to_rfc3339(),
    }
}

pub struct AdminService {
    pool: PgPool,
    relay_leading: Arc<AtomicBool>,
    targets: Targets,
}

impl AdminService {
    pub fn new(pool: PgPool, relay_leading: Arc<AtomicBool>, targets: Targets) -> Self {
        AdminService {
            pool,
            relay_leading,
            targets,
        }
    }

    pub fn into_server(self) -> proto::admin_server::AdminServer<Self> {
        proto::admin_server::AdminServer::new(self)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_relay_status(
        &self,
        _request: Request<proto::GetRelayStatusRequest>,
    ) -> Result<Response<proto::RelayStatus>, Status> {
        let started = Instant::now();
        let result = relay::relay_status(&self.pool)
            .await
            .map_err(|e| status::relay_error_status(e, "cannot read the relay's state"))
            .map(|status| {
                Response::new(proto::RelayStatus {
                    this_server_leads: self.relay_leading.load(Ordering::SeqCst),
                    checkpoint: status.checkpoint.map(|c| proto::AllPosition {
                        transaction_id: c.transaction_id,
                        global_position: c.global_position,
                    }),
                    lag_events: status.lag_events,
                    lag_seconds: status.lag_seconds,
                    oldest_transaction: status.oldest_transaction.map(|o| proto::OldestTransaction {
                        pid: o.pid,
                        database: o.database,
                        state: o.state,
                        age_seconds: o.age_seconds,
                    }),
                })
            });
        observe("GetRelayStatus", started, &result);
        result
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = async {
            let limit = match request.limit {
                0 => 100,
                n if n > DEAD_LETTERS_PAGE_MAX => {
                    return Err(validation_status(ValidationError::new(
                        "limit",
                        format!("{n} is over {DEAD_LETTERS_PAGE_MAX}"),
                    )));
                }
                n => n,
            };
            let rows = consumer::list_dead_letters(
                &self.pool,
                &request.consumer,
                request.after_id,
                i64::from(limit),
            )
            .await
            .map_err(|e| status::database_status(&e, "cannot read dead letters"))?;
            Ok(Response::new(proto::ListDeadLettersResponse {
                dead_letters: rows.into_iter().map(dead_letter).collect(),
            }))
        }
        .await;
        observe("ListDeadLetters", started, &result);
        result
    }

    async fn replay_dead_letter(
        &self,
        request: Request<proto::ReplayDeadLetterRequest>,
    ) -> Result<Response<proto::ReplayDeadLetterResponse>, Status> {
        let started = Instant::now();
        let id = request.into_inner().id;
        let result = async {
            let requested = consumer::request_replay(&self.pool, id)
                .await
                .map_err(|e| status::database_status(&e, "cannot request the replay"))?;
            if requested {
                return Ok(Response::new(proto::ReplayDeadLetterResponse {}));
            }
            let known = consumer::list_dead_letters(&self.pool, "", id - 1, 1)
                .await
                .map_err(|e| status::database_status(&e, "cannot read dead letters"))?
                .into_iter()
                .any(|d| d.id == id);
            Err(if known {
                status::failed_precondition(format!("dead letter {id} was already replayed"))
            } else {
                status::not_found(format!("there is no dead letter {id}"))
            })
        }
        .await;
        observe("ReplayDeadLetter", started, &result);
        result
    }

    async fn register_database(
        &self,
        request: Request<proto::RegisterDatabaseRequest>,
    ) -> Result<Response<proto::TargetDatabase>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = self
            .targets
            .register(&request.name, &request.url, &request.description)
            .await
            .map(|t| Response::new(target(t)))
            .map_err(targets_error_status);
        observe("Admin.RegisterDatabase", started, &result);
        result
    }

    async fn list_databases(
        &self,
        _request: Request<proto::ListDatabasesRequest>,
    ) -> Result<Response<proto::ListDatabasesResponse>, Status> {
        let started = Instant::now();
        let result = self
            .targets
            .list()
            .await
            .map(|all| {
                Response::new(proto::ListDatabasesResponse {
                    databases: all.into_iter().map(target).collect(),
                })
            })
            .map_err(targets_error_status);
        observe("Admin.ListDatabases", started, &result);
        result
    }

    async fn remove_database(
        &self,
        request: Request<proto::RemoveDatabaseRequest>,
    ) -> Result<Response<proto::RemoveDatabaseResponse>, Status> {
        let started = Instant::now();
        let result = self
            .targets
            .remove(&request.get_ref().name)
            .await
            .map(|()| Response::new(proto::RemoveDatabaseResponse {}))
            .map_err(targets_error_status);
        observe("Admin.RemoveDatabase", started, &result);
        result
    }
}

/// Most dead letters one `ListDeadLetters` returns.
const DEAD_LETTERS_PAGE_MAX: u32 = 1000;

fn rfc3339(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn dead_letter(d: consumer::DeadLetter) -> proto::DeadLetter {
    proto::DeadLetter {
        id: d.id,
        consumer: d.consumer,
        event_id: d.event_id.to_string(),
        stream_id: d.stream_id,
        event_version: d.event_version as u64,
        error: d.error,
        deliveries: d.deliveries,
        created_at: rfc3339(Some(d.created_at)),
        replay_requested_at: rfc3339(d.replay_requested_at),
        replayed_at: rfc3339(d.replayed_at),
    }
}
