//! Helpers shared by the transport tests: message builders and waiting without assuming speed.
//! Every wait polls a condition for up to [`PATIENCE`]; no test asserts on how long anything took.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index, Message, MessageBody, NodeId, Term};
use raft_net::frame::{HELLO_FRAME_BYTES_MAX, read_frame, write_frame};
use raft_net::{Frame, Hello, SendError, TcpOptions, Transport};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

/// How long a test waits for something that should happen (generous: slow machines, busy CI).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The pause between polls.
pub const POLL: Duration = Duration::from_millis(10);

/// A heartbeat from `from` to `to`, told apart from others by its term.
pub fn message(from: u64, to: u64, term: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::Heartbeat { commit: Index(0), round: 0 },
    }
}

/// An append carrying one entry of `payload_bytes` bytes.
pub fn large_message(from: u64, to: u64, term: u64, payload_bytes: usize) -> Message {
    let entry = Entry {
        term: Term(term),
        index: Index(1),
        payload: EntryPayload::Normal(Bytes::from(vec![0xab; payload_bytes])),
    };
    let body = MessageBody::AppendEntries {
        prev_log_index: Index(0),
        prev_log_term: Term(0),
        entries: vec![entry],
        commit: Index(0),
    };
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        sleep(POLL).await;
    }
}

/// Receives until a message with `term` arrives (skipping others, such as duplicates of earlier
/// retries); panics after [`PATIENCE`].
pub async fn receive_term(inbox: &mut mpsc::Receiver<Message>, term: u64) -> Message {
    let wait = async {
        loop {
            match inbox.recv().await {
                Some(message) if message.term == Term(term) => return message,
                Some(_) => continue,
                None => panic!("the inbound channel closed while waiting for term {term}"),
            }
        }
    };
    timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("no message with term {term} arrived"))
}

/// Sends `message` again and again (connections come up in the background, and messages sent
/// while one is down are dropped) until it arrives in `inbox`; panics after [`PATIENCE`].
/// Returns the other messages received meanwhile.
pub async fn send_until_received(
    transport: &impl Transport,
    inbox: &mut mpsc::Receiver<Message>,
    message: Message,
) -> Vec<Message> {
    let deadline = Instant::now() + PATIENCE;
    let mut skipped = Vec::new();
    loop {
        let _ = transport.send(message.clone());
        let wait = receive_exact(inbox, &message, &mut skipped);
        if let Ok(Some(())) = timeout(Duration::from_millis(50), wait).await {
            return skipped;
        }
        assert!(Instant::now() < deadline, "message {message:?} never arrived");
    }
}

async fn receive_exact(
    inbox: &mut mpsc::Receiver<Message>,
    message: &Message,
    skipped: &mut Vec<Message>,
) -> Option<()> {
    loop {
        let received = inbox.recv().await?;
        if received == *message {
            return Some(());
        }
        skipped.push(received);
    }
}

/// Sends until `send` fails with `Unreachable(to)`; panics after [`PATIENCE`].
pub async fn send_until_unreachable(transport: &impl Transport, message: Message) {
    let to = message.to;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if transport.send(message.clone()) == Err(SendError::Unreachable(to)) {
            return;
        }
        assert!(Instant::now() < deadline, "node {to} never became unreachable");
        sleep(POLL).await;
    }
}

/// TCP options with fast reconnects, so that tests spend little time in backoff (no test depends
/// on it).
pub fn tcp_options() -> TcpOptions {
    TcpOptions {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..TcpOptions::default()
    }
}

/// A listener on a free port of 127.0.0.1.
pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

/// An address where nothing listens (bound once, then released).
pub fn unused_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

/// Connects a raw client, sends `hello`, and returns the stream and the reply.
pub async fn raw_handshake(address: SocketAddr, hello: Hello) -> (TcpStream, Frame) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    write_frame(&mut stream, &Frame::Hello(hello), HELLO_FRAME_BYTES_MAX).await.expect("write hello");
    let reply = timeout(PATIENCE, read_frame(&mut stream, HELLO_FRAME_BYTES_MAX, &mut Vec::new()))
        .await
        .expect("a reply in time")
        .expect("a reply frame");
    (stream, reply)
}

/// Waits until the transport closes `stream` (end of stream or reset).
pub async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let wait = async {
        let mut buffer = [0; 64];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("the transport did not close the connection: {what}"));
}
