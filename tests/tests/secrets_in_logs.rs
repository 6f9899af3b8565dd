//! What the gateway logs: never a token, the JWT secret or the API key outside development
//! mode, even at debug level, whatever the token's fate (accepted, refreshed, refused).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    GatewayConfig, SseStream, TEST_API_KEY, TEST_JWT_SECRET, TestClient, TestGateway, TokenBuilder,
    get_poll, http_client,
};
use serde_json::json;

/// Every way a token or key reaches the gateway, once each.
async fn exercise(gw: &TestGateway, tokens: &[String]) {
    let [query, frame, refreshed, header, expired, forged, sse] = tokens else {
        panic!("seven tokens")
    };
    let mut by_query = gw.connect_token(query).await.unwrap();
    by_query.subscribe_ok(&["jobs"]).await;
    let reply = by_query
        .request(json!({"type": "refresh", "token": refreshed}))
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    let bad = by_query
        .request(json!({"type": "refresh", "token": forged}))
        .await;
    assert_eq!(bad["type"], "error", "{bad}");

    let mut by_frame = TestClient::connect_no_token(gw).await;
    by_frame.auth(frame).await;

    let request = e2e::with_header(
        e2e::ws_request(&gw.ws_url()),
        "authorization",
        &format!("Bearer {header}"),
    );
    TestClient::connect_with(request).await.unwrap();
    assert!(gw.connect_token(expired).await.is_err());
    assert!(gw.connect_token(forged).await.is_err());
    let mut refused_frame = TestClient::connect_no_token(gw).await;
    refused_frame
        .send_json(json!({"type": "auth", "token": forged}))
        .await;
    refused_frame.expect_close(4001).await;

    let mut stream = SseStream::connect(&format!(
        "{}/sse?channels=jobs&token={sse}",
        gw.public_url()
    ))
    .await;
    stream.next_message().await.unwrap();
    let base = gw.public_url();
    let poll = get_poll(
        &http_client(),
        &base,
        &[("token", forged), ("channels", "jobs")],
        &[],
    )
    .await;
    assert_eq!(poll.status, 401, "{}", poll.body);

    gw.publish_ok(json!({"channel": "jobs", "event": "e", "data": {}}))
        .await;
    let wrong_key = http_client()
        .get(format!("{}/api/stats", gw.admin_url()))
        .bearer_auth("not-the-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
}

#[tokio::test]
async fn no_token_secret_or_api_key_is_logged_at_debug_level() {
    let config = GatewayConfig::new().env("GATEWAY_LOG", "debug");
    let gw = TestGateway::spawn(config).await;
    let user = |name: &str| TokenBuilder::new(name).expires_in(3600);
    let tokens = vec![
        user("query").sign(),
        user("frame").sign(),
        user("query").expires_in(7200).sign(),
        user("header").sign(),
        user("expired").exp(e2e::now_unix() - 3600).sign(),
        user("forged").sign_hs256(b"another secret of enough length!"),
        user("sse").sign(),
    ];
    exercise(&gw, &tokens).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = gw.logs();
    assert!(
        logs.contains("DEBUG"),
        "the run logged at debug level:\n{logs}"
    );
    for token in &tokens {
        // The signature is what makes a token usable; its header and claims are not secret.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token was logged:\n{logs}");
    }
    assert!(
        !logs.contains(TEST_JWT_SECRET),
        "the JWT secret was logged:\n{logs}"
    );
    assert!(
        !logs.contains(TEST_API_KEY),
        "the API key was logged:\n{logs}"
    );
    assert!(
        !logs.contains("not-the-key-0123456789"),
        "a wrong API key was logged"
    );
}

/// The one exception, by design: development mode logs the credentials it made up.
#[tokio::test]
async fn development_mode_logs_the_credentials_it_made_up_and_says_so() {
    let gw = TestGateway::spawn(GatewayConfig::new().without_keys()).await;
    let logs = gw.logs();
    assert!(
        logs.contains("DEVELOPMENT MODE, NOT FOR PRODUCTION"),
        "{logs}"
    );
    assert!(logs.contains("jwt_secret="), "{logs}");
    assert!(logs.contains("api_key="), "{logs}");
}
