//! Tests of a session over an in-memory socket: a real single node (memory bus, history and
//! registry), one `tokio::io::duplex` per connection, and a tungstenite client on the other end.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use publisher::wire::{EventName, Position, Target};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{DuplexStream, duplex};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::Role;

use crate::auth::Claims;
use crate::config::{Args, Config};
use crate::node::Node;
use crate::protocol::Encoding;
use crate::view::Transport;

/// How long a test waits for what it expects: long on a loaded machine, short enough that a
/// hang fails the test rather than the run.
const PATIENCE: Duration = Duration::from_secs(15);
const HOUR: Duration = Duration::from_secs(3600);

/// `default` keeps history (so `jobs` does), `chat` does not, `room` takes client publishes,
/// `internal` admits no client.
const NAMESPACES: &str = r#"
[namespaces.default]
history_size = 100
history_ttl = "10m"

[namespaces.chat]

[namespaces.room]
client_publish = true

[namespaces.internal]
subscribe = "none"
"#;

/// The command line every test node starts from.
const COMMAND: &str = "gateway --jwt-secret tests-secret --api-key tests-key --node-id node-a";

/// A node as `gateway::run` builds it, with `flags` over the test's keys and namespaces.
fn start_node(flags: &[&str]) -> Arc<Node> {
    let file = std::env::temp_dir().join(format!("gw-session-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&file, NAMESPACES).unwrap();
    let path = file.to_str().unwrap().to_owned();
    let mut args: Vec<&str> = COMMAND.split(' ').collect();
    args.extend(["--config", &path]);
    args.extend_from_slice(flags);
    let config = Config::load(Args::parse_from(args));
    let _ = std::fs::remove_file(&file);
    let (node, inbox) = crate::build_node(config.unwrap()).unwrap();
    crate::spawn_node_tasks(&node, inbox);
    node
}

fn token(node: &Node, user: &str, ttl: Duration) -> String {
    node.auth.demo_token(user, ttl).unwrap()
}

fn claims(node: &Node, user: &str) -> Claims {
    node.auth.verify(&token(node, user, HOUR)).unwrap()
}

/// A client on the other end of a session's socket.
struct Client {
    ws: WebSocketStream<DuplexStream>,
    session: JoinHandle<()>,
}

impl Client {
    /// Opens a session over a socket that holds `buffer` bytes each way; with `claims` `None`,
    /// the session waits for an `auth` frame.
    async fn open(node: &Arc<Node>, claims: Option<Claims>, buffer: usize) -> Self {
        let (server_io, client_io) = duplex(buffer);
        let opening = super::Opening {
            claims,
            since: None,
            transport: Transport::Websocket,
            encoding: Encoding::default(),
        };
        let session = tokio::spawn(super::run(Arc::clone(node), server_io, opening));
        let ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        Self { ws, session }
    }

    /// A session for `user`, past its `connection_established`, which is returned with it.
    async fn connect(node: &Arc<Node>, user: &str) -> (Self, Value) {
        let mut client = Self::open(node, Some(claims(node, user)), 64 * 1024).await;
        let established = client.recv_json().await;
        assert_eq!(established["type"], "connection_established");
        (client, established)
    }

    async fn send_json(&mut self, frame: Value) {
        self.send(Message::text(frame.to_string())).await;
    }

    async fn send(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// Sends a frame and returns the next text frame.
    async fn request(&mut self, frame: Value) -> Value {
        self.send_json(frame).await;
        self.recv_json().await
    }

    /// Subscribes to `channels` and returns the `subscribed` reply.
    async fn subscribe(&mut self, channels: &[&str]) -> Value {
        let subscribed = self
            .request(json!({"type": "subscribe", "channels": channels}))
            .await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        subscribed
    }

    /// The next text frame, as JSON; fails the test on anything else or on silence.
    async fn recv_json(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads up to the server's close frame, answers it, and returns its code with the text
    /// frames that came before it.
    async fn recv_close(&mut self) -> (u16, Vec<Value>) {
        let mut texts = Vec::new();
        loop {
            match self.next_message().await {
                Message::Text(text) => texts.push(serde_json::from_str(&text).unwrap()),
                Message::Close(Some(frame)) => {
                    // Sends tungstenite's close reply, which the server waits for.
                    let _ = self.ws.flush().await;
                    return (u16::from(frame.code), texts);
                }
                Message::Close(None) => panic!("close frame without a code"),
                _ => {}
            }
        }
    }

    async fn next_message(&mut self) -> Message {
        match timeout(PATIENCE, self.ws.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => panic!("socket failed: {error}"),
            Ok(None) => panic!("socket ended without a close frame"),
            Err(_) => panic!("nothing from the server within {PATIENCE:?}"),
        }
    }

    /// Waits until the session's task has ended.
    async fn session_ended(self) {
        timeout(PATIENCE, self.session)
            .await
            .expect("the session did not end")
            .unwrap();
    }
}

/// Publishes `job_progress` with `data` on `channel` as the admin API does; returns the
/// event's position where the channel keeps history.
async fn publish(node: &Node, channel: &str, data: Value) -> Option<Position> {
    publish_to(node, Target::Channel(channel), data).await
}

async fn publish_to(node: &Node, target: Target<'_>, data: Value) -> Option<Position> {
    let data = RawValue::from_string(data.to_string()).unwrap();
    let event = EventName::parse("job_progress").unwrap();
    let published = node.hub.publish(target, &event, Some(&data), None, None);
    published.await.unwrap().position
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_first_frame_is_connection_established_with_the_user_and_heartbeat() {
    let node = start_node(&[]);
    let (_client, established) = Client::connect(&node, "alice").await;
    assert_eq!(established["user_id"], "alice");
    assert_eq!(established["node_id"], "node-a");
    assert_eq!(established["heartbeat_interval_ms"], 25_000);
    assert!(!established["client_id"].as_str().unwrap().is_empty());
    // The personal channel keeps no history, so there is no position to give.
    assert_eq!(established.get("position"), None);
    assert_eq!(node.hub.connection_count(), 1);
}

#[tokio::test]
async fn ping_is_answered_with_pong_carrying_the_same_id() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    let pong = client.request(json!({"type": "ping", "id": 7})).await;
    assert_eq!(pong, json!({"type": "pong", "id": 7}));
    let pong = client
        .request(json!({"type": "heartbeat", "id": "h-1"}))
        .await;
    assert_eq!(pong, json!({"type": "pong", "id": "h-1"}));
}

#[tokio::test]
async fn subscribed_gives_positions_of_history_channels_and_events_carry_offsets() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    let subscribed = client
        .request(json!({"type": "subscribe", "id": 1, "channels": ["jobs", "chat:1"]}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["id"], 1);
    assert_eq!(subscribed["channels"], json!(["jobs", "chat:1"]));
    assert_eq!(subscribed["rejected"], json!([]));
    assert_eq!(subscribed["positions"]["jobs"]["offset"], 0);
    assert!(subscribed["positions"].get("chat:1").is_none());

    let position = publish(&node, "jobs", json!({"job_id": "abc", "progress": 45.5})).await;
    let event = client.recv_json().await;
    assert_eq!(event["type"], "job_progress");
    assert_eq!(event["channel"], "jobs");
    assert_eq!(event["data"], json!({"job_id": "abc", "progress": 45.5}));
    assert_eq!(event["offset"], 1);
    assert_eq!(event["epoch"], position.unwrap().epoch.as_str());

    publish(&node, "chat:1", json!("hello")).await;
    let event = client.recv_json().await;
    assert_eq!(event["channel"], "chat:1");
    assert!(event.get("offset").is_none() && event.get("epoch").is_none());
}

#[tokio::test]
async fn a_bad_frame_gets_an_error_with_its_code_and_the_connection_stays_open() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    let bad = [
        (Message::text("{not json"), "bad_request", Value::Null),
        (
            Message::text(r#"{"type":"dance","id":3}"#),
            "unknown_type",
            json!(3),
        ),
        (
            Message::text(r#"{"type":"subscribe","id":"s"}"#),
            "bad_request",
            json!("s"),
        ),
        (Message::binary(vec![1, 2, 3]), "bad_request", Value::Null),
    ];
    for (frame, code, id) in bad {
        let sent = format!("{frame:?}");
        client.send(frame).await;
        let error = client.recv_json().await;
        assert_eq!(error["type"], "error", "{sent}: {error}");
        assert_eq!(error["code"], code, "{sent}: {error}");
        assert_eq!(error["id"], id, "the reply carries the frame's id: {sent}");
    }
    let pong = client.request(json!({"type": "ping", "id": 4})).await;
    assert_eq!(pong, json!({"type": "pong", "id": 4}));
}

#[tokio::test]
async fn ten_bad_frames_close_the_connection_with_4003() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    for _ in 0..10 {
        client.send(Message::text("{not json")).await;
    }
    let (code, errors) = client.recv_close().await;
    assert_eq!(code, 4003);
    assert_eq!(errors.len(), 10, "every bad frame is answered: {errors:?}");
    assert!(errors.iter().all(|e| e["code"] == "bad_request"));
    client.session_ended().await;
    assert_eq!(node.hub.connection_count(), 0);
}

#[tokio::test]
async fn forbidden_and_invalid_channels_are_rejected_with_their_code() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    let channels = [
        "jobs",
        "notifications#alice",
        "notifications#bob",
        "internal:audit",
        "has space",
        "nowhere:1",
    ];
    let subscribed = client.subscribe(&channels).await;
    assert_eq!(
        subscribed["channels"],
        json!(["jobs", "notifications#alice"])
    );
    let rejected: Vec<(&str, &str)> = subscribed["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["channel"].as_str().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        [
            ("notifications#bob", "forbidden"),
            ("internal:audit", "forbidden"),
            ("has space", "invalid_channel"),
            ("nowhere:1", "unknown_namespace"),
        ]
    );
}

#[tokio::test]
async fn after_unsubscribe_no_more_events_arrive() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    client.subscribe(&["jobs"]).await;
    publish(&node, "jobs", json!(1)).await;
    assert_eq!(client.recv_json().await["data"], 1);

    let unsubscribed = client
        .request(json!({"type": "unsubscribe", "channels": ["jobs"]}))
        .await;
    assert_eq!(
        unsubscribed,
        json!({"type": "unsubscribed", "channels": ["jobs"]})
    );
    publish(&node, "jobs", json!(2)).await;
    // The bus keeps order: once the later event arrives, the earlier one would have too.
    publish(&node, "#alice", json!("after")).await;
    let next = client.recv_json().await;
    assert_eq!(next["channel"], "#alice", "{next}");
    assert_eq!(next["data"], "after");
}

#[tokio::test]
async fn refresh_for_another_user_is_refused_and_the_old_token_stays() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    let bob = token(&node, "bob", HOUR);
    let refused = client
        .request(json!({"type": "refresh", "id": 1, "token": bob}))
        .await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "unauthorized");
    let refused = client
        .request(json!({"type": "refresh", "id": 2, "token": "not-a-jwt"}))
        .await;
    assert_eq!(refused["code"], "unauthorized");

    let alice = token(&node, "alice", Duration::from_secs(7200));
    let refreshed = client
        .request(json!({"type": "refresh", "id": 3, "token": alice}))
        .await;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    assert!(refreshed["expires_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn an_auth_frame_opens_a_session_opened_without_a_token() {
    let node = start_node(&[]);
    let mut client = Client::open(&node, None, 64 * 1024).await;
    let alice = token(&node, "alice", HOUR);
    let established = client
        .request(json!({"type": "auth", "token": alice}))
        .await;
    assert_eq!(established["type"], "connection_established");
    assert_eq!(established["user_id"], "alice");
    let error = client
        .request(json!({"type": "auth", "token": "again"}))
        .await;
    // Already authenticated.
    assert_eq!(error["code"], "bad_request", "{error}");
}

#[tokio::test]
async fn a_refused_or_missing_auth_frame_closes_with_4001() {
    let node = start_node(&[]);
    let first_frames = [
        json!({"type": "auth", "token": "not-a-jwt"}),
        json!({"type": "ping"}),
    ];
    for first in first_frames {
        let mut client = Client::open(&node, None, 64 * 1024).await;
        client.send_json(first.clone()).await;
        let (code, texts) = client.recv_close().await;
        assert_eq!(code, 4001, "{first}");
        assert!(texts.is_empty(), "no session was opened: {texts:?}");
        client.session_ended().await;
    }
    assert_eq!(node.hub.connection_count(), 0);
}

#[tokio::test]
async fn history_returns_the_events_after_since() {
    let node = start_node(&[]);
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = publish(&node, "jobs", json!(n)).await.unwrap().epoch;
    }
    let (mut client, _) = Client::connect(&node, "alice").await;
    let since = json!({"offset": 2, "epoch": epoch});
    let history = client
        .request(json!({"type": "history", "id": 9, "channel": "jobs", "since": since}))
        .await;
    assert_eq!(history["type"], "history", "{history}");
    assert_eq!(history["id"], 9);
    assert_eq!(history["position"], json!({"offset": 5, "epoch": epoch}));
    let events = history["events"].as_array().unwrap();
    assert_eq!(offsets(events), [3, 4, 5]);
    assert_eq!(events[0]["data"], 3);

    let limited = client
        .request(json!({"type": "history", "channel": "jobs", "limit": 2}))
        .await;
    assert_eq!(offsets(limited["events"].as_array().unwrap()), [4, 5]);
    let unavailable = client
        .request(json!({"type": "history", "channel": "chat:1"}))
        .await;
    assert_eq!(unavailable["code"], "not_available");
}

#[tokio::test]
async fn subscribe_with_since_replays_the_missed_events_after_subscribed() {
    let node = start_node(&[]);
    let mut epoch = String::new();
    for n in 1..=4 {
        epoch = publish(&node, "jobs", json!(n)).await.unwrap().epoch;
    }
    let (mut client, _) = Client::connect(&node, "alice").await;
    let since = json!({"jobs": {"offset": 1, "epoch": epoch}});
    let subscribed = client
        .request(json!({"type": "subscribe", "channels": ["jobs"], "since": since}))
        .await;
    assert_eq!(subscribed["recovered"], json!({"jobs": true}));
    assert_eq!(subscribed["positions"]["jobs"]["offset"], 4);
    publish(&node, "jobs", json!(5)).await;
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(client.recv_json().await);
    }
    assert_eq!(offsets(&events), [2, 3, 4, 5]);
}

#[tokio::test]
async fn a_client_that_closes_is_removed_from_the_hub() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    client.subscribe(&["jobs"]).await;
    assert_eq!(node.hub.connection_count(), 1);
    client.ws.close(None).await.unwrap();
    client.session_ended().await;
    assert_eq!(node.hub.connection_count(), 0);
    assert!(node.hub.local_channels().is_empty());
}

#[tokio::test]
async fn an_expired_token_closes_with_4002() {
    let node = start_node(&["--jwt-leeway", "0s"]);
    let short = node
        .auth
        .verify(&token(&node, "alice", Duration::from_secs(2)))
        .unwrap();
    let mut client = Client::open(&node, Some(short), 64 * 1024).await;
    let (code, texts) = client.recv_close().await;
    assert_eq!(code, 4002);
    assert_eq!(texts[0]["type"], "connection_established");
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let node = start_node(&["--max-message-bytes", "1024"]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    let pong = client
        .request(json!({"type": "ping", "pad": "x".repeat(900)}))
        .await;
    assert_eq!(pong["type"], "pong", "a frame under the limit is fine");
    client
        .send_json(json!({"type": "ping", "pad": "x".repeat(2000)}))
        .await;
    assert_eq!(client.recv_close().await.0, 1009);
}

#[tokio::test]
async fn a_flood_past_the_rate_limit_is_warned_once_then_closed_with_4101() {
    let node = start_node(&["--rate-limit-per-second", "1", "--rate-limit-burst", "1"]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    for _ in 0..60 {
        client.send_json(json!({"type": "ping"})).await;
    }
    let (code, replies) = client.recv_close().await;
    assert_eq!(code, 4101);
    assert_eq!(replies[0]["type"], "pong", "the burst is admitted");
    let warnings = replies
        .iter()
        .filter(|r| r["code"] == "rate_limited")
        .count();
    assert_eq!(warnings, 1, "{replies:?}");
}

#[tokio::test]
async fn a_silent_client_is_closed_with_1001_after_the_idle_timeout() {
    let node = start_node(&["--heartbeat-interval", "1s", "--idle-timeout", "2s"]);
    let (mut client, established) = Client::connect(&node, "alice").await;
    assert_eq!(established["heartbeat_interval_ms"], 1000);
    // A client that reads answers the server's pings and so stays alive: this one reads
    // nothing until the server has decided to close it.
    let idle_closes = node.metrics.disconnections.with_label_values(&["1001"]);
    let deadline = Instant::now() + PATIENCE;
    while idle_closes.get() == 0 {
        assert!(Instant::now() < deadline, "not closed for idling");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.recv_close().await.0, 1001);
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_4100_and_others_keep_receiving() {
    let node = start_node(&["--outbox-max-bytes", "16384"]);
    let mut slow = Client::open(&node, Some(claims(&node, "slow")), 256).await;
    assert_eq!(slow.recv_json().await["type"], "connection_established");
    let (mut fast, _) = Client::connect(&node, "fast").await;
    for client in [&mut slow, &mut fast] {
        client.subscribe(&["chat:1"]).await;
    }
    let padding = "x".repeat(1000);
    for n in 0..40 {
        publish(&node, "chat:1", json!({"n": n, "padding": padding})).await;
        assert_eq!(fast.recv_json().await["data"]["n"], n);
    }
    let (code, events) = slow.recv_close().await;
    assert_eq!(code, 4100);
    let got = events.len();
    assert!(got < 40, "its backlog was dropped, yet it got {got} events");
    publish(&node, "chat:1", json!({"n": 40})).await;
    assert_eq!(fast.recv_json().await["data"]["n"], 40);
    slow.session_ended().await;
    assert_eq!(node.hub.connection_count(), 1);
}

#[tokio::test]
async fn register_sets_the_client_type_whose_events_then_arrive() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    let registered = client
        .request(
            json!({"type": "register", "id": 1, "client_type": "gui", "client_name": "Desktop"}),
        )
        .await;
    assert_eq!(registered["type"], "registered", "{registered}");
    assert_eq!(registered["id"], 1);
    publish_to(&node, Target::ClientType("gui"), json!(42)).await;
    let event = client.recv_json().await;
    assert_eq!(event["type"], "job_progress");
    assert_eq!(event["data"], 42);
    assert!(event.get("channel").is_none(), "{event}");
    let refused = client
        .request(json!({"type": "register", "client_type": "not a type"}))
        .await;
    assert_eq!(refused["code"], "bad_request");
}

#[tokio::test]
async fn clients_publish_only_where_the_namespace_allows_it() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    client.subscribe(&["room:1"]).await;
    let publish = json!({"type": "publish", "id": 1, "channel": "room:1", "event": "typing", "data": {"on": true}});
    client.send_json(publish).await;
    let mut frames = [client.recv_json().await, client.recv_json().await];
    frames.sort_by_key(|f| f["type"] != "published");
    assert_eq!(frames[0], json!({"type": "published", "id": 1}));
    assert_eq!(frames[1]["type"], "typing", "the sender gets its own event");
    assert_eq!(frames[1]["data"], json!({"on": true}));
    let refused = client
        .request(json!({"type": "publish", "channel": "chat:1", "event": "typing"}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let refused = client
        .request(json!({"type": "publish", "channel": "room:1", "event": "subscribed"}))
        .await;
    // A frame type is no event name.
    assert_eq!(refused["code"], "invalid_event");
}

#[tokio::test]
async fn draining_tells_the_client_when_to_reconnect_then_closes_with_4200() {
    let node = start_node(&[]);
    let (mut client, _) = Client::connect(&node, "alice").await;
    assert_eq!(node.hub.drain(Duration::from_secs(2)), 1);
    let (code, texts) = client.recv_close().await;
    assert_eq!(code, 4200);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0]["type"], "disconnect");
    assert_eq!(texts[0]["code"], 4200);
    assert!(texts[0]["reconnect_after_ms"].as_u64().unwrap() <= 2000);
    timeout(PATIENCE, node.hub.wait_empty()).await.unwrap();
}
