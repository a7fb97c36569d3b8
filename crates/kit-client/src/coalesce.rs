//! A socket whose HTTP/2 responses leave in as few writes as possible.
//!
//! h2 chains a DATA frame's payload to its write buffer instead of copying
//! it once the payload reaches 256 bytes on a socket that does vectored
//! writes, and then buffers nothing more until that payload is written: one
//! `writev` per response. Answers to several streams of one connection that
//! are ready together — the usual case with multiplexed clients — each cost a
//! system call (and, on loopback, a wake-up of the peer). On a socket that
//! says it does not do vectored writes, h2 copies payloads under 1 KiB into
//! its buffer (16 KiB), so they leave together in one `write`; a larger one
//! still goes out without a copy, in a second `write`.
//!
//! Every HTTP/2 socket of the platform goes through it: the gateway's server,
//! each service's gRPC server and [`crate::h2_client`]. In the gateway bench
//! (`scripts/bench-gateway.sh`, `SYSCALLS=1`) writes per proxied request went
//! from 1.5 to 0.96.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// `inner`, reporting no vectored writes (see the module).
#[derive(Debug)]
pub struct Coalescing<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// For tonic's server: the peer's address as the socket tells it.
impl<T: Connected> Connected for Coalescing<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A socket that does vectored writes (as a TCP stream does), counting
    /// the writes made on it.
    struct CountedWrites<T> {
        inner: T,
        writes: Arc<AtomicUsize>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for CountedWrites<T> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for CountedWrites<T> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    const STREAMS: usize = 4;
    const BODY: usize = 600;

    /// Writes an HTTP/2 server makes to answer `STREAMS` requests that are
    /// all ready at once, each with a `BODY`-byte body (over the 256 bytes
    /// past which h2 chains a payload on a vectored socket).
    async fn writes_to_answer_together(coalescing: bool) -> usize {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = CountedWrites { inner: server_io, writes: writes.clone() };
        let writes_seen = writes.clone();
        let server = tokio::spawn(async move {
            if coalescing {
                answer_together(Coalescing(counted), writes).await
            } else {
                answer_together(counted, writes).await
            }
        });
        let (sender, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let mut responses = Vec::new();
        for _ in 0..STREAMS {
            let mut sender = sender.clone().ready().await.unwrap();
            let request = http::Request::get("http://test/").body(()).unwrap();
            responses.push(sender.send_request(request, true).unwrap().0);
        }
        for response in responses {
            let mut body = response.await.unwrap().into_body();
            let mut received = 0;
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                received += data.len();
                body.flow_control().release_capacity(data.len()).unwrap();
            }
            assert_eq!(received, BODY);
        }
        drop(sender);
        let before_answers = server.await.unwrap();
        writes_seen.load(Ordering::Relaxed) - before_answers
    }

    /// Accepts `STREAMS` requests, answers them all at once and drives the
    /// connection until the client leaves; returns the writes made before
    /// the answers.
    async fn answer_together<T>(io: T, writes: Arc<AtomicUsize>) -> usize
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let mut connection = h2::server::handshake(io).await.unwrap();
        let mut waiting = Vec::new();
        while waiting.len() < STREAMS {
            let (_request, respond) = connection.accept().await.unwrap().unwrap();
            waiting.push(respond);
        }
        let before = writes.load(Ordering::Relaxed);
        for mut respond in waiting {
            let mut stream = respond.send_response(http::Response::new(()), false).unwrap();
            stream.send_data(bytes::Bytes::from(vec![b'x'; BODY]), true).unwrap();
        }
        while connection.accept().await.is_some() {}
        before
    }

    #[tokio::test]
    async fn answers_ready_together_leave_in_one_write() {
        let plain = writes_to_answer_together(false).await;
        let coalesced = writes_to_answer_together(true).await;
        assert!(plain >= STREAMS, "without: one write per answer ({plain})");
        assert_eq!(coalesced, 1, "with: the {STREAMS} answers in one write (without: {plain})");
    }
}
