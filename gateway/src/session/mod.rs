//! One client connection: authentication by first frame, the frame loop, limits, heartbeats,
//! token expiry, and draining the outbox's backlog.
//!
//! A session is one task per socket: it reads client frames, and waits on the heartbeat, the
//! token's expiry, a close request and the outbox's backlog at once. Frames usually reach the
//! socket without it: the fan-out writes them directly (see [`crate::outbox`]); the session
//! only writes what a full socket could not take, many frames per write. [`frames`] handles
//! each client frame.

mod frames;
mod inflate;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, SinkExt, StreamExt};
use publisher::wire::{ChannelName, Position};
use serde_json::value::RawValue;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use self::inflate::Inflating;
use crate::auth::Claims;
use crate::hub::{ClientId, Connection, HubError, Recovery};
use crate::metrics::{ClientClose, Refusal};
use crate::node::Node;
use crate::outbox::{Io, OutFrame, Outbox, SocketIo};
use crate::protocol::{
    ClientError, ClientFrame, CloseCode, Encoding, ErrorCode, FrameError, ServerFrame, msgpack,
    parse_client_frame,
};
use crate::rate::{Strikes, TokenBucket};
use crate::view::Transport;

/// How long a connection opened without a token has to send its `auth` frame.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes tungstenite reads from the socket at once: client frames are small, and an idle
/// connection should cost little.
const READ_BUFFER: usize = 128;
/// How long a close frame may take to reach a slow client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Refused frames in one flood before 4101.
const RATE_STRIKES: u32 = 50;
/// Bad frames within [`BAD_FRAME_WINDOW`] before 4003.
const BAD_FRAME_STRIKES: u32 = 10;
const BAD_FRAME_WINDOW: Duration = Duration::from_secs(10);

/// How a connection ended, for metrics.
enum Ending {
    /// The server closed it with a code of the contract.
    Closed(CloseCode),
    /// The client closed it, or the socket failed.
    ByClient(ClientClose),
}

/// A client's WebSocket, read by tungstenite over the outbox's socket, its compressed messages
/// inflated on the way.
type Socket = WebSocketStream<Inflating<SocketIo>>;

/// How a connection came to be: its token (`None` when it must come in an `auth` frame), where
/// the personal channel's history left off (when the client recovers it), its transport and
/// the encoding of its frames.
pub(crate) struct Opening {
    /// The token's claims, when the request carried one.
    pub(crate) claims: Option<Claims>,
    /// The personal channel's recovery position.
    pub(crate) since: Option<Position>,
    /// WebSocket, SSE or long-poll.
    pub(crate) transport: Transport,
    /// JSON or MessagePack, compressed or not.
    pub(crate) encoding: Encoding,
}

/// Serves an upgraded connection.
pub(crate) async fn run(node: Arc<Node>, io: impl Io, opening: Opening) {
    // Setting up and tearing down await large futures (Redis, history) that a long-lived idle
    // connection should not carry: boxed, they live on the heap only while they run.
    let Some((mut session, slot)) = Box::pin(open(node, io, opening)).await else {
        return;
    };
    let ending = session.serve().await;
    Box::pin(finish(session, slot, ending)).await;
}

/// Authenticates, registers the connection and sends `connection_established`; `None` when
/// the connection was refused or lost. Returns the session and whether it took a user slot.
async fn open(node: Arc<Node>, io: impl Io, opening: Opening) -> Option<(Session, bool)> {
    let Opening {
        claims,
        since,
        transport,
        encoding,
    } = opening;
    let (outbox, mut socket) = websocket(&node, io, encoding).await;
    let (claims, since) = match claims {
        Some(claims) => (claims, since),
        None => match first_frame_auth(&node, &mut socket).await {
            Ok(authenticated) => authenticated,
            Err(code) => {
                refuse(&node, &mut socket, &outbox, code).await;
                return None;
            }
        },
    };
    let client_id: ClientId = uuid::Uuid::new_v4().to_string().into();
    let connection = Connection {
        client_id: Arc::clone(&client_id),
        user_id: claims.user_id.clone(),
        client_type: claims.client_type.clone(),
        outbox: outbox.clone(),
        transport,
    };
    let slot = match take_user_slot(&node, &claims).await {
        Ok(slot) => slot,
        Err(code) => {
            refuse(&node, &mut socket, &outbox, code).await;
            return None;
        }
    };
    let personal = ChannelName::personal(&claims.user_id);
    let history = node.hub.keeps_history(&personal);
    if let Err(error) = node.hub.connect(connection, history).await {
        tracing::warn!(%error, "could not register connection");
        node.hub.disconnect(&client_id);
        release_user_slot(&node, &claims, slot).await;
        refuse(&node, &mut socket, &outbox, CloseCode::Internal).await;
        return None;
    }
    let recovery = if history {
        node.hub
            .recover(&client_id, &personal, since.as_ref())
            .await
    } else {
        Recovery::default()
    };
    let established = ServerFrame::ConnectionEstablished {
        client_id: &client_id,
        user_id: claims.user_id.as_str(),
        node_id: &node.config.node_id,
        heartbeat_interval_ms: millis(node.config.heartbeat_interval),
        timestamp: publisher::wire::timestamp_now(),
        position: recovery.top.as_ref(),
        recovered: recovery.recovered,
    };
    // Ahead of the events that may already wait in the held outbox.
    outbox.push_first(&OutFrame::reply(&established.encode(None)));
    outbox.release();
    if history {
        node.hub.finish_replay(&client_id, &personal, &recovery);
    }
    if let Some(entry) = node.hub.presence_entry(&client_id) {
        node.cluster.joined(&personal, &entry).await;
    }
    node.metrics.connections_accepted.inc();
    tracing::debug!(client_id = %client_id, user_id = %claims.user_id, "connected");
    Some((Session::new(node, client_id, claims, socket, outbox), slot))
}

/// The connection's outbox and the WebSocket read over it, with the node's frame limits.
async fn websocket(node: &Node, io: impl Io, encoding: Encoding) -> (Outbox, Socket) {
    let limits = &node.config.limits;
    let metrics = Arc::clone(&node.metrics);
    let outbox = Outbox::new(io, limits.outbox_max_bytes, metrics, encoding);
    let deflate = encoding.compress_from.is_some();
    let io = Inflating::new(outbox.io(), deflate, limits.max_message_bytes);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes));
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    (outbox, socket)
}

/// Unregisters a session that ended, and counts how.
async fn finish(session: Session, slot: bool, ending: Ending) {
    let node = &session.node;
    let client_id = &session.client_id;
    let entry = node.hub.presence_entry(client_id);
    let channels = node.hub.disconnect(client_id);
    if let Some(entry) = entry {
        for channel in &channels {
            node.cluster.left(channel, &entry).await;
        }
    }
    session.outbox.shut();
    release_user_slot(node, &session.claims, slot).await;
    let label = match ending {
        Ending::Closed(code) => code.label(),
        Ending::ByClient(close) => {
            node.metrics.disconnected(close.label());
            close.label()
        }
    };
    tracing::debug!(client_id = %client_id, code = label, "disconnected");
}

/// Closes a connection that never became a session, counting it.
async fn refuse(node: &Node, socket: &mut Socket, outbox: &Outbox, code: CloseCode) {
    node.metrics.disconnected(code.label());
    // A first frame that failed to parse may have left the stream mid-frame.
    let readable = code != CloseCode::TokenInvalid;
    close_socket(socket, outbox, code, CLOSE_TIMEOUT, readable).await;
    outbox.shut();
}

/// Takes one of the user's connection slots where a cluster-wide cap is set; `Ok(false)` when
/// no slot was taken (no cap, or the registry could not be asked: availability wins then).
async fn take_user_slot(node: &Node, claims: &Claims) -> Result<bool, CloseCode> {
    let cap = node.config.max_connections_per_user;
    if cap == 0 {
        return Ok(false);
    }
    let user = claims.user_id.as_str();
    match node
        .cluster
        .registry()
        .user_slots
        .acquire(&node.config.node_id, user, cap)
        .await
    {
        Ok(true) => Ok(true),
        Ok(false) => {
            node.metrics.refused(Refusal::UserLimit.label());
            tracing::debug!(user, cap, "too many connections for this user");
            Err(CloseCode::TooManyConnections)
        }
        Err(error) => {
            tracing::warn!(%error, "per-user connection cap not checked");
            Ok(false)
        }
    }
}

async fn release_user_slot(node: &Node, claims: &Claims, taken: bool) {
    if !taken {
        return;
    }
    let user_slots = &node.cluster.registry().user_slots;
    let released = user_slots
        .release(&node.config.node_id, claims.user_id.as_str())
        .await;
    if let Err(error) = released {
        tracing::warn!(%error, "per-user connection slot not released");
    }
}

/// Waits for `{"type":"auth","token":…}` as the first frame.
async fn first_frame_auth(
    node: &Node,
    socket: &mut Socket,
) -> Result<(Claims, Option<Position>), CloseCode> {
    let reject = |reason: &'static str| {
        node.metrics.refused(reason);
        CloseCode::TokenInvalid
    };
    let message = match timeout(AUTH_TIMEOUT, socket.next()).await {
        Err(_) => return Err(reject(Refusal::AuthTimeout.label())),
        Ok(None | Some(Err(_))) => return Err(reject(Refusal::AuthFrame.label())),
        Ok(Some(Ok(message))) => message,
    };
    let text = match message {
        Message::Text(text) => text.as_str().to_owned(),
        Message::Binary(bytes) => match msgpack::to_json(&bytes) {
            Ok(text) => text,
            Err(_) => return Err(reject(Refusal::AuthFrame.label())),
        },
        _ => return Err(reject(Refusal::AuthFrame.label())),
    };
    let Ok((_, ClientFrame::Auth { token, since })) = parse_client_frame(&text) else {
        return Err(reject(Refusal::AuthFrame.label()));
    };
    let claims = node.auth.verify_refreshing(&token).await.map_err(|error| {
        tracing::debug!(%error, "auth frame refused");
        reject(error.reason())
    })?;
    Ok((claims, since))
}

struct Session {
    node: Arc<Node>,
    client_id: ClientId,
    claims: Claims,
    socket: Socket,
    outbox: Outbox,
    rate: TokenBucket,
    rate_strikes: Strikes,
    bad_frames: Strikes,
    last_seen: Instant,
    /// Reading the socket failed: it is no longer parsed as WebSocket frames.
    read_failed: bool,
}

impl Session {
    fn new(
        node: Arc<Node>,
        client_id: ClientId,
        claims: Claims,
        socket: Socket,
        outbox: Outbox,
    ) -> Self {
        let limits = &node.config.limits;
        Self {
            rate: TokenBucket::new(limits.rate_limit_per_second, limits.rate_limit_burst),
            rate_strikes: Strikes::new(RATE_STRIKES, None),
            bad_frames: Strikes::new(BAD_FRAME_STRIKES, Some(BAD_FRAME_WINDOW)),
            node,
            client_id,
            claims,
            socket,
            outbox,
            last_seen: Instant::now(),
            read_failed: false,
        }
    }

    async fn serve(&mut self) -> Ending {
        let heartbeat = self.node.config.heartbeat_interval;
        let mut next_ping = Instant::now() + heartbeat;
        let outbox = self.outbox.clone();
        // Built once and polled in place: re-creating a timer or a notification on every
        // frame would cost a timer-wheel update each time. One timer serves both the heartbeat
        // and the token's expiry, so an idle connection holds one.
        let closing = outbox.closing();
        tokio::pin!(closing);
        let mut expires_at = self.claims.expires_at;
        let mut expiry = self.expiry_deadline();
        let timer = sleep_until(next_ping.min(expiry));
        tokio::pin!(timer);
        let ending = loop {
            if self.claims.expires_at != expires_at {
                // A refresh replaced the token.
                expires_at = self.claims.expires_at;
                expiry = self.expiry_deadline();
                timer.as_mut().reset(next_ping.min(expiry));
            }
            tokio::select! {
                biased;
                code = &mut closing => break Ending::Closed(code),
                () = outbox.backlog_signal() => {
                    if let Err(ending) = Box::pin(self.drain(closing.as_mut())).await {
                        break ending;
                    }
                }
                message = self.socket.next() => {
                    self.last_seen = Instant::now();
                    match message {
                        Some(Ok(message)) => {
                            if let Some(ending) = Box::pin(self.on_message(message)).await {
                                break ending;
                            }
                        }
                        Some(Err(error)) => {
                            self.read_failed = true;
                            break ending_for_read_error(&error);
                        }
                        None => break Ending::ByClient(ClientClose::Abnormal),
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= expiry {
                        break Ending::Closed(CloseCode::TokenExpired);
                    }
                    if now >= next_ping {
                        if self.last_seen.elapsed() > self.node.config.idle_timeout {
                            break Ending::Closed(CloseCode::GoingAway);
                        }
                        // A client with a backlog is behind already; its reads prove it alive.
                        if self.outbox.queued_bytes() == 0 {
                            self.outbox.ping();
                        }
                        next_ping = now + heartbeat;
                    }
                    timer.as_mut().reset(next_ping.min(expiry));
                }
            }
        };
        if let Ending::Closed(code) = ending {
            self.close(code).await;
        }
        ending
    }

    /// Closes the connection with `code`, after what was queued before it.
    async fn close(&mut self, code: CloseCode) {
        self.outbox.close(code);
        // Counted when decided: the close handshake may take a while.
        self.node.metrics.disconnected(code.label());
        let send_timeout = if code == CloseCode::SlowConsumer {
            // A slow consumer's backlog is what we are closing it for, and its socket is
            // full: the close frame goes out only once it reads again.
            self.outbox.discard_backlog();
            self.node.config.idle_timeout
        } else {
            // What was queued before the close (a `disconnect` notice, a last error reply)
            // still goes out ahead of the close frame.
            CLOSE_TIMEOUT
        };
        Box::pin(close_socket(
            &mut self.socket,
            &self.outbox,
            code,
            send_timeout,
            !self.read_failed,
        ))
        .await;
    }

    fn expiry_deadline(&self) -> Instant {
        let leeway = self.node.auth.leeway();
        let left = self
            .claims
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Instant::now() + left + leeway
    }

    /// Writes the outbox's backlog. Usually the socket takes it all at once; otherwise the
    /// write races `closing` (a slow consumer is closed while its socket is full) and the idle
    /// timeout, and only then is a timer armed.
    async fn drain<F: Future<Output = CloseCode>>(
        &mut self,
        closing: Pin<&mut F>,
    ) -> Result<(), Ending> {
        let outbox = &self.outbox;
        let drained = poll_fn(|cx| outbox.poll_drain(cx));
        tokio::pin!(drained);
        let result = match (&mut drained).now_or_never() {
            Some(result) => result,
            None => tokio::select! {
                biased;
                code = closing => return Err(Ending::Closed(code)),
                result = &mut drained => result,
                _ = tokio::time::sleep(self.node.config.idle_timeout) => {
                    return Err(Ending::ByClient(ClientClose::Abnormal));
                }
            },
        };
        result.map_err(|_| Ending::ByClient(ClientClose::Abnormal))
    }

    async fn on_message(&mut self, message: Message) -> Option<Ending> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(bytes) => match msgpack::to_json(&bytes) {
                Ok(text) => Utf8Bytes::from(text),
                Err(error) => {
                    self.count_frame("binary");
                    if !self.admit_rate() {
                        return self.rate_limited();
                    }
                    let error = FrameError {
                        id: None,
                        code: ErrorCode::BadRequest,
                        message: format!(
                            "a binary frame must be a MessagePack map of a frame's fields: {error}"
                        ),
                    };
                    return self.bad_frame(error);
                }
            },
            // Pongs only prove liveness; tungstenite answers pings itself on the next flush.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                return self
                    .socket
                    .flush()
                    .await
                    .err()
                    .map(|_| Ending::ByClient(ClientClose::Abnormal));
            }
            Message::Close(frame) => {
                let close = match frame.map(|f| u16::from(f.code)) {
                    Some(1000) | None => ClientClose::Normal,
                    Some(1001) => ClientClose::GoingAway,
                    Some(_) => ClientClose::Other,
                };
                return Some(Ending::ByClient(close));
            }
        };
        if !self.admit_rate() {
            self.count_frame("rate_limited");
            return self.rate_limited();
        }
        match parse_client_frame(&text) {
            Ok((id, frame)) => {
                self.count_frame((&frame).into());
                self.handle(id, frame).await;
                None
            }
            Err(error) => {
                self.count_frame("invalid");
                self.bad_frame(error)
            }
        }
    }

    fn count_frame(&self, label: &str) {
        self.node
            .metrics
            .client_frames_received
            .with_label_values(&[label])
            .inc();
    }

    fn admit_rate(&mut self) -> bool {
        if self.rate.take() {
            if self.rate.is_full() {
                self.rate_strikes.reset();
            }
            true
        } else {
            false
        }
    }

    fn rate_limited(&mut self) -> Option<Ending> {
        let strike = self.rate_strikes.strike();
        if strike.first {
            self.reply_error(None, ErrorCode::RateLimited, "too many frames: slow down");
        }
        if strike.out {
            tracing::info!(client_id = %self.client_id, "rate limit exceeded: closing");
            return Some(Ending::Closed(CloseCode::RateLimited));
        }
        None
    }

    fn bad_frame(&mut self, error: FrameError) -> Option<Ending> {
        self.reply_error(error.id.as_deref(), error.code, &error.message);
        if self.bad_frames.strike().out {
            tracing::info!(client_id = %self.client_id, "repeated bad frames: closing");
            return Some(Ending::Closed(CloseCode::ProtocolAbuse));
        }
        None
    }

    fn reply(&self, id: Option<&RawValue>, frame: ServerFrame<'_>) {
        let _ = self.outbox.push(&OutFrame::reply(&frame.encode(id)));
    }

    fn reply_error(&self, id: Option<&RawValue>, code: ErrorCode, message: &str) {
        self.reply(id, ServerFrame::Error { code, message });
    }

    fn reply_hub_error(&self, id: Option<&RawValue>, error: &HubError) {
        let ClientError { code, message } = ClientError::from(error);
        self.reply_error(id, code, &message);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn ending_for_read_error(error: &tungstenite::Error) -> Ending {
    use tungstenite::error::{CapacityError, Error};
    match error {
        Error::Capacity(CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders) => {
            Ending::Closed(CloseCode::MessageTooBig)
        }
        _ => Ending::ByClient(ClientClose::Abnormal),
    }
}

/// Sends a close frame behind what is queued (giving up on the queue after `send_timeout`),
/// then waits briefly for the client's reply so the close frame is not lost to a TCP reset
/// caused by unread input. `readable` is false once reading the socket failed: the stream may
/// be in the middle of an oversize frame, so its bytes are no longer parsed, only dropped.
async fn close_socket(
    socket: &mut Socket,
    outbox: &Outbox,
    code: CloseCode,
    send_timeout: Duration,
    readable: bool,
) {
    let frame = CloseFrame {
        code: code.code().into(),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    outbox.release();
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let sent = timeout(send_timeout, poll_fn(|cx| outbox.poll_drain(cx))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = timeout(CLOSE_TIMEOUT, async {
        if readable {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break,
                }
            }
        }
        linger(socket.get_mut().get_mut()).await;
    })
    .await;
}

/// Half-closes the socket and reads what the client still sends (the rest of an oversize
/// message, then its close reply) into a small scratch buffer until it closes its side.
async fn linger(io: &mut SocketIo) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    if io.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    while matches!(io.read(&mut scratch).await, Ok(read) if read > 0) {}
}

#[cfg(test)]
mod tests;
