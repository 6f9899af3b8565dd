//! WebSocket over TLS for tests: a rustls client that trusts exactly the given certificates.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream, client_async_tls_with_config};

use crate::RECV_TIMEOUT;

/// A WebSocket over TLS.
pub type Wss = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A rustls client configuration that trusts exactly the certificates in `pem` (none when
/// `None`).
pub fn tls_config(pem: Option<&Path>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = pem {
        for cert in CertificateDer::pem_file_iter(pem)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", pem.display()))
        {
            let cert = cert.unwrap_or_else(|e| panic!("bad PEM in {}: {e}", pem.display()));
            roots
                .add(cert)
                .unwrap_or_else(|e| panic!("unusable certificate: {e}"));
        }
        assert!(!roots.is_empty(), "no certificate in {}", pem.display());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("no TLS versions: {e}"))
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Opens `wss://localhost:<port>/ws?token=…` over a TCP connection to 127.0.0.1 (the name
/// `localhost` is what the certificate is checked against).
pub async fn connect_wss(
    port: u16,
    token: &str,
    config: rustls::ClientConfig,
) -> Result<Wss, tokio_tungstenite::tungstenite::Error> {
    let request = format!("wss://localhost:{port}/ws?token={token}")
        .into_client_request()
        .unwrap_or_else(|e| panic!("bad wss URL: {e}"));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to port {port}: {e}"));
    let connector = Connector::Rustls(Arc::new(config));
    let handshake = client_async_tls_with_config(request, tcp, None, Some(connector));
    match tokio::time::timeout(RECV_TIMEOUT, handshake).await {
        Ok(result) => result.map(|(ws, _response)| ws),
        Err(_) => panic!("no answer to the wss upgrade within {RECV_TIMEOUT:?}"),
    }
}

/// The next JSON text frame of a wss connection, skipping pings.
pub async fn wss_recv(ws: &mut Wss) -> Value {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame on the wss connection within {RECV_TIMEOUT:?}"));
        match next {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("not JSON: {e}: {text}"));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            other => panic!("the wss connection ended or sent something else: {other:?}"),
        }
    }
}
