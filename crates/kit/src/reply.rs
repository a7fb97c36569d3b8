//! An answer's HTTP hints. A gRPC method that wants the gateway to answer
//! something other than 200 says so in its response metadata, as
//! grpc-gateway's `x-http-code` does: 201 with the `location` of what it
//! created, or 202 Accepted with the `location` to poll while the work goes
//! on (the async request-reply pattern). An accepted answer is not final: the
//! idempotency layer does not keep it, so a retry with the same key asks
//! again and hears how the work stands then.
use std::time::Duration;

use tonic::metadata::MetadataValue;

pub const HTTP_CODE: &str = "x-http-code";
pub const LOCATION: &str = "location";

fn hinted<T>(mut response: tonic::Response<T>, code: &'static str, location: &str) -> tonic::Response<T> {
    let metadata = response.metadata_mut();
    metadata.insert(HTTP_CODE, MetadataValue::from_static(code));
    if let Ok(value) = location.parse() {
        metadata.insert(LOCATION, value);
    }
    response
}

/// 201 Created, with where the new resource is.
pub fn created<T>(response: tonic::Response<T>, location: &str) -> tonic::Response<T> {
    hinted(response, "201", location)
}

/// 202 Accepted: the work goes on; poll `location`.
pub fn accepted<T>(response: tonic::Response<T>, location: &str) -> tonic::Response<T> {
    hinted(response, "202", location)
}

/// Whether response headers say the answer is only "accepted".
pub fn is_accepted(headers: &http::HeaderMap) -> bool {
    headers.get(HTTP_CODE).is_some_and(|v| v == "202")
}

/// UNAVAILABLE because of the platform's own trouble (a dependency down
/// longer than the retry budget): the caller should come back after
/// `retry_after` (the gateway's `Retry-After`), and may, with the same key.
pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> tonic::Status {
    let mut status = tonic::Status::unavailable(message);
    if let Ok(value) = retry_after.as_millis().max(1).to_string().parse() {
        status.metadata_mut().insert(kit_resilience::signals::RETRY_AFTER_MS, value);
    }
    status
}
