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

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::trace_context::{FLAG_RANDOM, FLAG_SAMPLED, TraceIds, parse_tracestate, traceparent_of};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static LOGGER: OnceLock<Option<SdkLoggerProvider>> = OnceLock::new();
static PROPAGATOR: W3cPropagator = W3cPropagator;

fn propagator() -> &'static W3cPropagator {
    &PROPAGATOR
}

/// In a context whose trace came in without the random flag: outgoing
/// `traceparent`s of that trace must not claim it. (Traces we start have
/// random ids, and continued ones carry the flag as received.)
#[derive(Debug, Clone, Copy)]
struct NotRandom;

/// The `tracestate` a trace came in with, passed on as received (checked
/// by the Level 2 grammar, which OpenTelemetry's `TraceState` predates: it
/// refuses keys such as `foo@`).
#[derive(Debug, Clone)]
struct Tracestate(String);

/// W3C trace context Level 2, where OpenTelemetry's own propagator stops at
/// Level 1: the random-trace-id flag is carried as received (OpenTelemetry
/// keeps only the sampled bit, and a span it does not sample loses the rest),
/// a request with two `traceparent` headers starts a new trace, several
/// `tracestate` headers are one list checked by the Level 2 grammar, an
/// invalid one (a bad member, more than 32) is dropped whole and of a repeated
/// key the first is kept — what the official test suite checks
/// (`scripts/w3c-trace-context.sh`).
#[derive(Debug, Default, Clone, Copy)]
pub struct W3cPropagator;

static FIELDS: OnceLock<[String; 2]> = OnceLock::new();

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return;
        }
        let sampled = if context.is_sampled() { FLAG_SAMPLED } else { 0 };
        let random = if cx.get::<NotRandom>().is_some() { 0 } else { FLAG_RANDOM };
        let mut traceparent = String::with_capacity(55);
        traceparent.push_str("00-");
        push_hex(&mut traceparent, &context.trace_id().to_bytes());
        traceparent.push('-');
        push_hex(&mut traceparent, &context.span_id().to_bytes());
        traceparent.push('-');
        push_hex(&mut traceparent, &[sampled | random]);
        injector.set("traceparent", traceparent);
        let state = match cx.get::<Tracestate>() {
            Some(Tracestate(received)) => received.clone(),
            None => context.trace_state().header(),
        };
        if !state.is_empty() {
            injector.set("tracestate", state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let parents = extractor.get_all("traceparent").unwrap_or_default();
        let Some(parent) = traceparent_of(&parents) else { return cx.clone() };
        let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&parent.trace_id), SpanId::from_hex(&parent.parent_id))
        else {
            return cx.clone();
        };
        let members = extractor.get_all("tracestate").and_then(|values| parse_tracestate(&values)).unwrap_or_default();
        let header = members.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        // On the span too (exported with it) where OpenTelemetry accepts it.
        let state = TraceState::from_key_value(members).unwrap_or_default();
        let flags = TraceFlags::new(parent.flags & FLAG_SAMPLED);
        let cx = cx.with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state));
        let cx = cx.with_value(Tracestate(header));
        if parent.flags & FLAG_RANDOM == 0 { cx.with_value(NotRandom) } else { cx }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(FIELDS.get_or_init(|| ["traceparent".to_string(), "tracestate".to_string()]))
    }
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
    // Context activation (the span's OpenTelemetry context made current on
    // every entry, i.e. every poll of an instrumented future) is off too:
    // nothing here reads `Context::current()` except the log bridge, which
    // gets the context of the event's span attached per event instead
    // ([`TracedLogs`]).
    let layer = tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_tracer(provider.tracer("shopfast"));
    Some(layer)
}

/// A log layer (the OTLP log bridge) whose events carry the trace and span
/// they were logged in: the OpenTelemetry SDK reads them from
/// `Context::current()`, which is set here for the event, from its span,
/// rather than on every span entry.
pub struct TracedLogs<L> {
    inner: L,
    dispatch: DispatchSlot,
}

impl<L> TracedLogs<L> {
    pub fn new(inner: L) -> Self {
        Self { inner, dispatch: DispatchSlot::default() }
    }

    /// Where to tell this layer the subscriber it is part of, for a
    /// composition that does not (a `Vec` of layers does not pass
    /// `on_register_dispatch` on; `Layered` and filters do).
    pub fn dispatch_slot(&self) -> DispatchSlot {
        self.dispatch.clone()
    }
}

/// The subscriber a [`TracedLogs`] is part of (weakly: it does not keep it).
#[derive(Clone, Default)]
pub struct DispatchSlot(std::sync::Arc<OnceLock<tracing::dispatcher::WeakDispatch>>);

impl DispatchSlot {
    pub fn set(&self, dispatch: &tracing::Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }

    fn get(&self) -> Option<tracing::Dispatch> {
        self.0.get()?.upgrade()
    }
}

impl<S, L> tracing_subscriber::Layer<S> for TracedLogs<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: tracing_subscriber::Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.dispatch.set(subscriber);
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        // Asked of the whole subscriber, not of `ctx`: this layer's filter (the
        // log level) hides the request spans from it.
        let cx = self.dispatch.get().and_then(|dispatch| {
            let span =
                if event.is_contextual() { dispatch.current_span().id().cloned() } else { event.parent().cloned() };
            tracing_opentelemetry::get_otel_context(&span?, &dispatch)
        });
        let _attached = cx.map(Context::attach);
        self.inner.on_event(event, ctx);
    }
}

fn resource(service: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build()
}

/// The `tracing` layer that sends log lines as OTLP log records, when
/// tracing is on and an OTLP endpoint is configured; `None` otherwise. The
/// caller filters it like the log lines (the same level).
pub fn log_layer(service: &str) -> Option<TracedLogs<OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger>>> {
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
    provider.as_ref().map(|provider| TracedLogs::new(OpenTelemetryTracingBridge::new(provider)))
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

/// Appends `bytes` in lower-case hex: ids are written on every request and
/// call, where the formatting machinery showed in profiles.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    out
}

/// The (trace id, span id) of `span`, if it is an OpenTelemetry span.
fn ids_of(span: &Span) -> Option<(String, String)> {
    let context = span.context();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid().then(|| (hex(&ids.trace_id().to_bytes()), hex(&ids.span_id().to_bytes())))
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
    record_ids(span, &ids);
    ids
}

/// Records `trace_id` and `span_id` in one pass through the subscriber (a
/// record is a trip through every layer, per request).
fn record_ids(span: &Span, ids: &TraceIds) {
    let Some(fields) = span.metadata().map(tracing::Metadata::fields) else { return };
    let (Some(trace_id), Some(span_id)) = (fields.field("trace_id"), fields.field("span_id")) else {
        span.record("trace_id", ids.trace_id.as_str());
        span.record("span_id", ids.span_id.as_str());
        return;
    };
    let (trace_value, span_value) = (ids.trace_id.as_str(), ids.span_id.as_str());
    span.record_all(&fields.value_set(&[
        (&trace_id, Some(&trace_value as &dyn tracing::Value)),
        (&span_id, Some(&span_value as &dyn tracing::Value)),
    ]));
}

/// Writes `span`'s trace context into an outgoing request's headers, unless
/// they carry one already (a stored call delivered later keeps its trace).
pub fn inject(span: &Span, headers: &mut http::HeaderMap) {
    if headers.contains_key("traceparent") {
        return;
    }
    propagator().inject_context(&span.context(), &mut HeaderInjector(headers));
    // New on every call: an HPACK literal, not an entry in the peer's table
    // (where it would push out the headers that do repeat).
    if let Some(value) = headers.get_mut("traceparent") {
        value.set_sensitive(true);
    }
}

/// The current span's trace context as a `traceparent` value (for a
/// message that outlives the request, e.g. an outbox event), if there is one.
pub fn current_traceparent() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject(&Span::current(), &mut headers);
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A span of a message handled later (an outbox event) that continues the
/// trace stored with it (`traceparent`, as [`current_traceparent`] gave it).
pub fn continue_stored(span: &Span, traceparent: &str) -> TraceIds {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(traceparent) {
        headers.insert("traceparent", value);
    }
    continue_trace(span, &headers)
}

/// axum middleware for internal HTTP APIs (the registry): a request that
/// carries a `traceparent` is a server span continuing it, and its response
/// names the trace in `x-trace-id`; requests outside any trace (heartbeats,
/// probes, scrapes) make no span, so they do not bury the traces of users.
pub async fn trace_http_if_traced(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !request.headers().contains_key("traceparent") {
        return next.run(request).await;
    }
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let ids = continue_trace(&span, request.headers());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = http::HeaderValue::from_str(&ids.trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// The trace id OpenTelemetry's `Context::current()` shows each event.
    #[derive(Clone, Default)]
    struct SeenTraces(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SeenTraces {
        fn on_event(&self, _event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
            let trace_id = Context::map_current(|cx| cx.span().span_context().trace_id().to_string());
            self.0.lock().unwrap().push(trace_id);
        }
    }

    /// Under `dispatch`: warnings in, under and outside a server span that
    /// continues a trace; the trace ids `seen` got for them.
    fn traces_of_warnings(dispatch: &tracing::Dispatch, seen: &SeenTraces) -> Vec<String> {
        tracing::dispatcher::with_default(dispatch, || {
            let mut incoming = http::HeaderMap::new();
            incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
            let server =
                tracing::info_span!("server", trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
            continue_trace(&server, &incoming);
            server.in_scope(|| tracing::warn!("inside"));
            tracing::warn!(parent: &server, "named parent");
            tracing::warn!("outside");
        });
        seen.0.lock().unwrap().clone()
    }

    fn the_trace_twice_then_none() -> Vec<String> {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736".to_string();
        vec![trace.clone(), trace, TraceId::INVALID.to_string()]
    }

    #[test]
    fn log_events_carry_their_spans_trace_without_context_activation() {
        use tracing_subscriber::Layer as _;
        let seen = SeenTraces::default();
        let subscriber = tracing_subscriber::registry()
            .with(layer("test").map(|l| l.with_filter(tracing_subscriber::filter::LevelFilter::INFO)))
            // The log level hides the (info) request span from the log layer.
            .with(TracedLogs::new(seen.clone()).with_filter(tracing_subscriber::filter::LevelFilter::WARN));
        assert_eq!(traces_of_warnings(&subscriber.into(), &seen), the_trace_twice_then_none());
    }

    /// As `telemetry::init_logging` composes them: a list of the layers that
    /// are on, which does not pass the subscriber on to its members (the
    /// console test caught log records arriving without their trace).
    #[test]
    fn log_events_carry_their_spans_trace_from_a_list_of_layers() {
        use tracing_subscriber::Layer as _;
        let seen = SeenTraces::default();
        let logs = TracedLogs::new(seen.clone());
        let slot = logs.dispatch_slot();
        let layers: Vec<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>> = vec![
            layer("test").map(|l| l.with_filter(tracing_subscriber::filter::LevelFilter::INFO)).boxed(),
            logs.with_filter(tracing_subscriber::filter::LevelFilter::WARN).boxed(),
        ];
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layers));
        slot.set(&dispatch);
        assert_eq!(traces_of_warnings(&dispatch, &seen), the_trace_twice_then_none());
    }

    #[test]
    fn ids_in_hex_are_what_their_display_writes() {
        for text in
            ["0af7651916cd43dd8448eb211c80319c", "00000000000000000000000000000001", "ffffffffffffffffffffffffffffffff"]
        {
            let trace = TraceId::from_hex(text).unwrap();
            assert_eq!((hex(&trace.to_bytes()), trace.to_string()), (text.to_string(), text.to_string()));
        }
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(hex(&span.to_bytes()), span.to_string());
        assert_eq!(hex(&[0x03, 0xa0]), "03a0");
    }

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

    /// The `traceparent` a client call makes inside a server span that
    /// received `incoming` (header name, value pairs).
    fn passed_on(incoming: &[(&str, &str)]) -> (String, String) {
        let subscriber = tracing_subscriber::registry().with(layer("test"));
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            for (name, value) in incoming {
                headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            }
            let server =
                tracing::info_span!("server", trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
            continue_trace(&server, &headers);
            let client = server.in_scope(|| tracing::info_span!("client"));
            let mut outgoing = http::HeaderMap::new();
            inject(&client, &mut outgoing);
            let state = outgoing.get("tracestate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            (outgoing["traceparent"].to_str().unwrap().to_string(), state)
        })
    }

    #[test]
    fn the_random_flag_is_passed_on_as_received_and_set_on_new_traces() {
        let trace = "12345678901234567890123456789012";
        // Random, not sampled: the trace goes on, a span of ours, random still set.
        let (sent, _) = passed_on(&[("traceparent", &format!("00-{trace}-1234567890123456-02"))]);
        assert!(sent.starts_with(&format!("00-{trace}-")) && sent.ends_with("-02"), "{sent}");
        assert!(!sent.contains("1234567890123456-"), "a new parent id: {sent}");
        // Sampled, not random: not random downstream either.
        let (sent, _) = passed_on(&[("traceparent", &format!("00-{trace}-1234567890123456-01"))]);
        assert!(sent.ends_with("-01"), "{sent}");
        // A trace we start has a random id: flagged.
        let (sent, _) = passed_on(&[]);
        assert!(sent.ends_with("-03"), "{sent}");
        // Two traceparents: neither is trusted.
        let (sent, _) = passed_on(&[
            ("traceparent", &format!("00-{trace}-1234567890123456-01")),
            ("traceparent", &format!("00-{trace}-1234567890123457-01")),
        ]);
        assert!(!sent.contains(trace), "{sent}");
    }

    #[test]
    fn tracestate_headers_are_one_list_and_a_bad_one_is_dropped() {
        let parent = ("traceparent", "00-12345678901234567890123456789012-1234567890123456-01");
        let (_, state) = passed_on(&[parent, ("tracestate", "foo=1,bar=2"), ("tracestate", "baz=3")]);
        assert_eq!(state, "foo=1,bar=2,baz=3");
        let (_, state) = passed_on(&[parent, ("tracestate", "foo=1,@bad=2")]);
        assert_eq!(state, "", "dropped whole");
        let (_, state) = passed_on(&[parent, ("tracestate", "foo@=1,bar=2,foo@=3")]);
        assert_eq!(state, "foo@=1,bar=2", "Level 2 keys; the first of a repeated key");
    }
}
