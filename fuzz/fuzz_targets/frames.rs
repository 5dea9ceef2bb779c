#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_net::fuzzing::frames(data));
