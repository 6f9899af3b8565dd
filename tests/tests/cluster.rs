//! Several replicas on one real Redis: events reach the right sockets whichever replica holds
//! them, a replica receives only the traffic its clients need, and the bus heals itself.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use e2e::{
    GatewayConfig, StallProxy, StatusCode, TestClient, TestGateway, TestRedis, assert_event,
    eventually, metric_value,
};
use futures_util::future::join_all;
use serde_json::{Value, json};

async fn replicas(redis: &TestRedis, n: usize) -> Vec<TestGateway> {
    join_all((0..n).map(|i| {
        TestGateway::spawn(
            GatewayConfig::new()
                .redis_url(&redis.url())
                .node_id(&format!("replica-{i}")),
        )
    }))
    .await
}

async fn readyz(gw: &TestGateway) -> Option<StatusCode> {
    gw.admin_status("/readyz").await
}

#[tokio::test]
async fn channel_event_reaches_subscribers_on_every_replica() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 3).await;
    let mut clients = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let mut client = gw.connect_as(&format!("u{i}")).await;
        client.subscribe_ok(&["jobs"]).await;
        assert_eq!(client.node_id(), gw.node_id());
        clients.push(client);
    }
    let data = json!({"job_id": "abc", "progress": 100});
    gws[0]
        .publish_ok(json!({"channel": "jobs", "event": "job_done", "data": data}))
        .await;
    for client in &mut clients {
        assert_event(&client.recv().await, "job_done", Some("jobs"), &data);
    }
}

#[tokio::test]
async fn user_event_reaches_all_connections_across_replicas_and_nobody_else() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 3).await;
    let mut mine = Vec::new();
    for gw in &gws {
        mine.push(gw.connect_as("42").await);
    }
    let mut other = gws[1].connect_as("43").await;
    let data = json!({"photo": "p1", "faces": 3});
    gws[2]
        .publish_ok(json!({"user": "42", "event": "face_detection_done", "data": data}))
        .await;
    for client in &mut mine {
        assert_event(
            &client.recv().await,
            "face_detection_done",
            Some("#42"),
            &data,
        );
    }
    gws[0]
        .publish_ok(json!({"user": "43", "event": "sentinel", "data": {}}))
        .await;
    assert_eq!(other.recv().await["type"], "sentinel");
    other.expect_no_frame(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn client_type_and_broadcast_cross_replicas() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut gui = gws[0].connect_as("1").await;
    let mut mobile = gws[1].connect_as("2").await;
    let mut other_gui = gws[1].connect_as("3").await;
    for (client, client_type) in [
        (&mut gui, "gui"),
        (&mut mobile, "mobile"),
        (&mut other_gui, "gui"),
    ] {
        let reply = client
            .request(json!({"type": "register", "client_type": client_type}))
            .await;
        assert_eq!(reply["type"], "registered", "{reply}");
    }
    gws[1]
        .publish_ok(json!({"client_type": "gui", "event": "update", "data": 1}))
        .await;
    assert_event(&gui.recv().await, "update", None, &json!(1));
    assert_event(&other_gui.recv().await, "update", None, &json!(1));
    gws[0]
        .publish_ok(json!({"broadcast": true, "event": "maintenance", "data": "soon"}))
        .await;
    for client in [&mut gui, &mut mobile, &mut other_gui] {
        assert_event(&client.recv().await, "maintenance", None, &json!("soon"));
    }
}

#[tokio::test]
async fn exclude_client_skips_the_sender_across_replicas() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut sender = gws[0].connect_as("7").await;
    let mut tab = gws[1].connect_as("7").await;
    let sender_id = sender.client_id().to_owned();
    gws[1]
        .publish_ok(json!({"user": "7", "event": "saved", "data": {}, "exclude_client": sender_id}))
        .await;
    assert_eq!(tab.recv().await["type"], "saved");
    gws[0]
        .publish_ok(json!({"user": "7", "event": "sentinel", "data": {}}))
        .await;
    assert_eq!(sender.recv().await["type"], "sentinel");
}

#[tokio::test]
async fn a_replica_receives_only_the_channels_its_clients_need() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[0].connect_as("1").await;
    client.subscribe_ok(&["jobs"]).await;
    assert_eq!(
        redis.numsub("gw:ch:jobs").await,
        1,
        "only replica 0 listens"
    );
    for i in 0..20 {
        gws[1]
            .publish_ok(json!({"channel": "jobs", "event": "tick", "data": i}))
            .await;
    }
    for _ in 0..20 {
        assert_eq!(client.recv().await["type"], "tick");
    }
    let idle = gws[1].metrics().await;
    assert_eq!(
        metric_value(&idle, "gateway_bus_messages_received_total", &[]),
        Some(0.0),
        "replica 1 has no clients and must receive nothing"
    );
    let reply = client
        .request(json!({"type": "unsubscribe", "channels": ["jobs"]}))
        .await;
    assert_eq!(reply["type"], "unsubscribed");
    eventually(
        Duration::from_secs(5),
        "the last subscriber's channel is released",
        || async { redis.numsub("gw:ch:jobs").await == 0 },
    )
    .await;
}

/// Publishes to `user` until `client` receives one of them: the bus is live again.
async fn wait_for_delivery(gw: &TestGateway, client: &mut TestClient, user: &str) -> Value {
    for attempt in 0..100 {
        let (status, _) = gw
            .publish(json!({"user": user, "event": "probe", "data": attempt}))
            .await;
        if status == StatusCode::OK
            && let Ok(Ok(frame)) =
                tokio::time::timeout(Duration::from_millis(200), client.recv_or_close()).await
        {
            return frame;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no delivery after the bus came back");
}

#[tokio::test]
async fn redis_restart_turns_readyz_red_then_green_and_delivery_resumes() {
    let mut redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[0].connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    redis.kill().await;
    for gw in &gws {
        eventually(
            Duration::from_secs(15),
            "readyz is 503 while Redis is down",
            || async { readyz(gw).await == Some(StatusCode::SERVICE_UNAVAILABLE) },
        )
        .await;
    }
    redis.restart().await;
    for gw in &gws {
        eventually(Duration::from_secs(15), "readyz is 200 again", || async {
            readyz(gw).await == Some(StatusCode::OK)
        })
        .await;
    }
    let frame = wait_for_delivery(&gws[1], &mut client, "42").await;
    assert_eq!(frame["type"], "probe");
    gws[1]
        .publish_ok(json!({"channel": "jobs", "event": "after_restart", "data": 1}))
        .await;
    assert_eq!(client.recv_type("after_restart").await["data"], 1);
    let metrics = gws[0].metrics().await;
    assert!(metric_value(&metrics, "gateway_bus_reconnects_total", &[]).unwrap() >= 1.0);
}

#[tokio::test]
async fn register_during_a_bus_outage_is_refused_and_works_once_redis_is_back() {
    let mut redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[0].connect_as("7").await;
    redis.kill().await;
    eventually(Duration::from_secs(15), "the bus is down", || async {
        readyz(&gws[0]).await == Some(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let refused = client
        .request(json!({"type": "register", "client_type": "gui"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "internal", "{refused}");
    redis.restart().await;
    for gw in &gws {
        eventually(Duration::from_secs(15), "readyz is 200 again", || async {
            readyz(gw).await == Some(StatusCode::OK)
        })
        .await;
    }
    // The cluster view answers again once the node's command connection is back too.
    eventually(
        Duration::from_secs(15),
        "the cluster view answers",
        || async { gws[0].get_admin("/api/clients").await.0 == StatusCode::OK },
    )
    .await;
    let (_, clients) = gws[0].get_admin("/api/clients?client_type=gui").await;
    assert_eq!(
        clients["clients"].as_array().map(Vec::len),
        Some(0),
        "a refused register leaves no client type: {clients}"
    );
    let registered = client
        .request(json!({"type": "register", "client_type": "gui"}))
        .await;
    assert_eq!(registered["type"], "registered", "{registered}");
    gws[1]
        .publish_ok(json!({"client_type": "gui", "event": "update", "data": 2}))
        .await;
    assert_eq!(client.recv_type("update").await["data"], 2);
}

#[tokio::test]
async fn killed_pubsub_connections_are_restored_without_clients_noticing() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[0].connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(
        killed.trim().parse::<u32>().unwrap() >= 1,
        "killed: {killed}"
    );
    eventually(Duration::from_secs(15), "replica 0 reconnected", || async {
        let metrics = gws[0].metrics().await;
        metric_value(&metrics, "gateway_bus_reconnects_total", &[]).unwrap_or(0.0) >= 1.0
            && readyz(&gws[0]).await == Some(StatusCode::OK)
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the channel is subscribed again",
        || async { redis.numsub("gw:ch:jobs").await == 1 },
    )
    .await;
    gws[1]
        .publish_ok(json!({"channel": "jobs", "event": "after_kill", "data": 2}))
        .await;
    assert_eq!(client.recv_type("after_kill").await["data"], 2);
}

#[tokio::test]
async fn a_half_open_bus_connection_is_found_by_its_canary_and_replaced() {
    let redis = TestRedis::start().await;
    let proxy = StallProxy::start(redis.port()).await;
    let via_proxy = format!("redis://127.0.0.1:{}", proxy.port());
    let gw = TestGateway::spawn(GatewayConfig::new().redis_url(&via_proxy)).await;
    let publisher = TestGateway::spawn(GatewayConfig::new().redis_url(&redis.url())).await;
    let mut client = gw.connect_as("42").await;
    proxy.stall();
    eventually(
        Duration::from_secs(20),
        "the stalled connection is replaced",
        || async {
            let metrics = gw.metrics().await;
            metric_value(&metrics, "gateway_bus_reconnects_total", &[]).unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    let frame = wait_for_delivery(&publisher, &mut client, "42").await;
    assert_eq!(frame["type"], "probe");
}

#[tokio::test]
async fn the_documented_redis_cli_publish_reaches_a_client() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 1).await;
    let mut client = gws[0].connect_as("42").await;
    // docs/redis.md, "Shell", with this test's port.
    let received = redis
        .cli(&[
            "PUBLISH",
            "gw:ch:#42",
            r##"{"channel":"#42","event":"photo_ready","data":{"photo":"p1"},"timestamp":"2026-11-22T10:00:01.123Z"}"##,
        ])
        .await;
    assert_eq!(received.trim(), "1", "one gateway node listens on #42");
    let frame = client.recv().await;
    assert_eq!(
        frame,
        json!({"type": "photo_ready", "channel": "#42",
               "timestamp": "2026-11-22T10:00:01.123Z", "data": {"photo": "p1"}})
    );
}

#[tokio::test]
async fn the_publisher_cli_reaches_a_client_from_stdin() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[1].connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    let mut child = tokio::process::Command::new(e2e::binary("gateway-publish"))
        .args([
            "--redis-url",
            &redis.url(),
            "--channel",
            "jobs",
            "--event",
            "job_progress",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(br#"{"progress":45.5}"#).await.unwrap();
    drop(stdin);
    assert!(child.wait().await.unwrap().success());
    assert_event(
        &client.recv().await,
        "job_progress",
        Some("jobs"),
        &json!({"progress": 45.5}),
    );
}
