//! Configuration: command-line flags and `GATEWAY_*` variables over an optional TOML file over
//! documented defaults, validated once at startup.

mod keys;
mod sources;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use publisher::shared::SetupError;
use publisher::{RedisMode, RedisTopology};
use serde::Deserialize;

use self::keys::auth_settings;
pub use self::sources::Args;
use self::sources::FileConfig;
use crate::auth::AuthSettings;

/// A configuration that cannot be used, with a message that says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named by `GATEWAY_CONFIG`.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The TOML file is not valid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file named by `GATEWAY_CONFIG`.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or settings contradict each other.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribePolicy {
    /// Any authenticated connection.
    #[default]
    Public,
    /// Only connections whose token's `channels` patterns match the channel.
    Claims,
    /// No client; events reach it only through user-limited or personal channels.
    None,
}

/// The rules of one namespace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Who may subscribe.
    #[serde(default)]
    pub subscribe: SubscribePolicy,
    /// Whether clients may publish with the `publish` frame.
    #[serde(default)]
    pub client_publish: bool,
    /// Whether presence is kept for the namespace's channels.
    #[serde(default)]
    pub presence: bool,
    /// Whether subscribers get join and leave events.
    #[serde(default)]
    pub join_leave: bool,
    /// Events kept per channel; 0 keeps no history.
    #[serde(default)]
    pub history_size: usize,
    /// How long events are kept.
    #[serde(default, with = "sources::humantime_serde_opt")]
    pub history_ttl: Option<Duration>,
}

/// Namespaces by name; `default` and `personal` always exist.
#[derive(Debug, Clone)]
pub struct Namespaces(HashMap<String, NamespaceConfig>);

impl Namespaces {
    fn with_builtins(mut configured: HashMap<String, NamespaceConfig>) -> Self {
        configured.entry("default".into()).or_default();
        configured.entry("personal".into()).or_default();
        Self(configured)
    }

    /// Every namespace with its rules.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &NamespaceConfig)> {
        self.0.iter()
    }

    /// The rules of a namespace, if it is configured.
    pub fn get(&self, namespace: &str) -> Option<&NamespaceConfig> {
        self.0.get(namespace)
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::with_builtins(HashMap::new())
    }
}

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest inbound frame in bytes.
    pub max_message_bytes: usize,
    /// Bytes queued for one connection before it is closed with 4100.
    pub outbox_max_bytes: usize,
    /// Channels one connection may subscribe to.
    pub max_channels_per_connection: usize,
    /// Client frames per second.
    pub rate_limit_per_second: u32,
    /// Burst of client frames above the rate.
    pub rate_limit_burst: u32,
    /// Time a new connection has for its TLS handshake and first request head.
    pub handshake_timeout: Duration,
    /// Connections that may be in their handshake at once, per listener.
    pub max_pending_handshakes: usize,
    /// Largest HTTP request head in bytes.
    pub max_header_bytes: usize,
}

/// The validated configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// The Redis bus, or `None` for the in-memory bus: one URL, or in cluster and sentinel
    /// modes a comma-separated list of seed nodes or sentinels.
    pub redis_url: Option<String>,
    /// How the Redis is laid out (`GATEWAY_REDIS_MODE`).
    pub redis_mode: RedisMode,
    /// The master the sentinels watch, in sentinel mode.
    pub redis_sentinel_master: Option<String>,
    /// Prefix of Redis keys and channels.
    pub redis_prefix: String,
    /// Dedicated Redis connections for subscriptions.
    pub redis_subscription_connections: usize,
    /// Pooled Redis connections for publishing and commands.
    pub redis_pool_size: usize,
    /// How often each subscription connection sends itself a canary.
    pub bus_canary_interval: Duration,
    /// How long a canary may take to come back.
    pub bus_canary_timeout: Duration,
    /// This node's id.
    pub node_id: String,
    /// Token verification settings.
    pub auth: AuthSettings,
    /// Admin API key; `None` together with no JWT key means development mode.
    pub api_key: Option<String>,
    /// Origins browsers may connect from; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Per-connection limits.
    pub limits: Limits,
    /// Payloads from which frames are compressed for connections that negotiated
    /// permessage-deflate; `None` when compression is off.
    pub ws_compression: Option<usize>,
    /// Interval of server pings.
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
    /// Longest a shutdown waits for clients.
    pub drain_timeout: Duration,
    /// Upper bound of the jittered reconnect delay sent when draining.
    pub drain_reconnect_max: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Certificate and key files when the public listener serves TLS itself.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a node's lease lasts.
    pub node_lease: Duration,
    /// Connections one user may hold across the cluster; 0 is unlimited.
    pub max_connections_per_user: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Namespace rules.
    pub namespaces: Namespaces,
}

/// The public listener's default address.
/// Bounds of `GATEWAY_MAX_HEADER_BYTES`: HTTP parsing needs at least 8 KiB of buffer.
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 1024 * 1024;

const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
/// The admin listener's default address.
const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9090);

impl Config {
    /// Merges flags and environment over the TOML file over defaults, and validates the result.
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let config = Self {
            listen: pick(args.listen, file.listen, DEFAULT_LISTEN),
            admin_listen: pick(args.admin_listen, file.admin_listen, DEFAULT_ADMIN_LISTEN),
            redis_url: args
                .redis_url
                .clone()
                .or(file.redis_url.clone())
                .filter(|u| !u.is_empty()),
            redis_mode: args.redis_mode.or(file.redis_mode).unwrap_or_default(),
            redis_sentinel_master: args
                .redis_sentinel_master
                .clone()
                .or(file.redis_sentinel_master.clone()),
            redis_prefix: args
                .redis_prefix
                .clone()
                .or(file.redis_prefix.clone())
                .unwrap_or_else(|| "gw".into()),
            redis_subscription_connections: pick(
                args.redis_subscription_connections,
                file.redis_subscription_connections,
                2,
            ),
            redis_pool_size: args.redis_pool_size.or(file.redis_pool_size).unwrap_or(8),
            bus_canary_interval: pick(
                args.bus_canary_interval,
                file.bus_canary_interval,
                Duration::from_secs(5),
            ),
            bus_canary_timeout: pick(
                args.bus_canary_timeout,
                file.bus_canary_timeout,
                Duration::from_secs(3),
            ),
            node_id: args
                .node_id
                .clone()
                .or(file.node_id.clone())
                .filter(|id| !id.is_empty())
                .unwrap_or_else(default_node_id),
            auth: auth_settings(&args, &file),
            api_key: args.api_key.clone(),
            allowed_origins: allowed_origins(&args, &file),
            limits: Limits::merge(&args, &file),
            ws_compression: args
                .ws_compression
                .or(file.ws_compression)
                .unwrap_or(false)
                .then(|| {
                    args.ws_compression_min_bytes
                        .or(file.ws_compression_min_bytes)
                        .unwrap_or(256)
                }),
            heartbeat_interval: pick(
                args.heartbeat_interval,
                file.heartbeat_interval,
                Duration::from_secs(25),
            ),
            idle_timeout: pick(
                args.idle_timeout,
                file.idle_timeout,
                Duration::from_secs(60),
            ),
            drain_timeout: pick(
                args.drain_timeout,
                file.drain_timeout,
                Duration::from_secs(20),
            ),
            drain_reconnect_max: pick(
                args.drain_reconnect_max,
                file.drain_reconnect_max,
                Duration::from_secs(5),
            ),
            tls: tls_files(&args, &file)?,
            node_lease: pick(args.node_lease, file.node_lease, Duration::from_secs(10)),
            max_connections_per_user: pick(
                args.max_connections_per_user,
                file.max_connections_per_user,
                0,
            ),
            idempotency_window: pick(
                args.idempotency_window,
                file.idempotency_window,
                Duration::from_secs(300),
            ),
            log_format: pick(args.log_format, file.log_format, LogFormat::Text),
            namespaces: Namespaces::with_builtins(file.namespaces.clone()),
        };
        config.validate()?;
        Ok(config)
    }

    /// Whether neither a JWT key nor an API key is configured.
    pub fn is_development(&self) -> bool {
        self.api_key.is_none()
            && self.auth.jwt_secret.is_none()
            && self.auth.jwt_public_key_file.is_none()
            && self.auth.jwks_file.is_none()
            && self.auth.jwks_url.is_none()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_redis()?;
        self.validate_keys()?;
        self.validate_jwks_url()?;
        self.limits.validate()?;
        self.validate_timings()?;
        self.namespaces.validate()
    }

    /// The Redis of the bus, or `None` for the in-memory bus.
    pub fn redis_topology(&self) -> Result<Option<RedisTopology>, ConfigError> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let master = self.redis_sentinel_master.as_deref();
        RedisTopology::parse(self.redis_mode, url, master)
            .map(Some)
            .map_err(|error| match error {
                SetupError::Topology(text) => {
                    ConfigError::Invalid(format!("GATEWAY_REDIS_URL: {text}"))
                }
                other => ConfigError::Invalid(other.to_string()),
            })
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_none() && self.redis_mode != RedisMode::Standalone {
            return invalid(format!(
                "GATEWAY_REDIS_MODE={} needs GATEWAY_REDIS_URL",
                self.redis_mode
            ));
        }
        self.redis_topology()?;
        // Braces would make a hash tag of their own in the node's and deployment's names.
        let unfit = |name: &str| {
            name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        };
        if unfit(&self.redis_prefix) {
            return invalid("GATEWAY_REDIS_PREFIX must be non-empty, without spaces or braces");
        }
        if unfit(&self.node_id) {
            return invalid("GATEWAY_NODE_ID must be non-empty, without spaces or braces");
        }
        if !(1..=64).contains(&self.redis_subscription_connections) {
            return invalid("GATEWAY_REDIS_SUBSCRIPTION_CONNECTIONS must be 1 to 64");
        }
        if self.bus_canary_interval.is_zero() || self.bus_canary_timeout.is_zero() {
            return invalid(
                "GATEWAY_BUS_CANARY_INTERVAL and GATEWAY_BUS_CANARY_TIMEOUT must be more than 0s",
            );
        }
        if !(1..=1024).contains(&self.redis_pool_size) {
            return invalid("GATEWAY_REDIS_POOL_SIZE must be 1 to 1024");
        }
        Ok(())
    }

    fn validate_timings(&self) -> Result<(), ConfigError> {
        if self.node_lease < Duration::from_secs(1) {
            return invalid("GATEWAY_NODE_LEASE must be at least 1s");
        }
        if self.heartbeat_interval < Duration::from_secs(1) {
            return invalid("GATEWAY_HEARTBEAT_INTERVAL must be at least 1s");
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return invalid(format!(
                "GATEWAY_IDLE_TIMEOUT ({}) must be longer than GATEWAY_HEARTBEAT_INTERVAL ({})",
                humantime::format_duration(self.idle_timeout),
                humantime::format_duration(self.heartbeat_interval)
            ));
        }
        Ok(())
    }
}

impl Namespaces {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, namespace) in &self.0 {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid_name {
                return invalid(format!(
                    "namespace {name:?}: names are [A-Za-z0-9_.-] (the part before ':')"
                ));
            }
            if namespace.history_size > 0 && namespace.history_ttl.is_none() {
                return invalid(format!(
                    "namespace {name:?}: history_size needs history_ttl (e.g. \"10m\")"
                ));
            }
            if namespace.history_size > 1_000_000 {
                return invalid(format!(
                    "namespace {name:?}: history_size is at most 1000000"
                ));
            }
            if namespace.join_leave && !namespace.presence {
                return invalid(format!(
                    "namespace {name:?}: join_leave needs presence = true"
                ));
            }
        }
        Ok(())
    }
}

impl Limits {
    /// The limits from flags and environment over the file over the defaults.
    fn merge(args: &Args, file: &FileConfig) -> Self {
        Self {
            max_message_bytes: args
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(512 * 1024),
            outbox_max_bytes: args
                .outbox_max_bytes
                .or(file.outbox_max_bytes)
                .unwrap_or(1024 * 1024),
            max_channels_per_connection: args
                .max_channels_per_connection
                .or(file.max_channels_per_connection)
                .unwrap_or(128),
            rate_limit_per_second: args
                .rate_limit_per_second
                .or(file.rate_limit_per_second)
                .unwrap_or(100),
            rate_limit_burst: args
                .rate_limit_burst
                .or(file.rate_limit_burst)
                .unwrap_or(200),
            handshake_timeout: args
                .handshake_timeout
                .or(file.handshake_timeout)
                .unwrap_or(Duration::from_secs(10)),
            max_pending_handshakes: args
                .max_pending_handshakes
                .or(file.max_pending_handshakes)
                .unwrap_or(4096),
            max_header_bytes: args
                .max_header_bytes
                .or(file.max_header_bytes)
                .unwrap_or(64 * 1024),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes < 1024 {
            return invalid("GATEWAY_MAX_MESSAGE_BYTES must be at least 1024");
        }
        if self.outbox_max_bytes < 16 * 1024 {
            return invalid("GATEWAY_OUTBOX_MAX_BYTES must be at least 16384");
        }
        if self.max_channels_per_connection == 0 {
            return invalid("GATEWAY_MAX_CHANNELS_PER_CONNECTION must be at least 1");
        }
        if self.rate_limit_per_second == 0 || self.rate_limit_burst == 0 {
            return invalid(
                "GATEWAY_RATE_LIMIT_PER_SECOND and GATEWAY_RATE_LIMIT_BURST must be at least 1",
            );
        }
        if self.handshake_timeout.is_zero() {
            return invalid("GATEWAY_HANDSHAKE_TIMEOUT must be more than 0s");
        }
        if self.max_pending_handshakes == 0 {
            return invalid("GATEWAY_MAX_PENDING_HANDSHAKES must be at least 1");
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return invalid(format!(
                "GATEWAY_MAX_HEADER_BYTES must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"
            ));
        }
        Ok(())
    }
}

/// The allowed browser origins, without trailing slashes.
fn allowed_origins(args: &Args, file: &FileConfig) -> Vec<String> {
    let origins = args
        .allowed_origins
        .as_ref()
        .or(file.allowed_origins.as_ref());
    origins
        .into_iter()
        .flatten()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

/// The TLS certificate and key files: both or neither.
fn tls_files(args: &Args, file: &FileConfig) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let cert = args.tls_cert.clone().or(file.tls_cert.clone());
    let key = args.tls_key.clone().or(file.tls_key.clone());
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        _ => invalid("set both GATEWAY_TLS_CERT and GATEWAY_TLS_KEY, or neither"),
    }
}

/// The flag or variable, else the file's value, else the default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// A configuration error with `message`.
fn invalid<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message.into()))
}

fn read_file(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.clone(),
        source: Box::new(source),
    })
}

fn default_node_id() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
