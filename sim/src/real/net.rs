//! raft-net's TCP transport seams ([`Connect`], [`Accept`]) over turmoil's simulated TCP: the
//! transport's own framing, handshake, batching and reconnect code runs unchanged.

use std::io;
use std::net::SocketAddr;

use raft_net::{Accept, Connect};
use turmoil::net::{TcpListener, TcpStream};

/// Dials with turmoil's simulated TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilConnector;

impl Connect for TurmoilConnector {
    type Stream = TcpStream;

    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(address).await
    }
}

/// Accepts turmoil's simulated TCP connections.
pub struct TurmoilListener(pub TcpListener);

impl Accept for TurmoilListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        self.0.accept().await
    }

    fn local_address(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl std::fmt::Debug for TurmoilListener {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_tuple("TurmoilListener").field(&self.0.local_addr().ok()).finish()
    }
}
