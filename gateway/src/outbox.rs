//! A connection's outgoing queue, bounded in bytes.
//!
//! Pushing never blocks, so whoever fans an event out (the hub, on the bus reader's path) is
//! never slowed by a slow socket. A push that would take the queue past its byte limit closes
//! the connection as a slow consumer (4100) instead of dropping an event silently: the client
//! reconnects and recovers from history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use prometheus::IntGauge;
use tokio::sync::{Notify, mpsc};

use crate::protocol::CloseCode;

/// A text frame waiting to be written; event frames share one encoding across recipients.
#[derive(Debug, Clone)]
pub struct OutFrame {
    /// The encoded JSON text.
    pub bytes: Utf8Bytes,
    /// When the event was published, for delivery latency; `None` for replies.
    pub published_at: Option<SystemTime>,
}

impl OutFrame {
    /// A reply or control frame.
    pub fn reply(bytes: Utf8Bytes) -> Self {
        Self {
            bytes,
            published_at: None,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// This push took the queue over its limit; the connection is now closing with 4100.
    Overflow,
    /// The connection is already closing.
    Closed,
}

struct Shared {
    queued_bytes: AtomicUsize,
    /// Every outbox's bytes together, for metrics.
    total_bytes: IntGauge,
    limit: usize,
    /// 0 while open, otherwise the close code the session must send.
    close_code: AtomicU16,
    closing: Notify,
}

impl Shared {
    fn taken(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        self.total_bytes.sub(gauge_bytes(len));
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        // Frames still queued when the connection ends leave the total with it.
        self.frames.close();
        while let Ok(frame) = self.frames.try_recv() {
            self.shared.taken(frame.bytes.len());
        }
    }
}

fn gauge_bytes(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// The sending side of a connection's outgoing queue; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    frames: mpsc::UnboundedSender<OutFrame>,
    shared: Arc<Shared>,
}

/// The receiving side, owned by the connection's session task.
pub struct OutboxReceiver {
    frames: mpsc::UnboundedReceiver<OutFrame>,
    shared: Arc<Shared>,
}

/// A new outbox that holds at most `limit_bytes` of frames not yet written to the socket.
pub fn outbox(limit_bytes: usize, total_bytes: IntGauge) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued_bytes: AtomicUsize::new(0),
        total_bytes,
        limit: limit_bytes,
        close_code: AtomicU16::new(0),
        closing: Notify::new(),
    });
    (
        Outbox {
            frames: tx,
            shared: Arc::clone(&shared),
        },
        OutboxReceiver { frames: rx, shared },
    )
}

impl Outbox {
    /// Queues a frame without waiting.
    pub fn push(&self, frame: OutFrame) -> Result<(), PushError> {
        if self.shared.close_code.load(Ordering::Acquire) != 0 {
            return Err(PushError::Closed);
        }
        let len = frame.bytes.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.shared.limit {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return if self.close(CloseCode::SlowConsumer) {
                Err(PushError::Overflow)
            } else {
                Err(PushError::Closed)
            };
        }
        if self.frames.send(frame).is_err() {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Closed);
        }
        self.shared.total_bytes.add(gauge_bytes(len));
        Ok(())
    }

    /// Asks the session to close the connection with `code`. Returns whether this call was
    /// the one that started the close (the first code wins).
    pub fn close(&self, code: CloseCode) -> bool {
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

    /// Bytes queued and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

impl OutboxReceiver {
    /// Waits for the next frame; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<OutFrame> {
        let frame = self.frames.recv().await?;
        self.shared.taken(frame.bytes.len());
        Some(frame)
    }

    /// Takes a frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<OutFrame> {
        let frame = self.frames.try_recv().ok()?;
        self.shared.taken(frame.bytes.len());
        Some(frame)
    }

    /// A handle that waits for a close request, usable while this receiver is borrowed.
    pub fn close_signal(&self) -> CloseSignal {
        CloseSignal(Arc::clone(&self.shared))
    }
}

/// Tells the session when, and with which code, to close the connection.
pub struct CloseSignal(Arc<Shared>);

impl CloseSignal {
    /// Waits until a close was asked for, and returns its code.
    pub async fn closing(&self) -> CloseCode {
        loop {
            if let Some(code) = self.close_code() {
                return code;
            }
            self.0.closing.notified().await;
        }
    }

    /// The close code asked for, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.0.close_code.load(Ordering::Acquire))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> OutFrame {
        OutFrame::reply(Utf8Bytes::from_static(text))
    }

    #[tokio::test]
    async fn frames_flow_and_bytes_are_accounted() {
        let (tx, mut rx) = outbox(100, IntGauge::new("t", "t").unwrap());
        tx.push(frame("hello")).unwrap();
        tx.push(frame("world")).unwrap();
        assert_eq!(tx.queued_bytes(), 10);
        assert_eq!(rx.recv().await.unwrap().bytes.as_str(), "hello");
        assert_eq!(rx.try_recv().unwrap().bytes.as_str(), "world");
        assert_eq!(tx.queued_bytes(), 0);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_shared_gauge_follows_every_outbox() {
        let total = IntGauge::new("t", "t").unwrap();
        let (a, mut a_rx) = outbox(100, total.clone());
        let (b, b_rx) = outbox(100, total.clone());
        a.push(frame("12345")).unwrap();
        b.push(frame("123")).unwrap();
        assert_eq!(total.get(), 8);
        a_rx.recv().await.unwrap();
        assert_eq!(total.get(), 3);
        drop(b_rx);
        assert_eq!(
            total.get(),
            0,
            "a closed connection's backlog leaves the total"
        );
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer_once() {
        let (tx, rx) = outbox(10, IntGauge::new("t", "t").unwrap());
        tx.push(frame("12345678")).unwrap();
        assert_eq!(tx.push(frame("123")), Err(PushError::Overflow));
        assert_eq!(tx.push(frame("1")), Err(PushError::Closed));
        let signal = rx.close_signal();
        assert_eq!(signal.closing().await, CloseCode::SlowConsumer);
        assert!(!tx.close(CloseCode::ShuttingDown), "first code wins");
        assert_eq!(signal.close_code(), Some(CloseCode::SlowConsumer));
    }
}
