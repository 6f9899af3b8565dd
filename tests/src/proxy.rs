//! A TCP proxy on loopback that can stall its connections without closing them: the
//! half-open connection a dead network path leaves behind, or a path that stops carrying one
//! direction for a while. It counts the bytes it carries each way, to show what a client
//! costs on the wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:<port>` to a target; [`StallProxy::stall`] freezes every connection open
/// at that moment (they stay open, nothing passes), while new connections pass normally;
/// [`StallProxy::pause_replies`] stops carrying the target's bytes back on every connection,
/// new ones too, until [`StallProxy::resume_replies`] (nothing is lost: it stops reading).
/// [`StallProxy::bytes_to_client`] and [`StallProxy::bytes_to_server`] count what passed.
pub struct StallProxy {
    port: u16,
    generation: Arc<AtomicU64>,
    to_client: Arc<AtomicU64>,
    to_server: Arc<AtomicU64>,
    replies_paused: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl StallProxy {
    /// Starts forwarding to `target_port` on loopback.
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let generation = Arc::new(AtomicU64::new(0));
        let current = Arc::clone(&generation);
        let (replies_paused, paused) = watch::channel(false);
        let to_client = Arc::new(AtomicU64::new(0));
        let to_server = Arc::new(AtomicU64::new(0));
        let (client_bound, server_bound) = (Arc::clone(&to_client), Arc::clone(&to_server));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let mine = current.load(Ordering::Acquire);
                let stalled = Arc::new(AtomicBool::new(false));
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                let (_, never_paused) = watch::channel(false);
                for (mut from, mut to, mut paused, carried) in [
                    (
                        Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(upstream_write) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                        never_paused,
                        Arc::clone(&server_bound),
                    ),
                    (
                        Box::new(upstream_read),
                        Box::new(client_write),
                        paused.clone(),
                        Arc::clone(&client_bound),
                    ),
                ] {
                    let current = Arc::clone(&current);
                    let stalled = Arc::clone(&stalled);
                    tokio::spawn(async move {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buffer).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // Held here while paused: nothing more is read, nothing is lost.
                            if paused.wait_for(|paused| !paused).await.is_err() {
                                break;
                            }
                            if current.load(Ordering::Acquire) != mine {
                                stalled.store(true, Ordering::Release);
                            }
                            if stalled.load(Ordering::Acquire) {
                                // Hold the socket open and swallow everything: half-open.
                                continue;
                            }
                            // Counted before the write: whatever the peer has read is counted.
                            carried.fetch_add(n as u64, Ordering::Relaxed);
                            if to.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                        if !stalled.load(Ordering::Acquire) {
                            let _ = to.shutdown().await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    });
                }
            }
        });
        Self {
            port,
            generation,
            to_client,
            to_server,
            replies_paused,
            accept,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes carried from the target to clients so far, all connections together.
    pub fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }

    /// Bytes carried from clients to the target so far, all connections together.
    pub fn bytes_to_server(&self) -> u64 {
        self.to_server.load(Ordering::Relaxed)
    }

    /// Freezes every connection open now; later connections pass.
    pub fn stall(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops carrying bytes from the target back to clients, on every connection.
    pub fn pause_replies(&self) {
        self.replies_paused.send_replace(true);
    }

    /// Carries the target's bytes again, those held meanwhile first.
    pub fn resume_replies(&self) {
        self.replies_paused.send_replace(false);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
