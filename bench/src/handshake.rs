//! `--tls-handshakes N`: how long the TCP transport's handshake takes over loopback, plain and
//! with mutual TLS. Each sample is one connection to a node's acceptor, timed from the TCP
//! connect to the `HelloAccepted` answer (what a dialer waits for before its link is up): for TLS,
//! the TLS 1.3 handshake with both certificates checked (ECDSA P-256), the identity checks and
//! the hello. The plain and TLS samples alternate, so that load from elsewhere falls on both.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use raft_core::NodeId;
use raft_net::frame::{HELLO_FRAME_BYTES_MAX, read_frame, write_frame};
use raft_net::{Frame, Hello, TcpOptions, TcpTransport, TokioConnector};
use raft_testkit::certs::{ClusterCerts, client_config};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::cluster::BenchResult;

const CLUSTER: u64 = 1;

/// Measures `count` handshakes of each kind and prints their percentiles.
pub async fn measure(count: usize) -> BenchResult<()> {
    let count = count.max(1);
    let certs = ClusterCerts::new(CLUSTER, [1])?;
    let options = TcpOptions { reject_unknown_peers: false, ..TcpOptions::default() };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let (plain, _plain_inbound) =
        TcpTransport::start(CLUSTER, NodeId(1), listener, TokioConnector, BTreeMap::new(), options.clone())?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let tls = certs.config(1)?;
    let (secure, _secure_inbound) =
        TcpTransport::start_tls(CLUSTER, NodeId(1), listener, TokioConnector, BTreeMap::new(), options, tls)?;
    let client = TlsConnector::from(client_config(certs.ca.pem(), Some(&certs.ca.node(CLUSTER, 2))));
    let hello = Hello::new(CLUSTER, NodeId(2), NodeId(1));
    let (mut plain_times, mut tls_times) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for _ in 0..count {
        let start = Instant::now();
        let mut stream = TcpStream::connect(plain.local_address()).await?;
        stream.set_nodelay(true)?;
        say_hello(&mut stream, hello).await?;
        plain_times.push(start.elapsed());
        drop(stream);

        let start = Instant::now();
        let stream = TcpStream::connect(secure.local_address()).await?;
        stream.set_nodelay(true)?;
        let mut stream = client.connect(ServerName::try_from("localhost")?, stream).await?;
        say_hello(&mut stream, hello).await?;
        tls_times.push(start.elapsed());
    }
    println!("handshakes over loopback, {count} of each, from the TCP connect to HelloAccepted:");
    for (name, times) in [("plain", &mut plain_times), ("TLS", &mut tls_times)] {
        times.sort();
        let at = |quantile: f64| micros(times[((times.len() - 1) as f64 * quantile) as usize]);
        let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(u32::MAX);
        println!(
            "  {name:>5}: p50 {} us, p90 {} us, p99 {} us, max {} us (mean {} us)",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
            micros(mean)
        );
    }
    plain.shutdown().await;
    secure.shutdown().await;
    Ok(())
}

async fn say_hello<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, hello: Hello) -> BenchResult<()> {
    write_frame(stream, &Frame::Hello(hello), HELLO_FRAME_BYTES_MAX).await?;
    match read_frame::<Frame, _>(stream, HELLO_FRAME_BYTES_MAX, &mut Vec::new()).await? {
        Frame::HelloAccepted => Ok(()),
        other => Err(format!("the handshake was not accepted: {other:?}").into()),
    }
}

fn micros(duration: Duration) -> String {
    format!("{:.0}", duration.as_secs_f64() * 1e6)
}
