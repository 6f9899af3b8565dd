//! A binary client frame: MessagePack converted to JSON, then parsed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::msgpack_frame(data));
