//! A tower layer on every gRPC server: one span per request (method, trace and
//! span ids continued from `traceparent`) and RED metrics per method and code.
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct GrpcTelemetryLayer {
    service: &'static str,
}

impl GrpcTelemetryLayer {
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry { inner, service: self.service }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcTelemetry<S> {
    inner: S,
    service: &'static str,
}

impl<S, B, ResBody> Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        // Plumbing a caller marked untraced (a queue consumer's polling),
        // outside any trace: counted, but no root trace each time.
        let untraced = request.headers().contains_key(UNTRACED) && !request.headers().contains_key("traceparent");
        let span = if untraced {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "grpc",
                otel.name = %method,
                otel.kind = "server",
                rpc.system = "grpc",
                method = %method,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                // Filled by the handlers where they apply (`record_ids`), so every
                // log line of the request carries them and traces can be found by them.
                user_id = tracing::field::Empty,
                order_id = tracing::field::Empty,
                payment_id = tracing::field::Empty,
            )
        };
        crate::otel::continue_trace(&span, request.headers());
        if let Some(user) = request.headers().get("x-user-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
            span.record("user_id", user);
        }
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let service = self.service;
        let started = Instant::now();
        let future = inner.call(request);
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    // Unary errors are trailers-only responses: the status is a header.
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0),
                    Err(_) => tonic::Code::Unknown as i32,
                };
                let code = tonic::Code::from(code);
                let long_poll = result.as_ref().is_ok_and(|r| r.extensions().get::<LongPoll>().is_some());
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                if kit_resilience::signals::server_failure(code) {
                    span.record("otel.status_code", "ERROR");
                }
                // Unknown paths from clients must not mint label values.
                let method_label = if code == tonic::Code::Unimplemented { "unknown".to_string() } else { method };
                let code_label = format!("{code:?}");
                let elapsed = started.elapsed().as_secs_f64();
                metrics::counter!("grpc_server_requests_total", "service" => service, "method" => method_label.clone(), "code" => code_label.clone()).increment(1);
                // A long poll's time is mostly waiting by design: it would
                // read as latency in every p95 (the console's, a canary's).
                if !long_poll {
                    metrics::histogram!("grpc_server_request_duration_seconds", "service" => service, "method" => method_label, "code" => code_label).record(elapsed);
                }
                tracing::debug!(code = ?code, elapsed_ms = elapsed * 1000.0, "request finished");
                result
            }
            .instrument(span),
        )
    }
}

/// Request metadata a caller sets on calls that are plumbing, not work (a
/// queue consumer's receives and acknowledgements): outside a trace they make
/// no span on either side.
pub const UNTRACED: &str = "x-shopfast-untraced";

/// A response extension of a long-poll method (the queue's Receive, which
/// waits for entries): its duration stays out of the latency histogram.
#[derive(Debug, Clone, Copy)]
pub struct LongPoll;

/// Puts an id (`order_id`, `user_id`, `payment_id`) on the request's span, so
/// every later log line of the request carries it and its trace can be found
/// by it. Outside a request span it does nothing.
pub fn annotate(field: &'static str, value: &str) {
    if !value.is_empty() {
        tracing::Span::current().record(field, value);
    }
}
