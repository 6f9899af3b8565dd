//! An identity provider's JWKS endpoint on loopback: it serves a document the test can change,
//! answers an error status or a broken body on demand, counts its requests, and can be stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head read before answering.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A plain HTTP/1.1 server answering every request with the same status and body.
#[derive(Debug)]
pub struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Starts on a free loopback port, serving `document` with 200.
    pub async fn start(document: &Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("cannot bind the JWKS server: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("JWKS server address: {e}"));
        let answer = Arc::new(Mutex::new((200, document.to_string())));
        let requests = Arc::new(AtomicUsize::new(0));
        let (shared, count) = (Arc::clone(&answer), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer_one(socket, Arc::clone(&shared), Arc::clone(&count)));
            }
        });
        Self {
            addr,
            answer,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:<port>/.well-known/jwks.json`
    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Serves `document` with 200 from now on.
    pub fn serve(&self, document: &Value) {
        self.answer_with(200, &document.to_string());
    }

    /// Answers `status` with `body` from now on.
    pub fn answer_with(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap_or_else(PoisonError::into_inner) = (status, body.to_owned());
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Closes the port: connections to it are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_one(
    mut socket: TcpStream,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) if head.len() + n > MAX_HEAD_BYTES => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let (status, body) = answer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let reply = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        if status < 400 { "OK" } else { "Error" },
        body.len()
    );
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.shutdown().await;
}
