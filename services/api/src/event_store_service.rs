//! `dbswarm.v1.EventStore`.

use std::pin::Pin;
use std::time::Instant;

use domain::Limits;
use event_store::{Appender, CommitSignal, EventReceiver, Reader};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::proto;
use crate::proto::event_store_server::EventStore;
use crate::status::{store_error_status, validation_status};

pub struct EventStoreService {
    appender: Appender,
    reader: Reader,
    commits: CommitSignal,
    limits: Limits,
}

impl EventStoreService {
    pub fn new(appender: Appender, reader: Reader, commits: CommitSignal, limits: Limits) -> Self {
        EventStoreService {
            appender,
            reader,
            commits,
            limits,
        }
    }

    pub fn into_server(self) -> proto::event_store_server::EventStoreServer<Self> {
        // Requests larger than the append limit plus framing are refused by
        // tonic itself with RESOURCE_EXHAUSTED before they are decoded.
        let decoding_bytes_max = self.limits.append_bytes_max + 64 * 1024;
        proto::event_store_server::EventStoreServer::new(self).max_decoding_message_size(decoding_bytes_max)
    }
}

/// Records the request count (by method and code) and latency.
pub(crate) fn observe<T>(method: &'static str, started: Instant, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => "Ok".to_owned(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!("dbswarm_grpc_requests_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("dbswarm_grpc_request_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn event_stream<T: Send + 'static>(
    receiver: EventReceiver,
    wrap: fn(proto::RecordedEvent) -> T,
) -> EventStream<T> {
    Box::pin(ReceiverStream::new(receiver).map(move |item| {
        item.map(|event| wrap(convert::recorded_event(event)))
            .map_err(store_error_status)
    }))
}

#[tonic::async_trait]
impl EventStore for EventStoreService {
    async fn append_to_stream(
        &self,
        request: Request<proto::AppendToStreamRequest>,
    ) -> Result<Response<proto::AppendToStreamResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let append =
                convert::append_to_stream(request.into_inner(), &self.limits).map_err(validation_status)?;
            let mut outcome = self.appender.append(append).await.map_err(store_error_status)?;
            let stream = outcome.streams.pop().expect("one stream in, one result out");
            Ok(Response::new(proto::AppendToStreamResponse {
                result: Some(convert::stream_result(stream)),
            }))
        }
        .await;
        observe("AppendToStream", started, &result);
        result
    }

    async fn append_multi(
        &self,
        request: Request<proto::AppendMultiRequest>,
    ) -> Result<Response<proto::AppendMultiResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let append =
                convert::append_multi(request.into_inner(), &self.limits).map_err(validation_status)?;
            let outcome = self.appender.append(append).await.map_err(store_error_status)?;
            Ok(Response::new(proto::AppendMultiResponse {
                results: outcome.streams.into_iter().map(convert::stream_result).collect(),
            }))
        }
        .await;
        observe("AppendMulti", started, &result);
        result
    }

    type ReadStreamStream = EventStream<proto::ReadStreamResponse>;

    async fn read_stream(
        &self,
        request: Request<proto::ReadStreamRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let started = Instant::now();
        let result = async {
            let query =
                convert::read_stream(request.into_inner(), &self.limits).map_err(validation_status)?;
            let receiver = self.reader.read_stream(query).await.map_err(store_error_status)?;
            Ok(Response::new(event_stream(receiver, |event| {
                proto::ReadStreamResponse { event: Some(event) }
            })))
        }
        .await;
        observe("ReadStream", started, &result);
        result
    }

    type ReadAllStream = EventStream<proto::ReadAllResponse>;

    async fn read_all(
        &self,
        request: Request<proto::ReadAllRequest>,
    ) -> Result<Response<Self::ReadAllStream>, Status> {
        let started = Instant::now();
        let result = convert::read_all(request.into_inner(), &self.limits)
            .map_err(validation_status)
            .map(|query| {
                let receiver = self.reader.read_all(query);
                Response::new(event_stream(receiver, |event| proto::ReadAllResponse {
                    event: Some(event),
                }))
            });
        observe("ReadAll", started, &result);
        result
    }

    type SubscribeStream = EventStream<proto::ReadAllResponse>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let result = convert::subscribe(request.into_inner(), &self.limits)
            .map_err(validation_status)
            .map(|query| {
                let receiver = self.reader.subscribe_all(query, self.commits.clone());
                Response::new(event_stream(receiver, |event| proto::ReadAllResponse {
                    event: Some(event),
                }))
            });
        observe("Subscribe", started, &result);
        result
    }

    type SubscribeToStreamStream = EventStream<proto::ReadStreamResponse>;

    async fn subscribe_to_stream(
        &self,
        request: Request<proto::SubscribeToStreamRequest>,
    ) -> Result<Response<Self::SubscribeToStreamStream>, Status> {
        let started = Instant::now();
        let result = convert::subscribe_to_stream(request.into_inner(), &self.limits)
            .map_err(validation_status)
            .map(|(stream_id, from_version)| {
                let receiver = self
                    .reader
                    .subscribe_to_stream(stream_id, from_version, self.commits.clone());
                Response::new(event_stream(receiver, |event| proto::ReadStreamResponse {
                    event: Some(event),
                }))
            });
        observe("SubscribeToStream", started, &result);
        result
    }
}
