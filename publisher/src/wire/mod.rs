//! The bus wire format: what a publisher writes to the bus and every gateway reads.
//!
//! One JSON object per bus message (see `docs/redis.md`):
//!
//! ```json
//! {"channel":"jobs","event":"job_progress","data":{"progress":45.5},
//!  "timestamp":"2026-11-22T10:00:01.123Z","exclude_client":"c-1"}
//! ```
//!
//! Exactly one target is set: `channel`, `client_type` or `"broadcast": true`. A publish to a
//! user is a publish to that user's personal channel `#<user_id>`. Names are validated here,
//! once, by the newtypes below; both the publisher and the gateway go through them.
//!
//! The rest of the Redis contract lives here too, so that the publisher and the gateway cannot
//! drift apart: every topic and key name ([`Topics`], [`Keys`]), and the publish script with
//! its arguments ([`PublishCall`]), the namespace settings it reads ([`HistoryPolicy`],
//! [`IDEMPOTENCY_WINDOW_FIELD`]) and the position it puts into messages ([`with_position`]).

mod names;
mod script;

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub(crate) use self::names::TopicArg;
pub use self::names::{Keys, Topics};
pub use self::script::{
    DEFAULT_IDEMPOTENCY_WINDOW, HistoryPolicy, IDEMPOTENCY_WINDOW_FIELD, PUBLISH_SCRIPT,
    PublishCall, Published, namespace_fields, namespace_policies, with_position,
};

/// Frame types the gateway itself sends or receives; an event may not be named like one.
pub const RESERVED_EVENT_NAMES: &[&str] = &[
    "auth",
    "connection_established",
    "disconnect",
    "error",
    "heartbeat",
    "history",
    "join",
    "leave",
    "ping",
    "pong",
    "presence",
    "publish",
    "published",
    "refresh",
    "refreshed",
    "register",
    "registered",
    "reload",
    "subscribe",
    "subscribed",
    "unsubscribe",
    "unsubscribed",
];

/// Why a name or a bus message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A channel name is empty, too long or has a character outside `[A-Za-z0-9_:#.@=,-]`.
    #[error("invalid channel name {0:?}: 1 to 255 bytes of [A-Za-z0-9_:#.@=,-]")]
    InvalidChannel(String),
    /// An event name is empty, too long or has a character outside `[A-Za-z0-9_.:-]`.
    #[error("invalid event name {0:?}: 1 to 128 bytes of [A-Za-z0-9_.:-]")]
    InvalidEvent(String),
    /// An event name collides with a frame type of the protocol.
    #[error("event name {0:?} is reserved by the protocol")]
    ReservedEvent(String),
    /// A client type is empty, too long or has a character outside `[A-Za-z0-9_.-]`.
    #[error("invalid client type {0:?}: 1 to 64 bytes of [A-Za-z0-9_.-]")]
    InvalidClientType(String),
    /// A user id is empty, too long, or contains `#`, `,` or a control or space character.
    #[error("invalid user id {0:?}: 1 to 255 bytes, no spaces, control characters, '#' or ','")]
    InvalidUserId(String),
    /// A bus message names no target, or more than one.
    #[error("a bus message needs exactly one of channel, client_type or broadcast")]
    Target,
    /// A bus message is not valid JSON of the expected shape.
    #[error("malformed bus message: {0}")]
    Malformed(String),
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'#' | b'.' | b'@' | b'=' | b',' | b'-')
}

/// A validated channel name: 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]`.
///
/// The personal channel of a user is `#<user_id>`; it is built with
/// [`ChannelName::personal`], which admits every valid user id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChannelName(String);

impl ChannelName {
    /// Validates a channel name as a client or publisher gives it.
    pub fn parse(name: &str) -> Result<Self, WireError> {
        if name.is_empty() || name.len() > 255 || !name.bytes().all(is_channel_byte) {
            return Err(WireError::InvalidChannel(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The personal channel `#<user_id>` on which every connection of that user listens.
    pub fn personal(user: &UserId) -> Self {
        Self(format!("#{}", user.as_str()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a user's personal channel (`#<user_id>`).
    pub fn is_personal(&self) -> bool {
        self.0.starts_with('#')
    }

    /// The namespace: `personal` for `#<user>`, the part before the first `:`, or `default`.
    pub fn namespace(&self) -> &str {
        if self.is_personal() {
            return "personal";
        }
        match self.0.split_once(':') {
            Some((ns, _)) => ns,
            None => "default",
        }
    }

    /// For a user-limited channel (`name#42,43`), the users allowed on it.
    pub fn allowed_users(&self) -> Option<impl Iterator<Item = &str>> {
        if self.is_personal() {
            return Some(self.0[1..].split(',').take(1));
        }
        let (_, users) = self.0.rsplit_once('#')?;
        Some(users.split(',').take(usize::MAX))
    }
}

// Hash and Eq are derived from the inner String, so lookups by `&str` agree with them.
impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = Cow::<'de, str>::deserialize(d)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// A validated event name: 1 to 128 bytes of `[A-Za-z0-9_.:-]`, not a reserved frame type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventName(String);

impl EventName {
    /// Validates an event name.
    pub fn parse(name: &str) -> Result<Self, WireError> {
        let valid_bytes = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if name.is_empty() || name.len() > 128 || !valid_bytes {
            return Err(WireError::InvalidEvent(name.to_owned()));
        }
        if RESERVED_EVENT_NAMES.contains(&name) {
            return Err(WireError::ReservedEvent(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `join`: the gateway's own presence event (reserved for publishers).
    pub fn join() -> Self {
        Self("join".into())
    }

    /// `leave`: the gateway's own presence event (reserved for publishers).
    pub fn leave() -> Self {
        Self("leave".into())
    }
}

/// A validated client type (`gui`, `mobile`, …): 1 to 64 bytes of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientType(String);

impl ClientType {
    /// Validates a client type.
    pub fn parse(name: &str) -> Result<Self, WireError> {
        let valid_bytes = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if name.is_empty() || name.len() > 64 || !valid_bytes {
            return Err(WireError::InvalidClientType(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ClientType {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A validated user id: 1 to 255 bytes, without spaces, control characters, `#` or `,`.
///
/// Ids such as `auth0|5f7c` are fine; `#` and `,` are excluded because user-limited channels
/// (`name#42,43`) use them as separators.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Validates a user id.
    pub fn parse(id: &str) -> Result<Self, WireError> {
        let valid_chars = id
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '#' && c != ',');
        if id.is_empty() || id.len() > 255 || !valid_chars {
            return Err(WireError::InvalidUserId(id.to_owned()));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a bus message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Subscribers of one channel (a user's personal channel included).
    Channel(&'a str),
    /// Every connection registered with this client type.
    ClientType(&'a str),
    /// Every connection.
    Broadcast,
}

/// One bus message, borrowed where it can be so that the gateway decodes without copying.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// Target: a channel name.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Cow<'a, str>>,
    /// Target: a client type.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_type: Option<Cow<'a, str>>,
    /// Target: every connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
    /// The event name; becomes the client frame's `type`.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The payload, passed through to clients untouched.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// When the event was published, RFC 3339 with milliseconds in UTC.
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    /// A connection that must not receive this event (usually the sender's own).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub exclude_client: Option<Cow<'a, str>>,
    /// The event's position in its channel's history, where history is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The channel history's epoch, where history is kept.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Cow<'a, str>>,
}

impl<'a> Envelope<'a> {
    /// A message for `target`, published at `timestamp`, without a history position.
    pub fn new(
        target: Target<'a>,
        event: &'a str,
        data: Option<&'a RawValue>,
        exclude_client: Option<&'a str>,
        timestamp: Cow<'a, str>,
    ) -> Self {
        let (channel, client_type, broadcast) = match target {
            Target::Channel(c) => (Some(c.into()), None, false),
            Target::ClientType(t) => (None, Some(t.into()), false),
            Target::Broadcast => (None, None, true),
        };
        Self {
            channel,
            client_type,
            broadcast,
            event: event.into(),
            data,
            timestamp,
            exclude_client: exclude_client.map(Into::into),
            offset: None,
            epoch: None,
        }
    }

    /// Decodes and checks a bus message.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WireError> {
        let envelope: Self =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        envelope.target()?;
        Ok(envelope)
    }

    /// Encodes the message as the JSON that goes on the bus.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded message to `out`, so that a buffer can serve many messages.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Serialising a struct of strings, numbers and raw JSON cannot fail.
        let _ = serde_json::to_writer(out, self);
    }

    /// Bytes to reserve for the encoded message: the fields are short and the data is most
    /// of it.
    fn size_hint(&self) -> usize {
        160 + self.data.map_or(0, |d| d.get().len())
    }

    /// The single target of this message.
    pub fn target(&self) -> Result<Target<'_>, WireError> {
        match (&self.channel, &self.client_type, self.broadcast) {
            (Some(channel), None, false) => Ok(Target::Channel(channel)),
            (None, Some(client_type), false) => Ok(Target::ClientType(client_type)),
            (None, None, true) => Ok(Target::Broadcast),
            _ => Err(WireError::Target),
        }
    }
}

/// A channel history's position: the last offset and the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The offset of the last event (0 before the first).
    pub offset: u64,
    /// The epoch; it changes whenever the channel's history is lost.
    pub epoch: String,
}

/// The current time as the wire's timestamp: RFC 3339, milliseconds, UTC.
pub fn timestamp_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_spec_charset() {
        assert!(ChannelName::parse("room:1").is_ok());
        assert!(ChannelName::parse("a_b:c#1.2@x=y,z-w").is_ok());
        assert!(ChannelName::parse("").is_err());
        assert!(ChannelName::parse(&"a".repeat(256)).is_err());
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
        assert!(ChannelName::parse("room 1").is_err());
        assert!(ChannelName::parse("röom").is_err());
    }

    #[test]
    fn namespaces_and_user_limits() {
        let room = ChannelName::parse("room:1").unwrap();
        assert_eq!(room.namespace(), "room");
        assert!(room.allowed_users().is_none());
        let jobs = ChannelName::parse("jobs").unwrap();
        assert_eq!(jobs.namespace(), "default");
        let limited = ChannelName::parse("notifications#42,43").unwrap();
        assert_eq!(limited.namespace(), "default");
        let users: Vec<_> = limited.allowed_users().unwrap().collect();
        assert_eq!(users, ["42", "43"]);
        let personal = ChannelName::personal(&UserId::parse("auth0|7").unwrap());
        assert_eq!(personal.as_str(), "#auth0|7");
        assert_eq!(personal.namespace(), "personal");
        assert_eq!(
            personal.allowed_users().unwrap().collect::<Vec<_>>(),
            ["auth0|7"]
        );
    }

    #[test]
    fn reserved_and_invalid_event_names_are_refused() {
        assert!(EventName::parse("job_progress").is_ok());
        assert_eq!(
            EventName::parse("pong"),
            Err(WireError::ReservedEvent("pong".into()))
        );
        assert!(EventName::parse("has space").is_err());
        assert!(EventName::parse("").is_err());
    }

    #[test]
    fn user_ids_exclude_separators() {
        assert!(UserId::parse("42").is_ok());
        assert!(UserId::parse("a#b").is_err());
        assert!(UserId::parse("a,b").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("").is_err());
    }

    #[test]
    fn envelope_round_trips_and_needs_one_target() {
        let data = serde_json::value::to_raw_value(&serde_json::json!({"p": 1})).unwrap();
        let envelope = Envelope {
            channel: Some("jobs".into()),
            client_type: None,
            broadcast: false,
            event: "job_progress".into(),
            data: Some(&data),
            timestamp: timestamp_now().into(),
            exclude_client: None,
            offset: Some(3),
            epoch: Some("e1".into()),
        };
        let bytes = envelope.encode();
        let decoded = Envelope::decode(&bytes).unwrap();
        assert_eq!(decoded.target().unwrap(), Target::Channel("jobs"));
        assert_eq!(decoded.data.unwrap().get(), r#"{"p":1}"#);
        assert_eq!(decoded.offset, Some(3));

        let two_targets = br#"{"channel":"a","broadcast":true,"event":"e","timestamp":"t"}"#;
        assert_eq!(
            Envelope::decode(two_targets).unwrap_err(),
            WireError::Target
        );
        assert!(matches!(
            Envelope::decode(b"{nope"),
            Err(WireError::Malformed(_))
        ));
    }
}
