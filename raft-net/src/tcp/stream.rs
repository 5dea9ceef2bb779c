//! The two seams between the TCP transport and a network stack: dialing and accepting. tokio's
//! sockets implement them here; a simulated network (turmoil) implements them in its harness.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Opens outbound connections.
pub trait Connect: Send + Sync + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Connects to `address`.
    fn connect(&self, address: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Accepts inbound connections.
pub trait Accept: Send + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection: the stream and the remote address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address this listener is bound to.
    fn local_address(&self) -> io::Result<SocketAddr>;
}

/// Dials with tokio's [`TcpStream`], with `TCP_NODELAY` set (the transport batches on its own).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioConnector;

impl Connect for TokioConnector {
    type Stream = TcpStream;

    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, address) = TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((stream, address))
    }

    fn local_address(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}
