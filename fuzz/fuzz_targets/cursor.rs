//! A cursor of `/sse` and `/poll`: `Cursor::decode` and `encode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::cursor(data));
