//! Tests of key rotation: the JWKS file re-read when it changes, the JWKS URL fetched at
//! start, for unknown key ids (once for concurrent tokens) and on failure keeping its keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::tests::{EC_PRIVATE, EC_PUBLIC, RSA_PUBLIC, TempFile, claims, jwk, rsa_key, sign};
use super::*;

fn rsa_jwk() -> Jwk {
    jwk(RSA_PUBLIC, "r1", Algorithm::RS256)
}

fn ec_jwk() -> Jwk {
    jwk(EC_PUBLIC, "e1", Algorithm::ES256)
}

fn document(keys: Vec<Jwk>) -> String {
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn rsa_token() -> String {
    sign(Algorithm::RS256, Some("r1"), &claims("r"), &rsa_key())
}

fn ec_token(kid: &str) -> String {
    let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    sign(Algorithm::ES256, Some(kid), &claims("e"), &key)
}

/// Real, unregistered counters, to read what the key sets counted.
struct Counted {
    ok: IntCounter,
    error: IntCounter,
    keys: IntGauge,
}

impl Counted {
    fn new() -> Self {
        Self {
            ok: IntCounter::new("ok", "ok").unwrap(),
            error: IntCounter::new("error", "error").unwrap(),
            keys: IntGauge::new("keys", "keys").unwrap(),
        }
    }

    fn metrics(&self) -> JwksMetrics {
        JwksMetrics::new(self.ok.clone(), self.error.clone(), self.keys.clone())
    }
}

fn file_settings(path: &std::path::Path) -> AuthSettings {
    AuthSettings {
        jwks_file: Some(path.to_owned()),
        ..AuthSettings::default()
    }
}

fn file_keys(auth: &Authenticator) -> &FileKeys {
    auth.jwks_file.as_deref().unwrap()
}

#[tokio::test]
async fn a_rewritten_jwks_file_is_used_after_its_reload() {
    let file = TempFile::new("rotate.json", &document(vec![rsa_jwk()]));
    let counted = Counted::new();
    let auth = Authenticator::with_metrics(&file_settings(&file.0), counted.metrics()).unwrap();
    assert!(auth.verify(&rsa_token()).is_ok());

    file_keys(&auth).reload_if_changed().await;
    assert_eq!(counted.ok.get(), 1, "an unchanged file is not read again");

    std::fs::write(&file.0, document(vec![ec_jwk()])).unwrap();
    file_keys(&auth).reload_if_changed().await;
    assert!(auth.verify(&ec_token("e1")).is_ok());
    assert!(matches!(
        auth.verify(&rsa_token()),
        Err(AuthError::UnknownKey(Some(_)))
    ));
    assert_eq!((counted.ok.get(), counted.keys.get()), (2, 1));
}

#[tokio::test]
async fn a_broken_rewrite_keeps_the_last_good_keys() {
    let file = TempFile::new("broken.json", &document(vec![rsa_jwk()]));
    let counted = Counted::new();
    let auth = Authenticator::with_metrics(&file_settings(&file.0), counted.metrics()).unwrap();
    let no_usable_key = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
    for broken in ["{not json", r#"{"keys":[]}"#, no_usable_key] {
        std::fs::write(&file.0, broken).unwrap();
        file_keys(&auth).reload_if_changed().await;
        assert!(auth.verify(&rsa_token()).is_ok(), "after {broken}");
    }
    std::fs::remove_file(&file.0).unwrap();
    file_keys(&auth).reload_if_changed().await;
    assert!(auth.verify(&rsa_token()).is_ok(), "after removing the file");
    assert_eq!(counted.error.get(), 4);
    assert_eq!(counted.keys.get(), 1);
}

/// A Kubernetes ConfigMap volume swaps a symlink to a new directory; the file's own path stays.
#[cfg(unix)]
#[tokio::test]
async fn a_swapped_symlink_is_followed() {
    let v1 = TempFile::new("v1.json", &document(vec![rsa_jwk()]));
    let v2 = TempFile::new("v2.json", &document(vec![rsa_jwk(), ec_jwk()]));
    let link = TempFile(v1.0.with_extension("link"));
    let _ = std::fs::remove_file(&link.0);
    std::os::unix::fs::symlink(&v1.0, &link.0).unwrap();
    let auth = Authenticator::new(&file_settings(&link.0)).unwrap();
    assert!(auth.verify(&ec_token("e1")).is_err());

    let next = TempFile(v1.0.with_extension("next"));
    let _ = std::fs::remove_file(&next.0);
    std::os::unix::fs::symlink(&v2.0, &next.0).unwrap();
    std::fs::rename(&next.0, &link.0).unwrap();
    file_keys(&auth).reload_if_changed().await;
    assert!(auth.verify(&ec_token("e1")).is_ok());
    assert!(auth.verify(&rsa_token()).is_ok());
}

#[tokio::test]
async fn the_refresher_stops_when_asked() {
    let file = TempFile::new("stop.json", &document(vec![rsa_jwk()]));
    let auth = Authenticator::new(&file_settings(&file.0)).unwrap();
    let refresher = tokio::spawn(auth.refresher().unwrap());
    auth.stop_refreshing();
    tokio::time::timeout(Duration::from_secs(5), refresher)
        .await
        .unwrap()
        .unwrap();
    let secret_only = Authenticator::new(&AuthSettings {
        jwt_secret: Some("s3cret".into()),
        ..AuthSettings::default()
    })
    .unwrap();
    assert!(secret_only.refresher().is_none());
}

/// A JWKS endpoint on loopback whose answer the test sets, counting the requests it gets.
struct Endpoint {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Endpoint {
    async fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new((200, body)));
        let requests = Arc::new(AtomicUsize::new(0));
        let (shared, count) = (Arc::clone(&answer), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (shared, count) = (Arc::clone(&shared), Arc::clone(&count));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent tokens arrive while the fetch runs.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let (status, body) = shared.lock().unwrap().clone();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self {
            url,
            answer,
            requests,
            task,
        }
    }

    fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn url_settings(url: &str) -> AuthSettings {
    AuthSettings {
        jwks_url: Some(url.to_owned()),
        ..AuthSettings::default()
    }
}

#[tokio::test]
async fn concurrent_tokens_with_a_new_kid_share_one_fetch() {
    let endpoint = Endpoint::start(document(vec![rsa_jwk()])).await;
    let counted = Counted::new();
    let auth = Arc::new(
        Authenticator::with_metrics(&url_settings(&endpoint.url), counted.metrics()).unwrap(),
    );
    auth.fetch_remote_keys().await.unwrap();
    assert!(auth.verify_refreshing(&rsa_token()).await.is_ok());
    assert_eq!(endpoint.requests(), 1);

    endpoint.answer(200, &document(vec![rsa_jwk(), ec_jwk()]));
    let tokens = (0..8).map(|_| {
        let auth = Arc::clone(&auth);
        tokio::spawn(async move { auth.verify_refreshing(&ec_token("e1")).await })
    });
    for token in tokens.collect::<Vec<_>>() {
        assert!(token.await.unwrap().is_ok());
    }
    assert_eq!(endpoint.requests(), 2, "one fetch for all eight tokens");
    assert_eq!(counted.keys.get(), 2);

    // Within the min interval another unknown kid is refused without a fetch.
    let unknown = auth.verify_refreshing(&ec_token("e9")).await;
    assert!(matches!(unknown, Err(AuthError::UnknownKey(Some(_)))));
    assert_eq!(endpoint.requests(), 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let endpoint = Endpoint::start(document(vec![rsa_jwk()])).await;
    let counted = Counted::new();
    let auth =
        Authenticator::with_metrics(&url_settings(&endpoint.url), counted.metrics()).unwrap();
    auth.fetch_remote_keys().await.unwrap();
    let remote = auth.jwks_url.as_deref().unwrap();
    for (status, body) in [(500, "oops"), (200, "{not json"), (200, r#"{"keys":[]}"#)] {
        endpoint.answer(status, body);
        remote.refresh().await;
        assert!(auth.verify(&rsa_token()).is_ok(), "after {status} {body}");
    }
    drop(endpoint);
    remote.refresh().await;
    assert!(auth.verify(&rsa_token()).is_ok(), "with the endpoint down");
    assert_eq!((counted.ok.get(), counted.error.get()), (1, 4));
    assert_eq!(counted.keys.get(), 1);
}

#[tokio::test]
async fn a_first_fetch_that_fails_names_the_url_and_the_cause() {
    let endpoint = Endpoint::start(String::new()).await;
    endpoint.answer(404, "not here");
    let auth = Authenticator::new(&url_settings(&endpoint.url)).unwrap();
    let error = auth.fetch_remote_keys().await.unwrap_err().to_string();
    assert!(error.contains(&endpoint.url), "{error}");
    assert!(error.contains("HTTP 404"), "{error}");

    let closed = format!("http://127.0.0.1:{}/jwks.json", testkit::free_port());
    let auth = Authenticator::new(&url_settings(&closed)).unwrap();
    let error = auth.fetch_remote_keys().await.unwrap_err();
    assert_eq!(error.reason(), "config");
    let message = error.to_string();
    assert!(message.contains(&closed), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
}

#[test]
fn a_url_password_is_not_shown() {
    let shown = rotation::without_password("https://user:s3cret@idp.example/jwks");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("idp.example"), "{shown}");
    let plain = "https://idp.example/.well-known/jwks.json";
    assert_eq!(rotation::without_password(plain), plain);
}
