#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream, duplex};
use tokio_tungstenite::WebSocketStream;
use tungstenite::error::{CapacityError, Error, ProtocolError};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Bytes, Message};

use super::*;
use crate::protocol::deflate::compress;

const LIMIT: usize = 64 * 1024;

/// A server-side WebSocket reading through [`Inflating`], and the client's end of the pipe.
async fn server(negotiated: bool) -> (WebSocketStream<Inflating<DuplexStream>>, DuplexStream) {
    let (ours, theirs) = duplex(1 << 20);
    let config = WebSocketConfig::default()
        .read_buffer_size(128)
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT));
    let io = Inflating::new(ours, negotiated, LIMIT);
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    (socket, theirs)
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::new();
    write_header(&mut out, first, payload.len() as u64);
    let at = out.len() - 4;
    out[at..].copy_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

async fn next(socket: &mut WebSocketStream<Inflating<DuplexStream>>) -> Result<Message, Error> {
    socket.next().await.unwrap()
}

#[tokio::test]
async fn compressed_and_plain_messages_arrive_as_sent_in_any_chunking() {
    let text = r#"{"type":"subscribe","channel":"jobs:1"}"#.repeat(50);
    let mut wire = frame(FIN | RSV1 | 0x1, &compress(text.as_bytes()));
    wire.extend(frame(FIN | 0x1, b"plain"));
    let packed = compress(&[1, 2, 3, 4].repeat(300));
    let (head, tail) = packed.split_at(packed.len() / 2);
    wire.extend(frame(RSV1 | 0x2, head));
    wire.extend(frame(FIN | 0x9, b"ping"));
    wire.extend(frame(FIN, tail));
    wire.extend(frame(FIN | RSV1 | 0x1, &compress(b"")));
    for chunk_size in [1, 3, 100, wire.len()] {
        let (mut socket, mut client) = server(true).await;
        for chunk in wire.chunks(chunk_size) {
            client.write_all(chunk).await.unwrap();
        }
        assert_eq!(
            next(&mut socket).await.unwrap(),
            Message::text(text.clone())
        );
        assert_eq!(next(&mut socket).await.unwrap(), Message::text("plain"));
        assert_eq!(
            next(&mut socket).await.unwrap(),
            Message::Ping(Bytes::from_static(b"ping"))
        );
        let binary = Message::binary([1, 2, 3, 4].repeat(300));
        assert_eq!(next(&mut socket).await.unwrap(), binary);
        assert_eq!(next(&mut socket).await.unwrap(), Message::text(""));
    }
}

#[tokio::test]
async fn a_message_that_inflates_past_the_limit_is_too_big() {
    let bomb = compress(&vec![0; 8 << 20]);
    for fragments in [1, 4] {
        let (mut socket, mut client) = server(true).await;
        let pieces: Vec<&[u8]> = bomb.chunks(bomb.len().div_ceil(fragments)).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let first = if i == 0 { RSV1 | 0x1 } else { 0 };
            let fin = if i + 1 == pieces.len() { FIN } else { 0 };
            client.write_all(&frame(first | fin, piece)).await.unwrap();
        }
        let error = next(&mut socket).await.unwrap_err();
        assert!(
            matches!(error, Error::Capacity(CapacityError::MessageTooLong { .. })),
            "{error:?}"
        );
        let reader = socket.get_mut().reader.as_ref().unwrap();
        assert!(reader.message.is_none(), "the inflater is gone");
    }
}

#[tokio::test]
async fn malformed_compressed_streams_are_refused() {
    let valid = compress(b"hello");
    let cases = [
        frame(FIN | RSV1 | 0x9, b""),
        frame(FIN | RSV1, &valid),
        [frame(RSV1 | 0x1, &valid), frame(FIN | 0x1, b"new")].concat(),
        [frame(RSV1 | 0x1, &valid), frame(FIN | RSV1, b"")].concat(),
        frame(FIN | RSV1 | 0x1, &[0xff; 32]),
        frame(FIN | RSV1 | RSV2 | 0x1, &valid),
    ];
    for wire in cases {
        let (mut socket, mut client) = server(true).await;
        client.write_all(&wire).await.unwrap();
        let error = next(&mut socket).await.unwrap_err();
        assert!(
            matches!(error, Error::Protocol(ProtocolError::NonZeroReservedBits)),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn without_negotiation_a_compressed_frame_is_refused_as_it_is() {
    let (mut socket, mut client) = server(false).await;
    let wire = frame(FIN | RSV1 | 0x1, &compress(b"hello"));
    client.write_all(&wire).await.unwrap();
    let error = next(&mut socket).await.unwrap_err();
    assert!(matches!(
        error,
        Error::Protocol(ProtocolError::NonZeroReservedBits)
    ));
}
