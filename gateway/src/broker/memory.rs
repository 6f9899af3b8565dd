//! The in-memory bus: one process, any number of nodes. A single gateway uses it when no Redis
//! is configured; tests use it to run several nodes in one process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

use super::{BoxFuture, Broker, BrokerError, BusInbox, BusMessage};

struct Node {
    topics: Mutex<HashSet<String>>,
    inbox: BusInbox,
}

/// A bus shared by the [`MemoryBroker`]s made from it.
#[derive(Clone, Default)]
pub struct MemoryBus {
    // A std mutex is fine: it is never held across an await, and holds only set lookups.
    nodes: Arc<Mutex<Vec<Arc<Node>>>>,
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers `payload` to every node subscribed to `topic`, before returning.
    pub fn publish_now(&self, topic: &str, payload: Bytes) {
        let nodes = self
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for node in nodes {
            let subscribed = node
                .topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(topic);
            if subscribed {
                node.inbox.deliver(BusMessage {
                    topic: topic.to_owned(),
                    payload: payload.clone(),
                });
            }
        }
    }

    /// Attaches a node whose received messages go to `inbox`.
    pub fn broker(&self, inbox: BusInbox) -> MemoryBroker {
        let node = Arc::new(Node {
            topics: Mutex::new(HashSet::new()),
            inbox,
        });
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&node));
        let (status, _) = watch::channel(true);
        MemoryBroker {
            bus: self.clone(),
            node,
            status,
        }
    }
}

/// One node's handle on a [`MemoryBus`].
pub struct MemoryBroker {
    bus: MemoryBus,
    node: Arc<Node>,
    status: watch::Sender<bool>,
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        let mut nodes = self
            .bus
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        nodes.retain(|n| !Arc::ptr_eq(n, &self.node));
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, topic: String, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.bus.publish_now(&topic, payload);
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self, topic: String) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.node
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic);
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, topic: String) {
        self.node
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&topic);
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.status.subscribe()
    }
}
