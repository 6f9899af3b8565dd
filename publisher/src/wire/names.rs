//! Every Redis name of a deployment: the pub/sub topics ([`Topics`]) and the keys ([`Keys`]),
//! all under the deployment's prefix (`GATEWAY_REDIS_PREFIX`, `gw` by default).

use std::io::Write;

use redis::{RedisWrite, ToRedisArgs};

use super::Target;

/// Names of bus topics (Redis pub/sub channels) under a deployment's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics under `prefix` (`gw` by default), so several deployments can share one Redis.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys under the same prefix.
    pub fn keys(&self) -> Keys<'_> {
        Keys {
            prefix: &self.prefix,
        }
    }

    /// The topic of a channel: `<prefix>:ch:<channel>`.
    pub fn channel(&self, channel: &str) -> String {
        self.for_target(Target::Channel(channel))
    }

    /// The topic of a client type: `<prefix>:ct:<client_type>`.
    pub fn client_type(&self, client_type: &str) -> String {
        self.for_target(Target::ClientType(client_type))
    }

    /// The topic every node listens on for broadcasts: `<prefix>:broadcast`.
    pub fn broadcast(&self) -> String {
        self.for_target(Target::Broadcast)
    }

    /// The topic of cluster-wide questions to every node: `<prefix>:ctl`.
    pub fn control(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// The topic on which `node` gets the answers to its questions: `<prefix>:ctl:<node>`.
    pub fn control_reply(&self, node: &str) -> String {
        format!("{}:ctl:{node}", self.prefix)
    }

    /// The topic of `node`'s canaries on its subscription connection `connection`:
    /// `<prefix>:canary:<node>:<connection>`. Only that node subscribes to it.
    pub fn canary(&self, node: &str, connection: usize) -> String {
        format!("{}:canary:{node}:{connection}", self.prefix)
    }

    /// The topic a message goes to.
    pub fn for_target(&self, target: Target<'_>) -> String {
        // `concat` sizes the string once.
        self.target_parts(target).concat()
    }

    /// The pieces of [`Topics::for_target`], for writers that need no `String` of it.
    pub fn target_parts<'a>(&'a self, target: Target<'a>) -> [&'a str; 3] {
        match target {
            Target::Channel(channel) => [&self.prefix, ":ch:", channel],
            Target::ClientType(client_type) => [&self.prefix, ":ct:", client_type],
            Target::Broadcast => [&self.prefix, ":broadcast", ""],
        }
    }
}

/// Names of the Redis keys under a deployment's prefix. A channel's keys carry the channel as
/// a `{<channel>}` hash tag, so that they live in one cluster slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a> {
    prefix: &'a str,
}

impl Keys<'_> {
    /// The stream holding a channel's history: `<prefix>:{<channel>}:stream`.
    pub fn history_stream(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:stream", self.prefix)
    }

    /// The hash with a channel's last offset and epoch: `<prefix>:{<channel>}:meta`.
    pub fn history_meta(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.prefix)
    }

    /// The key remembering an idempotent publish: `<prefix>:{<channel>}:idem:<key>`.
    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{channel}}}:idem:{key}", self.prefix)
    }

    /// The hash the gateways write their settings to: `<prefix>:namespaces`, field =
    /// namespace, value = its [`HistoryPolicy`](super::HistoryPolicy), and the field
    /// [`IDEMPOTENCY_WINDOW_FIELD`](super::IDEMPOTENCY_WINDOW_FIELD).
    pub fn namespaces(&self) -> String {
        format!("{}:namespaces", self.prefix)
    }

    /// The sorted set of node leases: `<prefix>:nodes`, score = expiry in ms of Redis time.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The hash of a node's presence records: `<prefix>:node:<node>:presence`.
    pub fn node_presence(&self, node: &str) -> String {
        format!("{}:node:{node}:presence", self.prefix)
    }

    /// The set of users with connection slots on a node: `<prefix>:node:<node>:users`.
    pub fn node_users(&self, node: &str) -> String {
        format!("{}:node:{node}:users", self.prefix)
    }

    /// The hash of a user's connection slots by node: `<prefix>:user:<user>:connections`.
    pub fn user_connections(&self, user: &str) -> String {
        format!("{}:user:{user}:connections", self.prefix)
    }

    /// The claim of a dead node's clean-up by one survivor: `<prefix>:reap:<node>`.
    pub fn reap_claim(&self, node: &str) -> String {
        format!("{}:reap:{node}", self.prefix)
    }
}

/// A message's topic (`<prefix>:ch:<channel>` and the like) as one command argument, written
/// straight into the command's buffer: a publish then builds no topic string of its own.
pub(crate) struct TopicArg<'a>([&'a str; 3]);

impl<'a> TopicArg<'a> {
    /// The topic of `target` under `topics`' prefix.
    pub(crate) fn new(topics: &'a Topics, target: Target<'a>) -> Self {
        Self(topics.target_parts(target))
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(|part| part.len()).sum()
    }
}

impl ToRedisArgs for TopicArg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut arg = out.writer_for_next_arg();
        for part in self.0 {
            // The command's buffer is a Vec: writing to it cannot fail.
            let _ = arg.write_all(part.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_carry_the_prefix() {
        let topics = Topics::new("gw");
        assert_eq!(topics.channel("#42"), "gw:ch:#42");
        assert_eq!(topics.client_type("gui"), "gw:ct:gui");
        assert_eq!(topics.for_target(Target::Broadcast), "gw:broadcast");
        assert_eq!(topics.control(), "gw:ctl");
        assert_eq!(topics.control_reply("n1"), "gw:ctl:n1");
    }

    #[test]
    fn keys_carry_the_prefix_and_the_channel_hash_tag() {
        let topics = Topics::new("gw");
        let keys = topics.keys();
        assert_eq!(keys.history_stream("jobs"), "gw:{jobs}:stream");
        assert_eq!(keys.history_meta("jobs"), "gw:{jobs}:meta");
        assert_eq!(keys.idempotency("jobs", "k1"), "gw:{jobs}:idem:k1");
        assert_eq!(keys.namespaces(), "gw:namespaces");
        assert_eq!(keys.nodes(), "gw:nodes");
        assert_eq!(keys.node_presence("n1"), "gw:node:n1:presence");
        assert_eq!(keys.node_users("n1"), "gw:node:n1:users");
        assert_eq!(keys.user_connections("42"), "gw:user:42:connections");
        assert_eq!(keys.reap_claim("n1"), "gw:reap:n1");
    }

    #[test]
    fn a_topic_is_one_argument() {
        let topics = Topics::new("gw");
        let topic = TopicArg::new(&topics, Target::Channel("jobs"));
        assert_eq!(topic.len(), "gw:ch:jobs".len());
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(topic).arg("x");
        assert_eq!(
            publish.get_packed_command(),
            b"*3\r\n$7\r\nPUBLISH\r\n$10\r\ngw:ch:jobs\r\n$1\r\nx\r\n"
        );
        let broadcast = TopicArg::new(&topics, Target::Broadcast);
        assert_eq!(broadcast.to_redis_args(), vec![b"gw:broadcast".to_vec()]);
        let client_type = TopicArg::new(&topics, Target::ClientType("gui"));
        assert_eq!(client_type.to_redis_args(), vec![b"gw:ct:gui".to_vec()]);
    }
}
