//! The one error model: a closed set of [`Code`]s every failure is given,
//! and [`OperationError`], how an agent's operation fails (code and
//! message). Each error enum the API edge sees maps itself to a `Code` in
//! its own crate; the API maps a `Code` to a gRPC status in one place.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of failure something is: what a caller can do about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The request is wrong as written (a parameter missing, mistyped or
    /// out of range): the same request fails the same way again.
    InvalidArgument,
    /// What the request names does not exist.
    NotFound,
    /// What the request would create exists already (a registered name, a
    /// reused id): it exists for good, so trying again fails again.
    AlreadyExists,
    /// The system is not in the state the request needs (e.g. a migration
    /// that is not applied cannot be completed).
    FailedPrecondition,
    /// A concurrent writer won (contention on a stream, a lock another
    /// holds): the request lost a race, not its argument.
    Conflict,
    /// Too much is asked at once (a bounded queue or limit is full).
    Overloaded,
    /// Nothing here serves the request (an operation no agent serves yet).
    Unimplemented,
    /// A dependency did not answer (a lost connection, a pool that timed
    /// out, a server shutting down): the same request may succeed later.
    Unavailable,
    /// The work did not finish within its time.
    Timeout,
    /// A bug or broken invariant; also what a failure recorded before codes
    /// existed reads as.
    #[default]
    Internal,
}

impl Code {
    pub const ALL: [Code; 10] = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::FailedPrecondition,
        Code::Conflict,
        Code::Overloaded,
        Code::Unimplemented,
        Code::Unavailable,
        Code::Timeout,
        Code::Internal,
    ];

    /// True when the same request may succeed if simply tried again:
    /// `Unavailable` and `Timeout` (a dependency did not answer in time),
    /// `Overloaded` (a limit that frees up), and `Conflict`: a conflict is
    /// a lost race with a concurrent writer, and another attempt re-reads
    /// what it works on and decides again, so it may well succeed; what
    /// collides for good (the object exists) is `AlreadyExists`, and a
    /// state that must be changed first is `FailedPrecondition`, neither
    /// retryable.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Code::Unavailable | Code::Timeout | Code::Overloaded | Code::Conflict
        )
    }

    /// The name used in events, answers and logs (`invalid_argument`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::FailedPrecondition => "failed_precondition",
            Code::Conflict => "conflict",
            Code::Overloaded => "overloaded",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Timeout => "timeout",
            Code::Internal => "internal",
        }
    }

    /// The code named `name` ([`Code::as_str`]).
    pub fn parse(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operation fails: what kind of failure, and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OperationError {
    pub code: Code,
    pub message: String,
}

impl OperationError {
    pub fn new(code: Code, message: impl Into<String>) -> OperationError {
        OperationError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> OperationError {
        OperationError::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> OperationError {
        OperationError::new(Code::NotFound, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> OperationError {
        OperationError::new(Code::FailedPrecondition, message)
    }

    pub fn conflict(message: impl Into<String>) -> OperationError {
        OperationError::new(Code::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> OperationError {
        OperationError::new(Code::Unavailable, message)
    }

    pub fn timeout(message: impl Into<String>) -> OperationError {
        OperationError::new(Code::Timeout, message)
    }

    pub fn internal(message: impl Into<String>) -> OperationError {
        OperationError::new(Code::Internal, message)
    }

    /// The same failure with its message passed through `f` (e.g. to scrub
    /// a connection URL out of it).
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> OperationError {
        OperationError {
            code: self.code,
            message: f(&self.message),
        }
    }

    /// True when another attempt may succeed ([`Code::retryable`]).
    pub fn retryable(&self) -> bool {
        self.code.retryable()
    }
}

/// A failure only described in words is one nobody classified: `Internal`.
impl From<String> for OperationError {
    fn from(message: String) -> OperationError {
        OperationError::internal(message)
    }
}

impl From<&str> for OperationError {
    fn from(message: &str) -> OperationError {
        OperationError::internal(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        let retryable: Vec<Code> = Code::ALL.into_iter().filter(|c| c.retryable()).collect();
        assert_eq!(
            retryable,
            [Code::Conflict, Code::Overloaded, Code::Unavailable, Code::Timeout]
        );
    }

    #[test]
    fn codes_read_back_from_their_names() {
        for code in Code::ALL {
            assert_eq!(Code::parse(code.as_str()), Some(code));
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::json!(code.as_str()));
            assert_eq!(serde_json::from_value::<Code>(json).unwrap(), code);
        }
        assert_eq!(Code::parse("oops"), None);
    }

    #[test]
    fn an_unclassified_failure_is_internal() {
        let error = OperationError::from("boom".to_owned());
        assert_eq!(error.code, Code::Internal);
        assert!(!error.retryable());
        assert!(OperationError::unavailable("gone").retryable());
    }
}
