//! The cluster view: stats, clients, channels and presence answer for the whole cluster from
//! any replica, operator actions reach every replica, a dead replica leaves no ghosts, and the
//! per-user connection cap holds across replicas.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::{GatewayConfig, StatusCode, TestClient, TestGateway, TestRedis, eventually, token};
use futures_util::future::join_all;
use serde_json::{Value, json};

const NAMESPACES: &str = r#"
[namespaces.room]
subscribe = "public"
presence = true
join_leave = true
"#;

async fn replicas(redis: &TestRedis, n: usize, extra: &[(&str, &str)]) -> Vec<TestGateway> {
    join_all((0..n).map(|i| {
        let mut config = GatewayConfig::new()
            .redis_url(&redis.url())
            .node_id(&format!("node-{i}"))
            .namespaces_toml(NAMESPACES)
            .env("GATEWAY_NODE_LEASE", "3s");
        for (key, value) in extra {
            config = config.env(key, *value);
        }
        TestGateway::spawn(config)
    }))
    .await
}

async fn get_ok(gw: &TestGateway, path: &str) -> Value {
    let (status, body) = gw.get_admin(path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

#[tokio::test]
async fn stats_clients_and_channels_agree_with_what_is_open() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 3, &[]).await;
    let mut a1 = gws[0].connect_as("alice").await;
    let mut a2 = gws[1].connect_as("alice").await;
    let mut bob = gws[2].connect_as("bob").await;
    a1.subscribe_ok(&["jobs"]).await;
    a2.subscribe_ok(&["jobs", "photos"]).await;
    let reply = bob
        .request(json!({"type": "register", "client_type": "gui", "client_name": "Desktop"}))
        .await;
    assert_eq!(reply["type"], "registered");

    for gw in &gws {
        let stats = get_ok(gw, "/api/stats").await;
        assert_eq!(stats["total_connections"], 3, "{stats}");
        assert_eq!(stats["connected_users"], 2, "{stats}");
        let nodes = stats["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3, "{stats}");
        for node in nodes {
            assert_eq!(node["connections"], 1, "{stats}");
            assert!(node["uptime_s"].is_u64());
        }
    }
    let alice = get_ok(&gws[2], "/api/clients?user=alice").await;
    assert_eq!(alice["total"], 2, "{alice}");
    let on_photos = get_ok(&gws[0], "/api/clients?channel=photos").await;
    assert_eq!(
        on_photos["clients"][0]["client_id"],
        a2.client_id(),
        "{on_photos}"
    );
    assert_eq!(on_photos["clients"][0]["node_id"], "node-1");
    let gui = get_ok(&gws[1], "/api/clients?client_type=gui").await;
    assert_eq!(gui["total"], 1, "{gui}");
    assert_eq!(gui["clients"][0]["client_name"], "Desktop");
    let channels = get_ok(&gws[1], "/api/channels").await;
    let jobs = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "jobs")
        .cloned()
        .unwrap_or_else(|| panic!("jobs missing: {channels}"));
    assert_eq!(jobs["subscribers"], 2, "{channels}");
}

#[tokio::test]
async fn disconnect_by_user_closes_that_users_sockets_on_every_replica_with_4004() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 3, &[]).await;
    let mut targets = Vec::new();
    for gw in &gws {
        targets.push(gw.connect_as("mallory").await);
    }
    let mut bystander = gws[0].connect_as("carol").await;
    let (status, reply) = gws[1]
        .post_admin(
            "/api/disconnect",
            json!({"user": "mallory", "reason": "abuse"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["disconnected"], 3);
    for target in &mut targets {
        target.expect_close(4004).await;
    }
    let pong = bystander.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    let (status, _) = gws[0]
        .post_admin(
            "/api/disconnect",
            json!({"client_id": bystander.client_id(), "code": 4200}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    bystander.expect_close(4200).await;
    let (status, _) = gws[0]
        .post_admin("/api/disconnect", json!({"user": "x", "client_id": "y"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unsubscribe_by_user_works_on_every_replica() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2, &[]).await;
    let mut one = gws[0].connect_as("dave").await;
    let mut two = gws[1].connect_as("dave").await;
    one.subscribe_ok(&["jobs"]).await;
    two.subscribe_ok(&["jobs"]).await;
    let (status, reply) = gws[0]
        .post_admin(
            "/api/unsubscribe",
            json!({"user": "dave", "channel": "jobs"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["unsubscribed"], 2);
    for client in [&mut one, &mut two] {
        let frame = client.recv().await;
        assert_eq!(frame, json!({"type": "unsubscribed", "channels": ["jobs"]}));
    }
    gws[1]
        .publish_ok(json!({"channel": "jobs", "event": "tick", "data": 1}))
        .await;
    gws[1]
        .publish_ok(json!({"user": "dave", "event": "sentinel", "data": 1}))
        .await;
    for client in [&mut one, &mut two] {
        assert_eq!(
            client.recv().await["type"],
            "sentinel",
            "no event after unsubscribe"
        );
    }
}

#[tokio::test]
async fn presence_lists_every_tab_and_join_leave_events_follow_connections() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2, &[]).await;
    let mut watcher = gws[0].connect_as("watcher").await;
    watcher.subscribe_ok(&["room:1"]).await;
    let mut tab1 = gws[0].connect_as("erin").await;
    let mut tab2 = gws[1].connect_as("erin").await;
    tab1.subscribe_ok(&["room:1"]).await;
    tab2.subscribe_ok(&["room:1"]).await;
    let mut joins = Vec::new();
    for _ in 0..2 {
        let join = watcher.recv_type("join").await;
        assert_eq!(join["channel"], "room:1");
        assert_eq!(join["data"]["user_id"], "erin");
        joins.push(join["data"]["client_id"].as_str().unwrap().to_owned());
    }
    joins.sort();
    let mut tabs = vec![tab1.client_id().to_owned(), tab2.client_id().to_owned()];
    tabs.sort();
    assert_eq!(joins, tabs, "one join per connection");

    let reply = watcher
        .request(json!({"type": "presence", "channel": "room:1"}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["clients"].as_array().unwrap().len(), 3, "{reply}");
    let api = get_ok(&gws[1], "/api/presence/room:1").await;
    assert_eq!(api["clients"], reply["clients"]);

    let left_id = tab2.client_id().to_owned();
    tab2.close().await;
    let leave = watcher.recv_type("leave").await;
    assert_eq!(leave["data"]["client_id"], left_id.as_str());
    let reply = watcher
        .request(json!({"type": "presence", "channel": "room:1"}))
        .await;
    assert_eq!(reply["clients"].as_array().unwrap().len(), 2, "{reply}");
    let refused = watcher
        .request(json!({"type": "presence", "channel": "jobs"}))
        .await;
    assert_eq!(refused["code"], "not_available", "{refused}");
}

#[tokio::test]
async fn a_killed_replica_vanishes_from_the_cluster_view_and_its_clients_leave() {
    let redis = TestRedis::start().await;
    let mut gws = replicas(&redis, 3, &[]).await;
    let mut watcher = gws[0].connect_as("watcher").await;
    watcher.subscribe_ok(&["room:9"]).await;
    let mut doomed = gws[2].connect_as("frank").await;
    doomed.subscribe_ok(&["room:9"]).await;
    let doomed_id = doomed.client_id().to_owned();
    assert_eq!(
        watcher.recv_type("join").await["data"]["client_id"],
        doomed_id.as_str()
    );
    assert_eq!(get_ok(&gws[1], "/api/stats").await["total_connections"], 2);

    gws[2].kill().await;
    let killed_at = Instant::now();
    let leave = watcher.recv_type("leave").await;
    assert_eq!(leave["data"]["client_id"], doomed_id.as_str());
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "the leave came within a few lease times"
    );
    eventually(
        Duration::from_secs(10),
        "the dead node is out of stats",
        || async {
            let stats = get_ok(&gws[1], "/api/stats").await;
            stats["total_connections"] == 1 && stats["nodes"].as_array().unwrap().len() == 2
        },
    )
    .await;
    let clients = get_ok(&gws[0], "/api/clients?user=frank").await;
    assert_eq!(clients["total"], 0, "{clients}");
    let presence = get_ok(&gws[1], "/api/presence/room:9").await;
    assert_eq!(
        presence["clients"].as_array().unwrap().len(),
        1,
        "{presence}"
    );
}

#[tokio::test]
async fn the_per_user_cap_holds_across_replicas() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 3, &[("GATEWAY_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let first = gws[0].connect_as("grace").await;
    let _second = gws[1].connect_as("grace").await;
    let mut third = TestClient::connect_raw(&gws[2].ws_url_with_token(&token("grace"))).await;
    third.expect_close(4102).await;
    let _other_user = gws[2].connect_as("heidi").await;
    first.close().await;
    eventually(Duration::from_secs(10), "a slot is free again", || async {
        let mut again = TestClient::connect_raw(&gws[2].ws_url_with_token(&token("grace"))).await;
        let frame = again.recv_or_close().await;
        frame.is_ok_and(|f| f["type"] == "connection_established")
    })
    .await;
}
