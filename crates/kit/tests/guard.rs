//! The resilience guard in front of a gRPC-shaped service: the default
//! deadline of a call sent without one, failures a server marks as the
//! request's own, calls that must get through an open breaker, and an open
//! breaker probing as soon as discovery reports a new instance.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use kit_client::guard::{Dependency, GuardLayer};
use kit_resilience::breaker::{BreakerPolicy, ClassicConfig};
use kit_resilience::signals::{Essential, caused_by_request, refused_by};
use kit_resilience::{DependencyConfig, State};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the fake backend answers every call.
#[derive(Clone, Copy)]
enum Answer {
    Unavailable,
    /// UNAVAILABLE, marked as the request's own failure (a card processor's).
    UnavailableForThisRequest,
    Hang,
}

fn backend(
    answer: Answer,
    calls: Arc<AtomicUsize>,
    seen_timeout: Arc<std::sync::Mutex<Option<String>>>,
) -> impl Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |request: http::Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let timeout = request.headers().get("grpc-timeout").map(|v| v.to_str().unwrap().to_string());
        *seen_timeout.lock().unwrap() = timeout;
        async move {
            match answer {
                Answer::Unavailable => Ok::<_, BoxError>(tonic::Status::unavailable("down").into_http()),
                Answer::UnavailableForThisRequest => {
                    Ok(caused_by_request(tonic::Status::unavailable("the processor failed on this card")).into_http())
                }
                Answer::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(tonic::Status::ok("").into_http())
                }
            }
        }
    })
}

fn request() -> http::Request<Body> {
    http::Request::builder().method("POST").uri("/test.Service/Do").body(Body::empty()).unwrap()
}

fn config(timeout_ms: u64) -> DependencyConfig {
    DependencyConfig {
        breaker: BreakerPolicy::Classic(ClassicConfig { open_ms: 60_000, ..Default::default() }),
        timeout_ms,
        ..Default::default()
    }
}

/// Sends one call; the gRPC code it ended with (from an error, the headers or the trailers).
async fn code_of<S>(service: &mut S, request: http::Request<Body>) -> (tonic::Code, Option<String>)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    match service.ready().await.unwrap().call(request).await {
        Err(err) => {
            let status =
                err.downcast::<tonic::Status>().map(|s| *s).unwrap_or_else(|e| tonic::Status::unknown(e.to_string()));
            (status.code(), refused_by(&status).map(str::to_string))
        }
        Ok(response) => {
            if let Some(status) = tonic::Status::from_header_map(response.headers()) {
                return (status.code(), None);
            }
            let collected = response.into_body().collect().await.unwrap();
            let status = collected.trailers().and_then(tonic::Status::from_header_map).unwrap();
            (status.code(), None)
        }
    }
}

#[tokio::test]
async fn a_call_without_a_deadline_gets_the_dependencys_default_and_the_callee_learns_it() {
    let (calls, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(None)));
    let dependency = Dependency::new("hangs", &config(150));
    let mut guarded = GuardLayer::new(dependency).layer(backend(Answer::Hang, calls, seen.clone()));
    let started = Instant::now();
    let (code, _) = code_of(&mut guarded, request()).await;
    let took = started.elapsed();
    assert_eq!(code, tonic::Code::DeadlineExceeded);
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(2), "gave up after {took:?}");
    assert_eq!(seen.lock().unwrap().as_deref(), Some("150000u"), "grpc-timeout sent to the callee");
}

#[tokio::test]
async fn failures_marked_as_the_requests_own_never_open_the_breaker() {
    let (calls, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(None)));
    let dependency = Dependency::new("processor-trouble", &config(1_000));
    let mut guarded =
        GuardLayer::new(dependency.clone()).layer(backend(Answer::UnavailableForThisRequest, calls.clone(), seen));
    for _ in 0..50 {
        assert_eq!(code_of(&mut guarded, request()).await.0, tonic::Code::Unavailable);
    }
    assert_eq!(dependency.state(), State::Closed, "a healthy server failing one request's processor");
    assert_eq!(calls.load(Ordering::SeqCst), 50, "none refused");

    // The same answers unmarked: the server itself is failing.
    let (calls, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(None)));
    let dependency = Dependency::new("down", &config(1_000));
    let mut guarded = GuardLayer::new(dependency.clone()).layer(backend(Answer::Unavailable, calls.clone(), seen));
    for _ in 0..50 {
        code_of(&mut guarded, request()).await;
    }
    assert_eq!(dependency.state(), State::Open);
    assert_eq!(calls.load(Ordering::SeqCst), 20, "open after the volume threshold (20 calls, all failed)");
}

/// A breaker opened by twenty failures, with its backend counting calls.
async fn opened(
    new_instances: Option<Arc<AtomicU64>>,
) -> (
    Arc<Dependency>,
    impl Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
    Arc<AtomicUsize>,
) {
    let (calls, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(None)));
    let dependency = Dependency::new("flaky", &config(1_000));
    if let Some(counter) = new_instances {
        dependency.follow_instances(counter);
    }
    let mut guarded = GuardLayer::new(dependency.clone()).layer(backend(Answer::Unavailable, calls.clone(), seen));
    for _ in 0..20 {
        code_of(&mut guarded, request()).await;
    }
    assert_eq!(dependency.state(), State::Open);
    (dependency, guarded, calls)
}

#[tokio::test]
async fn a_call_that_must_get_through_probes_an_open_breaker() {
    let (dependency, mut guarded, calls) = opened(None).await;
    assert_eq!(code_of(&mut guarded, request()).await, (tonic::Code::Unavailable, Some("circuit_breaker".into())));
    assert_eq!(calls.load(Ordering::SeqCst), 20, "an ordinary call is refused");
    let mut essential = request();
    essential.extensions_mut().insert(Essential);
    assert_eq!(code_of(&mut guarded, essential).await, (tonic::Code::Unavailable, None), "reached the backend");
    assert_eq!(calls.load(Ordering::SeqCst), 21);
    assert_eq!(dependency.state(), State::Open, "its failure reopened the breaker");
}

#[tokio::test]
async fn a_new_instance_makes_an_open_breaker_probe_at_once() {
    let counter = Arc::new(AtomicU64::new(0));
    let (dependency, mut guarded, calls) = opened(Some(counter.clone())).await;
    code_of(&mut guarded, request()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 20, "refused while open (60 s)");
    counter.fetch_add(1, Ordering::Relaxed);
    code_of(&mut guarded, request()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 21, "probed as soon as a new instance registered");
    assert_eq!(dependency.state(), State::Open, "the probe failed: open again");
    code_of(&mut guarded, request()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 21, "no new instance: refused again");
}
