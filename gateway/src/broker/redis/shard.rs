//! One subscription connection to one server (standalone, or the master Sentinel names) and
//! the topics that live on it. It applies requests in batches, hands every message to the
//! node's inbox without waiting, and on any failure reconnects with backoff and subscribes
//! again to everything its topics need.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use publisher::shared::{SetupError, sentinel_client};
use publisher::{RedisMode, RedisTopology, SharedConnection};
use redis::ConnectionAddr;
use redis::aio::{PubSubSink, PubSubStream};
use redis::sentinel::SentinelClient;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::canary::{Canaries, Canary};
use super::{
    BACKOFF_MAX, BACKOFF_MIN, BusInbox, COMMAND_TIMEOUT, CanarySettings, Health, MAX_BATCH,
    Request, jitter,
};
use crate::broker::{BrokerError, BusMessage};

/// Where a shard connects: one server, or the master the sentinels name at the time.
#[derive(Clone)]
pub(super) enum Endpoint {
    Fixed(Arc<redis::Client>),
    Sentinel(Arc<Mutex<SentinelClient>>),
}

impl Endpoint {
    /// The endpoint of `topology` (standalone or sentinel).
    pub(super) fn new(topology: &RedisTopology) -> Result<Self, BrokerError> {
        match topology.mode() {
            RedisMode::Sentinel => {
                let master = topology.sentinel_master().unwrap_or_default();
                let client = sentinel_client(topology.urls(), master)?;
                Ok(Self::Sentinel(Arc::new(Mutex::new(client))))
            }
            _ => {
                let client = redis::Client::open(topology.urls()[0].as_str())
                    .map_err(SetupError::InvalidUrl)?;
                Ok(Self::Fixed(Arc::new(client)))
            }
        }
    }

    /// A client for the server to subscribe on now.
    async fn client(&self) -> Result<redis::Client, BrokerError> {
        match self {
            Self::Fixed(client) => Ok(redis::Client::clone(client)),
            Self::Sentinel(sentinel) => {
                let ask = async { sentinel.lock().await.async_get_client().await };
                Ok(timeout(COMMAND_TIMEOUT, ask)
                    .await
                    .map_err(|_| BrokerError::Timeout("asking the sentinels"))??)
            }
        }
    }
}

/// One subscription connection and the topics that live on it.
pub(super) struct Shard {
    index: usize,
    endpoint: Endpoint,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Every topic this node needs from this shard, whether or not it is connected now.
    topics: HashSet<String>,
    inbox: BusInbox,
    health: Arc<Health>,
    canaries: Canaries,
    /// The server subscribed on, while connected.
    server: Option<ConnectionAddr>,
}

/// Why a connected shard stopped.
enum Lost {
    /// The connection failed; reconnect.
    Connection(BrokerError),
    /// The broker was dropped; stop.
    Shutdown,
}

impl Shard {
    /// Shard `index`, connecting to `endpoint`, taking `requests`.
    pub(super) fn new(
        index: usize,
        endpoint: Endpoint,
        canary: &CanarySettings,
        redis: SharedConnection,
        requests: mpsc::UnboundedReceiver<Request>,
        inbox: BusInbox,
        health: Arc<Health>,
    ) -> Self {
        let topic = canary.topics.canary(&canary.node_id, index);
        let canaries = Canaries::new(
            vec![Canary::new(topic, false)],
            redis,
            canary.interval,
            canary.timeout,
        );
        Self {
            index,
            endpoint,
            requests,
            topics: HashSet::new(),
            inbox,
            health,
            canaries,
            server: None,
        }
    }

    /// Connects, serves, and reconnects until the broker is dropped.
    pub(super) async fn run(mut self) {
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
        let client = self.endpoint.client().await?;
        self.server = Some(client.get_connection_info().addr().clone());
        let pubsub = timeout(COMMAND_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Timeout("connect"))??;
        let (mut sink, stream) = pubsub.split();
        let canaries: Vec<&str> = self.canaries.iter().map(Canary::topic).collect();
        timeout(COMMAND_TIMEOUT, sink.subscribe(canaries))
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
        let interval = self.canaries.interval;
        let mut next_canary = tokio::time::interval_at(Instant::now() + interval, interval);
        next_canary.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Armed while a canary is out; far away otherwise.
        let canary_due = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(canary_due);
        let mut canary_out = false;
        // In sentinel mode, where a failover may leave this connection on a replica.
        let (moved_tx, mut moved) = mpsc::channel(1);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) if self.canaries.is_canary(message.get_channel_name()) => {
                        self.canaries.receive(message.get_channel_name(), message.get_payload_bytes());
                        canary_out &= !self.canaries.all_back();
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
                    self.canaries.send();
                    self.check_master(moved_tx.clone());
                    canary_out = true;
                    canary_due.as_mut().reset(Instant::now() + self.canaries.timeout);
                }
                () = &mut canary_due, if canary_out => {
                    self.health.counters.canary_failures.inc();
                    return Lost::Connection(BrokerError::Timeout("canary"));
                }
                Some(()) = moved.recv() => {
                    // The publishes go to the new master: so must the command connection.
                    self.canaries.redis().reset();
                    return Lost::Connection(BrokerError::MasterMoved);
                }
            }
        }
    }

    /// In sentinel mode, asks the sentinels for the master without waiting for them, and
    /// sends on `moved` if it is no longer the server this shard subscribed on.
    fn check_master(&self, moved: mpsc::Sender<()>) {
        let Endpoint::Sentinel(_) = &self.endpoint else {
            return;
        };
        let endpoint = self.endpoint.clone();
        let server = self.server.clone();
        tokio::spawn(async move {
            if let Ok(client) = endpoint.client().await
                && Some(client.get_connection_info().addr()) != server.as_ref()
            {
                let _ = moved.try_send(());
            }
        });
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
