//! The traffic generator as `shopfast up` starts it: steady traffic through
//! the gateway, modes switched on its control port change the observed rate
//! (burst and overload above steady, pause to nothing), and garbage on the
//! control port or the command line is refused.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{SHOPFAST, Up};

async fn stats(http: &reqwest::Client, loadgen: &str) -> Value {
    http.get(format!("{loadgen}/stats")).send().await.unwrap().json().await.unwrap()
}

/// Switches the mode and waits one stats window plus a second, so the window
/// holds only the new mode's traffic; the requests per second it shows.
async fn rate_in(http: &reqwest::Client, loadgen: &str, mode: &str) -> f64 {
    let switched = http.post(format!("{loadgen}/mode/{mode}")).send().await.unwrap();
    assert_eq!(switched.status(), StatusCode::OK);
    let body: Value = switched.json().await.unwrap();
    assert_eq!(body["mode"], mode);
    let window = stats(http, loadgen).await["stats"]["window_secs"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_secs_f64(window + 1.0)).await;
    let now = stats(http, loadgen).await;
    assert_eq!(now["mode"], mode);
    now["stats"]["rps"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_change_the_rate_and_garbage_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[], &[]);
    let loadgen = up.loadgen.clone().expect("up starts the traffic generator");
    let http = reqwest::Client::new();

    // Steady from the start: traffic, served, no server errors.
    let steady = rate_in(&http, &loadgen, "steady").await;
    let now = stats(&http, &loadgen).await;
    assert!(steady > 0.5, "steady traffic flows: {now}");
    assert!(now["stats"]["total"]["success"].as_u64().unwrap() > 0, "{now}");
    assert_eq!(now["stats"]["window"]["server_error"], 0, "a healthy stack at a steady rate: {now}");
    assert!(now["stats"]["p99_ms"].as_f64().unwrap() > 0.0);

    let burst = rate_in(&http, &loadgen, "burst").await;
    assert!(burst > 1.5 * steady, "burst {burst} vs steady {steady}");
    let overload = rate_in(&http, &loadgen, "overload").await;
    assert!(overload > 2.0 * steady, "overload {overload} vs steady {steady}");
    let now = stats(&http, &loadgen).await;
    println!("requests/s: steady {steady:.1}, burst {burst:.1}, overload {overload:.1}; under overload: {now}");

    // Flood: orders only, at their own rate (the queue behind Orders fills).
    http.post(format!("{loadgen}/mode/flood")).send().await.unwrap().error_for_status().unwrap();
    let now = stats(&http, &loadgen).await;
    assert_eq!((now["mode"].as_str(), now["target_journeys_per_sec"].as_f64()), (Some("flood"), Some(50.0)), "{now}");

    // Pause: once what was in flight has finished, nothing.
    http.post(format!("{loadgen}/mode/pause")).send().await.unwrap();
    let started = Instant::now();
    loop {
        let now = stats(&http, &loadgen).await;
        if now["stats"]["rps"].as_f64().unwrap() < 0.3 {
            assert_eq!(now["target_journeys_per_sec"], 0.0);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still busy after pausing: {now}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mode: Value = http.get(format!("{loadgen}/mode")).send().await.unwrap().json().await.unwrap();
    assert_eq!(mode["mode"], "pause");

    // Garbage on the control port.
    let unknown = http.post(format!("{loadgen}/mode/turbo")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("steady, burst, overload, flood, pause"), "{body}");
    assert_eq!(
        http.get(format!("{loadgen}/mode/steady")).send().await.unwrap().status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(http.post(format!("{loadgen}/stats")).send().await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(http.get(format!("{loadgen}/nothing")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let page = http.get(&loadgen).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("shopfast loadgen") && page.contains("/mode/"));
    let mode: Value = http.get(format!("{loadgen}/mode")).send().await.unwrap().json().await.unwrap();
    assert_eq!(mode["mode"], "pause", "a refused switch changes nothing");

    let (clean, stderr) = up.stop();
    assert!(clean, "up stops cleanly");
    assert!(stderr.contains("loadgen-1 stopped (exit status: 0)"), "{stderr}");
}

#[test]
fn bad_command_lines_are_refused() {
    for (args, expected) in [
        (vec!["loadgen", "--addr", "127.0.0.1:0"], "gateway_url is required"),
        (vec!["loadgen", "--addr", "127.0.0.1:0", "--gateway-url", "ftp://x"], "http(s) URL"),
        (vec!["loadgen", "--addr", "127.0.0.1:0", "--gateway-url", "http://127.0.0.1:1", "--mode", "turbo"], "turbo"),
    ] {
        let out = Command::new(SHOPFAST).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
