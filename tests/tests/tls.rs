//! Mutual TLS on the TCP transport, over real sockets on 127.0.0.1: a cluster that elects and
//! commits over it; every refusal (no certificate, another CA, expired, not yet valid, a node
//! presenting another's certificate, another cluster, no identity, plain TCP), each a typed error
//! in the log with nothing delivered; the dialer's refusals of an acceptor; rotation of the files
//! while the transport runs; and a property test of the acceptor's handshake with TLS on.
//!
//! The acceptor tests run the transport and their raw TLS peers on one current-thread runtime
//! under a capturing subscriber, so that each test sees exactly its own log events.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use raft_core::{GroupId, Message, MessageBody, NodeId, Term};
use raft_net::frame::{
    FRAME_BYTES_MAX_DEFAULT, HELLO_FRAME_BYTES_MAX, MAGIC, PROTOCOL_VERSION, encode_frame, read_frame,
};
use raft_net::{Frame, Hello, PeerState, RejectReason, TcpOptions, TcpTransport, TokioConnector};
use raft_testkit::certs::{CertSpec, ClusterCerts, TestCa, TestCert, client_config, der, replace_file, server_config};
use raft_testkit::{CaptureLayer, Captured, ClusterBuilder, Kv, NetworkKind, PATIENCE, all_applied, propose, set};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::{sleep, timeout};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

const CLUSTER: u64 = 7;
const LOCAL: NodeId = NodeId(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tls_elect_a_leader_and_commit() {
    raft_testkit::init_tracing();
    let certs = Arc::new(ClusterCerts::new(raft_testkit::CLUSTER, 1..=3).expect("certificates"));
    let configs = Arc::clone(&certs);
    let mut cluster = ClusterBuilder::new(3)
        .network(NetworkKind::Tcp)
        .tls(move |id| configs.config(id.0).expect("the node's files load"))
        .start(|_| Kv::default())
        .await
        .expect("the cluster starts");
    raft_testkit::settled_leader(&cluster.running()).await;
    let index = propose(&cluster.handles(), &cluster.ids(), 0, set("key", "value")).await;
    all_applied(&cluster.running(), index).await;
    for member in cluster.members() {
        assert_eq!(member.view.map().get(&b"key"[..]).map(|value| value.as_ref()), Some(&b"value"[..]));
    }
    cluster.shutdown().await;
}

/// Runs `test` on a current-thread runtime with a capturing subscriber for this thread (INFO and
/// above): every task of the test runs on this thread, so the events are the test's own.
fn logged<T, F: Future<Output = T>>(test: impl FnOnce(Captured) -> F) -> T {
    let (layer, captured) = CaptureLayer::new();
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(LevelFilter::INFO));
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(test(captured))
    })
}

/// Node 1 of cluster [`CLUSTER`] with TLS from `certs`, accepting any node (no peer list), and
/// its inbound queue.
async fn acceptor(certs: &ClusterCerts) -> (TcpTransport, mpsc::Receiver<Message>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("a listener");
    let options = TcpOptions { reject_unknown_peers: false, ..raft_testkit::tcp_options() };
    let tls = certs.config(1).expect("node 1's files load");
    TcpTransport::start_tls(CLUSTER, LOCAL, listener, TokioConnector, BTreeMap::new(), options, tls)
        .expect("the transport starts")
}

fn message(from: NodeId, to: NodeId) -> Message {
    Message { from, to, term: Term(1), body: MessageBody::HeartbeatResponse { round: 0 } }
}

/// What the acceptor made of a client.
#[derive(Debug, PartialEq)]
enum Answer {
    /// `HelloAccepted`.
    Accepted,
    /// `HelloRejected`.
    Rejected(RejectReason),
    /// The connection ended (or TLS failed) without an answer.
    Closed,
}

/// Connects with TLS as `config`'s client, sends `hello` and, without waiting, a message from
/// `hello.from`; returns the answer, and the stream if it is still open.
async fn tls_client(
    address: SocketAddr,
    config: Arc<ClientConfig>,
    hello: Hello,
) -> (Answer, Option<tokio_rustls::client::TlsStream<TcpStream>>) {
    let tcp = TcpStream::connect(address).await.expect("the acceptor listens");
    let name = ServerName::try_from("localhost").expect("a valid name");
    let Ok(mut stream) = TlsConnector::from(config).connect(name, tcp).await else {
        return (Answer::Closed, None);
    };
    let answer = exchange(&mut stream, hello).await;
    (answer, Some(stream))
}

/// Sends `hello` and a message from its sender, then reads the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, hello: Hello) -> Answer {
    let mut bytes = encode_frame(&Frame::Hello(hello), HELLO_FRAME_BYTES_MAX).expect("a hello encodes");
    let frame = Frame::Message { group: GroupId::DEFAULT, message: message(hello.from, hello.to) };
    bytes.extend(encode_frame(&frame, FRAME_BYTES_MAX_DEFAULT).expect("a message encodes"));
    if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
        return Answer::Closed;
    }
    let mut payload = Vec::new();
    let read = read_frame::<Frame, _>(stream, HELLO_FRAME_BYTES_MAX, &mut payload);
    match timeout(PATIENCE, read).await.expect("the acceptor answers or closes") {
        Ok(Frame::HelloAccepted) => Answer::Accepted,
        Ok(Frame::HelloRejected { reason }) => Answer::Rejected(reason),
        _ => Answer::Closed,
    }
}

/// The acceptor's `handshake failed` events with field `tls` = `code`.
fn refusals(captured: &Captured, code: &str) -> Vec<String> {
    captured
        .with_message("handshake failed")
        .into_iter()
        .filter(|event| event.level == tracing::Level::WARN && event.field("tls") == Some(code))
        .map(|event| event.field("error").unwrap_or_default().to_owned())
        .collect()
}

/// Connects to a fresh TLS acceptor as `cert` (or without a certificate) and says hello as
/// `from`; asserts the connection is closed unanswered, one refusal `code` is logged, and nothing
/// reached the group. Returns the logged error.
fn assert_refused(cert: impl FnOnce(&ClusterCerts) -> Option<TestCert>, from: NodeId, code: &str) -> String {
    logged(|captured| async move {
        let certs = ClusterCerts::new(CLUSTER, [1]).expect("certificates");
        let (transport, mut inbound) = acceptor(&certs).await;
        let cert = cert(&certs);
        let config = client_config(certs.ca.pem(), cert.as_ref());
        let (answer, _stream) = tls_client(transport.local_address(), config, Hello::new(CLUSTER, from, LOCAL)).await;
        assert_eq!(answer, Answer::Closed, "refused without an answer");
        let errors = refusals(&captured, code);
        assert_eq!(errors.len(), 1, "one refusal {code} logged: {:?}", captured.events());
        assert_eq!(inbound.try_recv(), Err(TryRecvError::Empty), "nothing delivered");
        assert_eq!(transport.stats().connections_accepted, 0);
        transport.shutdown().await;
        errors[0].clone()
    })
}

#[test]
fn the_acceptor_takes_a_node_with_its_own_certificate() {
    logged(|_| async {
        let certs = ClusterCerts::new(CLUSTER, [1]).expect("certificates");
        let (transport, mut inbound) = acceptor(&certs).await;
        let config = client_config(certs.ca.pem(), Some(&certs.ca.node(CLUSTER, 2)));
        let hello = Hello::new(CLUSTER, NodeId(2), LOCAL);
        let (answer, _stream) = tls_client(transport.local_address(), config, hello).await;
        assert_eq!(answer, Answer::Accepted);
        let delivered = timeout(PATIENCE, inbound.recv()).await.expect("delivered in time");
        assert_eq!(delivered, Some(message(NodeId(2), LOCAL)));
        assert_eq!(transport.stats().connections_accepted, 1);
        transport.shutdown().await;
    });
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let error = assert_refused(|_| None, NodeId(2), "no_certificate");
    assert!(error.contains("no certificate"), "{error}");
}

#[test]
fn a_certificate_of_another_ca_is_refused() {
    assert_refused(|_| Some(TestCa::new("another CA").node(CLUSTER, 2)), NodeId(2), "unknown_issuer");
}

#[test]
fn an_expired_certificate_is_refused() {
    assert_refused(|certs| Some(certs.ca.sign(&CertSpec::expired(CLUSTER, 2))), NodeId(2), "expired");
}

#[test]
fn a_certificate_not_valid_yet_is_refused() {
    assert_refused(|certs| Some(certs.ca.sign(&CertSpec::not_yet_valid(CLUSTER, 2))), NodeId(2), "not_yet_valid");
}

#[test]
fn node_3_presenting_node_2s_certificate_is_refused() {
    let error = assert_refused(|certs| Some(certs.ca.node(CLUSTER, 2)), NodeId(3), "identity_mismatch");
    assert!(error.contains("node 3") && error.contains("names node 2"), "{error}");
}

#[test]
fn a_valid_certificate_of_another_cluster_is_refused() {
    let error = assert_refused(|certs| Some(certs.ca.node(CLUSTER + 1, 2)), NodeId(2), "wrong_cluster");
    assert!(error.contains("cluster 8, not 7"), "{error}");
}

#[test]
fn a_certificate_without_exactly_one_identity_is_refused() {
    let none = CertSpec { uris: Vec::new(), ..CertSpec::node(CLUSTER, 2) };
    let error = assert_refused(|certs| Some(certs.ca.sign(&none)), NodeId(2), "malformed_identity");
    assert!(error.contains("no raft:// identity"), "{error}");
    let two = CertSpec { uris: vec!["raft://7/node/2".into(), "raft://7/node/3".into()], ..none.clone() };
    let error = assert_refused(|certs| Some(certs.ca.sign(&two)), NodeId(2), "malformed_identity");
    assert!(error.contains("2 raft:// identities"), "{error}");
    let bad = CertSpec { uris: vec!["raft://7/node/02".into()], ..none };
    assert_refused(|certs| Some(certs.ca.sign(&bad)), NodeId(2), "malformed_identity");
}

#[test]
fn a_plain_tcp_client_is_refused() {
    logged(|captured| async move {
        let certs = ClusterCerts::new(CLUSTER, [1]).expect("certificates");
        let (transport, mut inbound) = acceptor(&certs).await;
        let mut stream = TcpStream::connect(transport.local_address()).await.expect("the acceptor listens");
        let answer = exchange(&mut stream, Hello::new(CLUSTER, NodeId(2), LOCAL)).await;
        assert_eq!(answer, Answer::Closed);
        assert_eq!(refusals(&captured, "protocol").len(), 1, "{:?}", captured.events());
        assert_eq!(inbound.try_recv(), Err(TryRecvError::Empty), "nothing delivered");
        assert_eq!(transport.stats().connections_accepted, 0);
        transport.shutdown().await;
    });
}

/// A TLS server presenting `cert` (and requiring a client certificate of `ca_pem`) that counts
/// the bytes its clients send after the handshake.
async fn fake_acceptor(ca_pem: &str, cert: &TestCert) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("a listener");
    let address = listener.local_addr().expect("an address");
    let acceptor = TlsAcceptor::from(server_config(ca_pem, cert));
    let received = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                if let Ok(mut stream) = acceptor.accept(tcp).await {
                    let mut buffer = [0; 256];
                    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
                        counter.fetch_add(read, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (address, received)
}

#[test]
fn the_dialer_refuses_an_acceptor_that_is_not_the_node_it_dialed() {
    logged(|captured| async move {
        let certs = ClusterCerts::new(CLUSTER, [1]).expect("certificates");
        // Peer 2 answers with node 3's certificate, peer 3 with a certificate of cluster 8, peer
        // 4 with one of another CA: all but the last signed by the cluster's CA. Peer 5 is who
        // it should be, but trusts another CA for its clients, so it refuses node 1.
        let other_ca = TestCa::new("another CA");
        let (two, two_received) = fake_acceptor(certs.ca.pem(), &certs.ca.node(CLUSTER, 3)).await;
        let (three, three_received) = fake_acceptor(certs.ca.pem(), &certs.ca.node(CLUSTER + 1, 3)).await;
        let (four, four_received) = fake_acceptor(certs.ca.pem(), &other_ca.node(CLUSTER, 4)).await;
        let (five, five_received) = fake_acceptor(other_ca.pem(), &certs.ca.node(CLUSTER, 5)).await;
        let peers = BTreeMap::from([(NodeId(2), two), (NodeId(3), three), (NodeId(4), four), (NodeId(5), five)]);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("a listener");
        let tls = certs.config(1).expect("node 1's files load");
        let (transport, _inbound) =
            TcpTransport::start_tls(CLUSTER, LOCAL, listener, TokioConnector, peers, raft_testkit::tcp_options(), tls)
                .expect("the transport starts");
        let failed = |peer: &'static str, code: &'static str| {
            let captured = captured.clone();
            move || {
                captured.with_message("the TLS handshake failed").iter().any(|event| {
                    event.level == tracing::Level::WARN
                        && event.field("tls") == Some(code)
                        && event.span_field("peer") == Some(peer)
                })
            }
        };
        let (two_failed, three_failed, four_failed, five_failed) = (
            failed("2", "identity_mismatch"),
            failed("3", "wrong_cluster"),
            failed("4", "unknown_issuer"),
            failed("5", "peer_refused"),
        );
        let all_failed = || two_failed() && three_failed() && four_failed() && five_failed();
        timeout(PATIENCE, async {
            while !all_failed() {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("every dial refused in time: {:?}", captured.events()));
        let mismatch = captured.with_message("the TLS handshake failed");
        let error =
            mismatch.iter().find_map(|event| event.field("error").filter(|error| error.contains("names node 3")));
        assert!(error.is_some_and(|error| error.contains("node 2 expected")), "{mismatch:?}");
        for peer in [2, 3, 4, 5] {
            assert_ne!(transport.peer_state(NodeId(peer)), Some(PeerState::Connected));
        }
        assert_eq!(transport.stats().connections_dialed, 0);
        for received in [two_received, three_received, four_received, five_received] {
            assert_eq!(received.load(Ordering::Relaxed), 0, "the dialer sent nothing (no hello) after a refusal");
        }
        transport.shutdown().await;
    });
}

/// The end-entity certificate the acceptor presents to a client with `config`.
async fn presented(address: SocketAddr, config: Arc<ClientConfig>) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(address).await.expect("the acceptor listens");
    let name = ServerName::try_from("localhost").expect("a valid name");
    let stream = TlsConnector::from(config).connect(name, tcp).await.expect("the TLS handshake succeeds");
    let chain = stream.get_ref().1.peer_certificates().expect("the server presented a certificate");
    chain[0].clone().into_owned()
}

#[test]
fn new_connections_use_rotated_files_without_a_restart() {
    logged(|captured| async move {
        let certs = ClusterCerts::new(CLUSTER, [1]).expect("certificates");
        let files = certs.files(1);
        let (transport, mut inbound) = acceptor(&certs).await;
        let address = transport.local_address();
        let first = std::fs::read_to_string(&files.cert).expect("node 1's certificate");
        let old_trust = client_config(certs.ca.pem(), Some(&certs.ca.node(CLUSTER, 2)));
        assert_eq!(presented(address, Arc::clone(&old_trust)).await, der(&first));

        // A node of a new CA is refused, until node 1 trusts both CAs.
        let new_ca = TestCa::new("the next CA");
        let both = format!("{}{}", certs.ca.pem(), new_ca.pem());
        let client = client_config(&both, Some(&new_ca.node(CLUSTER, 2)));
        let hello = Hello::new(CLUSTER, NodeId(2), LOCAL);
        let (answer, _) = tls_client(address, Arc::clone(&client), hello).await;
        assert_eq!(answer, Answer::Closed);
        assert_eq!(refusals(&captured, "unknown_issuer").len(), 1);
        replace_file(&files.ca, &both).expect("the CA file is replaced");
        let (answer, established) = tls_client(address, Arc::clone(&client), hello).await;
        assert_eq!(answer, Answer::Accepted, "{:?}", captured.events());
        let mut established = established.expect("the connection stays open");
        assert_eq!(timeout(PATIENCE, inbound.recv()).await.expect("in time"), Some(message(NodeId(2), LOCAL)));

        // Node 1 moves to a certificate of the new CA, with a new key.
        let renewed = new_ca.node(CLUSTER, 1);
        replace_file(&files.key, &renewed.key_pem).expect("the key is replaced");
        replace_file(&files.cert, &renewed.cert_pem).expect("the certificate is replaced");
        assert_eq!(presented(address, Arc::clone(&client)).await, der(&renewed.cert_pem));

        // A broken file keeps the configuration in force, and says so once.
        replace_file(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("the file is replaced");
        assert_eq!(presented(address, Arc::clone(&client)).await, der(&renewed.cert_pem));
        assert_eq!(presented(address, Arc::clone(&client)).await, der(&renewed.cert_pem));
        let kept = captured.with_message("TLS files changed but do not load: keeping the previous ones");
        assert_eq!(kept.len(), 1, "{kept:?}");

        // The connection made before the rotation still carries messages.
        let frame = Frame::Message { group: GroupId::DEFAULT, message: message(NodeId(2), LOCAL) };
        let bytes = encode_frame(&frame, FRAME_BYTES_MAX_DEFAULT).expect("a message encodes");
        established.write_all(&bytes).await.expect("the old connection is open");
        established.flush().await.expect("the old connection is open");
        assert_eq!(timeout(PATIENCE, inbound.recv()).await.expect("in time"), Some(message(NodeId(2), LOCAL)));
        transport.shutdown().await;
    });
}

#[test]
fn a_certificate_of_another_node_does_not_start_a_transport() {
    logged(|_| async {
        let certs = ClusterCerts::new(CLUSTER, [1]).expect("certificates");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("a listener");
        let tls = certs.config(1).expect("node 1's files load");
        let started = TcpTransport::start_tls(
            CLUSTER,
            NodeId(2),
            listener,
            TokioConnector,
            BTreeMap::new(),
            TcpOptions::default(),
            tls,
        );
        assert!(matches!(started, Err(raft_net::StartError::TlsIdentity { .. })));
    });
}

/// One connection of the property test.
#[derive(Clone, Debug)]
enum Case {
    /// A valid TLS handshake as node 2, then these bytes, then the end of the stream.
    AfterTls(Vec<u8>),
    /// A valid TLS handshake as node 2, then this hello and a message from its `from`.
    Hello(Hello),
    /// Plain TCP: these bytes (after a TLS record header, or not), then the end of the stream.
    Plain(Vec<u8>),
}

fn cases() -> impl Strategy<Value = Case> {
    let magic = prop_oneof![3 => Just(MAGIC), 1 => any::<[u8; 4]>()];
    let version = prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => any::<u32>()];
    let cluster = prop_oneof![3 => Just(CLUSTER), 1 => any::<u64>()];
    let node = |usual: u64| prop_oneof![3 => Just(usual), 1 => 0..5u64, 1 => any::<u64>()];
    let hello =
        (magic, version, cluster, node(2), node(1)).prop_map(|(magic, protocol_version, cluster_id, from, to)| Hello {
            magic,
            protocol_version,
            cluster_id,
            from: NodeId(from),
            to: NodeId(to),
        });
    let record_header = prop_oneof![Just(Vec::new()), Just(vec![0x16, 0x03, 0x01]), Just(vec![0x16, 0x03, 0x03, 0x40])];
    let plain = (record_header, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(mut header, bytes)| {
        header.extend(bytes);
        header
    });
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Case::AfterTls),
        3 => hello.prop_map(Case::Hello),
        1 => plain.prop_map(Case::Plain),
    ]
}

/// Panics anywhere in this process (the transport's tasks included), counted by a hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The acceptor's handshake with TLS on, against arbitrary clients: it never panics, delivers a
/// message only after a hello that is valid in every field and comes from the node the client's
/// certificate names (node 2), answers a bad hello of node 2 with the matching rejection, and
/// closes every other connection unanswered. Then the transport still takes a good client.
#[test]
fn the_tls_handshake_holds_against_arbitrary_clients() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let certs = ClusterCerts::new(CLUSTER, [1]).expect("certificates");
    let (transport, inbound) = runtime.block_on(acceptor(&certs));
    let inbound = RefCell::new(inbound);
    let address = transport.local_address();
    let client = client_config(certs.ca.pem(), Some(&certs.ca.node(CLUSTER, 2)));
    let mut runner = TestRunner::new(Config { cases: 96, failure_persistence: None, ..Config::default() });
    let accepted = Cell::new(0);
    runner
        .run(&cases(), |case| {
            let delivered =
                runtime.block_on(check_case(address, Arc::clone(&client), &case, &mut inbound.borrow_mut()));
            accepted.set(accepted.get() + u64::from(delivered));
            prop_assert_eq!(PANICS.load(Ordering::Relaxed), 0, "a panic");
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    let stats = transport.stats();
    assert_eq!(stats.connections_accepted, accepted.get(), "only accepted hellos made connections");
    // Still serving.
    let good = Case::Hello(Hello::new(CLUSTER, NodeId(2), LOCAL));
    assert!(runtime.block_on(check_case(address, client, &good, &mut inbound.borrow_mut())));
    runtime.block_on(transport.shutdown());
}

/// Runs one case; returns whether its message was delivered (checked to be as expected).
async fn check_case(
    address: SocketAddr,
    client: Arc<ClientConfig>,
    case: &Case,
    inbound: &mut mpsc::Receiver<Message>,
) -> bool {
    let delivered = match case {
        Case::Hello(hello) => {
            let (answer, stream) = tls_client(address, client, *hello).await;
            let valid = hello.check(CLUSTER, LOCAL);
            let expected = match valid {
                _ if hello.from != NodeId(2) => Answer::Closed,
                Ok(()) => Answer::Accepted,
                Err(reason) => Answer::Rejected(reason),
            };
            assert_eq!(answer, expected, "{hello:?}");
            if answer == Answer::Accepted {
                let delivered = timeout(PATIENCE, inbound.recv()).await.expect("delivered in time");
                assert_eq!(delivered, Some(message(NodeId(2), LOCAL)));
            }
            drop(stream);
            answer == Answer::Accepted
        }
        Case::AfterTls(bytes) => {
            let tcp = TcpStream::connect(address).await.expect("the acceptor listens");
            let name = ServerName::try_from("localhost").expect("a valid name");
            let mut stream = TlsConnector::from(client).connect(name, tcp).await.expect("a valid TLS client");
            send_and_wait_for_close(&mut stream, bytes).await;
            false
        }
        Case::Plain(bytes) => {
            let mut stream = TcpStream::connect(address).await.expect("the acceptor listens");
            send_and_wait_for_close(&mut stream, bytes).await;
            false
        }
    };
    assert_eq!(inbound.try_recv(), Err(TryRecvError::Empty), "nothing else delivered: {case:?}");
    delivered
}

/// Writes `bytes`, ends the stream, and reads until the acceptor closes its side.
async fn send_and_wait_for_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    // A write may fail once the acceptor has refused the bytes already sent.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut sink = Vec::new();
    let closed = timeout(PATIENCE, stream.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the acceptor closes the connection");
}
