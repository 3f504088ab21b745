//! Which channels a connection's JWT lets it subscribe to: its `channels` claim, a list of
//! exact names and prefixes ending in `*` (`"chat:room-1"`, `"tenant-42:*"`, `"*"` for all).

/// The `channels` claim of the JWT a connection proved, checked once at authentication or
/// refresh; asking it needs no MongoDB and no call to the app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimGrants {
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl ClaimGrants {
    pub fn from_claim(claim: &[String]) -> Self {
        let mut grants = ClaimGrants::default();
        for pattern in claim {
            match pattern.strip_suffix('*') {
                Some(prefix) => grants.prefixes.push(prefix.into()),
                None => grants.exact.push(pattern.as_str().into()),
            }
        }
        grants
    }

    pub fn allows(&self, channel: &str) -> bool {
        self.exact.iter().any(|name| &**name == channel)
            || self
                .prefixes
                .iter()
                .any(|prefix| channel.starts_with(&**prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(patterns: &[&str]) -> ClaimGrants {
        ClaimGrants::from_claim(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn exact_names_and_prefixes() {
        let g = grants(&["chat:room-1", "tenant-42:*"]);
        assert!(g.allows("chat:room-1"));
        assert!(!g.allows("chat:room-10"), "exact means exact");
        assert!(!g.allows("chat:room"));
        assert!(g.allows("tenant-42:dashboard"));
        assert!(g.allows("tenant-42:"));
        assert!(!g.allows("tenant-421:dashboard"));
        assert!(!g.allows("tenant-42"));
        assert!(grants(&["*"]).allows("anything:at-all"));
        assert!(!grants(&[]).allows("x"));
        assert!(
            !grants(&["chat:*x"]).allows("chat:ax"),
            "only a trailing * is a wildcard"
        );
    }
}
