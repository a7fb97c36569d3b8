//! The console `shopfast up` starts, with the whole stack and the traffic
//! generator running: one order through the gateway is one trace in the
//! console's API (spans from gateway, users, products, orders, payments, each
//! under its parent) with its log lines; it is found by order id and service;
//! the dependency map has the saga's edges; the health overview lists every
//! service; an error storm injected into Products raises HighErrorRate; the
//! page renders all of it in headless Chromium (DOM checked, screenshot
//! written); bad requests to every endpoint get clear 4xx answers.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Shopper, Up, eventually, promtool_accepts};

const SERVICES: [&str; 5] = ["gateway", "users", "products", "orders", "payments"];

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn random_hex(len: usize) -> String {
    (0..len).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect()
}

/// The products instance's admin address, from the registry.
async fn products_admin(up: &Up) -> String {
    let list = up.registry_client().all_instances().await.unwrap();
    let products = list.instances.iter().find(|i| i.name == "products").unwrap();
    format!("http://{}", products.admin_address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_traces_logs_health_alerts_and_the_dependency_map() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &["--enable-fault-injection"],
        &[
            // Short windows so health and alerts move within the test.
            ("SHOPFAST_CONSOLE__SCRAPE_INTERVAL_MS", "500"),
            ("SHOPFAST_CONSOLE__HEALTH__WINDOW_MS", "3000"),
            ("SHOPFAST_CONSOLE__HEALTH__ALERT_FOR_MS", "2000"),
            ("SHOPFAST_CONSOLE__MAX_BODY_BYTES", "1000000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
        ],
    );
    let console = up.console.clone().expect("up starts the console");
    let http = reqwest::Client::new();

    // One order, in a trace the caller starts.
    let shopper = Shopper::sign_up(&up.gateway, &up.api_key, "console@example.com").await;
    let product_id = shopper.product_in_stock().await;
    let trace_id = random_hex(32);
    let caller_span = random_hex(16);
    let response = shopper
        .request(reqwest::Method::POST, "/v1/orders")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&Shopper::order_of(&product_id, "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_string();

    // The trace, read back from the console: every service, every span's
    // parent in the trace except the gateway's (the caller's span).
    let trace_url = format!("{console}/api/traces/{trace_id}");
    let started = Instant::now();
    let trace = loop {
        let (status, body) = get(&http, &trace_url).await;
        let spans = body["spans"].as_array().cloned().unwrap_or_default();
        let services: BTreeSet<&str> = spans.iter().filter_map(|s| s["service"].as_str()).collect();
        let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
        let whole = spans.iter().all(|s| {
            let parent = s["parent_span_id"].as_str().unwrap_or("");
            parent == caller_span || ids.contains(parent)
        });
        if status == StatusCode::OK && SERVICES.iter().all(|s| services.contains(s)) && whole {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the trace is not whole in the console: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spans = trace["spans"].as_array().unwrap();
    let by_id: BTreeMap<&str, &Value> = spans.iter().map(|s| (s["span_id"].as_str().unwrap(), s)).collect();
    let roots: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"] == caller_span.as_str()).collect();
    assert_eq!(roots.len(), 1, "one span continues the caller's: {roots:#?}");
    assert_eq!((roots[0]["service"].as_str(), roots[0]["kind"].as_str()), (Some("gateway"), Some("server")));
    assert_eq!(spans[0]["depth"], 0, "the waterfall starts at the root");
    // Each saga call: a server span in the callee under an Orders client span,
    // itself under the Orders server span, under the gateway.
    for (service, method) in [
        ("users", "/ValidateUser"),
        ("products", "/ReserveInventory"),
        ("payments", "/ProcessPayment"),
        ("products", "/CommitInventory"),
    ] {
        let server = spans
            .iter()
            .find(|s| s["service"] == service && s["kind"] == "server" && s["name"].as_str().unwrap().ends_with(method))
            .unwrap_or_else(|| panic!("no {service}{method} server span"));
        let client = by_id[server["parent_span_id"].as_str().unwrap()];
        assert_eq!((client["service"].as_str(), client["kind"].as_str()), (Some("orders"), Some("client")), "{client}");
        assert!(server["depth"].as_u64().unwrap() > client["depth"].as_u64().unwrap());
        let mut ancestor = client;
        while ancestor["service"] != "gateway" {
            ancestor = by_id
                .get(ancestor["parent_span_id"].as_str().unwrap())
                .unwrap_or_else(|| panic!("chain broken at {ancestor}"));
        }
    }
    assert!(spans.iter().all(|s| s["error"] == false), "a paid order has no failed span");

    // Its log lines came over OTLP too, each under this trace.
    eventually(Duration::from_secs(15), "the order's log lines in the console", || {
        let (http, url) = (http.clone(), trace_url.clone());
        async move {
            let (_, body) = get(&http, &url).await;
            body["logs"].as_array().is_some_and(|logs| logs.iter().any(|l| l["service"] == "orders"))
        }
    })
    .await;
    let (_, trace) = get(&http, &trace_url).await;
    assert!(trace["logs"].as_array().unwrap().iter().all(|l| l["trace_id"] == trace_id.as_str()));

    // The order's trace goes on through the queue: Orders' relay publishes
    // each fulfilment event as a producer span under the span that wrote it,
    // and the fulfilment worker's consumer span continues that producer span
    // (then calls Orders' AdvanceFulfilment under it).
    eventually(Duration::from_secs(30), "the fulfilment steps in the order's trace", || {
        let (http, url) = (http.clone(), trace_url.clone());
        async move {
            let (_, body) = get(&http, &url).await;
            let spans = body["spans"].as_array().cloned().unwrap_or_default();
            let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
            ["order.paid", "order.shipped"].iter().all(|kind| {
                let producers: Vec<&Value> = spans
                    .iter()
                    .filter(|s| {
                        s["name"] == format!("publish {kind}").as_str()
                            && s["kind"] == "producer"
                            && s["service"] == "orders"
                            && ids.contains(s["parent_span_id"].as_str().unwrap_or(""))
                    })
                    .collect();
                spans.iter().any(|s| {
                    s["name"] == format!("process {kind}").as_str()
                        && s["kind"] == "consumer"
                        && s["service"] == "fulfilment"
                        && producers.iter().any(|p| p["span_id"] == s["parent_span_id"])
                })
            })
        }
    })
    .await;

    // Search: by order id, by service, errors only.
    let found = |query: String| {
        let http = http.clone();
        let url = format!("{console}/api/traces?{query}");
        async move {
            let (status, body) = get(&http, &url).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            body["traces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["trace_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found(format!("order_id={order_id}")).await, vec![trace_id.clone()], "found by its order id");
    assert!(found(format!("trace_id={trace_id}&service=payments")).await.contains(&trace_id));
    assert!(!found(format!("trace_id={trace_id}&errors=true")).await.contains(&trace_id), "it has no error");
    assert!(
        found(format!("trace_id={trace_id}&min_duration_ms=600000")).await.is_empty(),
        "it was not slower than 10 min"
    );

    // The dependency map: the order's edges, and callers from outside.
    let (_, map) = get(&http, &format!("{console}/api/dependencies")).await;
    let edges: BTreeSet<(String, String)> = map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["caller"].as_str().unwrap().to_string(), e["callee"].as_str().unwrap().to_string()))
        .collect();
    for (caller, callee) in [
        ("clients", "gateway"),
        ("gateway", "orders"),
        ("orders", "users"),
        ("orders", "products"),
        ("orders", "payments"),
    ] {
        assert!(edges.contains(&(caller.to_string(), callee.to_string())), "no edge {caller} → {callee} in {map}");
    }

    // The asynchronous path: Orders publishes to the queue, the fulfilment
    // worker consumes (its consumer span continues the relay's producer span).
    eventually(Duration::from_secs(60), "orders → queue → fulfilment on the map", || {
        let (http, url) = (http.clone(), format!("{console}/api/dependencies"));
        async move {
            let (_, map) = get(&http, &url).await;
            let edges: BTreeSet<(String, String)> = map["edges"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    (e["caller"].as_str().unwrap_or("").to_string(), e["callee"].as_str().unwrap_or("").to_string())
                })
                .collect();
            edges.contains(&("orders".into(), "queue".into())) && edges.contains(&("queue".into(), "fulfilment".into()))
        }
    })
    .await;
    // Trends: each service's series, and the queue's gauges (from the worker).
    eventually(Duration::from_secs(30), "series for the gateway and the queue", || {
        let (http, url) = (http.clone(), format!("{console}/api/timeseries?minutes=15"));
        async move {
            let (status, body) = get(&http, &url).await;
            let series = &body["series"];
            let gateway_moves = series["services"]["gateway"]
                .as_array()
                .is_some_and(|points| points.iter().any(|p| p["requests_per_sec"].as_f64().unwrap_or(0.0) > 0.0));
            status == StatusCode::OK && gateway_moves && series["queue"]["queue_depth"].is_array()
        }
    })
    .await;

    // Health: every service scraped through the registry; the traffic
    // generator's requests counted at the gateway.
    eventually(Duration::from_secs(20), "every service in the health overview, with traffic", || {
        let (http, url) = (http.clone(), format!("{console}/api/services"));
        async move {
            let (_, body) = get(&http, &url).await;
            let services = body["services"].as_array().cloned().unwrap_or_default();
            let named: BTreeSet<&str> = services.iter().filter_map(|s| s["service"].as_str()).collect();
            let gateway_busy = services
                .iter()
                .any(|s| s["service"] == "gateway" && s["requests_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
            SERVICES.iter().all(|s| named.contains(s)) && gateway_busy
        }
    })
    .await;
    // Every /metrics of the stack — each instance the registry lists, the
    // registry's and the console's own — is valid for promtool.
    let instances = up.registry_client().all_instances().await.unwrap().instances;
    // The services, the queue and the fulfilment worker.
    assert_eq!(instances.len(), SERVICES.len() + 2, "{instances:?}");
    let admins = instances.iter().map(|i| format!("http://{}", i.admin_address));
    let registry_http = up.registry_http();
    for admin in admins.chain([up.registry.clone(), console.clone()]) {
        // The registry is HTTPS (mutual TLS in the stack); the admin ports are plain.
        let client = if admin == up.registry { &registry_http } else { &http };
        let text = client.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        promtool_accepts(&text);
        if admin == console {
            assert!(text.contains("console_spans_received_total"), "{text}");
        }
    }

    // The traffic generator, through the console.
    let (status, stats) = get(&http, &format!("{console}/api/loadgen")).await;
    assert_eq!((status, stats["mode"].as_str()), (StatusCode::OK, Some("steady")), "{stats}");
    let unknown_mode = http.post(format!("{console}/api/loadgen/mode/sideways")).send().await.unwrap();
    assert_eq!(unknown_mode.status(), StatusCode::NOT_FOUND, "the generator's own answer is relayed");

    // Every Products call fails: the error-rate alert goes pending, then fires
    // once the condition has held for alert_for (2 s here).
    let admin = products_admin(&up).await;
    let faults = json!({ "rules": [{ "method": "*", "error_rate": 1.0, "error_code": "UNAVAILABLE" }] });
    let set = http.put(format!("{admin}/admin/faults")).json(&faults).send().await.unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let firing = eventually(Duration::from_secs(30), "HighErrorRate firing for products", || {
        let (http, url, shopper) = (http.clone(), format!("{console}/api/alerts"), &shopper);
        async move {
            // Traffic of our own too, so the test does not wait on the generator's pace.
            let _ = shopper.request(reqwest::Method::GET, "/v1/products?pageSize=1").send().await;
            let (_, body) = get(&http, &url).await;
            body["alerts"].as_array().is_some_and(|alerts| {
                alerts
                    .iter()
                    .any(|a| a["name"] == "HighErrorRate" && a["service"] == "products" && a["state"] == "firing")
            })
        }
    })
    .await;
    println!("HighErrorRate fired {firing:?} after the faults were set");

    // The page, in headless Chromium, with the trace open.
    render_the_page(&console, &trace_id).await;

    let cleared = http.delete(format!("{admin}/admin/faults")).send().await.unwrap();
    assert_eq!(cleared.status(), StatusCode::OK);
    bad_requests_are_refused_clearly(&http, &console).await;
    let (clean, stderr) = up.stop();
    assert!(clean, "up stops cleanly: {stderr}");
}

/// Headless Chromium loads the page with the trace in its URL; the DOM it
/// renders has the overview, the waterfall, the map, the generator's numbers
/// and the alert. A screenshot goes to the test's target directory.
async fn render_the_page(console: &str, trace_id: &str) {
    let url = format!("{console}/#trace={trace_id}");
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let run = |extra: &[String]| support::chromium(&url, extra);
    let dump = || tokio::task::block_in_place(|| run(&["--dump-dom".to_string()]));
    // The page fetches its data after it loads; on a loaded machine one
    // dump can come before the last fetch lands, so up to three dumps.
    let alert = "data-alert=\"HighErrorRate\" data-service=\"products\"";
    let Some(mut dom) = dump() else { return };
    for _ in 0..2 {
        if dom.contains(alert) && dom.matches("class=\"span-row\"").count() >= 10 {
            break;
        }
        dom = dump().unwrap_or_default();
    }
    for service in SERVICES {
        assert!(dom.contains(&format!("<tr data-service=\"{service}\"")), "overview row for {service} missing:\n{dom}");
        assert!(
            dom.contains(&format!("class=\"span-row\" data-service=\"{service}\"")),
            "no {service} span in the waterfall"
        );
        assert!(dom.contains(&format!("class=\"node\" data-service=\"{service}\"")), "no {service} node on the map");
    }
    assert!(dom.matches("class=\"span-row\"").count() >= 10, "the waterfall has the trace's spans");
    assert!(dom.contains("data-edge=\"orders-&gt;payments\""), "the orders → payments edge is drawn");
    assert!(dom.contains("id=\"loadgen-stats\" data-mode=\"steady\""), "the generator's numbers are shown");
    assert!(dom.contains(alert), "the alert is shown");
    for node in ["queue", "fulfilment"] {
        assert!(dom.contains(&format!("class=\"node\" data-service=\"{node}\"")), "no {node} node on the map");
    }
    assert!(dom.contains("data-edge=\"queue-&gt;fulfilment\""), "the queue → fulfilment edge is drawn");
    for chart in ["requests/s", "error rate", "p95", "queue depth and lag", "queue lag"] {
        assert!(dom.contains(&format!("data-chart=\"{chart}\"")), "no {chart} chart");
    }
    assert!(dom.contains("data-series=\"gateway\""), "the gateway's line in the trends");
    tokio::task::block_in_place(|| run(&[format!("--screenshot={}", screenshot.display())]));
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of the page: {} ({size} bytes)", screenshot.display());
    println!("console screenshot: {}", screenshot.display());
}

async fn bad_requests_are_refused_clearly(http: &reqwest::Client, console: &str) {
    let status_of = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body)
    };
    let otlp = |body: Vec<u8>, content_type: &str| {
        http.post(format!("{console}/v1/traces")).header("content-type", content_type).body(body)
    };
    let cases = [
        (
            "garbage protobuf",
            otlp(b"\xff\xff\xff\xff not otlp".to_vec(), "application/x-protobuf"),
            StatusCode::BAD_REQUEST,
        ),
        ("OTLP/JSON", otlp(b"{}".to_vec(), "application/json"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            "gzip",
            otlp(Vec::new(), "application/x-protobuf").header("content-encoding", "gzip"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("too large", otlp(vec![0; 1_100_000], "application/x-protobuf"), StatusCode::PAYLOAD_TOO_LARGE),
        (
            "garbage logs",
            http.post(format!("{console}/v1/logs"))
                .header("content-type", "application/x-protobuf")
                .body(&b"\x0a\xff"[..]),
            StatusCode::BAD_REQUEST,
        ),
        ("limit 0", http.get(format!("{console}/api/traces?limit=0")), StatusCode::BAD_REQUEST),
        ("3 minutes", http.get(format!("{console}/api/timeseries?minutes=3")), StatusCode::BAD_REQUEST),
        ("minutes garbage", http.get(format!("{console}/api/timeseries?minutes=lots")), StatusCode::BAD_REQUEST),
        ("unknown series knob", http.get(format!("{console}/api/timeseries?step=1")), StatusCode::BAD_REQUEST),
        ("limit abc", http.get(format!("{console}/api/traces?limit=abc")), StatusCode::BAD_REQUEST),
        ("unknown parameter", http.get(format!("{console}/api/traces?colour=blue")), StatusCode::BAD_REQUEST),
        ("bad trace id filter", http.get(format!("{console}/api/traces?trace_id=xyz")), StatusCode::BAD_REQUEST),
        ("errors=maybe", http.get(format!("{console}/api/traces?errors=maybe")), StatusCode::BAD_REQUEST),
        ("negative duration", http.get(format!("{console}/api/traces?min_duration_ms=-1")), StatusCode::BAD_REQUEST),
        ("bad trace id", http.get(format!("{console}/api/traces/not-a-trace")), StatusCode::BAD_REQUEST),
        ("zero trace id", http.get(format!("{console}/api/traces/{}", "0".repeat(32))), StatusCode::BAD_REQUEST),
        ("unknown trace", http.get(format!("{console}/api/traces/{}", random_hex(32))), StatusCode::NOT_FOUND),
        ("tiny window", http.get(format!("{console}/api/dependencies?window_ms=5")), StatusCode::BAD_REQUEST),
        ("loadgen not JSON", http.put(format!("{console}/api/loadgen")).body("nope"), StatusCode::BAD_REQUEST),
        (
            "loadgen ftp",
            http.put(format!("{console}/api/loadgen")).json(&json!({ "url": "ftp://x" })),
            StatusCode::BAD_REQUEST,
        ),
        (
            "loadgen extra field",
            http.put(format!("{console}/api/loadgen")).json(&json!({ "url": "http://x", "x": 1 })),
            StatusCode::BAD_REQUEST,
        ),
        // The relay fetches only what it was configured with: no URL a caller makes up.
        (
            "loadgen not configured",
            http.put(format!("{console}/api/loadgen")).json(&json!({ "url": "http://169.254.169.254/latest" })),
            StatusCode::FORBIDDEN,
        ),
        ("wrong method", http.delete(format!("{console}/api/traces")), StatusCode::METHOD_NOT_ALLOWED),
        ("unknown path", http.get(format!("{console}/api/nothing")), StatusCode::NOT_FOUND),
    ];
    for (what, request, expected) in cases {
        let (status, body) = status_of(request).await;
        assert_eq!(status, expected, "{what}: {body}");
        if expected != StatusCode::METHOD_NOT_ALLOWED
            && expected != StatusCode::NOT_FOUND
            && expected != StatusCode::PAYLOAD_TOO_LARGE
        {
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: a reason is given: {body}");
        }
    }
    // Nothing half-stored: the refused requests left the store as it was.
    let (status, _) = get(http, &format!("{console}/health/ready")).await;
    assert_eq!(status, StatusCode::OK);
}

/// A console configured wrong does not start, and says why.
#[test]
fn bad_console_settings_stop_it_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    for (flags, reason) in [
        (vec!["--registry-url", "ftp://registry"], "expected an http(s) URL"),
        (vec!["--loadgen-url", "not a url"], "expected an http(s) URL"),
        (vec!["--retention-ms", "0"], "must be above 0"),
    ] {
        let out = Command::new(support::SHOPFAST)
            .args(["console", "--addr", "127.0.0.1:0", "--data-dir", data_dir])
            .args(&flags)
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{flags:?} started");
        assert!(said.contains(reason), "{flags:?}: {said}");
    }
}
