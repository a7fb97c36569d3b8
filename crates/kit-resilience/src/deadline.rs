//! Deadlines across hops. A caller's remaining time travels in `grpc-timeout`;
//! each hop gives its own calls min(its own timeout, what is left), and work
//! whose deadline is already spent is not started — on the client (the guard
//! refuses to send) and on the server (this layer refuses to run it).
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::Status;
use tower::{Layer, Service};

use crate::signals::{grpc_timeout, parse_grpc_timeout};

/// When the work of one incoming request must be done by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// The deadline the caller sent with `request`, if any.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let left = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        Self(left.map(|left| Instant::now() + left))
    }

    pub fn from_headers(headers: &http::HeaderMap, now: Instant) -> Self {
        Self(grpc_timeout(headers).map(|left| now + left))
    }

    pub fn none() -> Self {
        Self(None)
    }

    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.0.map(|at| at.saturating_duration_since(now))
    }

    /// The timeout for an outgoing call: min(own, what is left), or
    /// DEADLINE_EXCEEDED when nothing is left.
    pub fn budget(&self, own: Duration, now: Instant) -> Result<Duration, Status> {
        match self.remaining(now) {
            None => Ok(own),
            Some(left) if left.is_zero() => Err(Status::deadline_exceeded("the caller's deadline is spent")),
            Some(left) => Ok(left.min(own)),
        }
    }
}

/// Refuses, without running it, a request that arrives with no time left.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpentDeadlineLayer;

impl<S> Layer<S> for SpentDeadlineLayer {
    type Service = SpentDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SpentDeadline { inner }
    }
}

#[derive(Clone, Debug)]
pub struct SpentDeadline<S> {
    inner: S,
}

impl<S, B, ResBody> Service<http::Request<B>> for SpentDeadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if grpc_timeout(request.headers()).is_some_and(|left| left.is_zero()) {
            metrics::counter!("server_deadline_spent_total").increment(1);
            let response = Status::deadline_exceeded("deadline already spent; not started").into_http::<ResBody>();
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", timeout.parse().unwrap());
        headers
    }

    #[test]
    fn outgoing_calls_get_the_smaller_of_their_timeout_and_what_is_left() {
        let now = Instant::now();
        let deadline = Deadline::from_headers(&headers("300m"), now);
        assert_eq!(deadline.budget(Duration::from_secs(5), now).ok(), Some(Duration::from_millis(300)));
        assert_eq!(deadline.budget(Duration::from_millis(100), now).ok(), Some(Duration::from_millis(100)));
        let later = now + Duration::from_millis(250);
        assert_eq!(deadline.budget(Duration::from_secs(5), later).ok(), Some(Duration::from_millis(50)));
        let spent = deadline.budget(Duration::from_secs(5), now + Duration::from_secs(1)).unwrap_err();
        assert_eq!(spent.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(Deadline::none().budget(Duration::from_secs(2), now).ok(), Some(Duration::from_secs(2)));
        assert_eq!(Deadline::from_headers(&http::HeaderMap::new(), now), Deadline::none());
    }

    #[tokio::test]
    async fn a_spent_request_is_not_started() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let inner = tower::service_fn(move |_: http::Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) }
        });
        let mut service = SpentDeadlineLayer.layer(inner);
        let mut spent = http::Request::new(());
        *spent.headers_mut() = headers("0n");
        let response = service.call(spent).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let mut live = http::Request::new(());
        *live.headers_mut() = headers("1S");
        service.call(live).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
