//! The physical limits a run is judged against, measured in the same run: the disk's raw fsync
//! rate (the method of `raft-storage/benches/wal.rs`: append N bytes to a fresh file, then
//! `sync_data`, in a loop) and the loopback round-trip time (a TCP ping-pong on 127.0.0.1).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What runs alongside an fsync loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alongside {
    /// Nothing: the textbook loop, one thread, the CPUs otherwise idle.
    Nothing,
    /// A spinning thread per CPU. On a virtual machine an fsync can take much longer on an idle
    /// guest than on a busy one (its completion must wake a halted virtual CPU), and a benchmark
    /// keeps the CPUs busy.
    Spinners,
    /// This many loops in all, each on its own file, as the nodes of a group on one disk; the
    /// rate is the mean of one loop.
    Loops(usize),
}

/// Appends `bytes` bytes and calls `sync_data`, in a loop, for `time`, on a fresh file in `dir`
/// (removed afterwards), with `alongside` running too. Two untimed rounds come first.
pub fn fsync_rate(dir: &Path, bytes: usize, time: Duration, alongside: Alongside) -> io::Result<Rate> {
    let stop = AtomicBool::new(false);
    let spinners = match alongside {
        Alongside::Spinners => std::thread::available_parallelism().map_or(1, |n| n.get()),
        _ => 0,
    };
    let loops = match alongside {
        Alongside::Loops(loops) => loops.max(1),
        _ => 1,
    };
    let rates = std::thread::scope(|scope| {
        for _ in 0..spinners {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        let others: Vec<_> = (1..loops).map(|_| scope.spawn(|| fsync_loop(dir, bytes, time))).collect();
        let mut rates = vec![fsync_loop(dir, bytes, time)];
        for other in others {
            rates.push(other.join().unwrap_or_else(|_| Err(io::Error::other("an fsync loop panicked"))));
        }
        stop.store(true, Ordering::Relaxed);
        rates
    });
    let rates = rates.into_iter().collect::<io::Result<Vec<Rate>>>()?;
    let count = rates.iter().map(|rate| rate.count).sum::<u64>() / rates.len() as u64;
    let elapsed = rates.iter().map(|rate| rate.elapsed).max().unwrap_or(time);
    Ok(Rate { count, elapsed })
}

/// One append + `sync_data` loop on a fresh file in `dir`.
fn fsync_loop(dir: &Path, bytes: usize, time: Duration) -> io::Result<Rate> {
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

/// How the file of an fsync loop holds its appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// Each write extends the file (as the write-ahead logs' segments do today): every
    /// `sync_data` must also make the new length, and the blocks allocated for it, durable.
    Append,
    /// The file was written whole with zeros and synced first; each write overwrites the next
    /// bytes in place, so a `sync_data` has only the data to write.
    Preallocated,
    /// As `Preallocated`, but the file is then opened for direct, synchronous writes
    /// (`O_DIRECT | O_DSYNC`, Linux): each write rewrites the 4 KiB blocks that hold the new
    /// bytes, from a buffer of the log's tail, and is durable when it returns (no page cache,
    /// no separate `sync_data`). What a log written this way would pay per sync.
    Direct,
}

/// The block size direct writes are aligned to (a multiple of every disk's logical block).
const DIRECT_BLOCK: usize = 4096;

/// What one fsync of a loop cost: the loop's rate and the CPU time (of the whole process, in
/// which nothing else runs meanwhile) per fsync.
#[derive(Clone, Copy, Debug)]
pub struct FsyncCost {
    /// The loop's fsyncs and how long they took.
    pub rate: Rate,
    /// The process's CPU time during the loop.
    pub cpu: Duration,
}

impl FsyncCost {
    /// CPU time per fsync, in microseconds (the process's CPU clock counts in 10 ms ticks: a
    /// loop of a few seconds is needed).
    pub fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.rate.count.max(1) as f64
    }
}

/// The bytes a preallocated fsync loop's file holds: the loop ends early once they are used.
const PREALLOCATED_BYTES: usize = 256 << 20;

/// Writes `bytes` bytes and calls `sync_data`, in a loop, for `time` (or until a preallocated
/// file is full), on a fresh file in `dir` (removed afterwards) that grows as `growth` says;
/// returns the rate and the CPU time the loop took. Two untimed rounds come first.
pub fn fsync_cost(dir: &Path, bytes: usize, time: Duration, growth: Growth) -> io::Result<FsyncCost> {
    let file = tempfile::Builder::new().prefix("raft-bench-fsync-cost-").tempfile_in(dir)?;
    let mut handle: &File = file.as_file();
    if growth != Growth::Append {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..PREALLOCATED_BYTES / zeros.len() {
            handle.write_all(&zeros)?;
        }
        handle.sync_all()?;
        handle.seek(SeekFrom::Start(0))?;
    }
    let chunk: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
    if growth == Growth::Direct {
        return direct_write_cost(file.path(), &chunk, time);
    }
    let mut written = 0;
    for _ in 0..2 {
        handle.write_all(&chunk)?;
        handle.sync_data()?;
        written += bytes;
    }
    let (start, cpu_start) = (Instant::now(), crate::load::process_cpu());
    let mut count = 0;
    while start.elapsed() < time && (growth == Growth::Append || written + bytes <= PREALLOCATED_BYTES) {
        handle.write_all(&chunk)?;
        handle.sync_data()?;
        written += bytes;
        count += 1;
    }
    let rate = Rate { count, elapsed: start.elapsed() };
    Ok(FsyncCost { rate, cpu: crate::load::process_cpu().saturating_sub(cpu_start) })
}

/// The loop of [`Growth::Direct`] on the preallocated file at `path`: `chunk` after `chunk`
/// appended to the log's tail, each time the blocks holding the new bytes written at once and
/// durably. Two untimed writes come first.
#[cfg(target_os = "linux")]
fn direct_write_cost(path: &Path, chunk: &[u8], time: Duration) -> io::Result<FsyncCost> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_DSYNC).open(path)?;
    // The tail's blocks, in a buffer aligned for direct I/O (room for a whole write and the
    // block it starts in).
    let span = (chunk.len() / DIRECT_BLOCK + 2) * DIRECT_BLOCK;
    let mut backing = vec![0u8; span + DIRECT_BLOCK];
    let skip = backing.as_ptr().align_offset(DIRECT_BLOCK);
    let buffer = &mut backing[skip..skip + span];
    let mut end = 0usize; // The log's length.
    let mut write = |end: &mut usize| -> io::Result<()> {
        let block_start = *end / DIRECT_BLOCK * DIRECT_BLOCK;
        let tail = *end - block_start; // Bytes of the first block already in the buffer.
        buffer[tail..tail + chunk.len()].copy_from_slice(chunk);
        let new_end = *end + chunk.len();
        let blocks = (new_end - block_start).div_ceil(DIRECT_BLOCK) * DIRECT_BLOCK;
        file.write_all_at(&buffer[..blocks], block_start as u64)?;
        // The block the log now ends in moves to the buffer's front for the next write.
        let last_block = (new_end - block_start) / DIRECT_BLOCK * DIRECT_BLOCK;
        buffer.copy_within(last_block..last_block + DIRECT_BLOCK, 0);
        *end = new_end;
        Ok(())
    };
    for _ in 0..2 {
        write(&mut end)?;
    }
    let (start, cpu_start) = (Instant::now(), crate::load::process_cpu());
    let mut count = 0;
    while start.elapsed() < time && end + chunk.len() + DIRECT_BLOCK <= PREALLOCATED_BYTES {
        write(&mut end)?;
        count += 1;
    }
    let rate = Rate { count, elapsed: start.elapsed() };
    Ok(FsyncCost { rate, cpu: crate::load::process_cpu().saturating_sub(cpu_start) })
}

#[cfg(not(target_os = "linux"))]
fn direct_write_cost(_path: &Path, _chunk: &[u8], _time: Duration) -> io::Result<FsyncCost> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "direct writes are measured on Linux only"))
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
