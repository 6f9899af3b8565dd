//! permessage-deflate (RFC 7692): the offer a connection accepts, the compression of server
//! frames and the bounded inflation of client frames.
//!
//! The gateway asks for no context takeover in both directions: every message is compressed
//! on its own, so one compressed frame serves every connection that negotiated it, and a
//! connection holds no compression state while it is idle. An inflater exists only while a
//! compressed client message is being read.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::Format;

/// The `Sec-WebSocket-Extensions` value of a 101 that accepted permessage-deflate.
pub(crate) const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The end of every message's DEFLATE data with a sync flush, left off on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compression level: the cheapest, as every event is compressed on the bus reader's path;
/// the gain on JSON is close to the default level's.
const LEVEL: u32 = 1;

/// How a connection's frames go on the wire: their format, and from which payload size they
/// are compressed (`None` when permessage-deflate was not negotiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Encoding {
    /// JSON or MessagePack.
    pub(crate) format: Format,
    /// Payloads at least this long are sent compressed.
    pub(crate) compress_from: Option<usize>,
}

impl Encoding {
    /// Whether a payload of `len` bytes goes compressed.
    pub(crate) fn compresses(self, len: usize) -> bool {
        self.compress_from.is_some_and(|min| len >= min)
    }
}

/// Whether one of the offers in `Sec-WebSocket-Extensions` values is a permessage-deflate
/// offer this gateway accepts: no unknown or repeated parameter, and no server window below
/// the 32 KiB one it compresses with.
pub(crate) fn accepts_offer<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values
        .into_iter()
        .flat_map(|value| value.split(','))
        .any(acceptable)
}

/// Whether one offer (`permessage-deflate; param; param=value`) is acceptable.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return false;
        }
        let valid = match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(bits)) => window_bits(bits).is_some(),
            ("server_max_window_bits", Some(bits)) => window_bits(bits) == Some(15),
            _ => false,
        };
        if !valid {
            return false;
        }
        seen.push(name);
    }
    true
}

/// A window size parameter's value, 8 to 15 in plain digits.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 2 {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

thread_local! {
    /// One compressor per thread, reset for every message: building one allocates its tables.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// The payload of a compressed frame for `message`: its raw DEFLATE data, flushed, without the
/// four tail bytes (RFC 7692 section 7.2.1).
pub(crate) fn compress(message: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        let mut out = Vec::with_capacity(message.len() / 2 + 64);
        let mut input = message;
        loop {
            let before = compressor.total_in();
            let status = compressor.compress_vec(input, &mut out, FlushCompress::Sync);
            let consumed = usize::try_from(compressor.total_in() - before).unwrap_or(input.len());
            input = input.get(consumed..).unwrap_or_default();
            let flushed = out.len() < out.capacity();
            if matches!(status, Ok(Status::StreamEnd) | Err(_)) || (input.is_empty() && flushed) {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Why a compressed client message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InflateError {
    /// It inflates past the message size limit.
    #[error("inflated message over the size limit")]
    TooBig,
    /// It is not valid DEFLATE data.
    #[error("invalid DEFLATE data")]
    Corrupt,
}

/// One compressed client message being inflated, never past `limit` bytes.
pub(crate) struct Inflater {
    decompress: Decompress,
    out: Vec<u8>,
    limit: usize,
}

impl Inflater {
    /// An inflater for one message of at most `limit` bytes once inflated.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            decompress: Decompress::new(false),
            out: Vec::new(),
            limit,
        }
    }

    /// Inflates the next piece of the message's compressed data.
    pub(crate) fn feed(&mut self, mut input: &[u8]) -> Result<(), InflateError> {
        loop {
            if self.out.len() > self.limit {
                return Err(InflateError::TooBig);
            }
            if self.out.len() == self.out.capacity() {
                let room = (self.limit + 1 - self.out.len()).min(self.out.len().max(1024));
                self.out.reserve_exact(room);
            }
            let before = self.decompress.total_in();
            let status = self
                .decompress
                .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let consumed = usize::try_from(self.decompress.total_in() - before).unwrap_or(0);
            input = input.get(consumed..).unwrap_or_default();
            let room_left = self.out.len() < self.out.capacity();
            if status == Status::StreamEnd || (input.is_empty() && room_left) {
                return Ok(());
            }
        }
    }

    /// The whole message, once its last frame was fed.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, InflateError> {
        self.feed(&TAIL)?;
        if self.out.len() > self.limit {
            return Err(InflateError::TooBig);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn offers_are_accepted_only_when_every_parameter_is_understood() {
        assert!(accepts_offer(["permessage-deflate"]));
        assert!(accepts_offer([
            "permessage-deflate; client_max_window_bits"
        ]));
        assert!(accepts_offer([
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover"
        ]));
        assert!(accepts_offer([
            "permessage-deflate; server_max_window_bits=\"15\""
        ]));
        assert!(!accepts_offer([
            "permessage-deflate; server_max_window_bits=10"
        ]));
        assert!(!accepts_offer([
            "permessage-deflate; server_max_window_bits"
        ]));
        assert!(!accepts_offer(["permessage-deflate; mystery"]));
        assert!(!accepts_offer([
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(!accepts_offer([
            "permessage-deflate; client_max_window_bits=16"
        ]));
        assert!(!accepts_offer(["x-webkit-deflate-frame"]));
        assert!(!accepts_offer([]));
        assert!(accepts_offer([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(accepts_offer(["foo", "PERMESSAGE-DEFLATE"]));
    }

    #[test]
    fn compressed_messages_inflate_on_their_own() {
        let message = br#"{"type":"event","data":{"progress":0.5,"faces":[1,2,3]}}"#.repeat(40);
        let first = compress(&message);
        let second = compress(&message);
        assert_eq!(first, second, "no context carries over between messages");
        assert!(first.len() < message.len() / 4);
        assert!(!first.ends_with(&TAIL));
        let mut inflater = Inflater::new(1 << 20);
        for piece in first.chunks(7) {
            inflater.feed(piece).unwrap();
        }
        assert_eq!(inflater.finish().unwrap(), message);
        assert_eq!(
            Inflater::new(1 << 20).finish().unwrap(),
            b"",
            "an empty message"
        );
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let bomb = compress(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 64 * 1024);
        let mut inflater = Inflater::new(64 * 1024);
        let result = bomb.chunks(1024).try_for_each(|piece| inflater.feed(piece));
        assert_eq!(result, Err(InflateError::TooBig));
        assert!(inflater.out.capacity() <= 2 * 64 * 1024);
        let exact = compress(&[7u8; 4096]);
        let mut inflater = Inflater::new(4096);
        inflater.feed(&exact).unwrap();
        assert_eq!(inflater.finish().unwrap().len(), 4096);
        let mut inflater = Inflater::new(4095);
        let over = inflater
            .feed(&exact)
            .and_then(|()| inflater.finish().map(drop));
        assert_eq!(over, Err(InflateError::TooBig));
        let mut corrupt = Inflater::new(4096);
        assert_eq!(corrupt.feed(&[0xff; 16]), Err(InflateError::Corrupt));
    }
}
