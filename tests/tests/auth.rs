//! Authentication: where the token may come from, which tokens are refused before the
//! upgrade, browser origins, and what happens when a connection's token expires.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    GatewayConfig, KeyPair, StatusCode, TEST_API_KEY, TestClient, TestGateway, TokenBuilder,
    assert_error, assert_http_error, assert_refused, jwks, now_unix, parse_rfc3339, token,
    with_header, ws_request,
};
use serde_json::json;

async fn gateway() -> TestGateway {
    TestGateway::spawn(GatewayConfig::new()).await
}

#[tokio::test]
async fn token_in_query_string_is_accepted() {
    let gw = gateway().await;
    let client = TestClient::connect(&gw.ws_url_with_token(&token("42")))
        .await
        .unwrap();
    assert_eq!(client.user_id(), "42");
}

#[tokio::test]
async fn token_in_authorization_header_is_accepted() {
    let gw = gateway().await;
    let bearer = format!("Bearer {}", token("42"));
    let request = with_header(ws_request(&gw.ws_url()), "authorization", &bearer);
    let client = TestClient::connect_with(request).await.unwrap();
    assert_eq!(client.user_id(), "42");
}

#[tokio::test]
async fn token_in_first_auth_frame_is_accepted() {
    let gw = gateway().await;
    let mut client = TestClient::connect_no_token(&gw).await;
    let established = client.auth(&token("42")).await;
    assert_eq!(established["user_id"], "42");
    let pong = client.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn malformed_token_is_refused_with_401() {
    let gw = gateway().await;
    assert_refused(gw.connect_token("not-a-jwt").await, 401);
    assert_refused(gw.connect_token("a.b.c").await, 401);
}

#[tokio::test]
async fn token_with_bad_signature_is_refused_with_401() {
    let gw = gateway().await;
    let forged = TokenBuilder::new("42").sign_hs256(b"some-other-secret-of-sufficient-length");
    assert_refused(gw.connect_token(&forged).await, 401);
}

#[tokio::test]
async fn expired_token_is_refused_with_401() {
    let gw = gateway().await;
    let expired = TokenBuilder::new("42").expires_in(-3600).sign();
    assert_refused(gw.connect_token(&expired).await, 401);
}

#[tokio::test]
async fn token_without_exp_is_refused_with_401() {
    let gw = gateway().await;
    let forever = TokenBuilder::new("42").without("exp").sign();
    assert_refused(gw.connect_token(&forever).await, 401);
}

#[tokio::test]
async fn unsigned_alg_none_token_is_refused_with_401() {
    let gw = gateway().await;
    let unsigned = TokenBuilder::new("42").unsigned();
    assert_refused(gw.connect_token(&unsigned).await, 401);
}

#[tokio::test]
async fn audience_is_checked_when_configured() {
    let gw =
        TestGateway::spawn(GatewayConfig::new().env("GATEWAY_JWT_AUDIENCE", "e2e-gateway")).await;
    let right = TokenBuilder::new("42").aud("e2e-gateway").sign();
    gw.connect_token(&right).await.unwrap();
    let wrong = TokenBuilder::new("42").aud("another-service").sign();
    assert_refused(gw.connect_token(&wrong).await, 401);
    let missing = TokenBuilder::new("42").sign();
    assert_refused(gw.connect_token(&missing).await, 401);
}

#[tokio::test]
async fn issuer_is_checked_when_configured() {
    let gw =
        TestGateway::spawn(GatewayConfig::new().env("GATEWAY_JWT_ISSUER", "https://auth.example"))
            .await;
    let right = TokenBuilder::new("42").iss("https://auth.example").sign();
    gw.connect_token(&right).await.unwrap();
    let wrong = TokenBuilder::new("42").iss("https://evil.example").sign();
    assert_refused(gw.connect_token(&wrong).await, 401);
    let missing = TokenBuilder::new("42").sign();
    assert_refused(gw.connect_token(&missing).await, 401);
}

/// A gateway that only knows a public key must not take that key as an HMAC secret.
#[tokio::test]
async fn hs256_token_signed_with_the_rsa_public_key_is_refused_with_401() {
    let keys = KeyPair::rsa();
    let config = GatewayConfig::new()
        .without_jwt_secret()
        .jwt_public_key_pem(keys.public_pem());
    let gw = TestGateway::spawn(config).await;
    gw.connect_token(&keys.sign(&TokenBuilder::new("42")))
        .await
        .unwrap();
    let confused = TokenBuilder::new("42").sign_hs256(keys.public_pem().as_bytes());
    assert_refused(gw.connect_token(&confused).await, 401);
}

async fn public_key_token_is_accepted(keys: KeyPair) {
    let config = GatewayConfig::new()
        .without_jwt_secret()
        .jwt_public_key_pem(keys.public_pem());
    let gw = TestGateway::spawn(config).await;
    let client = gw
        .connect_token(&keys.sign(&TokenBuilder::new("42")))
        .await
        .unwrap_or_else(|e| panic!("{:?} token refused: {e}", keys.algorithm()));
    assert_eq!(client.user_id(), "42");
    let other_key = match keys.algorithm() {
        jsonwebtoken::Algorithm::ES256 => KeyPair::ec_p256(),
        jsonwebtoken::Algorithm::EdDSA => KeyPair::ed25519(),
        _ => KeyPair::rsa(),
    };
    let forged = other_key.sign(&TokenBuilder::new("42"));
    assert_refused(gw.connect_token(&forged).await, 401);
}

#[tokio::test]
async fn rs256_token_is_accepted_with_a_public_key_file() {
    public_key_token_is_accepted(KeyPair::rsa()).await;
}

#[tokio::test]
async fn es256_token_is_accepted_with_a_public_key_file() {
    public_key_token_is_accepted(KeyPair::ec_p256()).await;
}

#[tokio::test]
async fn eddsa_token_is_accepted_with_a_public_key_file() {
    public_key_token_is_accepted(KeyPair::ed25519()).await;
}

#[tokio::test]
async fn jwks_key_is_chosen_by_kid() {
    let (rsa, ec) = (KeyPair::rsa(), KeyPair::ec_p256());
    let config = GatewayConfig::new()
        .without_jwt_secret()
        .jwks(&jwks(&[(&rsa, "rsa-1"), (&ec, "ec-1")]));
    let gw = TestGateway::spawn(config).await;
    let claims = TokenBuilder::new("42");
    gw.connect_token(&rsa.sign_with_kid(&claims, "rsa-1"))
        .await
        .unwrap();
    gw.connect_token(&ec.sign_with_kid(&claims, "ec-1"))
        .await
        .unwrap();
    // Signed by one key but naming the other.
    let mismatched = KeyPair::ec_p256().sign_with_kid(&claims, "ec-1");
    assert_refused(gw.connect_token(&mismatched).await, 401);
}

#[tokio::test]
async fn jwks_token_with_unknown_kid_is_refused_with_401() {
    let rsa = KeyPair::rsa();
    let config = GatewayConfig::new()
        .without_jwt_secret()
        .jwks(&jwks(&[(&rsa, "rsa-1")]));
    let gw = TestGateway::spawn(config).await;
    let unknown = rsa.sign_with_kid(&TokenBuilder::new("42"), "rsa-2");
    assert_refused(gw.connect_token(&unknown).await, 401);
}

#[tokio::test]
async fn bad_auth_frame_closes_with_4001() {
    let gw = gateway().await;
    let mut client = TestClient::connect_no_token(&gw).await;
    client
        .send_json(json!({"type": "auth", "token": "not-a-jwt"}))
        .await;
    client.expect_close(4001).await;
}

#[tokio::test]
async fn expired_token_in_auth_frame_closes_with_4001() {
    let gw = gateway().await;
    let mut client = TestClient::connect_no_token(&gw).await;
    let expired = TokenBuilder::new("42").expires_in(-3600).sign();
    client
        .send_json(json!({"type": "auth", "token": expired}))
        .await;
    client.expect_close(4001).await;
}

/// Takes about ten seconds: the gateway waits that long for the auth frame.
#[tokio::test]
async fn missing_auth_frame_closes_with_4001_after_ten_seconds() {
    let gw = gateway().await;
    let mut client = TestClient::connect_no_token(&gw).await;
    client.expect_close(4001).await;
}

#[tokio::test]
async fn browser_from_another_origin_is_refused_with_403() {
    let gw = TestGateway::spawn(
        GatewayConfig::new().env("GATEWAY_ALLOWED_ORIGINS", "https://app.example"),
    )
    .await;
    let request = with_header(
        ws_request(&gw.ws_url_with_token(&token("42"))),
        "origin",
        "https://evil.example",
    );
    assert_refused(TestClient::connect_with(request).await, 403);
}

#[tokio::test]
async fn allowed_origin_and_clients_without_origin_connect() {
    let gw = TestGateway::spawn(
        GatewayConfig::new().env("GATEWAY_ALLOWED_ORIGINS", "https://app.example"),
    )
    .await;
    let browser = with_header(
        ws_request(&gw.ws_url_with_token(&token("42"))),
        "origin",
        "https://app.example",
    );
    TestClient::connect_with(browser).await.unwrap();
    // Non-browser clients send no Origin at all.
    gw.connect_as("42").await;
}

fn zero_leeway() -> GatewayConfig {
    GatewayConfig::new().env("GATEWAY_JWT_LEEWAY", "0s")
}

#[tokio::test]
async fn token_expiring_during_the_connection_closes_it_with_4002() {
    let gw = TestGateway::spawn(zero_leeway()).await;
    let short = TokenBuilder::new("42").expires_in(2).sign();
    let mut client = gw.connect_token(&short).await.unwrap();
    client.expect_close(4002).await;
}

#[tokio::test]
async fn refresh_before_expiry_keeps_the_connection_open() {
    let gw = TestGateway::spawn(zero_leeway()).await;
    let short = TokenBuilder::new("42").expires_in(2).sign();
    let mut client = gw.connect_token(&short).await.unwrap();

    let fresh = TokenBuilder::new("42").expires_in(3600).sign();
    let reply = client
        .request(json!({"type": "refresh", "token": fresh}))
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    let expires_at = parse_rfc3339(&reply["expires_at"]);
    let expected = std::time::UNIX_EPOCH + Duration::from_secs((now_unix() + 3600) as u64);
    let gap = expected
        .duration_since(expires_at)
        .or_else(|_| expires_at.duration_since(expected))
        .unwrap();
    assert!(
        gap < Duration::from_secs(60),
        "expires_at {} is not the new exp",
        reply["expires_at"]
    );

    // Past the old expiry: still open.
    client.expect_no_frame(Duration::from_secs(4)).await;
    let pong = client.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn refresh_with_another_users_token_is_refused_and_the_connection_stays() {
    let gw = gateway().await;
    let mut client = gw.connect_as("42").await;
    let reply = client
        .request(json!({"type": "refresh", "token": token("43")}))
        .await;
    assert_error(&reply, "unauthorized");
    let pong = client.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(client.user_id(), "42");
}

#[tokio::test]
async fn development_mode_starts_without_keys_and_refuses_guessable_tokens() {
    let gw = TestGateway::spawn(GatewayConfig::new().without_keys()).await;
    assert!(gw.api_key().is_none());
    // The secret is random: neither our test secret nor an unsigned token gets in.
    assert_refused(gw.connect_token(&token("42")).await, 401);
    assert_refused(
        gw.connect_token(&TokenBuilder::new("42").unsigned()).await,
        401,
    );
    // Nor does the admin API take our test key, or no key.
    let publish = json!({"broadcast": true, "event": "hello"});
    for key in [Some(TEST_API_KEY), None] {
        let (status, body) = gw
            .post_admin_with_key("/api/publish", key, publish.clone())
            .await;
        assert_http_error(status, &body, StatusCode::UNAUTHORIZED);
    }
}
