//! The error kinds domain rules speak in, shared by every service, and their
//! one translation to gRPC statuses. Internal details are logged, never sent.
use std::fmt::Display;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Malformed or out-of-range input (INVALID_ARGUMENT, HTTP 400).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the current state forbids it (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl DomainError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

impl From<DomainError> for tonic::Status {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::Invalid(m) => tonic::Status::invalid_argument(m),
            DomainError::NotFound(m) => tonic::Status::not_found(m),
            DomainError::AlreadyExists(m) => tonic::Status::already_exists(m),
            DomainError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            DomainError::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            DomainError::PermissionDenied(m) => tonic::Status::permission_denied(m),
        }
    }
}

/// An INTERNAL status with a generic message; the detail goes to the log only.
pub fn internal(detail: impl Display) -> tonic::Status {
    tracing::error!(error = %detail, "internal error");
    tonic::Status::internal("internal error")
}

/// UNAVAILABLE for a database that cannot be reached (a pool timeout or a
/// closed connection), INTERNAL otherwise.
pub fn from_sqlx(err: &sqlx::Error) -> tonic::Status {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::error!(error = %err, "database unavailable");
            tonic::Status::unavailable("database unavailable")
        }
        other => internal(other),
    }
}

/// What a store returns: a rule it enforced, or a database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Domain(e) => e.into(),
            StoreError::Db(e) => from_sqlx(&e),
        }
    }
}
