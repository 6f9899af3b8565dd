//! The bus between nodes: a small [`Broker`] trait with an in-memory and a Redis implementation.
//!
//! A broker moves opaque payloads between topics; it knows nothing of channels, users or
//! clients. Received messages go into a bounded [`BusInbox`] that never waits: if the node falls
//! that far behind, messages are dropped and counted rather than stalling the bus reader (Redis
//! would otherwise disconnect the node for its output buffer).

mod memory;
mod redis;

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;

use ::redis::RedisError;
use bytes::Bytes;
use prometheus::IntCounter;
use publisher::shared::ConnectError;
use publisher::shared::SetupError;
use tokio::sync::{mpsc, watch};

pub use memory::{MemoryBroker, MemoryBus};
pub use redis::{BusCounters, CanarySettings, RedisBroker, RedisSettings};

/// A boxed future, so that brokers can be used as `dyn Broker`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a bus operation failed. Cheap to clone: one failed command answers many requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The Redis URL or pool settings are unusable.
    #[error("bus setup: {0}")]
    Setup(#[from] SetupError),
    /// No connection could be had for a command.
    #[error("no bus connection: {0}")]
    Connection(#[source] Arc<ConnectError>),
    /// Redis refused or failed a command.
    #[error("bus command failed: {0}")]
    Redis(#[from] RedisError),
    /// A command got no answer in time.
    #[error("bus {0} timed out")]
    Timeout(&'static str),
    /// Redis closed the subscription connection.
    #[error("Redis closed the bus subscription connection")]
    Disconnected,
    /// Sentinel names another master than the one subscribed on: the connection is replaced.
    #[error("the Redis master moved (a failover)")]
    MasterMoved,
    /// A cluster node dropped a subscription the node still needs (a slot moved).
    #[error("Redis dropped a subscription the node still needs")]
    Unsubscribed,
    /// Redis answered a command with something this node does not understand.
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
    /// The subscription connection is down; requests are refused until it is back.
    #[error("the bus is not connected")]
    NotConnected,
    /// The broker has shut down.
    #[error("bus closed")]
    Closed,
}

impl BrokerError {
    /// What a client or an API caller is told; the cause, Redis's words included, is for the
    /// log only.
    pub fn public_message(&self) -> &'static str {
        "the bus is unavailable; try again"
    }
}

impl From<ConnectError> for BrokerError {
    fn from(error: ConnectError) -> Self {
        Self::Connection(Arc::new(error))
    }
}

/// A message received from the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// The topic it was published on.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
}

/// The bus as a node sees it.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `payload` on `topic` to every node subscribed to it.
    fn publish(&self, topic: String, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Starts delivering `topic` to this node's inbox. The request is queued when this is
    /// called, in order with [`Broker::unsubscribe`], so callers that decide under a lock keep
    /// their order; the future resolves once the bus has confirmed the subscription.
    fn subscribe(&self, topic: String) -> BoxFuture<'static, Result<(), BrokerError>>;

    /// Stops delivering `topic`, in call order with [`Broker::subscribe`].
    fn unsubscribe(&self, topic: String);

    /// Whether the bus is connected, now and as it changes.
    fn status(&self) -> watch::Receiver<bool>;
}

/// Where a broker hands received messages to its node: bounded, and it never waits. Messages
/// go into one of its lanes, chosen by topic, so that each topic's messages stay in order
/// while different topics are dispatched at once.
#[derive(Clone)]
pub struct BusInbox {
    lanes: Arc<[mpsc::Sender<BusMessage>]>,
    hasher: RandomState,
    dropped: IntCounter,
}

impl BusInbox {
    /// An inbox of one lane of `capacity` messages; `dropped` counts what did not fit.
    pub fn new(capacity: usize, dropped: IntCounter) -> (Self, mpsc::Receiver<BusMessage>) {
        let (lane, receiver) = mpsc::channel(capacity);
        let inbox = Self {
            lanes: Arc::from([lane]),
            hasher: RandomState::new(),
            dropped,
        };
        (inbox, receiver)
    }

    /// An inbox of `lanes` lanes (at least one) of `capacity` messages each.
    pub fn with_lanes(
        capacity: usize,
        lanes: usize,
        dropped: IntCounter,
    ) -> (Self, Vec<mpsc::Receiver<BusMessage>>) {
        let (senders, receivers): (Vec<_>, _) =
            (0..lanes.max(1)).map(|_| mpsc::channel(capacity)).unzip();
        let inbox = Self {
            lanes: Arc::<[_]>::from(senders),
            hasher: RandomState::new(),
            dropped,
        };
        (inbox, receivers)
    }

    /// Hands a message to the node, or drops and counts it if the node is that far behind.
    pub fn deliver(&self, message: BusMessage) {
        let lane = match self.lanes.len() {
            1 => 0,
            n => self.hasher.hash_one(message.topic.as_str()) as usize % n,
        };
        if self.lanes[lane].try_send(message).is_err() {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, n: u8) -> BusMessage {
        BusMessage {
            topic: topic.to_owned(),
            payload: Bytes::from(vec![n]),
        }
    }

    #[test]
    fn each_topic_keeps_to_one_lane_in_order_and_topics_spread_over_lanes() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let (inbox, mut lanes) = BusInbox::with_lanes(64, 4, dropped.clone());
        let topics: Vec<String> = (0..32).map(|n| format!("channel:{n}")).collect();
        for n in 0..3 {
            for topic in &topics {
                inbox.deliver(message(topic, n));
            }
        }
        let mut seen = std::collections::HashMap::<String, (usize, Vec<u8>)>::new();
        for (lane, receiver) in lanes.iter_mut().enumerate() {
            while let Ok(message) = receiver.try_recv() {
                let entry = seen.entry(message.topic).or_insert((lane, Vec::new()));
                assert_eq!(entry.0, lane, "a topic's messages share one lane");
                entry.1.push(message.payload[0]);
            }
        }
        assert_eq!(seen.len(), topics.len());
        assert!(seen.values().all(|(_, order)| order == &[0, 1, 2]));
        let used: std::collections::HashSet<usize> = seen.values().map(|(lane, _)| *lane).collect();
        assert!(used.len() > 1, "32 topics over 4 lanes use more than one");
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn a_full_lane_drops_and_counts() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let (inbox, _lane) = BusInbox::new(1, dropped.clone());
        inbox.deliver(message("a", 0));
        inbox.deliver(message("a", 1));
        assert_eq!(dropped.get(), 1);
    }
}
