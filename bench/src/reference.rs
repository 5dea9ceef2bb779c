//! The physical limits a run is judged against, measured in the same run: the disk's raw fsync
//! rate (the method of `raft-storage/benches/wal.rs`: append N bytes to a fresh file, then
//! `sync_data`, in a loop) and the loopback round-trip time (a TCP ping-pong on 127.0.0.1).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index, Term};

/// A rate measured by a loop.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Iterations completed.
    pub count: u64,
    /// How long they took.
    pub elapsed: Duration,
}

impl Rate {
    /// Iterations per second.
    pub fn per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// The mean time of one iteration, in microseconds.
    pub fn mean_us(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.count.max(1) as f64
    }
}

/// Appends `bytes` bytes and calls `sync_data`, in a loop, for `time`, on a fresh file in `dir`
/// (removed afterwards). Two untimed rounds come first.
pub fn fsync_rate(dir: &Path, bytes: usize, time: Duration) -> io::Result<Rate> {
    let file = tempfile::Builder::new().prefix("raft-bench-fsync-").tempfile_in(dir)?;
    let mut handle: &File = file.as_file();
    // Not all zeros, in case the disk compresses or deduplicates.
    let chunk: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
    for _ in 0..2 {
        handle.write_all(&chunk)?;
        handle.sync_data()?;
    }
    let start = Instant::now();
    let mut count = 0;
    while start.elapsed() < time {
        handle.write_all(&chunk)?;
        handle.sync_data()?;
        count += 1;
    }
    Ok(Rate { count, elapsed: start.elapsed() })
}

/// Ping-pongs 8 bytes over a TCP connection on 127.0.0.1 (no Nagle) between two threads for
/// `time`, after 100 untimed round trips. The rate is round trips per second.
pub fn loopback_rtt(time: Duration) -> io::Result<Rate> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = [0; 8];
        // Ends when the client closes the connection.
        while stream.read_exact(&mut buffer).is_ok() {
            stream.write_all(&buffer)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut buffer = [0; 8];
    let mut round_trip = |stream: &mut TcpStream| -> io::Result<()> {
        stream.write_all(&buffer)?;
        stream.read_exact(&mut buffer)
    };
    for _ in 0..100 {
        round_trip(&mut stream)?;
    }
    let start = Instant::now();
    let mut count = 0;
    while start.elapsed() < time {
        round_trip(&mut stream)?;
        count += 1;
    }
    let rate = Rate { count, elapsed: start.elapsed() };
    drop(stream);
    echo.join().map_err(|_| io::Error::other("the echo thread panicked"))??;
    Ok(rate)
}

/// The bytes one entry with a `payload`-byte command takes in a WAL segment: the record prefix
/// (length and crc, 8 bytes) and the postcard encoding of the entry (at a typical index).
pub fn wal_record_bytes(payload: usize) -> usize {
    let entry =
        Entry { term: Term(2), index: Index(1 << 20), payload: EntryPayload::Normal(Bytes::from(vec![0; payload])) };
    8 + postcard::to_allocvec(&entry).map_or(payload + 16, |encoded| encoded.len())
}
