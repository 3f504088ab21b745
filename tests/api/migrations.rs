//! Migrations against a real mongod: indexes, records, idempotence, TTL following the setting.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use ticketgate::db::migrations::{self, MIGRATIONS, MigrationContext};

use crate::support::*;

async fn fresh_db() -> mongodb::Database {
    mongodb::Client::with_uri_str(mongo_uri())
        .await
        .unwrap()
        .database(&unique_db_name())
}

async fn index(
    db: &mongodb::Database,
    collection: &str,
    name: &str,
) -> Option<mongodb::IndexModel> {
    db.collection::<Document>(collection)
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name))
}

async fn ttl_secs(db: &mongodb::Database) -> u64 {
    let ttl = index(db, "ws_tickets", "created_at_ttl")
        .await
        .expect("the TTL index exists");
    assert_eq!(ttl.keys, doc! { "created_at": 1 });
    ttl.options.unwrap().expire_after.unwrap().as_secs()
}

fn ctx(ttl_secs: u64) -> MigrationContext {
    MigrationContext {
        ticket_ttl: Duration::from_secs(ttl_secs),
        lifecycle_events_ttl: Duration::from_secs(86_400),
    }
}

#[tokio::test]
async fn migrations_create_indexes_record_themselves_and_are_idempotent() {
    let db = fresh_db().await;
    let report = migrations::apply(&db, &ctx(900)).await.unwrap();
    assert_eq!(
        report.applied,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    assert_eq!(ttl_secs(&db).await, 900);
    let per_user = index(&db, "ws_tickets", "user_id_created_at")
        .await
        .expect("the per-user index exists");
    let directions: Vec<(String, i64)> = per_user
        .keys
        .iter()
        .map(|(field, direction)| {
            (
                field.clone(),
                direction
                    .as_i64()
                    .or(direction.as_i32().map(i64::from))
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        directions,
        [("user_id".to_string(), 1), ("created_at".to_string(), -1)]
    );

    let records: Vec<Document> = db
        .collection::<Document>("schema_migrations")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(records.len(), MIGRATIONS.len());
    assert_eq!(records[0].get_i64("_id").unwrap(), 1);
    assert_eq!(records[0].get_str("name").unwrap(), "0001_ws_tickets.json");
    assert_eq!(records[0].get_str("checksum").unwrap().len(), 64);

    let revocations_ttl = index(&db, "revocations", "expires_at_ttl")
        .await
        .expect("the revocations TTL index exists");
    assert_eq!(
        revocations_ttl.options.unwrap().expire_after,
        Some(Duration::ZERO)
    );

    let events_ttl = index(&db, "lifecycle_events", "at_ttl")
        .await
        .expect("the lifecycle events TTL index exists");
    assert_eq!(
        events_ttl.options.unwrap().expire_after,
        Some(Duration::from_secs(86_400)),
        "follows LIFECYCLE_EVENTS_TTL_SECS"
    );
    let series = index(&db, "lifecycle_events", "node_seq")
        .await
        .expect("the per-node series index exists");
    assert_eq!(series.options.unwrap().unique, Some(true));

    let again = migrations::apply(&db, &ctx(900)).await.unwrap();
    assert!(
        again.applied.is_empty() && again.ttl_updated.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn the_ttl_index_follows_the_configured_ttl_at_start() {
    let first = spawn_app(Store::Mongo, &[("TICKET_TTL_SECS", "900")]).await;
    let db = first.db.clone().unwrap();
    assert_eq!(ttl_secs(&db).await, 900);
    drop(first);
    let mut vars = base_vars(Store::Mongo);
    vars.insert("MONGODB_DATABASE".into(), db.name().to_owned());
    vars.insert("TICKET_TTL_SECS".into(), "60".into());
    let _second = spawn_app_with(vars).await;
    assert_eq!(
        ttl_secs(&db).await,
        60,
        "changed in place (collMod) at start"
    );
}

#[tokio::test]
async fn nodes_starting_at_once_all_succeed() {
    let db = fresh_db().await;
    let context = ctx(300);
    let runs = (0..4).map(|_| migrations::apply(&db, &context));
    for result in futures_util::future::join_all(runs).await {
        result.unwrap();
    }
    assert_eq!(ttl_secs(&db).await, 300);
    let count = db
        .collection::<Document>("schema_migrations")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(count as usize, MIGRATIONS.len());
}
