//! Limits: oversized frames, floods of frames, and slow readers whose outgoing queue fills up.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    GatewayConfig, TestClient, TestGateway, assert_error, brief, eventually, metric_value, token,
};
use serde_json::json;

#[tokio::test]
async fn frame_over_max_message_bytes_closes_with_1009() {
    let gw =
        TestGateway::spawn(GatewayConfig::new().env("GATEWAY_MAX_MESSAGE_BYTES", "1024")).await;
    let mut client = gw.connect_as("42").await;
    let oversized = json!({"type": "ping", "padding": "x".repeat(2048)}).to_string();
    client.send_raw_text(&oversized).await;
    client.expect_close(1009).await;
}

#[tokio::test]
async fn flood_of_frames_is_answered_rate_limited_then_closed_with_4101() {
    let config = GatewayConfig::new()
        .env("GATEWAY_RATE_LIMIT_PER_SECOND", "100")
        .env("GATEWAY_RATE_LIMIT_BURST", "200");
    let gw = TestGateway::spawn(config).await;
    let mut client = gw.connect_as("42").await;
    let ping = json!({"type": "ping"}).to_string();
    let mut sent = 0;
    while sent < 1000 && client.try_send_text(&ping).await.is_ok() {
        sent += 1;
    }
    let (frames, closed) = client.drain_until_close().await;
    let rate_limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert!(
        rate_limited >= 1,
        "expected an error rate_limited before the close ({sent} pings sent, {} frames back, last {:?})",
        frames.len(),
        frames.last().map(brief)
    );
    let first = frames.iter().find(|f| f["type"] == "error").unwrap();
    assert_error(first, "rate_limited");
    assert_eq!(closed.code, Some(4101), "{closed:?} after {sent} pings");
}

/// One reader that stops reading must not hold up the others; once its queue is over
/// `GATEWAY_OUTBOX_MAX_BYTES` it is closed with 4100, which the metrics count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_with_4100_and_the_fast_reader_gets_every_event() {
    const EVENTS: u64 = 300;
    let gw =
        TestGateway::spawn(GatewayConfig::new().env("GATEWAY_OUTBOX_MAX_BYTES", "262144")).await;

    let mut slow = TestClient::connect_slow_reader(&gw.ws_url_with_token(&token("slow")))
        .await
        .unwrap();
    slow.subscribe_ok(&["feed"]).await;
    let mut fast = gw.connect_as("fast").await;
    fast.subscribe_ok(&["feed"]).await;

    let fast_reader = tokio::spawn(async move {
        for seq in 0..EVENTS {
            let frame = fast.recv().await;
            assert_eq!(frame["type"], "tick", "{}", brief(&frame));
            assert_eq!(
                frame["data"]["seq"], seq,
                "the fast reader got events out of order"
            );
        }
        fast
    });

    // From here on the slow client does not read until the publishing is over.
    let padding = "x".repeat(32 * 1024);
    for seq in 0..EVENTS {
        let (status, reply) = gw
            .publish(json!({"channel": "feed", "event": "tick", "data": {"seq": seq, "padding": padding}}))
            .await;
        assert_eq!(status, 200, "publish {seq}: {reply}");
    }

    let mut fast = match tokio::time::timeout(Duration::from_secs(60), fast_reader).await {
        Err(_) => panic!("the fast reader did not get all {EVENTS} events within 60 s"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the fast reader task failed: {e}"),
        Ok(Ok(fast)) => fast,
    };
    assert_eq!(fast.request(json!({"type": "ping"})).await["type"], "pong");

    // The gateway gives up on the slow reader while it still reads nothing.
    eventually(
        Duration::from_secs(30),
        "the gateway counts the 4100",
        || async {
            let metrics = gw.metrics().await;
            metric_value(
                &metrics,
                "gateway_disconnections_total",
                &[("code", "4100")],
            )
            .is_some_and(|closed| closed >= 1.0)
        },
    )
    .await;
    let (frames, closed) = slow.drain_until_close().await;
    assert_eq!(
        closed.code,
        Some(4100),
        "the slow reader ended with {closed:?} after {} frames",
        frames.len()
    );
    // What it did get before the close is the start of the stream, in order, without gaps.
    let ticks: Vec<_> = frames.iter().filter(|f| f["type"] == "tick").collect();
    for (expected, frame) in ticks.iter().enumerate() {
        assert_eq!(
            frame["data"]["seq"], expected as u64,
            "the slow reader's events have a gap"
        );
    }
    assert!(
        (ticks.len() as u64) < EVENTS,
        "the slow reader was closed but got everything"
    );

    let mut closed_slow = None;
    for _ in 0..50 {
        let metrics = gw.metrics().await;
        closed_slow = metric_value(
            &metrics,
            "gateway_disconnections_total",
            &[("code", "4100")],
        );
        if closed_slow.is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed_slow.is_some_and(|n| n >= 1.0),
        "gateway_disconnections_total{{code=\"4100\"}} is {closed_slow:?}"
    );
}

#[tokio::test]
async fn a_client_that_answers_no_ping_is_closed_after_the_idle_timeout_with_1001() {
    let config = GatewayConfig::new()
        .env("GATEWAY_HEARTBEAT_INTERVAL", "1s")
        .env("GATEWAY_IDLE_TIMEOUT", "2s");
    let gw = TestGateway::spawn(config).await;
    let mut silent = gw.connect_as("idle").await;
    let mut lively = gw.connect_as("lively").await;
    // The silent client reads nothing, so its WebSocket layer answers no ping; the lively one
    // sends an application ping every half second.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pong = lively.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong");
    }
    silent.expect_close(1001).await;
    // Counted once the close handshake is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = gw.metrics().await;
        let closed = metric_value(
            &metrics,
            "gateway_disconnections_total",
            &[("code", "1001")],
        );
        if closed == Some(1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "1001 not counted: {closed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message over the limit sent in fragments, and one sent as a single oversize frame: the
/// server drops the rest of the message unparsed rather than resetting the connection (which
/// would fail the client's pending writes and lose the close frame), so the client finishes
/// sending and sees 1009 every time.
#[tokio::test]
async fn oversize_messages_in_fragments_or_one_frame_close_with_1009_every_time() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    // 8 MiB: more than loopback buffers hold, so sending it needs the server to keep reading.
    const FRAGMENTS: usize = 80;
    let gw = TestGateway::spawn(GatewayConfig::new()).await;
    let chunk = "x".repeat(100 * 1024);
    for round in 0..6 {
        let mut client = gw.connect_as(&format!("u{round}")).await;
        let sent = if round % 2 == 0 {
            let mut sent = client
                .try_send_frame(Frame::message(
                    chunk.clone(),
                    OpCode::Data(Data::Text),
                    false,
                ))
                .await;
            for fragment in 1..FRAGMENTS {
                let fin = fragment == FRAGMENTS - 1;
                let frame = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), fin);
                sent = sent.and(client.try_send_frame(frame).await);
            }
            sent
        } else {
            let frame = Frame::message(
                "y".repeat(FRAGMENTS * chunk.len()),
                OpCode::Data(Data::Text),
                true,
            );
            client.try_send_frame(frame).await
        };
        assert!(
            sent.is_ok(),
            "round {round}: the server reset the connection: {sent:?}"
        );
        let (_, closed) = client.drain_until_close().await;
        assert_eq!(closed.code, Some(1009), "round {round}: {closed:?}");
    }
}
