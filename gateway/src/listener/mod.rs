//! The HTTP listeners' accept loop: socket options, TLS, the first request head within
//! `GATEWAY_HANDSHAKE_TIMEOUT`, a bound on connections still in their handshake, then HTTP/1.1
//! with upgrades, and a graceful stop.
//!
//! Connections that never finish their handshake (a slowloris) each hold a file descriptor:
//! they get a deadline, and at most `GATEWAY_MAX_PENDING_HANDSHAKES` of them are held at once.
//! Once a connection has sent its first head it is served by hyper, whose own header-read
//! timeout bounds the heads of later requests on a kept-alive connection; an upgraded
//! WebSocket is bounded by the `auth` frame timeout and the idle timeout instead.

mod head;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use self::head::{Head, Prefixed, read_head, refuse};
use crate::config::Limits;
use crate::metrics::{Metrics, Refusal};
use crate::protocol::http_error_bytes;

/// How long a refused connection is read from after its response, so the response is not
/// lost to a reset.
const LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error such as running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The certificate or key file could not be read or parsed.
    #[error("TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be used.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate and key do not make a usable TLS configuration.
    #[error("TLS certificate {path}: {source}")]
    TlsConfig {
        /// The certificate file.
        path: std::path::PathBuf,
        /// What rustls refused.
        #[source]
        source: rustls::Error,
    },
}

/// How a listener treats new connections.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Time for the TLS handshake and the first request head.
    pub(crate) handshake_timeout: Duration,
    /// Connections in their handshake at once.
    pub(crate) max_pending_handshakes: usize,
    /// Largest request head.
    pub(crate) max_header_bytes: usize,
    /// `TCP_USER_TIMEOUT`: unacknowledged data this old drops the connection.
    pub(crate) user_timeout: Option<Duration>,
}

impl Settings {
    /// The settings of `limits`, with `user_timeout` for the sockets.
    pub(crate) fn new(limits: &Limits, user_timeout: Option<Duration>) -> Self {
        Self {
            handshake_timeout: limits.handshake_timeout,
            max_pending_handshakes: limits.max_pending_handshakes,
            max_header_bytes: limits.max_header_bytes,
            user_timeout,
        }
    }
}

/// Loads a PEM certificate chain and key into a TLS acceptor that speaks HTTP/1.1.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ListenerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let file_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ListenerError::TlsFile { path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(file_error(cert))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(file_error(key))?;
    let config_error = |source| ListenerError::TlsConfig {
        path: cert.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What every connection task of one listener shares.
struct Shared {
    router: Router,
    http: auto::Builder<TokioExecutor>,
    settings: Settings,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
}

/// Serves `router` on `listener` until `stop` turns true, then lets open requests finish.
/// Aborting the returned task closes every connection it still serves.
pub(crate) fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<io::Result<()>> {
    let mut http = auto::Builder::new(TokioExecutor::new()).http1_only();
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.handshake_timeout)
        .max_buf_size(settings.max_header_bytes);
    let shared = Arc::new(Shared {
        router,
        http,
        settings,
        tls,
        metrics,
    });
    tokio::spawn(accept_loop(listener, shared, stop))
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let handshakes = Arc::new(Semaphore::new(shared.settings.max_pending_handshakes));
    let mut connections = JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stopping) => break,
            // A finished connection's task holds its memory until it is joined: joined at once,
            // not at the next accept, so a burst of connects leaves nothing behind it.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            shared.metrics.refused(Refusal::HandshakeLimit.label());
            refuse_busy(&tcp, shared.tls.is_none());
            continue;
        };
        set_socket_options(&tcp, shared.settings.user_timeout);
        connections.spawn(connection(tcp, permit, Arc::clone(&shared), stop.clone()));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Errors of one connection that the accept loop skips without pausing.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Tells a client over the handshake bound to come back later, without waiting for it.
fn refuse_busy(tcp: &TcpStream, plain: bool) {
    if plain {
        let response = http_error_bytes(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many connections are in their handshake: retry later",
        );
        let _ = tcp.try_write(&response);
    }
}

fn set_socket_options(tcp: &TcpStream, user_timeout: Option<Duration>) {
    // Frames are small and latency-bound: no Nagle delay behind an unacknowledged one.
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    // A peer that takes no bytes for this long is gone, even if it still acknowledges (a
    // stalled reader behind a zero window): the kernel drops the connection.
    if let Err(error) = socket2::SockRef::from(tcp).set_tcp_user_timeout(user_timeout) {
        tracing::debug!(%error, "could not set TCP_USER_TIMEOUT");
    }
}

/// One connection: its handshake under the deadline and the handshake bound, then HTTP.
/// A stop drops connections still in their handshake at once; served ones stop gracefully.
async fn connection(
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    let Some(acceptor) = &shared.tls else {
        return serve_http(tcp, deadline, permit, &shared, stop).await;
    };
    let mut stopping = stop.clone();
    let accepted = tokio::select! {
        accepted = timeout_at(deadline, acceptor.accept(tcp)) => accepted,
        () = stopped(&mut stopping) => return,
    };
    match accepted {
        Ok(Ok(tls)) => serve_http(tls, deadline, permit, &shared, stop).await,
        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => shared.metrics.refused(Refusal::HandshakeTimeout.label()),
    }
}

/// Reads the first head within the deadline, answers a bad one itself, and serves the rest.
async fn serve_http<S>(
    mut io: S,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_bytes = shared.settings.max_header_bytes;
    let head = tokio::select! {
        head = timeout_at(deadline, read_head(&mut io, max_bytes)) => head,
        () = stopped(&mut stop) => return,
    };
    let head = match head {
        Ok(Ok(Head::Complete(head))) => head,
        Ok(Ok(Head::Refused(refusal))) => {
            shared.metrics.refused(Refusal::RequestHead.label());
            refuse(&mut io, refusal.response()).await;
            return;
        }
        Ok(Ok(Head::Closed) | Err(_)) => return,
        Err(_) => {
            shared.metrics.refused(Refusal::HandshakeTimeout.label());
            let response = http_error_bytes(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request head did not arrive in time",
            );
            refuse(&mut io, response).await;
            return;
        }
    };
    drop(permit);
    let io = TokioIo::new(Prefixed::new(head, io));
    let service = TowerToHyperService::new(shared.router.clone());
    let served = shared.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = stopped(&mut stop) => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}
