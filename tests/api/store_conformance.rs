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
    let policy = TicketPolicy {
        ttl: Duration::from_secs(ttl_secs),
        single_use,
    };
    match kind {
        Store::Memory => TicketStore::Memory(MemoryTicketStore::new(policy)),
        Store::Mongo => {
            let settings = MongoSettings {
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
                metrics: Arc::new(ticketgate::metrics::Metrics::new()),
            };
            // As the gateway runs it: each thread with a client of its own.
            let per_thread = PerThreadDatabase::new(options, db.clone());
            TicketStore::Mongo(
                MongoTicketStore::new(&db, policy, bounds).with_per_thread_clients(per_thread),
            )
        }
    }
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
    tickets_are_independent,
);
