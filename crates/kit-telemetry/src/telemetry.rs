//! Structured logs: one JSON object per line with timestamp, level, service,
//! message, target, the event's fields, and the fields of every enclosing span
//! flattened in (so a request span's `trace_id`/`span_id`/`method` appear on
//! every line logged while handling it).
use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the process-wide subscriber once; later calls (several services in
/// one test process) keep the first. `RUST_LOG` overrides `default_filter`.
pub fn init_logging(service: &str, default_filter: &str, format: LogFormat) {
    INSTALLED.get_or_init(|| {
        // The log level (EnvFilter is not Clone: one per layer that uses it).
        let level = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        // One list of the layers that are on: a layer that is off is left
        // out. (An `Option` layer that is `None` would enable every callsite,
        // h2's and hyper's trace spans included; a filter around a `None` is
        // still consulted on every span entry and exit.)
        let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
        // The log level filters the log lines only: spans go to OpenTelemetry
        // whatever it is (`RUST_LOG=warn` must not cut a trace), events never
        // (they are log lines, not span events).
        if let Some(spans) = crate::otel::layer(service) {
            layers.push(spans.with_filter(spans_up_to_info()).boxed());
        }
        let mut logs_slot = None;
        if let Some(logs) = crate::otel::log_layer(service) {
            logs_slot = Some(logs.dispatch_slot());
            // Log lines also go out as OTLP log records, at the same level
            // as the lines printed.
            let logs = logs
                .with_filter(level())
                .with_filter(tracing_subscriber::filter::filter_fn(crate::otel::exportable_log));
            layers.push(logs.boxed());
        }
        layers.push(match format {
            LogFormat::Json => json_lines(service, level(), std::io::stdout).boxed(),
            LogFormat::Pretty => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(lines_in_spans(level()))
                .boxed(),
        });
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layers));
        // The list does not tell its members which subscriber they are in.
        if let Some(slot) = logs_slot {
            slot.set(&dispatch);
        }
        let result = dispatch.try_init();
        // Another subscriber was installed first (e.g. by a test harness): keep it.
        let _ = result;
    });
}

/// The log lines at `filter`'s level, written as [`JsonLines`] to `writer`.
pub fn json_lines<W>(service: &str, filter: EnvFilter, writer: W) -> impl Layer<Registry> + Send + Sync + use<W>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines::new(service))
        .with_writer(writer)
        .with_filter(lines_in_spans(filter))
}

/// `filter` for the events; every span up to INFO whatever it says. A log
/// line takes its trace_id, span_id and request fields from the spans it is
/// in, and a layer sees only the spans its filter lets through: with
/// `RUST_LOG=warn` alone, a warning inside a request would come out without
/// its trace.
fn lines_in_spans(filter: EnvFilter) -> impl tracing_subscriber::layer::Filter<Registry> {
    use tracing_subscriber::filter::FilterExt as _;
    spans_up_to_info().or(filter)
}

/// Spans at INFO and above, no events. The level hint keeps debug and trace
/// callsites (h2's and hyper's, on every frame) off at their first check.
fn spans_up_to_info() -> impl tracing_subscriber::layer::Filter<Registry> + Send + Sync + 'static {
    tracing_subscriber::filter::filter_fn(|meta| meta.is_span() && *meta.level() <= Level::INFO)
        .with_max_level_hint(Level::INFO)
}

/// The JSON line format described in the module docs.
pub struct JsonLines {
    service: String,
}

impl JsonLines {
    pub fn new(service: &str) -> Self {
        Self { service: service.to_string() }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(event.metadata().level().to_string()));
        line.insert("service".into(), Value::String(self.service.clone()));
        line.insert("target".into(), Value::String(event.metadata().target().to_string()));

        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
                if let Ok(Value::Object(span_fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(span_fields);
                }
            }
        }

        let mut visitor = FieldsToJson(&mut line);
        event.record(&mut visitor);
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct FieldsToJson<'a>(&'a mut Map<String, Value>);

impl Visit for FieldsToJson<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// A subscriber writing `service`'s JSON lines at `level` here.
        fn json_lines(&self, service: &str, level: &str) -> impl tracing::Subscriber + Send + Sync + use<> {
            let writer = self.clone();
            tracing_subscriber::registry().with(json_lines(service, EnvFilter::new(level), move || writer.clone()))
        }

        /// The lines written, parsed.
        fn lines(&self) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
        }

        /// The one line written, parsed.
        fn line(&self) -> Value {
            let mut lines = self.lines();
            assert_eq!(lines.len(), 1, "{lines:?}");
            lines.remove(0)
        }
    }

    #[test]
    fn lines_carry_service_span_and_event_fields() {
        let captured = Captured::default();
        let subscriber = captured.json_lines("products", "info");
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!("grpc", trace_id = "4bf92f3577b34da6a3ce929d0e0e4736", method = "GetProduct");
            let _guard = span.enter();
            tracing::warn!(order_id = "o-1", attempt = 2, "stock low");
        });
        let line = captured.line();
        assert_eq!(line["service"], "products");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "stock low");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["method"], "GetProduct");
        assert_eq!(line["order_id"], "o-1");
        assert_eq!(line["attempt"], 2);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    /// Logged at `level`: an info line and a warning inside a request span
    /// that continues a trace. The lines written, and the span's ids.
    fn lines_inside_a_continued_trace(level: &str) -> (Vec<Value>, crate::trace_context::TraceIds) {
        let captured = Captured::default();
        let subscriber = captured.json_lines("gateway", level);
        let ids = tracing::subscriber::with_default(subscriber, || {
            let mut incoming = http::HeaderMap::new();
            incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
            let span = tracing::info_span!(
                "http",
                method = "GET",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            let ids = crate::otel::continue_trace(&span, &incoming);
            span.in_scope(|| {
                tracing::info!("started");
                tracing::warn!("slow");
            });
            ids
        });
        (captured.lines(), ids)
    }

    fn assert_carries_the_trace(line: &Value, ids: &crate::trace_context::TraceIds) {
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span_id"].as_str(), Some(ids.span_id.as_str()));
        assert_eq!(ids.span_id.len(), 16);
        assert_eq!(line["method"], "GET");
    }

    #[test]
    fn lines_inside_a_continued_trace_carry_its_trace_and_span_ids() {
        let (lines, ids) = lines_inside_a_continued_trace("info");
        let messages: Vec<_> = lines.iter().map(|line| line["message"].clone()).collect();
        assert_eq!(messages, ["started", "slow"]);
        for line in &lines {
            assert_carries_the_trace(line, &ids);
        }
    }

    /// `RUST_LOG=warn` hides the info lines, not the request span's fields
    /// on the warnings logged inside it.
    #[test]
    fn warnings_carry_the_trace_when_only_warnings_are_logged() {
        let (lines, ids) = lines_inside_a_continued_trace("warn");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message"], "slow");
        assert_carries_the_trace(&lines[0], &ids);
    }
}
