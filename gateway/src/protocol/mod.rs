//! The client protocol: frames in both directions, error codes and close codes.
//!
//! Every frame is a JSON text frame, or its MessagePack form ([`msgpack`]), possibly compressed
//! ([`deflate`]). Client frames may carry an `id` (number or string) that the
//! reply echoes. Event frames are encoded here once per node and shared by every recipient.

use std::collections::BTreeMap;

use publisher::wire::{Envelope, Position};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use strum::VariantNames;

pub(crate) mod deflate;
mod http;
pub(crate) mod msgpack;

pub(crate) use self::deflate::Encoding;
pub(crate) use self::http::{HttpError, error_body, http_error, http_error_bytes, json_errors};
pub(crate) use self::msgpack::Format;

/// Defines [`CloseCode`] from one list: each variant's number, its reason text, and `ALL`.
macro_rules! close_codes {
    ($($(#[$meta:meta])* $variant:ident = $code:literal => $reason:literal,)*) => {
        /// A WebSocket close code of the contract, grouped by what the client should do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u16)]
        pub(crate) enum CloseCode {
            $($(#[$meta])* $variant = $code,)*
        }

        impl CloseCode {
            /// Every close code of the contract.
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The reason text sent in the close frame.
            pub(crate) fn reason(self) -> &'static str {
                match self {
                    $(Self::$variant => $reason,)*
                }
            }

            /// The code as a metrics label value.
            pub(crate) fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($code),)*
                }
            }
        }
    };
}

close_codes! {
    /// Normal closure: stop.
    Normal = 1000 => "normal",
    /// The connection was silent past the idle timeout: reconnect.
    GoingAway = 1001 => "idle timeout",
    /// An inbound frame was over the size limit: fix the client.
    MessageTooBig = 1009 => "message too big",
    /// Internal error: reconnect with backoff.
    Internal = 1011 => "internal error",
    /// Token invalid: stop until there is a new token.
    TokenInvalid = 4001 => "token invalid",
    /// Token expired: refresh, then reconnect.
    TokenExpired = 4002 => "token expired",
    /// Protocol abuse: stop.
    ProtocolAbuse = 4003 => "protocol abuse",
    /// Disconnected by an operator: stop.
    OperatorDisconnect = 4004 => "disconnected by operator",
    /// Outgoing queue over its limit: reconnect with backoff and recover.
    SlowConsumer = 4100 => "slow consumer",
    /// Rate limited: reconnect with backoff.
    RateLimited = 4101 => "rate limited",
    /// Too many connections for this user: reconnect with backoff.
    TooManyConnections = 4102 => "too many connections",
    /// Node shutting down: reconnect after the advised delay and recover.
    ShuttingDown = 4200 => "node shutting down",
}

impl CloseCode {
    /// The close code with this number, if it is one of the contract's.
    pub(crate) fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// The numeric code.
    pub(crate) fn code(self) -> u16 {
        self as u16
    }
}

/// The `code` of an `error` frame, of a rejected subscription, or of an HTTP error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    /// Invalid JSON, a wrong shape, a missing field or a binary frame.
    BadRequest,
    /// A frame `type` the server does not know.
    UnknownType,
    /// A channel name outside the allowed charset or length.
    InvalidChannel,
    /// A channel whose namespace is not configured.
    UnknownNamespace,
    /// Not allowed for this connection.
    Forbidden,
    /// A per-connection limit was reached.
    LimitExceeded,
    /// An invalid or reserved event name.
    InvalidEvent,
    /// Too many frames; more will close the connection with 4101.
    RateLimited,
    /// A token was refused.
    Unauthorized,
    /// The feature is not enabled where it was asked for.
    NotAvailable,
    /// The server failed; try again.
    Internal,
}

impl ErrorCode {
    /// The value as it appears in metrics labels and on the wire.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

/// An error as a client is told it: a code of the contract and a message for its developer,
/// never an internal cause (that goes to the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientError {
    /// What kind of error.
    pub(crate) code: ErrorCode,
    /// A message for the client's developer.
    pub(crate) message: String,
}

impl ClientError {
    /// An error with `code` and `message`.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A client frame's `id`, echoed verbatim in the reply.
pub(crate) type RequestId = Box<RawValue>;

/// A client frame that has been parsed and checked for shape.
#[derive(Debug, Deserialize, strum::VariantNames, strum::IntoStaticStr)]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub(crate) enum ClientFrame {
    /// Authenticate a connection opened without a token.
    Auth {
        /// The JWT.
        token: String,
        /// Where the personal channel's history left off, to recover it.
        #[serde(default)]
        since: Option<Position>,
    },
    /// Set the client type (and a display name).
    Register {
        /// The client type, e.g. `gui`.
        client_type: String,
        /// A free-form display name.
        #[serde(default)]
        client_name: Option<String>,
    },
    /// Subscribe to channels.
    Subscribe {
        /// Channel names.
        channels: Vec<String>,
        /// Positions to recover from, per channel.
        #[serde(default)]
        since: BTreeMap<String, Position>,
    },
    /// Unsubscribe from channels.
    Unsubscribe {
        /// Channel names.
        channels: Vec<String>,
    },
    /// Application-level ping.
    Ping,
    /// Application-level ping (alias).
    Heartbeat,
    /// Replace the connection's token before it expires.
    Refresh {
        /// The new JWT, for the same user.
        token: String,
    },
    /// Read a channel's history.
    History {
        /// The channel.
        channel: String,
        /// Only events after this position.
        #[serde(default)]
        since: Option<Position>,
        /// At most this many events (the oldest first).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Read a channel's presence.
    Presence {
        /// The channel.
        channel: String,
    },
    /// Publish an event to a channel whose namespace allows client publishing.
    Publish {
        /// The channel.
        channel: String,
        /// The event name.
        event: String,
        /// The payload. (A `Value`, not raw JSON: serde cannot keep raw JSON inside an
        /// internally tagged enum; client publishes are rare enough to re-encode.)
        #[serde(default)]
        data: Option<serde_json::Value>,
    },
}

/// A client frame that could not be used, with the `id` to answer to when there was one.
#[derive(Debug)]
pub(crate) struct FrameError {
    /// The request id, if the frame carried a usable one.
    pub id: Option<RequestId>,
    /// What kind of error.
    pub code: ErrorCode,
    /// A message for the client's developer.
    pub message: String,
}

#[derive(Deserialize)]
struct FrameHead<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    id: Option<Box<RawValue>>,
}

/// Parses a client text frame into its request id and frame.
pub(crate) fn parse_client_frame(
    text: &str,
) -> Result<(Option<RequestId>, ClientFrame), FrameError> {
    let bad = |id, code, message: String| FrameError { id, code, message };
    let head: FrameHead<'_> = serde_json::from_str(text).map_err(|e| {
        bad(
            None,
            ErrorCode::BadRequest,
            format!("invalid JSON frame: {e}"),
        )
    })?;
    let id = head.id.filter(|id| {
        let raw = id.get();
        raw.starts_with('"')
            || raw.starts_with('-')
            || raw.starts_with(|c: char| c.is_ascii_digit())
    });
    let Some(kind) = head.kind else {
        return Err(bad(
            id,
            ErrorCode::BadRequest,
            "missing field `type`".into(),
        ));
    };
    if !ClientFrame::VARIANTS.contains(&kind.as_ref()) {
        return Err(bad(
            id,
            ErrorCode::UnknownType,
            format!("unknown frame type {kind:?}"),
        ));
    }
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok((id, frame)),
        Err(e) => Err(bad(
            id,
            ErrorCode::BadRequest,
            format!("invalid {kind} frame: {e}"),
        )),
    }
}

/// A subscription the server refused, as listed in `subscribed.rejected`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Rejection {
    /// The channel as the client named it.
    pub channel: String,
    /// Why.
    pub code: ErrorCode,
    /// A message for the client's developer.
    pub message: String,
}

/// A frame the server sends in reply to a client frame or on its own.
#[derive(Debug, Serialize, strum::VariantNames)]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub(crate) enum ServerFrame<'a> {
    /// The first frame after authentication.
    ConnectionEstablished {
        /// This connection's id.
        client_id: &'a str,
        /// The authenticated user.
        user_id: &'a str,
        /// The node holding the connection.
        node_id: &'a str,
        /// How often the client should send `ping`.
        heartbeat_interval_ms: u64,
        /// Server time, RFC 3339.
        timestamp: String,
        /// The personal channel's position, where it keeps history.
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<&'a Position>,
        /// Whether the personal channel was recovered from the `since` given at connect.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// Reply to `register`.
    Registered {
        /// This connection's id.
        client_id: &'a str,
    },
    /// Reply to `subscribe`.
    Subscribed {
        /// Channels now subscribed.
        channels: Vec<String>,
        /// Channels refused, with the reason.
        rejected: Vec<Rejection>,
        /// For each channel subscribed with `since`: whether every missed event follows.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        recovered: BTreeMap<String, bool>,
        /// The position of each subscribed channel that keeps history.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        positions: BTreeMap<String, Position>,
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        /// Channels no longer subscribed.
        channels: Vec<String>,
    },
    /// Reply to `ping` and `heartbeat`.
    Pong,
    /// Reply to `refresh`.
    Refreshed {
        /// When the new token expires, RFC 3339.
        expires_at: String,
    },
    /// Reply to `publish`.
    Published {
        /// The event's offset, where history is kept.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The channel's epoch, where history is kept.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// Reply to `history`.
    History {
        /// The channel.
        channel: &'a str,
        /// Event frames, oldest first.
        events: Vec<&'a RawValue>,
        /// The channel's current position.
        position: &'a Position,
    },
    /// Reply to `presence`.
    Presence {
        /// The channel.
        channel: &'a str,
        /// Its subscribers, cluster-wide.
        clients: &'a [crate::view::PresenceEntry],
    },
    /// History could not fill a gap on a channel: reload its state, then carry on from here.
    Reload {
        /// The channel.
        channel: &'a str,
        /// The channel's position; live events continue after it.
        position: &'a Position,
    },
    /// A frame was refused.
    Error {
        /// What kind of error.
        code: ErrorCode,
        /// A message for the client's developer.
        message: &'a str,
    },
    /// Sent before the server closes the connection with 4200.
    Disconnect {
        /// The close code that follows.
        code: u16,
        /// How long to wait before reconnecting.
        reconnect_after_ms: u64,
    },
}

#[derive(Serialize)]
struct Reply<'a> {
    #[serde(flatten)]
    frame: &'a ServerFrame<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

impl ServerFrame<'_> {
    /// Encodes the frame, echoing `id` when the client sent one.
    pub(crate) fn encode(&self, id: Option<&RawValue>) -> String {
        // These frames hold strings, numbers and raw JSON only, so serialisation cannot fail.
        serde_json::to_string(&Reply { frame: self, id }).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    timestamp: &'a str,
    data: &'a RawValue,
}

const NULL: &str = "null";

/// Encodes a bus event as the frame clients receive: once per node, shared by all recipients.
pub(crate) fn encode_event(envelope: &Envelope<'_>) -> String {
    let null: &RawValue = serde_json::from_str(NULL).unwrap_or_else(|_| unreachable!());
    let frame = EventFrame {
        event: &envelope.event,
        channel: envelope.channel.as_deref(),
        offset: envelope.offset,
        epoch: envelope.epoch.as_deref(),
        timestamp: &envelope.timestamp,
        data: envelope.data.unwrap_or(null),
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_their_id() {
        let (id, frame) = parse_client_frame(r#"{"type":"ping","id":7}"#).unwrap();
        assert_eq!(id.unwrap().get(), "7");
        assert!(matches!(frame, ClientFrame::Ping));
        let (id, frame) =
            parse_client_frame(r#"{"id":"a","type":"subscribe","channels":["x"]}"#).unwrap();
        assert_eq!(id.unwrap().get(), r#""a""#);
        assert!(matches!(frame, ClientFrame::Subscribe { channels, .. } if channels == ["x"]));
    }

    #[test]
    fn bad_frames_get_a_code_and_keep_the_id() {
        let err = parse_client_frame("{nope").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let err = parse_client_frame(r#"{"type":"dance","id":1}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType);
        assert_eq!(err.id.unwrap().get(), "1");
        let err = parse_client_frame(r#"{"type":"subscribe","id":2}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("channels"), "{}", err.message);
        let err = parse_client_frame(r#"{"id":3}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let err = parse_client_frame(r#"[1,2]"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn publish_frames_carry_any_data() {
        let text = r#"{"type":"publish","channel":"room:1","event":"typing","data":{"a":[1,2]}}"#;
        let (_, frame) = parse_client_frame(text).unwrap();
        assert!(
            matches!(frame, ClientFrame::Publish { data: Some(data), .. } if data["a"][1] == 2)
        );
    }

    #[test]
    fn replies_echo_the_id() {
        let id: Box<RawValue> = serde_json::from_str(r#""req-1""#).unwrap();
        let bytes = ServerFrame::Pong.encode(Some(&id));
        assert_eq!(bytes.as_str(), r#"{"type":"pong","id":"req-1"}"#);
    }

    #[test]
    fn events_have_the_spec_shape() {
        let bus = br#"{"channel":"jobs","event":"job_progress","data":{"p":45.5},"timestamp":"2026-11-22T10:00:01.123Z","offset":42,"epoch":"e"}"#;
        let envelope = Envelope::decode(bus).unwrap();
        let frame: serde_json::Value = serde_json::from_str(&encode_event(&envelope)).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type":"job_progress","channel":"jobs","offset":42,"epoch":"e",
                "timestamp":"2026-11-22T10:00:01.123Z","data":{"p":45.5}})
        );
    }

    #[test]
    fn every_frame_type_is_a_reserved_event_name() {
        let mut frame_types: Vec<&str> = ClientFrame::VARIANTS
            .iter()
            .chain(ServerFrame::VARIANTS)
            .chain(&["join", "leave"])
            .copied()
            .collect();
        frame_types.sort_unstable();
        frame_types.dedup();
        let mut reserved = publisher::wire::RESERVED_EVENT_NAMES.to_vec();
        reserved.sort_unstable();
        assert_eq!(
            frame_types, reserved,
            "the publisher must refuse exactly these names"
        );
    }

    #[test]
    fn close_code_labels_are_their_numbers() {
        for code in CloseCode::ALL {
            assert_eq!(code.label(), code.code().to_string());
            assert_eq!(CloseCode::from_code(code.code()), Some(*code));
        }
    }
}
