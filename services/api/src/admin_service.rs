//! `dbswarm.v1.Admin`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use event_store::relay;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::event_store_service::observe;
use crate::proto;
use crate::proto::admin_server::Admin;

pub struct AdminService {
    pool: PgPool,
    relay_leading: Arc<AtomicBool>,
}

impl AdminService {
    pub fn new(pool: PgPool, relay_leading: Arc<AtomicBool>) -> Self {
        AdminService { pool, relay_leading }
    }

    pub fn into_server(self) -> proto::admin_server::AdminServer<Self> {
        proto::admin_server::AdminServer::new(self)
    }
}

fn relay_error_status(e: relay::RelayError) -> Status {
    match e {
        relay::RelayError::Database(e) => Status::unavailable(format!("cannot read the relay's state: {e}")),
        other => Status::internal(other.to_string()),
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
            .map_err(relay_error_status)
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
}
