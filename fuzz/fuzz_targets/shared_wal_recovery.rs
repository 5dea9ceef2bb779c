#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_storage::fuzzing::shared_wal_recovery(data));
