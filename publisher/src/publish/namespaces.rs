//! The gateways' namespace settings as a publisher sees them: which namespaces keep history,
//! with what policy, and the idempotency window, read from `<prefix>:namespaces` and kept for
//! a few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::shared::Connection;
use crate::wire::{
    DEFAULT_IDEMPOTENCY_WINDOW, HistoryPolicy, IDEMPOTENCY_WINDOW_FIELD, Keys, namespace_policies,
};

/// How often the settings are read again from Redis.
const REFRESH: Duration = Duration::from_secs(5);

/// The settings the gateways wrote.
#[derive(Debug, Default)]
pub(super) struct Namespaces {
    /// Namespaces that keep history, with their policies.
    history: HashMap<String, HistoryPolicy>,
    /// The idempotency window, where a gateway wrote one.
    window: Option<Duration>,
}

impl Namespaces {
    /// Whether `namespace` keeps history.
    pub(super) fn keeps_history(&self, namespace: &str) -> bool {
        self.history.contains_key(namespace)
    }

    /// The policy of `namespace`; none kept where no gateway set one.
    pub(super) fn policy(&self, namespace: &str) -> HistoryPolicy {
        self.history
            .get(namespace)
            .copied()
            .unwrap_or(HistoryPolicy {
                size: 0,
                ttl: Duration::ZERO,
            })
    }

    /// The idempotency window the gateways apply.
    pub(super) fn window(&self) -> Duration {
        self.window.unwrap_or(DEFAULT_IDEMPOTENCY_WINDOW)
    }

    /// The settings in the fields of `<prefix>:namespaces` (`HGETALL`).
    pub(super) fn from_fields(fields: Vec<(String, String)>) -> Self {
        let window = fields
            .iter()
            .find(|(field, _)| field == IDEMPOTENCY_WINDOW_FIELD)
            .and_then(|(_, ms)| ms.parse().ok())
            .map(Duration::from_millis);
        Self {
            history: namespace_policies(fields).collect(),
            window,
        }
    }
}

/// The settings and when they were read; shared by a publisher's clones.
#[derive(Default)]
pub(super) struct Cached {
    read_at: Option<Instant>,
    namespaces: Arc<Namespaces>,
}

/// The settings, read again when older than a few seconds.
pub(super) async fn read(
    cache: &Mutex<Cached>,
    keys: Keys<'_>,
    connection: &mut Connection,
) -> Result<Arc<Namespaces>, redis::RedisError> {
    {
        let cached = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.read_at.is_some_and(|at| at.elapsed() < REFRESH) {
            return Ok(Arc::clone(&cached.namespaces));
        }
    }
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.namespaces())
        .query_async(connection)
        .await?;
    let namespaces = Arc::new(Namespaces::from_fields(fields));
    let mut cached = cache.lock().unwrap_or_else(PoisonError::into_inner);
    cached.read_at = Some(Instant::now());
    cached.namespaces = Arc::clone(&namespaces);
    Ok(namespaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_from_the_fields() {
        let fields = vec![
            ("jobs".to_owned(), "100 60000".to_owned()),
            ("chat".to_owned(), "0 0".to_owned()),
            (IDEMPOTENCY_WINDOW_FIELD.to_owned(), "1000".to_owned()),
        ];
        let namespaces = Namespaces::from_fields(fields);
        assert!(namespaces.keeps_history("jobs"));
        assert!(!namespaces.keeps_history("chat"));
        assert_eq!(namespaces.policy("jobs").size, 100);
        assert_eq!(namespaces.policy("other").size, 0);
        assert_eq!(namespaces.window(), Duration::from_millis(1000));
        assert_eq!(Namespaces::default().window(), DEFAULT_IDEMPOTENCY_WINDOW);
    }
}
