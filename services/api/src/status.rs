//! The one place where errors become gRPC statuses: every error the edge
//! sees has a [`domain::Code`] (`fn code` in its own crate), [`grpc_code`]
//! maps a code to a gRPC code once, and the helpers below build the
//! statuses, with their details (`ErrorInfo`, `BadRequest`) where a client
//! needs more than the code. No status is built anywhere else.

use std::collections::HashMap;

use domain::workflow::PlanError;
use domain::{AppendError, Code, ExpectedVersion, ValidationError};
use event_store::StoreError;
use projections::ProjectionError;
use sagas::SagaError;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every status dbswarm sets details on.
const ERROR_DOMAIN: &str = "dbswarm";

/// The gRPC code of each of dbswarm's codes.
pub fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::NotFound => tonic::Code::NotFound,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::Conflict => tonic::Code::Aborted,
        Code::Overloaded => tonic::Code::ResourceExhausted,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Timeout => tonic::Code::DeadlineExceeded,
        Code::Internal => tonic::Code::Internal,
    }
}

/// A status of `code` with `message`; an internal error is logged too.
pub fn status(code: Code, message: impl Into<String>) -> Status {
    let message = message.into();
    if code == Code::Internal {
        tracing::error!(error = %message, "internal error");
    }
    Status::new(grpc_code(code), message)
}

pub fn invalid_argument(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, message)
}

pub fn not_found(message: impl Into<String>) -> Status {
    status(Code::NotFound, message)
}

pub fn failed_precondition(message: impl Into<String>) -> Status {
    status(Code::FailedPrecondition, message)
}

pub fn unavailable(message: impl Into<String>) -> Status {
    status(Code::Unavailable, message)
}

pub fn timeout(message: impl Into<String>) -> Status {
    status(Code::Timeout, message)
}

pub fn internal(message: impl Into<String>) -> Status {
    status(Code::Internal, message)
}

/// INVALID_ARGUMENT naming the request field that is wrong (`BadRequest`).
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    Status::with_error_details(
        grpc_code(Code::InvalidArgument),
        message.clone(),
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

/// INVALID_ARGUMENT with each of `problems` on `field`.
fn invalid_fields(field: &str, message: String, problems: Vec<String>) -> Status {
    Status::with_error_details(
        grpc_code(Code::InvalidArgument),
        message,
        ErrorDetails::with_bad_request(
            problems
                .into_iter()
                .map(|problem| tonic_types::FieldViolation::new(field, problem))
                .collect::<Vec<_>>(),
        ),
    )
}

pub fn validation_status(e: ValidationError) -> Status {
    let message = e.to_string();
    Status::with_error_details(
        grpc_code(e.code()),
        message,
        ErrorDetails::with_bad_request_violation(e.field, e.message),
    )
}

/// INVALID_ARGUMENT with every problem of a plan, each on `field`.
pub fn plan_error_status(field: &str, e: PlanError) -> Status {
    debug_assert_eq!(e.code(), Code::InvalidArgument);
    invalid_fields(field, e.to_string(), e.problems)
}

/// A plain-English request the planner cannot plan, on `field`.
pub fn planner_error_status(field: &str, e: &domain::workflow::PlannerError, message: String) -> Status {
    debug_assert_eq!(e.code(), Code::InvalidArgument);
    invalid_field(field, message)
}

fn with_info(code: Code, message: String, reason: &str, metadata: HashMap<String, String>) -> Status {
    Status::with_error_details(
        grpc_code(code),
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

fn expected_text(expected: ExpectedVersion) -> String {
    expected.to_string()
}

pub fn store_error_status(e: StoreError) -> Status {
    let (code, message) = (e.code(), e.to_string());
    match e {
        StoreError::Append(AppendError::WrongExpectedVersion {
            stream_id,
            expected,
            actual,
        }) => with_info(
            code,
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
            code,
            message,
            "EVENT_ID_REUSED",
            HashMap::from([("event_id".to_owned(), event_id.to_string())]),
        ),
        StoreError::Append(AppendError::PartialReplay {
            written,
            total,
            example,
        }) => with_info(
            code,
            message,
            "PARTIAL_REPLAY",
            HashMap::from([
                ("written".to_owned(), written.to_string()),
                ("total".to_owned(), total.to_string()),
                ("event_id".to_owned(), example.to_string()),
            ]),
        ),
        _ => status(code, message),
    }
}

pub fn projection_error_status(e: ProjectionError) -> Status {
    let (code, message) = (e.code(), e.to_string());
    match e {
        ProjectionError::Definition(definition) => {
            invalid_fields("definition_json", message, definition.problems)
        }
        ProjectionError::Store(store) => store_error_status(store),
        _ => status(code, message),
    }
}

pub fn saga_error_status(e: SagaError) -> Status {
    let (code, message) = (e.code(), e.to_string());
    match e {
        // A bad request names its field (`BadRequest`), as a bad append does.
        SagaError::Schedule(schedule) => match schedule.field() {
            Some(field) => validation_status(ValidationError::new(field, message)),
            None => status(code, message),
        },
        SagaError::Invalid(e) => validation_status(e),
        SagaError::Store(store) => store_error_status(store),
        _ => status(code, message),
    }
}

pub fn targets_error_status(e: agents::TargetsError) -> Status {
    use agents::TargetsError;
    let (code, message) = (e.code(), e.to_string());
    match e {
        TargetsError::Validation(e) => validation_status(e),
        TargetsError::Store(store) => store_error_status(store),
        _ => status(code, message),
    }
}

pub fn relay_error_status(e: event_store::relay::RelayError, what: &str) -> Status {
    status(e.code(), format!("{what}: {e}"))
}

/// A database error met while doing `what` ([`event_store::database_code`]).
pub fn database_status(e: &sqlx::Error, what: &str) -> Status {
    status(event_store::database_code(e), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_grpc_code() {
        let grpc: std::collections::HashSet<tonic::Code> = Code::ALL.into_iter().map(grpc_code).collect();
        assert_eq!(grpc.len(), Code::ALL.len());
        assert_eq!(grpc_code(Code::Timeout), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn a_lost_connection_is_unavailable_and_other_database_errors_internal() {
        let lost = StoreError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(store_error_status(lost).code(), tonic::Code::Unavailable);
        let other = StoreError::from(sqlx::Error::RowNotFound);
        assert_eq!(store_error_status(other).code(), tonic::Code::Internal);
    }
}
