//! Channel patterns from the `channels` claim and their wildcard matching.

use super::AuthError;

/// A channel pattern from the `channels` claim: `*` matches any run of characters within one `:`-separated segment (`room:*` matches `room:1`, not `room:1:x`; `*` alone matches `jobs` but not `room:1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelPattern(String);

impl ChannelPattern {
    /// Validates a pattern: 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]` plus `*`.
    pub(crate) fn parse(pattern: &str) -> Result<Self, AuthError> {
        let valid_byte = |b: u8| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b':' | b'#' | b'.' | b'@' | b'=' | b',' | b'-' | b'*'
                )
        };
        if pattern.is_empty() || pattern.len() > 255 || !pattern.bytes().all(valid_byte) {
            let shown = pattern
                .char_indices()
                .nth(64)
                .map_or(pattern, |(i, _)| &pattern[..i]);
            return Err(AuthError::InvalidClaims(format!(
                "invalid channel pattern {shown:?}: 1 to 255 bytes of [A-Za-z0-9_:#.@=,-*]"
            )));
        }
        Ok(Self(pattern.to_owned()))
    }

    /// Whether `channel` matches, segment by segment.
    pub(crate) fn matches(&self, channel: &str) -> bool {
        let mut pattern = self.0.split(':');
        let mut channel = channel.split(':');
        loop {
            match (pattern.next(), channel.next()) {
                (Some(p), Some(c)) if glob(p.as_bytes(), c.as_bytes()) => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// The pattern as written in the token.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Wildcard match of one segment: `*` matches any run of bytes (possibly empty).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&b) if b == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, from)) => {
                    p = star + 1;
                    t = from + 1;
                    backtrack = Some((star, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}
