//! HTTP-level refusals on both listeners: every one carries the JSON error body, whichever
//! layer refuses; request heads that never finish are dropped on time, and connections still
//! in their handshake are bounded.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::{GatewayConfig, TestGateway, assert_http_error, eventually, metric_value, token};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a fresh connection and reads the response until the server closes.
async fn raw_exchange(addr: &str, request: &[u8]) -> (u16, Value) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The server may answer before it has read everything: a failed write is fine.
    let _ = tcp.write_all(request).await;
    let response = read_response(&mut tcp, Duration::from_secs(10)).await;
    parse_response(&response)
}

async fn read_response(tcp: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut response = Vec::new();
    let read = tokio::time::timeout(limit, tcp.read_to_end(&mut response)).await;
    match read {
        Ok(Ok(_)) => response,
        // A reset after a complete response still leaves the response readable.
        Ok(Err(_)) if !response.is_empty() => response,
        other => panic!("no response within {limit:?}: {other:?} after {response:?}"),
    }
}

fn parse_response(response: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not JSON: {head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?}: {e}"));
    (status, body)
}

fn host_of(url: &str) -> &str {
    url.trim_start_matches("http://")
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn oversize_heads_get_the_json_error_body_on_both_listeners() {
    let gw = TestGateway::spawn(GatewayConfig::new()).await;
    let public = gw.public_url();
    let admin = gw.admin_url();
    let long_token = "a".repeat(100_000);
    for addr in [host_of(&public), host_of(&admin)] {
        let request = format!("GET /ws?token={long_token} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let (status, body) = raw_exchange(addr, request.as_bytes()).await;
        assert_eq!(
            (status, code(&body)),
            (414, "uri_too_long"),
            "{addr}: {body}"
        );

        let header = "b".repeat(100_000);
        let request = format!("GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: {header}\r\n\r\n");
        let (status, body) = raw_exchange(addr, request.as_bytes()).await;
        assert_eq!(
            (status, code(&body)),
            (431, "headers_too_large"),
            "{addr}: {body}"
        );

        let (status, body) = raw_exchange(addr, b"\x16\x03\x01\x02\x00 hello\r\n\r\n").await;
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{addr}: {body}"
        );
    }
}

#[tokio::test]
async fn router_and_body_limit_refusals_get_the_json_error_body() {
    let gw = TestGateway::spawn(GatewayConfig::new()).await;
    let http = reqwest::Client::new();
    let key = gw.api_key().unwrap().to_owned();
    let cases = [
        (
            reqwest::Method::GET,
            format!("{}/nope", gw.public_url()),
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::POST,
            format!("{}/healthz", gw.public_url()),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            format!("{}/nope", gw.admin_url()),
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::GET,
            format!("{}/api/nope", gw.admin_url()),
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::DELETE,
            format!("{}/api/publish", gw.admin_url()),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, url, expected) in cases {
        let response = http
            .request(method.clone(), &url)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        assert_http_error(status, &body, expected);
    }

    // 10 MB to the publish API, answered while it is still being sent.
    let huge = format!(
        r#"{{"channel":"jobs","event":"e","data":"{}"}}"#,
        "x".repeat(10 << 20)
    );
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{huge}",
        huge.len()
    );
    let (status, body) = raw_exchange(host_of(&gw.admin_url()), request.as_bytes()).await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"), "{body}");
}

/// A slowloris: heads that never finish are answered 408 and closed after
/// `GATEWAY_HANDSHAKE_TIMEOUT`, and counted.
#[tokio::test]
async fn unfinished_request_heads_are_closed_after_the_handshake_timeout() {
    const CONNECTIONS: usize = 300;
    let gw = TestGateway::spawn(GatewayConfig::new().env("GATEWAY_HANDSHAKE_TIMEOUT", "1s")).await;
    let public = gw.public_url();
    let addr = host_of(&public);
    let mut partial = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            .await
            .unwrap();
        partial.push(tcp);
    }
    let started = Instant::now();
    let reads = partial.into_iter().map(|mut tcp| async move {
        let response = read_response(&mut tcp, Duration::from_secs(15)).await;
        parse_response(&response)
    });
    for (status, body) in futures_util::future::join_all(reads).await {
        assert_eq!((status, code(&body)), (408, "request_timeout"), "{body}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let metrics = gw.metrics().await;
    let timeouts = metric_value(
        &metrics,
        "gateway_connections_rejected_total",
        &[("reason", "handshake_timeout")],
    );
    assert!(timeouts >= Some(CONNECTIONS as f64), "{timeouts:?}");
    // The node still serves.
    gw.connect_as("after").await;
}

/// Past `GATEWAY_MAX_PENDING_HANDSHAKES` connections in their handshake, a new one is refused
/// at once with 503; once they are gone, connections are served again.
#[tokio::test]
async fn connections_over_the_pending_handshake_bound_are_refused_at_once() {
    const BOUND: usize = 20;
    let config = GatewayConfig::new()
        .env("GATEWAY_MAX_PENDING_HANDSHAKES", BOUND.to_string())
        .env("GATEWAY_HANDSHAKE_TIMEOUT", "60s");
    let gw = TestGateway::spawn(config).await;
    let public = gw.public_url();
    let addr = host_of(&public).to_owned();
    let mut partial = Vec::new();
    for _ in 0..BOUND {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
        partial.push(tcp);
    }
    let started = Instant::now();
    let (status, body) = raw_exchange(&addr, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_eq!((status, code(&body)), (503, "overloaded"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let metrics = gw.metrics().await;
    let refused = metric_value(
        &metrics,
        "gateway_connections_rejected_total",
        &[("reason", "handshake_limit")],
    );
    assert!(refused >= Some(1.0), "{refused:?}");

    drop(partial);
    let url = gw.ws_url_with_token(&token("back"));
    eventually(
        Duration::from_secs(10),
        "a connection once the handshakes are gone",
        || {
            let url = url.clone();
            async move { e2e::TestClient::connect(&url).await.is_ok() }
        },
    )
    .await;
}
