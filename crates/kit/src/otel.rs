//! OpenTelemetry tracing across every hop. W3C trace context (`traceparent`,
//! `tracestate`) is extracted from each incoming HTTP or gRPC request and
//! injected into each outgoing call; each request and each call is a span
//! (via `tracing` and `tracing-opentelemetry`), exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, e.g.
//! `http://127.0.0.1:4318`. `OTEL_SDK_DISABLED=true` turns spans off (the ids
//! in logs and headers then come from `trace_context`, as before). With an
//! endpoint (or `…_LOGS_ENDPOINT`) the log lines go there too, as OTLP log
//! records carrying the trace and span of the request they belong to.
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::trace_context::TraceIds;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static LOGGER: OnceLock<Option<SdkLoggerProvider>> = OnceLock::new();
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

fn propagator() -> &'static TraceContextPropagator {
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether spans are on (`OTEL_SDK_DISABLED` unset or not `true`).
pub fn enabled() -> bool {
    !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The `tracing` layer that turns spans into OpenTelemetry spans for
/// `service`, exporting them when an OTLP endpoint is configured; `None` when
/// tracing is disabled.
pub fn layer<S>(service: &str) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !enabled() {
        return None;
    }
    let provider = PROVIDER.get_or_init(|| {
        let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
        if env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
                Ok(exporter) => builder = builder.with_batch_exporter(exporter),
                // Logging is not up yet: say it on stderr, and go on without export.
                Err(err) => eprintln!("OTLP span exporter not started: {err}"),
            }
        }
        builder.build()
    });
    // Per-span extras (source location, thread, busy/idle time) cost on
    // every request and say little here: off.
    let layer = tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_tracer(provider.tracer("shopfast"));
    Some(layer)
}

fn resource(service: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build()
}

/// The `tracing` layer that sends log lines as OTLP log records, when
/// tracing is on and an OTLP endpoint is configured; `None` otherwise. The
/// caller filters it like the log lines (the same level).
pub fn log_layer(service: &str) -> Option<OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger>> {
    if !enabled() || !(env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")) {
        return None;
    }
    let provider = LOGGER.get_or_init(|| match opentelemetry_otlp::LogExporter::builder().with_http().build() {
        Ok(exporter) => {
            Some(SdkLoggerProvider::builder().with_resource(resource(service)).with_batch_exporter(exporter).build())
        }
        Err(err) => {
            eprintln!("OTLP log exporter not started: {err}");
            None
        }
    });
    provider.as_ref().map(OpenTelemetryTracingBridge::new)
}

/// Whether a log event may go to the log exporter: not the exporter's own
/// machinery (its HTTP client and the SDK), which would feed itself.
pub fn exportable_log(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    !["opentelemetry", "hyper", "reqwest", "h2", "tower"].iter().any(|prefix| target.starts_with(prefix))
}

/// Sends the spans and log records still buffered (before a process exits).
pub async fn flush() {
    let tracer = PROVIDER.get().cloned();
    let logger = LOGGER.get().cloned().flatten();
    // The batch processors block while they export.
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(provider) = tracer {
            let _ = provider.force_flush();
        }
        if let Some(provider) = logger {
            let _ = provider.force_flush();
        }
    })
    .await;
}

/// The (trace id, span id) of `span`, if it is an OpenTelemetry span.
fn ids_of(span: &Span) -> Option<(String, String)> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// Makes `span` continue the trace the request's headers carry (or start
/// one) and records its `trace_id` and `span_id` fields (declared
/// `tracing::field::Empty`), so every log line inside it carries them. Its ids.
pub fn continue_trace(span: &Span, headers: &http::HeaderMap) -> TraceIds {
    let parent = propagator().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    let ids = match ids_of(span) {
        Some((trace_id, span_id)) => TraceIds { trace_id, span_id, parent_span_id: None },
        None => TraceIds::continue_or_start(headers.get("traceparent").and_then(|v| v.to_str().ok())),
    };
    span.record("trace_id", ids.trace_id.as_str());
    span.record("span_id", ids.span_id.as_str());
    ids
}

/// Writes `span`'s trace context into an outgoing request's headers, unless
/// they carry one already (a stored call delivered later keeps its trace).
pub fn inject(span: &Span, headers: &mut http::HeaderMap) {
    if headers.contains_key("traceparent") {
        return;
    }
    propagator().inject_context(&span.context(), &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_span_continues_the_callers_trace_and_hands_it_on() {
        let subscriber = tracing_subscriber::registry().with(layer("test"));
        tracing::subscriber::with_default(subscriber, || {
            let mut incoming = http::HeaderMap::new();
            incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
            let server =
                tracing::info_span!("server", trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
            let trace_id = continue_trace(&server, &incoming).trace_id;
            assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            let client = server.in_scope(|| tracing::info_span!("client"));
            let mut outgoing = http::HeaderMap::new();
            inject(&client, &mut outgoing);
            let sent = outgoing["traceparent"].to_str().unwrap();
            assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
            assert!(!sent.contains("00f067aa0ba902b7"), "the caller's span is not ours: {sent}");
            // No incoming context: a new trace.
            let root = tracing::info_span!("root", trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
            let fresh = continue_trace(&root, &http::HeaderMap::new()).trace_id;
            assert_eq!(fresh.len(), 32);
            assert_ne!(fresh, trace_id);
        });
    }
}
