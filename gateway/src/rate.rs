//! Small counters that limit what one connection may do: a token bucket and strike counts.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled_at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has (nearly) refilled, i.e. the client has calmed down.
    pub(crate) fn is_full(&self) -> bool {
        self.tokens >= self.burst - 1.0
    }
}

/// The outcome of one strike.
pub(crate) struct Strike {
    /// The first strike since the last reset: worth telling the client.
    pub first: bool,
    /// The limit is reached.
    pub out: bool,
}

/// Counts strikes up to a limit; with a window, strikes older than it are forgotten.
pub(crate) struct Strikes {
    limit: u32,
    window: Option<Duration>,
    count: u32,
    last: Option<Instant>,
}

impl Strikes {
    /// `limit` strikes, forgotten after `window` without one when a window is given.
    pub(crate) fn new(limit: u32, window: Option<Duration>) -> Self {
        Self {
            limit,
            window,
            count: 0,
            last: None,
        }
    }

    /// Records a strike.
    pub(crate) fn strike(&mut self) -> Strike {
        let now = Instant::now();
        if let (Some(window), Some(last)) = (self.window, self.last)
            && now.duration_since(last) > window
        {
            self.count = 0;
        }
        self.last = Some(now);
        self.count += 1;
        Strike {
            first: self.count == 1,
            out: self.count >= self.limit,
        }
    }

    /// Forgets every strike.
    pub(crate) fn reset(&mut self) {
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10, 5);
        assert!((0..5).all(|_| bucket.take()));
        assert!(!bucket.take());
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(bucket.take() && bucket.take());
        assert!(!bucket.take());
    }

    #[tokio::test(start_paused = true)]
    async fn strikes_are_forgotten_after_the_window() {
        let mut strikes = Strikes::new(3, Some(Duration::from_secs(1)));
        assert!(strikes.strike().first);
        assert!(!strikes.strike().out);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(strikes.strike().first);
        strikes.strike();
        assert!(strikes.strike().out);
    }
}
