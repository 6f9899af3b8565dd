//! permessage-deflate (RFC 7692): negotiated on `/ws` when the gateway has it on and the client
//! offers it; server frames from `GATEWAY_WS_COMPRESSION_MIN_BYTES` go compressed, in every
//! format; compressed client frames are understood, and bounded by `GATEWAY_MAX_MESSAGE_BYTES`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    Frame, GatewayConfig, Handshake, Offer, RawWebSocket, StallProxy, StatusCode, TestGateway,
    TestRedis, token,
};
use serde_json::{Value, json};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;
/// The `Sec-WebSocket-Extensions` of a 101 that accepted permessage-deflate.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const WAIT: Duration = Duration::from_secs(10);

fn compressing() -> GatewayConfig {
    GatewayConfig::new().env("GATEWAY_WS_COMPRESSION", "on")
}

fn offer(extensions: &str) -> Offer {
    Offer {
        extensions: Some(extensions.to_owned()),
        subprotocols: None,
    }
}

/// Upgrades as `user` with `query` after the token (`&format=msgpack`, or empty).
async fn upgrade(
    gw: &TestGateway,
    user: &str,
    query: &str,
    offer: &Offer,
) -> (RawWebSocket, Handshake) {
    upgrade_at(gw.public_port(), user, query, offer).await
}

async fn upgrade_at(
    port: u16,
    user: &str,
    query: &str,
    offer: &Offer,
) -> (RawWebSocket, Handshake) {
    let path = format!("/ws?token={}{query}", token(user));
    let (socket, handshake) = RawWebSocket::connect(port, &path, offer).await.unwrap();
    assert_eq!(handshake.status, 101, "{:?}", handshake.headers);
    (socket, handshake)
}

/// A connected client past `connection_established`.
async fn open(port: u16, user: &str, query: &str, offer: &Offer) -> RawWebSocket {
    let (mut socket, _) = upgrade_at(port, user, query, offer).await;
    let (_, established) = next(&mut socket).await;
    assert_eq!(
        established["type"], "connection_established",
        "{established}"
    );
    socket
}

/// The fields of a data frame: JSON text or MessagePack binary.
fn fields(frame: &Frame) -> Value {
    match frame.opcode {
        TEXT => serde_json::from_slice(&frame.payload).unwrap(),
        BINARY => rmp_serde::from_slice(&frame.payload).unwrap(),
        other => panic!("not a data frame: opcode {other}"),
    }
}

/// The next data frame and its fields; panics after 10 s or on a close.
async fn next(socket: &mut RawWebSocket) -> (Frame, Value) {
    let frame = tokio::time::timeout(WAIT, socket.next_data())
        .await
        .expect("a frame within 10 s")
        .expect("a data frame");
    let value = fields(&frame);
    (frame, value)
}

async fn next_of_type(socket: &mut RawWebSocket, kind: &str) -> (Frame, Value) {
    loop {
        let (frame, value) = next(socket).await;
        if value["type"] == kind {
            return (frame, value);
        }
    }
}

/// Subscribes with an uncompressed JSON frame (every format understands it).
async fn subscribe(socket: &mut RawWebSocket, channel: &str) {
    let frame = json!({"type": "subscribe", "channels": [channel]}).to_string();
    socket.send(TEXT, frame.as_bytes(), false).await.unwrap();
    let (_, subscribed) = next_of_type(socket, "subscribed").await;
    assert_eq!(subscribed["channels"], json!([channel]), "{subscribed}");
}

/// Event data of about `len` bytes of JSON that compresses well.
fn repetitive_data(len: usize) -> Value {
    let row = json!({"sku": "ABC-123", "status": "in_stock", "warehouse": "north", "qty": 7});
    let rows = vec![row; len / 70 + 1];
    json!({"rows": rows})
}

/// Whether the connection ends (a close frame or EOF) within 10 s.
async fn ends(socket: &mut RawWebSocket) -> bool {
    let until_end = async {
        loop {
            match socket.next_frame().await {
                Ok(frame) if frame.opcode == 0x8 => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    tokio::time::timeout(WAIT, until_end).await.is_ok()
}

/// A fresh client can still connect, subscribe and get an event.
async fn still_serves(gw: &TestGateway) {
    assert_eq!(gw.admin_status("/readyz").await, Some(StatusCode::OK));
    let mut socket = open(gw.public_port(), "healthy", "", &Offer::deflate()).await;
    subscribe(&mut socket, "after").await;
    gw.publish_ok(json!({"channel": "after", "event": "still", "data": repetitive_data(1000)}))
        .await;
    let (frame, event) = next_of_type(&mut socket, "still").await;
    assert!(frame.compressed);
    assert_eq!(event["data"], repetitive_data(1000));
}

#[tokio::test]
async fn deflate_is_agreed_only_when_on_and_offered() {
    let on = TestGateway::spawn(compressing()).await;
    let (socket, handshake) = upgrade(&on, "1", "", &Offer::deflate()).await;
    assert_eq!(handshake.header("sec-websocket-extensions"), Some(ACCEPTED));
    assert!(socket.deflate());
    let (socket, handshake) = upgrade(&on, "1", "", &Offer::default()).await;
    assert_eq!(handshake.header("sec-websocket-extensions"), None);
    assert!(!socket.deflate());

    // Off by default: the offer is ignored and events go plain.
    let off = TestGateway::spawn(GatewayConfig::new()).await;
    let (mut socket, handshake) = upgrade(&off, "2", "", &Offer::deflate()).await;
    assert_eq!(handshake.header("sec-websocket-extensions"), None);
    next_of_type(&mut socket, "connection_established").await;
    subscribe(&mut socket, "jobs").await;
    let data = repetitive_data(2000);
    off.publish_ok(json!({"channel": "jobs", "event": "big", "data": data}))
        .await;
    let (frame, event) = next_of_type(&mut socket, "big").await;
    assert!(!frame.compressed);
    assert_eq!(event["data"], data);
}

#[tokio::test]
async fn the_first_acceptable_offer_wins_and_bad_ones_are_declined() {
    let gw = TestGateway::spawn(compressing()).await;
    for (extensions, agreed) in [
        ("permessage-deflate", true),
        ("permessage-deflate; client_max_window_bits=12", true),
        ("permessage-deflate; server_max_window_bits=15", true),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            true,
        ),
        ("permessage-deflate; server_max_window_bits=10", false),
        (
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits",
            true,
        ),
        ("permessage-deflate; x-garbage", false),
        ("permessage-deflate; x-garbage, permessage-deflate", true),
        ("permessage-deflate; client_max_window_bits=abc", false),
        (
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            false,
        ),
        ("x-webkit-deflate-frame", false),
    ] {
        let (socket, handshake) = upgrade(&gw, "1", "", &offer(extensions)).await;
        let expected = agreed.then_some(ACCEPTED);
        assert_eq!(
            handshake.header("sec-websocket-extensions"),
            expected,
            "offer {extensions:?}"
        );
        assert_eq!(socket.deflate(), agreed, "offer {extensions:?}");
    }
}

#[tokio::test]
async fn events_from_min_bytes_arrive_compressed_and_inflate_to_the_plain_json() {
    let gw = TestGateway::spawn(compressing()).await;
    let port = gw.public_port();
    let mut deflating = open(port, "1", "", &Offer::deflate()).await;
    let mut plain = open(port, "2", "", &Offer::default()).await;
    subscribe(&mut deflating, "jobs").await;
    subscribe(&mut plain, "jobs").await;

    let data = repetitive_data(1000);
    gw.publish_ok(json!({"channel": "jobs", "event": "big", "data": data}))
        .await;
    let (compressed, from_deflating) = next_of_type(&mut deflating, "big").await;
    let (uncompressed, from_plain) = next_of_type(&mut plain, "big").await;
    assert!(compressed.compressed && compressed.fin && compressed.opcode == TEXT);
    assert!(!uncompressed.compressed);
    assert_eq!(from_deflating, from_plain);
    assert_eq!(from_deflating["data"], data);
    assert!(
        compressed.wire_len < uncompressed.wire_len / 2,
        "{} bytes compressed, {} plain",
        compressed.wire_len,
        uncompressed.wire_len
    );

    // Under 256 bytes of JSON: plain, even for a client that agreed to deflate.
    gw.publish_ok(json!({"channel": "jobs", "event": "small", "data": {"n": 1}}))
        .await;
    let (small, event) = next_of_type(&mut deflating, "small").await;
    assert!(small.payload.len() < 256, "{}", small.payload.len());
    assert!(!small.compressed, "{event}");
}

#[tokio::test]
async fn min_bytes_is_configurable() {
    let gw =
        TestGateway::spawn(compressing().env("GATEWAY_WS_COMPRESSION_MIN_BYTES", "2048")).await;
    let mut socket = open(gw.public_port(), "1", "", &Offer::deflate()).await;
    subscribe(&mut socket, "jobs").await;
    for (size, compressed) in [(1000, false), (4000, true)] {
        let data = repetitive_data(size);
        gw.publish_ok(json!({"channel": "jobs", "event": "sized", "data": data}))
            .await;
        let (frame, event) = next_of_type(&mut socket, "sized").await;
        assert_eq!(
            frame.compressed,
            compressed,
            "{} bytes",
            frame.payload.len()
        );
        assert_eq!(event["data"], data);
    }
}

/// Two replicas, JSON and MessagePack, with and without deflate, on one channel: every client
/// gets the same fields, each in its format, compressed where it agreed to.
#[tokio::test]
async fn every_format_with_and_without_deflate_gets_the_same_event() {
    let redis = TestRedis::start().await;
    let a = TestGateway::spawn(compressing().redis_url(&redis.url())).await;
    let b = TestGateway::spawn(compressing().redis_url(&redis.url())).await;
    let clients = [
        (a.public_port(), "", Offer::default()),
        (a.public_port(), "&format=msgpack", Offer::default()),
        (a.public_port(), "", Offer::deflate()),
        (a.public_port(), "&format=msgpack", Offer::deflate()),
        (b.public_port(), "&format=msgpack", Offer::deflate()),
        (b.public_port(), "", Offer::deflate()),
    ];
    let mut sockets = Vec::new();
    for (n, (port, query, offer)) in clients.iter().enumerate() {
        let mut socket = open(*port, &n.to_string(), query, offer).await;
        subscribe(&mut socket, "room").await;
        sockets.push(socket);
    }
    let data = repetitive_data(3000);
    b.publish_ok(json!({"channel": "room", "event": "said", "data": data}))
        .await;
    let mut seen = Vec::new();
    for ((_, query, offer), socket) in clients.iter().zip(&mut sockets) {
        let (frame, event) = next_of_type(socket, "said").await;
        let msgpack = !query.is_empty();
        assert_eq!(
            frame.opcode,
            if msgpack { BINARY } else { TEXT },
            "{query} {offer:?}"
        );
        assert_eq!(
            frame.compressed,
            offer.extensions.is_some(),
            "{query} {offer:?}"
        );
        assert_eq!(event["data"], data, "{query} {offer:?}");
        seen.push(event);
    }
    assert!(seen.windows(2).all(|pair| pair[0] == pair[1]), "{seen:?}");
}

/// Through a proxy that counts bytes: the same 50 events of ~4 KB cost a deflating client far
/// fewer bytes on the wire than a plain one.
#[tokio::test]
async fn deflate_shrinks_the_bytes_on_the_wire() {
    let gw = TestGateway::spawn(compressing()).await;
    let deflating_path = StallProxy::start(gw.public_port()).await;
    let plain_path = StallProxy::start(gw.public_port()).await;
    let mut deflating = open(deflating_path.port(), "1", "", &Offer::deflate()).await;
    let mut plain = open(plain_path.port(), "2", "", &Offer::default()).await;
    subscribe(&mut deflating, "feed").await;
    subscribe(&mut plain, "feed").await;
    let before = (
        deflating_path.bytes_to_client(),
        plain_path.bytes_to_client(),
    );

    for n in 0..50 {
        let data = json!({"n": n, "page": repetitive_data(4000)});
        gw.publish_ok(json!({"channel": "feed", "event": "page", "data": data}))
            .await;
    }
    for n in 0..50 {
        let (_, from_deflating) = next_of_type(&mut deflating, "page").await;
        let (_, from_plain) = next_of_type(&mut plain, "page").await;
        assert_eq!(from_deflating["data"]["n"], n);
        assert_eq!(from_deflating, from_plain);
    }
    let deflated = deflating_path.bytes_to_client() - before.0;
    let uncompressed = plain_path.bytes_to_client() - before.1;
    assert!(uncompressed > 50 * 3500, "{uncompressed}");
    assert!(
        deflated < uncompressed / 2,
        "{deflated} bytes with deflate, {uncompressed} without"
    );
}

#[tokio::test]
async fn compressed_client_frames_are_understood_whole_or_in_fragments() {
    let gw = TestGateway::spawn(compressing()).await;
    let mut socket = open(gw.public_port(), "1", "", &Offer::deflate()).await;
    let subscribe_a = json!({"type": "subscribe", "channels": ["a"], "id": 1}).to_string();
    socket
        .send(TEXT, subscribe_a.as_bytes(), true)
        .await
        .unwrap();
    let (_, subscribed) = next_of_type(&mut socket, "subscribed").await;
    assert_eq!(
        (subscribed["id"].clone(), subscribed["channels"].clone()),
        (json!(1), json!(["a"]))
    );

    // RSV1 on the first fragment only, and a ping between the fragments.
    let subscribe_b = json!({"type": "subscribe", "channels": ["b"], "id": 2}).to_string();
    let deflated = RawWebSocket::deflate_message(subscribe_b.as_bytes());
    let third = deflated.len() / 3;
    let mut wire = RawWebSocket::client_frame(false, true, TEXT, &deflated[..third]);
    wire.extend(RawWebSocket::client_frame(true, false, PING, b"between"));
    wire.extend(RawWebSocket::client_frame(
        false,
        false,
        CONTINUATION,
        &deflated[third..2 * third],
    ));
    wire.extend(RawWebSocket::client_frame(
        true,
        false,
        CONTINUATION,
        &deflated[2 * third..],
    ));
    socket.send_raw(&wire).await.unwrap();
    let mut pong = false;
    let subscribed = loop {
        let frame = tokio::time::timeout(WAIT, socket.next_frame())
            .await
            .unwrap()
            .unwrap();
        match frame.opcode {
            PONG => pong |= frame.payload == b"between",
            TEXT => {
                let value = fields(&frame);
                if value["type"] == "subscribed" {
                    break value;
                }
            }
            _ => {}
        }
    };
    assert!(pong, "the ping between fragments is answered");
    assert_eq!(
        (subscribed["id"].clone(), subscribed["channels"].clone()),
        (json!(2), json!(["b"]))
    );

    // The subscription holds, and an uncompressed frame is still fine.
    gw.publish_ok(json!({"channel": "b", "event": "on_b", "data": {"ok": true}}))
        .await;
    assert_eq!(
        next_of_type(&mut socket, "on_b").await.1["data"],
        json!({"ok": true})
    );
    let ping = json!({"type": "ping", "id": 3}).to_string();
    socket.send(TEXT, ping.as_bytes(), false).await.unwrap();
    assert_eq!(next_of_type(&mut socket, "pong").await.1["id"], 3);

    // A MessagePack client may compress its binary frames too.
    let mut packed = open(gw.public_port(), "2", "&format=msgpack", &Offer::deflate()).await;
    let frame =
        rmp_serde::to_vec_named(&json!({"type": "subscribe", "channels": ["c"], "id": 4})).unwrap();
    packed.send(BINARY, &frame, true).await.unwrap();
    let (reply, subscribed) = next_of_type(&mut packed, "subscribed").await;
    assert_eq!(reply.opcode, BINARY);
    assert_eq!(subscribed["id"], 4);
}

/// A message that inflates past `GATEWAY_MAX_MESSAGE_BYTES` (8 MiB of zeros in a few KB) is
/// closed with 1009, whole or in fragments, and so is a compressed frame over the limit; the
/// gateway keeps serving.
#[tokio::test]
async fn a_zip_bomb_is_closed_with_1009_and_the_gateway_stays_healthy() {
    let gw = TestGateway::spawn(compressing().env("GATEWAY_MAX_MESSAGE_BYTES", "65536")).await;
    let bomb = RawWebSocket::deflate_message(&vec![0u8; 8 << 20]);
    assert!(bomb.len() < 16 * 1024, "{} bytes", bomb.len());

    let mut whole = open(gw.public_port(), "1", "", &Offer::deflate()).await;
    whole
        .send_raw(&RawWebSocket::client_frame(true, true, TEXT, &bomb))
        .await
        .unwrap();
    assert_eq!(whole.close_code(WAIT).await, Some(1009));

    let mut fragmented = open(gw.public_port(), "2", "", &Offer::deflate()).await;
    let quarter = bomb.len() / 4;
    let mut wire = RawWebSocket::client_frame(false, true, TEXT, &bomb[..quarter]);
    for (n, chunk) in bomb[quarter..].chunks(quarter).enumerate() {
        let last = quarter + (n + 1) * quarter >= bomb.len();
        wire.extend(RawWebSocket::client_frame(last, false, CONTINUATION, chunk));
    }
    fragmented.send_raw(&wire).await.unwrap();
    assert_eq!(fragmented.close_code(WAIT).await, Some(1009));

    // Incompressible bytes: the compressed frame itself is over the limit.
    let mut noise = Vec::with_capacity(100_000);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..100_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        noise.push(state as u8);
    }
    let mut oversized = open(gw.public_port(), "3", "", &Offer::deflate()).await;
    oversized.send(BINARY, &noise, true).await.unwrap();
    assert_eq!(oversized.close_code(WAIT).await, Some(1009));

    still_serves(&gw).await;
}

/// RSV1 where it has no meaning, or deflate data that is not DEFLATE: the connection is
/// dropped like for any malformed frame, and nobody else notices.
#[tokio::test]
async fn malformed_compressed_frames_drop_the_connection() {
    let gw = TestGateway::spawn(compressing()).await;
    let subscribe = json!({"type": "subscribe", "channels": ["x"]}).to_string();
    let deflated = RawWebSocket::deflate_message(subscribe.as_bytes());
    for (case, offer, frame) in [
        (
            "RSV1 without agreement",
            Offer::default(),
            RawWebSocket::client_frame(true, true, TEXT, &deflated),
        ),
        (
            "RSV1 on a ping",
            Offer::deflate(),
            RawWebSocket::client_frame(true, true, PING, b"p"),
        ),
        (
            "corrupt DEFLATE data",
            Offer::deflate(),
            RawWebSocket::client_frame(true, true, TEXT, &[0xff; 16]),
        ),
        (
            "RSV1 on a continuation",
            Offer::deflate(),
            [
                RawWebSocket::client_frame(false, true, TEXT, &deflated[..2]),
                RawWebSocket::client_frame(true, true, CONTINUATION, &deflated[2..]),
            ]
            .concat(),
        ),
    ] {
        let mut socket = open(gw.public_port(), "1", "", &offer).await;
        socket.send_raw(&frame).await.unwrap();
        assert!(ends(&mut socket).await, "{case}: the connection is dropped");
    }
    still_serves(&gw).await;
}
