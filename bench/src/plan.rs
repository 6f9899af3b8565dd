//! What the driver and its client workers say to each other: a worker's [`Plan`] (its
//! connections), the [`Command`]s the driver writes to its stdin and the [`Report`]s it writes
//! to its stdout, one JSON object per line.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::measure::Buckets;

/// How connections are spread over the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Spread {
    /// Connection `i` goes to target `i % targets`.
    RoundRobin,
    /// Every connection goes to the first target (the others are for reconnecting).
    First,
}

/// The connections one worker process opens: global indexes `first .. first + count`.
///
/// Connection `i` is user `u<i>` (so it is on its personal channel `#u<i>`), subscribes to
/// `<group_prefix><i / group_size>` when `group_size > 0`, and to every one of `channels`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The gateways' `ws://…/ws` URLs.
    pub(crate) targets: Vec<String>,
    /// How connections are spread over `targets`.
    pub(crate) spread: Spread,
    /// Global index of this worker's first connection.
    pub(crate) first: usize,
    /// This worker's connections.
    pub(crate) count: usize,
    /// Members of each group channel; 0 for none.
    pub(crate) group_size: usize,
    /// Group channel names are this plus the group's number.
    pub(crate) group_prefix: String,
    /// Channels every connection subscribes to.
    pub(crate) channels: Vec<String>,
    /// Source addresses; connection `i` binds to `source_ips[i % len]` before connecting, so
    /// that more connections than one address has ephemeral ports can reach one listener.
    pub(crate) source_ips: Vec<Ipv4Addr>,
    /// Handshakes in flight at once in this worker.
    pub(crate) concurrency: usize,
    /// Every `slow_every`-th connection is a slow consumer (0: none).
    pub(crate) slow_every: usize,
    /// `SO_RCVBUF` of slow consumers, so that they stop taking data soon after they stop
    /// reading.
    pub(crate) slow_recv_buffer: u32,
    /// The pause before each read of a slow consumer told to [`Command::TrickleSlow`], ms.
    pub(crate) slow_read_pause_ms: u64,
    /// Reconnect to the next target after the connection drops, after a random delay of up
    /// to this many milliseconds; `None`: do not reconnect.
    pub(crate) reconnect_jitter_ms: Option<u64>,
    /// Tokio worker threads of the worker process.
    pub(crate) threads: usize,
    /// The gateways' HMAC secret, to mint tokens with.
    pub(crate) secret: String,
}

impl Plan {
    /// The user id of connection `i`.
    pub(crate) fn user(i: usize) -> String {
        format!("u{i}")
    }

    /// The channels connection `i` subscribes to (its personal channel comes by itself).
    pub(crate) fn channels_of(&self, i: usize) -> Vec<String> {
        let mut channels = self.channels.clone();
        if let Some(group) = i.checked_div(self.group_size) {
            channels.push(format!("{}{group}", self.group_prefix));
        }
        channels
    }

    /// Whether connection `i` is a slow consumer.
    pub(crate) fn is_slow(&self, i: usize) -> bool {
        self.slow_every > 0 && i % self.slow_every == self.slow_every - 1
    }

    /// The target connection `i` starts on.
    pub(crate) fn target_of(&self, i: usize) -> usize {
        match self.spread {
            Spread::RoundRobin => i % self.targets.len().max(1),
            Spread::First => 0,
        }
    }
}

/// What the driver tells a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Command {
    /// Open every connection now.
    Connect,
    /// Report a [`Snapshot`] and start new latency histograms.
    Snapshot,
    /// Report the deliveries so far (cheap; histograms untouched).
    Count,
    /// Slow consumers stop reading their sockets.
    StopSlow,
    /// Slow consumers read again, until their connection ends.
    ResumeSlow,
    /// Slow consumers read slowly: one frame at a time, after a pause.
    TrickleSlow,
    /// Exit.
    Quit,
}

/// What a worker tells the driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Report {
    /// Tokens are minted; waiting for [`Command::Connect`].
    Ready,
    /// Connections so far.
    Progress {
        /// Established and subscribed.
        connected: usize,
        /// Given up.
        failed: usize,
    },
    /// Every connection was tried.
    Connected {
        /// Established and subscribed.
        ok: usize,
        /// Given up.
        failed: usize,
        /// When the last attempt finished, Unix nanoseconds.
        done_ns: u64,
        /// From TCP connect to the `subscribed` reply, µs.
        handshake: Buckets,
        /// The first failure, to explain `failed`.
        first_error: Option<String>,
    },
    /// Answer to [`Command::Count`]: deliveries so far.
    Count {
        /// Events received.
        deliveries: u64,
    },
    /// Answer to [`Command::Snapshot`].
    Snapshot(Snapshot),
    /// The worker cannot go on.
    Failed {
        /// Why.
        message: String,
    },
}

/// A worker's figures. Counters are totals since the start; histograms cover the time since
/// the previous snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Events received.
    pub(crate) deliveries: u64,
    /// Publish → receive, from the send time in the event's data, µs.
    pub(crate) latency: Buckets,
    /// Publish → receive, from the event's `timestamp` (millisecond resolution), µs.
    pub(crate) latency_from_timestamp: Buckets,
    /// Connections open now.
    pub(crate) open: usize,
    /// How connections ended, by close code (`none` without a close frame).
    pub(crate) closes: BTreeMap<String, u64>,
    /// Reconnections that ended in a `subscribed` reply.
    pub(crate) resubscribed: usize,
    /// Latest `connection_established` of a reconnection, Unix ns.
    pub(crate) last_reestablished_ns: u64,
    /// Latest `subscribed` of a reconnection, Unix ns.
    pub(crate) last_resubscribed_ns: u64,
    /// Connection lost → resubscribed, per reconnection, µs.
    pub(crate) reconnect: Buckets,
    /// Resubscriptions whose reply said `recovered: true` for every channel.
    pub(crate) recovered: u64,
    /// Resubscriptions whose reply said `recovered: false` for a channel.
    pub(crate) not_recovered: u64,
    /// Latest `recovered: true` reply, Unix ns.
    pub(crate) last_recovered_ns: u64,
    /// Events that carried a history position (`offset` and `epoch`).
    pub(crate) positioned: u64,
}

impl Snapshot {
    /// Adds another worker's figures to these.
    pub(crate) fn merge(&mut self, other: Snapshot) {
        self.deliveries += other.deliveries;
        self.latency.0.extend(other.latency.0);
        self.latency_from_timestamp
            .0
            .extend(other.latency_from_timestamp.0);
        self.open += other.open;
        for (code, n) in other.closes {
            *self.closes.entry(code).or_default() += n;
        }
        self.resubscribed += other.resubscribed;
        self.last_reestablished_ns = self.last_reestablished_ns.max(other.last_reestablished_ns);
        self.last_resubscribed_ns = self.last_resubscribed_ns.max(other.last_resubscribed_ns);
        self.reconnect.0.extend(other.reconnect.0);
        self.recovered += other.recovered;
        self.not_recovered += other.not_recovered;
        self.last_recovered_ns = self.last_recovered_ns.max(other.last_recovered_ns);
        self.positioned += other.positioned;
    }
}
