//! The local cluster script, `scripts/cluster.sh`: Redis, three gateways and nginx on loopback,
//! the topology of docker-compose.yml. Clients connect through the balancer over ws and over
//! wss (nginx terminating TLS with the development certificate the script makes), and every
//! socket receives the events published with `cluster.sh publish`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::{
    TempDir, TestClient, Wss, assert_event, brief, connect_wss, free_port, tls_config, wss_recv,
};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// How long `cluster.sh up` may take (it starts Redis, three gateways and nginx, and waits for
/// each to answer).
const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped gateway may drain before the guard kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port whose three gateway ports (base+1..3) and three admin ports (base+1001..1003)
/// are free, below the kernel's ephemeral range so outgoing connections do not take them.
fn free_base_port() -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20_000 + (seed.wrapping_add(attempt.wrapping_mul(37)) % 900) * 10;
        let ports = [1, 2, 3, 1001, 1002, 1003].map(|offset| base + offset);
        if ports.iter().all(|&p| port_is_free(p)) {
            return base;
        }
    }
    panic!("no free range of ports for the cluster's gateways");
}

/// The cluster started by `scripts/cluster.sh up` in a scratch directory on free ports;
/// `cluster.sh down` when dropped (also when the test fails), then every process the script
/// started is waited for, and killed if it lingers.
struct Cluster {
    env: Vec<(&'static str, String)>,
    lb_port: u16,
    tls_port: u16,
    dir: TempDir,
}

impl Cluster {
    async fn up(bin_dir: &Path) -> Self {
        let dir = TempDir::new("e2e-cluster");
        let lb_port = free_port();
        let tls_port = free_port();
        let env = vec![
            ("CLUSTER_DIR", dir.path().display().to_string()),
            ("CLUSTER_PORT", lb_port.to_string()),
            ("CLUSTER_TLS_PORT", tls_port.to_string()),
            ("CLUSTER_BASE_PORT", free_base_port().to_string()),
            ("CLUSTER_REDIS_PORT", free_port().to_string()),
            ("CLUSTER_BIN_DIR", bin_dir.display().to_string()),
        ];
        let cluster = Self {
            env,
            lb_port,
            tls_port,
            dir,
        };
        let (ok, output) = cluster.run(&["up"], UP_TIMEOUT).await;
        assert!(ok, "cluster.sh up failed:\n{output}\n{}", cluster.logs());
        assert!(
            output.contains(&format!("wss://localhost:{tls_port}/ws")),
            "cluster.sh up does not print the wss URL:\n{output}"
        );
        cluster
    }

    /// Runs `cluster.sh ARGS…` with the cluster's settings; whether it succeeded, and its
    /// stdout and stderr.
    async fn run(&self, args: &[&str], timeout: Duration) -> (bool, String) {
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(script())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            // The script makes up its own keys; nothing from the test's environment leaks in.
            .env_remove("GATEWAY_JWT_SECRET")
            .env_remove("GATEWAY_API_KEY")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("cannot run cluster.sh {args:?}: {e}"),
            Err(_) => panic!("cluster.sh {args:?} did not finish within {timeout:?}"),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// A token for `user` from `cluster.sh token`.
    async fn token(&self, user: &str) -> String {
        let (ok, output) = self.run(&["token", user], Duration::from_secs(30)).await;
        assert!(ok, "cluster.sh token {user} failed: {output}");
        output.trim().to_owned()
    }

    /// `cluster.sh publish ARGS…`, which must succeed.
    async fn publish(&self, args: &[&str]) {
        let mut all = vec!["publish"];
        all.extend_from_slice(args);
        let (ok, output) = self.run(&all, Duration::from_secs(30)).await;
        assert!(ok, "cluster.sh {all:?} failed: {output}");
    }

    fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={token}", self.lb_port)
    }

    fn certificate(&self) -> PathBuf {
        self.dir.path().join("tls/tls.crt")
    }

    /// The processes the script started, from its pid files.
    fn pids(&self) -> Vec<u32> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.push(self.dir.path().join("nginx/nginx.pid"));
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|ext| ext == "pid"))
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter_map(|text| text.trim().parse().ok())
            .collect()
    }

    /// The last lines of every log the cluster wrote.
    fn logs(&self) -> String {
        let mut out = String::new();
        let mut files = vec![
            self.dir.path().join("redis.log"),
            self.dir.path().join("nginx/error.log"),
        ];
        files.extend((1..=3).map(|i| self.dir.path().join(format!("gw-{i}.log"))));
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(30);
            out.push_str(&format!(
                "---- {} ----\n{}\n",
                file.display(),
                lines[start..].join("\n")
            ));
        }
        out
    }
}

fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let pids = self.pids();
        let status = std::process::Command::new("bash")
            .arg(script())
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("cluster.sh down failed: {status:?}");
        }
        // The gateways drain on SIGTERM; wait for them, then kill what is left.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in pids.into_iter().filter(|&pid| alive(pid)) {
            eprintln!("process {pid} of the cluster outlived `cluster.sh down`; killing it");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Sends `frame` with an `id` and returns the next frame, which must be the reply with that id
/// (nothing else is sent to this connection meanwhile).
async fn wss_request(ws: &mut Wss, mut frame: Value, id: u64) -> Value {
    frame["id"] = json!(id);
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let reply = wss_recv(ws).await;
    assert_eq!(
        reply["id"],
        id,
        "expected the reply to {frame}, got {}",
        brief(&reply)
    );
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_balances_ws_and_wss_and_delivers_published_events() {
    // The binaries the harness builds: gateway and gateway-publish, side by side.
    let bin_dir = e2e::binary("gateway").parent().unwrap().to_path_buf();
    assert!(
        bin_dir.join("gateway-publish").exists(),
        "no gateway-publish next to the gateway in {}",
        bin_dir.display()
    );
    let cluster = Cluster::up(&bin_dir).await;
    let user = "cluster-42";
    let token = cluster.token(user).await;

    // Three connections through the balancer: least_conn gives each replica one.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = TestClient::connect(&cluster.ws_url(&token))
            .await
            .unwrap_or_else(|e| panic!("ws through the balancer: {e}"));
        assert_eq!(client.user_id(), user);
        clients.push(client);
    }
    let nodes: BTreeSet<&str> = clients.iter().map(TestClient::node_id).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["gw-1", "gw-2", "gw-3"]),
        "three connections through a least-connections balancer land on the three replicas"
    );

    // One through wss, trusting exactly the development certificate the script made.
    let mut wss = connect_wss(
        cluster.tls_port,
        &token,
        tls_config(Some(&cluster.certificate())),
    )
    .await
    .unwrap_or_else(|e| panic!("wss through the balancer: {e}"));
    let established = wss_recv(&mut wss).await;
    assert_eq!(
        established["type"], "connection_established",
        "{established}"
    );
    assert_eq!(established["user_id"], user);

    // Without that certificate the TLS handshake must fail: the client really verifies.
    let untrusted = connect_wss(cluster.tls_port, &token, tls_config(None)).await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the development certificate connected"
    );

    for client in &mut clients {
        client.subscribe_ok(&["announcements"]).await;
    }
    let reply = wss_request(
        &mut wss,
        json!({"type": "subscribe", "channels": ["announcements"]}),
        1,
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channels"], json!(["announcements"]), "{reply}");

    // To the user: every connection of the user, on every replica and through both ports.
    let data = json!({"photo": "p1", "faces": 3});
    cluster
        .publish(&[
            "--user",
            user,
            "--event",
            "photo_ready",
            "--data",
            &data.to_string(),
        ])
        .await;
    for client in &mut clients {
        assert_event(
            &client.recv().await,
            "photo_ready",
            Some("#cluster-42"),
            &data,
        );
    }
    assert_event(
        &wss_recv(&mut wss).await,
        "photo_ready",
        Some("#cluster-42"),
        &data,
    );

    // To a channel the four subscribed to.
    let news = json!({"headline": "up"});
    cluster
        .publish(&[
            "--channel",
            "announcements",
            "--event",
            "news",
            "--data",
            &news.to_string(),
        ])
        .await;
    for client in &mut clients {
        assert_event(&client.recv().await, "news", Some("announcements"), &news);
    }
    assert_event(
        &wss_recv(&mut wss).await,
        "news",
        Some("announcements"),
        &news,
    );

    let _ = wss.close(None).await;
    for client in clients {
        client.close().await;
    }
}
