//! Every Redis name of a deployment: the pub/sub topics ([`Topics`]) and the keys ([`Keys`]),
//! all under the deployment's prefix (`GATEWAY_REDIS_PREFIX`, `gw` by default).
//!
//! On a Redis Cluster (`GATEWAY_REDIS_MODE=cluster`) the names carry hash tags: a channel's
//! topic `<prefix>:ch:{<channel>}` shares the slot of its history keys, so the publish script
//! can `SPUBLISH` it, and the node registry's keys all carry `{<prefix>}`, so the scripts that
//! touch several of them run in one slot.

use std::io::Write;

use redis::{RedisWrite, ToRedisArgs};

use super::Target;

/// Names of bus topics (Redis pub/sub channels) under a deployment's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    sharded: bool,
}

impl Topics {
    /// Topics under `prefix` (`gw` by default), so several deployments can share one Redis.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            sharded: false,
        }
    }

    /// Topics under `prefix` on a Redis Cluster: channels travel over sharded pub/sub, and
    /// every name carries the hash tag that puts it in the right slot.
    pub fn sharded(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            sharded: true,
        }
    }

    /// Whether channels travel over sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`).
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// Whether `topic` travels over sharded pub/sub (a channel's topic, or a sharded canary):
    /// true only in cluster mode.
    pub fn is_sharded_topic(&self, topic: &str) -> bool {
        let Some(rest) = topic.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        self.sharded
            && (rest.starts_with(":ch:{") || (rest.starts_with(":canary:") && rest.ends_with('}')))
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys under the same prefix.
    pub fn keys(&self) -> Keys<'_> {
        Keys {
            prefix: &self.prefix,
            sharded: self.sharded,
        }
    }

    /// The topic of a channel: `<prefix>:ch:<channel>`, or `<prefix>:ch:{<channel>}` in
    /// cluster mode.
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
        format!("{}{connection}", self.canary_prefix(node))
    }

    /// What every canary topic of `node` starts with: `<prefix>:canary:<node>:`.
    pub fn canary_prefix(&self, node: &str) -> String {
        format!("{}:canary:{node}:", self.prefix)
    }

    /// The sharded topic of `node`'s canaries through the cluster slot that `tag` hashes to:
    /// `<prefix>:canary:<node>:{<tag>}`. Only that node subscribes to it.
    pub fn sharded_canary(&self, node: &str, tag: &str) -> String {
        format!("{}{{{tag}}}", self.canary_prefix(node))
    }

    /// The topic a message goes to.
    pub fn for_target(&self, target: Target<'_>) -> String {
        // `concat` sizes the string once.
        self.target_parts(target).concat()
    }

    /// The pieces of [`Topics::for_target`], for writers that need no `String` of it.
    pub fn target_parts<'a>(&'a self, target: Target<'a>) -> [&'a str; 4] {
        match target {
            Target::Channel(channel) if self.sharded => [&self.prefix, ":ch:{", channel, "}"],
            Target::Channel(channel) => [&self.prefix, ":ch:", channel, ""],
            Target::ClientType(client_type) => [&self.prefix, ":ct:", client_type, ""],
            Target::Broadcast => [&self.prefix, ":broadcast", "", ""],
        }
    }
}

/// Names of the Redis keys under a deployment's prefix. A channel's keys carry the channel as
/// a `{<channel>}` hash tag, so that they live in one cluster slot; in cluster mode the other
/// keys carry the prefix as their tag (`{<prefix>}:nodes`), so that they share one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a> {
    prefix: &'a str,
    sharded: bool,
}

impl Keys<'_> {
    /// `<prefix>:<rest>`, or `{<prefix>}:<rest>` in cluster mode.
    fn shared(&self, rest: std::fmt::Arguments<'_>) -> String {
        if self.sharded {
            format!("{{{}}}:{rest}", self.prefix)
        } else {
            format!("{}:{rest}", self.prefix)
        }
    }

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
        self.shared(format_args!("namespaces"))
    }

    /// The sorted set of node leases: `<prefix>:nodes`, score = expiry in ms of Redis time.
    pub fn nodes(&self) -> String {
        self.shared(format_args!("nodes"))
    }

    /// The hash of a node's presence records: `<prefix>:node:<node>:presence`.
    pub fn node_presence(&self, node: &str) -> String {
        self.shared(format_args!("node:{node}:presence"))
    }

    /// The set of users with connection slots on a node: `<prefix>:node:<node>:users`.
    pub fn node_users(&self, node: &str) -> String {
        self.shared(format_args!("node:{node}:users"))
    }

    /// The hash of a user's connection slots by node: `<prefix>:user:<user>:connections`.
    pub fn user_connections(&self, user: &str) -> String {
        self.shared(format_args!("user:{user}:connections"))
    }

    /// The claim of a dead node's clean-up by one survivor: `<prefix>:reap:<node>`.
    pub fn reap_claim(&self, node: &str) -> String {
        self.shared(format_args!("reap:{node}"))
    }
}

/// A message's topic (`<prefix>:ch:<channel>` and the like) as one command argument, written
/// straight into the command's buffer: a publish then builds no topic string of its own.
pub(crate) struct TopicArg<'a>([&'a str; 4]);

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
    fn cluster_names_carry_hash_tags() {
        let topics = Topics::sharded("gw");
        assert_eq!(topics.channel("jobs"), "gw:ch:{jobs}");
        assert!(topics.is_sharded_topic("gw:ch:{jobs}"));
        assert!(!topics.is_sharded_topic("gw:broadcast"));
        assert!(!Topics::new("gw").is_sharded_topic("gw:ch:jobs"));
        assert_eq!(topics.client_type("gui"), "gw:ct:gui");
        assert_eq!(topics.sharded_canary("n1", "7"), "gw:canary:n1:{7}");
        assert!(topics.is_sharded_topic("gw:canary:n1:{7}"));
        assert!(!topics.is_sharded_topic(&topics.canary("n1", 0)));
        let keys = topics.keys();
        assert_eq!(keys.history_stream("jobs"), "gw:{jobs}:stream");
        assert_eq!(keys.namespaces(), "{gw}:namespaces");
        assert_eq!(keys.nodes(), "{gw}:nodes");
        assert_eq!(keys.node_presence("n1"), "{gw}:node:n1:presence");
        assert_eq!(keys.node_users("n1"), "{gw}:node:n1:users");
        assert_eq!(keys.user_connections("42"), "{gw}:user:42:connections");
        assert_eq!(keys.reap_claim("n1"), "{gw}:reap:n1");
        let topic = TopicArg::new(&topics, Target::Channel("jobs"));
        assert_eq!(topic.to_redis_args(), vec![b"gw:ch:{jobs}".to_vec()]);
        // A channel's topic and keys hash to one slot, whatever braces a user id holds.
        for channel in ["jobs", "#a}b", "#{x}"] {
            let slot = redis::cluster_routing::Slot::for_key(topics.channel(channel));
            let stream = redis::cluster_routing::Slot::for_key(keys.history_stream(channel));
            assert_eq!(slot, stream, "{channel}");
        }
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
