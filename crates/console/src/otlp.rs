//! OTLP/HTTP protobuf payloads (`POST /v1/traces`, `POST /v1/logs`) decoded
//! into the console's records. Pure: bytes in, records or an error out.
use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::model::{LogRecord, SpanRecord};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("not an OTLP protobuf export request: {0}")]
    Protobuf(String),
    #[error("span {index}: {reason}")]
    BadSpan { index: usize, reason: String },
}

/// Span status code ERROR in OTLP.
const STATUS_ERROR: i32 = 2;

/// The spans of an `ExportTraceServiceRequest`. A span with a malformed id
/// refuses the whole request (nothing half-stored).
pub fn decode_spans(body: &[u8]) -> Result<Vec<SpanRecord>, DecodeError> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = service_name(resource_spans.resource.as_ref());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let index = spans.len();
                let bad = |reason: &str| DecodeError::BadSpan { index, reason: reason.to_string() };
                let trace_id =
                    hex_id(&span.trace_id, 16).ok_or_else(|| bad("trace_id must be 16 bytes, not all zero"))?;
                let span_id = hex_id(&span.span_id, 8).ok_or_else(|| bad("span_id must be 8 bytes, not all zero"))?;
                let parent_span_id = if span.parent_span_id.is_empty() {
                    String::new()
                } else {
                    hex_id(&span.parent_span_id, 8).ok_or_else(|| bad("parent_span_id must be 8 bytes"))?
                };
                let attributes = attributes(&span.attributes);
                let status = span.status.unwrap_or_default();
                spans.push(SpanRecord {
                    trace_id,
                    span_id,
                    parent_span_id,
                    service: service.clone(),
                    name: span.name,
                    kind: kind_name(span.kind).to_string(),
                    start_ns: nanos(span.start_time_unix_nano),
                    end_ns: nanos(span.end_time_unix_nano.max(span.start_time_unix_nano)),
                    error: status.code == STATUS_ERROR,
                    status_message: status.message,
                    order_id: attributes.get("order_id").cloned().unwrap_or_default(),
                    user_id: attributes.get("user_id").cloned().unwrap_or_default(),
                    attributes,
                });
            }
        }
    }
    Ok(spans)
}

/// The log records of an `ExportLogsServiceRequest`; ids that are missing or
/// malformed are left empty (a log line outside any span).
pub fn decode_logs(body: &[u8]) -> Result<Vec<LogRecord>, DecodeError> {
    let request = ExportLogsServiceRequest::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let mut logs = Vec::new();
    for resource_logs in request.resource_logs {
        let service = service_name(resource_logs.resource.as_ref());
        for scope in resource_logs.scope_logs {
            for record in scope.log_records {
                let time =
                    if record.time_unix_nano > 0 { record.time_unix_nano } else { record.observed_time_unix_nano };
                logs.push(LogRecord {
                    trace_id: hex_id(&record.trace_id, 16).unwrap_or_default(),
                    span_id: hex_id(&record.span_id, 8).unwrap_or_default(),
                    service: service.clone(),
                    time_ns: nanos(time),
                    severity: record.severity_text,
                    body: record.body.as_ref().map(text).unwrap_or_default(),
                    attributes: attributes(&record.attributes),
                });
            }
        }
    }
    Ok(logs)
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .map(text)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

/// An attribute value as display text.
fn text(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => hex(bytes),
        Some(any_value::Value::ArrayValue(array)) => {
            format!("[{}]", array.values.iter().map(text).collect::<Vec<_>>().join(", "))
        }
        Some(any_value::Value::KvlistValue(list)) => format!(
            "{{{}}}",
            list.values
                .iter()
                .map(|kv| format!("{}: {}", kv.key, kv.value.as_ref().map(text).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(any_value::Value::StringValueStrindex(index)) => format!("#{index}"),
    }
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// Nanoseconds as stored (BIGINT); times past 2262 are clamped.
fn nanos(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex of an id of exactly `len` bytes that is not all zero.
fn hex_id(bytes: &[u8], len: usize) -> Option<String> {
    (bytes.len() == len && bytes.iter().any(|&b| b != 0)).then(|| hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpLog, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
            ..Default::default()
        }
    }

    fn resource(service: &str) -> Option<Resource> {
        Some(Resource { attributes: vec![string("service.name", service)], ..Default::default() })
    }

    fn request(spans: Vec<Span>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource("orders"),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn span(trace: u8, id: u8, parent: Option<u8>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: "/shopfast.orders.v1.OrderService/CreateOrder".into(),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            ..Default::default()
        }
    }

    #[test]
    fn spans_carry_their_service_ids_kind_times_status_and_search_fields() {
        let mut failing = span(0xab, 0x02, Some(0x01));
        failing.status = Some(Status { code: STATUS_ERROR, message: "Unavailable".into() });
        failing.attributes = vec![
            string("order_id", "o-1"),
            string("user_id", "u-1"),
            KeyValue {
                key: "tries".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue { value: Some(any_value::Value::IntValue(3)) }],
                    })),
                }),
                ..Default::default()
            },
        ];
        let spans = decode_spans(&request(vec![span(0xab, 0x01, None), failing])).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(spans[0].parent_span_id, "");
        assert_eq!(spans[0].service, "orders");
        assert_eq!(spans[0].kind, "server");
        assert_eq!(spans[0].duration_ns(), 4_000);
        assert!(!spans[0].error);
        assert_eq!(spans[1].parent_span_id, "01".repeat(8));
        assert!(spans[1].error);
        assert_eq!(spans[1].status_message, "Unavailable");
        assert_eq!((spans[1].order_id.as_str(), spans[1].user_id.as_str()), ("o-1", "u-1"));
        assert_eq!(spans[1].attributes["tries"], "[3]");
    }

    #[test]
    fn garbage_and_malformed_ids_are_refused_whole() {
        assert!(matches!(decode_spans(b"\xff\xff\xff not protobuf"), Err(DecodeError::Protobuf(_))));
        let mut short = span(1, 1, None);
        short.span_id = vec![1, 2, 3];
        assert!(matches!(
            decode_spans(&request(vec![span(1, 2, None), short])),
            Err(DecodeError::BadSpan { index: 1, .. })
        ));
        assert!(matches!(decode_spans(&request(vec![span(0, 2, None)])), Err(DecodeError::BadSpan { index: 0, .. })));
        // An empty request is valid and holds nothing.
        assert_eq!(decode_spans(&[]).unwrap(), vec![]);
    }

    #[test]
    fn log_records_keep_their_trace_severity_and_body() {
        let body = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource("payments"),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        OtlpLog {
                            time_unix_nano: 7,
                            severity_text: "WARN".into(),
                            body: Some(AnyValue { value: Some(any_value::Value::StringValue("declined".into())) }),
                            attributes: vec![string("payment_id", "p-1")],
                            trace_id: vec![0xcd; 16],
                            span_id: vec![0x0e; 8],
                            ..Default::default()
                        },
                        OtlpLog { observed_time_unix_nano: 9, trace_id: vec![1, 2], ..Default::default() },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let logs = decode_logs(&body).unwrap();
        assert_eq!(logs[0].service, "payments");
        assert_eq!(logs[0].trace_id, "cd".repeat(16));
        assert_eq!((logs[0].severity.as_str(), logs[0].body.as_str()), ("WARN", "declined"));
        assert_eq!(logs[0].attributes["payment_id"], "p-1");
        assert_eq!((logs[1].trace_id.as_str(), logs[1].time_ns), ("", 9));
        assert!(decode_logs(b"\x0a\xff").is_err());
    }
}
