//! Tests of token verification, key loading and channel patterns.

use super::*;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use serde_json::{Value, json};

pub(super) const RSA_PRIVATE: &str = "\
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
pub(super) const RSA_PUBLIC: &str = "\
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
pub(super) const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjzZ414W0vMkAomBW
qeGSoC6vagby4mUgfpxcqMNkrQOhRANCAARQ3TGxshDwwALJ+xW265QnbhJVEe2L
Pt7GRXa/+LAByeb31wbg6nS23UfTmmZPvAlo4j9394NS6kaNt5Zh94YD
-----END PRIVATE KEY-----
";
pub(super) const EC_PUBLIC: &str = "\
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
pub(super) struct TempFile(pub(super) PathBuf);

impl TempFile {
    pub(super) fn new(name: &str, contents: &str) -> Self {
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

pub(super) fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 600 })
}

pub(super) fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(alg: Algorithm, claims: &Value) -> String {
    sign(alg, None, claims, &EncodingKey::from_secret(b"s3cret"))
}

pub(super) fn rsa_key() -> EncodingKey {
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

pub(super) fn jwk(pem: &str, kid: &str, alg: Algorithm) -> Jwk {
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
fn a_token_is_refused_from_the_instant_it_expires() {
    let auth = Authenticator::new(&AuthSettings {
        leeway: Duration::ZERO,
        ..secret_settings()
    })
    .unwrap();
    // `exp` is this very second: it has passed, or passes within the second, while the
    // whole-second check of jsonwebtoken still accepts it.
    let expiring = hs(Algorithm::HS256, &json!({ "sub": "1", "exp": now() }));
    assert!(matches!(auth.verify(&expiring), Err(AuthError::Expired)));
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
    assert!(p("room:*:chat").matches("room:9:chat") && !p("room:*:chat").matches("room:9:x:chat"));
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
