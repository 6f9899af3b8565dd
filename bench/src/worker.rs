//! Client worker mode: the bench binary re-executed as `bench worker --plan <json>` holds a
//! share of the connections, so that no process needs more than its 20,000 open files. It
//! takes [`Command`]s on stdin and writes [`Report`]s on stdout, one JSON object per line; it
//! exits when told to or when its stdin closes (the driver is gone).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::client::{Client, SlowMode, socket_addr_of};
use crate::plan::{Command, Plan, Report};
use crate::stats::Shared;

/// How often progress is reported while connecting.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Lifetime of the tokens the clients present.
const TOKEN_LIFETIME_S: u64 = 6 * 3600;

/// Runs a worker with the plan given as JSON; does not return until told to quit.
pub(crate) fn main(plan: &str) -> Result<()> {
    let plan: Plan = serde_json::from_str(plan).context("the worker's --plan")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads.max(1))
        .enable_all()
        .build()
        .context("starting the worker's runtime")?;
    let result = runtime.block_on(run(plan));
    if let Err(error) = &result {
        emit(&Report::Failed {
            message: format!("{error:#}"),
        });
    }
    // Exiting drops every socket at once; no need to wait for 19,000 tasks to unwind.
    std::process::exit(i32::from(result.is_err()));
}

fn emit(report: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, report);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// An HS256 token for user `sub`, signed with `secret`, valid for [`TOKEN_LIFETIME_S`].
pub(crate) fn mint(secret: &str, sub: &str) -> Result<String> {
    let key = EncodingKey::from_secret(secret.as_bytes());
    mint_with(&key, sub, token_expiry())
}

fn token_expiry() -> u64 {
    crate::measure::unix_nanos() / 1_000_000_000 + TOKEN_LIFETIME_S
}

fn mint_with(key: &EncodingKey, sub: &str, exp: u64) -> Result<String> {
    let claims = Claims {
        sub: sub.to_owned(),
        exp,
    };
    jsonwebtoken::encode(&Header::default(), &claims, key).context("minting")
}

async fn run(plan: Plan) -> Result<()> {
    let targets = plan
        .targets
        .iter()
        .map(|url| Ok((url.clone(), socket_addr_of(url)?)))
        .collect::<Result<Vec<_>>>()?;
    let targets = Arc::new(targets);
    let key = EncodingKey::from_secret(plan.secret.as_bytes());
    let exp = token_expiry();
    let mut clients = Vec::with_capacity(plan.count);
    for i in plan.first..plan.first + plan.count {
        let token = mint_with(&key, &Plan::user(i), exp)?;
        let slow = plan.is_slow(i);
        clients.push(Client {
            index: i,
            token,
            channels: plan.channels_of(i),
            source: plan.source_ips[i % plan.source_ips.len().max(1)],
            targets: Arc::clone(&targets),
            target: plan.target_of(i),
            slow,
            recv_buffer: slow.then_some(plan.slow_recv_buffer),
            trickle: Duration::from_millis(plan.slow_read_pause_ms),
            reconnect_jitter_ms: plan.reconnect_jitter_ms,
        });
    }
    let mut commands = read_commands();
    emit(&Report::Ready);

    let shared = Arc::new(Shared::new());
    let (slow_tx, slow_rx) = watch::channel(SlowMode::Reading);
    let limit = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let total = plan.count;
    while let Some(command) = commands.recv().await {
        match command {
            Command::Connect => {
                let spawner = {
                    let shared = Arc::clone(&shared);
                    let limit = Arc::clone(&limit);
                    let slow_rx = slow_rx.clone();
                    let clients = std::mem::take(&mut clients);
                    async move {
                        for client in clients {
                            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                                return;
                            };
                            tokio::spawn(client.run(Arc::clone(&shared), permit, slow_rx.clone()));
                        }
                    }
                };
                tokio::spawn(spawner);
                tokio::spawn(report_progress(Arc::clone(&shared), total));
            }
            Command::Snapshot => emit(&Report::Snapshot(shared.snapshot())),
            Command::Count => emit(&Report::Count {
                deliveries: shared.deliveries(),
            }),
            Command::StopSlow => {
                let _ = slow_tx.send(SlowMode::Stopped);
            }
            Command::ResumeSlow => {
                let _ = slow_tx.send(SlowMode::Resumed);
            }
            Command::TrickleSlow => {
                let _ = slow_tx.send(SlowMode::Trickle);
            }
            Command::Quit => break,
        }
    }
    Ok(())
}

/// Commands from stdin; `Quit` when it closes or says something unreadable.
fn read_commands() -> mpsc::UnboundedReceiver<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    if tx.send(command).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    emit(&Report::Failed {
                        message: format!("unreadable command {line:?}: {e}"),
                    });
                    break;
                }
            }
        }
        let _ = tx.send(Command::Quit);
    });
    rx
}

async fn report_progress(shared: Arc<Shared>, total: usize) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tick.tick().await;
        let connected = shared.connected_count();
        let failed = shared.failed_count();
        if connected + failed >= total {
            emit(&Report::Connected {
                ok: connected,
                failed,
                done_ns: shared.last_done_ns(),
                handshake: shared.handshake(),
                first_error: shared.first_error(),
            });
            return;
        }
        emit(&Report::Progress { connected, failed });
    }
}
