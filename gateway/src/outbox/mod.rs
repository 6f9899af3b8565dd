//! A connection's outgoing side: frames go straight to the socket when it can take them, and
//! into a queue bounded in bytes when it cannot.
//!
//! Whoever fans an event out (the hub, on the bus reader's path) writes the frame to the
//! socket itself while the connection has nothing queued: one `write` per delivery, with no
//! task to wake and no queue to pass through. Only a socket whose kernel buffer is full gets a
//! backlog, which its session task drains, many frames per write, as the socket takes them.
//! Pushing never waits, so a slow socket never slows the fan-out; a push that would take the
//! backlog past its limit closes the connection as a slow consumer (4100) instead of dropping
//! an event silently: the client reconnects and recovers from history.
//!
//! Frames are whole WebSocket frames, encoded once per node. The session reads through the same
//! socket with tungstenite ([`SocketIo`]), whose own writes (pongs, pings, the close frame) take
//! the same path, so every frame reaches the socket whole and in order.

mod cork;
mod frame;

use self::cork::cork;
pub(crate) use self::cork::corked;
pub(crate) use self::frame::OutFrame;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::metrics::Metrics;
use crate::protocol::{CloseCode, Encoding};

/// Queued entries written with one vectored write at most.
const MAX_BATCH: usize = 64;

/// What a connection's socket must be: any byte stream (TCP, TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Why a frame was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// This push took the backlog over its limit; the connection is now closing with 4100.
    Overflow,
    /// The connection is closing or its socket failed.
    Closed,
}

/// Bytes waiting for the socket, with what to count once they are written.
struct Queued {
    bytes: Bytes,
    /// Whether this is a frame of ours, counted as sent; tungstenite's own bytes are not.
    counted: bool,
    published_at: Option<SystemTime>,
}

/// The socket and its backlog, behind one lock so that frames never interleave.
struct Socket {
    /// `None` once the connection ended.
    io: Option<Box<dyn Io>>,
    backlog: VecDeque<Queued>,
    backlog_bytes: usize,
    /// The first backlog entry was partly written: it must go out whole, even when the rest of
    /// the backlog is discarded.
    front_started: bool,
    /// Bytes were written that a TLS layer may still buffer.
    unflushed: bool,
    /// Frames are queued, not written, until the session releases the connection.
    held: bool,
    /// A write failed: the connection is dead.
    broken: bool,
    /// A frame of a [`corked`] round, written when the round ends (or by an earlier drain),
    /// ahead of the backlog. Not in the backlog, so that the common case, one frame to an
    /// idle socket, costs no allocation.
    corked: Option<Queued>,
}

impl Socket {
    /// Whether a frame may go straight to the socket.
    fn is_idle(&self) -> bool {
        !self.held && !self.unflushed && self.backlog.is_empty() && self.corked.is_none()
    }

    /// Writes a frame to an idle socket, and queues what the socket does not take now.
    /// `Ok(true)` when the session must be woken to finish the write.
    /// `sent` is told of a counted frame written whole.
    fn write_idle(
        &mut self,
        mut queued: Queued,
        metrics: &Metrics,
        sent: impl FnOnce(Option<SystemTime>),
    ) -> io::Result<bool> {
        // The session is not waiting on this socket's writability while it has no backlog,
        // so no waker is needed here; a backlog wakes the session.
        let mut cx = Context::from_waker(Waker::noop());
        let written = self.write_now(&mut cx, &queued.bytes)?;
        if written == queued.bytes.len() {
            if queued.counted {
                sent(queued.published_at);
            }
            return Ok(self.unflushed);
        }
        queued.bytes.advance(written);
        self.front_started = written > 0;
        self.enqueue(queued, metrics);
        Ok(true)
    }

    /// Writes as much of `bytes` as the socket takes now; `Ok(0)` when it takes nothing.
    fn write_now(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> io::Result<usize> {
        let Some(io) = self.io.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let poll = unbudgeted(|| Pin::new(&mut *io).poll_write(cx, bytes));
        let written = match poll {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => 0,
        };
        if written == bytes.len() {
            // A no-op on TCP; on TLS it pushes the encrypted record out.
            match unbudgeted(|| Pin::new(io).poll_flush(cx)) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => self.unflushed = true,
            }
        }
        Ok(written)
    }

    /// Writes as much of the backlog as the socket takes now, without a waker: whoever calls
    /// it must wake the session if a backlog is left.
    fn try_drain(&mut self, metrics: &Metrics) -> io::Result<()> {
        if self.held {
            return Ok(());
        }
        let mut cx = Context::from_waker(Waker::noop());
        match unbudgeted(|| self.poll_drain(&mut cx, metrics)) {
            Poll::Ready(Err(error)) => Err(error),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    /// Puts the corked frame, if any, at the head of the backlog, for a drain to write.
    fn backlog_corked(&mut self, metrics: &Metrics) {
        if let Some(queued) = self.corked.take() {
            let len = queued.bytes.len();
            self.backlog_bytes += len;
            metrics.outbox_bytes.add(gauge_bytes(len));
            self.backlog.push_front(queued);
        }
    }

    fn enqueue(&mut self, queued: Queued, metrics: &Metrics) {
        let len = queued.bytes.len();
        self.backlog_bytes += len;
        metrics.outbox_bytes.add(gauge_bytes(len));
        self.backlog.push_back(queued);
    }

    /// Writes the backlog, up to [`MAX_BATCH`] entries per write, until it is empty (`Ready`)
    /// or the socket is full (`Pending`, woken when it can take more).
    fn poll_drain(&mut self, cx: &mut Context<'_>, metrics: &Metrics) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // A corked frame goes ahead of what queued behind it; a drain before the round ends
        // writes it, and the round then has nothing left to do.
        self.backlog_corked(metrics);
        if self.held {
            return Poll::Ready(Ok(()));
        }
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while !self.backlog.is_empty() {
            let poll = match self.backlog.len() {
                // One frame goes with `write`: the kernel's `writev` costs more.
                1 => Pin::new(&mut *io).poll_write(cx, &self.backlog[0].bytes),
                _ => {
                    let slices: Vec<IoSlice<'_>> = self
                        .backlog
                        .iter()
                        .take(MAX_BATCH)
                        .map(|q| IoSlice::new(&q.bytes))
                        .collect();
                    Pin::new(&mut *io).poll_write_vectored(cx, &slices)
                }
            };
            let written = match ready!(poll) {
                Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                other => other,
            };
            let mut written = match written {
                Ok(n) => n,
                Err(error) => {
                    self.broken = true;
                    return Poll::Ready(Err(error));
                }
            };
            self.unflushed = true;
            let now = SystemTime::now();
            let mut sent = 0;
            while written > 0 {
                let Some(front) = self.backlog.front_mut() else {
                    break;
                };
                let take = written.min(front.bytes.len());
                front.bytes.advance(take);
                written -= take;
                self.backlog_bytes -= take;
                metrics.outbox_bytes.sub(gauge_bytes(take));
                if front.bytes.is_empty() {
                    if front.counted {
                        sent += 1;
                        observe_latency(metrics, front.published_at, now);
                    }
                    self.backlog.pop_front();
                    self.front_started = false;
                } else {
                    self.front_started = true;
                }
            }
            metrics.messages_sent.inc_by(sent);
        }
        // An idle connection should not keep the backlog's buffer.
        self.backlog = VecDeque::new();
        if self.unflushed {
            if let Err(error) = ready!(Pin::new(io).poll_flush(cx)) {
                self.broken = true;
                return Poll::Ready(Err(error));
            }
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Drops the backlog, but for a frame already partly written.
    fn discard_backlog(&mut self, metrics: &Metrics) {
        let keep = usize::from(self.front_started);
        while self.backlog.len() > keep {
            if let Some(queued) = self.backlog.pop_back() {
                self.backlog_bytes -= queued.bytes.len();
                metrics.outbox_bytes.sub(gauge_bytes(queued.bytes.len()));
            }
        }
    }
}

struct Shared {
    socket: Mutex<Socket>,
    metrics: Arc<Metrics>,
    /// Most bytes the backlog may hold.
    limit: usize,
    /// How this connection's frames are encoded.
    encoding: Encoding,
    /// 0 while open, otherwise the close code the session must send.
    close_code: AtomicU16,
    closing: Notify,
    /// Tells the session there is a backlog to drain.
    backlog: Notify,
}

impl Shared {
    fn socket(&self) -> MutexGuard<'_, Socket> {
        // Nothing panics while holding this lock; if something did, losing the connection is
        // the worst that can follow, so a poisoned lock is used as is.
        self.socket.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A backlog left when the connection ends leaves the total with it.
        let socket = self.socket.get_mut().unwrap_or_else(|p| p.into_inner());
        self.metrics
            .outbox_bytes
            .sub(gauge_bytes(socket.backlog_bytes));
    }
}

/// Polls `poll` outside tokio's cooperative budget. A fan-out writes to thousands of sockets
/// from one task in one go; once that task's budget is spent, tokio reports every socket as not
/// writable, which would send every frame past the first hundred through a backlog.
fn unbudgeted<T>(poll: impl FnOnce() -> Poll<T>) -> Poll<T> {
    let mut poll = Some(poll);
    let once = std::future::poll_fn(move |_| match poll.take() {
        Some(poll) => poll(),
        None => Poll::Pending,
    });
    let mut once = std::pin::pin!(tokio::task::coop::unconstrained(once));
    once.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

fn gauge_bytes(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

fn observe_latency(metrics: &Metrics, published_at: Option<SystemTime>, now: SystemTime) {
    if let Some(latency) = published_at.and_then(|at| now.duration_since(at).ok()) {
        metrics.delivery_latency.observe(latency.as_secs_f64());
    }
}

/// A connection's outgoing side; cheap to clone. It starts held: frames queue until the
/// session has written `connection_established` and calls [`Outbox::release`].
#[derive(Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// An outbox over `io` whose backlog holds at most `limit_bytes`, sending frames in `encoding`.
    pub(crate) fn new(
        io: impl Io,
        limit_bytes: usize,
        metrics: Arc<Metrics>,
        encoding: Encoding,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                socket: Mutex::new(Socket {
                    io: Some(Box::new(io)),
                    backlog: VecDeque::new(),
                    backlog_bytes: 0,
                    front_started: false,
                    unflushed: false,
                    held: true,
                    broken: false,
                    corked: None,
                }),
                metrics,
                limit: limit_bytes,
                encoding,
                close_code: AtomicU16::new(0),
                closing: Notify::new(),
                backlog: Notify::new(),
            }),
        }
    }

    /// Sends a frame: straight to the socket when it has no backlog, otherwise behind it.
    pub(crate) fn push(&self, frame: &OutFrame) -> Result<(), PushError> {
        self.send(frame, true)
    }

    /// Sends a frame; `counted` says whether it counts as a message sent.
    fn send(&self, frame: &OutFrame, counted: bool) -> Result<(), PushError> {
        let shared = &*self.shared;
        if shared.close_code.load(Ordering::Acquire) != 0 {
            return Err(PushError::Closed);
        }
        let metrics = &*shared.metrics;
        let mut socket = shared.socket();
        if socket.broken || socket.io.is_none() {
            return Err(PushError::Closed);
        }
        let wire = frame.wire(shared.encoding);
        let queued = Queued {
            bytes: wire.clone(),
            counted,
            published_at: frame.published_at,
        };
        if socket.is_idle() {
            // Corked, an idle socket's frame is written when the round ends; until then, later
            // frames queue behind it, and nobody needs waking.
            if cork(self) {
                socket.corked = Some(queued);
                return Ok(());
            }
            let wake = socket.write_idle(queued, metrics, |published_at| {
                metrics.messages_sent.inc();
                observe_latency(metrics, published_at, SystemTime::now());
            });
            let broken = wake.is_err();
            socket.broken |= broken;
            drop(socket);
            if wake.unwrap_or(true) {
                // To finish the write, or to end the connection on the failure.
                shared.backlog.notify_one();
            }
            return if broken {
                Err(PushError::Closed)
            } else {
                Ok(())
            };
        }
        let mut polled_without_waker = false;
        if socket.backlog_bytes + wire.len() > shared.limit {
            // The backlog may be a corked round's, not yet offered to the socket: only what
            // the socket will not take now makes a slow consumer.
            let drained = socket.try_drain(metrics);
            polled_without_waker = true;
            if drained.is_err() || socket.backlog_bytes + wire.len() > shared.limit {
                drop(socket);
                return if drained.is_ok() && self.close(CloseCode::SlowConsumer) {
                    Err(PushError::Overflow)
                } else {
                    shared.backlog.notify_one();
                    Err(PushError::Closed)
                };
            }
        }
        // Woken for a backlog that starts now, or one a drain above left (it polled the socket
        // without the session's waker); a corked frame's round wakes it when it ends.
        let wake = socket.corked.is_none()
            && !socket.held
            && (socket.backlog.is_empty() || polled_without_waker);
        socket.enqueue(queued, metrics);
        drop(socket);
        if wake {
            shared.backlog.notify_one();
        }
        Ok(())
    }

    /// Sends a heartbeat ping frame (its answer is any frame, a pong included).
    pub(crate) fn ping(&self) {
        static PING: OutFrame = OutFrame::control(&[0x89, 0x00]);
        let _ = self.send(&PING, false);
    }

    /// Puts a frame ahead of everything queued while the connection is held (the session's
    /// first frame, ahead of events that came in meanwhile).
    pub(crate) fn push_first(&self, frame: &OutFrame) {
        let mut socket = self.shared.socket();
        debug_assert!(socket.held && !socket.front_started);
        let wire = frame.wire(self.shared.encoding);
        let len = wire.len();
        socket.backlog_bytes += len;
        self.shared.metrics.outbox_bytes.add(gauge_bytes(len));
        socket.backlog.push_front(Queued {
            bytes: wire.clone(),
            counted: false,
            published_at: None,
        });
    }

    /// Holds frames in the backlog, so that a run of them goes out in few writes.
    pub(crate) fn hold(&self) {
        self.shared.socket().held = true;
    }

    /// Ends [`Outbox::hold`]: the session writes what was queued.
    pub(crate) fn release(&self) {
        let mut socket = self.shared.socket();
        socket.held = false;
        let wake = !socket.backlog.is_empty() || socket.broken;
        drop(socket);
        if wake {
            self.shared.backlog.notify_one();
        }
    }

    /// Asks the session to close the connection with `code`. Returns whether this call was
    /// the one that started the close (the first code wins).
    pub(crate) fn close(&self, code: CloseCode) -> bool {
        let started = self
            .shared
            .close_code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if started {
            self.shared.closing.notify_one();
        }
        started
    }

    /// Waits until a close was asked for, and returns its code.
    pub(crate) async fn closing(&self) -> CloseCode {
        loop {
            if let Some(code) = self.close_code() {
                return code;
            }
            self.shared.closing.notified().await;
        }
    }

    /// The close code asked for, if any.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.shared.close_code.load(Ordering::Acquire))
    }

    /// Bytes queued and not yet handed to the socket.
    pub(crate) fn queued_bytes(&self) -> usize {
        let socket = self.shared.socket();
        socket.backlog_bytes + socket.corked.as_ref().map_or(0, |q| q.bytes.len())
    }

    /// Resolves when there may be a backlog to drain (or a failed write to notice).
    pub(crate) fn backlog_signal(&self) -> Notified<'_> {
        self.shared.backlog.notified()
    }

    /// Writes the backlog until it is empty, or the socket is full (`Pending`).
    pub(crate) fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.socket().poll_drain(cx, &self.shared.metrics)
    }

    /// Drops the backlog (a slow consumer's, before its close frame), but for a frame already
    /// partly written.
    pub(crate) fn discard_backlog(&self) {
        self.shared.socket().discard_backlog(&self.shared.metrics);
    }

    /// Ends the connection: closes the socket and drops the backlog.
    pub(crate) fn shut(&self) {
        let mut socket = self.shared.socket();
        socket.io = None;
        socket.broken = true;
        socket.front_started = false;
        socket.discard_backlog(&self.shared.metrics);
    }

    /// The socket as a byte stream for tungstenite, whose writes take the outbox's path.
    pub(crate) fn io(&self) -> SocketIo {
        SocketIo(Arc::clone(&self.shared))
    }
}

/// The connection's socket as tungstenite sees it: reads go to the socket; writes are
/// accepted whole at once (straight to the socket, or behind the backlog), so that a frame of
/// tungstenite's never interleaves with ours and flushing never waits on a slow client.
pub(crate) struct SocketIo(Arc<Shared>);

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.0.socket().io.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &*self.0;
        let mut socket = shared.socket();
        if socket.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut written = 0;
        if socket.is_idle() {
            match socket.write_now(cx, buf) {
                Ok(n) => written = n,
                Err(error) => {
                    socket.broken = true;
                    return Poll::Ready(Err(error));
                }
            }
        }
        if written < buf.len() {
            socket.front_started |= written > 0;
            let wake = socket.backlog.is_empty() && !socket.held;
            socket.enqueue(
                Queued {
                    bytes: Bytes::copy_from_slice(&buf[written..]),
                    counted: false,
                    published_at: None,
                },
                &shared.metrics,
            );
            drop(socket);
            if wake {
                shared.backlog.notify_one();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What the socket did not take is the session's backlog to drain.
        Poll::Ready(Ok(()))
    }

    /// Half-closes the socket (a close frame's last step); call it once the backlog is written.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.socket().io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
