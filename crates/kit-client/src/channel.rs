//! Any gRPC channel behind one concrete type: the guarded, balanced one in
//! production, a plain tonic one in tests — what the typed clients of every
//! service hold.
pub use kit_resilience::BoxError;

/// A transport error behind a concrete type: with a boxed trait object as the
/// channel's error, rustc cannot prove tonic's futures `Send` for every
/// lifetime. The inner error stays the `source()`, so tonic still finds a
/// `Status` in it (a breaker's refusal, say).
#[derive(Debug)]
pub struct ChannelError(pub BoxError);

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Any gRPC channel: the guarded, balanced one in production, a plain one in tests.
pub type Channel =
    tower::util::BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, ChannelError>;

/// Boxes a gRPC service (a `Guarded<Balancer>`, a tonic `Channel`) as a `Channel`.
pub fn channel<S>(service: S) -> Channel
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    Channel::new(tower::ServiceExt::map_err(service, |e: S::Error| ChannelError(e.into())))
}
