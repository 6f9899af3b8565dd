//! The HTTP transports for networks where WebSocket cannot connect: `GET /sse` ([`sse`]) and
//! `GET /poll` ([`poll`]).
//!
//! Each request is served by an ordinary [`session`] over an in-memory socket: the transport
//! is that session's client, and turns its frames into SSE messages or a poll's answer. So
//! tokens, ACLs, limits, recovery, presence, drain and metrics are exactly the WebSocket's.
//! The client's position travels in a [`Cursor`], so no replica keeps state between requests.

mod cursor;
mod poll;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use publisher::wire::{ChannelName, Position};
use serde_json::Value;
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocketConfig};

pub(crate) use self::cursor::Cursor;
pub(crate) use self::poll::poll;
pub(crate) use self::sse::sse;
use crate::admission::{self, refuse};
use crate::auth::{Claims, TokenRefusal};
use crate::node::Node;
use crate::protocol::{CloseCode, Encoding, HttpError, http_error};
use crate::session;
use crate::view::Transport;

/// Bytes the in-memory socket between a transport and its session buffers: past them the
/// session's outbox fills, and a client that does not read is closed as a slow consumer.
const LOCAL_SOCKET_BYTES: usize = 64 * 1024;

/// Bytes a transport's client of its session reads at once.
const LOCAL_READ_BUFFER: usize = 4096;

/// A fallback request, admitted: who, which channels, from where.
pub(crate) struct Request {
    claims: Claims,
    channels: Vec<String>,
    cursor: Option<Cursor>,
}

impl Request {
    /// Admits a request from its query (`token`, `channels=a,b`, `channel=` repeated,
    /// `cursor`) and headers (`Authorization`, `Origin`, and `Last-Event-ID` when
    /// `last_event_id` is set).
    pub(crate) async fn admit(
        node: &Node,
        query: &[(String, String)],
        headers: &HeaderMap,
        last_event_id: bool,
    ) -> Result<Self, HttpError> {
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(claims) = admission::admit(node, headers, param("token")).await? else {
            return Err(refuse(
                node,
                StatusCode::UNAUTHORIZED,
                TokenRefusal::Missing.label(),
                "a token is required: ?token= or Authorization: Bearer",
            ));
        };
        let mut channels: Vec<String> = Vec::new();
        for (key, value) in query {
            let names: Vec<&str> = match key.as_str() {
                "channels" => value.split(',').filter(|c| !c.is_empty()).collect(),
                "channel" => vec![value.as_str()],
                _ => continue,
            };
            for name in names {
                if !channels.iter().any(|c| c == name) {
                    channels.push(name.to_owned());
                }
            }
        }
        let header_cursor = headers
            .get("last-event-id")
            .filter(|_| last_event_id)
            .and_then(|v| v.to_str().ok());
        let cursor = match param("cursor").or(header_cursor) {
            None | Some("") => None,
            Some(text) => Some(Cursor::decode(text).map_err(|error| {
                HttpError::new(StatusCode::BAD_REQUEST, "bad_request", error.to_string())
            })?),
        };
        Ok(Self {
            claims,
            channels,
            cursor,
        })
    }

    /// The user's personal channel.
    fn personal(&self) -> String {
        ChannelName::personal(&self.claims.user_id).to_string()
    }
}

/// What a transport's session said.
enum Incoming {
    /// A frame, as JSON text.
    Frame(String),
    /// A heartbeat.
    Ping,
    /// The session closed with this code and reason.
    Closed(u16, String),
}

/// The client end of a session over an in-memory socket.
struct LocalClient {
    socket: WebSocketStream<DuplexStream>,
}

impl LocalClient {
    /// Starts a session for `request`; the personal channel recovers from the cursor.
    async fn open(node: Arc<Node>, request: &Request, transport: Transport) -> Self {
        let (server, client) = tokio::io::duplex(LOCAL_SOCKET_BYTES);
        let since = request
            .cursor
            .as_ref()
            .and_then(|c| c.get(&request.personal()))
            .cloned();
        let claims = request.claims.clone();
        let opening = session::Opening {
            claims: Some(claims),
            since,
            transport,
            encoding: Encoding::default(),
        };
        tokio::spawn(session::run(node, server, opening));
        // The session limits what it sends; its client takes whatever it is given. A small
        // read buffer: tungstenite keeps (and zeroes before each read) the whole buffer, and
        // the default 128 KiB made an idle SSE stream cost 36 WebSockets.
        let config = WebSocketConfig::default()
            .read_buffer_size(LOCAL_READ_BUFFER)
            .max_message_size(None)
            .max_frame_size(None);
        let socket = WebSocketStream::from_raw_socket(client, Role::Client, Some(config)).await;
        Self { socket }
    }

    /// Subscribes the request's channels, recovering each from the cursor.
    async fn subscribe(&mut self, request: &Request) {
        if request.channels.is_empty() {
            return;
        }
        let since: serde_json::Map<String, Value> = request
            .cursor
            .iter()
            .flat_map(|c| c.positions())
            .filter(|(channel, _)| request.channels.contains(channel))
            .filter_map(|(channel, p)| Some((channel.clone(), serde_json::to_value(p).ok()?)))
            .collect();
        let frame = serde_json::json!({
            "type": "subscribe",
            "channels": request.channels,
            "since": since,
        });
        let _ = self.socket.send(Message::text(frame.to_string())).await;
    }

    /// The session's next frame, heartbeat or close.
    async fn next(&mut self) -> Incoming {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return Incoming::Frame(text.as_str().to_owned()),
                Some(Ok(Message::Ping(_))) => return Incoming::Ping,
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((CloseCode::Normal.code(), String::new()));
                    return Incoming::Closed(code, reason);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    return Incoming::Closed(CloseCode::Internal.code(), "session lost".into());
                }
            }
        }
    }

    /// Ends the session normally, in the background.
    fn close(mut self) {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.socket.close(None)).await;
        });
    }
}

/// Follows the positions of a transport's frames in its cursor.
struct Tracker {
    cursor: Cursor,
    /// The personal channel, whose position comes in `connection_established`.
    personal: String,
    /// Whether the session already sent a `disconnect` frame.
    told_disconnect: bool,
}

impl Tracker {
    /// Tracks `request`'s channels, starting from its cursor.
    fn new(request: &Request) -> Self {
        let personal = request.personal();
        let mut cursor = request.cursor.clone().unwrap_or_default();
        let mut kept: Vec<&str> = request.channels.iter().map(String::as_str).collect();
        kept.push(&personal);
        cursor.retain(&kept);
        Self {
            cursor,
            personal,
            told_disconnect: false,
        }
    }

    /// Applies one frame; returns its `type`.
    ///
    /// A recovered channel keeps the cursor's position until its replayed events pass (they
    /// follow `subscribed`); any other channel starts from the position the server reports.
    fn apply(&mut self, frame: &Value) -> String {
        let kind = frame["type"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "connection_established" => {
                if frame["recovered"] != Value::Bool(true)
                    && let Some(position) = position(&frame["position"])
                {
                    self.cursor.set(&self.personal, position);
                }
            }
            "subscribed" => {
                let positions = frame["positions"].as_object().into_iter().flatten();
                for (channel, value) in positions {
                    if frame["recovered"][channel] != Value::Bool(true)
                        && let Some(position) = position(value)
                    {
                        self.cursor.set(channel, position);
                    }
                }
            }
            "reload" => {
                if let (Some(channel), Some(position)) =
                    (frame["channel"].as_str(), position(&frame["position"]))
                {
                    self.cursor.set(channel, position);
                }
            }
            "disconnect" => self.told_disconnect = true,
            _ => {
                if let (Some(channel), Some(position)) =
                    (frame["channel"].as_str(), position(frame))
                {
                    self.cursor.set(channel, position);
                }
            }
        }
        kind
    }

    /// The frame that tells the client why its transport ended, unless the session said so.
    fn disconnect(&mut self, code: u16, reason: &str) -> Option<String> {
        if std::mem::replace(&mut self.told_disconnect, true) {
            return None;
        }
        let frame = serde_json::json!({"type": "disconnect", "code": code, "reason": reason});
        Some(frame.to_string())
    }
}

/// The `offset` and `epoch` of a frame or position object.
fn position(value: &Value) -> Option<Position> {
    Some(Position {
        offset: value["offset"].as_u64()?,
        epoch: value["epoch"].as_str()?.to_owned(),
    })
}

/// The HTTP refusal for a session that closed before it was established.
fn refused_session(code: u16, reason: &str) -> HttpError {
    let (status, code) = match CloseCode::from_code(code) {
        Some(CloseCode::TooManyConnections) => {
            (StatusCode::TOO_MANY_REQUESTS, "too_many_connections")
        }
        Some(CloseCode::TokenInvalid | CloseCode::TokenExpired) => {
            (StatusCode::UNAUTHORIZED, "unauthorized")
        }
        Some(CloseCode::ShuttingDown) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    HttpError::new(status, code, format!("the session was refused: {reason}"))
}

/// Adds the CORS headers when the request comes from an allowed browser origin.
fn with_cors(node: &Node, headers: &HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN)
        && node.origin_allowed(origin.to_str().unwrap_or_default())
    {
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// Answers a CORS preflight for `/sse` and `/poll`.
pub(crate) async fn preflight(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    headers: HeaderMap,
) -> Response {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or_default();
    if !node.origin_allowed(origin) {
        return http_error(StatusCode::FORBIDDEN, "origin", "origin not allowed");
    }
    let response = (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, OPTIONS"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Last-Event-ID, Cache-Control",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response();
    with_cors(&node, &headers, response)
}
