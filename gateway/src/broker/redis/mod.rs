//! The Redis bus: publishes through the shared command connection, subscriptions on their own
//! connections, for each layout of Redis.
//!
//! - One server, or the master Sentinel names: topics are spread over several subscription
//!   connections ([`shard`]) by a stable hash, so one topic always lives on one connection and
//!   its subscribe and unsubscribe requests keep their order. In sentinel mode each connection
//!   asks the sentinels for the master whenever it connects, and at every canary checks that
//!   the master has not moved.
//! - A Redis Cluster ([`cluster`]): channels over sharded pub/sub (`SSUBSCRIBE`), through the
//!   redis crate's cluster connection, which holds one connection per master and follows
//!   `MOVED`, resharding and failovers; the other topics over classic pub/sub on one of them.
//!
//! An open connection is not proof of delivery: a half-open socket, a proxy that stalls one
//! direction, or a failover that left the connection on a server that no longer gets the
//! publishes all look healthy to TCP. So every subscription connection sends itself a canary
//! through Redis (on a cluster, one through each master) every canary interval, and treats one
//! that is not back within the canary timeout as a lost connection. The bus goes down while
//! the connection is replaced, and the hub catches channels up from history once it is back.
//! The bus counts as up only while every subscription connection is; it never falls back to
//! memory.

mod canary;
mod cluster;
mod shard;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use publisher::wire::Topics;
use publisher::{RedisMode, RedisTopology, SharedConnection};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;

use self::cluster::ClusterSubscriber;
use self::shard::{Endpoint, Shard};
use super::{BoxFuture, Broker, BrokerError, BusInbox};

/// How long a connect or a subscribe may take before the connection counts as lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests applied in one round trip at most.
const MAX_BATCH: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Settings of a [`RedisBroker`].
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Where the Redis is, and its layout.
    pub topology: RedisTopology,
    /// Subscription connections to one server (standalone and sentinel modes; a cluster has
    /// one per master).
    pub subscription_connections: usize,
    /// Pooled connections for publishing (standalone mode).
    pub publish_pool_size: usize,
    /// The canaries each subscription connection sends itself.
    pub canary: CanarySettings,
}

/// How a subscription connection proves that it still delivers.
#[derive(Debug, Clone)]
pub struct CanarySettings {
    /// The topics of the deployment, for the canary topics ([`Topics::canary`]).
    pub topics: Topics,
    /// This node's id, in its canary topics.
    pub node_id: String,
    /// Time between canaries.
    pub interval: Duration,
    /// Time a canary has to come back.
    pub timeout: Duration,
}

/// What the bus counts.
#[derive(Debug, Clone)]
pub struct BusCounters {
    /// Subscription connections restored after a loss.
    pub reconnects: IntCounter,
    /// Canaries that did not come back in time.
    pub canary_failures: IntCounter,
}

/// A request to a subscription connection.
enum Request {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

/// Shared between the subscription connections: how many are connected, and the status it
/// makes.
struct Health {
    connections: usize,
    connected: AtomicUsize,
    status: watch::Sender<bool>,
    counters: BusCounters,
}

impl Health {
    fn new(connections: usize, counters: BusCounters) -> (Arc<Self>, watch::Receiver<bool>) {
        let (status, receiver) = watch::channel(false);
        let health = Arc::new(Self {
            connections,
            connected: AtomicUsize::new(0),
            status,
            counters,
        });
        (health, receiver)
    }

    fn set_connected(&self, connected: bool) {
        // Counted and published under the watch's lock: two connections coming up at once on
        // two threads could otherwise publish their counts in the wrong order and leave the
        // bus down with every connection up.
        self.status.send_modify(|up| {
            let now = if connected {
                self.connected.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                self.connected.fetch_sub(1, Ordering::AcqRel) - 1
            };
            *up = now == self.connections;
        });
    }
}

/// A node's handle on the Redis bus.
pub struct RedisBroker {
    redis: SharedConnection,
    topics: Topics,
    subscribers: Vec<mpsc::UnboundedSender<Request>>,
    status: watch::Receiver<bool>,
}

impl RedisBroker {
    /// Starts the subscription connections and the command connection. Returns at once; the
    /// bus status turns up when every subscription connection is established.
    pub fn start(
        settings: &RedisSettings,
        inbox: BusInbox,
        counters: BusCounters,
    ) -> Result<Self, BrokerError> {
        let topology = &settings.topology;
        let redis =
            SharedConnection::connect(topology, settings.publish_pool_size, COMMAND_TIMEOUT)?;
        let canary = &settings.canary;
        let (subscribers, status) = match topology.mode() {
            RedisMode::Cluster => {
                let (health, status) = Health::new(1, counters);
                let (tx, rx) = mpsc::unbounded_channel();
                let subscriber =
                    ClusterSubscriber::new(topology, canary, redis.clone(), rx, inbox, health)?;
                tokio::spawn(subscriber.run());
                (vec![tx], status)
            }
            RedisMode::Standalone | RedisMode::Sentinel => {
                let count = settings.subscription_connections.max(1);
                let (health, status) = Health::new(count, counters);
                let endpoint = Endpoint::new(topology)?;
                let subscribers = (0..count)
                    .map(|index| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let shard = Shard::new(
                            index,
                            endpoint.clone(),
                            canary,
                            redis.clone(),
                            rx,
                            inbox.clone(),
                            Arc::clone(&health),
                        );
                        tokio::spawn(shard.run());
                        tx
                    })
                    .collect();
                (subscribers, status)
            }
        };
        Ok(Self {
            redis,
            topics: canary.topics.clone(),
            subscribers,
            status,
        })
    }

    fn subscriber(&self, topic: &str) -> &mpsc::UnboundedSender<Request> {
        let mut hasher = DefaultHasher::new();
        topic.hash(&mut hasher);
        let count = self.subscribers.len() as u64;
        let index = usize::try_from(hasher.finish() % count).unwrap_or(0);
        &self.subscribers[index]
    }

    /// The shared connection for commands other than pub/sub.
    pub fn connection(&self) -> &SharedConnection {
        &self.redis
    }
}

impl Broker for RedisBroker {
    fn publish(&self, topic: String, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut connection = self.redis.get().await?;
            let name = if self.topics.is_sharded_topic(&topic) {
                "SPUBLISH"
            } else {
                "PUBLISH"
            };
            let mut command = redis::cmd(name);
            command.arg(&topic).arg(payload.as_ref());
            let publish = command.query_async::<i64>(&mut connection);
            match timeout(COMMAND_TIMEOUT, publish).await {
                Ok(Ok(_receivers)) => Ok(()),
                Ok(Err(e)) => Err(self.redis.check(e).into()),
                Err(_) => {
                    self.redis.reset();
                    Err(BrokerError::Timeout("PUBLISH"))
                }
            }
        })
    }

    fn subscribe(&self, topic: String) -> BoxFuture<'static, Result<(), BrokerError>> {
        let (ack, confirmed) = oneshot::channel();
        let sent = self.subscriber(&topic).send(Request::Subscribe(topic, ack));
        Box::pin(async move {
            sent.map_err(|_| BrokerError::Closed)?;
            confirmed.await.map_err(|_| BrokerError::Closed)?
        })
    }

    fn unsubscribe(&self, topic: String) {
        let _ = self.subscriber(&topic).send(Request::Unsubscribe(topic));
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.status.clone()
    }
}

fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.0))
}
