//! One conformance suite for every broker: the same behaviour from the in-memory bus and from
//! Redis (a real `redis-server` per test, and a unique topic prefix per test).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway::broker::{
    Broker, BusCounters, BusInbox, BusMessage, CanarySettings, MemoryBus, RedisBroker,
    RedisSettings,
};
use prometheus::IntCounter;
use publisher::RedisTopology;
use publisher::wire::Topics;
use testkit::RedisServer;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A node's view of the bus under test: its broker and what it receives.
struct Node {
    broker: Arc<dyn Broker>,
    received: mpsc::Receiver<BusMessage>,
}

impl Node {
    async fn recv(&mut self) -> BusMessage {
        timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("a message within 10 s")
            .expect("the inbox is open")
    }

    async fn expect_nothing(&mut self) {
        let got = timeout(Duration::from_millis(300), self.received.recv()).await;
        assert!(got.is_err(), "expected no message, got {got:?}");
    }
}

/// Makes nodes attached to one bus.
trait Bus {
    async fn node(&self) -> Node;
}

struct Memory(MemoryBus);

impl Bus for Memory {
    async fn node(&self) -> Node {
        let (inbox, received) = BusInbox::new(4096, counter());
        Node {
            broker: Arc::new(self.0.broker(inbox)),
            received,
        }
    }
}

struct Redis(RedisServer);

impl Bus for Redis {
    async fn node(&self) -> Node {
        let (inbox, received) = BusInbox::new(4096, counter());
        let settings = RedisSettings {
            topology: RedisTopology::standalone(self.0.url()),
            subscription_connections: 3,
            publish_pool_size: 4,
            canary: CanarySettings {
                topics: Topics::new("gw"),
                node_id: format!("conformance-{}", uuid::Uuid::new_v4()),
                interval: Duration::from_millis(200),
                timeout: Duration::from_secs(2),
            },
        };
        let counters = BusCounters {
            reconnects: counter(),
            canary_failures: counter(),
        };
        let broker = RedisBroker::start(&settings, inbox, counters).expect("broker starts");
        let mut status = broker.status();
        timeout(Duration::from_secs(10), status.wait_for(|up| *up))
            .await
            .expect("the bus comes up within 10 s")
            .expect("status channel open");
        Node {
            broker: Arc::new(broker),
            received,
        }
    }
}

fn counter() -> IntCounter {
    IntCounter::new("test_counter", "test").expect("a counter")
}

/// A topic name unique to this test run.
fn topic(name: &str) -> String {
    format!("t{}:{name}", uuid::Uuid::new_v4().simple())
}

async fn publish(node: &Node, topic: &str, payload: &str) {
    node.broker
        .publish(topic.to_owned(), Bytes::from(payload.to_owned()))
        .await
        .expect("publish succeeds");
}

async fn delivers_only_to_subscribed_nodes(bus: impl Bus) {
    let mut a = bus.node().await;
    let mut b = bus.node().await;
    let jobs = topic("jobs");
    a.broker.subscribe(jobs.clone()).await.expect("subscribed");
    publish(&b, &jobs, "hello").await;
    let message = a.recv().await;
    assert_eq!(message.topic, jobs);
    assert_eq!(message.payload, "hello");
    b.expect_nothing().await;
}

async fn unsubscribe_stops_delivery(bus: impl Bus) {
    let mut a = bus.node().await;
    let jobs = topic("jobs");
    a.broker.subscribe(jobs.clone()).await.expect("subscribed");
    publish(&a, &jobs, "one").await;
    assert_eq!(a.recv().await.payload, "one");
    a.broker.unsubscribe(jobs.clone());
    // A subscribe round trip on another topic proves the unsubscribe, queued before it, is done.
    a.broker
        .subscribe(topic("other"))
        .await
        .expect("subscribed");
    publish(&a, &jobs, "two").await;
    a.expect_nothing().await;
}

async fn keeps_publish_order_per_topic(bus: impl Bus) {
    let publisher = bus.node().await;
    let mut a = bus.node().await;
    let jobs = topic("jobs");
    a.broker.subscribe(jobs.clone()).await.expect("subscribed");
    for i in 0..500 {
        publish(&publisher, &jobs, &i.to_string()).await;
    }
    for i in 0..500 {
        assert_eq!(a.recv().await.payload, i.to_string());
    }
}

async fn requests_apply_in_call_order(bus: impl Bus) {
    let mut a = bus.node().await;
    let jobs = topic("jobs");
    // Not awaited in between: the order of the calls alone decides the outcome.
    let first = a.broker.subscribe(jobs.clone());
    a.broker.unsubscribe(jobs.clone());
    let last = a.broker.subscribe(jobs.clone());
    first.await.expect("subscribed");
    last.await.expect("subscribed");
    publish(&a, &jobs, "still here").await;
    assert_eq!(a.recv().await.payload, "still here");
}

async fn carries_many_topics_and_large_payloads(bus: impl Bus) {
    let mut a = bus.node().await;
    let topics: Vec<String> = (0..300).map(|i| topic(&format!("c{i}"))).collect();
    for t in &topics {
        drop(a.broker.subscribe(t.clone()));
    }
    a.broker
        .subscribe(topic("barrier"))
        .await
        .expect("subscribed");
    for t in &topics {
        publish(&a, t, t).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in &topics {
        let message = a.recv().await;
        assert_eq!(message.payload, message.topic);
        seen.insert(message.topic);
    }
    assert_eq!(seen.len(), topics.len());

    let big = "x".repeat(512 * 1024);
    publish(&a, &topics[0], &big).await;
    assert_eq!(a.recv().await.payload.len(), big.len());
}

async fn reports_the_bus_up(bus: impl Bus) {
    let a = bus.node().await;
    assert!(*a.broker.status().borrow());
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Memory(gateway::broker::MemoryBus::new())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Redis(testkit::RedisServer::start().await)).await;
                }
            )*
        }
    };
}

conformance!(
    delivers_only_to_subscribed_nodes,
    unsubscribe_stops_delivery,
    keeps_publish_order_per_topic,
    requests_apply_in_call_order,
    carries_many_topics_and_large_payloads,
    reports_the_bus_up,
);

/// The Redis bus's canaries come back on every subscription connection (the bus stays up and
/// counts no failure) and never reach the node's inbox.
#[tokio::test]
async fn redis_canaries_come_back_and_stay_off_the_inbox() {
    let redis = RedisServer::start().await;
    let (inbox, mut received) = BusInbox::new(4096, counter());
    let counters = BusCounters {
        reconnects: counter(),
        canary_failures: counter(),
    };
    let settings = RedisSettings {
        topology: RedisTopology::standalone(redis.url()),
        subscription_connections: 3,
        publish_pool_size: 2,
        canary: CanarySettings {
            topics: Topics::new("gw"),
            node_id: "canary-test".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
        },
    };
    let broker = RedisBroker::start(&settings, inbox, counters.clone()).expect("broker starts");
    let mut status = broker.status();
    timeout(Duration::from_secs(10), status.wait_for(|up| *up))
        .await
        .expect("the bus comes up")
        .expect("status channel open");
    let leaked = timeout(Duration::from_millis(1500), received.recv()).await;
    assert!(leaked.is_err(), "a canary reached the inbox: {leaked:?}");
    assert!(*broker.status().borrow());
    assert_eq!(counters.canary_failures.get(), 0);
    assert_eq!(counters.reconnects.get(), 0);
}
