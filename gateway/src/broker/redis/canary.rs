//! Canaries: numbered messages a subscription connection sends itself through Redis, on topics
//! only it subscribes to, to prove that it still delivers.

use std::time::Duration;

use publisher::SharedConnection;
use tokio::time::timeout;

use super::COMMAND_TIMEOUT;

/// One canary topic and the number last sent on it.
pub(super) struct Canary {
    topic: String,
    /// `PUBLISH`, or `SPUBLISH` for a canary through one cluster master.
    command: &'static str,
    sent: u64,
    back: bool,
}

impl Canary {
    /// A canary on `topic`; `sharded` for one through a cluster master's slot.
    pub(super) fn new(topic: String, sharded: bool) -> Self {
        Self {
            topic,
            command: if sharded { "SPUBLISH" } else { "PUBLISH" },
            sent: 0,
            back: true,
        }
    }

    /// The canary's topic.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }
}

/// A subscription connection's canaries and their timing.
pub(super) struct Canaries {
    canaries: Vec<Canary>,
    redis: SharedConnection,
    /// Time between canaries.
    pub(super) interval: Duration,
    /// Time a canary has to come back.
    pub(super) timeout: Duration,
}

impl Canaries {
    /// `canaries` sent over `redis` every `interval`, each given `timeout` to come back.
    pub(super) fn new(
        canaries: Vec<Canary>,
        redis: SharedConnection,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            canaries,
            redis,
            interval,
            timeout,
        }
    }

    /// The canaries.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Canary> {
        self.canaries.iter()
    }

    /// Replaces the canaries (a cluster's masters changed).
    pub(super) fn replace(&mut self, canaries: Vec<Canary>) {
        self.canaries = canaries;
    }

    /// Whether `topic` is one of the canaries' topics.
    pub(super) fn is_canary(&self, topic: &str) -> bool {
        self.canaries.iter().any(|c| c.topic == topic)
    }

    /// Sends the next canary on every topic without waiting for Redis: if a publish fails,
    /// its canary does not come back, which is what counts.
    pub(super) fn send(&mut self) {
        for canary in &mut self.canaries {
            canary.sent += 1;
            canary.back = false;
            let redis = self.redis.clone();
            let mut command = redis::cmd(canary.command);
            command.arg(&canary.topic).arg(canary.sent);
            tokio::spawn(async move {
                let Ok(mut connection) = redis.get().await else {
                    return;
                };
                let publish = command.query_async::<i64>(&mut connection);
                if let Ok(Err(error)) = timeout(COMMAND_TIMEOUT, publish).await {
                    redis.check(error);
                }
            });
        }
    }

    /// Takes a message on a canary topic: the canary is back if it is the one last sent.
    pub(super) fn receive(&mut self, topic: &str, payload: &[u8]) {
        let number: Option<u64> = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.parse().ok());
        for canary in &mut self.canaries {
            if canary.topic == topic && number == Some(canary.sent) {
                canary.back = true;
            }
        }
    }

    /// Whether every canary sent is back.
    pub(super) fn all_back(&self) -> bool {
        self.canaries.iter().all(|c| c.back)
    }

    /// The connection canaries are published on.
    pub(super) fn redis(&self) -> &SharedConnection {
        &self.redis
    }
}
