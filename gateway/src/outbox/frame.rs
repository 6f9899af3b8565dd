//! [`OutFrame`]: a server text frame, framed once for every recipient.

use std::time::SystemTime;

use bytes::Bytes;

/// A server text frame, framed for the wire once and shared by every recipient.
#[derive(Debug, Clone)]
pub(crate) struct OutFrame {
    /// The whole WebSocket frame: header and JSON payload.
    pub(super) wire: Bytes,
    /// When the event was published, for delivery latency; `None` for replies.
    pub(super) published_at: Option<SystemTime>,
}

impl OutFrame {
    /// An event frame published at `published_at`.
    pub(crate) fn event(json: &str, published_at: Option<SystemTime>) -> Self {
        Self {
            wire: text_frame(json.as_bytes()),
            published_at,
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

/// An unmasked, unfragmented server text frame (RFC 6455 section 5.2).
pub(super) fn text_frame(payload: &[u8]) -> Bytes {
    const FIN_TEXT: u8 = 0x81;
    let len = payload.len();
    let mut wire = Vec::with_capacity(len + 10);
    wire.push(FIN_TEXT);
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
