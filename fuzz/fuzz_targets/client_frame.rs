//! A client text frame: `parse_client_frame` and the reply that echoes its id.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::client_frame(data));
