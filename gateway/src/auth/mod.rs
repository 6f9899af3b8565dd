//! Client authentication: JWT verification against an HMAC secret, a PEM public key or a JWKS
//! (from a file or a URL, either of which may change while the gateway runs).

mod claims;
mod keys;
mod pattern;
mod rotation;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use tokio::sync::watch;

pub(crate) use claims::Claims;
use claims::RawClaims;
use keys::{Jwks, Policy, VerifyKey, hmac_keys, load_pem};
pub(crate) use pattern::ChannelPattern;
pub(crate) use rotation::JwksMetrics;
pub(crate) use rotation::{FetchError, RefreshSchedule};
use rotation::{FileKeys, RemoteKeys};

/// Largest clock skew honoured; a larger configured leeway is capped to this.
const MAX_LEEWAY: Duration = Duration::from_secs(24 * 3600);
/// Leeway used by [`Authenticator::development`].
const DEVELOPMENT_LEEWAY: Duration = Duration::from_secs(60);

/// How tokens are checked; built once at startup.
#[derive(Clone, Default)]
pub struct AuthSettings {
    /// HMAC secret for HS256/384/512 tokens (`GATEWAY_JWT_SECRET`); empty means unset.
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) (`GATEWAY_JWT_PUBLIC_KEY_FILE`).
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS document whose keys are chosen by the token's `kid` (`GATEWAY_JWKS_FILE`).
    pub jwks_file: Option<PathBuf>,
    /// An identity provider's JWKS endpoint, http or https (`GATEWAY_JWKS_URL`).
    pub jwks_url: Option<String>,
    /// When the JWKS endpoint is fetched again.
    pub jwks_refresh: RefreshSchedule,
    /// Required `aud` value when set (`GATEWAY_JWT_AUDIENCE`).
    pub audience: Option<String>,
    /// Required `iss` value when set (`GATEWAY_JWT_ISSUER`).
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (capped at one day).
    pub leeway: Duration,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field(
                "jwks_url",
                &self.jwks_url.as_deref().map(rotation::without_password),
            )
            .field("jwks_refresh", &self.jwks_refresh)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// Verifies client tokens. Cheap to share behind an Arc; Send + Sync.
pub(crate) struct Authenticator {
    hmac: Option<(VerifyKey, EncodingKey)>,
    pem: Option<VerifyKey>,
    jwks_file: Option<Arc<FileKeys>>,
    jwks_url: Option<Arc<RemoteKeys>>,
    policy: Policy,
    /// Turns true when the key sets stop being refreshed.
    stop: watch::Sender<bool>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [file, url] = self.key_sets().map(|set| set.map(|s| s.keys.len()));
        f.debug_struct("Authenticator")
            .field("hmac", &self.hmac.is_some())
            .field("pem", &self.pem.as_ref().map(|k| &k.validation.algorithms))
            .field("jwks_file_keys", &file)
            .field("jwks_url_keys", &url)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// [`with_metrics`](Self::with_metrics) without metrics.
    #[cfg(test)]
    pub(crate) fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
        Self::with_metrics(settings, JwksMetrics::default())
    }

    /// Loads keys; errors name the file and what is wrong. Errors if no key at all is
    /// configured. The JWKS URL holds no key until [`fetch_remote_keys`](Self::fetch_remote_keys).
    pub(crate) fn with_metrics(
        settings: &AuthSettings,
        metrics: JwksMetrics,
    ) -> Result<Self, AuthError> {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let policy = Policy {
            audience: non_empty(&settings.audience),
            issuer: non_empty(&settings.issuer),
            leeway: settings.leeway.min(MAX_LEEWAY).as_secs(),
        };
        let hmac = non_empty(&settings.jwt_secret).map(|secret| hmac_keys(&secret, &policy));
        let pem = match &settings.jwt_public_key_file {
            Some(path) => Some(load_pem(path, &policy)?),
            None => None,
        };
        let jwks_file = match &settings.jwks_file {
            Some(path) => Some(Arc::new(FileKeys::open(path, &policy, metrics.clone())?)),
            None => None,
        };
        let jwks_url = match settings.jwks_url.as_deref().filter(|url| !url.is_empty()) {
            Some(url) => Some(Arc::new(RemoteKeys::new(
                url,
                &policy,
                settings.jwks_refresh,
                metrics,
            )?)),
            None => None,
        };
        if hmac.is_none() && pem.is_none() && jwks_file.is_none() && jwks_url.is_none() {
            return Err(AuthError::NoKeyConfigured);
        }
        Ok(Self {
            hmac,
            pem,
            jwks_file,
            jwks_url,
            policy,
            stop: watch::Sender::new(false),
        })
    }

    /// Fetches the JWKS URL, if one is configured; the gateway does not start without its keys.
    pub(crate) async fn fetch_remote_keys(&self) -> Result<(), AuthError> {
        match &self.jwks_url {
            Some(remote) => remote.fetch_first().await,
            None => Ok(()),
        }
    }

    /// The task that keeps the JWKS file and URL fresh, if either is configured. It ends at
    /// [`stop_refreshing`](Self::stop_refreshing) or when this authenticator is dropped.
    pub(crate) fn refresher(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        if self.jwks_file.is_none() && self.jwks_url.is_none() {
            return None;
        }
        let (file, url) = (self.jwks_file.clone(), self.jwks_url.clone());
        Some(rotation::keep_fresh(file, url, self.stop.subscribe()))
    }

    /// Stops the refresher: the key sets stay as they are.
    pub(crate) fn stop_refreshing(&self) {
        self.stop.send_replace(true);
    }

    /// The JWKS key sets now: the file's, then the URL's.
    fn key_sets(&self) -> [Option<Arc<Jwks>>; 2] {
        [
            self.jwks_file.as_ref().map(|file| file.keys.current()),
            self.jwks_url.as_ref().map(|url| url.keys.current()),
        ]
    }

    /// Development mode: a random 32-byte HMAC secret (HS256). Returns the authenticator and the secret (hex) so it can be logged.
    ///
    /// The hex string itself is the HMAC key, so restarting with `GATEWAY_JWT_SECRET=<hex>`
    /// accepts the same tokens.
    pub(crate) fn development() -> (Self, String) {
        let bytes: [u8; 32] = rand::random();
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let policy = Policy {
            audience: None,
            issuer: None,
            leeway: DEVELOPMENT_LEEWAY.as_secs(),
        };
        let hmac = Some(hmac_keys(&secret, &policy));
        let auth = Self {
            hmac,
            pem: None,
            jwks_file: None,
            jwks_url: None,
            policy,
            stop: watch::Sender::new(false),
        };
        (auth, secret)
    }

    /// Mints an HS256 token with the development secret (None if this authenticator has no HMAC secret). Used to log a ready-made demo token in development mode.
    pub(crate) fn demo_token(&self, user_id: &str, ttl: Duration) -> Option<String> {
        let (_, key) = self.hmac.as_ref()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), user_id.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
        if let Some(aud) = &self.policy.audience {
            claims.insert("aud".into(), aud.as_str().into());
        }
        if let Some(iss) = &self.policy.issuer {
            claims.insert("iss".into(), iss.as_str().into());
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).ok()
    }

    /// The clock skew allowed on `exp` and `nbf` (the configured one, capped).
    pub(crate) fn leeway(&self) -> Duration {
        Duration::from_secs(self.policy.leeway)
    }

    /// [`verify`](Self::verify), but a token naming a `kid` that no key set holds first waits
    /// for the JWKS URL to be fetched again (at most once per min interval, one fetch shared
    /// by concurrent tokens, bounded by the fetch timeout).
    pub(crate) async fn verify_refreshing(&self, token: &str) -> Result<Claims, AuthError> {
        if let Some(remote) = &self.jwks_url
            && self.names_unknown_kid(token)
        {
            remote.refresh_for_unknown_kid().await;
        }
        self.verify(token)
    }

    /// Whether `token` is for a public key and names a `kid` that no key set holds.
    fn names_unknown_kid(&self, token: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        match header.kid {
            Some(kid) if header.alg.family() != AlgorithmFamily::Hmac => !self
                .key_sets()
                .iter()
                .flatten()
                .any(|set| set.find(&kid).is_some()),
            _ => false,
        }
    }

    /// Checks signature, algorithm, exp, nbf, aud, iss and the claims' shape, with the keys
    /// held now.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::Malformed)?;
        let alg = header.alg;
        let sets = self.key_sets();
        let mut result = Err(AuthError::AlgorithmNotAllowed(format!("{alg:?}")));
        for key in self
            .candidates(&sets, alg, header.kid.as_deref())?
            .into_iter()
            .flatten()
        {
            result = jsonwebtoken::decode::<RawClaims>(token, &key.key, &key.validation)
                .map_err(|e| map_jwt_error(e, alg));
            if !matches!(result, Err(AuthError::InvalidSignature)) {
                break;
            }
        }
        let claims = result?.claims.into_claims()?;
        // jsonwebtoken compares whole seconds and accepts a token through its `exp` second;
        // a session expires at the exact instant, so such a token would connect and be
        // closed with 4002 at once.
        let leeway = self.leeway();
        if claims.expires_at + leeway <= SystemTime::now() {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    /// The keys a token signed with `alg` (and naming `kid`) may be checked against, best first.
    fn candidates<'a>(
        &'a self,
        sets: &'a [Option<Arc<Jwks>>; 2],
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<[Option<&'a VerifyKey>; 2], AuthError> {
        let not_allowed = || AuthError::AlgorithmNotAllowed(format!("{alg:?}"));
        if alg.family() == AlgorithmFamily::Hmac {
            // HMAC tokens are only ever checked against the configured secret, never a public key.
            return match &self.hmac {
                Some((key, _)) => Ok([Some(key), None]),
                None => Err(not_allowed()),
            };
        }
        let pem = self.pem.as_ref().filter(|k| k.allows(alg));
        let configured = sets.iter().any(Option::is_some);
        let jwks = sets.iter().flatten().map(|set| &**set);
        let jwk = match configured.then(|| Jwks::select(jwks, kid)) {
            Some(Ok(key)) => Some(key).filter(|k| k.allows(alg)),
            Some(Err(unknown)) if pem.is_none() => return Err(unknown),
            Some(Err(_)) | None => None,
        };
        if jwk.is_none() && pem.is_none() {
            return Err(not_allowed());
        }
        Ok([jwk, pem])
    }
}

fn map_jwt_error(e: JwtError, alg: Algorithm) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => AuthError::InvalidSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::InvalidAudience,
        ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::InvalidAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::InvalidIssuer,
        ErrorKind::MissingRequiredClaim(c) => AuthError::InvalidClaims(format!("missing {c}")),
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::InvalidClaims(format!("{c} is not a number of seconds"))
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => AuthError::AlgorithmNotAllowed(format!("{alg:?}")),
        _ => AuthError::Malformed(e),
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("no token given")]
    Missing,
    /// Not a JWT, a bad header (an unsigned `alg: none` token included), bad base64 or JSON.
    #[error("malformed token: {}", malformed_hint(.0))]
    Malformed(#[source] JwtError),
    /// The token's algorithm cannot be used with the configured keys.
    #[error("token algorithm {0} is not accepted with the configured keys")]
    AlgorithmNotAllowed(String),
    /// The token's `kid` is not in the key set, or is missing where it is needed.
    #[error("{}", unknown_key_message(.0.as_deref()))]
    UnknownKey(Option<String>),
    /// The signature does not match.
    #[error("invalid token signature")]
    InvalidSignature,
    /// The token is past its `exp`.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// The `aud` claim is missing or not the configured audience.
    #[error("token audience (aud) is missing or not accepted")]
    InvalidAudience,
    /// The `iss` claim is missing or not the configured issuer.
    #[error("token issuer (iss) is missing or not accepted")]
    InvalidIssuer,
    /// A claim is missing or has the wrong shape.
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
    /// A key file cannot be read.
    #[error("cannot read key file {}: {source}", .path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("unusable key in {}: {}", .path.display(), key_error_hint(.source))]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// What jsonwebtoken found wrong.
        #[source]
        source: JwtError,
    },
    /// A JWKS file is not a valid JWKS document.
    #[error("invalid JWKS document {}: {source}", .path.display())]
    InvalidJwks {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The JWKS URL gave no usable key set.
    #[error("cannot fetch the JWKS at {url}: {source}")]
    JwksUrl {
        /// `GATEWAY_JWKS_URL`.
        url: String,
        /// What went wrong.
        #[source]
        source: FetchError,
    },
    /// Neither a secret, a public key file, a JWKS file nor a JWKS URL is configured.
    #[error(
        "no token key configured: set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY_FILE, GATEWAY_JWKS_FILE or GATEWAY_JWKS_URL"
    )]
    NoKeyConfigured,
}

/// Why a token was refused, as a low-cardinality metrics label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum TokenRefusal {
    /// No token was given.
    Missing,
    /// Not a well-formed JWT.
    Malformed,
    /// An algorithm the configured keys do not allow.
    Algorithm,
    /// A key id no configured key has.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `aud` does not match.
    Audience,
    /// `iss` does not match.
    Issuer,
    /// The claims are not usable.
    Claims,
    /// The gateway's own keys are misconfigured.
    Config,
}

impl TokenRefusal {
    /// The value as it appears in metrics labels and on the wire.
    pub(crate) fn label(self) -> &'static str {
        self.into()
    }
}

impl AuthError {
    /// Why the token was refused, for metrics and logs.
    pub(crate) fn refusal(&self) -> TokenRefusal {
        match self {
            Self::Missing => TokenRefusal::Missing,
            Self::Malformed(_) => TokenRefusal::Malformed,
            Self::AlgorithmNotAllowed(_) => TokenRefusal::Algorithm,
            Self::UnknownKey(_) => TokenRefusal::UnknownKey,
            Self::InvalidSignature => TokenRefusal::Signature,
            Self::Expired => TokenRefusal::Expired,
            Self::NotYetValid => TokenRefusal::NotYetValid,
            Self::InvalidAudience => TokenRefusal::Audience,
            Self::InvalidIssuer => TokenRefusal::Issuer,
            Self::InvalidClaims(_) => TokenRefusal::Claims,
            Self::KeyFile { .. }
            | Self::InvalidKey { .. }
            | Self::InvalidJwks { .. }
            | Self::JwksUrl { .. }
            | Self::NoKeyConfigured => TokenRefusal::Config,
        }
    }

    /// A short, low-cardinality reason for metrics labels and logs.
    pub fn reason(&self) -> &'static str {
        self.refusal().label()
    }
}

fn malformed_hint(e: &JwtError) -> &'static str {
    match e.kind() {
        ErrorKind::InvalidToken => "not a JWT (three base64url parts separated by '.')",
        ErrorKind::Base64(_) => "bad base64url encoding",
        ErrorKind::Utf8(_) => "not UTF-8",
        ErrorKind::Json(j) => {
            let msg = j.to_string();
            if msg.contains("unknown variant `none`") {
                "unsigned tokens (alg \"none\") are refused"
            } else if msg.contains("expected one of `HS256`") {
                "unsupported alg in the header"
            } else {
                "header or claims are not the expected JSON"
            }
        }
        _ => "invalid token",
    }
}

fn unknown_key_message(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("unknown key id {kid:?}"),
        None => "token has no key id (kid) and the key set holds several keys".to_owned(),
    }
}

fn key_error_hint(e: &JwtError) -> String {
    match e.kind() {
        ErrorKind::InvalidKeyFormat => {
            "not a PEM public key of a supported type (RSA, EC P-256/P-384, Ed25519; not a private key)".to_owned()
        }
        ErrorKind::InvalidRsaKey(msg) => format!("invalid RSA public key ({msg})"),
        ErrorKind::InvalidEcdsaKey => "invalid EC public key (P-256 or P-384 expected)".to_owned(),
        ErrorKind::InvalidEddsaKey => "invalid Ed25519 public key".to_owned(),
        ErrorKind::UnsupportedAlgorithm => {
            "no usable signature key (RSA, EC P-256/P-384 or Ed25519)".to_owned()
        }
        ErrorKind::InvalidAlgorithm => "a key's \"alg\" does not fit its key type".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod rotation_tests;
