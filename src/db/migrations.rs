//! Applies the declarative migrations in `migrations/` to MongoDB and records them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::collections::{self, SCHEMA_MIGRATIONS};
use bson::{DateTime, Document, doc};
use futures_util::TryStreamExt;
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One file of `migrations/`, embedded in the binary so a deployed gateway needs no files.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub source: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_ws_tickets.json",
        source: include_str!("../../migrations/0001_ws_tickets.json"),
    },
    Migration {
        version: 2,
        name: "0002_revocations.json",
        source: include_str!("../../migrations/0002_revocations.json"),
    },
    Migration {
        version: 3,
        name: "0003_cluster.json",
        source: include_str!("../../migrations/0003_cluster.json"),
    },
    Migration {
        version: 4,
        name: "0004_presence.json",
        source: include_str!("../../migrations/0004_presence.json"),
    },
    Migration {
        version: 5,
        name: "0005_history.json",
        source: include_str!("../../migrations/0005_history.json"),
    },
    Migration {
        version: 6,
        name: "0006_lifecycle_events.json",
        source: include_str!("../../migrations/0006_lifecycle_events.json"),
    },
    Migration {
        version: 7,
        name: "0007_lifecycle_by_user.json",
        source: include_str!("../../migrations/0007_lifecycle_by_user.json"),
    },
    Migration {
        version: 8,
        name: "0008_publish_keys.json",
        source: include_str!("../../migrations/0008_publish_keys.json"),
    },
    Migration {
        version: 9,
        name: "0009_outbox_leases.json",
        source: include_str!("../../migrations/0009_outbox_leases.json"),
    },
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationSpec {
    #[allow(dead_code)] // documentation for readers of the file; recorded via the name
    description: String,
    #[serde(default)]
    collections: Vec<String>,
    #[serde(default)]
    indexes: Vec<IndexSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexSpec {
    collection: String,
    name: String,
    keys: Document,
    #[serde(default)]
    unique: bool,
    expire_after: Option<ExpireAfter>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ExpireAfter {
    Seconds(u64),
    Setting(Setting),
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum Setting {
    #[serde(rename = "TICKET_TTL_SECS")]
    TicketTtlSecs,
    #[serde(rename = "LIFECYCLE_EVENTS_TTL_SECS")]
    LifecycleEventsTtlSecs,
}

/// Values of settings that migrations may refer to.
pub struct MigrationContext {
    pub ticket_ttl: Duration,
    pub lifecycle_events_ttl: Duration,
}

impl MigrationContext {
    pub fn of(settings: &crate::config::Settings) -> Self {
        MigrationContext {
            ticket_ttl: settings.tickets.ttl,
            lifecycle_events_ttl: settings.upstream.events_ttl,
        }
    }
}

impl ExpireAfter {
    fn seconds(&self, ctx: &MigrationContext) -> u64 {
        match self {
            ExpireAfter::Seconds(secs) => *secs,
            ExpireAfter::Setting(Setting::TicketTtlSecs) => ctx.ticket_ttl.as_secs(),
            ExpireAfter::Setting(Setting::LifecycleEventsTtlSecs) => {
                ctx.lifecycle_events_ttl.as_secs()
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration {name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("applying migrations: {0}")]
    Mongo(#[from] mongodb::error::Error),
}

/// What a run did, for the log and for tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<u32>,
    /// TTL indexes whose `expireAfterSeconds` was changed to follow the configuration.
    pub ttl_updated: Vec<String>,
}

/// A migration's spec, refused when it names a collection or an index that
/// `db::collections` does not list.
fn parse(migration: &Migration) -> Result<MigrationSpec, MigrationError> {
    let invalid = |reason: String| MigrationError::Invalid {
        name: migration.name,
        reason,
    };
    let spec: MigrationSpec =
        serde_json::from_str(migration.source).map_err(|e| invalid(e.to_string()))?;
    for collection in &spec.collections {
        if collections::spec(collection).is_none() {
            return Err(invalid(format!(
                "collection {collection} is not in db::collections"
            )));
        }
    }
    for index in &spec.indexes {
        let listed = collections::spec(&index.collection)
            .is_some_and(|listed| listed.indexes.contains(&index.name.as_str()));
        if !listed {
            return Err(invalid(format!(
                "index {} of {} is not in db::collections",
                index.name, index.collection
            )));
        }
    }
    Ok(spec)
}

fn checksum(source: &str) -> String {
    Sha256::digest(source.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies pending migrations in order, then makes every TTL index follow its setting.
pub async fn apply(
    db: &Database,
    ctx: &MigrationContext,
) -> Result<MigrationReport, MigrationError> {
    let specs: Vec<(&Migration, MigrationSpec)> = MIGRATIONS
        .iter()
        .map(|m| parse(m).map(|spec| (m, spec)))
        .collect::<Result<_, _>>()?;
    let records = db.collection::<Document>(SCHEMA_MIGRATIONS);
    let recorded: HashMap<i64, String> = records
        .find(doc! {})
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter_map(|d| {
            Some((
                d.get_i64("_id").ok()?,
                d.get_str("checksum").unwrap_or("").to_owned(),
            ))
        })
        .collect();

    let mut report = MigrationReport::default();
    for (migration, spec) in &specs {
        let sum = checksum(migration.source);
        match recorded.get(&i64::from(migration.version)) {
            Some(applied_sum) if *applied_sum != sum => log::warn!(
                "migration {} was edited after it was applied; add a new migration instead",
                migration.name
            ),
            Some(_) => {}
            None => {
                apply_one(db, spec, ctx).await?;
                let record = doc! {
                    "_id": i64::from(migration.version),
                    "name": migration.name,
                    "checksum": sum,
                    "applied_at": DateTime::now(),
                };
                // Another node may have recorded it a moment ago; that is the same outcome.
                if let Err(e) = records.insert_one(record).await
                    && !is_duplicate_key(&e)
                {
                    return Err(e.into());
                }
                log::info!("applied migration {}", migration.name);
                report.applied.push(migration.version);
            }
        }
    }

    for (_, spec) in &specs {
        for index in spec.indexes.iter().filter(|i| i.expire_after.is_some()) {
            if reconcile_ttl(db, index, ctx).await? {
                report.ttl_updated.push(index.name.clone());
            }
        }
    }
    Ok(report)
}

async fn apply_one(
    db: &Database,
    spec: &MigrationSpec,
    ctx: &MigrationContext,
) -> Result<(), MigrationError> {
    let existing: HashSet<String> = db.list_collection_names().await?.into_iter().collect();
    for name in spec.collections.iter().filter(|c| !existing.contains(*c)) {
        if let Err(e) = db.create_collection(name).await
            && !has_code(&e, NAMESPACE_EXISTS)
        {
            return Err(e.into());
        }
    }
    for index in &spec.indexes {
        let options = IndexOptions::builder()
            .name(index.name.clone())
            .unique(index.unique.then_some(true))
            .expire_after(
                index
                    .expire_after
                    .as_ref()
                    .map(|e| Duration::from_secs(e.seconds(ctx))),
            )
            .build();
        let model = IndexModel::builder()
            .keys(index.keys.clone())
            .options(options)
            .build();
        if let Err(e) = db
            .collection::<Document>(&index.collection)
            .create_index(model)
            .await
        {
            // The index exists with another TTL (say, a record was lost): reconciling fixes it.
            if !(index.expire_after.is_some() && has_code(&e, INDEX_OPTIONS_CONFLICT)) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Sets the TTL index's `expireAfterSeconds` to the configured value; true when it changed.
async fn reconcile_ttl(
    db: &Database,
    index: &IndexSpec,
    ctx: &MigrationContext,
) -> Result<bool, MigrationError> {
    let Some(expire_after) = &index.expire_after else {
        return Ok(false);
    };
    let wanted = expire_after.seconds(ctx) as i64;
    let current = db
        .collection::<Document>(&index.collection)
        .list_indexes()
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some(index.name.as_str()))
        .and_then(|i| i.options.and_then(|o| o.expire_after))
        .map(|d| d.as_secs() as i64);
    if current == Some(wanted) {
        return Ok(false);
    }
    db.run_command(doc! {
        "collMod": &index.collection,
        "index": { "name": &index.name, "expireAfterSeconds": wanted },
    })
    .await?;
    log::info!(
        "TTL index {}.{}: expireAfterSeconds is now {wanted}",
        index.collection,
        index.name
    );
    Ok(true)
}

const NAMESPACE_EXISTS: i32 = 48;
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const DUPLICATE_KEY: i32 = 11000;

fn has_code(error: &mongodb::error::Error, code: i32) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Command(e) => e.code == code,
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == code,
        _ => false,
    }
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    has_code(error, DUPLICATE_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_make_exactly_the_collections_and_indexes_the_table_lists() {
        let mut made: Vec<(String, Vec<String>)> = Vec::new();
        for migration in MIGRATIONS {
            let spec = parse(migration).unwrap();
            for name in spec.collections {
                made.push((name, Vec::new()));
            }
            for index in spec.indexes {
                let entry = made.iter_mut().find(|(name, _)| *name == index.collection);
                entry
                    .expect("an index of a collection made before")
                    .1
                    .push(index.name);
            }
        }
        // The applier makes its own record.
        made.push((SCHEMA_MIGRATIONS.to_owned(), Vec::new()));
        let listed: Vec<(String, Vec<String>)> = collections::COLLECTIONS
            .iter()
            .map(|spec| {
                let indexes = spec.indexes.iter().map(|i| i.to_string()).collect();
                (spec.name.to_owned(), indexes)
            })
            .collect();
        assert_eq!(made, listed);
    }

    #[test]
    fn a_migration_naming_what_the_table_does_not_list_is_refused() {
        let unknown = Migration {
            version: 99,
            name: "0099_unknown.json",
            source: r#"{"description": "x", "collections": ["elsewhere"]}"#,
        };
        assert!(parse(&unknown).is_err());
        let index = Migration {
            version: 99,
            name: "0099_index.json",
            source: r#"{"description": "x", "indexes": [
                {"collection": "ws_tickets", "name": "new_one", "keys": {"a": 1}}]}"#,
        };
        assert!(parse(&index).is_err());
    }

    #[test]
    fn every_file_in_migrations_is_listed_and_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(
            files, listed,
            "list every migrations/*.json in MIGRATIONS, in order"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "{}: versions count up from 1",
                m.name
            );
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
            parse(m).unwrap();
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = Migration {
            version: 9,
            name: "bad",
            source: r#"{"description":"x","indexs":[]}"#,
        };
        assert!(parse(&bad).is_err());
    }
}
