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
