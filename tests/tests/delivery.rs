//! Delivery of events published through the admin API: to a channel, several channels, a
//! user, a client type or everyone, with an excluded connection; and the API's refusals.
//!
//! "Does not receive" is proven by ordering: after the event that must not arrive, a sentinel
//! is published to the same client; the next frame must be the sentinel, and nothing may
//! trail it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    GatewayConfig, StatusCode, TestClient, TestGateway, TokenBuilder, assert_event,
    assert_http_error,
};
use serde_json::{Value, json};

async fn gateway() -> TestGateway {
    TestGateway::spawn(GatewayConfig::new()).await
}

/// Publishes a sentinel to `user` and asserts that it is the next frame of `client`, with
/// nothing after it.
async fn assert_next_is_sentinel(gw: &TestGateway, client: &mut TestClient, user: &str) {
    gw.publish_ok(json!({"user": user, "event": "sentinel", "data": {}}))
        .await;
    let frame = client.recv().await;
    assert_eq!(
        frame["type"], "sentinel",
        "expected only the sentinel, got {frame}"
    );
    client.expect_no_frame(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn channel_event_arrives_in_the_event_shape() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    let data =
        json!({"job_id": "abc", "progress": 45.5, "tags": ["a", "b"], "nested": {"n": null}});
    let reply = gw
        .publish_ok(json!({"channel": "jobs", "event": "job_progress", "data": data}))
        .await;
    assert!(reply.is_object(), "publish replies with an object: {reply}");
    let frame = client.recv().await;
    assert_event(&frame, "job_progress", Some("jobs"), &data);
}

#[tokio::test]
async fn user_event_reaches_both_connections_of_that_user_only() {
    let gw = gateway().await;
    let mut desktop = gw.connect_as("42").await;
    let mut phone = gw.connect_as("42").await;
    let mut someone_else = gw.connect_as("43").await;
    let data = json!({"text": "hello 42"});
    gw.publish_ok(json!({"user": "42", "event": "notification", "data": data}))
        .await;
    for client in [&mut desktop, &mut phone] {
        let frame = client.recv().await;
        assert_event(&frame, "notification", Some("#42"), &data);
    }
    assert_next_is_sentinel(&gw, &mut someone_else, "43").await;
}

#[tokio::test]
async fn client_type_event_reaches_registered_clients_only() {
    let gw = gateway().await;
    let mut gui = gw.connect_as("1").await;
    let mut mobile = gw.connect_as("2").await;
    let mut unregistered = gw.connect_as("3").await;
    for (client, client_type) in [(&mut gui, "gui"), (&mut mobile, "mobile")] {
        let reply = client
            .request(json!({"type": "register", "client_type": client_type}))
            .await;
        assert_eq!(reply["type"], "registered", "{reply}");
    }
    let data = json!({"version": "2.1"});
    gw.publish_ok(json!({"client_type": "gui", "event": "update_available", "data": data}))
        .await;
    assert_event(&gui.recv().await, "update_available", None, &data);
    assert_next_is_sentinel(&gw, &mut mobile, "2").await;
    assert_next_is_sentinel(&gw, &mut unregistered, "3").await;
}

#[tokio::test]
async fn client_type_claim_in_the_token_targets_the_connection() {
    let gw = gateway().await;
    let token = TokenBuilder::new("42").client_type("mobile").sign();
    let mut phone = gw.connect_token(&token).await.unwrap();
    let mut desktop = gw.connect_as("42").await;
    let data = json!({"badge": 3});
    gw.publish_ok(json!({"client_type": "mobile", "event": "badge", "data": data}))
        .await;
    assert_event(&phone.recv().await, "badge", None, &data);
    assert_next_is_sentinel(&gw, &mut desktop, "42").await;
}

#[tokio::test]
async fn broadcast_reaches_every_connection() {
    let gw = gateway().await;
    let mut clients = Vec::new();
    for user in ["1", "2", "3"] {
        clients.push(gw.connect_as(user).await);
    }
    let data = json!({"message": "maintenance at 22:00"});
    gw.publish_ok(json!({"broadcast": true, "event": "announcement", "data": data}))
        .await;
    for client in &mut clients {
        assert_event(&client.recv().await, "announcement", None, &data);
    }
}

#[tokio::test]
async fn publish_to_several_channels_reaches_each_channel() {
    let gw = gateway().await;
    let mut both = gw.connect_as("1").await;
    both.subscribe_ok(&["alpha", "beta"]).await;
    let mut beta_only = gw.connect_as("2").await;
    beta_only.subscribe_ok(&["beta"]).await;
    let data = json!({"n": 1});
    let reply = gw
        .publish_ok(json!({"channels": ["alpha", "beta"], "event": "tick", "data": data}))
        .await;
    let replies = reply["channels"]
        .as_object()
        .unwrap_or_else(|| panic!("{reply}"));
    assert!(
        replies.contains_key("alpha") && replies.contains_key("beta"),
        "one reply per channel: {reply}"
    );

    let mut seen: Vec<String> = Vec::new();
    for _ in 0..2 {
        let frame = both.recv().await;
        let channel = frame["channel"].as_str().unwrap().to_owned();
        assert_event(&frame, "tick", Some(&channel), &data);
        seen.push(channel);
    }
    seen.sort();
    assert_eq!(seen, ["alpha", "beta"]);
    assert_event(&beta_only.recv().await, "tick", Some("beta"), &data);
    assert_next_is_sentinel(&gw, &mut beta_only, "2").await;
}

#[tokio::test]
async fn exclude_client_skips_that_connection() {
    let gw = gateway().await;
    let mut sender = gw.connect_as("42").await;
    let mut other = gw.connect_as("43").await;
    for client in [&mut sender, &mut other] {
        client.subscribe_ok(&["room"]).await;
    }
    let data = json!({"text": "hi"});
    gw.publish_ok(json!({
        "channel": "room", "event": "message", "data": data,
        "exclude_client": sender.client_id(),
    }))
    .await;
    assert_event(&other.recv().await, "message", Some("room"), &data);
    // Same channel, so the order is guaranteed: the excluded event would come first.
    gw.publish_ok(json!({"channel": "room", "event": "sentinel", "data": {}}))
        .await;
    assert_eq!(sender.recv().await["type"], "sentinel");
    assert_eq!(other.recv().await["type"], "sentinel");
}

#[tokio::test]
async fn publish_without_or_with_a_wrong_api_key_is_401() {
    let gw = gateway().await;
    let body = json!({"broadcast": true, "event": "hello", "data": {}});
    for key in [None, Some("wrong-key"), Some("")] {
        let (status, reply) = gw
            .post_admin_with_key("/api/publish", key, body.clone())
            .await;
        assert_http_error(status, &reply, StatusCode::UNAUTHORIZED);
    }
    gw.publish_ok(body).await;
}

#[tokio::test]
async fn invalid_publish_bodies_are_400_with_an_error_code() {
    let gw = gateway().await;
    let invalid: [(&str, Value); 6] = [
        ("no target", json!({"event": "hello", "data": {}})),
        (
            "two targets",
            json!({"channel": "jobs", "user": "42", "event": "hello"}),
        ),
        (
            "reserved event name",
            json!({"channel": "jobs", "event": "pong"}),
        ),
        (
            "invalid channel name",
            json!({"channel": "bad name", "event": "hello"}),
        ),
        ("no event", json!({"channel": "jobs", "data": {}})),
        ("not an object", json!(["jobs"])),
    ];
    for (what, body) in invalid {
        let (status, reply) = gw.publish(body.clone()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{what}: {body} answered {reply}"
        );
        assert_http_error(status, &reply, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn batch_publish_answers_each_item_in_order() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    let (status, replies) = gw
        .publish_batch(json!([
            {"channel": "jobs", "event": "first", "data": 1},
            {"channel": "jobs", "event": "pong"},
            {"channel": "jobs", "event": "second", "data": 2},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK, "{replies}");
    let replies = replies.as_array().unwrap_or_else(|| panic!("{replies}"));
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(replies[0].get("error").is_none(), "{replies:?}");
    assert!(replies[1]["error"]["code"].is_string(), "{replies:?}");
    assert!(replies[2].get("error").is_none(), "{replies:?}");
    assert_event(&client.recv().await, "first", Some("jobs"), &json!(1));
    assert_event(&client.recv().await, "second", Some("jobs"), &json!(2));
}
