//! The bus proves it delivers: a subscription connection that stays open but stops carrying
//! Redis's replies is found by its canary, the node turns unready while it reconnects, and the
//! events published meanwhile reach its clients from history once it is back.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::{
    GatewayConfig, StallProxy, StatusCode, TestGateway, TestRedis, eventually, metric_value,
};
use serde_json::json;

const NAMESPACES: &str = r#"
[namespaces.default]
history_size = 1000
history_ttl = "10m"
"#;

fn config(redis_url: &str) -> GatewayConfig {
    GatewayConfig::new()
        .namespaces_toml(NAMESPACES)
        .redis_url(redis_url)
        .env("GATEWAY_BUS_CANARY_INTERVAL", "1s")
        .env("GATEWAY_BUS_CANARY_TIMEOUT", "1s")
}

#[tokio::test]
async fn a_connection_that_stops_delivering_is_found_by_its_canary_and_nothing_is_lost() {
    let redis = TestRedis::start().await;
    let proxy = StallProxy::start(redis.port()).await;
    let gw = TestGateway::spawn(config(&format!("redis://127.0.0.1:{}", proxy.port()))).await;
    let publisher = TestGateway::spawn(config(&redis.url())).await;
    let mut client = gw.connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    publisher
        .publish_ok(json!({"channel": "jobs", "event": "before", "data": 0}))
        .await;
    assert_eq!(client.recv_type("before").await["data"], 0);

    // The sockets stay open and Redis still takes commands: only its replies stop.
    proxy.pause_replies();
    let paused = Instant::now();
    eventually(Duration::from_secs(15), "/readyz turns 503", || async {
        gw.admin_status("/readyz").await == Some(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let noticed = paused.elapsed();
    for i in 1..=5 {
        publisher
            .publish_ok(json!({"channel": "jobs", "event": "during", "data": i}))
            .await;
    }
    let metrics = gw.metrics().await;
    assert_eq!(metric_value(&metrics, "gateway_bus_up", &[]), Some(0.0));
    let failures = metric_value(&metrics, "gateway_bus_canary_failures_total", &[]);
    assert!(failures >= Some(1.0), "{failures:?}");

    eprintln!("unready {noticed:?} after the pause");
    proxy.resume_replies();
    let resumed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "/readyz turns 200 again",
        || async { gw.admin_status("/readyz").await == Some(StatusCode::OK) },
    )
    .await;
    eprintln!("ready {:?} after the resume", resumed.elapsed());
    for i in 1..=5 {
        let frame = client.recv_type("during").await;
        assert_eq!(frame["data"], i, "{frame}");
    }
    publisher
        .publish_ok(json!({"channel": "jobs", "event": "after", "data": 6}))
        .await;
    let after = client.recv().await;
    assert_eq!(
        (after["type"].as_str(), after["data"].as_i64()),
        (Some("after"), Some(6)),
        "{after}"
    );
    // Interval plus timeout is 2 s; the bound leaves room for a loaded machine.
    assert!(noticed < Duration::from_secs(15), "{noticed:?}");
}
