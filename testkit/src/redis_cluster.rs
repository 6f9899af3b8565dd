//! A throwaway Redis Cluster of real `redis-server` processes on free loopback ports: masters,
//! each with its replicas, made with `redis-cli --cluster create`.

use std::io;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::redis::RedisServer;

/// How long the cluster may take to agree on its slots and replicas.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster; its servers are killed when it is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each (`cluster-node-timeout` 2 s, so
    /// that a dead master is replaced quickly) and waits until every node reports the cluster
    /// ok and every replica is in sync.
    pub async fn start(masters: usize, replicas: usize) -> io::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ];
            nodes.push(RedisServer::start_with(&args).await?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let cluster = Self { nodes };
        cluster.wait_until_formed(masters).await?;
        Ok(cluster)
    }

    /// Waits until every live node reports `cluster_state:ok`, `masters` masters own the slots,
    /// and every replica's link to its master is up.
    pub async fn wait_until_formed(&self, masters: usize) -> io::Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            if self.is_formed(masters).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the Redis Cluster did not form within {FORM_TIMEOUT:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn is_formed(&self, masters: usize) -> bool {
        let mut live_masters = 0;
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            if !node
                .cli(&["CLUSTER", "INFO"])
                .await
                .contains("cluster_state:ok")
            {
                return false;
            }
            let replication = node.cli(&["INFO", "replication"]).await;
            if replication.contains("role:master") {
                live_masters += 1;
            } else if !replication.contains("master_link_status:up") {
                return false;
            }
        }
        live_masters == masters
    }

    /// The seed list for `GATEWAY_REDIS_URL`: every node's URL, comma-separated.
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }

    /// Every node, masters and replicas.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The live nodes that are masters now.
    pub async fn masters(&self) -> Vec<&RedisServer> {
        let mut masters = Vec::new();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            if node
                .cli(&["INFO", "replication"])
                .await
                .contains("role:master")
            {
                masters.push(node);
            }
        }
        masters
    }

    /// The master serving `key`'s slot now: the one node that answers for the key rather
    /// than redirecting (`MOVED`).
    pub async fn master_of(&self, key: &str) -> Option<&RedisServer> {
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let answer = node.cli(&["EXISTS", key]).await;
            if matches!(answer.trim(), "0" | "1") {
                return Some(node);
            }
        }
        None
    }

    /// The node at index `index` of [`RedisCluster::nodes`], to kill or fail over.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }
}
