//! The one translation of what services fail with into gRPC statuses: the
//! domain's refusals (`kit_core::error::DomainError`, which knows no
//! transport), store failures, and internal errors, whose details are logged,
//! never sent. A handler writes `domain::rule(..).map_err(status)?`; a store
//! error converts with `?`.
use std::fmt::Display;

use kit_core::error::DomainError;

/// The gRPC status a domain refusal is answered with.
pub fn status(err: DomainError) -> tonic::Status {
    match err {
        DomainError::Invalid(m) => tonic::Status::invalid_argument(m),
        DomainError::NotFound(m) => tonic::Status::not_found(m),
        DomainError::AlreadyExists(m) => tonic::Status::already_exists(m),
        DomainError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
        DomainError::Refused { reason, message } => {
            kit_resilience::signals::with_reason(tonic::Status::failed_precondition(message), reason)
        }
        DomainError::Unauthenticated(m) => tonic::Status::unauthenticated(m),
        DomainError::PermissionDenied(m) => tonic::Status::permission_denied(m),
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
            StoreError::Domain(e) => status(e),
            StoreError::Db(e) => from_sqlx(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use kit_core::reason::Reason;

    use super::*;

    #[test]
    fn every_domain_refusal_has_its_code() {
        let cases = [
            (DomainError::invalid("x"), tonic::Code::InvalidArgument),
            (DomainError::NotFound("x".into()), tonic::Code::NotFound),
            (DomainError::AlreadyExists("x".into()), tonic::Code::AlreadyExists),
            (DomainError::FailedPrecondition("x".into()), tonic::Code::FailedPrecondition),
            (DomainError::Unauthenticated("x".into()), tonic::Code::Unauthenticated),
            (DomainError::PermissionDenied("x".into()), tonic::Code::PermissionDenied),
            (DomainError::refused(Reason::InsufficientStock, "x"), tonic::Code::FailedPrecondition),
        ];
        for (err, code) in cases {
            let reason = err.reason();
            let answer = status(err);
            assert_eq!(answer.code(), code);
            assert_eq!(answer.message(), "x");
            assert_eq!(kit_resilience::signals::reason(&answer), reason, "the reason travels");
        }
    }

    #[test]
    fn an_unreachable_database_is_unavailable_and_other_failures_internal() {
        assert_eq!(tonic::Status::from(StoreError::Db(sqlx::Error::PoolTimedOut)).code(), tonic::Code::Unavailable);
        let other = tonic::Status::from(StoreError::Db(sqlx::Error::RowNotFound));
        assert_eq!((other.code(), other.message()), (tonic::Code::Internal, "internal error"));
    }
}
