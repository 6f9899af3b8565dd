//! The hub's channels, split into shards that each have their own lock: bus events for
//! channels in different shards are fanned out at once, on different cores, and a fan-out
//! never waits behind a connect or a subscribe elsewhere.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use publisher::wire::ChannelName;

use super::Channel;

/// Shards per hub: enough that the dispatch lanes of a many-core node rarely meet on one.
const SHARDS: usize = 64;

/// One shard's channels.
#[derive(Default)]
pub(super) struct Shard {
    /// The channels with local subscribers, by name.
    pub(super) channels: HashMap<ChannelName, Channel>,
}

/// Every channel of the hub, in [`SHARDS`] shards chosen by the channel's name.
pub(super) struct Shards {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Shards {
    /// Empty shards.
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Locks the shard that holds `channel`.
    pub(super) fn of(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let slot = self.hasher.hash_one(channel) as usize % self.shards.len();
        lock(&self.shards[slot])
    }

    /// Locks each shard in turn, one at a time.
    pub(super) fn each(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.shards.iter().map(lock)
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}
