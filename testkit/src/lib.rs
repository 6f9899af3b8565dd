//! What the workspace's tests, doc examples and benchmarks start: scratch directories, free
//! loopback ports, a real `redis-server`, and the workspace's own binaries.
//!
//! Layout:
//! - `temp`: [`TempDir`], a scratch directory kept when a test fails.
//! - `ports`: [`free_port`] and [`free_addrs`], loopback ports free when asked.
//! - `redis`: [`RedisServer`], a `redis-server` without persistence on a free port that a test
//!   can kill and restart (or a Redis Sentinel), and [`with_redis`], which runs a doc example
//!   against one.
//! - `redis_cluster`: [`RedisCluster`], a Redis Cluster of such servers, masters and replicas.
//! - `binaries`: [`binary`], the workspace's binaries built once per process with the caller's
//!   cargo profile ([`build_binaries`], [`profile_dir`]).
//! - `websocket`: [`RawWebSocket`], a raw WebSocket client with permessage-deflate that shows
//!   the wire (RSV bits, frame sizes) and sends hand-made frames.
//!
//! Every constructor that a benchmark uses returns an [`std::io::Result`]; the panicking ones
//! are conveniences for tests.

mod binaries;
mod ports;
mod redis;
mod redis_cluster;
mod temp;
mod websocket;

pub use binaries::{binary, build_binaries, profile_dir};
pub use ports::{free_addrs, free_port};
pub use redis::{RedisServer, with_redis};
pub use redis_cluster::RedisCluster;
pub use temp::TempDir;
pub use websocket::{Frame, Handshake, Offer, RawWebSocket};
