//! End-to-end test harness: real gateway processes, real WebSocket clients.
//!
//! Layout:
//! - `gateway`: [`GatewayConfig`] (environment, config files) and
//!   [`TestGateway`], the gateway binary run as a child process on free local ports, with its
//!   admin API (`publish`, `metrics`, …) and its output kept for failing tests.
//! - `client`: [`TestClient`], a WebSocket client with reads that time out
//!   loudly, request/reply by `id`, close-code checks and a slow-reader mode.
//! - `token`: test JWTs ([`token`], [`TokenBuilder`]) and asymmetric
//!   [`KeyPair`]s made with `openssl`.
//! - `checks`: assertions on the shapes the contract promises (event and error frames, HTTP
//!   errors, timestamps, metrics).
//! - `proxy`: [`StallProxy`], a TCP proxy whose connections can be made half-open, and that
//!   counts the bytes it carries each way.
//! - `jwks_server`: [`JwksServer`], an identity provider's JWKS endpoint whose document,
//!   status and availability the test controls.
//! - `prometheus`: [`TestPrometheus`], a real Prometheus scraping test gateways, and
//!   [`promtool`].
//! - from the `testkit` crate, shared with the gateway's tests, the doc examples and the
//!   benchmarks: [`TempDir`] (scratch directories kept when a test fails), [`free_port`],
//!   [`TestRedis`] (a real `redis-server` on a free port that a test can kill and restart) and
//!   [`binary`] (the workspace's binaries built with the test's profile).
//!
//! Every test starts its own gateway; they run in parallel. The gateway binary is built once
//! per test process with the test's own cargo profile (or taken from `$E2E_GATEWAY_BIN`);
//! `$E2E_GATEWAY_LOG` overrides the gateway's log filter.

mod checks;
mod client;
mod gateway;
mod http_stream;
mod jwks_server;
mod prometheus;
mod proxy;
mod token;
mod wss;

pub use checks::{
    assert_error, assert_event, assert_http_error, assert_recent_rfc3339, assert_refused,
    eventually, metric_value, parse_rfc3339, subscribe_outcome,
};
pub use client::{
    CLOSE_TIMEOUT, Closed, HandshakeFailure, RECV_TIMEOUT, SLOW_READER_RECV_BUFFER, TestClient,
    brief, with_header, ws_request,
};
pub use gateway::{GatewayConfig, TestGateway};
pub use http_stream::{
    HttpRefusal, PollAnswer, Poller, SSE_RECV_TIMEOUT, SseEnd, SseMessage, SseStream,
    decode_cursor, get_poll, http_client,
};
pub use jwks_server::JwksServer;
pub use prometheus::{TestPrometheus, promtool, samples_of};
pub use proxy::StallProxy;
pub use reqwest::StatusCode;
pub use testkit::{
    Frame, Handshake, Offer, RawWebSocket, RedisServer as TestRedis, TempDir, binary, free_port,
};
pub use token::{
    KeyPair, TEST_API_KEY, TEST_JWT_SECRET, TokenBuilder, base64url, jwks, now_unix, token,
};
pub use wss::{Wss, connect_wss, tls_config, wss_recv};
