//! The gateway on a real Redis Cluster (3 masters, a replica each): channels on every master
//! reach clients on another replica over sharded pub/sub, each gateway holds one sharded
//! subscription connection per master, and master failovers (`CLUSTER FAILOVER`, then a
//! SIGKILLed master) while publishing lose nothing on a history channel.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use e2e::{GatewayConfig, StatusCode, TestClient, TestGateway, eventually, metric_value};
use serde_json::{Value, json};
use testkit::RedisCluster;

const NAMESPACES: &str = r#"
[namespaces.default]
history_size = 1000
history_ttl = "10m"
"#;

fn config(cluster: &RedisCluster) -> GatewayConfig {
    GatewayConfig::new()
        .namespaces_toml(NAMESPACES)
        .redis_url(&cluster.seeds())
        .env("GATEWAY_REDIS_MODE", "cluster")
        .env("GATEWAY_BUS_CANARY_INTERVAL", "1s")
        .env("GATEWAY_BUS_CANARY_TIMEOUT", "1s")
}

/// Channels whose history lives on each master: at least `per_master` on every one.
async fn channels_on_every_master(cluster: &RedisCluster, per_master: usize) -> Vec<String> {
    let mut by_master: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for n in 0..200 {
        let channel = format!("c{n}");
        let master = cluster
            .master_of(&format!("gw:{{{channel}}}:stream"))
            .await
            .unwrap();
        let on = by_master.entry(master.port()).or_default();
        if on.len() < per_master {
            on.push(channel);
        }
        if by_master.len() == 3 && by_master.values().all(|c| c.len() == per_master) {
            break;
        }
    }
    assert_eq!(by_master.len(), 3, "{by_master:?}");
    by_master.into_values().flatten().collect()
}

/// Sharded subscription connections (`ssub` > 0) on a server, from `CLIENT LIST`.
async fn sharded_subscribers(server: &testkit::RedisServer) -> usize {
    let clients = server.cli(&["CLIENT", "LIST"]).await;
    clients
        .lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field.strip_prefix("ssub=").is_some_and(|n| n != "0"))
        })
        .count()
}

#[tokio::test]
async fn channels_on_every_master_reach_another_replica_over_one_connection_per_master() {
    let cluster = RedisCluster::start(3, 1).await.unwrap();
    let gw_a = TestGateway::spawn(config(&cluster)).await;
    let gw_b = TestGateway::spawn(config(&cluster)).await;
    let channels = channels_on_every_master(&cluster, 2).await;
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut client = gw_a.connect_as("42").await;
    client.subscribe_ok(&names).await;
    for (i, channel) in channels.iter().enumerate() {
        let reply = gw_b
            .publish_ok(json!({"channel": channel, "event": "note", "data": i}))
            .await;
        assert_eq!(reply["offset"], 1, "{channel}: {reply}");
        let frame = client.recv_type("note").await;
        assert_eq!(
            (frame["channel"].as_str(), frame["data"].as_u64()),
            (Some(channel.as_str()), Some(i as u64))
        );
        assert_eq!(frame["offset"], 1, "{frame}");
    }
    gw_b.publish_ok(json!({"user": "42", "event": "personal", "data": 1}))
        .await;
    assert_eq!(client.recv_type("personal").await["data"], 1);
    gw_b.publish_ok(json!({"broadcast": true, "event": "everyone", "data": 2}))
        .await;
    assert_eq!(client.recv_type("everyone").await["data"], 2);

    // Each gateway holds one sharded subscription connection per master, whatever the
    // number of channels (its canary keeps one open on every master).
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    for master in masters {
        assert_eq!(
            sharded_subscribers(master).await,
            2,
            "master on {}",
            master.port()
        );
    }

    // A client that missed events recovers them from history, on either replica.
    let epoch = epoch_of(&gw_a, names[0]).await;
    let mut late = gw_b.connect_as("7").await;
    let since = json!({names[0]: {"offset": 0, "epoch": epoch}});
    let subscribe = json!({"type": "subscribe", "channels": [names[0]], "since": since});
    let reply = late.request(subscribe).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(late.recv_type("note").await["offset"], 1);
}

/// The channel's epoch, from a history read on the gateway.
async fn epoch_of(gw: &TestGateway, channel: &str) -> String {
    let (status, page) = gw.get_admin(&format!("/api/history/{channel}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["position"]["epoch"].as_str().unwrap().to_owned()
}

/// Publishes `count` events on `channel`, each retried with its idempotency key until a
/// gateway takes it; returns when all are in.
async fn publish_with_retries(gw: &TestGateway, channel: &str, count: u64) {
    for i in 1..=count {
        let body = json!({"channel": channel, "event": "job", "data": i, "idempotency_key": format!("job-{i}")});
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, reply) = gw.publish(body.clone()).await;
            if status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "event {i} never published: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `job` events a client reads until it has event `count`: offset and data of each.
async fn read_jobs(client: &mut TestClient, count: u64) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.last().map(|(_, data)| *data) != Some(count) {
        assert!(Instant::now() < deadline, "got {seen:?}");
        let frame: Value = client.recv_type("job").await;
        seen.push((
            frame["offset"].as_u64().unwrap(),
            frame["data"].as_u64().unwrap(),
        ));
    }
    seen
}

#[tokio::test]
async fn master_failovers_while_publishing_lose_nothing_on_a_history_channel() {
    let mut cluster = RedisCluster::start(3, 1).await.unwrap();
    let gw_sub = TestGateway::spawn(config(&cluster)).await;
    let gw_pub = TestGateway::spawn(config(&cluster)).await;
    let channel = "jobs";
    let mut client = gw_sub.connect_as("42").await;
    client.subscribe_ok(&[channel]).await;
    let key = format!("gw:{{{channel}}}:stream");
    const COUNT: u64 = 150;

    let publishing = publish_with_retries(&gw_pub, channel, COUNT);
    let reading = read_jobs(&mut client, COUNT);
    let failovers = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        // A planned failover: the master's replica takes over, the old master follows it.
        let master = cluster.master_of(&key).await.unwrap().port();
        let replica = replica_of(&cluster, master).await;
        let answer = cluster.nodes()[replica].cli(&["CLUSTER", "FAILOVER"]).await;
        assert!(answer.contains("OK"), "{answer}");
        eventually(
            Duration::from_secs(20),
            "the replica takes over",
            || async {
                cluster.master_of(&key).await.map(|m| m.port())
                    == Some(cluster.nodes()[replica].port())
            },
        )
        .await;
        cluster.wait_until_formed(3).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Then the new master dies at once; its replica (the old master) is promoted.
        let index = index_of(&cluster, cluster.nodes()[replica].port());
        cluster.node_mut(index).kill().await;
        cluster.wait_until_formed(3).await.unwrap();
    };
    let ((), seen, ()) = tokio::join!(publishing, reading, failovers);

    let offsets: Vec<u64> = seen.iter().map(|(offset, _)| *offset).collect();
    let unique: HashSet<u64> = offsets.iter().copied().collect();
    assert_eq!(
        unique.len(),
        offsets.len(),
        "an offset came twice: {offsets:?}"
    );
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "out of order: {offsets:?}"
    );
    let data: BTreeSet<u64> = seen.iter().map(|(_, data)| *data).collect();
    assert_eq!(data, (1..=COUNT).collect(), "events missing: {seen:?}");
    eventually(
        Duration::from_secs(20),
        "the gateway is ready again",
        || async { gw_sub.admin_status("/readyz").await == Some(StatusCode::OK) },
    )
    .await;
    // The failovers were noticed and the subscriptions replaced, not merely survived.
    let metrics = gw_sub.metrics().await;
    let reconnects = metric_value(&metrics, "gateway_bus_reconnects_total", &[]);
    assert!(reconnects >= Some(1.0), "{reconnects:?}");
}

/// The index of the replica of the master on `master_port`.
async fn replica_of(cluster: &RedisCluster, master_port: u16) -> usize {
    for (index, node) in cluster.nodes().iter().enumerate() {
        let replication = node.cli(&["INFO", "replication"]).await;
        if replication.contains("role:slave")
            && replication.contains(&format!("master_port:{master_port}"))
        {
            return index;
        }
    }
    panic!("no replica of the master on {master_port}");
}

fn index_of(cluster: &RedisCluster, port: u16) -> usize {
    cluster
        .nodes()
        .iter()
        .position(|n| n.port() == port)
        .unwrap()
}

#[tokio::test]
async fn the_rust_publisher_and_its_cli_publish_on_every_master() {
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let gw = TestGateway::spawn(config(&cluster)).await;
    let channels = channels_on_every_master(&cluster, 2).await;
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut client = gw.connect_as("42").await;
    client.subscribe_ok(&names).await;

    // The gateway wrote its namespaces to `{gw}:namespaces`; the publisher reads them there.
    let topology =
        publisher::RedisTopology::parse(publisher::RedisMode::Cluster, &cluster.seeds(), None)
            .unwrap();
    let publisher = publisher::Publisher::connect_to(&topology).unwrap();
    let events: Vec<publisher::Event> = (0..3)
        .flat_map(|round| {
            names
                .iter()
                .map(move |channel| publisher::Event::to_channel(channel, "batch", &round))
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let receipts = publisher.publish_batch(&events).await.unwrap();
    for (index, receipt) in receipts.iter().enumerate() {
        let round = (index / names.len()) as u64;
        let position = receipt.position.as_ref().unwrap();
        assert_eq!(position.offset, round + 1, "{receipt:?}");
    }
    for _ in 0..events.len() {
        let frame = client.recv_type("batch").await;
        assert_eq!(
            frame["offset"].as_u64().unwrap(),
            frame["data"].as_u64().unwrap() + 1
        );
    }
    let user = publisher::Event::to_user("42", "personal", &"hi").unwrap();
    publisher.publish(&user).await.unwrap();
    assert_eq!(client.recv_type("personal").await["data"], "hi");

    let output = tokio::process::Command::new(e2e::binary("gateway-publish"))
        .env("GATEWAY_REDIS_MODE", "cluster")
        .env("GATEWAY_REDIS_URL", cluster.seeds())
        .args(["--channel", names[0], "--event", "cli", "--data", "7"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.starts_with(&format!("{} 4 ", names[0])),
        "{printed}"
    );
    let frame = client.recv_type("cli").await;
    assert_eq!(
        (frame["data"].as_u64(), frame["offset"].as_u64()),
        (Some(7), Some(4))
    );
}
