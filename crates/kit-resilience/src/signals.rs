//! The vocabulary every hop of a call shares: how a status says who refused
//! it, when to come back, whether a failure was the request's own, and the
//! `grpc-timeout` header. Servers (idempotency, telemetry) and clients (the
//! guard, retries, the gateway) read and write these; none of them owns it.
use std::time::Duration;

use kit_core::reason::Reason;
use tonic::{Code, Status};

/// Any error a tower service in the stack may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Metadata key on a status this layer made itself, without calling.
pub const REFUSED_BY: &str = "x-shopfast-refused-by";
/// What [`REFUSED_BY`] names: the refusers (the values are on the wire).
pub const BY_CIRCUIT_BREAKER: &str = "circuit_breaker";
pub const BY_BULKHEAD: &str = "bulkhead";
pub const BY_DEADLINE: &str = "deadline";
pub const BY_NO_INSTANCE: &str = "no_instance";
pub const BY_VERSION_OVERRIDE: &str = "version_override";
/// Metadata key on a breaker refusal: when it lets a probe through again.
pub const RETRY_AFTER_MS: &str = "x-shopfast-retry-after-ms";
/// Metadata a server puts on a failure that is this request's own, not a
/// sign of its health (`request`): Payments' answer when the card processor
/// failed on one card. Callers' breakers count such an answer as a success.
pub const FAILURE_CAUSE: &str = "x-shopfast-cause";
pub const CAUSE_REQUEST: &str = "request";
/// Metadata naming why a call was refused, from `kit_core::reason`'s
/// catalogue (INSUFFICIENT_STOCK, CARD_DECLINED …): what clients branch on
/// instead of the message's words. The gateway answers it as `reason`.
pub const REASON: &str = "x-shopfast-reason";

/// A request extension for calls that must get through (a saga's
/// compensation): the breaker lets them probe instead of refusing them.
#[derive(Debug, Clone, Copy)]
pub struct Essential;

/// Marks a failure as the request's own (see [`FAILURE_CAUSE`]).
pub fn caused_by_request(mut status: Status) -> Status {
    status.metadata_mut().insert(FAILURE_CAUSE, tonic::metadata::MetadataValue::from_static(CAUSE_REQUEST));
    status
}

/// Marks a status with why it was refused.
pub fn with_reason(mut status: Status, reason: Reason) -> Status {
    status.metadata_mut().insert(REASON, tonic::metadata::MetadataValue::from_static(reason.as_str()));
    status
}

/// Why a status was refused: the reason it names, if it is one of ours (a
/// name from elsewhere is not passed on), else the one its local refusal
/// implies (an open breaker is CIRCUIT_OPEN …).
pub fn reason(status: &Status) -> Option<Reason> {
    let named = status.metadata().get(REASON).and_then(|v| Reason::from_name(v.to_str().ok()?));
    named.or_else(|| {
        Some(match refused_by(status)? {
            BY_CIRCUIT_BREAKER => Reason::CircuitOpen,
            BY_BULKHEAD => Reason::BulkheadFull,
            BY_DEADLINE => Reason::DeadlineSpent,
            BY_NO_INSTANCE => Reason::NoInstance,
            BY_VERSION_OVERRIDE => Reason::UnknownVersion,
            _ => return None,
        })
    })
}

/// Whether a status (or response headers) says the failure was the request's own.
pub fn is_request_cause(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.get(FAILURE_CAUSE).is_some_and(|v| v == CAUSE_REQUEST)
}

/// Whether `code` says the backend (not the request) is in trouble.
pub fn server_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::ResourceExhausted | Code::Unknown
    )
}

/// What refused a call locally, if anything did: "circuit_breaker",
/// "bulkhead", "deadline", or "no_instance" (the balancer had nowhere to send it,
/// or every instance it tried refused the connection). Such a call never
/// reached a server.
pub fn refused_by(status: &Status) -> Option<&str> {
    status.metadata().get(REFUSED_BY).and_then(|v| v.to_str().ok())
}

/// A status for a call refused before it was sent, marked with what refused it.
pub fn refusal(code: Code, by: &'static str, message: String) -> BoxError {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(REFUSED_BY, tonic::metadata::MetadataValue::from_static(by));
    Box::new(status)
}

/// The `grpc-timeout` header.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// gRPC's timeout format: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A duration in gRPC's timeout format, in the finest unit that fits in 8
/// digits (rounded down, as tonic does, so the callee never waits longer).
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (per, unit) in units {
        if nanos / per <= MAX {
            // Per call: written without the formatting machinery.
            let mut text = String::with_capacity(9);
            text.push_str(itoa::Buffer::new().format(nanos / per));
            text.push_str(unit);
            return text;
        }
    }
    format!("{MAX}H")
}
