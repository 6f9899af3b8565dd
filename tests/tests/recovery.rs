//! History and lossless recovery: a client that comes back within the history window gets every
//! event it missed, in order, exactly once — across its own reconnect, another replica, a
//! replica's death and its node's loss of Redis; and is told plainly when that cannot be.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::{GatewayConfig, StatusCode, TestClient, TestGateway, TestRedis, token};
use futures_util::future::join_all;
use serde_json::{Value, json};

const NAMESPACES: &str = r#"
[namespaces.default]
history_size = 10000
history_ttl = "10m"
[namespaces.small]
history_size = 10
history_ttl = "10m"
[namespaces.personal]
history_size = 100
history_ttl = "10m"
"#;

fn config(redis: Option<&TestRedis>) -> GatewayConfig {
    let config = GatewayConfig::new().namespaces_toml(NAMESPACES);
    match redis {
        Some(redis) => config.redis_url(&redis.url()),
        None => config,
    }
}

async fn replicas(redis: &TestRedis, n: usize) -> Vec<TestGateway> {
    join_all((0..n).map(|_| TestGateway::spawn(config(Some(redis))))).await
}

/// Publishes `count` events on `channel` through `gw`'s admin API in batches of 50.
async fn publish_many(gw: &TestGateway, channel: &str, count: usize) {
    for start in (0..count).step_by(50) {
        let items: Vec<Value> = (start..count.min(start + 50))
            .map(|i| json!({"channel": channel, "event": "tick", "data": i}))
            .collect();
        let (status, replies) = gw.publish_batch(json!(items)).await;
        assert_eq!(status, StatusCode::OK, "{replies}");
        for reply in replies.as_array().unwrap() {
            assert!(
                reply["offset"].is_u64(),
                "every event gets an offset: {reply}"
            );
        }
    }
}

/// A publisher running beside the test: `count` events on `channel`, in batches of 20.
fn publish_in_background(
    gw: &TestGateway,
    channel: &str,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    let url = format!("{}/api/publish/batch", gw.admin_url());
    let key = gw.api_key().unwrap().to_owned();
    let channel = channel.to_owned();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        for start in (0..count).step_by(20) {
            let items: Vec<Value> = (start..count.min(start + 20))
                .map(|i| json!({"channel": channel, "event": "tick", "data": i}))
                .collect();
            let response = http
                .post(&url)
                .bearer_auth(&key)
                .json(&items)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    })
}

/// Reads events of `channel` until one has offset `last`; returns every offset seen, in order.
async fn offsets_until(client: &mut TestClient, channel: &str, last: u64) -> Vec<u64> {
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while offsets.last() != Some(&last) {
        assert!(
            Instant::now() < deadline,
            "offset {last} never came; got {offsets:?}"
        );
        let frame = client.recv().await;
        if frame["channel"] == channel {
            offsets.push(
                frame["offset"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no offset: {frame}")),
            );
        }
    }
    offsets
}

/// Like [`offsets_until`], but returns early with what it saw if the connection closes.
async fn offsets_until_closed(client: &mut TestClient, channel: &str) -> Vec<u64> {
    let mut offsets = Vec::new();
    while let Ok(frame) = client.recv_or_close().await {
        if frame["channel"] == channel {
            offsets.push(frame["offset"].as_u64().unwrap());
        }
    }
    offsets
}

fn assert_consecutive(offsets: &[u64], from: u64, to: u64) {
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(offsets, expected.as_slice(), "no gap and no duplicate");
}

async fn subscribe_since(client: &mut TestClient, channel: &str, since: &Value) -> Value {
    let reply = client
        .request(json!({"type": "subscribe", "channels": [channel], "since": {channel: since}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

fn position(offset: u64, epoch: &Value) -> Value {
    json!({"offset": offset, "epoch": epoch})
}

#[tokio::test]
async fn reconnecting_to_another_replica_replays_exactly_the_missed_events() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[0].connect_as("u1").await;
    let reply = client.subscribe(&["jobs"]).await;
    assert_eq!(reply["positions"]["jobs"]["offset"], 0, "{reply}");
    publish_many(&gws[1], "jobs", 5).await;
    let seen = offsets_until(&mut client, "jobs", 5).await;
    assert_consecutive(&seen, 1, 5);
    client.close().await;

    publish_many(&gws[1], "jobs", 100).await;
    let (_, history) = gws[0].get_admin("/api/history/jobs?since=5&limit=1").await;
    let epoch = history["position"]["epoch"].clone();
    let mut back = gws[1].connect_as("u1").await;
    let reply = subscribe_since(&mut back, "jobs", &position(5, &epoch)).await;
    assert_eq!(reply["recovered"]["jobs"], true, "{reply}");
    assert_eq!(reply["positions"]["jobs"], position(105, &epoch));
    assert_consecutive(&offsets_until(&mut back, "jobs", 105).await, 6, 105);
    publish_many(&gws[0], "jobs", 1).await;
    assert_consecutive(&offsets_until(&mut back, "jobs", 106).await, 106, 106);
}

#[tokio::test]
async fn publishing_at_full_speed_during_the_replay_leaves_no_gap_and_no_duplicate() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[0].connect_as("u1").await;
    client.subscribe_ok(&["jobs"]).await;
    let total = 3000;
    let publisher = publish_in_background(&gws[1], "jobs", total);
    let first = offsets_until(&mut client, "jobs", 200).await;
    assert_consecutive(&first, 1, 200);
    let (_, history) = gws[0]
        .get_admin("/api/history/jobs?since=200&limit=1")
        .await;
    let epoch = history["position"]["epoch"].clone();
    client.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut back = gws[1].connect_as("u1").await;
    let reply = subscribe_since(&mut back, "jobs", &position(200, &epoch)).await;
    assert_eq!(reply["recovered"]["jobs"], true, "{reply}");
    let rest = offsets_until(&mut back, "jobs", total as u64).await;
    assert_consecutive(&rest, 201, total as u64);
    publisher.await.unwrap();
    back.expect_no_frame(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn many_clients_recovering_one_channel_at_once_each_get_every_event_once() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    publish_many(&gws[1], "jobs", 30).await;
    let (_, history) = gws[0].get_admin("/api/history/jobs?since=30&limit=1").await;
    let epoch = history["position"]["epoch"].clone();
    let total: u64 = 1500;
    // Events keep coming while the clients subscribe, read history and go live.
    let publisher = publish_in_background(&gws[1], "jobs", (total - 30) as usize);
    let recovering = (0..24).map(|i| {
        let gw = &gws[0];
        let epoch = epoch.clone();
        async move {
            let mut client = gw.connect_as(&format!("u{i}")).await;
            // Several clients share each position, as a group coming back after a failover.
            let since = 10 * (i % 3) + 10_u64;
            let reply = subscribe_since(&mut client, "jobs", &position(since, &epoch)).await;
            assert_eq!(reply["recovered"]["jobs"], true, "{reply}");
            let seen = offsets_until(&mut client, "jobs", total).await;
            assert_consecutive(&seen, since + 1, total);
        }
    });
    join_all(recovering).await;
    publisher.await.unwrap();
}

#[tokio::test]
async fn clients_of_a_killed_replica_reconnect_elsewhere_and_lose_or_repeat_nothing() {
    let redis = TestRedis::start().await;
    let mut gws = replicas(&redis, 2).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = gws[0].connect_as(&format!("u{i}")).await;
        client.subscribe_ok(&["jobs"]).await;
        clients.push(client);
    }
    let total = 2000u64;
    let publisher = publish_in_background(&gws[1], "jobs", total as usize);
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for client in &mut clients {
        seen.push(offsets_until(client, "jobs", 100).await);
    }
    gws[0].kill().await;
    let (_, history) = gws[1].get_admin("/api/history/jobs?limit=1").await;
    let epoch = history["position"]["epoch"].clone();
    for (i, mut client) in clients.into_iter().enumerate() {
        seen[i].extend(offsets_until_closed(&mut client, "jobs").await);
        let last = *seen[i].last().unwrap();
        let mut back = gws[1].connect_as(&format!("u{i}")).await;
        let reply = subscribe_since(&mut back, "jobs", &position(last, &epoch)).await;
        assert_eq!(reply["recovered"]["jobs"], true, "{reply}");
        seen[i].extend(offsets_until(&mut back, "jobs", total).await);
        assert_consecutive(&seen[i], 1, total);
    }
    publisher.await.unwrap();
}

#[tokio::test]
async fn a_node_that_loses_redis_mid_stream_catches_its_clients_up_without_reconnecting() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[0].connect_as("u1").await;
    client.subscribe_ok(&["jobs"]).await;
    let total = 3000u64;
    let publisher = publish_in_background(&gws[1], "jobs", total as usize);
    let mut seen = offsets_until(&mut client, "jobs", 300).await;
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(
        killed.trim().parse::<u32>().unwrap() >= 1,
        "killed: {killed}"
    );
    seen.extend(offsets_until(&mut client, "jobs", total).await);
    assert_consecutive(&seen, 1, total);
    publisher.await.unwrap();
    let metrics = gws[0].metrics().await;
    assert!(
        e2e::metric_value(&metrics, "gateway_bus_reconnects_total", &[]).unwrap() >= 1.0,
        "the node did lose its subscription"
    );
}

#[tokio::test]
async fn trimmed_history_answers_recovered_false() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 1).await;
    let mut client = gws[0].connect_as("u1").await;
    client.subscribe_ok(&["small:x"]).await;
    publish_many(&gws[0], "small:x", 1).await;
    let frame = client.recv().await;
    let epoch = frame["epoch"].clone();
    client.close().await;
    publish_many(&gws[0], "small:x", 30).await;
    let mut back = gws[0].connect_as("u1").await;
    let reply = subscribe_since(&mut back, "small:x", &position(1, &epoch)).await;
    assert_eq!(reply["recovered"]["small:x"], false, "{reply}");
    assert_eq!(reply["positions"]["small:x"], position(31, &epoch));
    publish_many(&gws[0], "small:x", 1).await;
    let live = back.recv().await;
    assert_eq!(live["offset"], 32, "nothing replayed, then live: {live}");
}

#[tokio::test]
async fn a_lost_history_changes_the_epoch_and_connected_clients_are_told_to_reload() {
    let mut redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut staying = gws[0].connect_as("u1").await;
    staying.subscribe_ok(&["jobs"]).await;
    let mut leaving = gws[1].connect_as("u2").await;
    leaving.subscribe_ok(&["jobs"]).await;
    publish_many(&gws[0], "jobs", 3).await;
    let old = offsets_until(&mut staying, "jobs", 3).await;
    assert_consecutive(&old, 1, 3);
    let last = leaving.recv_type("tick").await;
    let old_epoch = last["epoch"].clone();
    leaving.close().await;

    redis.restart().await;
    for gw in &gws {
        let deadline = Instant::now() + Duration::from_secs(20);
        while gw.admin_status("/readyz").await != Some(StatusCode::OK) {
            assert!(Instant::now() < deadline, "readyz never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    publish_many(&gws[1], "jobs", 1).await;
    let reload = staying.recv_type("reload").await;
    assert_eq!(reload["channel"], "jobs", "{reload}");
    assert_ne!(reload["position"]["epoch"], old_epoch);

    let mut back = gws[1].connect_as("u2").await;
    let reply = subscribe_since(&mut back, "jobs", &position(3, &old_epoch)).await;
    assert_eq!(reply["recovered"]["jobs"], false, "{reply}");
    assert_ne!(reply["positions"]["jobs"]["epoch"], old_epoch);
}

#[tokio::test]
async fn history_frame_and_api_return_stored_events_with_the_position() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 1).await;
    publish_many(&gws[0], "jobs", 5).await;
    let mut client = gws[0].connect_as("u1").await;
    let reply = client
        .request(json!({"type": "history", "channel": "jobs", "limit": 3}))
        .await;
    assert_eq!(reply["type"], "history", "{reply}");
    let offsets: Vec<u64> = reply["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5], "the last three");
    assert_eq!(reply["position"]["offset"], 5);
    assert_eq!(reply["events"][0]["type"], "tick");

    let (status, page) = gws[0].get_admin("/api/history/jobs?since=2&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4], "the first two after 2");
    let (status, _) = gws[0].get_admin("/api/history/nope:1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_idempotent_publish_is_delivered_once_and_answers_the_first_offset() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut client = gws[1].connect_as("u1").await;
    client.subscribe_ok(&["jobs"]).await;
    let body =
        json!({"channel": "jobs", "event": "charged", "data": 1, "idempotency_key": "order-7"});
    let first = gws[0].publish_ok(body.clone()).await;
    let again = gws[1].publish_ok(body).await;
    assert_eq!(first["offset"], again["offset"], "{first} {again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(client.recv().await["type"], "charged");
    publish_many(&gws[0], "jobs", 1).await;
    assert_eq!(client.recv().await["type"], "tick", "no second `charged`");
}

#[tokio::test]
async fn a_user_recovers_their_personal_channel_when_reconnecting() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let client = gws[0].connect_as("42").await;
    let epoch_before = client.established()["position"].clone();
    assert_eq!(epoch_before["offset"], 0, "{}", client.established());
    client.close().await;
    for i in 0..3 {
        gws[0]
            .publish_ok(json!({"user": "42", "event": "photo_ready", "data": i}))
            .await;
    }
    let (_, history) = gws[0].get_admin("/api/history/%2342?limit=1").await;
    let epoch = history["position"]["epoch"].as_str().unwrap().to_owned();
    let url = format!(
        "{}&since_offset=1&since_epoch={epoch}",
        gws[1].ws_url_with_token(&token("42"))
    );
    let mut back = TestClient::connect(&url).await.unwrap();
    assert_eq!(
        back.established()["recovered"],
        true,
        "{}",
        back.established()
    );
    let offsets: Vec<u64> = [back.recv().await, back.recv().await]
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3]);
}

#[tokio::test]
async fn a_malformed_since_offset_is_refused_with_400() {
    let gw = TestGateway::spawn(config(None)).await;
    for bad in ["abc", "-1", "1.5", ""] {
        let url = format!("{}&since_offset={bad}", gw.ws_url_with_token(&token("42")));
        let failure = e2e::assert_refused(TestClient::connect(&url).await, 400);
        assert!(failure.body.contains("since_offset"), "{bad:?}: {failure}");
    }
}

#[tokio::test]
async fn the_in_memory_bus_recovers_the_same_way() {
    let gw = TestGateway::spawn(config(None)).await;
    let mut client = gw.connect_as("u1").await;
    client.subscribe_ok(&["jobs"]).await;
    publish_many(&gw, "jobs", 2).await;
    let frame = client.recv().await;
    let epoch = frame["epoch"].clone();
    client.close().await;
    publish_many(&gw, "jobs", 10).await;
    let mut back = gw.connect_as("u1").await;
    let reply = subscribe_since(&mut back, "jobs", &position(1, &epoch)).await;
    assert_eq!(reply["recovered"]["jobs"], true, "{reply}");
    assert_consecutive(&offsets_until(&mut back, "jobs", 12).await, 2, 12);
}

#[tokio::test]
async fn the_publisher_library_gets_offsets_and_survives_a_script_flush() {
    use publisher::{Event, Publisher};
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 1).await;
    let mut client = gws[0].connect_as("u1").await;
    client.subscribe_ok(&["jobs"]).await;
    let publisher = Publisher::connect(&redis.url()).unwrap();
    let receipts = publisher
        .publish(&Event::to_channel("jobs", "tick", &1).unwrap())
        .await
        .unwrap();
    assert_eq!(receipts[0].position.as_ref().unwrap().offset, 1);

    // Redis forgets its scripts: the next batch loads it again and publishes each event once.
    redis.cli(&["SCRIPT", "FLUSH"]).await;
    let batch = [
        Event::to_channel("jobs", "tick", &2).unwrap(),
        Event::broadcast("notice", &"all").unwrap(),
        Event::to_channel("jobs", "tick", &3).unwrap(),
    ];
    let receipts = publisher.publish_batch(&batch).await.unwrap();
    let offsets: Vec<Option<u64>> = receipts
        .iter()
        .map(|r| r.position.as_ref().map(|p| p.offset))
        .collect();
    assert_eq!(offsets, [Some(2), None, Some(3)]);
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let frame = client.recv().await;
        kinds.push(format!(
            "{}:{}",
            frame["type"].as_str().unwrap(),
            frame["data"]
        ));
    }
    // Each event once; per channel in order (order across topics is not promised).
    let ticks: Vec<&String> = kinds.iter().filter(|k| k.starts_with("tick")).collect();
    assert_eq!(ticks, ["tick:1", "tick:2", "tick:3"]);
    assert_eq!(kinds.iter().filter(|k| k.starts_with("notice")).count(), 1);
    client.expect_no_frame(Duration::from_millis(300)).await;
}
