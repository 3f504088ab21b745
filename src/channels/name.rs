//! Channel names: what a valid one is, and its namespace.

use std::sync::Arc;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;

/// A valid channel name: 1 to 255 bytes of ASCII letters, digits and `_ - . : @ / =`. Cloning
/// one is a reference-count bump, so the hub and every subscriber share one copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a channel name is 1 to 255 bytes of ASCII letters, digits and _ - . : @ / =")]
pub struct InvalidChannel;

impl ChannelName {
    pub fn parse(name: &str) -> Result<Self, InvalidChannel> {
        if is_channel_name(name) {
            Ok(ChannelName(Arc::from(name)))
        } else {
            Err(InvalidChannel)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`; `None` for a name in the default namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(namespace, _)| namespace)
    }
}

impl std::fmt::Display for ChannelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

pub fn is_channel_name(name: &str) -> bool {
    (1..=MAX_CHANNEL_BYTES).contains(&name.len()) && name.bytes().all(is_channel_byte)
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_namespaces() {
        let name = ChannelName::parse("chat:room-1").unwrap();
        assert_eq!(name.namespace(), Some("chat"));
        assert_eq!(ChannelName::parse("news").unwrap().namespace(), None);
        assert_eq!(
            ChannelName::parse("a:b:c").unwrap().namespace(),
            Some("a"),
            "the namespace ends at the first ':'"
        );
        assert_eq!(ChannelName::parse(":x").unwrap().namespace(), Some(""));
        for ok in ["x", "user@host/a=b_c-d.e", &"a".repeat(255)] {
            assert!(ChannelName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "é", "a*", "a#b", "a\0", &"a".repeat(256)] {
            assert_eq!(ChannelName::parse(bad), Err(InvalidChannel), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_string_is_either_a_name_or_refused(text in ".{0,300}") {
            let valid = !text.is_empty()
                && text.len() <= 255
                && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:@/=".contains(c));
            prop_assert_eq!(ChannelName::parse(&text).is_ok(), valid);
        }
    }
}
