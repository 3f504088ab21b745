//! Channel namespaces and their options, declared in the configuration file:
//!
//! ```toml
//! [channels]            # options of the default namespace (names without ':')
//! public = false
//! [[channels.namespaces]]
//! name = "chat"
//! presence = true
//! join_leave = true
//! history_size = 100        # keep at least the last 100 publications of each channel
//! history_ttl_secs = 600    # for at least 10 minutes after the channel's last publication
//! deliver_latest = true     # a new subscriber gets the latest publication at once (a state
//!                           # channel: a price, a status), and so does one that cannot recover
//! client_publish = true     # clients may publish: granted by their JWT's `publish` claim,
//! publish_proxy = true      # or else allowed by the app's backend (`POST {UPSTREAM_URL}/publish`)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

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
    /// Publications are numbered and kept, so a subscriber can recover what it missed.
    pub history: Option<HistoryOptions>,
    /// A subscribe without `since`, or one that cannot recover, is followed by the channel's
    /// latest publication (`deliver_latest`; needs history).
    pub deliver_latest: bool,
    /// Whether and how clients may publish.
    pub client_publish: ClientPublish,
}

/// Who lets a client publish into a namespace's channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientPublish {
    /// Only the server API publishes (`client_publish = false`, the default).
    #[default]
    Off,
    /// A connection whose JWT's `publish` claim covers the channel (`client_publish = true`).
    Granted,
    /// As `Granted`; without the claim the app's backend decides (`publish_proxy = true`).
    GrantedOrProxied,
}

impl ClientPublish {
    fn from_table(client_publish: bool, publish_proxy: bool, name: &str) -> Result<Self, String> {
        match (client_publish, publish_proxy) {
            (false, false) => Ok(ClientPublish::Off),
            (true, false) => Ok(ClientPublish::Granted),
            (true, true) => Ok(ClientPublish::GrantedOrProxied),
            (false, true) => Err(format!(
                "{name}: publish_proxy needs client_publish = true (it decides client publications)"
            )),
        }
    }
}

/// How much of a channel's history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistoryOptions {
    /// At least this many of the latest publications (`history_size`).
    pub size: u32,
    /// For at least this long after the channel's last publication (`history_ttl_secs`).
    pub ttl_secs: u32,
}

/// The largest `history_size`.
pub const MAX_HISTORY_SIZE: u32 = 10_000;
/// The longest `history_ttl_secs`: 30 days.
pub const MAX_HISTORY_TTL_SECS: u32 = 30 * 24 * 3600;
/// What a channel's whole history may hold, in bytes of publication data: it is kept in one
/// MongoDB document (16 MiB at most), with room for the rest of the document.
pub const HISTORY_BYTES: usize = 15 << 20;

impl HistoryOptions {
    fn from_table(size: u32, ttl_secs: u32, namespace: &str) -> Result<Option<Self>, String> {
        let name = if namespace.is_empty() {
            "the default namespace".to_owned()
        } else {
            format!("namespace `{namespace}`")
        };
        match (size, ttl_secs) {
            (0, 0) => Ok(None),
            (0, _) => Err(format!(
                "{name}: history_ttl_secs needs history_size (how many publications to keep)"
            )),
            (_, 0) => Err(format!(
                "{name}: history_size needs history_ttl_secs (how long to keep them)"
            )),
            (size, _) if size > MAX_HISTORY_SIZE => Err(format!(
                "{name}: history_size is at most {MAX_HISTORY_SIZE}"
            )),
            (_, ttl) if ttl > MAX_HISTORY_TTL_SECS => Err(format!(
                "{name}: history_ttl_secs is at most {MAX_HISTORY_TTL_SECS} (30 days)"
            )),
            (size, ttl_secs) => Ok(Some(HistoryOptions { size, ttl_secs })),
        }
    }

    /// The most publications a channel's stored history holds: `size`, and up to half as
    /// many again between trims (a trim rewrites the stored array; appending does not).
    pub fn kept_at_most(&self) -> u32 {
        self.size + self.size.div_ceil(2)
    }

    /// The largest publication (its data, in bytes) a channel with this history takes: the
    /// whole history, at its largest, has to fit [`HISTORY_BYTES`].
    pub fn max_publication_bytes(&self) -> usize {
        HISTORY_BYTES / self.kept_at_most() as usize
    }
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
    pub history_size: u32,
    #[serde(default)]
    pub history_ttl_secs: u32,
    #[serde(default)]
    pub deliver_latest: bool,
    #[serde(default)]
    pub client_publish: bool,
    #[serde(default)]
    pub publish_proxy: bool,
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
    #[serde(default)]
    pub history_size: u32,
    #[serde(default)]
    pub history_ttl_secs: u32,
    #[serde(default)]
    pub deliver_latest: bool,
    #[serde(default)]
    pub client_publish: bool,
    #[serde(default)]
    pub publish_proxy: bool,
}

/// `deliver_latest` as declared: the latest publication is the history's, so it needs one.
fn needs_history(
    deliver_latest: bool,
    history: Option<HistoryOptions>,
    name: &str,
) -> Result<bool, String> {
    if deliver_latest && history.is_none() {
        return Err(format!(
            "{name}: deliver_latest needs history_size and history_ttl_secs (the latest \
             publication is the history's)"
        ));
    }
    Ok(deliver_latest)
}

/// The channel namespaces in force, one table shared by every part that reads them (the
/// sessions, the bus, the outbox, the API): [`replace`](Self::replace), at a SIGHUP's
/// reload, reaches them all at once. A clone shares the table.
#[derive(Clone, Default)]
pub struct Namespaces(Arc<ArcSwap<Checked>>);

/// The declared namespaces, checked; the default namespace always exists.
#[derive(Debug, Clone, Default)]
struct Checked {
    default: NamespaceOptions,
    declared: HashMap<String, NamespaceOptions>,
}

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.load().fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel's namespace is not declared")]
pub struct UnknownNamespace;

impl Namespaces {
    pub fn from_table(table: ChannelsTable) -> Result<Self, String> {
        let checked = Checked::from_table(table)?;
        Ok(Namespaces(Arc::new(ArcSwap::from_pointee(checked))))
    }

    /// Puts `other`'s table in force here and in every clone of this handle.
    pub fn replace(&self, other: &Namespaces) {
        self.0.store(other.0.load_full());
    }

    /// The options of `channel`'s namespace.
    pub fn options(&self, channel: &ChannelName) -> Result<NamespaceOptions, UnknownNamespace> {
        self.0.load().options(channel)
    }

    /// Whether any namespace, the default one included, keeps a history.
    pub fn any_history(&self) -> bool {
        let table = self.0.load();
        table.default.history.is_some() || table.declared.values().any(|o| o.history.is_some())
    }

    /// Declares `name` with `options` unless the file declared it already.
    pub fn declare_if_absent(&mut self, name: &str, options: NamespaceOptions) {
        self.0.rcu(|table| {
            let mut table = Checked::clone(table);
            table.declared.entry(name.to_owned()).or_insert(options);
            table
        });
    }

    /// Whether the namespace `name` is declared.
    pub fn is_declared(&self, name: &str) -> bool {
        self.0.load().declared.contains_key(name)
    }

    /// Every namespace, the default one first as `""`, then by name (for `ticketgate config`).
    pub fn listed(&self) -> Vec<(String, NamespaceOptions)> {
        let table = self.0.load();
        let mut named: Vec<_> = table
            .declared
            .iter()
            .map(|(n, o)| (n.clone(), *o))
            .collect();
        named.sort_by(|(a, _), (b, _)| a.cmp(b));
        std::iter::once((String::new(), table.default))
            .chain(named)
            .collect()
    }
}

impl Checked {
    fn from_table(table: ChannelsTable) -> Result<Self, String> {
        let mut declared = HashMap::new();
        for namespace in table.namespaces {
            let name = namespace.name;
            let history = HistoryOptions::from_table(
                namespace.history_size,
                namespace.history_ttl_secs,
                &name,
            )?;
            let options = NamespaceOptions {
                public: namespace.public,
                presence: namespace.presence,
                join_leave: namespace.join_leave,
                history,
                deliver_latest: needs_history(
                    namespace.deliver_latest,
                    history,
                    &format!("namespace `{name}`"),
                )?,
                client_publish: ClientPublish::from_table(
                    namespace.client_publish,
                    namespace.publish_proxy,
                    &name,
                )?,
            };
            if name.contains(':') || !is_channel_name(&name) {
                return Err(format!(
                    "namespace `{name}`: use 1 to 255 ASCII letters, digits and _ - . @ / = (no ':')"
                ));
            }
            if declared.insert(name.clone(), options).is_some() {
                return Err(format!("namespace `{name}` is declared twice"));
            }
        }
        let history = HistoryOptions::from_table(table.history_size, table.history_ttl_secs, "")?;
        Ok(Checked {
            default: NamespaceOptions {
                public: table.public,
                presence: table.presence,
                join_leave: table.join_leave,
                history,
                deliver_latest: needs_history(
                    table.deliver_latest,
                    history,
                    "the default namespace",
                )?,
                client_publish: ClientPublish::from_table(
                    table.client_publish,
                    table.publish_proxy,
                    "the default namespace",
                )?,
            },
            declared,
        })
    }

    fn options(&self, channel: &ChannelName) -> Result<NamespaceOptions, UnknownNamespace> {
        match channel.namespace() {
            None => Ok(self.default),
            Some(namespace) => self
                .declared
                .get(namespace)
                .copied()
                .ok_or(UnknownNamespace),
        }
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
                join_leave: true,
                history: None,
                deliver_latest: false,
                client_publish: ClientPublish::Off,
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
        let listed: Vec<String> = namespaces.listed().into_iter().map(|(n, _)| n).collect();
        assert_eq!(listed, ["", "chat", "news"]);
    }

    #[test]
    fn history_takes_a_size_and_a_ttl_together() {
        let namespaces = parse(
            "[channels]\nhistory_size = 5\nhistory_ttl_secs = 60\n\
             [[channels.namespaces]]\nname = \"feed\"\nhistory_size = 100\nhistory_ttl_secs = 600",
        )
        .unwrap();
        let history = |c: &str| namespaces.options(&channel(c)).unwrap().history;
        assert_eq!(
            history("feed:a"),
            Some(HistoryOptions {
                size: 100,
                ttl_secs: 600
            })
        );
        assert_eq!(history("lobby").map(|h| h.size), Some(5));
        let latest = parse(
            "[[channels.namespaces]]\nname = \"price\"\nhistory_size = 1\n\
             history_ttl_secs = 60\ndeliver_latest = true",
        )
        .unwrap();
        assert!(
            latest
                .options(&channel("price:eur"))
                .unwrap()
                .deliver_latest
        );
        let error = parse("[channels]\ndeliver_latest = true").unwrap_err();
        assert!(
            error.contains("the default namespace: deliver_latest needs history_size"),
            "{error}"
        );
        assert_eq!(
            history("feed:a").unwrap().max_publication_bytes(),
            HISTORY_BYTES / 150
        );
        for (bad, expected) in [
            ("history_size = 5", "needs history_ttl_secs"),
            ("history_ttl_secs = 5", "needs history_size"),
            (
                "history_size = 10001\nhistory_ttl_secs = 5",
                "at most 10000",
            ),
            (
                "history_size = 1\nhistory_ttl_secs = 2592001",
                "at most 2592000",
            ),
            ("history_size = -1\nhistory_ttl_secs = 5", "history_size"),
            ("deliver_latest = true", "deliver_latest needs history_size"),
        ] {
            let error =
                parse(&format!("[[channels.namespaces]]\nname = \"n\"\n{bad}")).unwrap_err();
            assert!(error.contains(expected), "{bad}: {error}");
        }
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
