//! A real WebSocket client speaking the gateway's JSON protocol, with patient, loud reads.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::gateway::TestGateway;

/// How long a read waits for the next frame before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`TestClient::expect_close`] waits for the Close frame (covers the 10 s auth wait).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);
/// The receive buffer of a [`TestClient::connect_slow_reader`] socket.
pub const SLOW_READER_RECV_BUFFER: u32 = 4096;

/// The server answered the upgrade request with something other than 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// The HTTP status.
    pub status: u16,
    /// The body, as far as it came with the response (may be empty).
    pub body: String,
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upgrade refused with HTTP {}: {}",
            self.status, self.body
        )
    }
}

impl std::error::Error for HandshakeFailure {}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code, or `None` when the connection ended without a Close frame with a code.
    pub code: Option<u16>,
    /// The close reason, or what ended the connection.
    pub reason: String,
}

enum Incoming {
    Json(Value),
    Binary(usize),
    Closed(Closed),
}

/// A WebSocket connection to a gateway.
pub struct TestClient {
    ws: WebSocketStream<TcpStream>,
    established: Option<Value>,
    /// Frames read while [`request`](Self::request) looked for its reply, returned first.
    pending: VecDeque<Value>,
    next_id: u64,
}

impl fmt::Debug for TestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("established", &self.established)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// An upgrade request for `url`, to add headers to before [`TestClient::connect_with`].
pub fn ws_request(url: &str) -> Request {
    url.into_client_request()
        .unwrap_or_else(|e| panic!("bad WebSocket URL {url}: {e}"))
}

/// `request` with one more header.
pub fn with_header(mut request: Request, name: &'static str, value: &str) -> Request {
    let value =
        HeaderValue::from_str(value).unwrap_or_else(|e| panic!("bad value for header {name}: {e}"));
    request.headers_mut().insert(name, value);
    request
}

impl TestClient {
    /// Connects to `url` (usually with `?token=`) and reads `connection_established`.
    pub async fn connect(url: &str) -> Result<Self, HandshakeFailure> {
        Self::connect_with(ws_request(url)).await
    }

    /// Connects with a custom upgrade request (`Authorization`, `Origin` headers) and reads
    /// `connection_established`.
    pub async fn connect_with(request: Request) -> Result<Self, HandshakeFailure> {
        let mut client = Self::open(request, None).await?;
        client.read_established().await;
        Ok(client)
    }

    /// Connects to `url` without reading anything: for connections the server may close
    /// right after the upgrade. Panics if the upgrade is refused.
    pub async fn connect_raw(url: &str) -> Self {
        match Self::open(ws_request(url), None).await {
            Ok(client) => client,
            Err(e) => panic!("connecting to {url}: {e}"),
        }
    }

    /// Connects to `gw` without a token; the gateway then waits for an `auth` frame
    /// ([`auth`](Self::auth)). Panics if the upgrade is refused.
    pub async fn connect_no_token(gw: &TestGateway) -> Self {
        match Self::open(ws_request(&gw.ws_url()), None).await {
            Ok(client) => client,
            Err(e) => panic!("connecting without a token: {e}"),
        }
    }

    /// Connects through a socket with a small receive buffer
    /// ([`SLOW_READER_RECV_BUFFER`]), so that not reading soon backs up the server's queue.
    /// Stop reading by not calling any read method; drain later with
    /// [`drain_until_close`](Self::drain_until_close).
    pub async fn connect_slow_reader(url: &str) -> Result<Self, HandshakeFailure> {
        let mut client = Self::open(ws_request(url), Some(SLOW_READER_RECV_BUFFER)).await?;
        client.read_established().await;
        Ok(client)
    }

    async fn open(request: Request, recv_buffer: Option<u32>) -> Result<Self, HandshakeFailure> {
        let uri = request.uri().clone();
        let host = uri.host().unwrap_or("127.0.0.1").to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let addr = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(mut addrs) => addrs.next(),
            Err(e) => panic!("cannot resolve {host}: {e}"),
        };
        let Some(addr) = addr else {
            panic!("{host} resolves to nothing")
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let socket = socket.unwrap_or_else(|e| panic!("cannot open a socket: {e}"));
        if let Some(size) = recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .unwrap_or_else(|e| panic!("cannot set SO_RCVBUF: {e}"));
        }
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(RECV_TIMEOUT, client_async(request, stream)).await {
            Err(_) => panic!("no answer to the WebSocket upgrade of {uri} within {RECV_TIMEOUT:?}"),
            Ok(Ok((ws, _response))) => Ok(Self {
                ws,
                established: None,
                pending: VecDeque::new(),
                next_id: 0,
            }),
            Ok(Err(WsError::Http(response))) => Err(HandshakeFailure {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_deref()
                    .map(|body| String::from_utf8_lossy(body).into_owned())
                    .unwrap_or_default(),
            }),
            Ok(Err(e)) => panic!("WebSocket upgrade of {uri} failed: {e}"),
        }
    }

    async fn read_established(&mut self) -> &Value {
        let frame = self.recv().await;
        assert_eq!(
            frame["type"],
            "connection_established",
            "the first frame must be connection_established, got {}",
            brief(&frame)
        );
        self.established.insert(frame)
    }

    /// Authenticates with a first frame `{"type":"auth","token":…}` and returns the
    /// `connection_established` frame that must follow.
    pub async fn auth(&mut self, token: &str) -> Value {
        self.send_json(serde_json::json!({"type": "auth", "token": token}))
            .await;
        self.read_established().await.clone()
    }

    /// The `connection_established` frame.
    pub fn established(&self) -> &Value {
        match &self.established {
            Some(frame) => frame,
            None => panic!("no connection_established yet (connected without a token?)"),
        }
    }

    fn established_str(&self, field: &str) -> &str {
        match self.established()[field].as_str() {
            Some(value) => value,
            None => panic!(
                "connection_established has no string {field:?}: {}",
                self.established()
            ),
        }
    }

    /// `client_id` from `connection_established`.
    pub fn client_id(&self) -> &str {
        self.established_str("client_id")
    }

    /// `user_id` from `connection_established`.
    pub fn user_id(&self) -> &str {
        self.established_str("user_id")
    }

    /// `node_id` from `connection_established`.
    pub fn node_id(&self) -> &str {
        self.established_str("node_id")
    }

    /// Sends a JSON text frame; panics if the connection is gone.
    pub async fn send_json(&mut self, frame: Value) {
        self.send(Message::text(frame.to_string()), "a JSON frame")
            .await;
    }

    /// Sends a text frame as is (invalid JSON, say); panics if the connection is gone.
    pub async fn send_raw_text(&mut self, text: &str) {
        self.send(Message::text(text), "a text frame").await;
    }

    /// Sends a binary frame; panics if the connection is gone.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes), "a binary frame").await;
    }

    /// Sends one raw WebSocket frame (a fragment, say); panics if the connection is gone.
    pub async fn send_frame(
        &mut self,
        frame: tokio_tungstenite::tungstenite::protocol::frame::Frame,
    ) {
        self.send(Message::Frame(frame), "a raw frame").await;
    }

    /// Sends one raw frame, returning the error if the connection is gone.
    pub async fn try_send_frame(
        &mut self,
        frame: tokio_tungstenite::tungstenite::protocol::frame::Frame,
    ) -> Result<(), WsError> {
        self.ws.send(Message::Frame(frame)).await
    }

    /// Sends a text frame, returning the error if the connection is gone (for floods).
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.ws.send(Message::text(text)).await
    }

    async fn send(&mut self, message: Message, what: &str) {
        if let Err(e) = self.ws.send(message).await {
            panic!("cannot send {what}: {e}");
        }
    }

    /// Sends `frame` with a fresh numeric `"id"` and returns the reply with that id; frames
    /// that arrive in between are kept for the next [`recv`](Self::recv).
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        match frame.as_object_mut() {
            Some(object) => object.insert("id".into(), id.into()),
            None => panic!("a request is a JSON object, not {frame}"),
        };
        let sent = frame.to_string();
        self.send_json(frame).await;
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let reply = self
                .read_json(deadline, &format!("the reply to {sent}"))
                .await;
            if reply["id"] == id {
                return reply;
            }
            self.pending.push_back(reply);
        }
    }

    /// Sends `subscribe` for `channels` and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, channels: &[&str]) -> Value {
        let reply = self
            .request(serde_json::json!({"type": "subscribe", "channels": channels}))
            .await;
        assert_eq!(
            reply["type"], "subscribed",
            "subscribe {channels:?}: {reply}"
        );
        reply
    }

    /// Subscribes to `channels`, which must all be accepted.
    pub async fn subscribe_ok(&mut self, channels: &[&str]) {
        let reply = self.subscribe(channels).await;
        assert_eq!(
            reply["channels"],
            serde_json::json!(channels),
            "subscribe {channels:?}: {reply}"
        );
        assert_eq!(
            reply["rejected"],
            serde_json::json!([]),
            "subscribe {channels:?}: {reply}"
        );
    }

    /// The next text frame as JSON; panics on timeout ([`RECV_TIMEOUT`]), a binary frame or
    /// the end of the connection.
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        self.read_json(Instant::now() + RECV_TIMEOUT, "a frame")
            .await
    }

    /// The next frame of type `ty`, skipping (and dropping) others.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut skipped = Vec::new();
        while let Some(frame) = self.pending.pop_front() {
            if frame["type"] == ty {
                return frame;
            }
            skipped.push(brief(&frame));
        }
        loop {
            let what = format!("a {ty:?} frame (skipped so far: {skipped:?})");
            let frame = self.read_json(deadline, &what).await;
            if frame["type"] == ty {
                return frame;
            }
            skipped.push(brief(&frame));
        }
    }

    /// The next text frame, or how the connection ended; panics on timeout.
    pub async fn recv_or_close(&mut self) -> Result<Value, Closed> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            match self.next_incoming(deadline, "a frame or a close").await {
                Incoming::Json(frame) => return Ok(frame),
                Incoming::Binary(_) => continue,
                Incoming::Closed(closed) => return Err(closed),
            }
        }
    }

    /// Panics if any frame arrives within `duration`.
    pub async fn expect_no_frame(&mut self, duration: Duration) {
        if let Some(frame) = self.pending.front() {
            panic!("expected no frame, but {} was waiting", brief(frame));
        }
        let deadline = Instant::now() + duration;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(Some(Ok(Message::Text(text)))) => {
                    panic!("expected no frame for {duration:?}, got {}", cut(&text))
                }
                Ok(other) => panic!("expected no frame for {duration:?}, got {other:?}"),
            }
        }
    }

    /// Reads until a Close frame (skipping other frames), asserts its code and returns its
    /// reason. Waits up to [`CLOSE_TIMEOUT`].
    pub async fn expect_close(&mut self, code: u16) -> String {
        let (frames, closed) = self.drain_until_close_within(CLOSE_TIMEOUT).await;
        let seen: Vec<String> = frames.iter().rev().take(5).map(brief).collect();
        assert_eq!(
            closed.code,
            Some(code),
            "expected close {code}, the connection ended with {closed:?} \
             (after {} frames; last ones, newest first: {seen:?})",
            frames.len()
        );
        closed.reason
    }

    /// Reads every frame until the connection ends; returns the text frames and how it
    /// ended. Panics if it is still open after [`CLOSE_TIMEOUT`].
    pub async fn drain_until_close(&mut self) -> (Vec<Value>, Closed) {
        self.drain_until_close_within(CLOSE_TIMEOUT).await
    }

    async fn drain_until_close_within(&mut self, timeout: Duration) -> (Vec<Value>, Closed) {
        let mut frames: Vec<Value> = self.pending.drain(..).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let what = format!("a close (after {} frames)", frames.len());
            match self.next_incoming(deadline, &what).await {
                Incoming::Json(frame) => frames.push(frame),
                Incoming::Binary(_) => {}
                Incoming::Closed(closed) => return (frames, closed),
            }
        }
    }

    /// Closes the connection normally (1000), ignoring errors.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    async fn read_json(&mut self, deadline: Instant, what: &str) -> Value {
        match self.next_incoming(deadline, what).await {
            Incoming::Json(frame) => frame,
            Incoming::Binary(len) => {
                panic!("waiting for {what}, got a binary frame of {len} bytes")
            }
            Incoming::Closed(closed) => {
                panic!("waiting for {what}, the connection ended: {closed:?}")
            }
        }
    }

    async fn next_incoming(&mut self, deadline: Instant, what: &str) -> Incoming {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => panic!("timed out waiting for {what}"),
            };
            let message = match next {
                None => {
                    return Incoming::Closed(Closed {
                        code: None,
                        reason: "the stream ended".into(),
                    });
                }
                Some(Err(e)) => {
                    return Incoming::Closed(Closed {
                        code: None,
                        reason: format!("error without a close frame: {e}"),
                    });
                }
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => match serde_json::from_str(&text) {
                    Ok(frame) => return Incoming::Json(frame),
                    Err(e) => panic!(
                        "the server sent a text frame that is not JSON ({e}): {}",
                        cut(&text)
                    ),
                },
                Message::Binary(bytes) => return Incoming::Binary(bytes.len()),
                Message::Close(Some(frame)) => {
                    return Incoming::Closed(Closed {
                        code: Some(u16::from(frame.code)),
                        reason: frame.reason.to_string(),
                    });
                }
                Message::Close(None) => {
                    return Incoming::Closed(Closed {
                        code: None,
                        reason: "a close frame without a code".into(),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

/// A frame shortened for failure messages.
pub fn brief(frame: &Value) -> String {
    cut(&frame.to_string())
}

fn cut(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}
