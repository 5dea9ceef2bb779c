//! The integration tests in `tests/` of the real stack: raft-net's driver over TCP on 127.0.0.1
//! or the in-memory network, with the write-ahead log in temp dirs or on a fault-injecting file
//! system. Their clusters, waits, client and key-value state machine come from the workspace's
//! one harness, `raft-testkit`; this library holds nothing of its own.
#![forbid(unsafe_code)]
