//! The client protocol: the first frame, request/reply frames and their ids, bad input that
//! gets an `error` and bad input that ends the connection; health endpoints.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    GatewayConfig, StatusCode, TestGateway, assert_error, assert_recent_rfc3339, subscribe_outcome,
};
use serde_json::json;

async fn gateway() -> TestGateway {
    TestGateway::spawn(GatewayConfig::new()).await
}

#[tokio::test]
async fn connection_established_describes_the_connection() {
    let gw = TestGateway::spawn(GatewayConfig::new().env("GATEWAY_HEARTBEAT_INTERVAL", "7s")).await;
    let client = gw.connect_as("42").await;
    let frame = client.established();
    assert_eq!(frame["type"], "connection_established");
    assert!(!client.client_id().is_empty(), "{frame}");
    assert_eq!(frame["user_id"], "42");
    assert_eq!(frame["node_id"], gw.node_id());
    assert_eq!(frame["heartbeat_interval_ms"], 7000, "{frame}");
    assert_recent_rfc3339(&frame["timestamp"]);

    let other = gw.connect_as("42").await;
    assert_ne!(
        other.client_id(),
        client.client_id(),
        "client ids are unique"
    );
}

#[tokio::test]
async fn register_replies_registered_with_the_client_id() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    let reply = client
        .request(
            json!({"type": "register", "client_type": "gui", "client_name": "Desktop GUI v2.0"}),
        )
        .await;
    assert_eq!(reply["type"], "registered", "{reply}");
    assert_eq!(reply["client_id"], client.client_id());
}

const FORBIDDEN_NAMESPACE: &str = r#"
[namespaces.default]
subscribe = "public"

[namespaces.personal]

[namespaces.admin]
subscribe = "none"
"#;

#[tokio::test]
async fn subscribe_accepts_public_channels_and_rejects_forbidden_and_invalid_ones() {
    let gw = TestGateway::spawn(GatewayConfig::new().namespaces_toml(FORBIDDEN_NAMESPACE)).await;
    let mut client = gw.connect_as("42").await;
    let reply = client
        .subscribe(&["jobs", "admin:panel", "bad name!", "photos"])
        .await;
    let (accepted, rejected) = subscribe_outcome(&reply);
    assert_eq!(accepted, ["jobs", "photos"], "{reply}");
    assert_eq!(
        rejected.get("admin:panel").map(String::as_str),
        Some("forbidden"),
        "{reply}"
    );
    assert_eq!(
        rejected.get("bad name!").map(String::as_str),
        Some("invalid_channel"),
        "{reply}"
    );
    assert_eq!(rejected.len(), 2, "{reply}");
    for entry in reply["rejected"].as_array().unwrap() {
        assert!(
            entry["message"].is_string(),
            "a rejection explains itself: {entry}"
        );
    }
}

#[tokio::test]
async fn unsubscribe_replies_unsubscribed_and_stops_delivery() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    client.subscribe_ok(&["jobs"]).await;
    let reply = client
        .request(json!({"type": "unsubscribe", "channels": ["jobs"]}))
        .await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    assert_eq!(reply["channels"], json!(["jobs"]), "{reply}");

    gw.publish_ok(json!({"channel": "jobs", "event": "job_done", "data": {}}))
        .await;
    gw.publish_ok(json!({"user": "42", "event": "sentinel", "data": {}}))
        .await;
    assert_eq!(client.recv().await["type"], "sentinel");
    client.expect_no_frame(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ping_and_heartbeat_get_pong() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    for ty in ["ping", "heartbeat"] {
        let reply = client.request(json!({"type": ty})).await;
        assert_eq!(reply["type"], "pong", "{ty}: {reply}");
    }
    // Without an id too.
    client.send_json(json!({"type": "ping"})).await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "pong");
    assert!(
        reply.get("id").is_none(),
        "no id asked, none echoed: {reply}"
    );
}

#[tokio::test]
async fn replies_echo_numeric_and_string_ids() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    client.send_json(json!({"type": "ping", "id": 7})).await;
    let reply = client.recv().await;
    assert_eq!((&reply["type"], &reply["id"]), (&json!("pong"), &json!(7)));
    client
        .send_json(json!({"type": "ping", "id": "abc-1"}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&json!("pong"), &json!("abc-1"))
    );
    client
        .send_json(json!({"type": "subscribe", "id": "s1", "channels": ["jobs"]}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&json!("subscribed"), &json!("s1"))
    );
    client
        .send_json(json!({"type": "no_such_thing", "id": 99}))
        .await;
    let error = client.recv().await;
    assert_eq!(error["id"], 99, "errors carry the id too: {error}");
}

#[tokio::test]
async fn unknown_type_gets_unknown_type_error_and_the_connection_stays() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    let reply = client.request(json!({"type": "teleport"})).await;
    assert_error(&reply, "unknown_type");
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn invalid_json_gets_bad_request_and_the_connection_stays() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    client.send_raw_text("{not json").await;
    assert_error(&client.recv().await, "bad_request");
    client.send_raw_text("[1, 2, 3]").await;
    assert_error(&client.recv().await, "bad_request");
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn missing_field_gets_bad_request() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    let reply = client.request(json!({"type": "subscribe"})).await;
    assert_error(&reply, "bad_request");
    let reply = client.request(json!({"channels": ["jobs"]})).await;
    assert_error(&reply, "bad_request");
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn binary_frame_gets_bad_request() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    client.send_binary(br#"{"type":"ping"}"#.to_vec()).await;
    assert_error(&client.recv().await, "bad_request");
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

/// Garbage is sent one frame at a time, each answered, so that the close is not lost in a
/// reset caused by frames the server never read.
#[tokio::test]
async fn client_that_keeps_sending_garbage_is_closed_with_4003() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    for attempt in 1..=100 {
        // The server may close right after an answer; then the read below sees the close.
        let _ = client.try_send_text("garbage").await;
        match client.recv_or_close().await {
            Ok(frame) => {
                assert_error(&frame, "bad_request");
            }
            Err(closed) => {
                assert_eq!(
                    closed.code,
                    Some(4003),
                    "closed after {attempt} garbage frames: {closed:?}"
                );
                return;
            }
        }
    }
    panic!("100 garbage frames and the connection is still open");
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let gw = gateway().await;
    let (status, _) = gw.get_public("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.admin_status("/readyz").await, Some(StatusCode::OK));
}
