//! The cursor of the HTTP transports: every channel's position, carried by the client from one
//! request (or SSE reconnect) to the next, so that any replica can serve it.
//!
//! A cursor is `1.` followed by the base64url (no padding) of a compact JSON object, channel →
//! `[offset, epoch]`. It is opaque to clients but not secret: it names only positions, and a
//! request still gets only the channels its token allows. A cursor that does not decode to
//! exactly that shape, is longer than [`MAX_CURSOR_BYTES`] or names more than
//! [`MAX_CHANNELS`] channels is refused with 400.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use publisher::wire::{ChannelName, Position, UserId};

/// The longest cursor accepted: 128 channels of long names with their positions fit.
pub(crate) const MAX_CURSOR_BYTES: usize = 64 * 1024;
/// The most channels one cursor may name (the channel cap plus the personal channel).
pub(crate) const MAX_CHANNELS: usize = 1024;
/// The longest epoch a cursor may carry.
const MAX_EPOCH_BYTES: usize = 64;
const VERSION: &str = "1.";

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CursorError {
    /// Longer than the limit.
    #[error("cursor is longer than {MAX_CURSOR_BYTES} bytes")]
    TooLong,
    /// Not a cursor this gateway writes.
    #[error("cursor is not valid: {0}")]
    Invalid(&'static str),
}

/// Positions by channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cursor(BTreeMap<String, Position>);

impl Cursor {
    /// Decodes a cursor as a client sent it back.
    pub(crate) fn decode(text: &str) -> Result<Self, CursorError> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(CursorError::TooLong);
        }
        let body = text
            .strip_prefix(VERSION)
            .ok_or(CursorError::Invalid("unknown version"))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CursorError::Invalid("not base64url"))?;
        let entries: BTreeMap<String, (u64, String)> = serde_json::from_slice(&json)
            .map_err(|_| CursorError::Invalid("not a position map"))?;
        if entries.len() > MAX_CHANNELS {
            return Err(CursorError::Invalid("too many channels"));
        }
        let mut positions = BTreeMap::new();
        for (channel, (offset, epoch)) in entries {
            if !is_cursor_channel(&channel) {
                return Err(CursorError::Invalid("bad channel name"));
            }
            let printable = epoch.bytes().all(|b| b.is_ascii_graphic());
            if epoch.len() > MAX_EPOCH_BYTES || !printable {
                return Err(CursorError::Invalid("bad epoch"));
            }
            positions.insert(channel, Position { offset, epoch });
        }
        Ok(Self(positions))
    }

    /// The cursor as clients carry it.
    pub(crate) fn encode(&self) -> String {
        let entries: BTreeMap<&str, (u64, &str)> = self
            .0
            .iter()
            .map(|(channel, p)| (channel.as_str(), (p.offset, p.epoch.as_str())))
            .collect();
        // A map of strings and numbers always serialises.
        let json = serde_json::to_vec(&entries).unwrap_or_default();
        format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// The position of `channel`, if the cursor has one.
    pub(crate) fn get(&self, channel: &str) -> Option<&Position> {
        self.0.get(channel)
    }

    /// Records `channel`'s position.
    pub(crate) fn set(&mut self, channel: &str, position: Position) {
        self.0.insert(channel.to_owned(), position);
    }

    /// Keeps only the positions of `channels`.
    pub(crate) fn retain(&mut self, channels: &[&str]) {
        self.0
            .retain(|channel, _| channels.contains(&channel.as_str()));
    }

    /// The positions as the `since` of a `subscribe` frame.
    pub(crate) fn positions(&self) -> &BTreeMap<String, Position> {
        &self.0
    }
}

/// A channel a cursor may name: a channel name, or a user's personal channel, whose user id
/// may hold characters that channel names do not (`#auth0|5f7c`).
fn is_cursor_channel(channel: &str) -> bool {
    ChannelName::parse(channel).is_ok()
        || channel
            .strip_prefix('#')
            .is_some_and(|user| UserId::parse(user).is_ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn position(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn a_cursor_round_trips() {
        let mut cursor = Cursor::default();
        cursor.set("jobs", position(41, "1732"));
        cursor.set("#42", position(3, "e-1"));
        let text = cursor.encode();
        assert!(text.starts_with("1."), "{text}");
        assert_eq!(Cursor::decode(&text).unwrap(), cursor);
        assert_eq!(
            Cursor::decode(&Cursor::default().encode()).unwrap(),
            Cursor::default()
        );
    }

    #[test]
    fn the_personal_channel_of_any_user_id_round_trips() {
        // Found by `fuzz/` (target `cursor`): the gateway wrote cursors it then refused.
        let user = UserId::parse("auth0|5f7c").unwrap();
        let mut cursor = Cursor::default();
        cursor.set(
            ChannelName::personal(&user).as_str(),
            position(7, "18c2f3a1b2c"),
        );
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
    }

    #[test]
    fn forged_or_corrupt_cursors_are_refused() {
        let encode = |json: &str| format!("1.{}", URL_SAFE_NO_PAD.encode(json));
        for bad in [
            String::new(),
            "2.e30".into(),
            "1.***".into(),
            encode("[1,2]"),
            encode(r#"{"jobs":[-1,"e"]}"#),
            encode(r#"{"jobs":{"offset":1}}"#),
            encode(r#"{"bad name":[1,"e"]}"#),
            encode(r#"{"jobs":[1,"has space"]}"#),
            encode(&format!(r#"{{"jobs":[1,"{}"]}}"#, "e".repeat(65))),
        ] {
            assert!(Cursor::decode(&bad).is_err(), "{bad:?} was accepted");
        }
        let long = "1.".to_owned() + &"A".repeat(MAX_CURSOR_BYTES);
        assert_eq!(Cursor::decode(&long), Err(CursorError::TooLong));
    }

    #[test]
    fn retain_drops_channels_no_longer_requested() {
        let mut cursor = Cursor::default();
        cursor.set("a", position(1, "e"));
        cursor.set("b", position(2, "e"));
        cursor.retain(&["b"]);
        assert_eq!(cursor.positions().len(), 1);
        assert_eq!(cursor.get("b"), Some(&position(2, "e")));
    }
}
