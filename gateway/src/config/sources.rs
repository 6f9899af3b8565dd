//! Where settings come from: flags and `GATEWAY_*` variables ([`Args`]), and the TOML file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use publisher::RedisMode;
use serde::Deserialize;

use super::{LogFormat, NamespaceConfig};

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// A switch: `on`/`off` (or `true`/`false`).
fn on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{s:?} is neither \"on\" nor \"off\"")),
    }
}

/// Flags and environment variables. Every setting is optional here; defaults are applied in
/// [`Config::load`] after the TOML file.
#[derive(Debug, Default, Parser)]
#[command(name = "gateway", version, about = "Real-time WebSocket gateway")]
pub struct Args {
    /// TOML file with settings and namespaces.
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Public listener: /ws and /healthz [default: 0.0.0.0:8080].
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener: /metrics, /readyz, /api/* [default: 0.0.0.0:9090].
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// redis:// or rediss:// URL of the bus (in cluster and sentinel modes, a comma-separated
    /// list of seed nodes or sentinels); unset runs one node on the in-memory bus.
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// How the Redis is laid out: standalone, cluster or sentinel [default: standalone].
    #[arg(long, env = "GATEWAY_REDIS_MODE")]
    pub redis_mode: Option<RedisMode>,
    /// The master's name, in sentinel mode.
    #[arg(long, env = "GATEWAY_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// Prefix of every Redis key and channel [default: gw].
    #[arg(long, env = "GATEWAY_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Dedicated Redis connections for subscriptions [default: 2].
    #[arg(long, env = "GATEWAY_REDIS_SUBSCRIPTION_CONNECTIONS")]
    pub redis_subscription_connections: Option<usize>,
    /// Pooled Redis connections for publishing and commands [default: 8].
    #[arg(long, env = "GATEWAY_REDIS_POOL_SIZE")]
    pub redis_pool_size: Option<usize>,
    /// How often each subscription connection sends itself a canary through Redis [default: 5s].
    #[arg(long, env = "GATEWAY_BUS_CANARY_INTERVAL", value_parser = duration)]
    pub bus_canary_interval: Option<Duration>,
    /// How long a canary may take to come back before the connection is replaced [default: 3s].
    #[arg(long, env = "GATEWAY_BUS_CANARY_TIMEOUT", value_parser = duration)]
    pub bus_canary_timeout: Option<Duration>,
    /// This node's id [default: hostname plus a random suffix].
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// HMAC secret for HS256/384/512 tokens.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS*, PS*, ES256/384 or EdDSA tokens.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS document; the key is chosen by the token's `kid`.
    #[arg(long, env = "GATEWAY_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// An identity provider's JWKS endpoint (http or https), fetched at start, on a schedule
    /// and when a token names an unknown `kid`.
    #[arg(long, env = "GATEWAY_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Interval of the scheduled fetches of GATEWAY_JWKS_URL [default: 5m].
    #[arg(long, env = "GATEWAY_JWKS_REFRESH_INTERVAL", value_parser = duration)]
    pub jwks_refresh_interval: Option<Duration>,
    /// Least time between two fetches of GATEWAY_JWKS_URL for tokens with an unknown `kid`
    /// [default: 30s].
    #[arg(long, env = "GATEWAY_JWKS_MIN_REFRESH_INTERVAL", value_parser = duration)]
    pub jwks_min_refresh_interval: Option<Duration>,
    /// Required `aud` claim.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` [default: 5s].
    #[arg(long, env = "GATEWAY_JWT_LEEWAY", value_parser = duration)]
    pub jwt_leeway: Option<Duration>,
    /// Key for the admin API (`Authorization: Bearer <key>`).
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Comma-separated origins browsers may connect from; unset allows any.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Largest inbound frame in bytes [default: 524288].
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Bytes queued for one connection before it is closed as a slow consumer [default: 1048576].
    #[arg(long, env = "GATEWAY_OUTBOX_MAX_BYTES")]
    pub outbox_max_bytes: Option<usize>,
    /// Channels one connection may subscribe to [default: 128].
    #[arg(long, env = "GATEWAY_MAX_CHANNELS_PER_CONNECTION")]
    pub max_channels_per_connection: Option<usize>,
    /// Client frames per second per connection [default: 100].
    #[arg(long, env = "GATEWAY_RATE_LIMIT_PER_SECOND")]
    pub rate_limit_per_second: Option<u32>,
    /// Burst of client frames above the rate [default: 200].
    #[arg(long, env = "GATEWAY_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Time a new connection has for its TLS handshake and first request head [default: 10s].
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", value_parser = duration)]
    pub handshake_timeout: Option<Duration>,
    /// Connections that may be in their handshake at once, per listener [default: 4096].
    #[arg(long, env = "GATEWAY_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// Largest HTTP request head (request line and headers) in bytes [default: 65536].
    #[arg(long, env = "GATEWAY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// permessage-deflate for WebSocket clients that offer it: `on` or `off` [default: off].
    #[arg(long, env = "GATEWAY_WS_COMPRESSION", value_parser = on_off)]
    pub ws_compression: Option<bool>,
    /// Frames shorter than this many bytes go uncompressed [default: 256].
    #[arg(long, env = "GATEWAY_WS_COMPRESSION_MIN_BYTES")]
    pub ws_compression_min_bytes: Option<usize>,
    /// Interval of server pings, and the interval advised to clients [default: 25s].
    #[arg(long, env = "GATEWAY_HEARTBEAT_INTERVAL", value_parser = duration)]
    pub heartbeat_interval: Option<Duration>,
    /// A connection silent this long is closed [default: 60s].
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", value_parser = duration)]
    pub idle_timeout: Option<Duration>,
    /// Longest a shutdown waits for clients to be told and closed [default: 20s].
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT", value_parser = duration)]
    pub drain_timeout: Option<Duration>,
    /// Upper bound of the jittered `reconnect_after_ms` sent when draining [default: 5s].
    #[arg(long, env = "GATEWAY_DRAIN_RECONNECT_MAX", value_parser = duration)]
    pub drain_reconnect_max: Option<Duration>,
    /// PEM certificate chain: the public listener serves wss itself (with GATEWAY_TLS_KEY).
    #[arg(long, env = "GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of GATEWAY_TLS_CERT.
    #[arg(long, env = "GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How long a node's lease lasts; a node silent this long is dropped from the cluster
    /// view [default: 10s].
    #[arg(long, env = "GATEWAY_NODE_LEASE", value_parser = duration)]
    pub node_lease: Option<Duration>,
    /// Connections one user may hold across the cluster; 0 is unlimited [default: 0].
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// How long an idempotency key is remembered [default: 5m].
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_WINDOW", value_parser = duration)]
    pub idempotency_window: Option<Duration>,
    /// Log format [default: text].
    #[arg(long, env = "GATEWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The TOML file: the same settings as [`Args`], in snake_case, plus namespaces.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<SocketAddr>,
    pub(super) admin_listen: Option<SocketAddr>,
    pub(super) redis_url: Option<String>,
    #[serde(default, deserialize_with = "redis_mode")]
    pub(super) redis_mode: Option<RedisMode>,
    pub(super) redis_sentinel_master: Option<String>,
    pub(super) redis_prefix: Option<String>,
    pub(super) redis_subscription_connections: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) bus_canary_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) bus_canary_timeout: Option<Duration>,
    pub(super) redis_pool_size: Option<usize>,
    pub(super) node_id: Option<String>,
    pub(super) jwt_public_key_file: Option<PathBuf>,
    pub(super) jwks_file: Option<PathBuf>,
    pub(super) jwks_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) jwks_refresh_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) jwks_min_refresh_interval: Option<Duration>,
    pub(super) jwt_audience: Option<String>,
    pub(super) jwt_issuer: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) jwt_leeway: Option<Duration>,
    pub(super) allowed_origins: Option<Vec<String>>,
    pub(super) max_message_bytes: Option<usize>,
    pub(super) ws_compression: Option<bool>,
    pub(super) ws_compression_min_bytes: Option<usize>,
    pub(super) outbox_max_bytes: Option<usize>,
    pub(super) max_channels_per_connection: Option<usize>,
    pub(super) rate_limit_per_second: Option<u32>,
    pub(super) rate_limit_burst: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) max_pending_handshakes: Option<usize>,
    pub(super) max_header_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) heartbeat_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) drain_reconnect_max: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) idempotency_window: Option<Duration>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    pub(super) node_lease: Option<Duration>,
    pub(super) max_connections_per_user: Option<usize>,
    pub(super) log_format: Option<LogFormat>,
    #[serde(default)]
    pub(super) namespaces: HashMap<String, NamespaceConfig>,
}

/// Serde helpers for optional humantime durations ("10m", "25s") in the TOML file.
pub(super) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Reads `redis_mode = "cluster"` in the TOML file, with the mode's own message on a typo.
fn redis_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RedisMode>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .transpose()
}
