//! The gateway on a master found through Sentinel (one master, one replica, three sentinels):
//! the master is killed while a history channel is published to with retries, Sentinel
//! promotes the replica, and every event reaches the subscriber exactly once.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use e2e::{GatewayConfig, StatusCode, TestGateway, TestRedis, eventually, metric_value};
use serde_json::json;

const NAMESPACES: &str = r#"
[namespaces.default]
history_size = 1000
history_ttl = "10m"
"#;

const MASTER: &str = "gateway-main";

#[tokio::test]
async fn a_killed_master_is_followed_through_sentinel_and_nothing_is_lost() {
    let mut master = TestRedis::start().await;
    let replicaof = master.port().to_string();
    let replica = TestRedis::start_with(&["--replicaof", "127.0.0.1", &replicaof])
        .await
        .unwrap();
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(
            TestRedis::start_sentinel(MASTER, master.port(), 2)
                .await
                .unwrap(),
        );
    }
    eventually(
        Duration::from_secs(20),
        "the replica is in sync",
        || async {
            replica
                .cli(&["INFO", "replication"])
                .await
                .contains("master_link_status:up")
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the sentinels see each other",
        || async {
            let info = sentinels[0].cli(&["SENTINEL", "MASTER", MASTER]).await;
            info.lines()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == "num-other-sentinels" && w[1] == "2")
        },
    )
    .await;
    let urls: Vec<String> = sentinels.iter().map(TestRedis::url).collect();
    let config = || {
        GatewayConfig::new()
            .namespaces_toml(NAMESPACES)
            .redis_url(&urls.join(","))
            .env("GATEWAY_REDIS_MODE", "sentinel")
            .env("GATEWAY_REDIS_SENTINEL_MASTER", MASTER)
            .env("GATEWAY_BUS_CANARY_INTERVAL", "1s")
            .env("GATEWAY_BUS_CANARY_TIMEOUT", "1s")
    };
    let gw_sub = TestGateway::spawn(config()).await;
    let gw_pub = TestGateway::spawn(config()).await;
    let mut client = gw_sub.connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    const COUNT: u64 = 100;

    let publishing = async {
        for i in 1..=COUNT {
            let body = json!({"channel": "jobs", "event": "job", "data": i, "idempotency_key": format!("job-{i}")});
            let deadline = Instant::now() + Duration::from_secs(60);
            while gw_pub.publish(body.clone()).await.0 != StatusCode::OK {
                assert!(Instant::now() < deadline, "event {i} never published");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let reading = async {
        let mut seen = Vec::new();
        while seen.last().map(|(_, data)| *data) != Some(COUNT) {
            let frame = client.recv_type("job").await;
            seen.push((
                frame["offset"].as_u64().unwrap(),
                frame["data"].as_u64().unwrap(),
            ));
        }
        seen
    };
    let failover = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        master.kill().await;
        eventually(
            Duration::from_secs(30),
            "Sentinel promotes the replica",
            || async {
                replica
                    .cli(&["INFO", "replication"])
                    .await
                    .contains("role:master")
            },
        )
        .await;
    };
    let ((), seen, ()) = tokio::join!(publishing, reading, failover);

    let offsets: Vec<u64> = seen.iter().map(|(offset, _)| *offset).collect();
    let unique: HashSet<u64> = offsets.iter().copied().collect();
    assert_eq!(
        unique.len(),
        offsets.len(),
        "an offset came twice: {offsets:?}"
    );
    let data: BTreeSet<u64> = seen.iter().map(|(_, data)| *data).collect();
    assert_eq!(data, (1..=COUNT).collect(), "events missing: {seen:?}");
    let metrics = gw_sub.metrics().await;
    let reconnects = metric_value(&metrics, "gateway_bus_reconnects_total", &[]);
    assert!(reconnects >= Some(1.0), "{reconnects:?}");
}
