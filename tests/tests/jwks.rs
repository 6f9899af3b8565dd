//! Key rotation without restarts: `GATEWAY_JWKS_URL` fetched at start, for a token with an
//! unknown `kid` and on its schedule, keeping its keys when the endpoint fails; and
//! `GATEWAY_JWKS_FILE` re-read when it changes. Real gateway processes, a real HTTP endpoint.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use e2e::{
    GatewayConfig, JwksServer, KeyPair, TempDir, TestClient, TestGateway, TokenBuilder,
    assert_refused, eventually, free_port, jwks, metric_value,
};
use futures_util::future::join_all;
use serde_json::json;

/// Generous bound for what a scheduled refresh (every second here) or a file poll (every two
/// seconds) should have done.
const ROTATION_DEADLINE: Duration = Duration::from_secs(15);

/// A gateway that verifies tokens with the keys at `server` only, refreshed every `every` and
/// at most every `min` for unknown key ids.
fn url_gateway(server: &JwksServer, every: &str, min: &str) -> GatewayConfig {
    GatewayConfig::new()
        .without_jwt_secret()
        .env("GATEWAY_JWKS_URL", server.url())
        .env("GATEWAY_JWKS_REFRESH_INTERVAL", every)
        .env("GATEWAY_JWKS_MIN_REFRESH_INTERVAL", min)
}

fn signed(key: &KeyPair, kid: &str) -> String {
    key.sign_with_kid(&TokenBuilder::new("42"), kid)
}

/// Whether the upgrade with `token` is refused with 401.
async fn refused(gw: &TestGateway, token: &str) -> bool {
    matches!(gw.connect_token(token).await, Err(failure) if failure.status == 401)
}

async fn metric(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&gw.metrics().await, name, labels).unwrap_or(-1.0)
}

async fn refresh_errors(gw: &TestGateway) -> f64 {
    let labels = [("result", "error")];
    metric(gw, "gateway_jwks_refreshes_total", &labels).await
}

#[tokio::test]
async fn a_key_added_to_the_jwks_works_at_once_without_a_restart() {
    let (a, b) = (KeyPair::rsa(), KeyPair::ec_p256());
    let server = JwksServer::start(&jwks(&[(&a, "key-a")])).await;
    // The schedule is the default five minutes: only the unknown kid can bring key B in.
    let gw = TestGateway::spawn(url_gateway(&server, "5m", "30s")).await;
    let client = gw.connect_token(&signed(&a, "key-a")).await.unwrap();
    assert_eq!(client.user_id(), "42");
    assert_eq!(metric(&gw, "gateway_jwks_keys", &[]).await, 1.0);
    let fetched = server.requests();

    server.serve(&jwks(&[(&a, "key-a"), (&b, "key-b")]));
    // Several clients with the new key at once, on the first try: one fetch serves them all.
    let token = signed(&b, "key-b");
    let clients = join_all((0..5).map(|_| gw.connect_token(&token))).await;
    for client in clients {
        client.unwrap_or_else(|e| panic!("a key-b token was refused: {e}"));
    }
    assert_eq!(server.requests(), fetched + 1, "one fetch for five tokens");
    assert_eq!(metric(&gw, "gateway_jwks_keys", &[]).await, 2.0);

    // An auth frame and a refresh frame with the new key work too.
    let mut late = TestClient::connect_no_token(&gw).await;
    assert_eq!(late.auth(&token).await["user_id"], "42");
    let reply = late
        .request(json!({"type": "refresh", "token": token}))
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");

    // Another unknown kid within the min interval is refused at once, without a fetch.
    assert_refused(gw.connect_token(&signed(&b, "key-c")).await, 401);
    assert_eq!(server.requests(), fetched + 1);
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_is_refused_after_the_scheduled_refresh() {
    let (a, b) = (KeyPair::rsa(), KeyPair::ec_p256());
    let server = JwksServer::start(&jwks(&[(&a, "key-a"), (&b, "key-b")])).await;
    let gw = TestGateway::spawn(url_gateway(&server, "1s", "1s")).await;
    let (token_a, token_b) = (signed(&a, "key-a"), signed(&b, "key-b"));
    gw.connect_token(&token_a).await.unwrap();

    server.serve(&jwks(&[(&b, "key-b")]));
    eventually(
        ROTATION_DEADLINE,
        "key-a tokens are refused with 401",
        || refused(&gw, &token_a),
    )
    .await;
    gw.connect_token(&token_b).await.unwrap();
    assert_eq!(metric(&gw, "gateway_jwks_keys", &[]).await, 1.0);
}

#[tokio::test]
async fn keys_are_kept_while_the_jwks_endpoint_fails_or_is_down() {
    let b = KeyPair::ec_p256();
    let server = JwksServer::start(&jwks(&[(&b, "key-b")])).await;
    let gw = TestGateway::spawn(url_gateway(&server, "1s", "1s")).await;
    let token = signed(&b, "key-b");
    gw.connect_token(&token).await.unwrap();
    assert_eq!(refresh_errors(&gw).await, 0.0);

    let failures = [
        (500, "internal error"),
        (200, "{not json"),
        (200, r#"{"keys":[]}"#),
    ];
    for (status, body) in failures {
        let errors = refresh_errors(&gw).await;
        server.answer_with(status, body);
        let what = format!("a refresh answered {status} {body} is counted as an error");
        eventually(ROTATION_DEADLINE, &what, || async {
            refresh_errors(&gw).await > errors
        })
        .await;
        gw.connect_token(&token)
            .await
            .unwrap_or_else(|e| panic!("refused after {status} {body}: {e}"));
    }

    let errors = refresh_errors(&gw).await;
    server.stop();
    eventually(
        ROTATION_DEADLINE,
        "a refresh from a closed port fails",
        || async { refresh_errors(&gw).await > errors },
    )
    .await;
    gw.connect_token(&token).await.unwrap();
    assert_eq!(metric(&gw, "gateway_jwks_keys", &[]).await, 1.0);
    assert!(
        gw.logs().contains("keeping the last good keys"),
        "the failures are logged"
    );
}

/// Runs the gateway binary until it exits; returns whether it succeeded and its stderr.
async fn run_to_exit(envs: &[(&str, &str)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(e2e::binary("gateway"));
    command
        .env_clear()
        .env("NO_COLOR", "1")
        .env("GATEWAY_API_KEY", e2e::TEST_API_KEY)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the gateway did not exit within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

#[tokio::test]
async fn an_unreachable_jwks_url_stops_the_gateway_at_startup() {
    let url = format!("http://127.0.0.1:{}/.well-known/jwks.json", free_port());
    let (ok, stderr) = run_to_exit(&[("GATEWAY_JWKS_URL", &url)]).await;
    assert!(!ok, "the gateway started without its keys: {stderr}");
    assert!(stderr.contains(&url), "the message names the URL: {stderr}");
    assert!(stderr.contains("cannot connect"), "and the cause: {stderr}");

    let server = JwksServer::start(&json!({})).await;
    server.answer_with(404, "no such page");
    let (ok, stderr) = run_to_exit(&[("GATEWAY_JWKS_URL", &server.url())]).await;
    assert!(!ok, "the gateway started without its keys: {stderr}");
    assert!(stderr.contains("HTTP 404"), "{stderr}");
}

/// An https endpoint whose certificate no public authority signed: the TLS handshake runs and
/// fails, and the gateway says so.
#[tokio::test]
async fn an_https_jwks_url_with_an_untrusted_certificate_stops_the_gateway() {
    let dir = TempDir::new("jwks-tls");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = free_port();
    let _server = tokio::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "openssl s_server listens",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
    let url = format!("https://127.0.0.1:{port}/jwks.json");
    let (ok, stderr) = run_to_exit(&[("GATEWAY_JWKS_URL", &url)]).await;
    assert!(!ok, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

/// Points `link` at `target` the way a Kubernetes ConfigMap volume does: a new symlink renamed
/// over the old one.
fn swap_link(link: &Path, target: &Path) {
    let next = link.with_extension("next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(target, &next).unwrap();
    std::fs::rename(&next, link).unwrap();
}

#[tokio::test]
async fn a_rewritten_jwks_file_is_used_without_a_restart_and_a_broken_one_keeps_the_keys() {
    let (a, b) = (KeyPair::rsa(), KeyPair::ec_p256());
    let config = GatewayConfig::new().without_jwt_secret();
    let v1 = config.file("v1.json", jwks(&[(&a, "key-a")]).to_string());
    let link = v1.with_file_name("jwks.json");
    swap_link(&link, &v1);
    let config = config.env("GATEWAY_JWKS_FILE", link.display().to_string());
    let v2 = config.file("v2.json", jwks(&[(&a, "key-a"), (&b, "key-b")]).to_string());
    let v3 = config.file("v3.json", "{\"keys\": [ broken");
    let gw = TestGateway::spawn(config).await;
    let (token_a, token_b) = (signed(&a, "key-a"), signed(&b, "key-b"));
    gw.connect_token(&token_a).await.unwrap();
    assert_refused(gw.connect_token(&token_b).await, 401);

    swap_link(&link, &v2);
    eventually(ROTATION_DEADLINE, "a key-b token connects", || async {
        gw.connect_token(&token_b).await.is_ok()
    })
    .await;

    swap_link(&link, &v3);
    eventually(ROTATION_DEADLINE, "the broken file is counted", || async {
        refresh_errors(&gw).await >= 1.0
    })
    .await;
    gw.connect_token(&token_a).await.unwrap();
    gw.connect_token(&token_b).await.unwrap();
    assert_eq!(metric(&gw, "gateway_jwks_keys", &[]).await, 2.0);
    assert!(gw.logs().contains("keeping the last good keys"));
}
