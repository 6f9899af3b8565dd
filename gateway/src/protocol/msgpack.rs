//! MessagePack, the binary encoding a connection may ask for: every frame a binary map with the
//! same fields as its JSON form (`timestamp` a string, `data` a native value). Server frames are
//! converted from their JSON encoding, once per frame whichever number of connections use it;
//! client frames are converted to JSON text and parsed like any other.

use serde::Deserialize;

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    /// JSON text frames, the default.
    #[default]
    Json,
    /// MessagePack binary frames.
    Msgpack,
}

impl Format {
    /// The WebSocket subprotocol that names this format.
    pub(crate) fn subprotocol(self) -> &'static str {
        match self {
            Self::Json => "gateway.json",
            Self::Msgpack => "gateway.msgpack",
        }
    }

    /// The format of a `?format=` value.
    pub(crate) fn from_query(value: &str) -> Option<Self> {
        match value {
            "json" => Some(Self::Json),
            "msgpack" => Some(Self::Msgpack),
            _ => None,
        }
    }

    /// The format a subprotocol names, if it is one of ours.
    pub(crate) fn from_subprotocol(value: &str) -> Option<Self> {
        [Self::Json, Self::Msgpack]
            .into_iter()
            .find(|format| format.subprotocol().eq_ignore_ascii_case(value))
    }
}

/// Why a MessagePack frame could not be converted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MsgpackError {
    /// The bytes are not a MessagePack value that has a JSON form (binary data, non-string
    /// keys, truncated input…).
    #[error("not a MessagePack map of JSON values: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The JSON text is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The value could not be written as MessagePack.
    #[error("cannot encode as MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// The MessagePack form of a JSON frame: maps with string keys, as `rmp_serde` writes structs.
pub(crate) fn from_json(json: &str) -> Result<Vec<u8>, MsgpackError> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    Ok(rmp_serde::to_vec_named(&value)?)
}

/// Deepest nesting a MessagePack client frame may have: within what the JSON parser takes
/// (128 levels), so that every frame that converts also parses.
const MAX_DEPTH: usize = 100;

/// The JSON text of a MessagePack client frame, to be parsed as a JSON frame is.
pub(crate) fn to_json(bytes: &[u8]) -> Result<String, MsgpackError> {
    let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
    decoder.set_max_depth(MAX_DEPTH);
    let value = serde_json::Value::deserialize(&mut decoder)?;
    Ok(serde_json::to_string(&value)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_frame_keeps_its_fields_and_values_both_ways() {
        let json = r#"{"type":"job_progress","channel":"jobs","data":{"id":"a","progress":45.5,"n":-3,"big":18446744073709551615,"ok":true,"none":null,"list":[1,"x"]},"timestamp":"2026-12-02T10:00:00.000Z","offset":7}"#;
        let packed = from_json(json).unwrap();
        // A map of 5 entries, keys as strings.
        assert_eq!(packed[0], 0x85);
        let back: serde_json::Value = serde_json::from_str(&to_json(&packed).unwrap()).unwrap();
        let original: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(back, original);
    }

    /// Found by the `msgpack_frame` fuzz target: a float whose shortest decimal form the JSON
    /// parser read back one unit in the last place off, so the two encodings disagreed.
    #[test]
    fn every_float_converts_exactly_both_ways() {
        let float = f64::from_bits(0x40ff_ffff_ffff_ff04);
        let packed = rmp_serde::to_vec_named(&serde_json::json!({"n": float})).unwrap();
        let json = to_json(&packed).unwrap();
        assert_eq!(to_json(&from_json(&json).unwrap()).unwrap(), json);
        let back: serde_json::Value = rmp_serde::from_slice(&from_json(&json).unwrap()).unwrap();
        assert_eq!(back["n"].as_f64().map(f64::to_bits), Some(float.to_bits()));
    }

    /// Found by the `msgpack_frame` fuzz target: nesting that MessagePack allowed and JSON did
    /// not. Such a frame is now refused at the conversion.
    #[test]
    fn nesting_deeper_than_json_takes_is_refused() {
        let mut deep = vec![0x91u8; MAX_DEPTH + 1];
        deep.push(0xc0);
        assert!(matches!(to_json(&deep), Err(MsgpackError::Decode(_))));
        let mut fine = vec![0x91u8; MAX_DEPTH - 1];
        fine.push(0xc0);
        let json = to_json(&fine).unwrap();
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }

    #[test]
    fn binary_values_and_garbage_are_refused() {
        assert!(to_json(&[0xc4, 0x01, 0x00]).is_err(), "bin 8");
        assert!(to_json(&[0x81, 0x01, 0x02]).is_err(), "integer key");
        assert!(to_json(&[0x85]).is_err(), "truncated");
        assert!(to_json(b"").is_err(), "empty");
    }

    #[test]
    fn formats_come_from_the_query_and_the_subprotocol() {
        assert_eq!(Format::from_query("msgpack"), Some(Format::Msgpack));
        assert_eq!(Format::from_query("xml"), None);
        assert_eq!(
            Format::from_subprotocol("gateway.msgpack"),
            Some(Format::Msgpack)
        );
        assert_eq!(Format::from_subprotocol("gateway.json"), Some(Format::Json));
        assert_eq!(Format::from_subprotocol("chat"), None);
    }
}
