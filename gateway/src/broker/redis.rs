//! The Redis bus: PUBLISH through a connection pool, SUBSCRIBE on dedicated connections.
//!
//! Topics are spread over several subscription connections ("shards") by a stable hash, so
//! one topic always lives on one connection and its subscribe and unsubscribe requests keep
//! their order. Each shard owns its connection: it applies requests in batches, hands every
//! message to the node's inbox without waiting, and on any failure reconnects with backoff and
//! subscribes again to everything its topics need. The bus counts as up only while every shard
//! is connected; it never falls back to memory.
//!
//! An open connection is not proof of delivery: a half-open socket, a proxy that stalls one
//! direction, or a failover that left the connection on a server that no longer gets the
//! publishes all look healthy to TCP. So each shard sends itself a canary through Redis (a
//! PUBLISH on the pool's connection to a topic only it subscribes to) every canary interval,
//! and treats one that is not back within the canary timeout as a lost connection. The bus goes
//! down while the shard reconnects, and the hub catches channels up from history once it is
//! back.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::IntCounter;
use publisher::SharedConnection;
use publisher::shared::SetupError;
use publisher::wire::Topics;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::{BoxFuture, Broker, BrokerError, BusInbox, BusMessage};

/// How long a connect or a subscribe may take before the connection counts as lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests applied in one round trip at most.
const MAX_BATCH: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Settings of a [`RedisBroker`].
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// Dedicated subscription connections.
    pub subscription_connections: usize,
    /// Pooled connections for publishing.
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

enum Request {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

/// Shared between the shards: how many are connected, and the status it makes.
struct Health {
    shards: usize,
    connected: AtomicUsize,
    status: watch::Sender<bool>,
    counters: BusCounters,
}

impl Health {
    fn set_connected(&self, connected: bool) {
        // Counted and published under the watch's lock: two shards connecting at once on two
        // threads could otherwise publish their counts in the wrong order and leave the bus
        // down with every shard connected.
        self.status.send_modify(|up| {
            let now = if connected {
                self.connected.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                self.connected.fetch_sub(1, Ordering::AcqRel) - 1
            };
            *up = now == self.shards;
        });
    }
}

/// A node's handle on the Redis bus.
pub struct RedisBroker {
    redis: SharedConnection,
    shards: Vec<mpsc::UnboundedSender<Request>>,
    status: watch::Receiver<bool>,
}

impl RedisBroker {
    /// Starts the subscription connections and the publish pool. Returns at once; the bus
    /// status turns up when every subscription connection is established.
    pub fn start(
        settings: &RedisSettings,
        inbox: BusInbox,
        counters: BusCounters,
    ) -> Result<Self, BrokerError> {
        let pool =
            publisher::shared::pool(&settings.url, settings.publish_pool_size, COMMAND_TIMEOUT)?;
        let client = redis::Client::open(settings.url.as_str()).map_err(SetupError::InvalidUrl)?;
        let shard_count = settings.subscription_connections.max(1);
        let (status_tx, status) = watch::channel(false);
        let health = Arc::new(Health {
            shards: shard_count,
            connected: AtomicUsize::new(0),
            status: status_tx,
            counters,
        });
        let redis = SharedConnection::new(pool);
        let shards = (0..shard_count)
            .map(|index| {
                let (tx, rx) = mpsc::unbounded_channel();
                let shard = Shard {
                    index,
                    client: client.clone(),
                    requests: rx,
                    topics: HashSet::new(),
                    inbox: inbox.clone(),
                    health: Arc::clone(&health),
                    canary: Canary {
                        topic: settings
                            .canary
                            .topics
                            .canary(&settings.canary.node_id, index),
                        interval: settings.canary.interval,
                        timeout: settings.canary.timeout,
                        redis: redis.clone(),
                        sent: 0,
                    },
                };
                tokio::spawn(shard.run());
                tx
            })
            .collect();
        Ok(Self {
            redis,
            shards,
            status,
        })
    }

    fn shard(&self, topic: &str) -> &mpsc::UnboundedSender<Request> {
        let mut hasher = DefaultHasher::new();
        topic.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % self.shards.len() as u64).unwrap_or(0);
        &self.shards[index]
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
            let mut command = redis::cmd("PUBLISH");
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
        let sent = self.shard(&topic).send(Request::Subscribe(topic, ack));
        Box::pin(async move {
            sent.map_err(|_| BrokerError::Closed)?;
            confirmed.await.map_err(|_| BrokerError::Closed)?
        })
    }

    fn unsubscribe(&self, topic: String) {
        let _ = self.shard(&topic).send(Request::Unsubscribe(topic));
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.status.clone()
    }
}

/// One subscription connection and the topics that live on it.
struct Shard {
    index: usize,
    client: redis::Client,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Every topic this node needs from this shard, whether or not it is connected now.
    topics: HashSet<String>,
    inbox: BusInbox,
    health: Arc<Health>,
    canary: Canary,
}

/// A shard's canaries: numbered messages to a topic only this shard subscribes to.
struct Canary {
    topic: String,
    interval: Duration,
    timeout: Duration,
    redis: SharedConnection,
    /// The number of the last canary sent.
    sent: u64,
}

impl Canary {
    /// Sends the next canary without waiting for Redis: if the publish fails, the canary
    /// does not come back, which is what counts.
    fn send(&mut self) {
        self.sent += 1;
        let redis = self.redis.clone();
        let topic = self.topic.clone();
        let number = self.sent;
        tokio::spawn(async move {
            let Ok(mut connection) = redis.get().await else {
                return;
            };
            let mut command = redis::cmd("PUBLISH");
            command.arg(&topic).arg(number);
            let publish = command.query_async::<i64>(&mut connection);
            if let Ok(Err(error)) = timeout(COMMAND_TIMEOUT, publish).await {
                redis.check(error);
            }
        });
    }

    /// Whether `payload` is the canary last sent.
    fn is_current(&self, payload: &[u8]) -> bool {
        std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.parse().ok())
            == Some(self.sent)
    }
}

/// Why a connected shard stopped.
enum Lost {
    /// The connection failed; reconnect.
    Connection(BrokerError),
    /// The broker was dropped; stop.
    Shutdown,
}

impl Shard {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        loop {
            let attempt = self.connect().await;
            let (sink, stream) = match attempt {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(shard = self.index, %error, "Redis subscription connection failed; retrying");
                    if self.wait_refusing(jitter(backoff)).await.is_err() {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if connected_before {
                self.health.counters.reconnects.inc();
                tracing::info!(
                    shard = self.index,
                    topics = self.topics.len(),
                    "Redis subscriptions restored"
                );
            }
            connected_before = true;
            backoff = BACKOFF_MIN;
            self.health.set_connected(true);
            let lost = self.serve(sink, stream).await;
            self.health.set_connected(false);
            match lost {
                Lost::Shutdown => return,
                Lost::Connection(error) => {
                    tracing::warn!(shard = self.index, %error, "Redis subscription connection lost; reconnecting");
                }
            }
        }
    }

    /// Connects and subscribes to every topic this shard needs.
    async fn connect(&mut self) -> Result<(PubSubSink, PubSubStream), BrokerError> {
        let pubsub = timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Timeout("connect"))??;
        let (mut sink, stream) = pubsub.split();
        timeout(COMMAND_TIMEOUT, sink.subscribe(&self.canary.topic))
            .await
            .map_err(|_| BrokerError::Timeout("canary subscribe"))??;
        let topics: Vec<&String> = self.topics.iter().collect();
        for chunk in topics.chunks(MAX_BATCH) {
            timeout(COMMAND_TIMEOUT, sink.subscribe(chunk))
                .await
                .map_err(|_| BrokerError::Timeout("resubscribe"))??;
        }
        Ok((sink, stream))
    }

    /// While disconnected: records requests, refusing subscriptions until connected again.
    async fn wait_refusing(&mut self, delay: Duration) -> Result<(), Lost> {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                request = self.requests.recv() => match request {
                    None => return Err(Lost::Shutdown),
                    Some(Request::Subscribe(_topic, ack)) => {
                        let _ = ack.send(Err(BrokerError::NotConnected));
                    }
                    Some(Request::Unsubscribe(topic)) => {
                        self.topics.remove(&topic);
                    }
                },
            }
        }
    }

    async fn serve(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> Lost {
        let mut next_canary =
            tokio::time::interval_at(Instant::now() + self.canary.interval, self.canary.interval);
        next_canary.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Armed while a canary is out; far away otherwise.
        let canary_due = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(canary_due);
        let mut canary_out = false;
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) if message.get_channel_name() == self.canary.topic => {
                        canary_out &= !self.canary.is_current(message.get_payload_bytes());
                    }
                    Some(message) => self.inbox.deliver(BusMessage {
                        topic: message.get_channel_name().to_owned(),
                        payload: Bytes::copy_from_slice(message.get_payload_bytes()),
                    }),
                    None => return Lost::Connection(BrokerError::Disconnected),
                },
                count = self.requests.recv_many(&mut batch, MAX_BATCH) => {
                    if count == 0 {
                        return Lost::Shutdown;
                    }
                    if let Err(error) = self.apply(&mut sink, batch.drain(..)).await {
                        return Lost::Connection(error);
                    }
                }
                _ = next_canary.tick(), if !canary_out => {
                    self.canary.send();
                    canary_out = true;
                    canary_due.as_mut().reset(Instant::now() + self.canary.timeout);
                }
                () = &mut canary_due, if canary_out => {
                    self.health.counters.canary_failures.inc();
                    return Lost::Connection(BrokerError::Timeout("canary"));
                }
            }
        }
    }

    /// Applies requests in order, sending each run of the same kind as one command.
    async fn apply(
        &mut self,
        sink: &mut PubSubSink,
        requests: impl Iterator<Item = Request>,
    ) -> Result<(), BrokerError> {
        let mut subscribes: Vec<(String, oneshot::Sender<Result<(), BrokerError>>)> = Vec::new();
        let mut unsubscribes: Vec<String> = Vec::new();
        for request in requests {
            match request {
                Request::Subscribe(topic, ack) => {
                    if !unsubscribes.is_empty() {
                        self.unsubscribe_run(sink, &mut unsubscribes).await?;
                    }
                    subscribes.push((topic, ack));
                }
                Request::Unsubscribe(topic) => {
                    if !subscribes.is_empty() {
                        self.subscribe_run(sink, &mut subscribes).await?;
                    }
                    unsubscribes.push(topic);
                }
            }
        }
        self.subscribe_run(sink, &mut subscribes).await?;
        self.unsubscribe_run(sink, &mut unsubscribes).await
    }

    async fn subscribe_run(
        &mut self,
        sink: &mut PubSubSink,
        run: &mut Vec<(String, oneshot::Sender<Result<(), BrokerError>>)>,
    ) -> Result<(), BrokerError> {
        if run.is_empty() {
            return Ok(());
        }
        let topics: Vec<&str> = run.iter().map(|(t, _)| t.as_str()).collect();
        let result = match timeout(COMMAND_TIMEOUT, sink.subscribe(&topics)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BrokerError::from(e)),
            Err(_) => Err(BrokerError::Timeout("SUBSCRIBE")),
        };
        for (topic, ack) in run.drain(..) {
            match &result {
                Ok(()) => {
                    self.topics.insert(topic);
                    let _ = ack.send(Ok(()));
                }
                Err(error) => {
                    let _ = ack.send(Err(error.clone()));
                }
            }
        }
        result
    }

    async fn unsubscribe_run(
        &mut self,
        sink: &mut PubSubSink,
        run: &mut Vec<String>,
    ) -> Result<(), BrokerError> {
        if run.is_empty() {
            return Ok(());
        }
        for topic in run.iter() {
            self.topics.remove(topic);
        }
        let result = timeout(COMMAND_TIMEOUT, sink.unsubscribe(run.as_slice())).await;
        run.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(BrokerError::Timeout("UNSUBSCRIBE")),
        }
    }
}

fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.0))
}
