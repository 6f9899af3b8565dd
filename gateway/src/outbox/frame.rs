//! [`OutFrame`]: a server frame, framed once per format for every recipient.

use std::sync::OnceLock;
use std::time::SystemTime;

use bytes::Bytes;

use crate::protocol::{Format, msgpack};

/// A server frame, framed for the wire once per format and shared by every recipient.
#[derive(Debug, Clone)]
pub(crate) struct OutFrame {
    /// The whole WebSocket text frame: header and JSON payload.
    wire: Bytes,
    /// The binary MessagePack frame, made when the first connection that uses it needs it.
    msgpack: OnceLock<Bytes>,
    /// When the event was published, for delivery latency; `None` for replies.
    pub(super) published_at: Option<SystemTime>,
}

impl OutFrame {
    /// An event frame published at `published_at`.
    pub(crate) fn event(json: &str, published_at: Option<SystemTime>) -> Self {
        Self {
            wire: frame(OPCODE_TEXT, json.as_bytes()),
            msgpack: OnceLock::new(),
            published_at,
        }
    }

    /// A control frame (a ping), the same in every format.
    pub(super) const fn control(wire: &'static [u8]) -> Self {
        Self {
            wire: Bytes::from_static(wire),
            msgpack: OnceLock::new(),
            published_at: None,
        }
    }

    /// The whole WebSocket frame in `format`.
    pub(crate) fn wire(&self, format: Format) -> &Bytes {
        let is_control = self.wire.first().is_some_and(|first| first & 0x08 != 0);
        match format {
            Format::Json => &self.wire,
            Format::Msgpack if is_control => &self.wire,
            Format::Msgpack => self.msgpack.get_or_init(|| match msgpack::from_json(self.json()) {
                Ok(packed) => frame(OPCODE_BINARY, &packed),
                Err(error) => {
                    // Every frame is our own JSON; should one not convert, JSON still says it.
                    tracing::warn!(%error, "frame not convertible to MessagePack; sent as JSON");
                    self.wire.clone()
                }
            }),
        }
    }

    /// A reply or control frame.
    pub(crate) fn reply(json: &str) -> Self {
        Self::event(json, None)
    }

    /// When the event was published.
    pub(crate) fn published_at(&self) -> Option<SystemTime> {
        self.published_at
    }

    /// The frame's JSON text.
    pub(crate) fn json(&self) -> &str {
        let header = match self.wire.get(1) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        // Built from a `&str` in `event`, so always UTF-8.
        std::str::from_utf8(self.wire.get(header..).unwrap_or_default()).unwrap_or_default()
    }
}

/// A text frame with `payload`, for the framing tests.
#[cfg(test)]
pub(super) fn text_frame(payload: &[u8]) -> Bytes {
    frame(OPCODE_TEXT, payload)
}

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// An unmasked, unfragmented server frame (RFC 6455 section 5.2).
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    const FIN: u8 = 0x80;
    let len = payload.len();
    let mut wire = Vec::with_capacity(len + 10);
    wire.push(FIN | opcode);
    if let Ok(short) = u8::try_from(len)
        && short < 126
    {
        wire.push(short);
    } else if let Ok(medium) = u16::try_from(len) {
        wire.push(126);
        wire.extend_from_slice(&medium.to_be_bytes());
    } else {
        wire.push(127);
        wire.extend_from_slice(&(len as u64).to_be_bytes());
    }
    wire.extend_from_slice(payload);
    Bytes::from(wire)
}
