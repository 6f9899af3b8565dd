//! Tests of the hub over the in-memory bus and history: the bus topics its subscriptions hold,
//! fan-out, recovery and slow consumers. A connection is an outbox over an in-memory socket,
//! read by a tungstenite client; no session runs: the tests call the hub as a session does.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use publisher::wire::{
    ChannelName, Envelope, EventName, Position, Target, Topics, UserId, timestamp_now,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{DuplexStream, duplex};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::Role;

use super::{ClientId, Connection, Hub, HubError, Recovery};
use crate::broker::{
    BoxFuture, Broker, BrokerError, BusInbox, BusMessage, MemoryBroker, MemoryBus,
};
use crate::cluster::{Cluster, Registry};
use crate::config::{Args, Config};
use crate::history::{MemoryHistory, Policies};
use crate::metrics::{Dropped, Metrics};
use crate::outbox::Outbox;
use crate::protocol::{CloseCode, Encoding};
use crate::view::Transport;

/// How long a test waits for what it expects: long on a loaded machine, short enough that a
/// hang fails the test rather than the run.
const PATIENCE: Duration = Duration::from_secs(15);

/// `default` keeps history (so `jobs` does), `chat` does not, `short` keeps two events.
const NAMESPACES: &str = r#"
[namespaces.default]
history_size = 100
history_ttl = "10m"

[namespaces.chat]

[namespaces.short]
history_size = 2
history_ttl = "10m"
"#;

/// The node's memory broker, keeping a record of what the hub asked of it.
struct RecordingBroker {
    inner: MemoryBroker,
    /// `subscribe` or `unsubscribe`, and the topic.
    calls: Mutex<Vec<(&'static str, String)>>,
}

impl RecordingBroker {
    fn record(&self, call: &'static str, topic: &str) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.push((call, topic.to_owned()));
    }

    /// What the hub asked about `topic`, in order.
    fn calls_on(&self, topic: &str) -> Vec<&'static str> {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls
            .iter()
            .filter(|(_, t)| t == topic)
            .map(|(call, _)| *call)
            .collect()
    }
}

impl Broker for RecordingBroker {
    fn publish(&self, topic: String, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish(topic, payload)
    }

    fn subscribe(&self, topic: String) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.record("subscribe", &topic);
        self.inner.subscribe(topic)
    }

    fn unsubscribe(&self, topic: String) {
        self.record("unsubscribe", &topic);
        self.inner.unsubscribe(topic);
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.inner.status()
    }
}

/// A single node's hub, wired as `build_node` wires it, with its bus dispatch running.
struct TestNode {
    hub: Hub,
    broker: Arc<RecordingBroker>,
    metrics: Arc<Metrics>,
    topics: Topics,
}

/// A connection, and the client reading its socket.
struct Peer {
    client_id: ClientId,
    outbox: Outbox,
    ws: WebSocketStream<DuplexStream>,
}

impl TestNode {
    fn start() -> Self {
        let config = config();
        let metrics = Arc::new(Metrics::new().unwrap());
        let topics = Topics::new(config.redis_prefix.clone());
        let policies = Policies::from_namespaces(&config.namespaces);
        let bus = MemoryBus::new();
        let dropped = metrics
            .messages_dropped
            .with_label_values(&[Dropped::BusBacklog.label()]);
        // Two lanes, as on a two-core node: each channel's events keep to one.
        let (inbox, lanes) = BusInbox::with_lanes(crate::BUS_INBOX_CAPACITY, 2, dropped);
        let broker = Arc::new(RecordingBroker {
            inner: bus.broker(inbox),
            calls: Mutex::default(),
        });
        let window = config.idempotency_window;
        let history = MemoryHistory::new(bus, topics.clone(), policies.clone(), window);
        let hub = Hub::new(
            broker.clone(),
            Arc::new(history),
            policies,
            topics.clone(),
            Arc::clone(&metrics),
        );
        let cluster = Cluster::new(
            "node-a".into(),
            &config.redis_prefix,
            broker.clone(),
            Registry::memory(),
            hub.clone(),
            config.namespaces.clone(),
            config.node_lease,
        );
        let cluster = Arc::new(cluster);
        for lane in lanes {
            tokio::spawn(crate::dispatch(hub.clone(), Arc::clone(&cluster), lane));
        }
        Self {
            hub,
            broker,
            metrics,
            topics,
        }
    }

    /// A connection of `user` with a roomy socket and the default backlog limit.
    async fn connect(&self, user: &str) -> Peer {
        self.connect_with(user, 64 * 1024, 1024 * 1024).await
    }

    /// A connection of `user` whose socket holds `buffer` bytes and whose backlog holds
    /// `outbox_limit`, registered as a session registers it.
    async fn connect_with(&self, user: &str, buffer: usize, outbox_limit: usize) -> Peer {
        let (server_io, client_io) = duplex(buffer);
        let outbox = Outbox::new(
            server_io,
            outbox_limit,
            Arc::clone(&self.metrics),
            Encoding::default(),
        );
        let client_id: ClientId = uuid::Uuid::new_v4().to_string().into();
        let connection = Connection {
            client_id: Arc::clone(&client_id),
            user_id: UserId::parse(user).unwrap(),
            client_type: None,
            outbox: outbox.clone(),
            transport: Transport::Websocket,
        };
        self.hub.connect(connection, false).await.unwrap();
        outbox.release();
        tokio::spawn(write_backlog(outbox.clone()));
        let ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        Peer {
            client_id,
            outbox,
            ws,
        }
    }

    /// Subscribes `peer` as a session does: on a history channel it holds the live events
    /// while it recovers from `since`, then gets what it missed and what it held.
    async fn join(&self, peer: &Peer, channel: &str, since: Option<&Position>) -> Recovery {
        let channel = ChannelName::parse(channel).unwrap();
        let history = self.hub.keeps_history(&channel);
        let hub = &self.hub;
        let newly = hub.subscribe(&peer.client_id, &channel, 128, history).await;
        assert!(newly.unwrap(), "{channel} was not subscribed yet");
        if !history {
            return Recovery::default();
        }
        let recovery = hub.recover(&peer.client_id, &channel, since).await;
        hub.finish_replay(&peer.client_id, &channel, &recovery);
        recovery
    }

    /// Publishes `job_progress` with `data` on `channel`, skipping `exclude`; returns the
    /// event's position where the channel keeps history.
    async fn publish_excluding(
        &self,
        channel: &str,
        data: Value,
        exclude: Option<&Peer>,
    ) -> Option<Position> {
        let data = RawValue::from_string(data.to_string()).unwrap();
        let event = EventName::parse("job_progress").unwrap();
        let exclude = exclude.map(|peer| &*peer.client_id);
        let target = Target::Channel(channel);
        let published = self.hub.publish(target, &event, Some(&data), exclude, None);
        published.await.unwrap().position
    }

    async fn publish(&self, channel: &str, data: Value) -> Option<Position> {
        self.publish_excluding(channel, data, None).await
    }

    /// Local subscribers of `channel`; `None` when the hub holds no such channel.
    fn subscribers(&self, channel: &str) -> Option<usize> {
        let channels = self.hub.local_channels();
        channels
            .into_iter()
            .find(|(c, _)| c == channel)
            .map(|(_, n)| n)
    }
}

impl Peer {
    /// The next frame, as JSON; fails the test on anything else or on silence.
    async fn recv_json(&mut self) -> Value {
        match timeout(PATIENCE, self.ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str(&text).unwrap(),
            Ok(other) => panic!("expected a text frame, got {other:?}"),
            Err(_) => panic!("nothing within {PATIENCE:?}"),
        }
    }

    /// The offsets of the next `count` frames.
    async fn recv_offsets(&mut self, count: usize) -> Vec<u64> {
        let mut offsets = Vec::with_capacity(count);
        for _ in 0..count {
            let event = self.recv_json().await;
            offsets.push(event["offset"].as_u64().expect("an event with an offset"));
        }
        offsets
    }
}

fn config() -> Config {
    let file = std::env::temp_dir().join(format!("gw-hub-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&file, NAMESPACES).unwrap();
    let args = Args {
        config: Some(file.clone()),
        ..Args::default()
    };
    let config = Config::load(args);
    let _ = std::fs::remove_file(&file);
    config.unwrap()
}

/// What a session does for its outbox: writes the backlog whenever the socket takes it.
async fn write_backlog(outbox: Outbox) {
    loop {
        outbox.backlog_signal().await;
        if poll_fn(|cx| outbox.poll_drain(cx)).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn the_bus_is_subscribed_on_a_channels_first_local_subscriber_and_dropped_on_its_last() {
    let node = TestNode::start();
    let (alice, bob) = (node.connect("alice").await, node.connect("bob").await);
    let topic = node.topics.channel("jobs");
    node.join(&alice, "jobs", None).await;
    node.join(&bob, "jobs", None).await;
    assert_eq!(node.broker.calls_on(&topic), ["subscribe"]);
    assert_eq!(node.subscribers("jobs"), Some(2));
    assert_eq!(node.metrics.channels.get(), 3, "jobs, #alice and #bob");
    assert_eq!(node.metrics.subscriptions.get(), 4);

    let jobs = ChannelName::parse("jobs").unwrap();
    assert!(node.hub.unsubscribe(&alice.client_id, &jobs));
    assert!(!node.hub.unsubscribe(&alice.client_id, &jobs), "no more");
    assert_eq!(node.broker.calls_on(&topic), ["subscribe"]);
    assert_eq!(node.subscribers("jobs"), Some(1));

    // The last subscriber leaves by disconnecting.
    let left = node.hub.disconnect(&bob.client_id);
    assert!(left.contains(&jobs), "{left:?}");
    assert_eq!(node.broker.calls_on(&topic), ["subscribe", "unsubscribe"]);
    assert_eq!(node.subscribers("jobs"), None);
    assert_eq!(node.metrics.channels.get(), 1, "#alice");
    assert_eq!(node.metrics.subscriptions.get(), 1);

    node.join(&alice, "jobs", None).await;
    let calls = node.broker.calls_on(&topic);
    assert_eq!(calls, ["subscribe", "unsubscribe", "subscribe"]);
}

#[tokio::test]
async fn the_broadcast_topic_is_held_while_the_node_has_connections() {
    let node = TestNode::start();
    let topic = node.topics.broadcast();
    let alice = node.connect("alice").await;
    let bob = node.connect("bob").await;
    assert_eq!(node.broker.calls_on(&topic), ["subscribe"]);
    node.hub.disconnect(&alice.client_id);
    assert_eq!(node.broker.calls_on(&topic), ["subscribe"]);
    node.hub.disconnect(&bob.client_id);
    assert_eq!(node.broker.calls_on(&topic), ["subscribe", "unsubscribe"]);
    assert_eq!(node.hub.connection_count(), 0);
}

#[tokio::test]
async fn subscribing_twice_changes_nothing_and_the_limit_ignores_the_personal_channel() {
    let node = TestNode::start();
    let alice = node.connect("alice").await;
    let (jobs, chat) = (
        ChannelName::parse("jobs").unwrap(),
        ChannelName::parse("chat:1").unwrap(),
    );
    let hub = &node.hub;
    let first = hub.subscribe(&alice.client_id, &jobs, 1, false).await;
    assert!(first.unwrap(), "newly subscribed");
    let again = hub.subscribe(&alice.client_id, &jobs, 1, false).await;
    assert!(!again.unwrap(), "already subscribed");
    assert_eq!(node.subscribers("jobs"), Some(1));
    let over = hub.subscribe(&alice.client_id, &chat, 1, false).await;
    assert!(matches!(over, Err(HubError::LimitExceeded(1))), "{over:?}");
    assert_eq!(node.subscribers("chat:1"), None);
    let gone = hub.subscribe("no-such-client", &chat, 1, false).await;
    assert!(matches!(gone, Err(HubError::UnknownClient)), "{gone:?}");
}

#[tokio::test]
async fn events_on_a_channel_reach_each_subscriber_once_in_offset_order() {
    let node = TestNode::start();
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    node.join(&alice, "jobs", None).await;
    node.join(&bob, "jobs", None).await;
    for n in 1..=20 {
        node.publish("jobs", json!(n)).await;
    }
    let all: Vec<u64> = (1..=20).collect();
    assert_eq!(alice.recv_offsets(20).await, all);
    assert_eq!(bob.recv_offsets(20).await, all);
    node.publish("jobs", json!(21)).await;
    assert_eq!(alice.recv_offsets(1).await, [21], "nothing repeated");
    assert_eq!(bob.recv_offsets(1).await, [21], "nothing repeated");
}

#[tokio::test]
async fn exclude_client_skips_that_connection_only() {
    let node = TestNode::start();
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    node.join(&alice, "chat:1", None).await;
    node.join(&bob, "chat:1", None).await;
    node.publish_excluding("chat:1", json!(1), Some(&alice))
        .await;
    node.publish("chat:1", json!(2)).await;
    assert_eq!(bob.recv_json().await["data"], 1);
    assert_eq!(bob.recv_json().await["data"], 2);
    assert_eq!(alice.recv_json().await["data"], 2, "alice skips the first");
}

#[tokio::test]
async fn a_users_personal_channel_reaches_every_connection_of_that_user() {
    let node = TestNode::start();
    let mut laptop = node.connect("alice").await;
    let mut phone = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    node.publish("#alice", json!("for alice")).await;
    node.publish("#bob", json!("for bob")).await;
    for alice in [&mut laptop, &mut phone] {
        let event = alice.recv_json().await;
        assert_eq!(event["channel"], "#alice");
        assert_eq!(event["data"], "for alice");
    }
    let event = bob.recv_json().await;
    assert_eq!(event["data"], "for bob", "bob got nothing for alice");
}

#[tokio::test]
async fn recovery_replays_exactly_the_missed_events_while_live_ones_keep_arriving() {
    let node = TestNode::start();
    // The witness is live on the channel: once it has an event, every subscriber was given it.
    let mut witness = node.connect("witness").await;
    node.join(&witness, "jobs", None).await;
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = node.publish("jobs", json!(n)).await.unwrap().epoch;
    }
    assert_eq!(witness.recv_offsets(5).await, [1, 2, 3, 4, 5]);

    let mut late = node.connect("late").await;
    let jobs = ChannelName::parse("jobs").unwrap();
    let hub = &node.hub;
    let holding = hub.subscribe(&late.client_id, &jobs, 128, true).await;
    assert!(holding.unwrap());
    // Held for the late subscriber, and in the history it is about to read.
    node.publish("jobs", json!(6)).await;
    assert_eq!(witness.recv_offsets(1).await, [6]);
    let since = Position {
        offset: 2,
        epoch: epoch.clone(),
    };
    let recovery = hub.recover(&late.client_id, &jobs, Some(&since)).await;
    assert_eq!(recovery.recovered, Some(true));
    assert_eq!(recovery.top, Some(Position { offset: 6, epoch }));
    let replayed: Vec<_> = recovery.replayed.iter().map(|d| d.offset()).collect();
    assert_eq!(replayed, [Some(3), Some(4), Some(5), Some(6)]);
    // Held only: published after the read.
    node.publish("jobs", json!(7)).await;
    assert_eq!(witness.recv_offsets(1).await, [7]);

    hub.finish_replay(&late.client_id, &jobs, &recovery);
    node.publish("jobs", json!(8)).await;
    assert_eq!(late.recv_offsets(6).await, [3, 4, 5, 6, 7, 8]);
    assert_eq!(witness.recv_offsets(1).await, [8]);
}

#[tokio::test]
async fn recovery_is_refused_when_history_cannot_fill_the_gap() {
    let node = TestNode::start();
    let jobs = node.publish("jobs", json!(1)).await.unwrap().epoch;
    let mut short = String::new();
    for n in 1..=5 {
        short = node.publish("short:1", json!(n)).await.unwrap().epoch;
    }
    let cases = [
        ("jobs", 0, "another-epoch".to_owned(), "another epoch"),
        ("jobs", 9, jobs, "ahead of the channel"),
        ("short:1", 1, short, "trimmed: only 4 and 5 are kept"),
    ];
    for (channel, offset, epoch, why) in cases {
        let mut peer = node.connect("late").await;
        let since = Position { offset, epoch };
        let recovery = node.join(&peer, channel, Some(&since)).await;
        assert_eq!(recovery.recovered, Some(false), "{why}");
        assert!(recovery.replayed.is_empty(), "{why}");
        let top = recovery.top.expect("the channel's position");
        node.publish(channel, json!("live")).await;
        let event = peer.recv_json().await;
        assert_eq!(event["offset"], top.offset + 1, "{why}: live events follow");
    }
}

#[tokio::test]
async fn a_full_outbox_closes_its_connection_as_a_slow_consumer_and_others_keep_receiving() {
    let node = TestNode::start();
    let slow = node.connect_with("slow", 64, 16 * 1024).await;
    let mut fast = node.connect("fast").await;
    node.join(&slow, "chat:1", None).await;
    node.join(&fast, "chat:1", None).await;
    let padding = "x".repeat(1000);
    for n in 0..40 {
        node.publish("chat:1", json!({"n": n, "padding": padding}))
            .await;
        assert_eq!(fast.recv_json().await["data"]["n"], n);
    }
    let closing = timeout(PATIENCE, slow.outbox.closing()).await;
    assert_eq!(closing.expect("closing"), CloseCode::SlowConsumer);
    let dropped = node.metrics.messages_dropped.clone();
    let dropped = |reason: Dropped| dropped.with_label_values(&[reason.label()]).get();
    assert_eq!(dropped(Dropped::SlowConsumer), 1, "closed once");
    assert!(dropped(Dropped::Closing) > 0, "later events skip it");
    assert_eq!(fast.outbox.close_code(), None);
    node.publish("chat:1", json!({"n": 40})).await;
    assert_eq!(fast.recv_json().await["data"]["n"], 40);
}

#[tokio::test]

async fn a_fast_reader_is_not_closed_by_a_burst_dispatched_in_one_round() {
    let node = TestNode::start();
    let mut fast = node.connect_with("fast", 64 * 1024, 16 * 1024).await;
    let mut witness = node.connect("witness").await;
    node.join(&fast, "chat:1", None).await;
    node.join(&witness, "chat:1", None).await;
    let padding = "x".repeat(1000);
    // Published without a yield, the 40 events (40 KB, which the socket takes at once) wait
    // in the bus inbox together, and the dispatch gives them to the hub in one corked round.
    for n in 0..40 {
        node.publish("chat:1", json!({"n": n, "padding": padding}))
            .await;
    }
    for n in 0..40 {
        assert_eq!(witness.recv_json().await["data"]["n"], n);
    }
    assert_eq!(fast.outbox.close_code(), None, "closed as a slow consumer");
    for n in 0..40 {
        assert_eq!(fast.recv_json().await["data"]["n"], n);
    }
}

#[tokio::test]
async fn a_fan_out_writes_the_sockets_after_the_hub_released_its_locks() {
    let node = TestNode::start();
    let mut peer = node.connect("reader").await;
    node.join(&peer, "chat:1", None).await;
    let data = serde_json::value::to_raw_value(&json!({"n": 1})).unwrap();
    let envelope = Envelope::new(
        Target::Channel("chat:1"),
        "job_progress",
        Some(&data),
        None,
        timestamp_now().into(),
    );
    let message = BusMessage {
        topic: node.topics.channel("chat:1"),
        payload: envelope.encode().into(),
    };
    crate::outbox::corked(|| {
        node.hub.dispatch(&message);
        assert!(peer.outbox.queued_bytes() > 0, "queued, not written");
        // Every lock of the hub is free while the frame waits for the round's end.
        assert_eq!(node.hub.local_channels().len(), 2);
        assert!(node.hub.local_presence("chat:1").len() == 1);
    });
    assert_eq!(
        peer.outbox.queued_bytes(),
        0,
        "written when the round ended"
    );
    assert_eq!(peer.recv_json().await["data"]["n"], 1);
}

#[test]
fn a_map_left_sparse_gives_its_room_back_and_keeps_its_entries() {
    let mut map: std::collections::HashMap<u32, u32> = (0..10_000).map(|k| (k, k)).collect();
    let peak = map.capacity();
    for k in 10..10_000 {
        map.remove(&k);
        super::shrink_if_sparse(&mut map);
        assert!(map.capacity() >= map.len());
    }
    assert!(map.capacity() <= 128, "{} of {peak} left", map.capacity());
    assert_eq!(map.len(), 10);
    assert!((0..10).all(|k| map.get(&k) == Some(&k)));
}
