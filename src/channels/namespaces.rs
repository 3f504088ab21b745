//! Channel namespaces and their options, declared in the configuration file:
//!
//! ```toml
//! [channels]            # options of the default namespace (names without ':')
//! public = false
//! [[channels.namespaces]]
//! name = "chat"
//! presence = true
//! join_leave = true
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::name::{ChannelName, is_channel_name};

/// What a namespace allows; every option is off unless declared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceOptions {
    /// Any authenticated connection may subscribe, without a grant.
    pub public: bool,
    /// Subscribers may ask who else is subscribed.
    pub presence: bool,
    /// Subscribers are told as others subscribe and go.
    pub join_leave: bool,
}

/// The `[channels]` table as written in the file: the default namespace's options and the
/// declared namespaces. (Fields are spelled out rather than flattened: serde cannot refuse
/// unknown keys through a flattened struct.)
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsTable {
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub presence: bool,
    #[serde(default)]
    pub join_leave: bool,
    #[serde(default)]
    pub namespaces: Vec<NamespaceTable>,
}

/// One `[[channels.namespaces]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceTable {
    pub name: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub presence: bool,
    #[serde(default)]
    pub join_leave: bool,
}

/// The declared namespaces, checked; the default namespace always exists.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    default: NamespaceOptions,
    declared: HashMap<String, NamespaceOptions>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel's namespace is not declared")]
pub struct UnknownNamespace;

impl Namespaces {
    pub fn from_table(table: ChannelsTable) -> Result<Self, String> {
        let mut declared = HashMap::new();
        for namespace in table.namespaces {
            let options = NamespaceOptions {
                public: namespace.public,
                presence: namespace.presence,
                join_leave: namespace.join_leave,
            };
            let name = namespace.name;
            if name.contains(':') || !is_channel_name(&name) {
                return Err(format!(
                    "namespace `{name}`: use 1 to 255 ASCII letters, digits and _ - . @ / = (no ':')"
                ));
            }
            if declared.insert(name.clone(), options).is_some() {
                return Err(format!("namespace `{name}` is declared twice"));
            }
        }
        Ok(Namespaces {
            default: NamespaceOptions {
                public: table.public,
                presence: table.presence,
                join_leave: table.join_leave,
            },
            declared,
        })
    }

    /// The options of `channel`'s namespace.
    pub fn options(&self, channel: &ChannelName) -> Result<NamespaceOptions, UnknownNamespace> {
        match channel.namespace() {
            None => Ok(self.default),
            Some(namespace) => self
                .declared
                .get(namespace)
                .copied()
                .ok_or(UnknownNamespace),
        }
    }

    /// Declares `name` with `options` unless the file declared it already.
    pub fn declare_if_absent(&mut self, name: &str, options: NamespaceOptions) {
        self.declared.entry(name.to_owned()).or_insert(options);
    }

    /// Whether the namespace `name` is declared.
    pub fn is_declared(&self, name: &str) -> bool {
        self.declared.contains_key(name)
    }

    /// Every namespace, the default one first as `""`, then by name (for `ticketgate config`).
    pub fn listed(&self) -> Vec<(&str, NamespaceOptions)> {
        let mut named: Vec<_> = self
            .declared
            .iter()
            .map(|(n, o)| (n.as_str(), *o))
            .collect();
        named.sort_by_key(|(name, _)| *name);
        std::iter::once(("", self.default)).chain(named).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Namespaces, String> {
        use figment::providers::{Format, Toml};
        let table = figment::Figment::from(Toml::string(toml_text))
            .extract_inner::<ChannelsTable>("channels")
            .map_err(|e| e.to_string())?;
        Namespaces::from_table(table)
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn the_documented_shape_parses() {
        let namespaces = parse(
            r#"
            [channels]
            public = false
            [[channels.namespaces]]
            name = "chat"
            presence = true
            join_leave = true
            [[channels.namespaces]]
            name = "news"
            public = true
            "#,
        )
        .unwrap();
        assert_eq!(
            namespaces.options(&channel("chat:room-1")),
            Ok(NamespaceOptions {
                public: false,
                presence: true,
                join_leave: true
            })
        );
        assert!(namespaces.options(&channel("news:today")).unwrap().public);
        assert_eq!(
            namespaces.options(&channel("lobby")),
            Ok(NamespaceOptions::default())
        );
        assert_eq!(
            namespaces.options(&channel("other:x")),
            Err(UnknownNamespace)
        );
        let listed: Vec<&str> = namespaces.listed().iter().map(|(n, _)| *n).collect();
        assert_eq!(listed, ["", "chat", "news"]);
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = parse("[channels]\npublik = true").unwrap_err();
        assert!(unknown.contains("publik"), "{unknown}");
        let unknown = parse("[[channels.namespaces]]\nname = \"a\"\nhistory = 1").unwrap_err();
        assert!(unknown.contains("history"), "{unknown}");
        let twice =
            parse("[[channels.namespaces]]\nname = \"a\"\n[[channels.namespaces]]\nname = \"a\"")
                .unwrap_err();
        assert!(twice.contains("declared twice"), "{twice}");
        for bad in ["", "a:b", "a b"] {
            let error = parse(&format!("[[channels.namespaces]]\nname = \"{bad}\"")).unwrap_err();
            assert!(error.contains("namespace"), "{error}");
        }
        let typed = parse("[channels]\npublic = \"yes\"").unwrap_err();
        assert!(
            typed.contains("public") || typed.contains("bool"),
            "{typed}"
        );
    }
}
