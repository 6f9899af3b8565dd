//! JWTs for test clients: HS256 with the test secret by default, any key or algorithm on
//! demand, hand-built unsigned ones, and asymmetric key pairs made with `openssl`.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use testkit::TempDir;

/// The HMAC secret every [`GatewayConfig`](crate::GatewayConfig) starts with.
pub const TEST_JWT_SECRET: &str = "e2e-test-secret-do-not-use-anywhere-else-0123456789";

/// The admin API key every [`GatewayConfig`](crate::GatewayConfig) starts with.
pub const TEST_API_KEY: &str = "e2e-test-api-key-0123456789";

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// A valid token for `user_id`: HS256 with [`TEST_JWT_SECRET`], expiring in one hour.
pub fn token(user_id: &str) -> String {
    TokenBuilder::new(user_id).sign()
}

/// Claims of a test token, signed at the end with [`sign`](Self::sign) or another key.
///
/// Starts with `sub`, `iat` = now and `exp` = now + 1 hour.
#[derive(Debug, Clone)]
pub struct TokenBuilder {
    claims: Map<String, Value>,
}

impl TokenBuilder {
    /// Claims for user `sub`, valid for one hour.
    pub fn new(sub: &str) -> Self {
        let now = now_unix();
        let mut claims = Map::new();
        claims.insert("sub".into(), sub.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 3600).into());
        Self { claims }
    }

    /// Sets any claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Removes a claim (`exp`, `sub`, …).
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets `sub` (the user id).
    pub fn subject(self, sub: &str) -> Self {
        self.claim("sub", sub)
    }

    /// Sets `exp` to a Unix time.
    pub fn exp(self, unix_seconds: i64) -> Self {
        self.claim("exp", unix_seconds)
    }

    /// Sets `exp` relative to now; negative means already expired.
    pub fn expires_in(self, seconds: i64) -> Self {
        self.exp(now_unix() + seconds)
    }

    /// Sets `client_type`.
    pub fn client_type(self, client_type: &str) -> Self {
        self.claim("client_type", client_type)
    }

    /// Sets `channels`, the patterns this user may subscribe to beyond public channels.
    pub fn channels(self, patterns: &[&str]) -> Self {
        self.claim("channels", patterns.to_vec())
    }

    /// Sets `aud`.
    pub fn aud(self, audience: &str) -> Self {
        self.claim("aud", audience)
    }

    /// Sets `iss`.
    pub fn iss(self, issuer: &str) -> Self {
        self.claim("iss", issuer)
    }

    /// The claims so far.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Signs with HS256 and [`TEST_JWT_SECRET`].
    pub fn sign(&self) -> String {
        self.sign_hs256(TEST_JWT_SECRET.as_bytes())
    }

    /// Signs with HS256 and another secret.
    pub fn sign_hs256(&self, secret: &[u8]) -> String {
        self.sign_with(
            &Header::new(Algorithm::HS256),
            &EncodingKey::from_secret(secret),
        )
    }

    /// Signs with any header (algorithm, `kid`) and key.
    pub fn sign_with(&self, header: &Header, key: &EncodingKey) -> String {
        match jsonwebtoken::encode(header, &self.claims, key) {
            Ok(token) => token,
            Err(e) => panic!("cannot sign test token with {:?}: {e}", header.alg),
        }
    }

    /// A hand-built token with `"alg":"none"` and an empty signature, which no gateway may accept.
    pub fn unsigned(&self) -> String {
        let header = json!({"alg": "none", "typ": "JWT"}).to_string();
        let claims = Value::Object(self.claims.clone()).to_string();
        format!(
            "{}.{}.",
            base64url(header.as_bytes()),
            base64url(claims.as_bytes())
        )
    }
}

/// Base64url without padding, as JWTs use it.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

/// An asymmetric key pair generated with the `openssl` command-line tool, PEM-encoded.
#[derive(Debug, Clone)]
pub struct KeyPair {
    algorithm: Algorithm,
    private_pem: String,
    public_pem: String,
}

impl KeyPair {
    /// A fresh 2048-bit RSA key, for RS256.
    pub fn rsa() -> Self {
        Self::generate(
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        )
    }

    /// A fresh P-256 key, for ES256.
    pub fn ec_p256() -> Self {
        Self::generate(
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    /// A fresh Ed25519 key, for EdDSA.
    pub fn ed25519() -> Self {
        Self::generate(Algorithm::EdDSA, &["-algorithm", "ED25519"])
    }

    fn generate(algorithm: Algorithm, genpkey_args: &[&str]) -> Self {
        let dir = TempDir::new("e2e-keys");
        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        openssl(
            Command::new("openssl")
                .arg("genpkey")
                .args(genpkey_args)
                .arg("-out")
                .arg(&private),
        );
        openssl(
            Command::new("openssl")
                .arg("pkey")
                .arg("-in")
                .arg(&private)
                .arg("-pubout")
                .arg("-out")
                .arg(&public),
        );
        let read = |path: &std::path::Path| match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        };
        Self {
            algorithm,
            private_pem: read(&private),
            public_pem: read(&public),
        }
    }

    /// The algorithm this key signs with (RS256, ES256 or EdDSA).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public key, PEM (SubjectPublicKeyInfo), as `GATEWAY_JWT_PUBLIC_KEY_FILE` holds it.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The private key as a signing key.
    pub fn encoding_key(&self) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        let key = match self.algorithm {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        };
        match key {
            Ok(key) => key,
            Err(e) => panic!("cannot load the {:?} test key: {e}", self.algorithm),
        }
    }

    /// Signs `claims` with this key, without a `kid`.
    pub fn sign(&self, claims: &TokenBuilder) -> String {
        claims.sign_with(&Header::new(self.algorithm), &self.encoding_key())
    }

    /// Signs `claims` with this key and names `kid` in the header.
    pub fn sign_with_kid(&self, claims: &TokenBuilder, kid: &str) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_owned());
        claims.sign_with(&header, &self.encoding_key())
    }

    /// The public key as a JWK with key id `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        let mut jwk = match Jwk::from_encoding_key(&self.encoding_key(), self.algorithm) {
            Ok(jwk) => jwk,
            Err(e) => panic!(
                "cannot make a JWK of the {:?} test key: {e}",
                self.algorithm
            ),
        };
        jwk.common.key_id = Some(kid.to_owned());
        match serde_json::to_value(&jwk) {
            Ok(value) => value,
            Err(e) => panic!("cannot serialise a JWK: {e}"),
        }
    }
}

/// A JWKS document (`{"keys":[…]}`) of the public halves of `keys`, each with its `kid`.
pub fn jwks(keys: &[(&KeyPair, &str)]) -> Value {
    let keys: Vec<Value> = keys.iter().map(|(key, kid)| key.jwk(kid)).collect();
    json!({ "keys": keys })
}

fn openssl(command: &mut Command) {
    match command.output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("cannot run {command:?} (is the openssl command installed?): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
