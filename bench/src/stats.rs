//! The figures every client of a worker adds to: deliveries and their latency, handshakes,
//! how connections ended, and reconnections; read out as a [`Snapshot`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hdrhistogram::Histogram;

use crate::client::Recovery;
use crate::measure::{self, Buckets, unix_nanos};
use crate::plan::Snapshot;

/// Latency histograms are sharded by connection, so that tasks on different threads rarely
/// wait for each other's lock.
const SHARDS: usize = 16;

/// Figures shared by every client of a worker.
pub(crate) struct Shared {
    deliveries: AtomicU64,
    positioned: AtomicU64,
    latency: Vec<Mutex<Histogram<u64>>>,
    latency_from_timestamp: Vec<Mutex<Histogram<u64>>>,
    handshake: Mutex<Histogram<u64>>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    last_done_ns: AtomicU64,
    open: AtomicUsize,
    first_error: Mutex<Option<String>>,
    endings: Mutex<BTreeMap<String, u64>>,
    storm: Mutex<StormFigures>,
}

#[derive(Default)]
struct StormFigures {
    resubscribed: usize,
    last_reestablished_ns: u64,
    last_resubscribed_ns: u64,
    reconnect: Option<Histogram<u64>>,
    recovered: u64,
    not_recovered: u64,
    last_recovered_ns: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking client task must not take the figures of the others with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new() -> Self {
        let shards = || {
            (0..SHARDS)
                .map(|_| Mutex::new(measure::histogram()))
                .collect()
        };
        Self {
            deliveries: AtomicU64::new(0),
            positioned: AtomicU64::new(0),
            latency: shards(),
            latency_from_timestamp: shards(),
            handshake: Mutex::new(measure::histogram()),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            last_done_ns: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            endings: Mutex::new(BTreeMap::new()),
            storm: Mutex::new(StormFigures::default()),
        }
    }

    /// A first connection got its `subscribed` reply, `handshake_us` after it started.
    pub(crate) fn connected(&self, handshake_us: u64) {
        measure::record(&mut lock(&self.handshake), handshake_us);
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.last_done_ns.fetch_max(unix_nanos(), Ordering::Relaxed);
    }

    /// A first connection failed.
    pub(crate) fn fail(&self, error: &anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.last_done_ns.fetch_max(unix_nanos(), Ordering::Relaxed);
        lock(&self.first_error).get_or_insert_with(|| format!("{error:#}"));
    }

    /// A connection is open and reading.
    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended: `how` is its close code, `eof`, `error` or `close`.
    pub(crate) fn closed(&self, how: String) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        *lock(&self.endings).entry(how).or_default() += 1;
    }

    /// An event arrived on connection `index`, with its latencies in µs.
    pub(crate) fn delivered(&self, index: usize, latency_us: u64, from_timestamp_us: Option<u64>) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let shard = index % SHARDS;
        measure::record(&mut lock(&self.latency[shard]), latency_us);
        if let Some(us) = from_timestamp_us {
            measure::record(&mut lock(&self.latency_from_timestamp[shard]), us);
        }
    }

    /// An event carried a history position.
    pub(crate) fn positioned(&self) {
        self.positioned.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection came back after it was lost at `lost_ns`.
    pub(crate) fn reconnected(
        &self,
        established_ns: u64,
        subscribed_ns: u64,
        lost_ns: u64,
        recovery: Recovery,
    ) {
        let mut storm = lock(&self.storm);
        storm.resubscribed += 1;
        storm.last_reestablished_ns = storm.last_reestablished_ns.max(established_ns);
        storm.last_resubscribed_ns = storm.last_resubscribed_ns.max(subscribed_ns);
        let took_us = subscribed_ns.saturating_sub(lost_ns) / 1000;
        measure::record(
            storm.reconnect.get_or_insert_with(measure::histogram),
            took_us,
        );
        match recovery {
            Recovery::Absent => {}
            Recovery::Recovered => {
                storm.recovered += 1;
                storm.last_recovered_ns = storm.last_recovered_ns.max(subscribed_ns);
            }
            Recovery::NotRecovered => storm.not_recovered += 1,
        }
    }

    pub(crate) fn connected_count(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn failed_count(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// When the last first-connection attempt finished, Unix ns.
    pub(crate) fn last_done_ns(&self) -> u64 {
        self.last_done_ns.load(Ordering::Relaxed)
    }

    pub(crate) fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    pub(crate) fn handshake(&self) -> Buckets {
        Buckets::of(&lock(&self.handshake))
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }

    /// The figures so far; latency histograms start again empty.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let take = |shards: &[Mutex<Histogram<u64>>]| {
            let mut all = measure::histogram();
            for shard in shards {
                let mut shard = lock(shard);
                let _ = all.add(&*shard);
                shard.reset();
            }
            Buckets::of(&all)
        };
        let storm = lock(&self.storm);
        Snapshot {
            deliveries: self.deliveries(),
            latency: take(&self.latency),
            latency_from_timestamp: take(&self.latency_from_timestamp),
            open: self.open.load(Ordering::Relaxed),
            closes: lock(&self.endings).clone(),
            resubscribed: storm.resubscribed,
            last_reestablished_ns: storm.last_reestablished_ns,
            last_resubscribed_ns: storm.last_resubscribed_ns,
            reconnect: storm
                .reconnect
                .as_ref()
                .map(Buckets::of)
                .unwrap_or_default(),
            recovered: storm.recovered,
            not_recovered: storm.not_recovered,
            last_recovered_ns: storm.last_recovered_ns,
            positioned: self.positioned.load(Ordering::Relaxed),
        }
    }
}
