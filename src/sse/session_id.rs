//! An SSE connection's session id: the only way to send into the connection, so 128 random
//! bits, after the id of the node that holds it (so a POST that lands elsewhere knows where to
//! go). Never logged whole: [`SessionId::redacted`].

use std::fmt::Write;

/// `<node id>.<32 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    pub fn generate(node: &str) -> std::io::Result<Self> {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let mut id = String::with_capacity(node.len() + 33);
        id.push_str(node);
        id.push('.');
        for byte in random {
            let _ = write!(id, "{byte:02x}");
        }
        Ok(SessionId(id))
    }

    /// The node a session id names, if it has the shape of one.
    pub fn node_of(id: &str) -> Option<&str> {
        let (node, random) = id.rsplit_once('.')?;
        let well_formed =
            !node.is_empty() && random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit());
        well_formed.then_some(node)
    }

    /// What logs may show of a session id: its node and four hex digits.
    pub fn redacted(id: &str) -> String {
        match id.rsplit_once('.') {
            Some((node, random)) => {
                let shown: String = random.chars().take(4).collect();
                format!("{node}.{shown}…")
            }
            None => "(malformed)".to_owned(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_node_and_are_never_logged_whole() {
        let id = SessionId::generate("gw-1.a").unwrap();
        let other = SessionId::generate("gw-1.a").unwrap();
        assert_ne!(id, other);
        assert_eq!(SessionId::node_of(id.as_str()), Some("gw-1.a"));
        let redacted = SessionId::redacted(id.as_str());
        assert!(redacted.starts_with("gw-1.a.") && redacted.len() < id.as_str().len());
        assert_eq!(SessionId::node_of("gw-1.nothex"), None);
        assert_eq!(SessionId::node_of(&format!(".{}", "a".repeat(32))), None);
    }
}
