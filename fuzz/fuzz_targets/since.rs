//! A `since` position in frames, and the query that carries a transport's cursor.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::since(data));
