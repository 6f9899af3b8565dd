//! Bus topics as Redis command arguments, written straight into the command's buffer: a
//! publish then builds no topic string of its own.

use std::io::Write;

use redis::{RedisWrite, ToRedisArgs};

use crate::wire::{Target, Topics};

/// A message's topic (`<prefix>:ch:<channel>` and the like) as one argument.
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
