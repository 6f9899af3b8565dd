//! Encodings: MessagePack frames for clients that ask for them, by `?format=msgpack` or the
//! `gateway.msgpack` subprotocol, beside JSON clients on the same channels.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{GatewayConfig, TestGateway, TestRedis, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A frame as it arrived: its encoding and its fields.
#[derive(Debug)]
enum Frame {
    Json(Value),
    Msgpack(Value),
}

impl Frame {
    fn value(self) -> Value {
        match self {
            Self::Json(value) | Self::Msgpack(value) => value,
        }
    }
}

async fn open(url: &str, subprotocols: Option<&str>) -> Result<Socket, WsError> {
    let mut request = url.into_client_request().unwrap();
    if let Some(offer) = subprotocols {
        let value = HeaderValue::from_str(offer).unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await?;
    let chosen = response.headers().get("sec-websocket-protocol");
    match subprotocols {
        None => assert!(chosen.is_none(), "{chosen:?}"),
        Some(_) => assert!(
            chosen.is_some(),
            "a subprotocol comes back when one is offered"
        ),
    }
    Ok(socket)
}

/// The next data frame, skipping pings; panics after 10 s.
async fn next(socket: &mut Socket) -> Frame {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .expect("a frame");
        match message {
            Message::Text(text) => return Frame::Json(serde_json::from_str(&text).unwrap()),
            Message::Binary(bytes) => {
                return Frame::Msgpack(rmp_serde::from_slice(&bytes).unwrap());
            }
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
}

async fn next_of_type(socket: &mut Socket, kind: &str) -> Frame {
    loop {
        let frame = next(socket).await;
        let value = match &frame {
            Frame::Json(value) | Frame::Msgpack(value) => value,
        };
        if value["type"] == kind {
            return frame;
        }
    }
}

async fn send_msgpack(socket: &mut Socket, frame: &Value) {
    let bytes = rmp_serde::to_vec_named(frame).unwrap();
    socket.send(Message::binary(bytes)).await.unwrap();
}

#[tokio::test]
async fn a_msgpack_client_gets_binary_maps_with_the_fields_of_json_and_may_send_either() {
    let gw = TestGateway::spawn(GatewayConfig::new()).await;
    let url = format!("{}&format=msgpack", gw.ws_url_with_token(&token("42")));
    let mut packed = open(&url, None).await.unwrap();
    let Frame::Msgpack(established) = next(&mut packed).await else {
        panic!("connection_established in MessagePack")
    };
    assert_eq!(established["type"], "connection_established");
    assert_eq!(established["user_id"], "42");
    assert!(established["timestamp"].is_string(), "{established}");

    // A MessagePack subscribe, and a JSON ping: both forms are understood.
    send_msgpack(
        &mut packed,
        &json!({"type": "subscribe", "channels": ["jobs"], "id": 1}),
    )
    .await;
    let Frame::Msgpack(subscribed) = next_of_type(&mut packed, "subscribed").await else {
        panic!("the reply in MessagePack")
    };
    assert_eq!(subscribed["id"], 1);
    packed
        .send(Message::text(
            json!({"type": "ping", "id": "p"}).to_string(),
        ))
        .await
        .unwrap();
    let Frame::Msgpack(pong) = next_of_type(&mut packed, "pong").await else {
        panic!("pong in MessagePack")
    };
    assert_eq!(pong["id"], "p");

    let mut plain = open(&gw.ws_url_with_token(&token("43")), None)
        .await
        .unwrap();
    next(&mut plain).await;
    plain
        .send(Message::text(
            json!({"type": "subscribe", "channels": ["jobs"]}).to_string(),
        ))
        .await
        .unwrap();
    next_of_type(&mut plain, "subscribed").await;

    let data =
        json!({"job_id": "abc", "progress": 45.5, "steps": [1, 2, 3], "done": false, "note": null});
    gw.publish_ok(json!({"channel": "jobs", "event": "job_progress", "data": data}))
        .await;
    let Frame::Msgpack(from_packed) = next_of_type(&mut packed, "job_progress").await else {
        panic!("the event in MessagePack")
    };
    let Frame::Json(from_plain) = next_of_type(&mut plain, "job_progress").await else {
        panic!("the event in JSON")
    };
    assert_eq!(
        from_packed, from_plain,
        "the same fields and values in both encodings"
    );
    assert_eq!(from_packed["data"], data);
}

#[tokio::test]
async fn the_subprotocol_chooses_the_format_and_is_answered() {
    let gw = TestGateway::spawn(GatewayConfig::new()).await;
    let url = gw.ws_url_with_token(&token("42"));
    let mut packed = open(&url, Some("gateway.msgpack, gateway.json"))
        .await
        .unwrap();
    assert!(matches!(next(&mut packed).await, Frame::Msgpack(_)));
    let mut plain = open(&url, Some("gateway.json")).await.unwrap();
    assert!(matches!(next(&mut plain).await, Frame::Json(_)));
    // The query wins over the order of the offer.
    let mut asked = open(
        &format!("{url}&format=json"),
        Some("gateway.msgpack, gateway.json"),
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut asked).await, Frame::Json(_)));
}

#[tokio::test]
async fn an_unknown_format_or_subprotocol_is_refused_with_400() {
    let gw = TestGateway::spawn(GatewayConfig::new()).await;
    let url = gw.ws_url_with_token(&token("42"));
    for (url, offer) in [
        (format!("{url}&format=xml"), None),
        (url.clone(), Some("chat")),
        (format!("{url}&format=msgpack"), Some("gateway.json")),
    ] {
        match open(&url, offer).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), 400, "{url} {offer:?}");
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "bad_request", "{body}");
            }
            other => panic!("{url} {offer:?}: expected 400, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_binary_frame_gets_a_msgpack_error_and_the_connection_stays() {
    let gw = TestGateway::spawn(GatewayConfig::new()).await;
    let url = format!("{}&format=msgpack", gw.ws_url_with_token(&token("42")));
    let mut packed = open(&url, None).await.unwrap();
    next(&mut packed).await;
    packed
        .send(Message::binary(vec![0xc1, 0x00]))
        .await
        .unwrap();
    let error = next_of_type(&mut packed, "error").await.value();
    assert_eq!(error["code"], "bad_request", "{error}");
    send_msgpack(&mut packed, &json!({"type": "ping", "id": 2})).await;
    assert_eq!(next_of_type(&mut packed, "pong").await.value()["id"], 2);
}

/// Mixed encodings across replicas: the event is converted on each node that has a
/// MessagePack client, and a client that connects without a token authenticates in MessagePack.
#[tokio::test]
async fn mixed_encodings_on_one_channel_across_replicas() {
    let redis = TestRedis::start().await;
    let a = TestGateway::spawn(GatewayConfig::new().redis_url(&redis.url())).await;
    let b = TestGateway::spawn(GatewayConfig::new().redis_url(&redis.url())).await;
    let mut on_a = open(&format!("{}?format=msgpack", a.ws_url()), None)
        .await
        .unwrap();
    send_msgpack(&mut on_a, &json!({"type": "auth", "token": token("1")})).await;
    assert!(matches!(next(&mut on_a).await, Frame::Msgpack(_)));
    let mut on_b = open(&b.ws_url_with_token(&token("2")), None).await.unwrap();
    next(&mut on_b).await;
    send_msgpack(
        &mut on_a,
        &json!({"type": "subscribe", "channels": ["room"]}),
    )
    .await;
    next_of_type(&mut on_a, "subscribed").await;
    on_b.send(Message::text(
        json!({"type": "subscribe", "channels": ["room"]}).to_string(),
    ))
    .await
    .unwrap();
    next_of_type(&mut on_b, "subscribed").await;
    b.publish_ok(json!({"channel": "room", "event": "said", "data": {"text": "héllo"}}))
        .await;
    let packed = next_of_type(&mut on_a, "said").await;
    let plain = next_of_type(&mut on_b, "said").await;
    assert!(matches!(packed, Frame::Msgpack(_)) && matches!(plain, Frame::Json(_)));
    assert_eq!(packed.value(), plain.value());
}
