//! Where a deployment's Redis is and how it is laid out: one server, a Redis Cluster, or a
//! master found through Sentinel (`GATEWAY_REDIS_MODE`, `GATEWAY_REDIS_URL`,
//! `GATEWAY_REDIS_SENTINEL_MASTER`). Gateways and publishers take the same settings.

use std::fmt;
use std::str::FromStr;

use crate::shared::SetupError;

/// How the Redis of a deployment is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// One Redis server (or a proxy that looks like one).
    #[default]
    Standalone,
    /// A Redis Cluster: channels travel over sharded pub/sub, keys carry hash tags.
    Cluster,
    /// A master and its replicas watched by Sentinel: the master is asked of the sentinels.
    Sentinel,
}

impl RedisMode {
    /// The setting's value: `standalone`, `cluster` or `sentinel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

impl fmt::Display for RedisMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RedisMode {
    type Err = SetupError;

    fn from_str(text: &str) -> Result<Self, SetupError> {
        match text {
            "standalone" => Ok(Self::Standalone),
            "cluster" => Ok(Self::Cluster),
            "sentinel" => Ok(Self::Sentinel),
            other => Err(SetupError::Topology(format!(
                "unknown Redis mode {other:?}: standalone, cluster or sentinel"
            ))),
        }
    }
}

/// A deployment's Redis: the mode, its URLs and, for Sentinel, the master's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTopology {
    mode: RedisMode,
    urls: Vec<String>,
    sentinel_master: Option<String>,
}

impl RedisTopology {
    /// One Redis server at `url`.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self {
            mode: RedisMode::Standalone,
            urls: vec![url.into()],
            sentinel_master: None,
        }
    }

    /// Reads the settings: `urls` is one URL (standalone), or a comma-separated list of the
    /// cluster's seed nodes or of the sentinels; `sentinel_master` names the master that the
    /// sentinels watch, and is required in sentinel mode only.
    pub fn parse(
        mode: RedisMode,
        urls: &str,
        sentinel_master: Option<&str>,
    ) -> Result<Self, SetupError> {
        let list: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        let problem = |text: String| Err(SetupError::Topology(text));
        if list.is_empty() {
            return problem("the Redis URL is empty".into());
        }
        if let Some(url) = list
            .iter()
            .find(|url| !(url.starts_with("redis://") || url.starts_with("rediss://")))
        {
            return problem(format!(
                "every Redis URL must start with redis:// or rediss://, got {url:?}"
            ));
        }
        if mode == RedisMode::Standalone && list.len() > 1 {
            return problem(
                "several Redis URLs need GATEWAY_REDIS_MODE=cluster or sentinel".into(),
            );
        }
        let master = sentinel_master.map(str::trim).filter(|m| !m.is_empty());
        match (mode, master) {
            (RedisMode::Sentinel, None) => {
                return problem(
                    "sentinel mode needs the master's name (GATEWAY_REDIS_SENTINEL_MASTER)".into(),
                );
            }
            (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
                return problem(
                    "GATEWAY_REDIS_SENTINEL_MASTER is for GATEWAY_REDIS_MODE=sentinel only".into(),
                );
            }
            _ => {}
        }
        Ok(Self {
            mode,
            urls: list,
            sentinel_master: master.map(str::to_owned),
        })
    }

    /// The mode.
    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// The URLs: one server, the seed nodes, or the sentinels.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The name of the master the sentinels watch, in sentinel mode.
    pub fn sentinel_master(&self) -> Option<&str> {
        self.sentinel_master.as_deref()
    }

    /// Whether any URL asks for TLS.
    pub fn uses_tls(&self) -> bool {
        self.urls.iter().any(|url| url.starts_with("rediss://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_clear_messages() {
        let cluster = RedisTopology::parse(
            RedisMode::Cluster,
            "redis://10.0.0.1:6379, redis://10.0.0.2:6379",
            None,
        )
        .unwrap();
        assert_eq!(cluster.urls().len(), 2);
        let sentinel =
            RedisTopology::parse(RedisMode::Sentinel, "redis://s1:26379", Some("main")).unwrap();
        assert_eq!(sentinel.sentinel_master(), Some("main"));
        let refused = [
            (RedisMode::Standalone, "redis://a,redis://b", None),
            (RedisMode::Cluster, "http://a", None),
            (RedisMode::Sentinel, "redis://s1:26379", None),
            (RedisMode::Cluster, "redis://a", Some("main")),
            (RedisMode::Cluster, " , ", None),
        ];
        for (mode, urls, master) in refused {
            let error = RedisTopology::parse(mode, urls, master).unwrap_err();
            assert!(matches!(error, SetupError::Topology(_)), "{urls}: {error}");
        }
        assert_eq!("cluster".parse::<RedisMode>().unwrap(), RedisMode::Cluster);
        assert!("clustered".parse::<RedisMode>().is_err());
    }
}
