//! A raw WebSocket client (RFC 6455) with permessage-deflate (RFC 7692), written for tests and
//! benchmarks that need to see the wire: RSV bits, compressed sizes, hand-made frames.
//!
//! It offers no context takeover in either direction: every compressed message, sent or
//! received, is deflated or inflated on its own.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::io;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The end of a sync-flushed DEFLATE message, left off on the wire (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The longest upgrade response head read before giving up.
const MAX_HEAD: usize = 64 * 1024;
/// Any valid key does: the accept hash is not verified.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Continuation, text, binary, close, ping and pong opcodes.
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// What the client offers in its upgrade request.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// `Sec-WebSocket-Extensions` value to send; `None` sends none.
    pub extensions: Option<String>,
    /// `Sec-WebSocket-Protocol` value to send; `None` sends none.
    pub subprotocols: Option<String>,
}

impl Offer {
    /// Offers `permessage-deflate; client_max_window_bits`, as browsers do.
    pub fn deflate() -> Self {
        Self {
            extensions: Some("permessage-deflate; client_max_window_bits".to_owned()),
            subprotocols: None,
        }
    }
}

/// The server's answer to the upgrade request.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The HTTP status (101 when upgraded).
    pub status: u16,
    /// The response headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Handshake {
    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One frame as received.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong, 0 continuation).
    pub opcode: u8,
    /// The FIN bit.
    pub fin: bool,
    /// Whether RSV1 was set (the payload came compressed).
    pub compressed: bool,
    /// The payload, inflated when it came compressed.
    pub payload: Vec<u8>,
    /// Header and payload bytes as they were on the wire.
    pub wire_len: usize,
}

/// A client WebSocket connection over plain TCP on loopback.
#[derive(Debug)]
pub struct RawWebSocket {
    stream: TcpStream,
    /// Bytes read from the socket and not yet parsed.
    buffer: Vec<u8>,
    deflate: bool,
    bytes_read: u64,
}

impl RawWebSocket {
    /// Connects to `127.0.0.1:port` and sends `GET path_and_query` with `offer`; Ok for any status.
    pub async fn connect(
        port: u16,
        path_and_query: &str,
        offer: &Offer,
    ) -> io::Result<(Self, Handshake)> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(extensions) = &offer.extensions {
            request.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
        }
        if let Some(protocols) = &offer.subprotocols {
            request.push_str(&format!("Sec-WebSocket-Protocol: {protocols}\r\n"));
        }
        request.push_str("\r\n");
        let mut socket = Self {
            stream,
            buffer: Vec::new(),
            deflate: false,
            bytes_read: 0,
        };
        socket.stream.write_all(request.as_bytes()).await?;
        let handshake = socket.read_head().await?;
        socket.deflate = handshake.status == 101
            && handshake.headers.iter().any(|(name, value)| {
                name == "sec-websocket-extensions" && value.contains("permessage-deflate")
            });
        Ok((socket, handshake))
    }

    /// Whether permessage-deflate was negotiated (the 101 carried it).
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// Bytes read from the socket so far, the upgrade response's head excluded.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next frame of any kind, inflated when compressed; Err on EOF or a malformed frame.
    pub async fn next_frame(&mut self) -> io::Result<Frame> {
        self.fill(2).await?;
        let (fin, rsv1, opcode) = (
            self.buffer[0] & 0x80 != 0,
            self.buffer[0] & 0x40 != 0,
            self.buffer[0] & 0x0f,
        );
        let masked = self.buffer[1] & 0x80 != 0;
        let (len, mut header) = match self.buffer[1] & 0x7f {
            126 => {
                self.fill(4).await?;
                (
                    u64::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                    4,
                )
            }
            127 => {
                self.fill(10).await?;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.buffer[2..10]);
                (u64::from_be_bytes(bytes), 10)
            }
            short => (u64::from(short), 2),
        };
        let mask_at = header;
        if masked {
            header += 4;
        }
        let len = usize::try_from(len).map_err(|_| invalid("frame length overflows usize"))?;
        self.fill(header + len).await?;
        let mask: Vec<u8> = self.buffer[mask_at..header].to_vec();
        let mut payload: Vec<u8> = self.buffer.drain(..header + len).skip(header).collect();
        if masked {
            let key = mask.iter().cycle();
            payload.iter_mut().zip(key).for_each(|(byte, m)| *byte ^= m);
        }
        if rsv1 && opcode != CONTINUATION && opcode < CLOSE {
            payload = inflate(&payload)?;
        }
        Ok(Frame {
            opcode,
            fin,
            compressed: rsv1,
            payload,
            wire_len: header + len,
        })
    }

    /// The next text or binary frame, answering pings and skipping pongs; a close is an Err
    /// whose message contains its code.
    pub async fn next_data(&mut self) -> io::Result<Frame> {
        loop {
            let frame = self.next_frame().await?;
            match frame.opcode {
                PING => self.send(PONG, &frame.payload, false).await?,
                PONG => {}
                CLOSE => {
                    let code = close_code_of(&frame.payload)
                        .map_or_else(|| "none".to_owned(), |code| code.to_string());
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("closed by the server with code {code}"),
                    ));
                }
                _ => return Ok(frame),
            }
        }
    }

    /// Sends one masked, unfragmented frame; `compress` deflates it (RSV1) with a fresh context.
    pub async fn send(&mut self, opcode: u8, payload: &[u8], compress: bool) -> io::Result<()> {
        let frame = if compress {
            Self::client_frame(true, true, opcode, &Self::deflate_message(payload))
        } else {
            Self::client_frame(true, false, opcode, payload)
        };
        self.send_raw(&frame).await
    }

    /// Sends `bytes` as they are: hand-made frames, fragments, bad bits.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// One masked client frame with the given FIN, RSV1 and opcode around `payload` (as is).
    pub fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | (opcode & 0x0f));
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mask = mask_key();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        frame
    }

    /// Raw DEFLATE of `payload`, sync-flushed, with the trailing `00 00 ff ff` removed.
    pub fn deflate_message(payload: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            let consumed = usize::try_from(compress.total_in()).unwrap_or(payload.len());
            let rest = payload.get(consumed..).unwrap_or_default();
            if compress
                .compress_vec(rest, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let all_in = compress.total_in() == payload.len() as u64;
            if all_in && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    }

    /// The code of the server's close frame, waiting up to `timeout`; None on EOF, reset or
    /// a close without a code.
    pub async fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        let wait = async {
            loop {
                match self.next_frame().await {
                    Ok(frame) if frame.opcode == CLOSE => return close_code_of(&frame.payload),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Reads the upgrade response's head; what follows it stays in the buffer.
    async fn read_head(&mut self) -> io::Result<Handshake> {
        let end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(invalid("the upgrade response's head is too long"));
            }
            self.read_more().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.bytes_read -= (end + 4) as u64;
        self.buffer.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid(&format!("not an HTTP status line: {head:?}")))?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Ok(Handshake { status, headers })
    }

    /// Reads until the buffer holds at least `len` bytes.
    async fn fill(&mut self, len: usize) -> io::Result<()> {
        while self.buffer.len() < len {
            self.read_more().await?;
        }
        Ok(())
    }

    /// One read from the socket into the buffer; Err on EOF.
    async fn read_more(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.bytes_read += n as u64;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Inflates one message's DEFLATE data (the tail appended) with a fresh inflater.
fn inflate(data: &[u8]) -> io::Result<Vec<u8>> {
    let input = [data, &TAIL[..]].concat();
    let mut decompress = Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity());
        }
        let consumed = usize::try_from(decompress.total_in()).unwrap_or(input.len());
        let before = (decompress.total_in(), out.len());
        let status = decompress
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let all_in = decompress.total_in() == input.len() as u64;
        if status == Status::StreamEnd || (all_in && out.len() < out.capacity()) {
            return Ok(out);
        }
        if before == (decompress.total_in(), out.len()) {
            return Err(invalid("the deflate data stopped making progress"));
        }
    }
}

/// The status code at the start of a close frame's payload.
fn close_code_of(payload: &[u8]) -> Option<u16> {
    match payload {
        [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// A fresh masking key (RFC 6455 asks for unpredictable ones; the std hasher's seeds do).
fn mask_key() -> [u8; 4] {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u8(0);
    let bits = hasher.finish().to_le_bytes();
    [bits[0], bits[1], bits[2], bits[3]]
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests;
