//! Client authentication: JWT verification against an HMAC secret, a PEM public key or a JWKS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use publisher::wire::{ClientType, UserId};
use serde::Deserialize;
use serde_json::Value;

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
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// One verification key and the validation rules (algorithms included) that go with it.
struct VerifyKey {
    key: DecodingKey,
    validation: Validation,
}

impl VerifyKey {
    fn allows(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

/// The usable signature keys of a JWKS document.
struct Jwks {
    keys: Vec<(Option<String>, VerifyKey)>,
}

impl Jwks {
    /// The key named by `kid`; without a kid, the only key if there is exactly one.
    fn select(&self, kid: Option<&str>) -> Result<&VerifyKey, AuthError> {
        match (kid, self.keys.as_slice()) {
            (Some(kid), keys) => keys
                .iter()
                .find(|(id, _)| id.as_deref() == Some(kid))
                .map(|(_, key)| key)
                // The kid comes from the client: keep what ends up in logs short.
                .ok_or_else(|| AuthError::UnknownKey(Some(kid.chars().take(64).collect()))),
            (None, [(_, key)]) => Ok(key),
            (None, _) => Err(AuthError::UnknownKey(None)),
        }
    }
}

/// What every key's `Validation` has in common.
struct Policy {
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
}

impl Policy {
    fn validation(&self, algorithms: &[Algorithm]) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.algorithms = algorithms.to_vec();
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = self.audience.is_some();
        let mut required = vec!["exp"];
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// Verifies client tokens. Cheap to share behind an Arc; Send + Sync.
pub struct Authenticator {
    hmac: Option<(VerifyKey, EncodingKey)>,
    pem: Option<VerifyKey>,
    jwks: Option<Jwks>,
    policy: Policy,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("hmac", &self.hmac.is_some())
            .field("pem", &self.pem.as_ref().map(|k| &k.validation.algorithms))
            .field("jwks_keys", &self.jwks.as_ref().map(|j| j.keys.len()))
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads keys; errors name the file and what is wrong. Errors if no key at all is configured.
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
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
        let jwks = match &settings.jwks_file {
            Some(path) => Some(load_jwks(path, &policy)?),
            None => None,
        };
        if hmac.is_none() && pem.is_none() && jwks.is_none() {
            return Err(AuthError::NoKeyConfigured);
        }
        Ok(Self {
            hmac,
            pem,
            jwks,
            policy,
        })
    }

    /// Development mode: a random 32-byte HMAC secret (HS256). Returns the authenticator and the secret (hex) so it can be logged.
    ///
    /// The hex string itself is the HMAC key, so restarting with `GATEWAY_JWT_SECRET=<hex>`
    /// accepts the same tokens.
    pub fn development() -> (Self, String) {
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
            jwks: None,
            policy,
        };
        (auth, secret)
    }

    /// Mints an HS256 token with the development secret (None if this authenticator has no HMAC secret). Used to log a ready-made demo token in development mode.
    pub fn demo_token(&self, user_id: &str, ttl: Duration) -> Option<String> {
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

    /// Checks signature, algorithm, exp, nbf, aud, iss and the claims' shape.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::Malformed)?;
        let alg = header.alg;
        let mut result = Err(AuthError::AlgorithmNotAllowed(format!("{alg:?}")));
        for key in self
            .candidates(alg, header.kid.as_deref())?
            .into_iter()
            .flatten()
        {
            result = jsonwebtoken::decode::<RawClaims>(token, &key.key, &key.validation)
                .map_err(|e| map_jwt_error(e, alg));
            if !matches!(result, Err(AuthError::InvalidSignature)) {
                break;
            }
        }
        result?.claims.into_claims()
    }

    /// The keys a token signed with `alg` (and naming `kid`) may be checked against, best first.
    fn candidates(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<[Option<&VerifyKey>; 2], AuthError> {
        let not_allowed = || AuthError::AlgorithmNotAllowed(format!("{alg:?}"));
        if alg.family() == AlgorithmFamily::Hmac {
            // HMAC tokens are only ever checked against the configured secret, never a public key.
            return match &self.hmac {
                Some((key, _)) => Ok([Some(key), None]),
                None => Err(not_allowed()),
            };
        }
        let pem = self.pem.as_ref().filter(|k| k.allows(alg));
        let jwk = match self.jwks.as_ref().map(|jwks| jwks.select(kid)) {
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

/// The HMAC secret as a verification key (HS256/384/512) and as a signing key for demo tokens.
fn hmac_keys(secret: &str, policy: &Policy) -> (VerifyKey, EncodingKey) {
    let key = DecodingKey::from_secret(secret.as_bytes());
    let validation = policy.validation(AlgorithmFamily::Hmac.algorithms());
    let signing = EncodingKey::from_secret(secret.as_bytes());
    (VerifyKey { key, validation }, signing)
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::KeyFile {
        path: path.to_owned(),
        source,
    })
}

fn invalid_key(path: &Path, kind: ErrorKind) -> AuthError {
    AuthError::InvalidKey {
        path: path.to_owned(),
        source: kind.into(),
    }
}

/// Loads a PEM public key; its type decides the algorithms it accepts.
fn load_pem(path: &Path, policy: &Policy) -> Result<VerifyKey, AuthError> {
    let pem = read_key_file(path)?;
    if pem.windows(16).any(|w| w == b"PRIVATE KEY-----") {
        return Err(invalid_key(path, ErrorKind::InvalidKeyFormat));
    }
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|source| AuthError::InvalidKey {
            path: path.to_owned(),
            source,
        })?;
    let curve = match key.family() {
        AlgorithmFamily::Ec => match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65 | 33) => Some(EllipticCurve::P256),
            Ok(97 | 49) => Some(EllipticCurve::P384),
            _ => return Err(invalid_key(path, ErrorKind::InvalidEcdsaKey)),
        },
        _ => None,
    };
    checked_key(key, curve.as_ref(), None, policy).map_err(|source| AuthError::InvalidKey {
        path: path.to_owned(),
        source,
    })
}

/// Loads the signature keys of a JWKS document; encryption and symmetric keys are skipped.
fn load_jwks(path: &Path, policy: &Policy) -> Result<Jwks, AuthError> {
    let text = read_key_file(path)?;
    let set: JwkSet = serde_json::from_slice(&text).map_err(|source| AuthError::InvalidJwks {
        path: path.to_owned(),
        source,
    })?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let declared = match jwk.common.key_algorithm {
            Some(ka) => match Algorithm::try_from(ka) {
                Ok(alg) => Some(alg),
                Err(_) => continue, // an encryption algorithm or one we do not support
            },
            None => None,
        };
        let curve = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => None,
            AlgorithmParameters::EllipticCurve(p) => Some(&p.curve),
            AlgorithmParameters::OctetKeyPair(p) => Some(&p.curve),
            // Symmetric keys would let HS* tokens in through the key set: only the secret does that.
            _ => continue,
        };
        let checked =
            DecodingKey::from_jwk(jwk).and_then(|k| checked_key(k, curve, declared, policy));
        match checked {
            Ok(key) => keys.push((jwk.common.key_id.clone(), key)),
            Err(e) if matches!(e.kind(), ErrorKind::UnsupportedAlgorithm) => {} // e.g. EC P-521
            Err(source) => {
                return Err(AuthError::InvalidKey {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    if keys.is_empty() {
        return Err(invalid_key(path, ErrorKind::UnsupportedAlgorithm));
    }
    Ok(Jwks { keys })
}

/// Works out the algorithms a key accepts (narrowed to `declared` if given) and checks that
/// the crypto backend can use it, so that a broken key fails at startup and not per token.
fn checked_key(
    key: DecodingKey,
    curve: Option<&EllipticCurve>,
    declared: Option<Algorithm>,
    policy: &Policy,
) -> Result<VerifyKey, JwtError> {
    let algorithms: &[Algorithm] = match (key.family(), curve) {
        (AlgorithmFamily::Rsa, _) => AlgorithmFamily::Rsa.algorithms(),
        (AlgorithmFamily::Ec, Some(EllipticCurve::P256)) => &[Algorithm::ES256],
        (AlgorithmFamily::Ec, Some(EllipticCurve::P384)) => &[Algorithm::ES384],
        (AlgorithmFamily::Ed, Some(EllipticCurve::Ed25519) | None) => &[Algorithm::EdDSA],
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    let algorithms = match declared {
        Some(alg) if algorithms.contains(&alg) => vec![alg],
        Some(_) => return Err(ErrorKind::InvalidAlgorithm.into()),
        None => algorithms.to_vec(),
    };
    match key.family() {
        AlgorithmFamily::Rsa => {
            jsonwebtoken::jwk::Jwk::from_decoding_key(&key, None)?;
        }
        AlgorithmFamily::Ed if key.try_get_as_bytes()?.len() != 32 => {
            // The backend slices the first 32 bytes without checking: refuse before it can panic.
            return Err(ErrorKind::InvalidEddsaKey.into());
        }
        _ => probe(&key, algorithms.first().copied().unwrap_or_default())?,
    }
    Ok(VerifyKey {
        key,
        validation: policy.validation(&algorithms),
    })
}

/// Verifies a dummy token so that the backend parses an EC or Ed25519 key: a bad signature
/// means the key itself was accepted.
fn probe(key: &DecodingKey, alg: Algorithm) -> Result<(), JwtError> {
    let header = match alg {
        Algorithm::ES256 => "eyJhbGciOiJFUzI1NiJ9",
        Algorithm::ES384 => "eyJhbGciOiJFUzM4NCJ9",
        Algorithm::EdDSA => "eyJhbGciOiJFZERTQSJ9",
        _ => return Ok(()),
    };
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let token = format!("{header}.e30.AA");
    match jsonwebtoken::decode::<serde::de::IgnoredAny>(&token, key, &validation) {
        Err(e) if !matches!(e.kind(), ErrorKind::InvalidSignature) => Err(e),
        _ => Ok(()),
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

/// The claims as they come; their shape is checked in [`RawClaims::into_claims`].
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Value,
    #[serde(default)]
    user_id: Value,
    #[serde(default)]
    exp: Value,
    #[serde(default)]
    client_type: Value,
    #[serde(default)]
    channels: Value,
}

impl RawClaims {
    fn into_claims(self) -> Result<Claims, AuthError> {
        let bad = |msg: &str| AuthError::InvalidClaims(msg.to_owned());
        let (name, id) = match (self.sub, self.user_id) {
            (Value::Null, Value::Null) => return Err(bad("missing sub")),
            (Value::Null, id) => ("user_id", id),
            (id, _) => ("sub", id),
        };
        let id = match id {
            Value::String(s) => s,
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => return Err(bad(&format!("{name} must be a string or an integer"))),
        };
        let user_id = UserId::parse(&id).map_err(|_| {
            bad(&format!("{name} is not a valid user id (1 to 255 bytes, no spaces, control characters, '#' or ',')"))
        })?;
        let exp = match &self.exp {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.round() as u64)
            }),
            _ => None,
        };
        let expires_at = exp
            .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
            .ok_or_else(|| bad("missing exp"))?;
        let client_type =
            match self.client_type {
                Value::Null => None,
                Value::String(s) => Some(ClientType::parse(&s).map_err(|_| {
                    bad("client_type is not valid (1 to 64 bytes of [A-Za-z0-9_.-])")
                })?),
                _ => return Err(bad("client_type must be a string")),
            };
        let channels = match self.channels {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => ChannelPattern::parse(s),
                    _ => Err(bad("channels must be a list of strings")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad("channels must be a list of strings")),
        };
        Ok(Claims {
            user_id,
            expires_at,
            client_type,
            channels,
        })
    }
}

/// What the gateway uses from a verified token.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The user: `sub`, or `user_id` when `sub` is absent.
    pub user_id: UserId,
    /// When the token expires (`exp`, without leeway).
    pub expires_at: SystemTime,
    /// The `client_type` claim, if any.
    pub client_type: Option<ClientType>,
    /// The `channels` claim: patterns of channels this user may subscribe to beyond the public ones.
    pub channels: Vec<ChannelPattern>,
}

/// A channel pattern from the `channels` claim: `*` matches any run of characters within one `:`-separated segment (`room:*` matches `room:1`, not `room:1:x`; `*` alone matches `jobs` but not `room:1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern(String);

impl ChannelPattern {
    /// Validates a pattern: 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]` plus `*`.
    pub fn parse(pattern: &str) -> Result<Self, AuthError> {
        let valid_byte = |b: u8| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b':' | b'#' | b'.' | b'@' | b'=' | b',' | b'-' | b'*'
                )
        };
        if pattern.is_empty() || pattern.len() > 255 || !pattern.bytes().all(valid_byte) {
            let shown = pattern
                .char_indices()
                .nth(64)
                .map_or(pattern, |(i, _)| &pattern[..i]);
            return Err(AuthError::InvalidClaims(format!(
                "invalid channel pattern {shown:?}: 1 to 255 bytes of [A-Za-z0-9_:#.@=,-*]"
            )));
        }
        Ok(Self(pattern.to_owned()))
    }

    /// Whether `channel` matches, segment by segment.
    pub fn matches(&self, channel: &str) -> bool {
        let mut pattern = self.0.split(':');
        let mut channel = channel.split(':');
        loop {
            match (pattern.next(), channel.next()) {
                (Some(p), Some(c)) if glob(p.as_bytes(), c.as_bytes()) => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// The pattern as written in the token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Wildcard match of one segment: `*` matches any run of bytes (possibly empty).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&b) if b == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, from)) => {
                    p = star + 1;
                    t = from + 1;
                    backtrack = Some((star, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
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
    /// Neither a secret, a public key file nor a JWKS file is configured.
    #[error(
        "no token key configured: set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY_FILE or GATEWAY_JWKS_FILE"
    )]
    NoKeyConfigured,
}

impl AuthError {
    /// A short, low-cardinality reason for metrics labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::AlgorithmNotAllowed(_) => "algorithm",
            Self::UnknownKey(_) => "unknown_key",
            Self::InvalidSignature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::InvalidAudience => "audience",
            Self::InvalidIssuer => "issuer",
            Self::InvalidClaims(_) => "claims",
            Self::KeyFile { .. }
            | Self::InvalidKey { .. }
            | Self::InvalidJwks { .. }
            | Self::NoKeyConfigured => "config",
        }
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
mod tests {
    use super::*;
    use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
    use serde_json::json;

    const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQC6++oFkJELfFjk
+Y/KWdhqxU8+u7GO5pRaXIE3gPFW1uhO5tpJjabwGrGpI26rQNV47TcCbCRy0CBE
TsnjjM4FvIdFKjM8KoB/zjGHTSKLvHbaUYISpYooNE0o4JZjb8CvL+S+oY+su3zW
vJBhwY35J57huXxuSkzrZhUTBNBkXWVQRJUCmmlYKGPrvTWkOSIfc/l3jO09OA7A
KoM069uHD2hzePip9+VAIZlvsodPMXxHmoF6cdCP2a1h+hz/QJDCV+WMlJ4lj8AO
/autfKh3Ngc1NoxmhCVRf2hktfBVMT7iB6Tn0/ijpTzWs2Ar8mHkhqYr/m6ND0Sy
CtlUQJljAgMBAAECggEADGvGmHcJg5NPjmpbmGwOec1AneC3A1Ci4zvI46h/n66o
APHJ51/vCn0jdyJg7CRi6eUMJe+MHkpgElmPhLuqRexHqhsLC0Chh5vpY10G4fRz
ir4mX1m6yz/qLkB5DQLz8E9EqTsvQaC0wskE6FGEvlvY7JK3RtZNtMdzt+82bqw+
hgJGvBNTsyb1OqPTcP7+6E1/v8AiE6DQuBFs2dZTfOySj7Tra+MmtmCZgHSSu7QU
C3aV6ua7mI6x25FUXLomNk49H3gd+bv7vVIiLo/UmMrJadXwPAM6aY3OtH3ewNGf
X8DMFIgxxg7acvPbwBOebc9Pwx2ocea7Ay8Dxg20yQKBgQDg6XeGHlUswzcG8IGa
/NizIa3WUeVDrGgHMuk+iUqpu6OTMFw7d2mdWJiSAKpPb8YJBk6PNCMXm/A7gtd3
uV7E7OA9qIW+tApH8Dxkp7EicNG59lRljMKcgWH+wok1RwBZroaH1UbIPzhA3aJI
Z/hX6QpnIFs+deVLPXQ7tLtruwKBgQDU1Fz+hhBivxDrC1d42jc/X10NhbAFyIFy
qzTsoGNI8slUwrdp2u9FX8yK041HaPE2icsdjfrW+/NqvbHV7eliqrhnBMSbiM9T
4SL6mKfKjY7VdMkJ5JP3YDqQVn2SHgQxiP6FdVMpYT4tLFrC6o8xcYxTIYveaMXH
XC7ytRoqeQKBgQDCx854e4p+Uq40N1O3GyS8tf0r8A7idcw998xiGVps9pDqJuap
pXf1CcZQI31bgEx8glbE1H1Ts/vwPhdGm2ZEm3R0UZ9KkfeZZ6eV8FiKoDQxnfBn
ZekgyzhH/sf/OPdHs8rUllNPltir7IXfuRMtZyhYOYBr7oRejeE81/+8gwKBgQCa
hWzXJsLyzsIbxOpHRjfifPx0euGn8UF63a7ZNkGfjxZ5wb2kz131Qm6hRKNIe3rW
HAkqdhDu0ZKTpxJcvhU6m7SypxWPzy6oOcdJplf8ifZwKBBmbFy5uFYMwZ793Wky
BcK1Zs9wNbgM2C01Y1N/lG9LVAnW+r7N1bIIaVCMEQKBgQDW5Ugn6T5lRA/vI7GR
J+xtGdguKHKnRumd00EiulUXyOLc7sozhxRcQPs1j9PQMXeHNCnyEmuwuFCtJYpP
J0FzP5Ww3HDYuOTc1Ydz8Idff+2zY2T6rJSKxq32/dP+7cDZoORA899z5UzNkG11
qtRFM+kxQy/m0Wy9al37vcAOhg==
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuvvqBZCRC3xY5PmPylnY
asVPPruxjuaUWlyBN4DxVtboTubaSY2m8BqxqSNuq0DVeO03AmwkctAgRE7J44zO
BbyHRSozPCqAf84xh00ii7x22lGCEqWKKDRNKOCWY2/Ary/kvqGPrLt81ryQYcGN
+See4bl8bkpM62YVEwTQZF1lUESVApppWChj6701pDkiH3P5d4ztPTgOwCqDNOvb
hw9oc3j4qfflQCGZb7KHTzF8R5qBenHQj9mtYfoc/0CQwlfljJSeJY/ADv2rrXyo
dzYHNTaMZoQlUX9oZLXwVTE+4gek59P4o6U81rNgK/Jh5IamK/5ujQ9EsgrZVECZ
YwIDAQAB
-----END PUBLIC KEY-----
";
    const RSA2_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApzLV9UPyX2DXgVS/kmV6
KexIJRYwdjN0/qxFvJWoPgr7OE7Azq3xUpTcSKPYu2bI3c/AEjve1s7KxIV5111k
5A4sAXS4zFAWgjiIt/i/JzxgsOZEIJM0ebB7xXEvAySVAWek92XYwtjYH2QQ7sNT
2WmidmG6X18ktLMLV7qyQVRQxcMP0O5N5T0f3LHfUDSFgamTFIy0YUfwiwNfhcxy
/UpSraEHjAODnH/V58bR0D4iYmJc1uOzCOgeFqwGiBTRuqM+RNvjFovvQ37w2AmN
bsNWcxjlNtB46Wg7KHdTXodhXfl/PDIigCEkq72CkXBOiVvpqAF2+uO69pW7AFDb
swIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjzZ414W0vMkAomBW
qeGSoC6vagby4mUgfpxcqMNkrQOhRANCAARQ3TGxshDwwALJ+xW265QnbhJVEe2L
Pt7GRXa/+LAByeb31wbg6nS23UfTmmZPvAlo4j9394NS6kaNt5Zh94YD
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEUN0xsbIQ8MACyfsVtuuUJ24SVRHt
iz7exkV2v/iwAcnm99cG4Op0tt1H05pmT7wJaOI/d/eDUupGjbeWYfeGAw==
-----END PUBLIC KEY-----
";
    const ED_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIG2FAbvvBb/tK6YxzsdJEs3EEq94mbFnLeklkYfdeFZX
-----END PRIVATE KEY-----
";
    const ED_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAR6Ubdl4vfzgZ55sGvINuK8bPYpG62PWFROdX3LAWbMg=
-----END PUBLIC KEY-----
";

    /// A file in the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let unique = format!("gateway-auth-test-{}-{name}", std::process::id());
            let path = std::env::temp_dir().join(unique);
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(sub: &str) -> Value {
        json!({ "sub": sub, "exp": now() + 600 })
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs(alg: Algorithm, claims: &Value) -> String {
        sign(alg, None, claims, &EncodingKey::from_secret(b"s3cret"))
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
    }

    fn secret_settings() -> AuthSettings {
        AuthSettings {
            jwt_secret: Some("s3cret".into()),
            ..AuthSettings::default()
        }
    }

    fn with_pem(file: &TempFile) -> Authenticator {
        let settings = AuthSettings {
            jwt_public_key_file: Some(file.0.clone()),
            ..AuthSettings::default()
        };
        Authenticator::new(&settings).unwrap()
    }

    fn jwk(pem: &str, kid: &str, alg: Algorithm) -> Jwk {
        let key = match alg.family() {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            _ => DecodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        };
        let mut jwk = Jwk::from_decoding_key(&key, None).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }

    fn jwks_file(name: &str, keys: Vec<Jwk>) -> TempFile {
        TempFile::new(name, &serde_json::to_string(&JwkSet { keys }).unwrap())
    }

    #[test]
    fn authenticator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Authenticator>();
    }

    #[test]
    fn hs256_and_hs384_tokens_verify() {
        let auth = Authenticator::new(&secret_settings()).unwrap();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let c = auth.verify(&hs(alg, &claims("42"))).unwrap();
            assert_eq!(c.user_id.as_str(), "42");
            assert!(c.client_type.is_none() && c.channels.is_empty());
            let exp = c.expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert!(exp > now() + 500);
        }
    }

    #[test]
    fn rs256_and_ps256_tokens_verify_against_a_pem_key() {
        let file = TempFile::new("rs.pub", RSA_PUBLIC);
        let auth = with_pem(&file);
        for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
            let token = sign(alg, None, &claims("u1"), &rsa_key());
            assert_eq!(auth.verify(&token).unwrap().user_id.as_str(), "u1");
        }
        let es = sign(
            Algorithm::ES256,
            None,
            &claims("u1"),
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        );
        assert!(matches!(auth.verify(&es), Err(AuthError::AlgorithmNotAllowed(a)) if a == "ES256"));
    }

    #[test]
    fn es256_token_verifies_against_a_p256_key() {
        let file = TempFile::new("es.pub", EC_PUBLIC);
        let auth = with_pem(&file);
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        assert_eq!(
            auth.verify(&sign(Algorithm::ES256, None, &claims("e"), &key))
                .unwrap()
                .user_id
                .as_str(),
            "e"
        );
    }

    #[test]
    fn eddsa_token_verifies_against_an_ed25519_key() {
        let file = TempFile::new("ed.pub", ED_PUBLIC);
        let auth = with_pem(&file);
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        assert_eq!(
            auth.verify(&sign(Algorithm::EdDSA, None, &claims("d"), &key))
                .unwrap()
                .user_id
                .as_str(),
            "d"
        );
    }

    #[test]
    fn jwks_keys_are_selected_by_kid() {
        let file = jwks_file(
            "keys.json",
            vec![
                jwk(RSA_PUBLIC, "r1", Algorithm::RS256),
                jwk(RSA2_PUBLIC, "r2", Algorithm::RS256),
                jwk(EC_PUBLIC, "e1", Algorithm::ES256),
            ],
        );
        let settings = AuthSettings {
            jwks_file: Some(file.0.clone()),
            ..AuthSettings::default()
        };
        let auth = Authenticator::new(&settings).unwrap();
        let c = claims("j");
        assert!(
            auth.verify(&sign(Algorithm::RS256, Some("r1"), &c, &rsa_key()))
                .is_ok()
        );
        let ec_key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        assert!(
            auth.verify(&sign(Algorithm::ES256, Some("e1"), &c, &ec_key))
                .is_ok()
        );
        // Signed by r1's private key but naming r2: checked against r2, so it fails.
        let wrong = sign(Algorithm::RS256, Some("r2"), &c, &rsa_key());
        assert!(matches!(
            auth.verify(&wrong),
            Err(AuthError::InvalidSignature)
        ));
        // An RSA token naming the EC key.
        let mismatch = sign(Algorithm::RS256, Some("e1"), &c, &rsa_key());
        assert!(matches!(
            auth.verify(&mismatch),
            Err(AuthError::AlgorithmNotAllowed(_))
        ));
        let unknown = auth
            .verify(&sign(Algorithm::RS256, Some("k9"), &c, &rsa_key()))
            .unwrap_err();
        assert_eq!(unknown.to_string(), "unknown key id \"k9\"");
        assert_eq!(unknown.reason(), "unknown_key");
        let no_kid = sign(Algorithm::RS256, None, &c, &rsa_key());
        assert!(matches!(
            auth.verify(&no_kid),
            Err(AuthError::UnknownKey(None))
        ));
    }

    #[test]
    fn a_single_jwks_key_serves_tokens_without_kid() {
        let mut key = jwk(RSA_PUBLIC, "only", Algorithm::RS256);
        key.common.key_algorithm = Some(KeyAlgorithm::RS256);
        let file = jwks_file("single.json", vec![key]);
        let settings = AuthSettings {
            jwks_file: Some(file.0.clone()),
            ..AuthSettings::default()
        };
        let auth = Authenticator::new(&settings).unwrap();
        assert!(
            auth.verify(&sign(Algorithm::RS256, None, &claims("s"), &rsa_key()))
                .is_ok()
        );
        // The key declares RS256: PS256 is refused even though the key type would fit.
        let ps = sign(Algorithm::PS256, None, &claims("s"), &rsa_key());
        assert!(matches!(
            auth.verify(&ps),
            Err(AuthError::AlgorithmNotAllowed(_))
        ));
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused() {
        let auth = Authenticator::new(&AuthSettings {
            leeway: Duration::from_secs(5),
            ..secret_settings()
        })
        .unwrap();
        let expired = hs(Algorithm::HS256, &json!({ "sub": "1", "exp": now() - 60 }));
        let err = auth.verify(&expired).unwrap_err();
        assert!(matches!(err, AuthError::Expired));
        assert_eq!(
            (err.to_string().as_str(), err.reason()),
            ("token expired", "expired")
        );
        let within_leeway = hs(Algorithm::HS256, &json!({ "sub": "1", "exp": now() - 2 }));
        assert!(auth.verify(&within_leeway).is_ok());
        let early = hs(
            Algorithm::HS256,
            &json!({ "sub": "1", "exp": now() + 600, "nbf": now() + 300 }),
        );
        assert!(matches!(auth.verify(&early), Err(AuthError::NotYetValid)));
    }

    #[test]
    fn missing_exp_is_refused() {
        let auth = Authenticator::new(&secret_settings()).unwrap();
        let err = auth
            .verify(&hs(Algorithm::HS256, &json!({ "sub": "1" })))
            .unwrap_err();
        assert!(
            matches!(&err, AuthError::InvalidClaims(m) if m == "missing exp"),
            "{err}"
        );
        let bad = hs(Algorithm::HS256, &json!({ "sub": "1", "exp": "soon" }));
        assert!(matches!(
            auth.verify(&bad),
            Err(AuthError::InvalidClaims(_))
        ));
    }

    #[test]
    fn alg_none_is_malformed() {
        let auth = Authenticator::new(&secret_settings()).unwrap();
        let valid = hs(Algorithm::HS256, &claims("1"));
        let payload = valid.split('.').nth(1).unwrap();
        // base64url({"alg":"none"})
        let unsigned = format!("eyJhbGciOiJub25lIn0.{payload}.");
        let err = auth.verify(&unsigned).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)));
        assert_eq!(err.reason(), "malformed");
        assert!(err.to_string().contains("alg \"none\""), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        for garbage in ["abc", "a.b.c", "....", "é.é.é"] {
            assert!(
                matches!(auth.verify(garbage), Err(AuthError::Malformed(_))),
                "{garbage}"
            );
        }
        assert!(matches!(auth.verify(""), Err(AuthError::Missing)));
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let file = TempFile::new("confusion.pub", RSA_PUBLIC);
        // An attacker signs HS256 with the (public) RSA key bytes as the HMAC secret.
        let public_as_secret = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        let forged = sign(Algorithm::HS256, None, &claims("admin"), &public_as_secret);
        let rsa_only = with_pem(&file);
        let err = rsa_only.verify(&forged).unwrap_err();
        assert!(
            matches!(&err, AuthError::AlgorithmNotAllowed(a) if a == "HS256"),
            "{err}"
        );
        let settings = AuthSettings {
            jwt_public_key_file: Some(file.0.clone()),
            ..secret_settings()
        };
        let both = Authenticator::new(&settings).unwrap();
        assert!(matches!(
            both.verify(&forged),
            Err(AuthError::InvalidSignature)
        ));
        // Both configured: each family still works with its own key.
        assert!(both.verify(&hs(Algorithm::HS256, &claims("1"))).is_ok());
        assert!(
            both.verify(&sign(Algorithm::RS256, None, &claims("1"), &rsa_key()))
                .is_ok()
        );
    }

    #[test]
    fn audience_is_checked_only_when_configured() {
        let auth = Authenticator::new(&AuthSettings {
            audience: Some("gw".into()),
            ..secret_settings()
        })
        .unwrap();
        let ok = hs(
            Algorithm::HS256,
            &json!({ "sub": "1", "exp": now() + 60, "aud": ["x", "gw"] }),
        );
        assert!(auth.verify(&ok).is_ok());
        let wrong = hs(
            Algorithm::HS256,
            &json!({ "sub": "1", "exp": now() + 60, "aud": "other" }),
        );
        assert!(matches!(
            auth.verify(&wrong),
            Err(AuthError::InvalidAudience)
        ));
        let missing = hs(Algorithm::HS256, &claims("1"));
        assert!(matches!(
            auth.verify(&missing),
            Err(AuthError::InvalidAudience)
        ));
        let open = Authenticator::new(&secret_settings()).unwrap();
        assert!(open.verify(&wrong).is_ok());
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let auth = Authenticator::new(&AuthSettings {
            issuer: Some("idp".into()),
            ..secret_settings()
        })
        .unwrap();
        let ok = hs(
            Algorithm::HS256,
            &json!({ "sub": "1", "exp": now() + 60, "iss": "idp" }),
        );
        assert!(auth.verify(&ok).is_ok());
        let wrong = hs(
            Algorithm::HS256,
            &json!({ "sub": "1", "exp": now() + 60, "iss": "evil" }),
        );
        let err = auth.verify(&wrong).unwrap_err();
        assert!(matches!(err, AuthError::InvalidIssuer));
        assert_eq!(err.reason(), "issuer");
        assert!(matches!(
            auth.verify(&hs(Algorithm::HS256, &claims("1"))),
            Err(AuthError::InvalidIssuer)
        ));
    }

    #[test]
    fn bad_signatures_are_refused() {
        let auth = Authenticator::new(&secret_settings()).unwrap();
        let other = sign(
            Algorithm::HS256,
            None,
            &claims("1"),
            &EncodingKey::from_secret(b"other"),
        );
        assert!(matches!(
            auth.verify(&other),
            Err(AuthError::InvalidSignature)
        ));
        let valid = hs(Algorithm::HS256, &claims("1"));
        let (head, sig) = valid.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{head}.{flipped}{}", &sig[1..]);
        assert!(matches!(
            auth.verify(&tampered),
            Err(AuthError::InvalidSignature)
        ));
        let file = TempFile::new("sig.pub", RSA2_PUBLIC);
        let rsa = with_pem(&file);
        let err = rsa
            .verify(&sign(Algorithm::RS256, None, &claims("1"), &rsa_key()))
            .unwrap_err();
        assert_eq!(
            (err.reason(), err.to_string().as_str()),
            ("signature", "invalid token signature")
        );
    }

    #[test]
    fn user_id_comes_from_sub_or_user_id() {
        let auth = Authenticator::new(&secret_settings()).unwrap();
        let numeric = hs(Algorithm::HS256, &json!({ "sub": 42, "exp": now() + 60 }));
        assert_eq!(auth.verify(&numeric).unwrap().user_id.as_str(), "42");
        let fallback = hs(
            Algorithm::HS256,
            &json!({ "user_id": "auth0|7", "exp": now() + 60 }),
        );
        assert_eq!(auth.verify(&fallback).unwrap().user_id.as_str(), "auth0|7");
        let numeric_fallback = hs(
            Algorithm::HS256,
            &json!({ "user_id": 7, "exp": now() + 60 }),
        );
        assert_eq!(
            auth.verify(&numeric_fallback).unwrap().user_id.as_str(),
            "7"
        );
        let both = hs(
            Algorithm::HS256,
            &json!({ "sub": "s", "user_id": "u", "exp": now() + 60 }),
        );
        assert_eq!(auth.verify(&both).unwrap().user_id.as_str(), "s");
        for bad in [
            json!({ "exp": now() + 60 }),
            json!({ "sub": "a#b", "exp": now() + 60 }),
            json!({ "sub": 1.5, "exp": now() + 60 }),
            json!({ "sub": "", "exp": now() + 60 }),
        ] {
            let err = auth.verify(&hs(Algorithm::HS256, &bad)).unwrap_err();
            assert!(matches!(err, AuthError::InvalidClaims(_)), "{bad}: {err}");
            assert_eq!(err.reason(), "claims");
        }
    }

    #[test]
    fn channels_and_client_type_claims_are_parsed() {
        let auth = Authenticator::new(&secret_settings()).unwrap();
        let token = hs(
            Algorithm::HS256,
            &json!({ "sub": "1", "exp": now() + 60, "client_type": "gui", "channels": ["room:*", "jobs"] }),
        );
        let c = auth.verify(&token).unwrap();
        assert_eq!(c.client_type.unwrap().as_str(), "gui");
        let patterns: Vec<&str> = c.channels.iter().map(ChannelPattern::as_str).collect();
        assert_eq!(patterns, ["room:*", "jobs"]);
        assert!(c.channels[0].matches("room:7"));
        for bad in [json!(["ok", "no spaces"]), json!("room:*"), json!([1])] {
            let token = hs(
                Algorithm::HS256,
                &json!({ "sub": "1", "exp": now() + 60, "channels": bad }),
            );
            assert!(
                matches!(auth.verify(&token), Err(AuthError::InvalidClaims(_))),
                "{bad}"
            );
        }
        for bad in [json!("has space"), json!(3)] {
            let token = hs(
                Algorithm::HS256,
                &json!({ "sub": "1", "exp": now() + 60, "client_type": bad }),
            );
            assert!(
                matches!(auth.verify(&token), Err(AuthError::InvalidClaims(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn channel_patterns_match_segment_wise() {
        let p = |s: &str| ChannelPattern::parse(s).unwrap();
        assert!(p("room:*").matches("room:1"));
        assert!(!p("room:*").matches("room:1:x"));
        assert!(!p("room:*").matches("room"));
        assert!(!p("room:*").matches("lobby:1"));
        assert!(p("*").matches("jobs"));
        assert!(!p("*").matches("room:1"));
        assert!(p("*:*").matches("room:1"));
        assert!(p("jobs").matches("jobs") && !p("jobs").matches("jobs2"));
        assert!(p("user-*-feed").matches("user-42-feed"));
        assert!(!p("user-*-feed").matches("user-42-fee"));
        assert!(p("a*b*c").matches("aXbYbZc") && !p("a*b*c").matches("aXbYbZ"));
        assert!(
            p("room:*:chat").matches("room:9:chat") && !p("room:*:chat").matches("room:9:x:chat")
        );
        assert!(p("notifications#*").matches("notifications#42,43"));
        for bad in ["", "room:1 ", "röom", "a/b"] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ChannelPattern::parse(&"a".repeat(255)).is_ok());
        assert!(ChannelPattern::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn development_mode_mints_working_demo_tokens() {
        let (auth, secret) = Authenticator::development();
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        let token = auth.demo_token("demo", Duration::from_secs(3600)).unwrap();
        let c = auth.verify(&token).unwrap();
        assert_eq!(c.user_id.as_str(), "demo");
        // The logged secret is the key: a gateway started with it accepts the same token.
        let same = Authenticator::new(&AuthSettings {
            jwt_secret: Some(secret),
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(same.verify(&token).is_ok());
        let (other, _) = Authenticator::development();
        assert!(matches!(
            other.verify(&token),
            Err(AuthError::InvalidSignature)
        ));
        let file = TempFile::new("demo.pub", RSA_PUBLIC);
        assert!(
            with_pem(&file)
                .demo_token("demo", Duration::from_secs(60))
                .is_none()
        );
    }

    #[test]
    fn configuration_errors_name_the_problem() {
        let err = Authenticator::new(&AuthSettings::default()).unwrap_err();
        assert!(matches!(err, AuthError::NoKeyConfigured));
        assert_eq!(err.reason(), "config");
        let empty = AuthSettings {
            jwt_secret: Some(String::new()),
            ..AuthSettings::default()
        };
        assert!(matches!(
            Authenticator::new(&empty),
            Err(AuthError::NoKeyConfigured)
        ));
        let missing = PathBuf::from("/nonexistent/gateway-auth-key.pem");
        let settings = AuthSettings {
            jwt_public_key_file: Some(missing),
            ..AuthSettings::default()
        };
        let err = Authenticator::new(&settings).unwrap_err();
        assert!(matches!(err, AuthError::KeyFile { .. }));
        assert!(
            err.to_string()
                .contains("/nonexistent/gateway-auth-key.pem"),
            "{err}"
        );
        for (name, contents) in [
            ("garbage.pem", "not a key"),
            ("private.pem", RSA_PRIVATE),
            ("ecpriv.pem", EC_PRIVATE),
        ] {
            let file = TempFile::new(name, contents);
            let settings = AuthSettings {
                jwt_public_key_file: Some(file.0.clone()),
                ..AuthSettings::default()
            };
            let err = Authenticator::new(&settings).unwrap_err();
            assert!(matches!(err, AuthError::InvalidKey { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let bad_json = TempFile::new("bad.json", "{\"keys\": 3}");
        let settings = AuthSettings {
            jwks_file: Some(bad_json.0.clone()),
            ..AuthSettings::default()
        };
        assert!(matches!(
            Authenticator::new(&settings),
            Err(AuthError::InvalidJwks { .. })
        ));
        let only_oct = TempFile::new(
            "oct.json",
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
        );
        let settings = AuthSettings {
            jwks_file: Some(only_oct.0.clone()),
            ..AuthSettings::default()
        };
        assert!(matches!(
            Authenticator::new(&settings),
            Err(AuthError::InvalidKey { .. })
        ));
        let short_ed = TempFile::new(
            "ed.json",
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"d"}]}"#,
        );
        let settings = AuthSettings {
            jwks_file: Some(short_ed.0.clone()),
            ..AuthSettings::default()
        };
        assert!(matches!(
            Authenticator::new(&settings),
            Err(AuthError::InvalidKey { .. })
        ));
    }
}
