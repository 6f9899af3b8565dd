//! The subscriptions of a node on a Redis Cluster: one cluster connection (the redis crate's,
//! in RESP3), which holds one connection per master, routes each `SSUBSCRIBE` to the master of
//! the channel's slot and follows `MOVED`. Channel topics travel over sharded pub/sub; control,
//! broadcast and client-type topics over classic pub/sub on one of the masters.
//!
//! A canary goes through every master (a sharded topic in one of its slots) and one over
//! classic pub/sub. Any loss (a canary not back, a node connection dropped, a subscription the
//! cluster dropped because its slot moved) replaces the whole cluster connection: the bus goes
//! down, every topic is subscribed again on the masters of the new slot map, and the hub
//! catches the channels up from history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use publisher::shared::{SetupError, cluster_client};
use publisher::wire::Topics;
use publisher::{RedisTopology, SharedConnection};
use redis::aio::{AsyncPushSender, SendError};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::canary::{Canaries, Canary};
use super::{
    BACKOFF_MAX, BACKOFF_MIN, BusInbox, COMMAND_TIMEOUT, CanarySettings, Health, MAX_BATCH,
    Request, jitter,
};
use crate::broker::{BrokerError, BusMessage};

/// Subscription commands in flight at once while subscribing to many slots.
const CONCURRENT_COMMANDS: usize = 64;

/// What the push sink passes to the subscriber's task.
enum Push {
    Canary(String, Bytes),
    Unsubscribed(String),
    Disconnected,
}

/// Takes the cluster connection's pushes: messages go to the inbox at once, the rest to the
/// subscriber's task.
struct PushSink {
    inbox: BusInbox,
    canary_prefix: String,
    events: mpsc::UnboundedSender<Push>,
}

impl AsyncPushSender for PushSink {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let mut data = info.data.into_iter();
        let topic = match data.next() {
            Some(Value::BulkString(topic)) => String::from_utf8(topic).ok(),
            _ => None,
        };
        let event = match (info.kind, topic) {
            (PushKind::Message | PushKind::SMessage, Some(topic)) => {
                let payload = match data.next() {
                    Some(Value::BulkString(payload)) => Bytes::from(payload),
                    _ => return Ok(()),
                };
                if topic.starts_with(&self.canary_prefix) {
                    Push::Canary(topic, payload)
                } else {
                    self.inbox.deliver(BusMessage { topic, payload });
                    return Ok(());
                }
            }
            (PushKind::SUnsubscribe, Some(topic)) => Push::Unsubscribed(topic),
            (PushKind::Disconnection, _) => Push::Disconnected,
            _ => return Ok(()),
        };
        self.events.send(event).map_err(|_| SendError)
    }
}

/// A node's subscriptions on a Redis Cluster.
pub(super) struct ClusterSubscriber {
    seeds: Vec<String>,
    names: Topics,
    node_id: String,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Every topic this node needs, whether or not it is connected now.
    topics: HashSet<String>,
    /// Sharded topics unsubscribed by this node whose confirmation has not come yet.
    leaving: HashMap<String, usize>,
    inbox: BusInbox,
    health: Arc<Health>,
    canaries: Canaries,
}

/// Why a connected subscriber stopped.
enum Lost {
    Connection(BrokerError),
    Shutdown,
}

impl ClusterSubscriber {
    /// A subscriber on the cluster of `topology`, sending its canaries over `redis`.
    pub(super) fn new(
        topology: &RedisTopology,
        canary: &CanarySettings,
        redis: SharedConnection,
        requests: mpsc::UnboundedReceiver<Request>,
        inbox: BusInbox,
        health: Arc<Health>,
    ) -> Result<Self, BrokerError> {
        // Building a client checks the seed URLs now rather than at the first connect.
        cluster_client(topology.urls(), COMMAND_TIMEOUT)
            .build()
            .map_err(SetupError::InvalidUrl)?;
        Ok(Self {
            seeds: topology.urls().to_vec(),
            names: canary.topics.clone(),
            node_id: canary.node_id.clone(),
            requests,
            topics: HashSet::new(),
            leaving: HashMap::new(),
            inbox,
            health,
            canaries: Canaries::new(Vec::new(), redis, canary.interval, canary.timeout),
        })
    }

    /// Connects, serves, and replaces the connection on any loss, until the broker is dropped.
    pub(super) async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        loop {
            let (connection, pushes) = match self.connect().await {
                Ok(connected) => connected,
                Err(error) => {
                    tracing::warn!(%error, "Redis Cluster subscriptions failed; retrying");
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
                    topics = self.topics.len(),
                    "Redis Cluster subscriptions restored"
                );
            }
            connected_before = true;
            backoff = BACKOFF_MIN;
            self.health.set_connected(true);
            let lost = self.serve(connection, pushes).await;
            self.health.set_connected(false);
            match lost {
                Lost::Shutdown => return,
                Lost::Connection(error) => {
                    tracing::warn!(%error, "Redis Cluster subscriptions lost; reconnecting");
                }
            }
        }
    }

    /// Connects to the cluster, places a canary on every master, and subscribes to every
    /// topic this node needs.
    async fn connect(
        &mut self,
    ) -> Result<(ClusterConnection, mpsc::UnboundedReceiver<Push>), BrokerError> {
        let (events, pushes) = mpsc::unbounded_channel();
        let sink = PushSink {
            inbox: self.inbox.clone(),
            canary_prefix: self.names.canary_prefix(&self.node_id),
            events,
        };
        let client = cluster_client(&self.seeds, COMMAND_TIMEOUT)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(sink)
            .build()?;
        let mut connection = timeout(COMMAND_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| BrokerError::Timeout("cluster connect"))??;
        let masters = timeout(COMMAND_TIMEOUT, master_slots(&mut connection))
            .await
            .map_err(|_| BrokerError::Timeout("CLUSTER SLOTS"))??;
        let mut canaries = vec![Canary::new(self.names.canary(&self.node_id, 0), false)];
        canaries.extend(
            canary_tags(&masters)
                .into_iter()
                .map(|tag| Canary::new(self.names.sharded_canary(&self.node_id, &tag), true)),
        );
        self.canaries.replace(canaries);
        self.leaving.clear();
        let topics: Vec<String> = self
            .canaries
            .iter()
            .map(|c| c.topic().to_owned())
            .chain(self.topics.iter().cloned())
            .collect();
        for (_, result) in subscribe_all(&connection, &self.names, topics).await {
            result?;
        }
        Ok((connection, pushes))
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

    async fn serve(
        &mut self,
        connection: ClusterConnection,
        mut pushes: mpsc::UnboundedReceiver<Push>,
    ) -> Lost {
        let interval = self.canaries.interval;
        let mut next_canary = tokio::time::interval_at(Instant::now() + interval, interval);
        next_canary.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let canary_due = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(canary_due);
        let mut canary_out = false;
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(Push::Canary(topic, payload)) => {
                        self.canaries.receive(&topic, &payload);
                        canary_out &= !self.canaries.all_back();
                    }
                    Some(Push::Unsubscribed(topic)) => {
                        if !self.expected_unsubscribe(&topic) {
                            return Lost::Connection(BrokerError::Unsubscribed);
                        }
                    }
                    Some(Push::Disconnected) | None => {
                        return Lost::Connection(BrokerError::Disconnected);
                    }
                },
                count = self.requests.recv_many(&mut batch, MAX_BATCH) => {
                    if count == 0 {
                        return Lost::Shutdown;
                    }
                    let requests = std::mem::take(&mut batch);
                    if let Err(error) = self.apply(&connection, requests).await {
                        return Lost::Connection(error);
                    }
                }
                _ = next_canary.tick(), if !canary_out => {
                    self.canaries.send();
                    canary_out = true;
                    canary_due.as_mut().reset(Instant::now() + self.canaries.timeout);
                }
                () = &mut canary_due, if canary_out => {
                    self.health.counters.canary_failures.inc();
                    return Lost::Connection(BrokerError::Timeout("canary"));
                }
            }
        }
    }

    /// Whether a dropped sharded subscription was this node's own doing, or one it no longer
    /// needs; a topic it needs and a canary are not.
    fn expected_unsubscribe(&mut self, topic: &str) -> bool {
        if let Some(count) = self.leaving.get_mut(topic) {
            *count -= 1;
            if *count == 0 {
                self.leaving.remove(topic);
            }
            return true;
        }
        !self.topics.contains(topic) && !self.canaries.is_canary(topic)
    }

    /// Applies requests in order, each run of subscribes or unsubscribes at once.
    async fn apply(
        &mut self,
        connection: &ClusterConnection,
        requests: Vec<Request>,
    ) -> Result<(), BrokerError> {
        let mut requests = requests.into_iter().peekable();
        while let Some(first) = requests.next() {
            match first {
                Request::Subscribe(topic, ack) => {
                    let mut run = vec![(topic, ack)];
                    while let Some(Request::Subscribe(..)) = requests.peek() {
                        if let Some(Request::Subscribe(topic, ack)) = requests.next() {
                            run.push((topic, ack));
                        }
                    }
                    self.subscribe_run(connection, run).await?;
                }
                Request::Unsubscribe(topic) => {
                    let mut run = vec![topic];
                    while let Some(Request::Unsubscribe(_)) = requests.peek() {
                        if let Some(Request::Unsubscribe(topic)) = requests.next() {
                            run.push(topic);
                        }
                    }
                    self.unsubscribe_run(connection, run).await?;
                }
            }
        }
        Ok(())
    }

    async fn subscribe_run(
        &mut self,
        connection: &ClusterConnection,
        run: Vec<(String, oneshot::Sender<Result<(), BrokerError>>)>,
    ) -> Result<(), BrokerError> {
        let mut acks: HashMap<String, Vec<oneshot::Sender<Result<(), BrokerError>>>> =
            HashMap::new();
        for (topic, ack) in run {
            acks.entry(topic).or_default().push(ack);
        }
        let topics: Vec<String> = acks.keys().cloned().collect();
        let mut failed = None;
        for (topic, result) in subscribe_all(connection, &self.names, topics).await {
            if result.is_ok() {
                self.topics.insert(topic.clone());
            }
            for ack in acks.remove(&topic).unwrap_or_default() {
                let _ = ack.send(result.clone());
            }
            if let Err(error) = result {
                failed = Some(error);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn unsubscribe_run(
        &mut self,
        connection: &ClusterConnection,
        run: Vec<String>,
    ) -> Result<(), BrokerError> {
        for topic in &run {
            self.topics.remove(topic);
            if self.names.is_sharded_topic(topic) {
                *self.leaving.entry(topic.clone()).or_default() += 1;
            }
        }
        let groups = groups(&self.names, run);
        let sent = groups.into_iter().map(|(sharded, topics)| {
            let mut connection = connection.clone();
            async move {
                let command = async {
                    if sharded {
                        connection.sunsubscribe(&topics).await
                    } else {
                        connection.unsubscribe(&topics).await
                    }
                };
                timeout(COMMAND_TIMEOUT, command)
                    .await
                    .map_err(|_| BrokerError::Timeout("UNSUBSCRIBE"))?
                    .map_err(BrokerError::from)
            }
        });
        let results: Vec<Result<(), BrokerError>> = stream::iter(sent)
            .buffer_unordered(CONCURRENT_COMMANDS)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// The topics in commands: classic ones in chunks, sharded ones one command per slot (a
/// sharded subscription command must stay in one slot). `true` marks sharded groups.
fn groups(names: &Topics, topics: Vec<String>) -> Vec<(bool, Vec<String>)> {
    let mut classic = Vec::new();
    let mut slots: HashMap<Slot, Vec<String>> = HashMap::new();
    for topic in topics {
        if names.is_sharded_topic(&topic) {
            slots.entry(Slot::for_key(&topic)).or_default().push(topic);
        } else {
            classic.push(topic);
        }
    }
    let mut groups: Vec<(bool, Vec<String>)> = classic
        .chunks(MAX_BATCH)
        .map(|chunk| (false, chunk.to_vec()))
        .collect();
    groups.extend(slots.into_values().map(|topics| (true, topics)));
    groups
}

/// Subscribes to `topics`, many commands at once; the result for each topic.
async fn subscribe_all(
    connection: &ClusterConnection,
    names: &Topics,
    topics: Vec<String>,
) -> Vec<(String, Result<(), BrokerError>)> {
    let sent = groups(names, topics).into_iter().map(|(sharded, topics)| {
        let mut connection = connection.clone();
        async move {
            let command = async {
                if sharded {
                    connection.ssubscribe(&topics).await
                } else {
                    connection.subscribe(&topics).await
                }
            };
            let result = match timeout(COMMAND_TIMEOUT, command).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(BrokerError::from(error)),
                Err(_) => Err(BrokerError::Timeout("SUBSCRIBE")),
            };
            (topics, result)
        }
    });
    let done: Vec<(Vec<String>, Result<(), BrokerError>)> = stream::iter(sent)
        .buffer_unordered(CONCURRENT_COMMANDS)
        .collect()
        .await;
    done.into_iter()
        .flat_map(|(topics, result)| topics.into_iter().map(move |t| (t, result.clone())))
        .collect()
}

/// Each master's slots, from `CLUSTER SLOTS`.
async fn master_slots(
    connection: &mut ClusterConnection,
) -> Result<Vec<HashSet<Slot>>, BrokerError> {
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(connection)
        .await?;
    let mut masters: HashMap<String, HashSet<Slot>> = HashMap::new();
    let Value::Array(ranges) = reply else {
        return Err(BrokerError::Unexpected("CLUSTER SLOTS"));
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let address = format!("{:?}", master.get(..2));
        let slots = masters.entry(address).or_default();
        let (start, end) = (
            u16::try_from(*start).unwrap_or(0),
            u16::try_from(*end).unwrap_or(0),
        );
        slots.extend((start..=end).filter_map(Slot::new));
    }
    Ok(masters.into_values().collect())
}

/// A hash tag in the slots of each master, so that a canary topic with that tag goes through
/// that master.
fn canary_tags(masters: &[HashSet<Slot>]) -> Vec<String> {
    let mut tags = vec![None; masters.len()];
    for n in 0..1_000_000_u32 {
        if tags.iter().all(Option::is_some) {
            break;
        }
        let tag = n.to_string();
        let slot = Slot::for_key(format!("{{{tag}}}"));
        if let Some(index) = masters.iter().position(|slots| slots.contains(&slot))
            && tags[index].is_none()
        {
            tags[index] = Some(tag);
        }
    }
    tags.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_master_gets_a_canary_in_its_slots() {
        // The last master owns one slot only: its canary must still be found.
        let ranges: [&[(u16, u16)]; 4] = [
            &[(0, 99), (101, 5460)],
            &[(5461, 10922)],
            &[(10923, 16383)],
            &[(100, 100)],
        ];
        let masters: Vec<HashSet<Slot>> = ranges
            .iter()
            .map(|ranges| {
                let slots = ranges.iter().flat_map(|&(start, end)| start..=end);
                slots.filter_map(Slot::new).collect()
            })
            .collect();
        let tags = canary_tags(&masters);
        assert_eq!(tags.len(), 4);
        for (tag, slots) in tags.iter().zip(&masters) {
            let topic = Topics::sharded("gw").sharded_canary("n1", tag);
            assert!(slots.contains(&Slot::for_key(&topic)), "{topic}");
        }
    }

    #[test]
    fn sharded_topics_are_grouped_by_slot() {
        let names = Topics::sharded("gw");
        let topics = vec![
            names.channel("a"),
            names.channel("a"),
            names.channel("b"),
            names.broadcast(),
            names.canary("n1", 0),
            names.sharded_canary("n1", "7"),
        ];
        let groups = groups(&names, topics);
        let classic: Vec<&(bool, Vec<String>)> = groups.iter().filter(|g| !g.0).collect();
        assert_eq!(classic.len(), 1);
        assert_eq!(classic[0].1, ["gw:broadcast", "gw:canary:n1:0"]);
        assert_eq!(groups.iter().filter(|g| g.0).count(), 3);
    }
}
