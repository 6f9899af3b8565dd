//! The frame codec, the deflate round trip, and a client against a hand-written server.
#![allow(clippy::unwrap_used)]

use super::*;

/// Unmasks a client frame: (fin, rsv1, opcode, payload).
fn decode_client(frame: &[u8]) -> (bool, bool, u8, Vec<u8>) {
    let (len, at) = match frame[1] & 0x7f {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        short => (short as usize, 2),
    };
    assert_ne!(frame[1] & 0x80, 0, "client frames are masked");
    let mask = &frame[at..at + 4];
    let payload = frame[at + 4..]
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect::<Vec<u8>>();
    assert_eq!(payload.len(), len);
    (
        frame[0] & 0x80 != 0,
        frame[0] & 0x40 != 0,
        frame[0] & 0x0f,
        payload,
    )
}

#[test]
fn client_frames_carry_their_bits_and_every_length_form() {
    for len in [0, 1, 125, 126, 65535, 65536, 100_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let frame = RawWebSocket::client_frame(len % 2 == 0, len > 125, 2, &payload);
        let (fin, rsv1, opcode, back) = decode_client(&frame);
        assert_eq!((fin, rsv1, opcode), (len % 2 == 0, len > 125, 2), "{len}");
        assert_eq!(back, payload, "{len}");
    }
}

#[test]
fn a_deflated_message_has_no_tail_and_inflates_back() {
    let message = br#"{"type":"event","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#.repeat(50);
    let deflated = RawWebSocket::deflate_message(&message);
    assert!(!deflated.ends_with(&TAIL));
    assert!(deflated.len() < message.len() / 10, "{}", deflated.len());
    assert_eq!(inflate(&deflated).unwrap(), message);
    assert_eq!(inflate(&RawWebSocket::deflate_message(b"")).unwrap(), b"");
}

#[tokio::test]
async fn frames_from_a_server_are_parsed_and_inflated() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let big = vec![b'x'; 70_000];
    let deflated = RawWebSocket::deflate_message(&big);
    let sent = deflated.clone();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 4096];
        let _ = socket.read(&mut request).await.unwrap();
        let mut reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            .to_vec();
        reply.extend_from_slice(&[0x89, 0x01, b'p']); // ping
        // A compressed text frame, its length in the 16-bit form even when short.
        reply.extend_from_slice(&[0xc1, 126]);
        reply.extend_from_slice(&(sent.len() as u16).to_be_bytes());
        reply.extend_from_slice(&sent);
        reply.extend_from_slice(&[0x88, 0x02, 0x03, 0xf1]); // close 1009
        socket.write_all(&reply).await.unwrap();
        let mut pong = vec![0u8; 64];
        let n = socket.read(&mut pong).await.unwrap();
        pong.truncate(n);
        pong
    });
    let (mut socket, handshake) = RawWebSocket::connect(port, "/ws", &Offer::deflate())
        .await
        .unwrap();
    assert_eq!(handshake.status, 101);
    assert_eq!(handshake.header("Upgrade"), Some("websocket"));
    assert!(socket.deflate());
    let frame = socket.next_data().await.unwrap();
    assert!(frame.compressed && frame.fin && frame.opcode == 1);
    assert_eq!(frame.payload, big);
    assert_eq!(frame.wire_len, 4 + deflated.len());
    assert_eq!(socket.bytes_read(), (3 + frame.wire_len + 4) as u64);
    assert_eq!(socket.close_code(Duration::from_secs(5)).await, Some(1009));
    assert_eq!(
        decode_client(&server.await.unwrap()),
        (true, false, PONG, b"p".to_vec())
    );
}
