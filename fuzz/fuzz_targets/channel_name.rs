//! A channel name: `ChannelName::parse`, from text and from JSON.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::channel_name(data));
