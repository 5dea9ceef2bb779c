#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_core::fuzzing::quorum(data));
