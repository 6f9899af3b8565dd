//! The claims a token carries, and the check of their shape: who the user is, until when,
//! which client type and which channel patterns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use publisher::wire::{ClientType, UserId};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, ChannelPattern};

/// The claims as they come; their shape is checked in [`RawClaims::into_claims`].
#[derive(Deserialize)]
pub(super) struct RawClaims {
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
    pub(super) fn into_claims(self) -> Result<Claims, AuthError> {
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
pub(crate) struct Claims {
    /// The user: `sub`, or `user_id` when `sub` is absent.
    pub user_id: UserId,
    /// When the token expires (`exp`, without leeway).
    pub expires_at: SystemTime,
    /// The `client_type` claim, if any.
    pub client_type: Option<ClientType>,
    /// The `channels` claim: patterns of channels this user may subscribe to beyond the public ones.
    pub channels: Vec<ChannelPattern>,
}
