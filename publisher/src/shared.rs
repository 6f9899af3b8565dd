//! One multiplexed Redis connection shared by every caller: to one server (from a deadpool
//! pool), to a Redis Cluster (the redis crate's cluster connection, which routes each command
//! to its slot's master and follows `MOVED`/`ASK`), or to the master that Sentinel names.
//!
//! deadpool-redis checks a connection with a round trip (`UNWATCH` + `PING`) every time it hands
//! one out, which doubles the cost of a single command. Its connections multiplex, so there is
//! no need to check one out per command: [`SharedConnection`] takes one, lends clones of it to
//! everyone, and makes a new one only after a connection-level failure (after a Sentinel
//! failover, a `READONLY` reply counts as one: the old master is a replica now).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::{BuildError, Manager, Pool, PoolError, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value,
};

use crate::topology::{RedisMode, RedisTopology};

/// Why a connection to Redis could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SetupError {
    /// The URL is not a Redis URL the client can use.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] RedisError),
    /// The pool settings were refused.
    #[error("Redis pool: {0}")]
    Pool(#[source] BuildError),
    /// The mode, the URL list or the Sentinel master name do not fit together.
    #[error("Redis settings: {0}")]
    Topology(String),
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The standalone pool gave none.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The cluster or the sentinels could not be reached.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// A connection to the deployment's Redis, whatever its layout; cheap to clone.
#[derive(Clone)]
pub enum Connection {
    /// To one server: standalone, or the master Sentinel named.
    Single(MultiplexedConnection),
    /// To a Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A pool of connections to the Redis at `url`, at most `max_size`, where connecting, waiting
/// for a connection and each command may take up to `timeout`.
///
/// The redis crate fails a command after 500 ms by default. A process busy with other work (a
/// gateway taking thousands of reconnects at once) may read a reply later than that though
/// Redis answered at once; the failure then looks like a broken connection and drops it, with
/// every command on it. The caller's own bound is the one to apply.
pub fn pool(url: &str, max_size: usize, timeout: Duration) -> Result<Pool, SetupError> {
    let manager = Manager::new_with_config(url, connection_config(timeout))
        .map_err(SetupError::InvalidUrl)?;
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(timeout))
        .wait_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(SetupError::Pool)
}

/// Connection settings where connecting and each command may take up to `timeout`.
pub fn connection_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
}

/// A client for a Redis Cluster from its seed nodes, with `timeout` on connects and commands;
/// the caller may add to it before `build` checks the URLs.
pub fn cluster_client(seeds: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
}

/// A client that asks the sentinels at `sentinels` for the master named `master`.
pub fn sentinel_client(sentinels: &[String], master: &str) -> Result<SentinelClient, SetupError> {
    SentinelClient::build(sentinels.to_vec(), master, None, SentinelServerType::Master)
        .map_err(SetupError::InvalidUrl)
}

/// Where new connections come from.
enum Source {
    Pool(Pool),
    Cluster(ClusterClient),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        config: AsyncConnectionConfig,
    },
}

/// A connection shared until it fails; cheap to clone.
#[derive(Clone)]
pub struct SharedConnection {
    source: Arc<Source>,
    current: Arc<Mutex<Option<Connection>>>,
}

impl SharedConnection {
    /// Shares connections taken from `pool` (one server).
    pub fn new(pool: Pool) -> Self {
        Self::from_source(Source::Pool(pool))
    }

    /// Shares connections to the Redis of `topology`: at most `pool_size` to one server,
    /// where connecting and each command may take up to `timeout`.
    pub fn connect(
        topology: &RedisTopology,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let source = match topology.mode() {
            RedisMode::Standalone => Source::Pool(pool(&topology.urls()[0], pool_size, timeout)?),
            RedisMode::Cluster => Source::Cluster(
                cluster_client(topology.urls(), timeout)
                    .build()
                    .map_err(SetupError::InvalidUrl)?,
            ),
            RedisMode::Sentinel => {
                let master = topology.sentinel_master().unwrap_or_default();
                Source::Sentinel {
                    client: tokio::sync::Mutex::new(sentinel_client(topology.urls(), master)?),
                    config: connection_config(timeout),
                }
            }
        };
        Ok(Self::from_source(source))
    }

    fn from_source(source: Source) -> Self {
        Self {
            source: Arc::new(source),
            current: Arc::default(),
        }
    }

    /// The shared connection, made when there is none.
    pub async fn get(&self) -> Result<Connection, ConnectError> {
        if let Some(connection) = &*self.current.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(connection.clone());
        }
        let connection = match &*self.source {
            Source::Pool(pool) => {
                Connection::Single(deadpool_redis::Connection::take(pool.get().await?))
            }
            Source::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
            Source::Sentinel { client, config } => {
                let master = client.lock().await.async_get_client().await?;
                let connection = master
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                Connection::Single(connection)
            }
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have made one meanwhile; keep the first.
        Ok(current.get_or_insert(connection).clone())
    }

    /// Passes `error` on, first dropping the shared connection if the error means it is
    /// broken or no longer on a master, so that the next caller gets a new one.
    pub fn check(&self, error: RedisError) -> RedisError {
        let demoted = matches!(
            error.kind(),
            redis::ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        );
        if demoted
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            self.reset();
        }
        error
    }

    /// Forgets the shared connection (after a command timed out on it, say).
    pub fn reset(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether this connects to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.source, Source::Cluster(_))
    }
}
