//! One order through the gateway is one trace: the gateway's trace id comes
//! back in `x-trace-id`, every process the order touched — gateway, users,
//! products, orders, payments — logged under that same trace id (W3C trace
//! context continued on every hop, the saga's calls included), and the spans
//! they export over OTLP/HTTP to a receiver here link up parent to child.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::Value;
use support::{Shopper, Up};

/// A span as the receiver keeps it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP (protobuf) trace receiver on a free port: its endpoint and what it got.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            store.lock().unwrap().push(Received {
                                service: service.clone(),
                                name: span.name.clone(),
                                kind: span.kind,
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent: hex(&span.parent_span_id),
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

/// The JSON log lines of one child that carry `trace_id`.
fn lines_of_trace(data: &std::path::Path, child: &str, trace_id: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(data.join("logs").join(format!("{child}.log"))).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["trace_id"] == trace_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_every_service() {
    let data = tempfile::tempdir().unwrap();
    let (collector, exported) = receiver().await;
    // Its own OTLP receiver here, so no console.
    let up = Up::start(
        data.path(),
        &["--no-loadgen", "--no-console"],
        &[
            // Per-request lines (debug) on the servers and the gateway, the
            // `ready` lines `up` waits for, and nothing else: the log level
            // must not cut the trace (the client spans are not logged).
            (
                "RUST_LOG",
                "warn,registry=info,kit::server=info,kit_telemetry::grpc_telemetry=debug,gateway=debug,orders=info",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let shopper = Shopper::sign_up(&up.gateway, &up.api_key, "traced@example.com").await;
    let product_id = shopper.product_in_stock().await;

    // The caller starts the trace: the gateway continues it.
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = shopper
        .request(reqwest::Method::POST, "/v1/orders")
        .header("traceparent", format!("00-{caller_trace}-b7ad6b7169203331-01"))
        .json(&Shopper::order_of(&product_id, "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(response.headers()["x-trace-id"], caller_trace, "the caller's trace is continued");
    let order: Value = response.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap();

    // Every hop logged under the caller's trace id (logs are flushed line by line).
    let started = Instant::now();
    for child in ["gateway-1", "orders-1", "users-1", "products-1", "payments-1"] {
        loop {
            if !lines_of_trace(data.path(), child, caller_trace).is_empty() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{child} logged nothing under the trace");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The saga's calls carried the trace: users, products and payments saw
    // the methods the saga calls, each under the order's trace.
    let methods = |child: &str| -> Vec<String> {
        lines_of_trace(data.path(), child, caller_trace)
            .iter()
            .filter_map(|l| l["method"].as_str().map(str::to_string))
            .collect()
    };
    assert!(methods("users-1").iter().any(|m| m.ends_with("/ValidateUser")), "{:?}", methods("users-1"));
    assert!(methods("products-1").iter().any(|m| m.ends_with("/ReserveInventory")), "{:?}", methods("products-1"));
    assert!(methods("products-1").iter().any(|m| m.ends_with("/CommitInventory")), "{:?}", methods("products-1"));
    assert!(methods("payments-1").iter().any(|m| m.ends_with("/ProcessPayment")), "{:?}", methods("payments-1"));
    // Orders' own lines about this order carry the trace and the order id.
    let orders = lines_of_trace(data.path(), "orders-1", caller_trace);
    assert!(orders.iter().any(|l| l["order_id"] == order_id), "{orders:#?}");
    // Payments' lines in the charge carry the payment, the order and the user.
    let payments = lines_of_trace(data.path(), "payments-1", caller_trace);
    assert!(
        payments.iter().any(|l| l["payment_id"].as_str().is_some_and(|p| !p.is_empty())
            && l["order_id"] == order_id
            && l["user_id"].as_str().is_some_and(|u| !u.is_empty())),
        "{payments:#?}"
    );
    // Span ids differ per hop: each process had a span of its own.
    let span_of = |child: &str| {
        let lines = lines_of_trace(data.path(), child, caller_trace);
        lines.iter().find_map(|l| l["span_id"].as_str().map(str::to_string)).unwrap_or_default()
    };
    let spans: std::collections::BTreeSet<String> =
        ["gateway-1", "orders-1", "users-1", "products-1", "payments-1"].iter().map(|c| span_of(c)).collect();
    assert!(spans.iter().all(|s| s.len() == 16), "{spans:?}");
    assert_eq!(spans.len(), 5, "{spans:?}");

    // The exported spans of the trace: from every service, and every span's
    // parent is a span of the trace — except the gateway's, whose parent is
    // the caller's.
    // Spans arrive in batches as they end: wait until the trace is whole.
    let is_root = |s: &Received| s.service.contains("gateway") && s.kind == 2;
    let started = Instant::now();
    let trace = loop {
        let trace: Vec<Received> =
            exported.lock().unwrap().iter().filter(|s| s.trace_id == caller_trace).cloned().collect();
        let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
        let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
        let every_service = ["gateway", "orders", "users", "products", "payments"]
            .iter()
            .all(|s| services.iter().any(|x| x.contains(s)));
        let whole = trace.iter().all(|s| is_root(s) || ids.contains(s.parent.as_str()));
        if (every_service && whole) || started.elapsed() > Duration::from_secs(15) {
            break trace;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for span in &trace {
        if is_root(span) {
            assert_eq!(span.parent, "b7ad6b7169203331", "the gateway continues the caller's span: {span:?}");
        } else {
            assert!(by_id.contains_key(span.parent.as_str()), "orphan span {span:?} in {trace:#?}");
        }
    }
    // ValidateUser in Users: a server span whose parent is an Orders client
    // span, itself below the Orders server span below the gateway's.
    let validate = trace.iter().find(|s| s.service.contains("users") && s.name.ends_with("/ValidateUser")).unwrap();
    assert_eq!(validate.kind, 2, "server");
    let client = by_id[validate.parent.as_str()];
    assert!(client.service.contains("orders") && client.kind == 3, "{client:?}");
    let mut ancestor = client;
    while !ancestor.service.contains("gateway") {
        ancestor = by_id.get(ancestor.parent.as_str()).unwrap_or_else(|| panic!("chain broken at {ancestor:?}"));
    }
    for method in ["/ReserveInventory", "/ProcessPayment", "/CommitInventory"] {
        assert!(trace.iter().any(|s| s.kind == 2 && s.name.ends_with(method)), "no {method} server span");
    }
    // The gateway's call to Orders is a client span of its own (which sent
    // the trace context on), and Orders' server span continues it.
    let create = trace.iter().find(|s| s.service.contains("orders") && s.kind == 2 && s.name.ends_with("/CreateOrder"));
    let create = create.unwrap_or_else(|| panic!("no CreateOrder server span in {trace:#?}"));
    let gateway_call = by_id[create.parent.as_str()];
    assert!(gateway_call.service.contains("gateway") && gateway_call.kind == 3, "{gateway_call:?}");

    assert!(up.stop().0, "up stops cleanly");
}
