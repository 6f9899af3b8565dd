//! Emit events to the gateway's bus.
//!
//! [`wire`] defines the bus message that every publisher writes and every gateway reads; it
//! is the one place where that format lives.

pub mod wire;

pub use wire::{ChannelName, ClientType, Envelope, EventName, Target, Topics, UserId, WireError};
