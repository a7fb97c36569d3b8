//! The error kinds domain rules speak in, shared by every service. Their one
//! translation to gRPC statuses is `kit::error`.

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
    /// FAILED_PRECONDITION with a reason a client can branch on (out of
    /// stock, card declined): see [`crate::reason`].
    #[error("{message}")]
    Refused { reason: crate::reason::Reason, message: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl DomainError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn refused(reason: crate::reason::Reason, message: impl Into<String>) -> Self {
        Self::Refused { reason, message: message.into() }
    }

    /// The machine-readable reason, when the refusal has one.
    pub fn reason(&self) -> Option<crate::reason::Reason> {
        match self {
            Self::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}
