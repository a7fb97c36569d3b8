//! The idempotency layer against SQLite and PostgreSQL: replays, mismatches,
//! concurrent duplicates, freed keys after server failures, expiry, takeover.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use kit::db::{Db, DbOptions};
use kit::idempotency::{Claim, IdempotencyConfig, IdempotencyLayer, IdempotencyStore};
use kit_core::reason::Reason;
use kit_resilience::signals::REASON;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn store(url: &str, config: IdempotencyConfig) -> Arc<IdempotencyStore> {
    let db = Db::open(url, &DbOptions::default(), &NO_MIGRATIONS).await.unwrap();
    Arc::new(IdempotencyStore::open(db, config).await.unwrap())
}

/// What the fake method answers, by call number.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    NotFound,
    Unavailable,
    /// OK, with `kit::reply`'s 202 hint: the work goes on.
    Accepted,
    /// OK, with the 201 hint and a location.
    Created,
    /// FAILED_PRECONDITION with a reason (a declined card).
    Declined,
}

/// A gRPC-shaped method that counts its calls and echoes the request body.
fn method(
    calls: Arc<AtomicUsize>,
    answers: Vec<Answer>,
    delay: Duration,
) -> impl Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(move |request: http::Request<Body>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let answer = answers.get(n).copied().unwrap_or(Answer::Ok);
        async move {
            tokio::time::sleep(delay).await;
            let body = request.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, BoxError>(match answer {
                Answer::Ok | Answer::Accepted | Answer::Created => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let echo = Bytes::from(format!("answer {n}: {}", String::from_utf8_lossy(&body)));
                    let frames = futures::stream::iter([
                        Ok::<_, tonic::Status>(Frame::data(echo)),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
                    let hint = match answer {
                        Answer::Accepted => Some("202"),
                        Answer::Created => Some("201"),
                        _ => None,
                    };
                    if let Some(code) = hint {
                        response.headers_mut().insert("x-http-code", code.parse().unwrap());
                        response.headers_mut().insert("location", format!("/things/{n}").parse().unwrap());
                    }
                    response
                }
                Answer::NotFound => tonic::Status::not_found("no such thing").into_http(),
                Answer::Declined => {
                    let declined = tonic::Status::failed_precondition("card declined: insufficient_funds");
                    kit_resilience::signals::with_reason(declined, Reason::CardDeclined).into_http()
                }
                Answer::Unavailable => tonic::Status::unavailable("busy").into_http(),
            })
        }
    })
}

fn request(key: Option<&str>, body: &'static str) -> http::Request<Body> {
    request_as("client-a", key, body)
}

fn request_as(client: &str, key: Option<&str>, body: &'static str) -> http::Request<Body> {
    let mut request =
        http::Request::builder().uri("/test.Service/Do").body(Body::new(Full::new(Bytes::from(body)))).unwrap();
    request.headers_mut().insert("x-client-id", client.parse().unwrap());
    if let Some(key) = key {
        request.headers_mut().insert("idempotency-key", key.parse().unwrap());
    }
    request
}

/// (grpc-status, body, replayed)
async fn send<S>(service: &mut S, request: http::Request<Body>) -> (String, String, bool)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let header_status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string());
    let collected = response.into_body().collect().await.unwrap();
    let trailer_status =
        collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap().to_string());
    let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
    (header_status.or(trailer_status).unwrap(), body, replayed)
}

async fn a_replay_returns_the_stored_answer_without_running_again(url: String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store(&url, IdempotencyConfig::default()).await);
    let mut service = layer.layer(method(calls.clone(), vec![], Duration::ZERO));
    let first = send(&mut service, request(Some("k1"), "pay 10")).await;
    assert_eq!(first, ("0".into(), "answer 0: pay 10".into(), false));
    let again = send(&mut service, request(Some("k1"), "pay 10")).await;
    assert_eq!(again, ("0".into(), "answer 0: pay 10".into(), true));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "ran once");
    // Without a key every call runs.
    send(&mut service, request(None, "pay 10")).await;
    send(&mut service, request(None, "pay 10")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Another client's same key is another key: its own answer, not ours.
    let theirs = send(&mut service, request_as("client-b", Some("k1"), "pay 10")).await;
    assert_eq!(theirs, ("0".into(), "answer 3: pay 10".into(), false));
}

async fn a_key_reused_for_another_request_is_refused(url: String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store(&url, IdempotencyConfig::default()).await);
    let mut service = layer.layer(method(calls.clone(), vec![], Duration::ZERO));
    send(&mut service, request(Some("k2"), "pay 10")).await;
    let reused = service.ready().await.unwrap().call(request(Some("k2"), "pay 99")).await.unwrap();
    assert_eq!(reused.headers()["grpc-status"], "3", "INVALID_ARGUMENT");
    assert_eq!(reused.headers()["x-http-code"], "422", "Unprocessable Content at the gateway (the IETF draft)");
    assert_eq!(reused.headers()[REASON], "IDEMPOTENCY_KEY_REUSED");
    let (status, _, _) = send(&mut service, request(Some("bad key with spaces"), "pay 1")).await;
    assert_eq!(status, "3");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn an_idempotent_body_over_the_limit_is_refused_without_being_read_whole(url: String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let config = IdempotencyConfig { max_body_bytes: 64 * 1024, ..Default::default() };
    let layer = IdempotencyLayer::new(store(&url, config).await);
    let mut service = layer.layer(method(calls.clone(), vec![], Duration::ZERO));
    // A megabyte, streamed: the layer stops reading at its limit.
    let chunks =
        futures::stream::iter((0..16).map(|_| Ok::<_, tonic::Status>(Frame::data(Bytes::from(vec![b'x'; 65_536])))));
    let mut big = http::Request::builder().uri("/test.Service/Do").body(Body::new(StreamBody::new(chunks))).unwrap();
    big.headers_mut().insert("idempotency-key", "k-big".parse().unwrap());
    let (status, _, _) = send(&mut service, big).await;
    assert_eq!(status, "3", "INVALID_ARGUMENT");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the method never ran");
    // Nothing was claimed: the key is free for a request that fits.
    assert_eq!(send(&mut service, request(Some("k-big"), "small")).await.0, "0");
}

async fn concurrent_duplicates_run_once_and_the_rest_hear_in_progress(url: String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store(&url, IdempotencyConfig::default()).await);
    let service = layer.layer(method(calls.clone(), vec![], Duration::from_millis(300)));
    let attempts = (0..10).map(|_| {
        let mut service = service.clone();
        async move { send(&mut service, request(Some("k3"), "pay 10")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let ran = results.iter().filter(|(s, _, _)| s == "0").count();
    let busy = results.iter().filter(|(s, _, _)| s == "10").count();
    assert_eq!((ran, busy), (1, 9), "{results:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Once done, a duplicate gets the answer.
    let mut service = service.clone();
    assert_eq!(send(&mut service, request(Some("k3"), "pay 10")).await.1, "answer 0: pay 10");
}

async fn server_failures_free_the_key_and_client_errors_are_kept(url: String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store(&url, IdempotencyConfig::default()).await);
    let answers = vec![Answer::Unavailable, Answer::Ok, Answer::NotFound];
    let mut service = layer.layer(method(calls.clone(), answers, Duration::ZERO));
    assert_eq!(send(&mut service, request(Some("k4"), "x")).await.0, "14", "UNAVAILABLE");
    assert_eq!(send(&mut service, request(Some("k4"), "x")).await, ("0".into(), "answer 1: x".into(), false));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the retry after UNAVAILABLE ran");
    assert_eq!(send(&mut service, request(Some("k5"), "y")).await.0, "5", "NOT_FOUND");
    let replay = send(&mut service, request(Some("k5"), "y")).await;
    assert_eq!((replay.0.as_str(), replay.2), ("5", true), "a client error is an answer too");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

async fn an_accepted_answer_frees_the_key_and_a_created_one_replays_with_its_hints(url: String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store(&url, IdempotencyConfig::default()).await);
    let answers = vec![Answer::Accepted, Answer::Accepted, Answer::Created];
    let mut service = layer.layer(method(calls.clone(), answers, Duration::ZERO));
    // 202: not final, so not kept — each retry asks again.
    for _ in 0..2 {
        let response = service.ready().await.unwrap().call(request(Some("k9"), "order")).await.unwrap();
        assert_eq!(response.headers()["x-http-code"], "202");
        assert!(!response.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // 201: final, kept, and replayed with its status and location.
    for replayed in [false, true] {
        let response = service.ready().await.unwrap().call(request(Some("k9"), "order")).await.unwrap();
        assert_eq!(response.headers()["x-http-code"], "201");
        assert_eq!(response.headers()["location"], "/things/2");
        assert_eq!(response.headers().contains_key("idempotent-replayed"), replayed);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the created answer ran once");
}

async fn keys_expire_and_abandoned_claims_are_taken_over(url: String) {
    let config = IdempotencyConfig {
        retention: Duration::from_secs(3600),
        lease: Duration::from_secs(60),
        ..Default::default()
    };
    let store = store(&url, config).await;
    let t0 = 1_000_000_000;
    assert_eq!(store.claim("k6", "h", t0, None).await.unwrap(), Claim::Fresh);
    assert_eq!(store.claim("k6", "h", t0 + 1_000, None).await.unwrap(), Claim::InProgress);
    // Its owner died: after the lease, someone else may run it.
    assert_eq!(store.claim("k6", "h", t0 + 61_000, None).await.unwrap(), Claim::Fresh);
    assert_eq!(store.claim("k6", "other", t0 + 62_000, None).await.unwrap(), Claim::Mismatch);
    // After retention the key is forgotten, and the sweep deletes it.
    assert_eq!(store.claim("k6", "other", t0 + 3_600_001, None).await.unwrap(), Claim::Fresh);
    assert_eq!(store.sweep(t0 + 3_600_000).await.unwrap(), 0, "the new claim is not expired");
    assert_eq!(store.sweep(t0 + 2 * 3_600_001).await.unwrap(), 1);

    // A call with a 2 s deadline cannot run past it (the server drops it):
    // its claim is free a second after the deadline, long before the lease.
    let deadline = Some(Duration::from_secs(2));
    assert_eq!(store.claim("k7", "h", t0, deadline).await.unwrap(), Claim::Fresh);
    assert_eq!(store.claim("k7", "h", t0 + 2_900, deadline).await.unwrap(), Claim::InProgress);
    assert_eq!(store.claim("k7", "h", t0 + 3_100, deadline).await.unwrap(), Claim::Fresh);
    // The takeover holds it for its own deadline.
    assert_eq!(store.claim("k7", "h", t0 + 3_200, None).await.unwrap(), Claim::InProgress);
    // A deadline longer than the lease is cut to the lease.
    let long = Some(Duration::from_secs(600));
    assert_eq!(store.claim("k8", "h", t0, long).await.unwrap(), Claim::Fresh);
    assert_eq!(store.claim("k8", "h", t0 + 59_000, None).await.unwrap(), Claim::InProgress);
    assert_eq!(store.claim("k8", "h", t0 + 61_000, None).await.unwrap(), Claim::Fresh);
}

async fn a_replayed_refusal_keeps_its_reason(url: String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store(&url, IdempotencyConfig::default()).await);
    let mut service = layer.layer(method(calls.clone(), vec![Answer::Declined], Duration::ZERO));
    for replayed in [false, true] {
        let answer = service.ready().await.unwrap().call(request(Some("k-declined"), "pay 10")).await.unwrap();
        assert_eq!(answer.headers()["grpc-status"], "9", "FAILED_PRECONDITION");
        assert_eq!(answer.headers()[REASON], "CARD_DECLINED", "replayed: {replayed}");
        assert_eq!(answer.headers().contains_key("idempotent-replayed"), replayed);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "declined once, answered twice");
}

kit::backend_tests!(
    a_replayed_refusal_keeps_its_reason,
    a_replay_returns_the_stored_answer_without_running_again,
    a_key_reused_for_another_request_is_refused,
    concurrent_duplicates_run_once_and_the_rest_hear_in_progress,
    server_failures_free_the_key_and_client_errors_are_kept,
    keys_expire_and_abandoned_claims_are_taken_over,
    an_accepted_answer_frees_the_key_and_a_created_one_replays_with_its_hints,
    an_idempotent_body_over_the_limit_is_refused_without_being_read_whole,
);
