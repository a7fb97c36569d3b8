//! Why a call was refused, in words a program can branch on: the `reason` of
//! a refusal beside its code, as `google.rpc.ErrorInfo.reason` is (AIP-193).
//! A code says what kind of failure it was (409, 503); the reason says which
//! one (out of stock, card declined, breaker open). Messages are for people
//! and may change; these names are a contract and do not.
//!
//! Between services a reason travels as gRPC metadata
//! (`kit_resilience::signals::REASON`); the gateway answers it as the JSON
//! error body's `reason` (and lists every name in its OpenAPI document).

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Every reason a refusal may carry.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// All of them, in catalogue order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The name on the wire: UPPER_SNAKE_CASE.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }
    };
}

reasons! {
    // What a request asked for that the state of things refuses.
    /// Fewer units left than the order asks for.
    InsufficientStock = "INSUFFICIENT_STOCK",
    /// The product exists but is withdrawn from sale.
    NotForSale = "NOT_FOR_SALE",
    /// The card issuer said no (the message names the decline code).
    CardDeclined = "CARD_DECLINED",
    /// The card processor kept failing on this card; another card, or later.
    PaymentProcessingFailed = "PAYMENT_PROCESSING_FAILED",
    /// The same idempotency key's first request is still running.
    IdempotencyInProgress = "IDEMPOTENCY_IN_PROGRESS",
    /// The idempotency key was used before with a different request.
    IdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED",
    /// A caller that is not trusted to speak for users named one.
    UserAssertionForbidden = "USER_ASSERTION_FORBIDDEN",

    // What the platform refused on its own, before or instead of a call.
    /// The caller's rate limit: slow down (429).
    RateLimited = "RATE_LIMITED",
    /// The API key's monthly quota is spent (429).
    QuotaExhausted = "QUOTA_EXHAUSTED",
    /// The gateway tracks as many distinct clients as it may right now.
    TooManyClients = "TOO_MANY_CLIENTS",
    /// The service's circuit breaker is open: it has been failing.
    CircuitOpen = "CIRCUIT_OPEN",
    /// As many calls to the service are in flight as its bulkhead allows.
    BulkheadFull = "BULKHEAD_FULL",
    /// The service shed the call: it is over its concurrency limit.
    Overloaded = "OVERLOADED",
    /// The request's deadline was spent before the call could be made.
    DeadlineSpent = "DEADLINE_SPENT",
    /// No instance of the service could take the call.
    NoInstance = "NO_INSTANCE",
    /// No instance runs the version asked for by name.
    UnknownVersion = "UNKNOWN_VERSION",
    /// The service is down and the queue of deferred writes is full.
    DeferredQueueFull = "DEFERRED_QUEUE_FULL",
}

impl Reason {
    /// The reason named `name`, if it is one of ours (a name from elsewhere is
    /// not passed on).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|reason| reason.as_str() == name)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_and_is_upper_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let name = reason.as_str();
            assert_eq!(Reason::from_name(name), Some(*reason));
            assert!(name.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{name}");
            assert!(seen.insert(name), "{name} twice");
        }
        assert_eq!(Reason::from_name("insufficient_stock"), None, "names are exact");
        assert_eq!(Reason::from_name(""), None);
        assert_eq!(Reason::CircuitOpen.to_string(), "CIRCUIT_OPEN");
    }
}
