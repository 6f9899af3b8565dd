//! Publishing load: events at a steady rate through Redis with the `publisher` crate, each
//! carrying its send time (Unix nanoseconds) so that clients can measure latency to the
//! microsecond (the event's `timestamp` has only millisecond resolution).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use publisher::{Event, Publisher};
use serde::Serialize;
use tokio::time::MissedTickBehavior;

use crate::measure::unix_nanos;

/// The event name the bench publishes.
pub(crate) const EVENT: &str = "bench";
/// Events published in one pipelined batch at most, when the publisher is behind.
const MAX_BATCH: u64 = 1000;
/// How often a labelled pacer reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How often the pacer wakes up to publish what is due.
const TICK: Duration = Duration::from_millis(1);

/// An event's data: `{"t":<send time, Unix ns>,"pad":"xxx…"}`.
#[derive(Serialize)]
struct Data<'a> {
    t: u64,
    pad: &'a str,
}

/// Padding that makes the data `size` bytes of JSON long (with a 19-digit `t`).
pub(crate) fn padding(size: usize) -> String {
    // {"t":1234567890123456789,"pad":""} is 34 bytes.
    "x".repeat(size.saturating_sub(34))
}

/// An event for `channel`, sent now.
pub(crate) fn event(channel: &str, pad: &str) -> Result<Event> {
    let data = Data {
        t: unix_nanos(),
        pad,
    };
    Event::to_channel(channel, EVENT, &data).with_context(|| format!("an event for {channel}"))
}

/// What a paced run published.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Published {
    /// Events published.
    pub(crate) events: u64,
    /// Deliveries they should make (the sum of their channels' subscribers).
    pub(crate) expected_deliveries: u64,
    /// How long it took.
    pub(crate) elapsed: Duration,
}

/// Publishes `rate` events per second for `duration` (or until the task is aborted), each to
/// the channel `pick` chooses; `pick` also says how many clients subscribe to it. With a
/// `label`, prints progress to stderr every few seconds.
pub(crate) async fn paced(
    publisher: &Publisher,
    rate: f64,
    duration: Duration,
    event_bytes: usize,
    label: Option<&str>,
    mut pick: impl FnMut() -> (String, u64),
) -> Result<Published> {
    let pad = padding(event_bytes);
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut published = Published::default();
    let mut batch = Vec::new();
    let mut last_print = Instant::now();
    while started.elapsed() < duration {
        tick.tick().await;
        if let Some(label) = label
            && last_print.elapsed() >= PROGRESS_EVERY
        {
            last_print = Instant::now();
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "[{label}] {seconds:.0} s: published {} events ({:.0}/s)",
                published.events,
                published.events as f64 / seconds
            );
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let count = due.saturating_sub(published.events).min(MAX_BATCH);
        if count == 0 {
            continue;
        }
        batch.clear();
        for _ in 0..count {
            let (channel, subscribers) = pick();
            batch.push(event(&channel, &pad)?);
            published.expected_deliveries += subscribers;
        }
        publisher
            .publish_batch(&batch)
            .await
            .context("publishing to Redis")?;
        published.events += count;
    }
    published.elapsed = started.elapsed();
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_makes_data_of_the_asked_size() {
        let pad = padding(100);
        let json = serde_json::to_string(&Data {
            t: 1_780_000_000_000_000_000,
            pad: &pad,
        })
        .unwrap();
        assert_eq!(json.len(), 100);
    }
}
