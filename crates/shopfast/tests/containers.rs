//! What the containers rely on, from the command line: `shopfast
//! healthcheck` (the image has no curl) and `shopfast secrets` (compose's and
//! Kubernetes' secrets), fed garbage and unhealthy answers.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;

fn shopfast(args: &[&str]) -> Output {
    std::process::Command::new(support::SHOPFAST).args(args).output().unwrap()
}

/// A one-request HTTP server answering `status`; its URL.
fn answering(status: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health/ready", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
        }
    });
    url
}

#[test]
fn healthcheck_passes_only_on_a_2xx_answer() {
    assert!(shopfast(&["healthcheck", &answering("200 OK")]).status.success());
    let unhealthy = shopfast(&["healthcheck", &answering("503 Service Unavailable")]);
    assert!(!unhealthy.status.success());
    assert!(String::from_utf8_lossy(&unhealthy.stderr).contains("503"), "{unhealthy:?}");
    // Nothing listening: a clear failure, within the timeout.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let closed = shopfast(&["healthcheck", &format!("http://127.0.0.1:{port}/"), "--timeout-ms", "500"]);
    assert!(!closed.status.success() && started.elapsed().as_secs() < 10);
    assert!(String::from_utf8_lossy(&closed.stderr).contains("GET http://127.0.0.1"), "{closed:?}");
    let cases: &[(&[&str], &str)] = &[
        (&["healthcheck", "https://127.0.0.1:1/"], "--tls-dir"),
        (&["healthcheck", "not a url"], "not a url"),
        (&["healthcheck", "http://127.0.0.1:1/", "--timeout-ms", "soon"], "invalid value"),
        (&["healthcheck"], "<URL>"),
    ];
    for (args, expected) in cases {
        let out = shopfast(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn secrets_are_made_once_owner_only_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    assert!(shopfast(&["secrets", "--data-dir", data]).status.success());
    let token = dir.path().join("secrets/token_secret");
    let first = std::fs::read_to_string(&token).unwrap();
    for name in ["token_secret", "card_key", "api_key", "loadgen_key", "gateway-api-keys.json"] {
        let mode = std::fs::metadata(dir.path().join("secrets").join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{name} is readable by others: {mode:o}");
    }
    // Made again: the same secrets (tokens and sealed cards stay valid).
    assert!(shopfast(&["secrets", "--data-dir", data]).status.success());
    assert_eq!(std::fs::read_to_string(&token).unwrap(), first);
    let refused = shopfast(&["secrets", "--data-dir", "/proc/no-such-place"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot create"), "{refused:?}");
}

#[test]
fn a_secret_file_that_cannot_be_read_stops_a_service_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::SHOPFAST)
        .args(["users", "--data-dir", dir.path().to_str().unwrap()])
        .env("SHOPFAST_USERS__TOKEN_SECRET__FILE", dir.path().join("missing"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("SHOPFAST_USERS__TOKEN_SECRET__FILE"), "{stderr}");
}
