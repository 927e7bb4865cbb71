use domain::{AppendError, Code, ContiguityViolation};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The domain refused the append (version, idempotency).
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("stream '{0}' does not exist")]
    StreamNotFound(String),
    #[error(
        "the append queue is full ({queue_max} requests waiting, append_queue_max); retry after a short backoff"
    )]
    Overloaded { queue_max: usize },
    #[error("the commit's outcome is unknown ({0}); retry with the same event ids: the append is idempotent")]
    CommitOutcomeUnknown(String),
    #[error("{attempts} attempts lost a race with concurrent writers of the same streams; retry")]
    Contention { attempts: u32 },
    #[error("the event store is shutting down")]
    ShuttingDown,
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The stored data breaks an invariant; never expected.
    #[error("corrupt event store: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
    /// A snapshot refused on save (version 0 or ahead of its stream, schema
    /// version 0, state too large); nothing was written.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
}

/// The one rule for a database error: a lost connection, a closed pool or
/// a pool that timed out is `Unavailable` (the same request may succeed
/// later); any other database error is `Internal`.
pub fn database_code(e: &sqlx::Error) -> Code {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => Code::Unavailable,
        _ => Code::Internal,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match database_code(&e) {
            Code::Unavailable => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<ContiguityViolation> for StoreError {
    fn from(v: ContiguityViolation) -> Self {
        StoreError::Corrupt(v.to_string())
    }
}

impl StoreError {
    pub fn code(&self) -> Code {
        match self {
            StoreError::Append(e) => e.code(),
            StoreError::StreamNotFound(_) => Code::NotFound,
            StoreError::InvalidSnapshot(_) => Code::InvalidArgument,
            StoreError::Overloaded { .. } => Code::Overloaded,
            StoreError::Contention { .. } => Code::Conflict,
            StoreError::CommitOutcomeUnknown(_) | StoreError::ShuttingDown | StoreError::Unavailable(_) => {
                Code::Unavailable
            }
            StoreError::Corrupt(_) | StoreError::Database(_) => Code::Internal,
        }
    }

    /// A copy for each request of a batch that failed as a whole.
    pub(crate) fn shared(&self) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::CommitOutcomeUnknown(m) => StoreError::CommitOutcomeUnknown(m.clone()),
            other => StoreError::Database(other.to_string()),
        }
    }
}
