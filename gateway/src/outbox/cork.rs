//! Corked rounds: frames pushed during a round are queued, and each socket that got any is
//! written once when the round ends, after whatever locks the round took are released. A
//! round on many sockets is split among the runtime's worker threads, and what its writes sent
//! is counted locally, then added to the shared metrics once per part: every core writing one
//! hot event would otherwise meet on the same counters at every delivery.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use prometheus::local::LocalHistogram;

use super::{Outbox, unbudgeted};
use crate::metrics::Metrics;

/// Sockets a corked round must have written before the writes are split across the
/// runtime's worker threads: below it, a spawn costs more than the cores it frees.
pub(super) const SPLIT_ABOVE: usize = 512;

/// Deliveries a round part writes between two reads of the clock for their latency: a few
/// hundred microseconds of writes at most, against a read per delivery.
const CLOCK_EVERY: u32 = 32;

thread_local! {
    /// While [`corked`] runs on this thread: the outboxes that got frames, to write at its end.
    static CORKED: RefCell<Option<Vec<Outbox>>> = const { RefCell::new(None) };
}

/// Runs `f` with writes corked: frames pushed meanwhile are queued, and each socket that got
/// any is written once, with one write for all its frames, when `f` returns. A fan-out of many events
/// at once then costs one write per socket rather than one per frame, and the writes happen
/// after `f` released whatever locks it took to choose the recipients.
pub(crate) fn corked<T>(f: impl FnOnce() -> T) -> T {
    let outer = CORKED.with(|corked| corked.borrow_mut().replace(Vec::new()));
    let result = f();
    let touched = CORKED.with(|corked| std::mem::replace(&mut *corked.borrow_mut(), outer));
    write_out(touched.unwrap_or_default());
    result
}

/// Records `outbox` for the current [`corked`] round; `false` when no round is running.
pub(super) fn cork(outbox: &Outbox) -> bool {
    CORKED.with(|corked| match corked.borrow_mut().as_mut() {
        Some(touched) => {
            touched.push(outbox.clone());
            true
        }
        None => false,
    })
}

/// Writes what a corked round queued. A round that touched many sockets is split among the
/// runtime's worker threads, so that one hot event is written by every core at once; each
/// socket's frames stay in order, since they are queued in order before any write.
fn write_out(mut touched: Vec<Outbox>) {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let workers = runtime.as_ref().map_or(1, |r| r.metrics().num_workers());
    if let Some(runtime) = runtime.filter(|_| workers > 1 && touched.len() >= SPLIT_ABOVE) {
        let share = touched.len().div_ceil(workers);
        while touched.len() > share {
            let part = touched.split_off(touched.len() - share);
            runtime.spawn(async move { uncork_all(&part) });
        }
    }
    uncork_all(&touched);
}

/// Writes each outbox's corked frame, counting what was sent once for all of them.
fn uncork_all(outboxes: &[Outbox]) {
    let mut tally = Tally::default();
    for outbox in outboxes {
        outbox.uncork(&mut tally);
    }
}

/// What a round part's writes sent, to add to the metrics when the part ends.
#[derive(Default)]
struct Tally {
    /// The metrics counted into, and the part's own share of their latency histogram.
    counting: Option<(Arc<Metrics>, LocalHistogram)>,
    sent: u64,
    now: Option<SystemTime>,
    since_clock: u32,
}

impl Tally {
    /// Counts a frame sent through `metrics`, published at `published_at`.
    fn count(&mut self, metrics: &Arc<Metrics>, published_at: Option<SystemTime>) {
        if !matches!(&self.counting, Some((counted, _)) if Arc::ptr_eq(counted, metrics)) {
            self.flush();
            let latency = metrics.delivery_latency.local();
            self.counting = Some((Arc::clone(metrics), latency));
        }
        self.sent += 1;
        if self.since_clock == 0 {
            self.now = Some(SystemTime::now());
        }
        self.since_clock = (self.since_clock + 1) % CLOCK_EVERY;
        let latency = published_at
            .zip(self.now)
            .and_then(|(at, now)| now.duration_since(at).ok());
        if let (Some(latency), Some((_, histogram))) = (latency, &self.counting) {
            histogram.observe(latency.as_secs_f64());
        }
    }

    /// Adds what was counted to the shared metrics.
    fn flush(&mut self) {
        if let Some((metrics, latency)) = &self.counting {
            latency.flush();
            metrics.messages_sent.inc_by(self.sent);
        }
        self.sent = 0;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Outbox {
    /// Writes the frame a [`corked`] round left, and what queued behind it, as far as the
    /// socket takes them now; the session drains the rest.
    fn uncork(&self, tally: &mut Tally) {
        let shared = &*self.shared;
        let metrics = &shared.metrics;
        let mut socket = shared.socket();
        if socket.corked.is_none() || socket.broken || socket.io.is_none() {
            // Written already by a drain that made room, or the connection is gone.
            return;
        }
        let alone = !socket.held && !socket.unflushed && socket.backlog.is_empty();
        let wake = if let Some(queued) = socket.corked.take_if(|_| alone) {
            let wake = socket.write_idle(queued, metrics, |at| tally.count(metrics, at));
            socket.broken |= wake.is_err();
            wake.unwrap_or(true)
        } else {
            // Held, or later frames queued behind it: it goes ahead of them.
            socket.backlog_corked(metrics);
            let mut cx = Context::from_waker(Waker::noop());
            let drained = unbudgeted(|| socket.poll_drain(&mut cx, metrics));
            !matches!(drained, Poll::Ready(Ok(()))) || !socket.backlog.is_empty()
        };
        drop(socket);
        if wake {
            shared.backlog.notify_one();
        }
    }
}
