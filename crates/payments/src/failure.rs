//! What a payment workflow fails with, in the terms its callers act on. The
//! one translation to gRPC codes is in `api` (a refusal: the code its kind
//! says; `ProcessorTrouble` and `NotYet`: UNAVAILABLE, retry; `Changed`:
//! ABORTED, look again).
use kit::error::StoreError;
use kit_core::error::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// A rule said no (bad input, declined, voided, already paid …).
    #[error(transparent)]
    Refused(DomainError),
    /// The database failed.
    #[error("database: {0}")]
    Db(sqlx::Error),
    /// The processor failed on this card: worth a retry, but no sign that
    /// Payments is unhealthy — callers' breakers must not count it.
    #[error("{0}")]
    ProcessorTrouble(String),
    /// Not done yet (a payment still in flight, a reversal or refund the
    /// processor did not take): ask again.
    #[error("{0}")]
    NotYet(String),
    /// Moved on while we worked on it: read it again and retry.
    #[error("{0}")]
    Changed(String),
    /// Something of ours is broken; the detail was logged where it happened.
    #[error("{0}")]
    Internal(&'static str),
}

impl PaymentError {
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::Refused(DomainError::FailedPrecondition(message.into()))
    }
}

impl From<DomainError> for PaymentError {
    fn from(err: DomainError) -> Self {
        Self::Refused(err)
    }
}

/// A rule the store enforced is a refusal like any other.
impl From<StoreError> for PaymentError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Domain(e) => Self::Refused(e),
            StoreError::Db(e) => Self::Db(e),
        }
    }
}
