//! Graceful shutdown: on SIGTERM a node stops being ready, tells every client when to come
//! back, closes them with 4200 and exits cleanly.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{GatewayConfig, StatusCode, TestGateway};

#[tokio::test]
async fn sigterm_sends_disconnect_then_4200_and_the_process_exits_cleanly() {
    let config = GatewayConfig::new().env("GATEWAY_DRAIN_TIMEOUT", "5s");
    let mut gw = TestGateway::spawn(config).await;
    let mut clients = vec![gw.connect_as("1").await, gw.connect_as("2").await];

    gw.terminate();

    // Right after the signal /readyz turns 503; the admin listener may also be gone already.
    let mut readyz = Some(StatusCode::OK);
    for _ in 0..100 {
        readyz = gw.admin_status("/readyz").await;
        if readyz != Some(StatusCode::OK) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        matches!(readyz, Some(StatusCode::SERVICE_UNAVAILABLE) | None),
        "/readyz while draining answered {readyz:?}"
    );

    for client in &mut clients {
        let frame = match client.recv_or_close().await {
            Ok(frame) => frame,
            Err(closed) => panic!("expected a disconnect frame before the close, got {closed:?}"),
        };
        assert_eq!(frame["type"], "disconnect", "{frame}");
        assert_eq!(frame["code"], 4200, "{frame}");
        assert!(
            frame["reconnect_after_ms"].is_u64(),
            "reconnect_after_ms is a number >= 0: {frame}"
        );
        client.expect_close(4200).await;
    }

    // The drain timeout is 5 s; the clients are gone, so it should not even take that long.
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "the gateway exited with {status}");
}
