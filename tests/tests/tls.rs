//! The gateway serving wss itself (GATEWAY_TLS_CERT / GATEWAY_TLS_KEY), for deployments without
//! a TLS-terminating balancer.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use e2e::{GatewayConfig, TempDir, TestGateway, connect_wss, tls_config, token, wss_recv};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for localhost and 127.0.0.1: (certificate, key) paths.
fn self_signed(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

fn port(gw: &TestGateway) -> u16 {
    gw.ws_url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/ws")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_gateway_serves_wss_with_its_own_certificate() {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed(&dir);
    let gw = TestGateway::spawn(
        GatewayConfig::new()
            .env("GATEWAY_TLS_CERT", cert.to_string_lossy())
            .env("GATEWAY_TLS_KEY", key.to_string_lossy()),
    )
    .await;
    let mut ws = connect_wss(port(&gw), &token("42"), tls_config(Some(&cert)))
        .await
        .unwrap();
    assert_eq!(wss_recv(&mut ws).await["type"], "connection_established");
    let subscribe = json!({"type": "subscribe", "channels": ["jobs"], "id": 1});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    assert_eq!(wss_recv(&mut ws).await["type"], "subscribed");
    gw.publish_ok(json!({"channel": "jobs", "event": "over_tls", "data": 1}))
        .await;
    assert_eq!(wss_recv(&mut ws).await["type"], "over_tls");

    let untrusted = connect_wss(port(&gw), &token("42"), tls_config(None)).await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the certificate is refused"
    );
}

#[tokio::test]
async fn a_certificate_without_its_key_stops_the_gateway_at_startup() {
    let dir = TempDir::new("tls-half");
    let (cert, _) = self_signed(&dir);
    let output = Command::new(e2e::binary("gateway"))
        .env_clear()
        .env("GATEWAY_TLS_CERT", &cert)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GATEWAY_TLS_KEY"), "{stderr}");
}
