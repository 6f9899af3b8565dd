//! Loading and checking verification keys: the HMAC secret, a PEM public key, a JWKS document.

use std::path::Path;

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Validation};

use super::AuthError;

/// One verification key and the validation rules (algorithms included) that go with it.
pub(super) struct VerifyKey {
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}

impl VerifyKey {
    pub(super) fn allows(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

/// The usable signature keys of a JWKS document.
pub(super) struct Jwks {
    pub(super) keys: Vec<(Option<String>, VerifyKey)>,
}

impl Jwks {
    /// The key named `kid`, if this set holds it.
    pub(super) fn find(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys
            .iter()
            .find(|(id, _)| id.as_deref() == Some(kid))
            .map(|(_, key)| key)
    }

    /// The key ids of this set, for logs.
    pub(super) fn key_ids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|(id, _)| id.as_deref().unwrap_or("(no kid)"))
            .collect()
    }

    /// The key named by `kid` in any of `sets`, the first set first; without a kid, the only
    /// key if the sets hold exactly one between them.
    pub(super) fn select<'a>(
        mut sets: impl Iterator<Item = &'a Jwks>,
        kid: Option<&str>,
    ) -> Result<&'a VerifyKey, AuthError> {
        match kid {
            Some(kid) => sets
                .find_map(|set| set.find(kid))
                // The kid comes from the client: keep what ends up in logs short.
                .ok_or_else(|| AuthError::UnknownKey(Some(kid.chars().take(64).collect()))),
            None => {
                let mut keys = sets.flat_map(|set| set.keys.iter());
                match (keys.next(), keys.next()) {
                    (Some((_, key)), None) => Ok(key),
                    _ => Err(AuthError::UnknownKey(None)),
                }
            }
        }
    }
}

/// What every key's `Validation` has in common.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    pub(super) audience: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) leeway: u64,
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

/// The HMAC secret as a verification key (HS256/384/512) and as a signing key for demo tokens.
pub(super) fn hmac_keys(secret: &str, policy: &Policy) -> (VerifyKey, EncodingKey) {
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
pub(super) fn load_pem(path: &Path, policy: &Policy) -> Result<VerifyKey, AuthError> {
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

/// Loads the signature keys of a JWKS file; encryption and symmetric keys are skipped.
pub(super) fn load_jwks(path: &Path, policy: &Policy) -> Result<Jwks, AuthError> {
    file_jwks(path, &read_key_file(path)?, policy)
}

/// The keys of `text`, read from the JWKS file at `path`; errors name the file.
pub(super) fn file_jwks(path: &Path, text: &[u8], policy: &Policy) -> Result<Jwks, AuthError> {
    parse_jwks(text, policy).map_err(|error| match error {
        JwksError::Json(source) => AuthError::InvalidJwks {
            path: path.to_owned(),
            source,
        },
        JwksError::Key(source) => AuthError::InvalidKey {
            path: path.to_owned(),
            source,
        },
    })
}

/// Why a JWKS document gave no usable key set.
#[derive(Debug)]
pub(super) enum JwksError {
    /// Not a JWKS document.
    Json(serde_json::Error),
    /// A key the backend cannot use, or no signature key at all.
    Key(JwtError),
}

/// The signature keys of a JWKS document; encryption and symmetric keys are skipped. A
/// document without any usable key is an error, so a key set is never empty.
pub(super) fn parse_jwks(text: &[u8], policy: &Policy) -> Result<Jwks, JwksError> {
    let set: JwkSet = serde_json::from_slice(text).map_err(JwksError::Json)?;
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
            Err(source) => return Err(JwksError::Key(source)),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::Key(ErrorKind::UnsupportedAlgorithm.into()));
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
