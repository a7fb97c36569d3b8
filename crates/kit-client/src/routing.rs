//! The routing context of the request being served, for the calls it makes:
//! its sticky key (the user, the API client) and a version asked for by name
//! (`x-shopfast-version`), so Orders' call to Products picks the version the
//! gateway would have picked for the same user, and a smoke test's override
//! travels with it like the trace context.
//!
//! A server layer reads them from the request's metadata into a task-local
//! for the handler; the balancer reads that when its outgoing request does
//! not say, and passes the override on. Work moved to a task of its own
//! (a saga) keeps it with [`carry`]. Every answer says which version served it
//! ([`registry_wire::traffic::SERVED_VERSION`]).
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use http::HeaderValue;
use tower::{Layer, Service};

use registry_wire::traffic::{CLIENT_ID, SERVED_VERSION, USER_ID, VERSION_OVERRIDE};

/// What a request says about routing the calls made for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallRouting {
    pub user: Option<Arc<str>>,
    pub client: Option<Arc<str>>,
    /// The raw `x-shopfast-version` value.
    pub version: Option<Arc<str>>,
}

tokio::task_local! {
    static CURRENT: CallRouting;
}

impl CallRouting {
    /// Read from request metadata; none if it says nothing about routing.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(Arc::<str>::from);
        let routing = Self { user: get(USER_ID), client: get(CLIENT_ID), version: get(VERSION_OVERRIDE) };
        (routing != Self::default()).then_some(routing)
    }
}

/// The routing context of the request this task serves, if any.
pub fn current() -> Option<CallRouting> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` with `routing` as its context.
pub fn scope<F: Future>(routing: CallRouting, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(routing, future)
}

/// `future` with the current routing context, for a task spawned to go on
/// with the request's work.
pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    match current() {
        Some(routing) => Either::Left(scope(routing, future)),
        None => Either::Right(future),
    }
}

/// The server layer: each request's routing context for its handler, and
/// this instance's version on each answer.
#[derive(Clone)]
pub struct RoutingLayer {
    version: HeaderValue,
}

impl RoutingLayer {
    pub fn new(version: &str) -> Self {
        let version = HeaderValue::from_str(version).unwrap_or(HeaderValue::from_static("unknown"));
        Self { version }
    }
}

impl<S> Layer<S> for RoutingLayer {
    type Service = Routing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Routing { inner, version: self.version.clone() }
    }
}

#[derive(Clone)]
pub struct Routing<S> {
    inner: S,
    version: HeaderValue,
}

impl<S, B, ResBody> Service<http::Request<B>> for Routing<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let routing = CallRouting::from_headers(request.headers());
        let call = self.inner.call(request);
        let version = self.version.clone();
        let served = async move {
            let mut response = call.await?;
            response.headers_mut().insert(SERVED_VERSION, version);
            Ok(response)
        };
        match routing {
            Some(routing) => Box::pin(scope(routing, served)),
            None => Box::pin(served),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_context_follows_the_request_and_tasks_that_carry_it() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(CallRouting::from_headers(&headers), None);
        headers.insert(USER_ID, HeaderValue::from_static("u1"));
        headers.insert(VERSION_OVERRIDE, HeaderValue::from_static("products=v2"));
        let routing = CallRouting::from_headers(&headers).unwrap_or_default();
        assert_eq!(routing.user.as_deref(), Some("u1"));
        assert_eq!(current(), None);
        let seen = scope(routing.clone(), async {
            let inside = current();
            let spawned = tokio::spawn(carry(async { current() })).await.ok().flatten();
            let bare = tokio::spawn(async { current() }).await.ok().flatten();
            (inside, spawned, bare)
        })
        .await;
        assert_eq!(seen, (Some(routing.clone()), Some(routing), None), "a spawned task has it only if carried");
    }
}
