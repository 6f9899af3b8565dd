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
use publisher::wire::{ChannelName, Position};

pub use self::memory::MemoryHistory;
pub use self::redis::RedisHistory;
use crate::broker::BoxFuture;
use crate::config::Namespaces;

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The store is unreachable or refused the command.
    #[error("history unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this gateway cannot read.
    #[error("unexpected history reply: {0}")]
    Protocol(String),
}

/// How much history a namespace keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Events kept per channel.
    pub size: usize,
    /// How long events are kept.
    pub ttl: Duration,
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

/// The outcome of a publish through history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's position, where history is kept.
    pub position: Option<Position>,
    /// The idempotency key was seen: nothing was published, `position` is the first publish's.
    pub duplicate: bool,
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

/// Puts `offset` and `epoch` into a bus message, as the publish script does.
fn with_position(message: &[u8], offset: u64, epoch: &str) -> Bytes {
    let body = message.strip_suffix(b"}").unwrap_or(message);
    let mut out = Vec::with_capacity(message.len() + epoch.len() + 32);
    out.extend_from_slice(body);
    out.extend_from_slice(format!(",\"offset\":{offset},\"epoch\":\"{epoch}\"}}").as_bytes());
    Bytes::from(out)
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

    #[test]
    fn positions_are_spliced_into_the_message() {
        let message = with_position(br#"{"channel":"a","event":"e"}"#, 7, "x1");
        assert_eq!(
            &message[..],
            br#"{"channel":"a","event":"e","offset":7,"epoch":"x1"}"#
        );
    }
}
