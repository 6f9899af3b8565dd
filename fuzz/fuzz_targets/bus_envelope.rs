//! A bus message: `Envelope::decode` and the hub's `Delivery::decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::bus_envelope(data));
