//! Who may subscribe and publish where: namespaces from the TOML config, `channels` claims,
//! user-limited channels, and the per-connection channel cap.
#![allow(clippy::unwrap_used)]

use e2e::{
    GatewayConfig, TestClient, TestGateway, TokenBuilder, assert_error, assert_event,
    subscribe_outcome,
};
use serde_json::json;

const NAMESPACES: &str = r#"
[namespaces.default]
subscribe = "public"

[namespaces.personal]

[namespaces.news]
subscribe = "public"

[namespaces.room]
subscribe = "claims"
client_publish = true

[namespaces.secret]
subscribe = "none"
"#;

async fn gateway() -> TestGateway {
    TestGateway::spawn(GatewayConfig::new().namespaces_toml(NAMESPACES)).await
}

async fn connect_with_claims(gw: &TestGateway, user: &str, patterns: &[&str]) -> TestClient {
    let token = TokenBuilder::new(user).channels(patterns).sign();
    gw.connect_token(&token).await.unwrap()
}

/// Subscribes to one channel and returns the rejection code, or `None` if accepted.
async fn rejection(client: &mut TestClient, channel: &str) -> Option<String> {
    let reply = client.subscribe(&[channel]).await;
    let (accepted, mut rejected) = subscribe_outcome(&reply);
    match rejected.remove(channel) {
        Some(code) => Some(code),
        None => {
            assert_eq!(accepted, [channel], "{reply}");
            None
        }
    }
}

#[tokio::test]
async fn public_namespace_is_open_to_everyone() {
    let gw = gateway().await;
    let mut client = gw.connect_as("7").await;
    client.subscribe_ok(&["news:1", "lobby"]).await;
}

#[tokio::test]
async fn claims_namespace_needs_a_matching_channels_claim() {
    let gw = gateway().await;
    let mut member = connect_with_claims(&gw, "42", &["room:*"]).await;
    assert_eq!(rejection(&mut member, "room:1").await, None);
    let mut other_rooms = connect_with_claims(&gw, "43", &["room:2"]).await;
    assert_eq!(
        rejection(&mut other_rooms, "room:1").await.as_deref(),
        Some("forbidden")
    );
    let mut outsider = gw.connect_as("7").await;
    assert_eq!(
        rejection(&mut outsider, "room:1").await.as_deref(),
        Some("forbidden")
    );
}

#[tokio::test]
async fn none_namespace_is_closed_to_everyone() {
    let gw = gateway().await;
    let mut plain = gw.connect_as("7").await;
    assert_eq!(
        rejection(&mut plain, "secret:1").await.as_deref(),
        Some("forbidden")
    );
    let mut with_claim = connect_with_claims(&gw, "42", &["secret:*"]).await;
    assert_eq!(
        rejection(&mut with_claim, "secret:1").await.as_deref(),
        Some("forbidden")
    );
}

#[tokio::test]
async fn user_limited_channel_admits_only_listed_users() {
    let gw = gateway().await;
    let mut listed = gw.connect_as("42").await;
    assert_eq!(rejection(&mut listed, "notifications#42,43").await, None);
    let mut unlisted = gw.connect_as("7").await;
    assert_eq!(
        rejection(&mut unlisted, "notifications#42,43")
            .await
            .as_deref(),
        Some("forbidden")
    );
    // Someone else's personal channel is user-limited too.
    assert_eq!(
        rejection(&mut unlisted, "#42").await.as_deref(),
        Some("forbidden")
    );
}

#[tokio::test]
async fn unknown_namespace_is_rejected() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    assert_eq!(
        rejection(&mut client, "nope:1").await.as_deref(),
        Some("unknown_namespace")
    );
}

#[tokio::test]
async fn client_publish_is_delivered_where_the_namespace_allows_it() {
    let gw = gateway().await;
    let mut alice = connect_with_claims(&gw, "alice", &["room:*"]).await;
    let mut bob = connect_with_claims(&gw, "bob", &["room:*"]).await;
    alice.subscribe_ok(&["room:1"]).await;
    bob.subscribe_ok(&["room:1"]).await;
    let data = json!({"typing": true});
    let reply = alice
        .request(json!({"type": "publish", "channel": "room:1", "event": "typing", "data": data}))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");
    assert_event(&bob.recv().await, "typing", Some("room:1"), &data);
}

#[tokio::test]
async fn client_publish_is_forbidden_elsewhere() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    client.subscribe_ok(&["news:1"]).await;
    let reply = client
        .request(json!({"type": "publish", "channel": "news:1", "event": "fake_news", "data": {}}))
        .await;
    assert_error(&reply, "forbidden");
    let reply = client
        .request(json!({"type": "publish", "channel": "lobby", "event": "shout", "data": {}}))
        .await;
    assert_error(&reply, "forbidden");
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

/// The personal channel the server subscribes by itself does not count against the cap.
#[tokio::test]
async fn fourth_channel_is_rejected_when_the_cap_is_three() {
    let config = GatewayConfig::new().env("GATEWAY_MAX_CHANNELS_PER_CONNECTION", "3");
    let gw = TestGateway::spawn(config).await;
    let mut client = gw.connect_as("42").await;
    let reply = client.subscribe(&["a", "b", "c", "d"]).await;
    let (accepted, rejected) = subscribe_outcome(&reply);
    assert_eq!(accepted, ["a", "b", "c"], "{reply}");
    assert_eq!(
        rejected.get("d").map(String::as_str),
        Some("limit_exceeded"),
        "{reply}"
    );
    // Leaving one makes room for another.
    let reply = client
        .request(json!({"type": "unsubscribe", "channels": ["a"]}))
        .await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    client.subscribe_ok(&["d"]).await;
}
