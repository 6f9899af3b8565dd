//! Entry points for the fuzz targets in `fuzz/` (see `docs/fuzzing.md`).
//!
//! Each function takes raw bytes as they arrive from a client or from the bus, runs the
//! gateway's own decoder on them, and asserts what must hold of the result: a panic here is a
//! finding, whether the decoder panicked or a property failed. They return nothing; the rest
//! of the crate keeps its visibility.
//!
//! The oracles below restate the contract of `docs/protocol.md` (charsets, limits), not the
//! code under test.

use std::collections::{BTreeMap, HashMap};

use axum::extract::Query;
use axum::http::Uri;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use publisher::wire::{ChannelName, Envelope, Position, UserId, with_position};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::ChannelPattern;
use crate::fallback::Cursor;
use crate::hub::Delivery;
use crate::protocol::{ClientFrame, ServerFrame, encode_event, msgpack, parse_client_frame};

/// The longest cursor the docs promise to read.
const MAX_CURSOR_BYTES: usize = 64 * 1024;
/// The most channels a cursor may name.
const MAX_CURSOR_CHANNELS: usize = 1024;
/// The longest epoch a cursor may carry.
const MAX_EPOCH_BYTES: usize = 64;

/// A client text frame, as the session parses it and answers it.
///
/// Asserts: an accepted frame is a JSON object whose `type` is the frame's; the reply the
/// session would send (`pong` for an accepted frame, `error` for a refused one) is JSON and
/// echoes the request `id` byte for byte.
pub fn client_frame(data: &[u8]) {
    // Text frames reach the parser as UTF-8: tungstenite refuses others.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, reply) = match parse_client_frame(text) {
        Ok((id, frame)) => {
            let head: Head = serde_json::from_str(text).expect("an accepted frame is an object");
            let kind: &'static str = (&frame).into();
            assert_eq!(
                head.kind, kind,
                "the frame's type is not the one it was sent as"
            );
            check_frame(&frame);
            let reply = ServerFrame::Pong.encode(id.as_deref());
            (id, reply)
        }
        Err(error) => {
            assert!(!error.message.is_empty(), "a refusal without a message");
            let reply = ServerFrame::Error {
                code: error.code,
                message: &error.message,
            }
            .encode(error.id.as_deref());
            (error.id, reply)
        }
    };
    let echoed: Head = serde_json::from_str(&reply).expect("a reply is JSON");
    let sent = id.as_deref().map(RawValue::get);
    assert_eq!(
        echoed.id.as_deref().map(RawValue::get),
        sent,
        "the id is not echoed"
    );
    if let Some(id) = sent {
        let usable = id.starts_with('"')
            || id.starts_with('-')
            || id.starts_with(|c: char| c.is_ascii_digit());
        assert!(usable, "an id that is not a string or a number: {id}");
    }
}

/// What a frame's fields must satisfy once parsed.
fn check_frame(frame: &ClientFrame) {
    match frame {
        ClientFrame::Subscribe { channels, since } => {
            for channel in channels {
                check_channel_name(channel);
            }
            for position in since.values() {
                check_position_round_trip(position);
            }
        }
        ClientFrame::Unsubscribe { channels } => {
            for channel in channels {
                check_channel_name(channel);
            }
        }
        ClientFrame::Auth { since, .. } | ClientFrame::History { since, .. } => {
            since.iter().for_each(check_position_round_trip);
        }
        _ => {}
    }
}

/// A frame's `type` and `id`, read independently of the parser under test.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Box<RawValue>>,
}

/// A channel name, as a client, a publisher or a cursor gives it.
///
/// Asserts: it is accepted exactly when it is 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]`; read
/// from a JSON string it is accepted alike; an accepted name displays as given; its namespace
/// is `personal`, `default` or the part before its first `:`; its allowed users hold no
/// separator.
pub fn channel_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_channel_name(text);
}

fn check_channel_name(text: &str) {
    let parsed = ChannelName::parse(text);
    let valid = !text.is_empty() && text.len() <= 255 && text.bytes().all(is_channel_byte);
    assert_eq!(parsed.is_ok(), valid, "{text:?}");
    let json = serde_json::to_string(text).expect("a string is JSON");
    let from_json = serde_json::from_str::<ChannelName>(&json).ok();
    assert_eq!(
        from_json.as_ref(),
        parsed.as_ref().ok(),
        "{text:?} read from JSON"
    );
    let Ok(name) = parsed else {
        return;
    };
    assert_eq!(name.to_string(), text);
    assert_eq!(name.as_str(), text);
    let namespace = name.namespace();
    if text.starts_with('#') {
        assert_eq!(namespace, "personal");
    } else if namespace != "default" {
        assert!(!namespace.contains(':') && text.starts_with(&format!("{namespace}:")));
    } else {
        assert!(!text.contains(':') || text.starts_with("default:"));
    }
    if let Some(users) = name.allowed_users() {
        assert!(text.contains('#'));
        for user in users {
            // A personal channel `#a#b` names user `a#b`, which no valid user id is.
            assert!(!user.contains(','), "user {user:?} of {text:?}");
            assert!(
                !user.contains('#') || name.is_personal(),
                "user {user:?} of {text:?}"
            );
        }
    }
}

/// The charset of channel names (`docs/protocol.md`).
fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_:#.@=,-".contains(&b)
}

/// A channel pattern from a token's `channels` claim and a channel to match it against,
/// separated by the first newline (neither may contain one); without one, the input is both.
///
/// Asserts: the pattern is accepted exactly when it is 1 to 255 bytes of the channel charset
/// plus `*`; it matches exactly what a plain segment-by-segment glob matches; it matches its
/// own text; without `*` it matches only itself.
pub fn channel_pattern(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, channel) = text.split_once('\n').unwrap_or((text, text));
    let parsed = ChannelPattern::parse(pattern);
    let valid = !pattern.is_empty()
        && pattern.len() <= 255
        && pattern.bytes().all(|b| b == b'*' || is_channel_byte(b));
    assert_eq!(parsed.is_ok(), valid, "{pattern:?}");
    let Ok(parsed) = parsed else {
        return;
    };
    let matches = parsed.matches(channel);
    assert_eq!(
        matches,
        reference_match(pattern, channel),
        "{pattern:?} ~ {channel:?}"
    );
    assert!(parsed.matches(pattern), "{pattern:?} does not match itself");
    if !pattern.contains('*') {
        assert_eq!(matches, pattern == channel, "{pattern:?} ~ {channel:?}");
    }
}

/// Segment-by-segment matching by dynamic programming: `*` is any run within one segment.
fn reference_match(pattern: &str, channel: &str) -> bool {
    let patterns: Vec<&str> = pattern.split(':').collect();
    let segments: Vec<&str> = channel.split(':').collect();
    patterns.len() == segments.len()
        && patterns
            .iter()
            .zip(&segments)
            .all(|(p, s)| reference_glob(p.as_bytes(), s.as_bytes()))
}

fn reference_glob(pattern: &[u8], text: &[u8]) -> bool {
    // `done[j]`: the pattern so far matches the first `j` bytes of the text.
    let mut done = vec![false; text.len() + 1];
    done[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            next[j] = if p == b'*' {
                done[j] || (j > 0 && next[j - 1])
            } else {
                j > 0 && done[j - 1] && text[j - 1] == p
            };
        }
        done = next;
    }
    done[text.len()]
}

/// A bus message, as the hub decodes it for its subscribers.
///
/// Asserts: the hub accepts what the wire decoder accepts; the client frame it builds is the
/// protocol's event frame, JSON, with the event as `type`, the target channel, the position
/// and the data passed through byte for byte; a decoded message re-encodes to one that
/// decodes the same, also once the history store has put a position into it.
pub fn bus_envelope(data: &[u8]) {
    let envelope = Envelope::decode(data);
    let delivery = Delivery::decode(data);
    assert_eq!(envelope.is_ok(), delivery.is_ok());
    let (Ok(mut envelope), Ok(delivery)) = (envelope, delivery) else {
        return;
    };
    let json = delivery.frame().json();
    assert_eq!(json, encode_event(&envelope));
    assert_eq!(delivery.offset(), envelope.offset);
    if let Some(exclude) = &envelope.exclude_client {
        assert!(delivery.excludes(exclude));
    }
    let frame: EventFrame = serde_json::from_str(json).expect("an event frame is JSON");
    assert_eq!(frame.kind, envelope.event);
    assert_eq!(frame.channel.as_deref(), envelope.channel.as_deref());
    assert_eq!(frame.offset, envelope.offset);
    assert_eq!(frame.epoch.as_deref(), envelope.epoch.as_deref());
    assert_eq!(frame.timestamp, envelope.timestamp);
    assert_eq!(
        frame.data.get(),
        envelope.data.map_or("null", RawValue::get)
    );

    let encoded = envelope.encode();
    let again = Envelope::decode(&encoded).expect("a decoded message re-encodes to a valid one");
    assert_same(&envelope, &again);

    // What the history store publishes: the message without a position, then given one.
    let offset = envelope.offset.unwrap_or(1);
    envelope.offset = None;
    envelope.epoch = None;
    let stored = with_position(&envelope.encode(), offset, "0000018c2f3a1b2c");
    let positioned = Envelope::decode(&stored).expect("a message with a position decodes");
    envelope.offset = Some(offset);
    envelope.epoch = Some("0000018c2f3a1b2c".into());
    assert_same(&envelope, &positioned);
}

/// Two envelopes carry the same message.
fn assert_same(a: &Envelope<'_>, b: &Envelope<'_>) {
    assert_eq!(a.channel, b.channel);
    assert_eq!(a.client_type, b.client_type);
    assert_eq!(a.broadcast, b.broadcast);
    assert_eq!(a.event, b.event);
    assert_eq!(a.data.map(RawValue::get), b.data.map(RawValue::get));
    assert_eq!(a.timestamp, b.timestamp);
    assert_eq!(a.exclude_client, b.exclude_client);
    assert_eq!(a.offset, b.offset);
    assert_eq!(a.epoch, b.epoch);
}

/// An event frame, read independently of the encoder under test.
#[derive(Deserialize)]
struct EventFrame {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    offset: Option<u64>,
    epoch: Option<String>,
    timestamp: String,
    data: Box<RawValue>,
}

/// A cursor of the HTTP transports. The first byte picks the input: even, the rest is the
/// cursor as a client sends it back; odd, the rest is the JSON inside a `1.` cursor (so the
/// fuzzer need not find base64 to reach the JSON). Whatever the first byte, the rest is also
/// read as a user id, and the cursor the gateway writes for that user's personal channel
/// must decode.
///
/// Asserts: an accepted cursor is within the limits, names valid channels with printable
/// epochs, and re-encodes to a cursor that decodes to the same positions.
pub fn cursor(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        check_cursor(rest);
    } else {
        check_cursor(&format!("1.{}", URL_SAFE_NO_PAD.encode(rest)));
    }
    // Every cursor the gateway writes, it reads back: the personal channel's position is
    // written for any user id (`fallback::Tracker`), with an epoch of the history store.
    if let Ok(user) = UserId::parse(rest) {
        let mut written = Cursor::default();
        let position = Position {
            offset: u64::from(mode),
            epoch: "0000018c2f3a1b2c".into(),
        };
        written.set(ChannelName::personal(&user).as_str(), position);
        let text = written.encode();
        let read = Cursor::decode(&text);
        assert_eq!(read.as_ref().ok(), Some(&written), "{text:?}: {read:?}");
    }
}

fn check_cursor(text: &str) {
    let Ok(cursor) = Cursor::decode(text) else {
        return;
    };
    assert!(text.len() <= MAX_CURSOR_BYTES);
    assert!(cursor.positions().len() <= MAX_CURSOR_CHANNELS);
    for (channel, position) in cursor.positions() {
        let personal = channel
            .strip_prefix('#')
            .is_some_and(|u| UserId::parse(u).is_ok());
        assert!(
            ChannelName::parse(channel).is_ok() || personal,
            "{channel:?}"
        );
        assert!(position.epoch.len() <= MAX_EPOCH_BYTES);
        assert!(position.epoch.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(cursor.get(channel), Some(position));
    }
    let encoded = cursor.encode();
    let again = Cursor::decode(&encoded).expect("a decoded cursor re-encodes to a valid one");
    assert_eq!(again, cursor);
    assert_eq!(again.encode(), encoded, "encoding is not canonical");
}

/// A `since` position. The first byte picks the input: even, the rest is the JSON of a
/// `since` in `auth`, `history` and `subscribe` frames; odd, the rest is the query string of
/// a `/sse` or `/poll` request, whose `cursor` is that transport's `since`.
///
/// Asserts: a `since` that is a valid position (or map of positions) on its own is accepted
/// in each frame as exactly that value, and survives a round trip through JSON; a query
/// decodes alike into pairs and into a map; its cursor holds to the properties of
/// [`cursor`].
pub fn since(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        frame_since(rest);
    } else {
        query_since(rest);
    }
}

fn frame_since(json: &str) {
    let alone = serde_json::from_str::<Option<Position>>(json).ok();
    let frames = [
        format!(r#"{{"type":"auth","token":"t","since":{json}}}"#),
        format!(r#"{{"type":"history","channel":"jobs","since":{json}}}"#),
    ];
    for frame in frames {
        let parsed = match parse_client_frame(&frame) {
            Ok((_, ClientFrame::Auth { since, .. } | ClientFrame::History { since, .. })) => {
                since.iter().for_each(check_position_round_trip);
                Some(since)
            }
            Ok((_, other)) => panic!("{frame:?} parsed as {other:?}"),
            Err(_) => None,
        };
        if let Some(alone) = &alone {
            assert_eq!(parsed.as_ref(), Some(alone), "{frame:?}");
        }
    }
    let alone = serde_json::from_str::<BTreeMap<String, Position>>(json).ok();
    let frame = format!(r#"{{"type":"subscribe","channels":["jobs"],"since":{json}}}"#);
    let parsed = match parse_client_frame(&frame) {
        Ok((_, ClientFrame::Subscribe { since, .. })) => {
            since.values().for_each(check_position_round_trip);
            Some(since)
        }
        Ok((_, other)) => panic!("{frame:?} parsed as {other:?}"),
        Err(_) => None,
    };
    if let Some(alone) = &alone {
        assert_eq!(parsed.as_ref(), Some(alone), "{frame:?}");
    }
}

fn query_since(query: &str) {
    let Ok(uri) = format!("/poll?{query}").parse::<Uri>() else {
        return;
    };
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(&uri);
    let map = Query::<HashMap<String, String>>::try_from_uri(&uri);
    assert_eq!(pairs.is_ok(), map.is_ok(), "{query:?}");
    let Ok(Query(pairs)) = pairs else {
        return;
    };
    // As `fallback::Request::admit` reads it: the first `cursor`, unless empty.
    if let Some((_, cursor)) = pairs.iter().find(|(k, _)| k == "cursor") {
        check_cursor(cursor);
    }
    // As `/ws` reads it: `since_offset` and `since_epoch`.
    let Ok(Query(map)) = map else {
        return;
    };
    if let Ok(Some(position)) = crate::server::personal_since(&map) {
        let offset = map.get("since_offset").map(|offset| offset.parse::<u64>());
        assert_eq!(offset, Some(Ok(position.offset)), "{query:?}");
        let epoch = map.get("since_epoch").map_or("", String::as_str);
        assert_eq!(position.epoch, epoch, "{query:?}");
    }
}

/// A binary client frame: MessagePack, turned into JSON and parsed as a text frame is.
///
/// Asserts: what converts is valid JSON, converts back to MessagePack, and from there to the
/// same JSON; parsing it never panics.
pub fn msgpack_frame(data: &[u8]) {
    let Ok(json) = msgpack::to_json(data) else {
        return;
    };
    serde_json::from_str::<serde_json::Value>(&json).expect("a converted frame is JSON");
    let packed = msgpack::from_json(&json).expect("JSON converts to MessagePack");
    let again = msgpack::to_json(&packed).expect("our MessagePack converts back");
    assert_eq!(again, json, "the round trip changed the frame");
    let _ = parse_client_frame(&json);
}

/// A position serialises and reads back as itself.
fn check_position_round_trip(position: &Position) {
    let json = serde_json::to_string(position).expect("a position is JSON");
    let again: Position = serde_json::from_str(&json).expect("a position reads back");
    assert_eq!(&again, position);
}
