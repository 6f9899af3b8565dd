//! The client's compressed frames made plain before tungstenite reads them.
//!
//! tungstenite has no permessage-deflate, so a connection that negotiated it reads through
//! [`Inflating`]: it parses the client's frame headers as they pass, forwards every frame it
//! need not touch byte for byte, and replaces each compressed message (RSV1 on its first frame,
//! then its continuation frames) with one plain frame of the inflated message, masked with a
//! zero key. It inflates outside the outbox's lock, never past the message size limit; what it
//! cannot accept it turns into a frame tungstenite refuses (an oversize header for 1009, a
//! reserved bit for a malformed stream), and from then on passes bytes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::deflate::{InflateError, Inflater};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 1024;
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const MASKED: u8 = 0x80;

/// A connection's socket as tungstenite reads it: compressed client messages arrive inflated.
/// Without permessage-deflate it only passes bytes through, and costs a pointer.
pub(crate) struct Inflating<T> {
    io: T,
    reader: Option<Box<Reader>>,
}

impl<T> Inflating<T> {
    /// Reads `io`, inflating client messages when `negotiated`, up to `limit` bytes each.
    pub(crate) fn new(io: T, negotiated: bool, limit: usize) -> Self {
        let reader = negotiated.then(|| Box::new(Reader::new(limit)));
        Self { io, reader }
    }

    /// The socket underneath.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

/// Where the reader is in the client's stream.
enum State {
    /// Reading a frame header.
    Header,
    /// Forwarding this many payload bytes as they are.
    Plain(u64),
    /// Inflating this many payload bytes of a compressed message's frame.
    Compressed {
        left: u64,
        mask: [u8; 4],
        at: usize,
        fin: bool,
    },
    /// No longer parsed: bytes pass as they are.
    Raw,
}

/// The frame parser and what it made that the caller has not read yet.
struct Reader {
    limit: usize,
    state: State,
    /// The frame header read so far.
    header: Vec<u8>,
    /// The compressed message being inflated, with its opcode.
    message: Option<(u8, Inflater)>,
    /// Bytes for tungstenite, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
}

impl Reader {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            state: State::Header,
            header: Vec::new(),
            message: None,
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Takes bytes read from the socket.
    fn take(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            let used = match &mut self.state {
                State::Raw => {
                    self.out.extend_from_slice(input);
                    input.len()
                }
                State::Header => self.take_header(input),
                State::Plain(left) => {
                    let used = input
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    self.out.extend_from_slice(&input[..used]);
                    *left -= used as u64;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                    used
                }
                State::Compressed { .. } => self.take_compressed(input),
            };
            input = &input[used..];
        }
    }

    /// Takes header bytes; once the header is whole, decides what its frame becomes.
    fn take_header(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() {
            self.header.push(input[used]);
            used += 1;
            if let Some(len) = header_len(&self.header)
                && self.header.len() == len
            {
                let header = std::mem::take(&mut self.header);
                self.on_header(&header);
                break;
            }
        }
        used
    }

    /// What a whole frame header starts: a frame passed on, or a compressed one inflated.
    fn on_header(&mut self, header: &[u8]) {
        let (first, second) = (header[0], header[1]);
        let opcode = first & 0x0f;
        let compressed = first & RSV1 != 0;
        let continues = opcode == 0 && self.message.is_some();
        let starts = compressed && matches!(opcode, 1 | 2);
        if !continues && !starts {
            if compressed || (self.message.is_some() && opcode & 0x08 == 0) {
                // RSV1 on a control or continuation frame, or a new message inside a
                // compressed one.
                return self.fail();
            }
            self.out.extend_from_slice(header);
            self.state = State::Plain(payload_len(header));
            return self.end_of_plain_frame();
        }
        let bad_bits = first & (RSV2 | RSV3) != 0 || (continues && compressed);
        if bad_bits || second & MASKED == 0 || (starts && self.message.is_some()) {
            return self.fail();
        }
        let len = payload_len(header);
        if len > self.limit as u64 {
            return self.oversize(opcode.max(1));
        }
        if starts {
            self.message = Some((opcode, Inflater::new(self.limit)));
        }
        let mask = header[header.len() - 4..].try_into().unwrap_or_default();
        let fin = first & FIN != 0;
        self.state = State::Compressed {
            left: len,
            mask,
            at: 0,
            fin,
        };
        if len == 0 {
            self.end_of_compressed_frame(fin);
        }
    }

    /// A plain frame without payload is over as soon as its header is.
    fn end_of_plain_frame(&mut self) {
        if matches!(self.state, State::Plain(0)) {
            self.state = State::Header;
        }
    }

    /// Unmasks and inflates payload bytes of a compressed message's frame.
    fn take_compressed(&mut self, input: &[u8]) -> usize {
        let State::Compressed {
            left,
            mask,
            at,
            fin,
        } = &mut self.state
        else {
            return 0;
        };
        let used = input
            .len()
            .min(usize::try_from(*left).unwrap_or(usize::MAX));
        let mut chunk = [0u8; READ_CHUNK];
        let chunk = &mut chunk[..used.min(READ_CHUNK)];
        let used = chunk.len();
        for (i, (plain, masked)) in chunk.iter_mut().zip(input).enumerate() {
            *plain = masked ^ mask[(*at + i) % 4];
        }
        *at += used;
        *left -= used as u64;
        let (left, fin) = (*left, *fin);
        let fed = match self.message.as_mut() {
            Some((_, inflater)) => inflater.feed(chunk),
            None => Err(InflateError::Corrupt),
        };
        match fed {
            Err(error) => self.refuse(error),
            Ok(()) if left == 0 => self.end_of_compressed_frame(fin),
            Ok(()) => {}
        }
        used
    }

    /// After a compressed message's frame: its last one hands the inflated message on.
    fn end_of_compressed_frame(&mut self, fin: bool) {
        self.state = State::Header;
        if !fin {
            return;
        }
        let Some((opcode, inflater)) = self.message.take() else {
            return self.fail();
        };
        match inflater.finish() {
            Ok(message) => {
                write_header(&mut self.out, FIN | opcode, message.len() as u64);
                self.out.extend_from_slice(&message);
            }
            Err(error) => self.refuse(error),
        }
    }

    fn refuse(&mut self, error: InflateError) {
        match error {
            InflateError::TooBig => {
                let opcode = self.message.as_ref().map_or(1, |(opcode, _)| *opcode);
                self.oversize(opcode);
            }
            InflateError::Corrupt => self.fail(),
        }
    }

    /// Hands tungstenite a header one byte over the size limit, which it closes with 1009.
    fn oversize(&mut self, opcode: u8) {
        write_header(&mut self.out, FIN | opcode, self.limit as u64 + 1);
        self.stop();
    }

    /// Hands tungstenite a frame with a reserved bit set, which it refuses as malformed.
    fn fail(&mut self) {
        write_header(&mut self.out, FIN | RSV2 | 0x1, 0);
        self.stop();
    }

    fn stop(&mut self) {
        self.message = None;
        self.state = State::Raw;
    }

    /// Copies made bytes into `buf`; false when there were none.
    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = &self.out[self.out_at..];
        if pending.is_empty() {
            return false;
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.out_at += n;
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out.shrink_to(READ_CHUNK);
            self.out_at = 0;
        }
        true
    }
}

/// The whole length of a frame header once its first two bytes are known.
fn header_len(header: &[u8]) -> Option<usize> {
    let second = *header.get(1)?;
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & MASKED != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

/// The payload length a whole frame header gives.
fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => header[2..10]
            .iter()
            .fold(0, |len, byte| (len << 8) | u64::from(*byte)),
        short => u64::from(short),
    }
}

/// A masked frame header with a zero key: the payload that follows is sent as it is.
fn write_header(out: &mut Vec<u8>, first: u8, len: u64) {
    out.push(first);
    match len {
        0..=125 => out.push(MASKED | len as u8),
        126..=0xffff => {
            out.push(MASKED | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(MASKED | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
}

impl<T: AsyncRead + Unpin> AsyncRead for Inflating<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        loop {
            if reader.hand_out(buf) {
                return Poll::Ready(Ok(()));
            }
            if matches!(reader.state, State::Raw) {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            reader.take(read.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Inflating<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
