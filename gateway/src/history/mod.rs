//! Channel history: offsets, epochs and stored events, kept apart from the bus.
//!
//! On channels whose namespace keeps history, every event gets offset = previous + 1 and the
//! channel an epoch, atomically with storing the event and publishing it on the bus. A reader
//! gets the events after an offset together with the current position, in one consistent read.
//! Two implementations: in memory (one node) and Redis streams (the script in `publisher`).

mod memory;
mod redis;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use publisher::shared::ConnectError;
use publisher::wire::{ChannelName, Position};
pub use publisher::wire::{HistoryPolicy, Published};

pub use self::memory::MemoryHistory;
pub use self::redis::RedisHistory;
use crate::broker::BoxFuture;
use crate::config::Namespaces;

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// No connection to the store could be had.
    #[error("history unavailable: no Redis connection: {0}")]
    Connection(#[from] ConnectError),
    /// The store refused or failed the command.
    #[error("history unavailable: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The store did not answer in time.
    #[error("history command timed out")]
    Timeout,
    /// The store answered something this gateway cannot read.
    #[error("unexpected history reply: {0}")]
    Protocol(#[from] ::redis::ParsingError),
    /// A stored event is not one the publish script writes.
    #[error("unexpected history entry: {0}")]
    Entry(String),
}

impl HistoryError {
    /// What a client or an API caller is told; the cause, Redis's words included, is for the
    /// log only.
    pub fn public_message(&self) -> &'static str {
        "history is unavailable; try again"
    }
}

/// History policies by namespace; namespaces without history are absent.
#[derive(Debug, Clone, Default)]
pub struct Policies(HashMap<String, HistoryPolicy>);

impl Policies {
    /// The policies of the configured namespaces.
    pub fn from_namespaces(namespaces: &Namespaces) -> Self {
        Self(
            namespaces
                .iter()
                .filter(|(_, ns)| ns.history_size > 0)
                .map(|(name, ns)| {
                    let policy = HistoryPolicy {
                        size: ns.history_size,
                        ttl: ns.history_ttl.unwrap_or(Duration::from_secs(600)),
                    };
                    (name.clone(), policy)
                })
                .collect(),
        )
    }

    /// The policy of a channel's namespace, if it keeps history.
    pub fn of(&self, channel: &ChannelName) -> Option<HistoryPolicy> {
        self.0.get(channel.namespace()).copied()
    }

    /// Every namespace with history.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &HistoryPolicy)> {
        self.0.iter()
    }
}

/// Policies by namespace, as given; those that keep no history are left out.
impl FromIterator<(String, HistoryPolicy)> for Policies {
    fn from_iter<I: IntoIterator<Item = (String, HistoryPolicy)>>(policies: I) -> Self {
        Self(
            policies
                .into_iter()
                .filter(|(_, policy)| policy.keeps_history())
                .collect(),
        )
    }
}

/// Events read from a channel's history.
#[derive(Debug, Clone)]
pub struct Page {
    /// Bus messages with their offsets, oldest first.
    pub events: Vec<(u64, Bytes)>,
    /// The channel's position when the events were read.
    pub top: Position,
}

impl Page {
    /// Whether these events continue `since` without a gap: same epoch, nothing trimmed.
    pub fn continues(&self, since: &Position) -> bool {
        let same_epoch =
            since.epoch == self.top.epoch || (since.offset == 0 && since.epoch.is_empty());
        if !same_epoch || since.offset > self.top.offset {
            return false;
        }
        match self.events.first() {
            Some((first, _)) => *first == since.offset + 1,
            None => since.offset == self.top.offset,
        }
    }
}

/// A channel history store.
pub trait History: Send + Sync + 'static {
    /// Publishes `message` (a bus message without offset and epoch) on `channel`'s topic,
    /// storing it first where the namespace keeps history. With an idempotency key, a repeat
    /// within the window publishes nothing and returns the first publish's position.
    fn publish(
        &self,
        channel: &ChannelName,
        message: Bytes,
        idempotency_key: Option<&str>,
    ) -> BoxFuture<'_, Result<Published, HistoryError>>;

    /// The current position and, with `since`, the stored events after that offset.
    fn read(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Page, HistoryError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    fn page(offsets: &[u64], top: Position) -> Page {
        Page {
            events: offsets.iter().map(|o| (*o, Bytes::new())).collect(),
            top,
        }
    }

    #[test]
    fn a_page_continues_a_position_only_without_gaps() {
        assert!(page(&[5, 6], position(6, "e")).continues(&position(4, "e")));
        assert!(page(&[], position(4, "e")).continues(&position(4, "e")));
        assert!(
            !page(&[6], position(6, "e")).continues(&position(4, "e")),
            "5 trimmed"
        );
        assert!(
            !page(&[5, 6], position(6, "f")).continues(&position(4, "e")),
            "new epoch"
        );
        assert!(
            !page(&[], position(3, "e")).continues(&position(4, "e")),
            "ahead of top"
        );
        assert!(
            page(&[1], position(1, "e")).continues(&position(0, "")),
            "from the start"
        );
    }
}
