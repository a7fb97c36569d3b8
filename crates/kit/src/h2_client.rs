//! One HTTP/2 connection to one instance, made when a call first needs it
//! and again after it closes.
//!
//! This is what tonic's `Channel` gave the balancer, minus its request
//! buffer: a `Channel` hands every call to a worker task in front of hyper's
//! connection task — one more task hop, queue and wake-up per call — for the
//! sake of `poll_ready` back-pressure, which the balancer does not use (it
//! picks by in-flight counts and ejects instances that refuse connections).
use std::time::Duration;

use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::body::Body;

use crate::balance::BoxError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Connecting failed, or the connection closed before the request went out:
/// either way the call certainly never reached the instance.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {address}: {source}")]
pub struct ConnectError {
    address: String,
    #[source]
    source: BoxError,
}

pub struct Connection {
    address: String,
    authority: http::uri::Authority,
    /// The open connection's handle; cloned per call (HTTP/2 multiplexes).
    current: std::sync::Mutex<Option<SendRequest<Body>>>,
    /// One connection attempt at a time; the other calls wait for its result.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    /// No connection is made until the first call.
    pub fn new(address: &str) -> Result<Self, http::uri::InvalidUri> {
        Ok(Self {
            address: address.to_string(),
            authority: address.parse()?,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Sends one request (its URI may be a bare path: the instance's
    /// scheme and authority are filled in).
    pub async fn send(&self, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let mut sender = self.sender().await?;
        let (mut parts, body) = request.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = http::Uri::from_parts(uri)?;
        sender.ready().await.map_err(|err| ConnectError { address: self.address.clone(), source: err.into() })?;
        let response = sender.send_request(http::Request::from_parts(parts, body)).await?;
        Ok(response.map(Body::new))
    }

    async fn sender(&self) -> Result<SendRequest<Body>, ConnectError> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let _turn = self.connecting.lock().await;
        // Another call may have connected while this one waited.
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let sender = self.connect().await.map_err(|source| ConnectError { address: self.address.clone(), source })?;
        if let Ok(mut current) = self.current.lock() {
            *current = Some(sender.clone());
        }
        Ok(sender)
    }

    fn open(&self) -> Option<SendRequest<Body>> {
        let current = self.current.lock().ok()?;
        current.as_ref().filter(|sender| !sender.is_closed()).cloned()
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, connection) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%address, error = %err, "connection closed");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A real gRPC server (tonic's health service) on its own runtime in its
    /// own thread; stopping drops that runtime, and every connection with it,
    /// as when a process dies.
    struct Server {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn start(listener: std::net::TcpListener) -> Self {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    listener.set_nonblocking(true).unwrap();
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let (_reporter, health) = tonic_health::server::health_reporter();
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let serve = tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming);
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped => {}
                    }
                });
            });
            Self { stop: Some(stop), thread: Some(thread) }
        }

        fn kill(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                thread.join().unwrap();
            }
        }
    }

    fn health_check() -> http::Request<Body> {
        // HealthCheckRequest { service: "" }: an empty message.
        let frame = bytes::Bytes::from_static(&[0, 0, 0, 0, 0]);
        let mut request = http::Request::new(Body::new(http_body_util::Full::new(frame)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static("/grpc.health.v1.Health/Check");
        request.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
        request.headers_mut().insert("te", http::HeaderValue::from_static("trailers"));
        request
    }

    async fn grpc_status(connection: &Connection) -> Result<Option<String>, BoxError> {
        use http_body_util::BodyExt;
        let response = connection.send(health_check()).await?;
        let collected = response.into_body().collect().await?;
        Ok(collected.trailers().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok()).map(str::to_string))
    }

    #[tokio::test]
    async fn connects_on_first_use_reports_refusals_as_never_sent_and_reconnects_after_a_restart() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let connection = Connection::new(&addr.to_string()).unwrap();
        assert!(connection.open().is_none(), "no connection before the first call");
        let server = Server::start(listener);
        assert_eq!(grpc_status(&connection).await.unwrap().as_deref(), Some("0"));
        assert_eq!(grpc_status(&connection).await.unwrap().as_deref(), Some("0"), "the connection is reused");

        // The instance goes away: its connection closes, and a new one is refused.
        server.kill();
        let mut refused = None;
        for _ in 0..50 {
            match grpc_status(&connection).await {
                Err(err) if err.is::<ConnectError>() => {
                    refused = Some(err);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let refused = refused.expect("calls to a stopped instance fail as never sent");
        assert!(refused.to_string().contains(&addr.to_string()), "{refused}");

        // Back on the same address: the next call connects again.
        let server = Server::start(std::net::TcpListener::bind(addr).unwrap());
        assert_eq!(grpc_status(&connection).await.unwrap().as_deref(), Some("0"));
        server.kill();
    }

    #[test]
    fn a_bad_address_is_refused_up_front() {
        assert!(Connection::new("not an address/").is_err());
    }
}
