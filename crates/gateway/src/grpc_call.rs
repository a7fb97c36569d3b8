//! One unary gRPC call made of bytes, over a backend's guarded channel.
//!
//! The gateway knows its methods only from descriptors, encodes the request
//! once and turns the response's bytes straight into JSON
//! ([`crate::wire_json`]), so tonic's typed client — its codec, streaming
//! decoder and body adapters, a tenth of the gateway's CPU per request — has
//! nothing to add here. What it did that matters is done below: the framing,
//! the status from trailers (or from the headers of a trailers-only
//! response), and tonic's mapping of a non-gRPC HTTP answer to a status.
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, TE};
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
const HTTP_CODE: http::HeaderName = http::HeaderName::from_static(kit::reply::HTTP_CODE);
const LOCATION: http::HeaderName = http::HeaderName::from_static(kit::reply::LOCATION);
pub const SERVED_VERSION: http::HeaderName = http::HeaderName::from_static(registry_wire::traffic::SERVED_VERSION);

/// A unary call's answer: the message's bytes and the backend's HTTP hints
/// (`kit::reply`), if it gave any.
#[derive(Debug, Default)]
pub struct Answer {
    pub message: Bytes,
    pub status: Option<http::StatusCode>,
    pub location: Option<HeaderValue>,
    /// The version of the instance that answered.
    pub served_version: Option<HeaderValue>,
}

impl Answer {
    fn new(message: Bytes, headers: &HeaderMap) -> Self {
        let served_version = headers.get(&SERVED_VERSION).cloned();
        // Most answers carry no hint: nothing to look up beyond one header.
        let Some(code) = headers.get(&HTTP_CODE) else { return Self { message, served_version, ..Default::default() } };
        let status =
            code.to_str().ok().and_then(|c| c.parse::<u16>().ok()).and_then(|c| http::StatusCode::from_u16(c).ok());
        Self { message, status, location: headers.get(&LOCATION).cloned(), served_version }
    }
}

/// gRPC's length-prefixed frame around one uncompressed message.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut framed = BytesMut::with_capacity(5 + len);
    framed.put_u8(0);
    framed.put_u32(len as u32);
    // A BytesMut grows as needed, so encoding into it cannot fail.
    let _ = message.encode(&mut framed);
    framed.freeze()
}

/// Sends `frame` to `path` (`/package.Service/Method`) with `metadata` and a
/// `grpc-timeout` of `timeout`; returns the response message's bytes and hints.
pub async fn unary<S>(
    mut channel: S,
    path: &http::uri::PathAndQuery,
    frame: Bytes,
    metadata: &HeaderMap,
    timeout: Duration,
) -> Result<Answer, Status>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = kit_client::balance::BoxError>,
{
    let mut request = http::Request::new(Body::new(Full::new(frame)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from(path.clone());
    let headers = request.headers_mut();
    headers.clone_from(metadata);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    if let Ok(mut value) = HeaderValue::from_str(&kit_resilience::signals::encode_grpc_timeout(timeout)) {
        // Different on every call: a literal, not an entry in the HPACK table.
        value.set_sensitive(true);
        headers.insert(GRPC_TIMEOUT, value);
    }
    let ready = channel.ready().await.map_err(Status::from_error)?;
    let response = ready.call(request).await.map_err(Status::from_error)?;
    let (parts, body) = response.into_parts();
    // Trailers-only: a failure answered in the headers.
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return Err(if status.code() == Code::Ok { Status::internal("the response has no message") } else { status });
    }
    if parts.status != http::StatusCode::OK {
        return Err(from_http_status(parts.status));
    }
    let collected = body.collect().await?;
    let Some(trailers) = collected.trailers() else {
        return Err(Status::internal("the response ended without a gRPC status"));
    };
    // The usual answer, read without building a Status (which copies the trailers).
    if trailers.get("grpc-status").is_some_and(|code| code == "0") {
        return Ok(Answer::new(unframe(collected.to_bytes())?, &parts.headers));
    }
    match Status::from_header_map(trailers) {
        Some(status) if status.code() == Code::Ok => Ok(Answer::new(unframe(collected.to_bytes())?, &parts.headers)),
        Some(status) => Err(status),
        None => Err(Status::internal("the response ended without a gRPC status")),
    }
}

/// The one message of a unary response.
fn unframe(data: Bytes) -> Result<Bytes, Status> {
    if data.len() < 5 {
        return Err(Status::internal("the response has no message"));
    }
    if data[0] != 0 {
        return Err(Status::internal("the response is compressed, which was not asked for"));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data.len() != 5 + len {
        return Err(Status::internal("the response is not one whole message"));
    }
    Ok(data.slice(5..))
}

/// A non-gRPC HTTP answer (a proxy's error page, say) as gRPC maps it.
fn from_http_status(status: http::StatusCode) -> Status {
    use http::StatusCode as H;
    let code = match status {
        H::BAD_REQUEST => Code::Internal,
        H::UNAUTHORIZED => Code::Unauthenticated,
        H::FORBIDDEN => Code::PermissionDenied,
        H::NOT_FOUND => Code::Unimplemented,
        H::TOO_MANY_REQUESTS | H::BAD_GATEWAY | H::SERVICE_UNAVAILABLE | H::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the backend answered HTTP {status} without a gRPC status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_flag_length_message_and_unframes_back() {
        let message = "hello".to_string();
        let framed = frame(&message);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(unframe(framed).unwrap(), Bytes::from_static(b"\x0a\x05hello"));
    }

    #[test]
    fn bad_frames_are_internal_errors() {
        for bad in [&b""[..], &[0, 0, 0][..], &[1, 0, 0, 0, 0][..], &[0, 0, 0, 0, 2, 1][..], &[0, 0, 0, 0, 0, 9][..]] {
            assert_eq!(unframe(Bytes::copy_from_slice(bad)).unwrap_err().code(), Code::Internal, "{bad:?}");
        }
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 0])).unwrap().is_empty(), "an empty message is fine");
    }

    #[test]
    fn http_errors_map_as_grpc_specifies() {
        assert_eq!(from_http_status(http::StatusCode::SERVICE_UNAVAILABLE).code(), Code::Unavailable);
        assert_eq!(from_http_status(http::StatusCode::NOT_FOUND).code(), Code::Unimplemented);
        assert_eq!(from_http_status(http::StatusCode::IM_A_TEAPOT).code(), Code::Unknown);
    }
}
