//! Publish one event to the gateways' Redis bus from a shell script.
//!
//! ```sh
//! gateway-publish --redis-url redis://127.0.0.1:6379 --user 42 --event photo_ready --data '{"photo":"p1"}'
//! echo '{"progress":45.5}' | gateway-publish --channel jobs --event job_progress
//! GATEWAY_REDIS_MODE=cluster GATEWAY_REDIS_URL=redis://10.0.0.1:6379,redis://10.0.0.2:6379 \
//!   gateway-publish --channel jobs --event job_done --data '{}'
//! ```

use std::io::Read;

use anyhow::{Context, bail};
use clap::Parser;
use publisher::{Event, Publisher, RedisMode, RedisTopology};
use serde_json::Value;

/// Publish one event to every gateway through Redis.
#[derive(Debug, Parser)]
#[command(name = "gateway-publish", version)]
struct Args {
    /// Redis URL of the gateways' bus: one server, or comma-separated cluster seed nodes or
    /// sentinels.
    #[arg(
        long,
        env = "GATEWAY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// How the Redis is laid out: standalone, cluster or sentinel.
    #[arg(long, env = "GATEWAY_REDIS_MODE", default_value = "standalone")]
    redis_mode: RedisMode,
    /// The master's name, in sentinel mode.
    #[arg(long, env = "GATEWAY_REDIS_SENTINEL_MASTER")]
    sentinel_master: Option<String>,
    /// Key and channel prefix of the deployment.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "gw")]
    prefix: String,
    /// Channel to publish to; repeat for several.
    #[arg(long, group = "target")]
    channel: Vec<String>,
    /// User to publish to (all their connections).
    #[arg(long, group = "target")]
    user: Option<String>,
    /// Client type to publish to.
    #[arg(long, group = "target")]
    client_type: Option<String>,
    /// Publish to every connection.
    #[arg(long, group = "target")]
    broadcast: bool,
    /// Event name (the frame's `type` at the client).
    #[arg(long)]
    event: String,
    /// JSON data; `-` or absent reads it from standard input.
    #[arg(long)]
    data: Option<String>,
    /// A client_id that must not receive the event.
    #[arg(long)]
    exclude_client: Option<String>,
    /// Publish at most once per key (channel and user events).
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = match args.data.as_deref() {
        Some("-") | None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading data from standard input")?;
            text
        }
        Some(text) => text.to_owned(),
    };
    let data: Value = serde_json::from_str(&text).context("data is not valid JSON")?;
    let event = if !args.channel.is_empty() {
        Event::to_channels(&args.channel, &args.event, &data)?
    } else if let Some(user) = &args.user {
        Event::to_user(user, &args.event, &data)?
    } else if let Some(client_type) = &args.client_type {
        Event::to_client_type(client_type, &args.event, &data)?
    } else if args.broadcast {
        Event::broadcast(&args.event, &data)?
    } else {
        bail!("name a target: --channel, --user, --client-type or --broadcast");
    };
    let event = match args.exclude_client {
        Some(client_id) => event.excluding(client_id),
        None => event,
    };
    let event = match args.idempotency_key {
        Some(key) => event.idempotent(key),
        None => event,
    };
    let topology = RedisTopology::parse(
        args.redis_mode,
        &args.redis_url,
        args.sentinel_master.as_deref(),
    )?;
    let publisher = Publisher::connect_to(&topology)?.with_prefix(args.prefix);
    let receipts = publisher.publish(&event).await.context("publishing")?;
    // One line per channel with its position, where history is kept: `jobs 42 1795…`.
    for receipt in receipts {
        if let (Some(channel), Some(position)) = (receipt.channel, receipt.position) {
            let duplicate = if receipt.duplicate { " duplicate" } else { "" };
            println!(
                "{channel} {} {}{duplicate}",
                position.offset, position.epoch
            );
        }
    }
    Ok(())
}
