//! The same conformance suite for both ticket stores: the in-process store must answer exactly
//! like the MongoDB one.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use ticketgate::config::{MongoSettings, TicketPolicy};
use ticketgate::db::{self, Bounds, PerThreadDatabase, Readiness};
use ticketgate::store::{
    MemoryTicketStore, MongoTicketStore, RedeemError, Redeemed, TicketRejection, TicketStore,
};
use ticketgate::ticket::{NewTicket, PresentedTicket};

use crate::support::{Store, mongo_uri, unique_db_name};

async fn make_store(kind: Store, ttl_secs: u64, single_use: bool) -> TicketStore {
    make_store_with_metrics(kind, ttl_secs, single_use).await.0
}

/// The store, its metrics, and (MongoDB) its database.
type Made = (
    TicketStore,
    Arc<ticketgate::metrics::Metrics>,
    Option<mongodb::Database>,
);

async fn make_store_with_metrics(kind: Store, ttl_secs: u64, single_use: bool) -> Made {
    let policy = TicketPolicy {
        ttl: Duration::from_secs(ttl_secs),
        single_use,
    };
    let metrics = Arc::new(ticketgate::metrics::Metrics::new());
    let mut database = None;
    let store = match kind {
        Store::Memory => TicketStore::Memory(MemoryTicketStore::new(policy)),
        Store::Mongo => {
            let settings = MongoSettings {
                outbox: None,
                uri: mongo_uri().into(),
                database: unique_db_name(),
            };
            let (db, options) = db::connect_with_options(&settings, Duration::from_secs(5))
                .await
                .unwrap();
            let ready = Readiness::ready();
            let bounds = Bounds {
                admission: ticketgate::db::Admission::new(64),
                timeout: Duration::from_secs(5),
                readiness: ready,
                metrics: Arc::clone(&metrics),
            };
            // As the gateway runs it: each thread with a client of its own.
            let per_thread = PerThreadDatabase::new(options, db.clone());
            database = Some(db.clone());
            TicketStore::Mongo(
                MongoTicketStore::new(&db, policy, bounds).with_per_thread_clients(per_thread),
            )
        }
    };
    (store, metrics, database)
}

fn presented(ticket: &NewTicket) -> PresentedTicket {
    PresentedTicket::parse(&ticket.to_string()).unwrap()
}

fn rejection(result: Result<Redeemed, RedeemError>) -> TicketRejection {
    match result {
        Err(RedeemError::Rejected(why)) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn issue_then_redeem_names_the_user(kind: Store) {
    let store = make_store(kind, 60, true).await;
    let ticket = store.issue("alice").await.unwrap();
    assert_eq!(
        store.redeem(&presented(&ticket)).await.unwrap().user_id,
        "alice"
    );
}

async fn a_single_use_ticket_redeems_once(kind: Store) {
    let store = make_store(kind, 60, true).await;
    let ticket = presented(&store.issue("alice").await.unwrap());
    store.redeem(&ticket).await.unwrap();
    let second = rejection(store.redeem(&ticket).await);
    assert!(
        matches!(
            second,
            TicketRejection::Unknown | TicketRejection::AlreadyUsed
        ),
        "{second:?}"
    );
}

async fn a_wrong_secret_is_refused_and_leaves_the_ticket(kind: Store) {
    let store = make_store(kind, 60, true).await;
    let ticket = store.issue("alice").await.unwrap();
    let real = ticket.to_string();
    let (id, _) = real.split_once('.').unwrap();
    let forged_secret = NewTicket::generate().to_string();
    let forged = PresentedTicket::parse(&format!(
        "{id}.{}",
        forged_secret.split_once('.').unwrap().1
    ))
    .unwrap();
    assert_eq!(
        rejection(store.redeem(&forged).await),
        TicketRejection::SecretMismatch
    );
    assert_eq!(
        store.redeem(&presented(&ticket)).await.unwrap().user_id,
        "alice"
    );
}

async fn an_unknown_ticket_is_refused(kind: Store) {
    let store = make_store(kind, 60, true).await;
    let never_issued = NewTicket::generate();
    assert_eq!(
        rejection(store.redeem(&presented(&never_issued)).await),
        TicketRejection::Unknown
    );
}

async fn an_expired_ticket_is_refused(kind: Store) {
    let store = make_store(kind, 1, true).await;
    let ticket = presented(&store.issue("alice").await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let why = rejection(store.redeem(&ticket).await);
    // Expired, or already removed by MongoDB's TTL monitor: both mean "refused".
    assert!(
        matches!(why, TicketRejection::Expired | TicketRejection::Unknown),
        "{why:?}"
    );
}

async fn a_reusable_ticket_redeems_until_it_expires(kind: Store) {
    let store = make_store(kind, 2, false).await;
    let ticket = presented(&store.issue("bob").await.unwrap());
    for _ in 0..3 {
        assert_eq!(store.redeem(&ticket).await.unwrap().user_id, "bob");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    store.redeem(&ticket).await.unwrap_err();
}

async fn concurrent_redemptions_let_exactly_one_through(kind: Store) {
    let store = Arc::new(make_store(kind, 60, true).await);
    for _ in 0..5 {
        let ticket = presented(&store.issue("alice").await.unwrap());
        let attempts = (0..20).map(|_| {
            let store = Arc::clone(&store);
            let ticket = ticket.clone();
            tokio::spawn(async move { store.redeem(&ticket).await.is_ok() })
        });
        let wins = join_all(attempts)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(wins, 1);
    }
}

/// A burst, as when a node restarts and its clients come back at once: many mints, then
/// redeems of every kind at the same time (each ticket presented once or twice with its
/// secret, some with a forged secret, some never issued). Each request gets its own answer:
/// every ticket goes to exactly one of its presenters, for its own user, and no forged
/// secret burns a ticket. (The MongoDB store serves this in batches: see the next test.)
async fn a_burst_of_mints_and_redeems_answers_each_on_its_own(kind: Store) {
    let store = Arc::new(make_store(kind, 60, true).await);
    let mints = (0..300).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { (i, store.issue(&format!("user-{i}")).await.unwrap()) })
    });
    let tickets: Vec<(usize, NewTicket)> = join_all(mints)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut attempts = Vec::new();
    for (i, ticket) in &tickets {
        let copies = if i % 3 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            attempts.push((Some(*i), presented(ticket)));
        }
        if i % 5 == 0 {
            let (id, _) = ticket
                .to_string()
                .split_once('.')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .unwrap();
            let other = NewTicket::generate().to_string();
            let forged = format!("{id}.{}", other.split_once('.').unwrap().1);
            attempts.push((None, PresentedTicket::parse(&forged).unwrap()));
        }
    }
    for _ in 0..30 {
        attempts.push((None, presented(&NewTicket::generate())));
    }
    let redeems = attempts.into_iter().map(|(owner, ticket)| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { (owner, store.redeem(&ticket).await) })
    });
    let mut taken = vec![0; tickets.len()];
    for outcome in join_all(redeems).await {
        match outcome.unwrap() {
            (Some(i), Ok(redeemed)) => {
                assert_eq!(redeemed.user_id, format!("user-{i}"));
                taken[i] += 1;
            }
            (Some(_), Err(RedeemError::Rejected(_))) => {}
            (None, Err(RedeemError::Rejected(_))) => {}
            (owner, other) => panic!("{owner:?}: {other:?}"),
        }
    }
    assert!(taken.iter().all(|n| *n == 1), "{taken:?}");
}

/// The MongoDB store's group commit: concurrent mints go out as fewer `insertMany` commands
/// than there are tickets, and concurrent redeems as claims of several tickets each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_mints_and_redeems_in_a_burst_are_batched() {
    let (store, metrics, db) = make_store_with_metrics(Store::Mongo, 60, true).await;
    let store = Arc::new(store);
    let mints = (0..200).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.issue(&format!("user-{i}")).await.unwrap() })
    });
    let tickets: Vec<NewTicket> = join_all(mints)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let redeems = tickets.iter().map(|ticket| {
        let (store, ticket) = (Arc::clone(&store), presented(ticket));
        tokio::spawn(async move { store.redeem(&ticket).await.unwrap() })
    });
    join_all(redeems).await.into_iter().for_each(|r| {
        r.unwrap();
    });
    let commands = |operation: &str| {
        metrics
            .store_operation_seconds
            .with_label_values(&[operation])
            .get_sample_count()
    };
    let (inserts, claims, single) = (commands("insert"), commands("claim"), commands("consume"));
    assert!(inserts < 200, "{inserts} insertMany commands for 200 mints");
    assert!(claims > 0, "no redeem was batched");
    assert!(
        claims + single < 200,
        "{claims} claims and {single} single redeems for 200"
    );
    // The used tickets are deleted after their redeemers were answered.
    let tickets = db
        .unwrap()
        .collection::<mongodb::bson::Document>("ws_tickets");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = tickets
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} used tickets left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tickets_are_independent(kind: Store) {
    let store = make_store(kind, 60, true).await;
    let a = store.issue("alice").await.unwrap();
    let b = store.issue("bob").await.unwrap();
    assert_ne!(a.to_string(), b.to_string());
    assert_eq!(store.redeem(&presented(&b)).await.unwrap().user_id, "bob");
    assert_eq!(store.redeem(&presented(&a)).await.unwrap().user_id, "alice");
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(crate::support::Store::Memory).await })*
        }
        mod mongo {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(crate::support::Store::Mongo).await })*
        }
    };
}

conformance!(
    issue_then_redeem_names_the_user,
    a_single_use_ticket_redeems_once,
    a_wrong_secret_is_refused_and_leaves_the_ticket,
    an_unknown_ticket_is_refused,
    an_expired_ticket_is_refused,
    a_reusable_ticket_redeems_until_it_expires,
    concurrent_redemptions_let_exactly_one_through,
    a_burst_of_mints_and_redeems_answers_each_on_its_own,
    tickets_are_independent,
);

/// Revocation lookups, which every mint and authentication of a JWT with a `jti` makes, in a
/// burst (the MongoDB store answers them in batches): each jti gets its own answer.
async fn a_burst_of_revocation_lookups_answers_each_jti(kind: Store) {
    use ticketgate::store::{MemoryRevocations, MongoRevocations, RevocationStore};
    let store = Arc::new(match kind {
        Store::Memory => RevocationStore::Memory(MemoryRevocations::new()),
        Store::Mongo => {
            let settings = MongoSettings {
                outbox: None,
                uri: mongo_uri().into(),
                database: unique_db_name(),
            };
            let db = db::connect(&settings, Duration::from_secs(5))
                .await
                .unwrap();
            let bounds = Bounds {
                admission: ticketgate::db::Admission::new(64),
                timeout: Duration::from_secs(5),
                readiness: Readiness::ready(),
                metrics: Arc::new(ticketgate::metrics::Metrics::new()),
            };
            RevocationStore::Mongo(MongoRevocations::new(&db, bounds))
        }
    });
    let later = ticketgate::clock::unix_now() + 600;
    for i in (0..300).filter(|i| i % 7 == 0) {
        store.revoke(&format!("jti-{i}"), later).await.unwrap();
    }
    let lookups = (0..300).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { (i, store.is_revoked(&format!("jti-{i}")).await.unwrap()) })
    });
    for outcome in join_all(lookups).await {
        let (i, revoked) = outcome.unwrap();
        assert_eq!(revoked, i % 7 == 0, "jti-{i}");
    }
}

mod revocations {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_answers_each_jti() {
        super::a_burst_of_revocation_lookups_answers_each_jti(crate::support::Store::Memory).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mongo_answers_each_jti() {
        super::a_burst_of_revocation_lookups_answers_each_jti(crate::support::Store::Mongo).await
    }
}
