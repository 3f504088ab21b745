//! What an append to a channel's history looks like in the change stream this node follows:
//! each append sets `appended: {epoch, first, last}` on the channel's document in
//! `channel_history` (written by `crate::store::MongoHistory`), so its change event names the
//! publications it added, with their epoch and offsets.

use bson::{Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};

/// Publications one append added to a channel, as its change event shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedPublications {
    pub channel: String,
    pub epoch: String,
    /// The offset of the first of `data`; the others follow one by one.
    pub first: u64,
    pub data: Vec<String>,
}

/// The publications a change of `channel_history` appended, if it appended any: each append
/// sets `appended` to the epoch and offsets it added, and those are the last of `pubs` (the
/// whole array when it was trimmed or empty, else the new elements `pubs.<index>`).
pub fn appended_in(
    change: &ChangeStreamEvent<Document>,
) -> Result<Option<AppendedPublications>, String> {
    let (fields, pubs): (&Document, Vec<&Bson>) = match change.operation_type {
        OperationType::Insert => {
            let document = change
                .full_document
                .as_ref()
                .ok_or("an insert without its document")?;
            let pubs = document.get_array("pubs").map(|a| a.iter().collect());
            (document, pubs.unwrap_or_default())
        }
        OperationType::Update => {
            let fields = &change
                .update_description
                .as_ref()
                .ok_or("an update without its description")?
                .updated_fields;
            let pubs = match fields.get_array("pubs") {
                Ok(all) => all.iter().collect(),
                Err(_) => {
                    let mut added: Vec<(u64, &Bson)> = fields
                        .iter()
                        .filter_map(|(key, value)| {
                            Some((key.strip_prefix("pubs.")?.parse().ok()?, value))
                        })
                        .collect();
                    added.sort_unstable_by_key(|(index, _)| *index);
                    added.into_iter().map(|(_, value)| value).collect()
                }
            };
            (fields, pubs)
        }
        _ => return Ok(None),
    };
    let Ok(appended) = fields.get_document("appended") else {
        return Ok(None);
    };
    let channel = change
        .document_key
        .as_ref()
        .and_then(|key| key.get_str("_id").ok())
        .ok_or("a history change without its channel")?;
    let epoch = appended
        .get_str("epoch")
        .map_err(|e| format!("appended.epoch: {e}"))?;
    let offset = |field: &str| {
        appended
            .get_i64(field)
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(format!("appended.{field} is not an offset"))
    };
    let (first, last) = (offset("first")?, offset("last")?);
    let count = usize::try_from((last + 1).saturating_sub(first)).unwrap_or(usize::MAX);
    if first == 0 || count == 0 || count > pubs.len() {
        return Err(format!(
            "appended offsets {first} to {last}, with {} publications",
            pubs.len()
        ));
    }
    let data = pubs[pubs.len() - count..]
        .iter()
        .map(|data| data.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or("a stored publication that is not text")?;
    Ok(Some(AppendedPublications {
        channel: channel.to_owned(),
        epoch: epoch.to_owned(),
        first,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::collections::CHANNEL_HISTORY;
    use bson::{DateTime, doc};

    fn change(event: Document) -> ChangeStreamEvent<Document> {
        let mut event = event;
        event.insert("_id", doc! { "_data": "00" });
        event.insert("ns", doc! { "db": "tg", "coll": CHANNEL_HISTORY });
        event.insert("documentKey", doc! { "_id": "feed:a" });
        bson::from_document(event).expect("a change event")
    }

    fn appended(epoch: &str, first: i64, last: i64) -> Document {
        doc! { "epoch": epoch, "first": first, "last": last }
    }

    #[test]
    fn an_appends_change_event_gives_exactly_the_publications_it_added() {
        // A first publication: the insert carries the whole document.
        let first = change(doc! {
            "operationType": "insert",
            "fullDocument": { "_id": "feed:a", "epoch": "e", "top": 1_i64, "pubs": ["1"],
                              "appended": appended("e", 1, 1) },
        });
        let found = appended_in(&first).unwrap().unwrap();
        assert_eq!((found.epoch.as_str(), found.first), ("e", 1));
        assert_eq!(found.data, ["1"]);
        // Appending to a non-empty array: the new elements, whatever order they are listed in.
        let more = change(doc! {
            "operationType": "update",
            "updateDescription": { "updatedFields": {
                "top": 4_i64, "pubs.3": "4", "pubs.2": "3", "appended": appended("e", 3, 4),
            }, "removedFields": [] },
        });
        let found = appended_in(&more).unwrap().unwrap();
        assert_eq!((found.first, found.data), (3, vec!["3".into(), "4".into()]));
        // A trim (or an append to an empty array) shows the whole array: only its tail is new.
        let trimmed = change(doc! {
            "operationType": "update",
            "updateDescription": { "updatedFields": {
                "pubs": ["3", "4", "5", "6"], "top": 6_i64, "appended": appended("e", 5, 6),
            }, "removedFields": [] },
        });
        let found = appended_in(&trimmed).unwrap().unwrap();
        assert_eq!((found.first, found.data), (5, vec!["5".into(), "6".into()]));
        // A history read's empty document, and a change that appended nothing.
        let empty = change(doc! {
            "operationType": "insert",
            "fullDocument": { "_id": "feed:a", "epoch": "e", "top": 0_i64, "pubs": [] },
        });
        assert_eq!(appended_in(&empty), Ok(None));
        let other = change(doc! {
            "operationType": "update",
            "updateDescription": { "updatedFields": { "expires_at": DateTime::now() },
                                   "removedFields": [] },
        });
        assert_eq!(appended_in(&other), Ok(None));
        // More offsets than publications shown is refused, not guessed at.
        let short = change(doc! {
            "operationType": "update",
            "updateDescription": { "updatedFields": {
                "pubs.5": "6", "appended": appended("e", 5, 6),
            }, "removedFields": [] },
        });
        assert!(appended_in(&short).is_err());
    }
}
