//! The gateway binary: configuration, logging, listeners and signals.

use anyhow::Context;
use clap::Parser;
use gateway::config::{Args, Config, LogFormat};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// jemalloc, with its background threads on: they give freed memory back to the system within
/// seconds, also while the gateway is idle. glibc's allocator kept what every wave of
/// connections had freed, in per-thread arenas too fragmented to trim (docs/benchmarks.md,
/// "Memory after churn").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load(Args::parse()).context("configuration")?;
    // One TLS provider for every rustls user in the process (rediss:// connections).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_from_env("GATEWAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the public listener to {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener to {}", config.admin_listen))?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    };
    gateway::run(config, public, admin, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
