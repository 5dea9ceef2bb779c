//! Byte-level helpers of the tests of segments filled with zeros ahead of their records.

use std::path::{Path, PathBuf};

use raft_storage::testing::SimFs;
use raft_storage::{FileSystem, FsFile};

/// Where the bytes that are not zeros end.
pub fn data_end(bytes: &[u8]) -> u64 {
    bytes.iter().rposition(|&byte| byte != 0).map_or(0, |at| at as u64 + 1)
}

/// Writes `bytes` at `offset` of `path` durably (damage, or a header of another version).
pub fn overwrite(fs: &SimFs, path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = fs.open_append(path).expect("open");
    file.write_at(offset, bytes).expect("write");
    file.sync().expect("sync");
}

/// Rewrites the header of segment `path` to format version `version`, with its crc.
pub fn set_version(fs: &SimFs, path: &Path, version: u32) {
    let mut header = fs.read_durable(path).expect("durable")[..24].to_vec();
    header[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    overwrite(fs, path, 0, &header);
}

/// The paths of the durable files of `dir` whose names end in `suffix` (a store's segments),
/// oldest first.
pub fn segments(fs: &SimFs, dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let names = fs.durable_file_names(dir);
    names.into_iter().filter(|name| name.ends_with(suffix)).map(|name| dir.join(name)).collect()
}
