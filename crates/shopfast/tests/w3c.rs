//! The official W3C trace-context test suite (vendored in
//! `third_party/w3c-trace-context`) at SPEC_LEVEL 2 and STRICT_LEVEL 2,
//! against a real gateway's test endpoint, through `scripts/w3c-trace-context.sh`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::process::Command;

#[test]
fn the_w3c_trace_context_suite_passes_at_level_2() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new("bash")
        .arg("scripts/w3c-trace-context.sh")
        .current_dir(root)
        .env("SHOPFAST_BIN", support::SHOPFAST)
        .output()
        .unwrap();
    // unittest reports on stderr.
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the suite failed:\n{report}");
    assert!(report.contains("SPEC_LEVEL:   2") && report.contains("STRICT_LEVEL: 2"), "{report}");
    assert!(report.contains("test_propagates_random_flag"), "the Level 2 test ran:\n{report}");
    assert!(report.contains("\nOK"), "{report}");
    assert!(!report.contains("skipped"), "nothing skipped:\n{report}");
}

/// Off by default (404, like any unknown route); on, it refuses bodies that
/// are not a callback list and callbacks anywhere but loopback (400), before
/// making any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_endpoint_is_off_by_default_and_refuses_bad_callbacks() {
    let data = tempfile::tempdir().unwrap();
    let registry = support::Proc::registry("127.0.0.1:0", 500, 5_000, 1_000);
    let gateway = |extra: &[&str]| {
        let mut args = vec!["gateway", "--addr", "127.0.0.1:0", "--data-dir", data.path().to_str().unwrap()];
        let registry_url = registry.url();
        args.extend(["--registry-url", registry_url.as_str()]);
        args.extend_from_slice(extra);
        support::Proc::start(&args)
    };
    let http = reqwest::Client::new();
    let post = |base: String, body: &'static str| {
        http.post(format!("{base}/test/tracecontext")).header("content-type", "application/json").body(body).send()
    };
    let off = gateway(&[]);
    assert_eq!(post(off.url(), "[]").await.unwrap().status(), 404);
    let on = gateway(&["--enable-trace-context-test-endpoint"]);
    assert_eq!(post(on.url(), "[]").await.unwrap().status(), 200);
    for bad in [
        "{}",
        "nope",
        r#"[{"url": "http://example.com/"}]"#,
        r#"[{"url": "file:///etc/passwd"}]"#,
        r#"[{"arguments": []}]"#,
    ] {
        let response = post(on.url(), bad).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
}
