//! One multiplexed Redis connection shared by every caller, taken from a deadpool pool.
//!
//! deadpool-redis checks a connection with a round trip (`UNWATCH` + `PING`) every time it hands
//! one out, which doubles the cost of a single command. Its connections multiplex, so there is
//! no need to check one out per command: [`SharedConnection`] takes one from the pool, lends
//! clones of it to everyone, and goes back to the pool for a new one only after a
//! connection-level failure.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::{BuildError, Manager, Pool, PoolError, Runtime};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

/// Why a pool of Redis connections could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SetupError {
    /// The URL is not a Redis URL the client can use.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] RedisError),
    /// The pool settings were refused.
    #[error("Redis pool: {0}")]
    Pool(#[source] BuildError),
}

/// A pool of connections to the Redis at `url`, at most `max_size`, where connecting, waiting
/// for a connection and each command may take up to `timeout`.
///
/// The redis crate fails a command after 500 ms by default. A process busy with other work (a
/// gateway taking thousands of reconnects at once) may read a reply later than that though
/// Redis answered at once; the failure then looks like a broken connection and drops it, with
/// every command on it. The caller's own bound is the one to apply.
pub fn pool(url: &str, max_size: usize, timeout: Duration) -> Result<Pool, SetupError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = Manager::new_with_config(url, config).map_err(SetupError::InvalidUrl)?;
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(timeout))
        .wait_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(SetupError::Pool)
}

/// A pool's connection, shared until it fails; cheap to clone.
#[derive(Clone)]
pub struct SharedConnection {
    pool: Pool,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl SharedConnection {
    /// Shares connections taken from `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: Arc::default(),
        }
    }

    /// The shared connection, taken from the pool when there is none.
    pub async fn get(&self) -> Result<MultiplexedConnection, PoolError> {
        if let Some(connection) = &*self.current.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(connection.clone());
        }
        let connection = deadpool_redis::Connection::take(self.pool.get().await?);
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have taken one meanwhile; keep the first.
        Ok(current.get_or_insert(connection).clone())
    }

    /// Passes `error` on, first dropping the shared connection if the error means it is
    /// broken, so that the next caller gets a new one.
    pub fn check(&self, error: RedisError) -> RedisError {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        error
    }

    /// Forgets the shared connection (after a command timed out on it, say).
    pub fn reset(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The pool connections come from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
