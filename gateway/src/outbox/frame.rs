//! [`OutFrame`]: a server frame, framed once per encoding for every recipient.

use std::sync::OnceLock;
use std::time::SystemTime;

use bytes::Bytes;

use crate::protocol::{Encoding, Format, deflate, msgpack};

/// A server frame, framed for the wire once per encoding and shared by every recipient.
#[derive(Debug, Clone)]
pub(crate) struct OutFrame {
    /// The whole WebSocket text frame: header and JSON payload.
    wire: Bytes,
    /// The binary MessagePack frame, made when the first connection that uses it needs it.
    msgpack: OnceLock<Bytes>,
    /// The compressed frames, JSON and MessagePack, made the same way.
    deflated: [OnceLock<Bytes>; 2],
    /// When the event was published, for delivery latency; `None` for replies.
    pub(super) published_at: Option<SystemTime>,
}

impl OutFrame {
    /// An event frame published at `published_at`.
    pub(crate) fn event(json: &str, published_at: Option<SystemTime>) -> Self {
        Self {
            wire: frame(OPCODE_TEXT, false, json.as_bytes()),
            msgpack: OnceLock::new(),
            deflated: [OnceLock::new(), OnceLock::new()],
            published_at,
        }
    }

    /// A control frame (a ping), the same in every encoding.
    pub(super) const fn control(wire: &'static [u8]) -> Self {
        Self {
            wire: Bytes::from_static(wire),
            msgpack: OnceLock::new(),
            deflated: [OnceLock::new(), OnceLock::new()],
            published_at: None,
        }
    }

    /// The whole WebSocket frame in `encoding`.
    pub(crate) fn wire(&self, encoding: Encoding) -> &Bytes {
        let is_control = self.wire.first().is_some_and(|first| first & 0x08 != 0);
        if is_control {
            return &self.wire;
        }
        let plain = self.plain(encoding.format);
        let payload = plain.get(header_len(plain)..).unwrap_or_default();
        if !encoding.compresses(payload.len()) {
            return plain;
        }
        let slot = match encoding.format {
            Format::Json => &self.deflated[0],
            Format::Msgpack => &self.deflated[1],
        };
        slot.get_or_init(|| {
            let opcode = plain.first().map_or(OPCODE_TEXT, |first| first & 0x0f);
            frame(opcode, true, &deflate::compress(payload))
        })
    }

    /// The uncompressed frame in `format`.
    fn plain(&self, format: Format) -> &Bytes {
        match format {
            Format::Json => &self.wire,
            Format::Msgpack => self.msgpack.get_or_init(|| match msgpack::from_json(self.json()) {
                Ok(packed) => frame(OPCODE_BINARY, false, &packed),
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
        let payload = self.wire.get(header_len(&self.wire)..).unwrap_or_default();
        // Built from a `&str` in `event`, so always UTF-8.
        std::str::from_utf8(payload).unwrap_or_default()
    }
}

/// The header length of one of our (unmasked) frames.
fn header_len(wire: &[u8]) -> usize {
    match wire.get(1) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// A text frame with `payload`, for the framing tests.
#[cfg(test)]
pub(super) fn text_frame(payload: &[u8]) -> Bytes {
    frame(OPCODE_TEXT, false, payload)
}

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// An unmasked, unfragmented server frame (RFC 6455 section 5.2), with RSV1 set when its
/// payload is compressed (RFC 7692 section 6).
fn frame(opcode: u8, compressed: bool, payload: &[u8]) -> Bytes {
    const FIN: u8 = 0x80;
    const RSV1: u8 = 0x40;
    let len = payload.len();
    let mut wire = Vec::with_capacity(len + 10);
    wire.push(FIN | if compressed { RSV1 } else { 0 } | opcode);
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
