//! A token's channel pattern and a channel: `ChannelPattern::parse` and `matches`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::channel_pattern(data));
