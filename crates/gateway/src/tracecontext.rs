//! The service endpoint the W3C trace-context test suite drives
//! (`third_party/w3c-trace-context`, `scripts/w3c-trace-context.sh`): `POST
//! /test/tracecontext` with `[{"url": …, "arguments": […]}, …]` makes one
//! `POST url` per element with `arguments` as the body, each a client span of
//! the request's trace, so the suite reads what the gateway propagates. Off
//! unless `trace_context_test_endpoint = true`; it only calls loopback
//! addresses (it is a test tool, not a way to make the gateway call anywhere).
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

pub const PATH: &str = "/test/tracecontext";

#[derive(Debug, Deserialize)]
struct Callback {
    url: String,
    #[serde(default)]
    arguments: Value,
}

/// Why a request to the endpoint was refused (400).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TestEndpointError {
    #[error("expected a JSON array of {{\"url\", \"arguments\"}}: {0}")]
    Body(String),
    #[error("callback {index}: {reason}")]
    Url { index: usize, reason: String },
}

/// The callbacks a body asks for, checked before any is made.
fn callbacks(body: &[u8]) -> Result<Vec<(reqwest::Url, Value)>, TestEndpointError> {
    let parsed: Vec<Callback> = serde_json::from_slice(body).map_err(|e| TestEndpointError::Body(e.to_string()))?;
    parsed
        .into_iter()
        .enumerate()
        .map(|(index, callback)| {
            let bad = |reason: &str| TestEndpointError::Url { index, reason: reason.to_string() };
            let url = reqwest::Url::parse(&callback.url).map_err(|e| bad(&e.to_string()))?;
            if url.scheme() != "http" {
                return Err(bad("only http:// callbacks"));
            }
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name == "localhost",
                None => false,
            };
            if !loopback {
                return Err(bad("only loopback callbacks (127.0.0.1, ::1, localhost)"));
            }
            let arguments = if callback.arguments.is_null() { Value::Array(Vec::new()) } else { callback.arguments };
            Ok((url, arguments))
        })
        .collect()
}

/// Makes the callbacks in order, each in a client span whose context goes
/// out as `traceparent`/`tracestate`. A callback that fails is logged: the
/// suite judges what arrived.
pub async fn run(http: &reqwest::Client, body: &[u8]) -> Result<(), TestEndpointError> {
    for (url, arguments) in callbacks(body)? {
        let span = tracing::info_span!("http.client", otel.name = "POST", otel.kind = "client", url = %url);
        let mut headers = http::HeaderMap::new();
        kit_telemetry::otel::inject(&span, &mut headers);
        let call = http.post(url.clone()).headers(headers).json(&arguments).timeout(Duration::from_secs(5)).send();
        if let Err(err) = tracing::Instrument::instrument(call, span).await {
            tracing::debug!(%url, error = %err, "trace-context test callback failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_must_be_loopback_http_in_a_json_array() {
        let ok = callbacks(
            br#"[{"url": "http://127.0.0.1:7777/a", "arguments": [{"url": "x"}]}, {"url": "http://localhost/b"}]"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].1, Value::Array(Vec::new()));
        assert!(matches!(callbacks(b"{}"), Err(TestEndpointError::Body(_))));
        assert!(matches!(callbacks(b"not json"), Err(TestEndpointError::Body(_))));
        for bad in ["http://example.com/", "https://127.0.0.1/", "ftp://127.0.0.1/", "http://10.0.0.1/", "nope"] {
            let body = format!(r#"[{{"url": "{bad}"}}]"#);
            assert!(matches!(callbacks(body.as_bytes()), Err(TestEndpointError::Url { index: 0, .. })), "{bad}");
        }
    }
}
