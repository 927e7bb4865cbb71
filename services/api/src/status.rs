//! The one place where errors become gRPC statuses.

use std::collections::HashMap;

use domain::workflow::WorkflowError;
use domain::{AppendError, ExpectedVersion, ValidationError};
use event_store::StoreError;
use projections::ProjectionError;
use sagas::SagaError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every status dbswarm sets details on.
const ERROR_DOMAIN: &str = "dbswarm";

pub fn validation_status(e: ValidationError) -> Status {
    let message = e.to_string();
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(e.field, e.message),
    )
}

fn with_info(code: Code, message: String, reason: &str, metadata: HashMap<String, String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

fn expected_text(expected: ExpectedVersion) -> String {
    expected.to_string()
}

pub fn store_error_status(e: StoreError) -> Status {
    let message = e.to_string();
    match e {
        StoreError::Append(AppendError::WrongExpectedVersion {
            stream_id,
            expected,
            actual,
        }) => with_info(
            Code::FailedPrecondition,
            message,
            "WRONG_EXPECTED_VERSION",
            HashMap::from([
                ("stream_id".to_owned(), stream_id.to_string()),
                ("expected_version".to_owned(), expected_text(expected)),
                (
                    "actual_version".to_owned(),
                    actual.map_or_else(|| "none".to_owned(), |v| v.to_string()),
                ),
            ]),
        ),
        StoreError::Append(AppendError::EventIdReused { event_id, .. }) => with_info(
            Code::AlreadyExists,
            message,
            "EVENT_ID_REUSED",
            HashMap::from([("event_id".to_owned(), event_id.to_string())]),
        ),
        StoreError::Append(AppendError::PartialReplay {
            written,
            total,
            example,
        }) => with_info(
            Code::AlreadyExists,
            message,
            "PARTIAL_REPLAY",
            HashMap::from([
                ("written".to_owned(), written.to_string()),
                ("total".to_owned(), total.to_string()),
                ("event_id".to_owned(), example.to_string()),
            ]),
        ),
        StoreError::Append(AppendError::VersionOverflow { .. }) => Status::out_of_range(message),
        StoreError::StreamNotFound(_) => Status::not_found(message),
        StoreError::InvalidSnapshot(_) => Status::invalid_argument(message),
        StoreError::Overloaded { .. } => Status::resource_exhausted(message),
        StoreError::Contention { .. } => Status::aborted(message),
        StoreError::CommitOutcomeUnknown(_) | StoreError::ShuttingDown | StoreError::Unavailable(_) => {
            Status::unavailable(message)
        }
        StoreError::Corrupt(_) | StoreError::Database(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal(message)
        }
    }
}

pub fn projection_error_status(e: ProjectionError) -> Status {
    let message = e.to_string();
    match e {
        ProjectionError::Definition(definition) => Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(
                definition
                    .problems
                    .into_iter()
                    .map(|problem| tonic_types::FieldViolation::new("definition_json", problem))
                    .collect::<Vec<_>>(),
            ),
        ),
        ProjectionError::NotFound(_) => Status::not_found(message),
        ProjectionError::Conflict(_) => Status::failed_precondition(message),
        ProjectionError::InvalidQuery(_) => Status::invalid_argument(message),
        ProjectionError::Store(store) => store_error_status(store),
        ProjectionError::Unavailable(_) => Status::unavailable(message),
        ProjectionError::Database(_) => Status::internal(message),
    }
}

pub fn saga_error_status(e: SagaError) -> Status {
    let message = e.to_string();
    match e {
        SagaError::Workflow(WorkflowError::AlreadyStarted(_)) => Status::already_exists(message),
        SagaError::Workflow(WorkflowError::Finished { .. }) => Status::failed_precondition(message),
        SagaError::Workflow(WorkflowError::NotStarted) | SagaError::NotFound { .. } => {
            Status::not_found(message)
        }
        SagaError::Schedule(e) => schedule_error_status(e, message),
        SagaError::Workflow(WorkflowError::UnknownTask { .. }) => Status::invalid_argument(message),
        SagaError::IdempotencyConflict { .. } => Status::already_exists(message),
        SagaError::Unhealthy { .. } | SagaError::Refused(_) => Status::failed_precondition(message),
        SagaError::NotServed { .. } => Status::unimplemented(message),
        SagaError::Contention { .. } => Status::aborted(message),
        SagaError::Invalid(e) => validation_status(e),
        SagaError::Store(store) => store_error_status(store),
        SagaError::Nats(_) | SagaError::Unavailable(_) => Status::unavailable(message),
        SagaError::Corrupt { .. } | SagaError::Database(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal(message)
        }
    }
}

pub fn targets_error_status(e: agents::TargetsError) -> Status {
    use agents::TargetsError;
    let message = e.to_string();
    match e {
        TargetsError::Invalid(_) | TargetsError::DescriptionTooLong(_) => Status::invalid_argument(message),
        TargetsError::AlreadyRegistered { .. } => Status::already_exists(message),
        TargetsError::NotFound(_) => Status::not_found(message),
        TargetsError::Unreachable { .. } => Status::failed_precondition(message),
        TargetsError::Validation(e) => validation_status(e),
        TargetsError::Store(store) => store_error_status(store),
        TargetsError::Database(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal(message)
        }
    }
}

fn schedule_error_status(e: domain::workflow::schedule::ScheduleError, message: String) -> Status {
    use domain::workflow::schedule::ScheduleError;
    // A bad request names its field (`BadRequest`), as a bad append does.
    let invalid = |field: &str| validation_status(ValidationError::new(field, message.clone()));
    match e {
        ScheduleError::AlreadyExists(_) => Status::already_exists(message),
        ScheduleError::NotCreated | ScheduleError::Deleted(_) => Status::not_found(message),
        ScheduleError::InvalidId(_) => invalid("schedule_id"),
        ScheduleError::MissingName | ScheduleError::InvalidName(_) => invalid("name"),
        ScheduleError::Cron(_) | ScheduleError::NoNextRun { .. } => invalid("cron"),
    }
}
