//! One HTTP/2 connection to one instance, made when a call first needs it
//! and again after it closes.
//!
//! On the `h2` crate directly. hyper's client (and tonic's `Channel` on top
//! of it) puts a dispatch queue and a task spawned per call between the
//! caller and the connection, plus a oneshot channel back: a call here opens
//! its stream and awaits the response itself, so the connection's task is
//! the only other party (its I/O). Calls are whole messages (the balancer
//! buffers them to be able to resend), so a request is its headers and one
//! DATA frame.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http_body::Frame;
use tokio::net::TcpStream;
use tonic::body::Body;

use crate::coalesce::Coalescing;
use kit_resilience::signals::BoxError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A ping this often, and the connection given up when its pong is this late
/// (hyper's client defaults, which the previous client used).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Flow-control windows as hyper's client sets them: far above a unary
/// message, so a response never waits for a WINDOW_UPDATE.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Connecting failed, or the connection was closed or going away before the
/// request went out: either way the call certainly never reached the
/// instance.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {address}: {source}")]
pub struct ConnectError {
    address: String,
    #[source]
    source: BoxError,
}

/// An open connection: its handle (cloned per call: HTTP/2 multiplexes) and
/// whether its task has ended.
#[derive(Clone)]
struct Open {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// The connection's stream: plain, or TLS to a server proving an identity.
enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

kit_tls::delegate_io!(ClientIo, Plain, Tls);

pub struct Connection {
    address: String,
    authority: http::uri::Authority,
    /// Our identity and the one the server must prove, when in TLS.
    tls: Option<(Arc<kit_tls::Tls>, String)>,
    current: std::sync::Mutex<Option<Open>>,
    /// One connection attempt at a time; the other calls wait for its result.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    /// No connection is made until the first call.
    pub fn new(address: &str) -> Result<Self, http::uri::InvalidUri> {
        Self::with_tls(address, None)
    }

    /// Over mutual TLS when `tls` is given: our certificate, and the
    /// identity the server must prove (whatever address it is at).
    pub fn with_tls(address: &str, tls: Option<(Arc<kit_tls::Tls>, String)>) -> Result<Self, http::uri::InvalidUri> {
        Ok(Self {
            address: address.to_string(),
            authority: address.parse()?,
            tls,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Sends one request with its whole body (its URI may be a bare path:
    /// the instance's scheme and authority are filled in).
    pub async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<Body>, BoxError> {
        let open = self.sender().await?;
        let (mut parts, body) = request.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(if self.tls.is_some() { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
        uri.authority = Some(self.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = http::Uri::from_parts(uri)?;
        let never_sent = |err: h2::Error| ConnectError { address: self.address.clone(), source: err.into() };
        // Refused here (closed, or the server said GOAWAY), no stream was opened.
        let mut sender = open.sender.ready().await.map_err(never_sent)?;
        let end_of_stream = body.is_empty();
        let (response, mut stream) =
            sender.send_request(http::Request::from_parts(parts, ()), end_of_stream).map_err(never_sent)?;
        if !end_of_stream {
            // Buffered by h2: written with the headers when the peer's
            // window allows, else as it opens (h2 asks for the capacity).
            stream.send_data(body, true)?;
        }
        let response = response.await?;
        Ok(response.map(|received| Body::new(ResponseBody { received, trailers_next: false })))
    }

    async fn sender(&self) -> Result<Open, ConnectError> {
        if let Some(open) = self.open() {
            return Ok(open);
        }
        let _turn = self.connecting.lock().await;
        // Another call may have connected while this one waited.
        if let Some(open) = self.open() {
            return Ok(open);
        }
        let open = self.connect().await.map_err(|source| ConnectError { address: self.address.clone(), source })?;
        if let Ok(mut current) = self.current.lock() {
            *current = Some(open.clone());
        }
        Ok(open)
    }

    fn open(&self) -> Option<Open> {
        let current = self.current.lock().ok()?;
        current.as_ref().filter(|open| !open.closed.load(Ordering::Acquire)).cloned()
    }

    async fn connect(&self) -> Result<Open, BoxError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let stream = match &self.tls {
            None => ClientIo::Plain(stream),
            Some((tls, identity)) => {
                let secured = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(identity, stream))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                ClientIo::Tls(Box::new(secured))
            }
        };
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // Nothing here reads pushed streams; refused at the start, as hyper does.
            .enable_push(false)
            .handshake::<_, Bytes>(Coalescing(stream))
            .await?;
        let pings = connection.ping_pong();
        let closed = Arc::new(AtomicBool::new(false));
        let address = self.address.clone();
        let ended = closed.clone();
        tokio::spawn(async move {
            let result = match pings {
                Some(pings) => tokio::select! {
                    result = connection => result.map_err(BoxError::from),
                    lost = keep_alive(pings) => Err(lost),
                },
                None => connection.await.map_err(BoxError::from),
            };
            ended.store(true, Ordering::Release);
            if let Err(err) = result {
                tracing::debug!(%address, error = %err, "connection closed");
            }
        });
        Ok(Open { sender, closed })
    }
}

/// Pings the peer every [`KEEP_ALIVE_INTERVAL`]; returns why the connection
/// must be given up (a pong later than [`KEEP_ALIVE_TIMEOUT`]: the peer or
/// the path to it is gone without closing the socket).
async fn keep_alive(mut pings: h2::PingPong) -> BoxError {
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        if let Err(err) = pings.send_ping(h2::Ping::opaque()) {
            return err.into();
        }
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, std::future::poll_fn(|cx| pings.poll_pong(cx))).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return err.into(),
            Err(_) => return "keep-alive ping not answered in time".into(),
        }
    }
}

/// A response's DATA frames, then its trailers; each frame's bytes are
/// handed back to the flow-control window as they are taken.
struct ResponseBody {
    received: h2::RecvStream,
    trailers_next: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.trailers_next {
            match ready!(self.received.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only once the stream is gone, when nothing is owed.
                    let _ = self.received.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.trailers_next = true,
            }
        }
        match ready!(self.received.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers)))),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.received.is_end_stream()
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

    fn health_check() -> http::Request<Bytes> {
        // HealthCheckRequest { service: "" }: an empty message.
        let mut request = http::Request::new(Bytes::from_static(&[0, 0, 0, 0, 0]));
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
