//! An outbox document as the app writes it, read into what to publish, or the reason it can
//! never be published (docs/PROTOCOL.md, "Publishing from the database"):
//!
//! - `{"channel": C, "data": D, "idempotency_key"?: K}`: a publication into C, as
//!   `POST /api/channels/{channel}/publish` makes it;
//! - `{"user": U, "data": D}`: a message to U's connections;
//! - `{"broadcast": true, "data": D}`: a broadcast.
//!
//! Exactly one of `channel`, `user` and `broadcast: true`; `data` is any BSON value, read as
//! relaxed extended JSON (a date becomes `{"$date": "…"}`). Other fields are the app's own.

use std::time::Duration;

use bson::{Bson, Document};
use serde_json::value::RawValue;

use crate::bus::{Command, IdempotencyKey};
use crate::channels::{ChannelName, Namespaces};

/// What an outbox document asks for.
#[derive(Debug)]
pub struct Publication {
    pub command: Command,
    pub key: Option<IdempotencyKey>,
}

/// Why a document can never be published: the API's codes where one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    InvalidChannel,
    UnknownNamespace,
    PublicationTooLarge,
    /// Not one of the three shapes, or a bad `idempotency_key`.
    BadDocument,
}

impl Failure {
    pub fn code(self) -> &'static str {
        match self {
            Failure::InvalidChannel => "invalid_channel",
            Failure::UnknownNamespace => "unknown_namespace",
            Failure::PublicationTooLarge => "publication_too_large",
            Failure::BadDocument => "bad_document",
        }
    }
}

/// Reads `document` against the namespaces; keys are remembered for `window`.
pub fn read(
    document: &Document,
    namespaces: &Namespaces,
    window: Duration,
) -> Result<Publication, Failure> {
    let data = match document.get("data") {
        Some(data) => json_of(data)?,
        None => return Err(Failure::BadDocument),
    };
    let channel = document.get("channel");
    let user = document.get("user");
    let broadcast = document.get("broadcast");
    let key = match document.get("idempotency_key") {
        None | Some(Bson::Null) => None,
        Some(Bson::String(key)) => Some(key.as_str()),
        Some(_) => return Err(Failure::BadDocument),
    };
    match (channel, user, broadcast) {
        (Some(Bson::String(channel)), None, None | Some(Bson::Boolean(false))) => {
            let name = ChannelName::parse(channel).map_err(|_| Failure::InvalidChannel)?;
            let options = namespaces
                .options(&name)
                .map_err(|_| Failure::UnknownNamespace)?;
            if let Some(history) = options.history
                && data.get().len() > history.max_publication_bytes()
            {
                return Err(Failure::PublicationTooLarge);
            }
            let key = keyed(key, name.as_str(), window)?;
            Ok(Publication {
                command: Command::publish([(name, options)], data),
                key,
            })
        }
        (None, Some(Bson::String(user)), None | Some(Bson::Boolean(false))) => {
            if user.is_empty() {
                return Err(Failure::BadDocument);
            }
            // Keys of messages and broadcasts cover a scope no channel name can spell ('~').
            let scope = format!("~user:{user}");
            Ok(Publication {
                key: keyed(key, &scope, window)?,
                command: Command::Message {
                    user_id: user.clone(),
                    data,
                },
            })
        }
        (None, None, Some(Bson::Boolean(true))) => Ok(Publication {
            key: keyed(key, "~broadcast", window)?,
            command: Command::Broadcast(data),
        }),
        _ => Err(Failure::BadDocument),
    }
}

/// The document's key, if it has one, over `scope`.
fn keyed(
    key: Option<&str>,
    scope: &str,
    window: Duration,
) -> Result<Option<IdempotencyKey>, Failure> {
    key.map(|key| IdempotencyKey::new(key, [scope], window))
        .transpose()
        .map_err(|_| Failure::BadDocument)
}

/// A BSON value as JSON text (relaxed extended JSON).
fn json_of(data: &Bson) -> Result<Box<RawValue>, Failure> {
    let json = data.clone().into_relaxed_extjson();
    RawValue::from_string(json.to_string()).map_err(|_| Failure::BadDocument)
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;
    use crate::channels::ChannelsTable;

    const WINDOW: Duration = Duration::from_secs(300);

    fn namespaces() -> Namespaces {
        let table: ChannelsTable = toml_table(
            "[[namespaces]]\nname = \"orders\"\nhistory_size = 1\nhistory_ttl_secs = 60",
        );
        Namespaces::from_table(table).unwrap()
    }

    fn toml_table(text: &str) -> ChannelsTable {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(text))
            .extract()
            .unwrap()
    }

    #[test]
    fn the_three_shapes_read_into_their_commands() {
        let ns = namespaces();
        let read = |d: Document| read(&d, &ns, WINDOW);
        let channel =
            read(doc! { "channel": "orders:1", "data": { "n": 1 }, "idempotency_key": "k" })
                .unwrap();
        assert!(matches!(channel.command, Command::Publish { .. }));
        assert_eq!(channel.key.unwrap().id(), "orders:1|k");
        let user = read(doc! { "user": "ann", "data": "hi", "app_field": 1 }).unwrap();
        assert!(matches!(user.command, Command::Message { ref user_id, .. } if user_id == "ann"));
        let all = read(doc! { "broadcast": true, "data": null, "idempotency_key": "k" }).unwrap();
        assert!(matches!(all.command, Command::Broadcast(ref data) if data.get() == "null"));
        assert_eq!(all.key.unwrap().id(), "~broadcast|k");
    }

    #[test]
    fn documents_that_can_never_be_published_say_why() {
        let ns = namespaces();
        let read = |d: Document| read(&d, &ns, WINDOW).map(|_| ()).unwrap_err();
        assert_eq!(
            read(doc! { "channel": "a b", "data": 1 }),
            Failure::InvalidChannel
        );
        assert_eq!(
            read(doc! { "channel": "nope:1", "data": 1 }),
            Failure::UnknownNamespace
        );
        let big = "x".repeat(HISTORY_LIMIT);
        assert_eq!(
            read(doc! { "channel": "orders:1", "data": big }),
            Failure::PublicationTooLarge
        );
        for bad in [
            doc! { "data": 1 },
            doc! { "channel": "orders:1" },
            doc! { "channel": "orders:1", "user": "ann", "data": 1 },
            doc! { "broadcast": "yes", "data": 1 },
            doc! { "user": 5, "data": 1 },
            doc! { "channel": "orders:1", "data": 1, "idempotency_key": 7 },
            doc! { "channel": "orders:1", "data": 1, "idempotency_key": "" },
        ] {
            assert_eq!(read(bad.clone()), Failure::BadDocument, "{bad}");
        }
    }

    /// Over what a channel with `history_size = 1` takes.
    const HISTORY_LIMIT: usize = crate::channels::namespaces::HISTORY_BYTES / 2 + 1;
}
