//! The orders store on SQLite and PostgreSQL: orders with price snapshots,
//! conditional transitions with their outbox events, paging, and the saga
//! store driven by the real orchestrator.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kit::db::{Db, DbOptions};
use kit::error::DomainError;
use orders::domain::{Line, OrderStatus, Pricing};
use orders::store::{Change, Order, OrderStore, StoreError};
use saga::{Orchestrator, Output, RetryPolicy, SagaRecord, SagaState, SagaStore, Step, StepError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn open(url: &str) -> OrderStore {
    OrderStore::new(Db::open(url, &DbOptions::default(), &MIGRATOR).await.unwrap())
}

fn order(id: &str, user: &str, created_at: i64) -> Order {
    let lines = vec![
        Line {
            product_id: "p1".into(),
            sku: "SKU-1".into(),
            name: "One".into(),
            quantity: 2,
            unit_price_minor: 1_000,
            currency_code: "USD".into(),
        },
        Line {
            product_id: "p2".into(),
            sku: "SKU-2".into(),
            name: "Two".into(),
            quantity: 1,
            unit_price_minor: 250,
            currency_code: "USD".into(),
        },
    ];
    let totals = Pricing::default().totals(&lines, "USD").unwrap();
    Order {
        id: id.into(),
        user_id: user.into(),
        status: OrderStatus::Reserved,
        currency_code: "USD".into(),
        lines,
        totals,
        shipping_address: r#"{"line1":"1 Main St","city":"Springfield","countryCode":"US"}"#.into(),
        saga_id: format!("saga-{id}"),
        payment_id: None,
        failure_reason: None,
        created_at,
        updated_at: created_at,
    }
}

async fn orders_keep_their_price_snapshot_and_page_newest_first(url: String) {
    let store = open(&url).await;
    for n in 0..5 {
        store.create(&order(&format!("o{n}"), "alice", 1_000 + n)).await.unwrap();
    }
    store.create(&order("b1", "bob", 1_000)).await.unwrap();
    let got = store.get("o3").await.unwrap();
    assert_eq!(got, order("o3", "alice", 1_003));
    assert_eq!(got.totals.subtotal, 2_250);
    let dup = store.create(&order("o3", "alice", 1)).await.unwrap_err();
    assert!(matches!(dup, StoreError::Domain(DomainError::AlreadyExists(_))), "{dup}");
    assert!(matches!(store.get("nope").await, Err(StoreError::Domain(DomainError::NotFound(_)))));

    let (page, total) = store.list("alice", None, 0, 2).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(page.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["o4", "o3"]);
    let (rest, _) = store.list("alice", None, 4, 2).await.unwrap();
    assert_eq!(rest.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["o0"]);
    store.transition("o1", OrderStatus::Reserved, OrderStatus::Cancelled, Change::default()).await.unwrap();
    let (cancelled, n) = store.list("alice", Some(OrderStatus::Cancelled), 0, 10).await.unwrap();
    assert_eq!((cancelled.len(), n, cancelled[0].id.as_str()), (1, 1, "o1"));
    assert_eq!(store.list("carol", None, 0, 10).await.unwrap(), (vec![], 0));
}

async fn transitions_are_conditional_and_write_their_event_atomically(url: String) {
    let store = open(&url).await;
    store.create(&order("o1", "alice", 1)).await.unwrap();
    let paid = Change {
        payment_id: Some("pay-1"),
        event: Some(("order.paid", r#"{"ship_in_ms":0}"#, 0)),
        ..Default::default()
    };
    store.transition("o1", OrderStatus::Reserved, OrderStatus::Paid, paid).await.unwrap();
    let got = store.get("o1").await.unwrap();
    assert_eq!((got.status, got.payment_id.as_deref()), (OrderStatus::Paid, Some("pay-1")));

    // Stale `from`, unknown order, and an edge the machine lacks: refused, nothing written.
    let stale = store.transition("o1", OrderStatus::Reserved, OrderStatus::Paid, Change::default()).await;
    assert!(matches!(stale, Err(StoreError::Domain(DomainError::FailedPrecondition(_)))));
    let unknown = store.transition("zz", OrderStatus::Reserved, OrderStatus::Paid, Change::default()).await;
    assert!(matches!(unknown, Err(StoreError::Domain(DomainError::NotFound(_)))));
    let with_event = Change { event: Some(("never", "{}", 0)), ..Default::default() };
    let illegal = store.transition("o1", OrderStatus::Delivered, OrderStatus::Cancelled, with_event).await;
    assert!(matches!(illegal, Err(StoreError::Domain(DomainError::FailedPrecondition(_)))));

    let now = kit::time::now_millis();
    let due = store.due_events(now + 1, 10).await.unwrap();
    assert_eq!(due.len(), 1, "one event, from the one transition that happened");
    assert_eq!((due[0].order_id.as_str(), due[0].kind.as_str()), ("o1", "order.paid"));
    store.retry_later(&due[0].id, 60_000).await.unwrap();
    assert!(store.due_events(now + 1, 10).await.unwrap().is_empty(), "postponed");
    let later = store.due_events(now + 120_000, 10).await.unwrap();
    assert_eq!(later[0].attempts, 1);
    store.mark_published(&later[0].id).await.unwrap();
    assert!(store.due_events(now + 120_000, 10).await.unwrap().is_empty(), "published once");
}

/// A step that succeeds, or whose compensation always fails.
struct Fake {
    name: &'static str,
    fail_run: bool,
    fail_undo: bool,
}

impl Step for Fake {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run<'a>(&'a self, _saga: &'a SagaRecord, key: &'a str) -> BoxFuture<'a, Result<Output, StepError>> {
        Box::pin(async move {
            if self.fail_run {
                Err(StepError::Permanent("declined".into()))
            } else {
                Ok(BTreeMap::from([(self.name.to_string(), key.to_string())]))
            }
        })
    }

    fn compensate<'a>(&'a self, _saga: &'a SagaRecord, _key: &'a str) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move { if self.fail_undo { Err(StepError::Permanent("cannot undo".into())) } else { Ok(()) } })
    }
}

async fn sagas_persist_and_the_stuck_ones_are_listed(url: String) {
    let store = Arc::new(open(&url).await);
    let policy = RetryPolicy {
        max_attempts: 2,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        give_up_after: Duration::from_millis(10),
    };
    let steps = |fail_undo: bool| -> Vec<Arc<dyn Step>> {
        vec![
            Arc::new(Fake { name: "reserve", fail_run: false, fail_undo }),
            Arc::new(Fake { name: "pay", fail_run: true, fail_undo: false }),
        ]
    };
    let ok = Orchestrator::new(steps(false), store.clone(), policy, policy);
    let compensated = ok.run(ok.new_saga("s1", "o1", "u1", BTreeMap::new())).await.unwrap();
    assert_eq!(compensated.state, SagaState::Compensated);
    assert_eq!(store.saga("s1").await.unwrap(), compensated, "the JSON record round-trips");

    let stuck = Orchestrator::new(steps(true), store.clone(), policy, policy);
    let failed = stuck.run(stuck.new_saga("s2", "o2", "u2", BTreeMap::new())).await.unwrap();
    assert_eq!((failed.state, failed.manual_intervention), (SagaState::Failed, true));
    let listed = store.list_sagas(true, None, 50).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s2"]);
    let all = store.list_sagas(false, None, 50).await.unwrap();
    assert_eq!(all.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s2", "s1"], "latest first");
    let one = store.list_sagas(false, Some("o1"), 50).await.unwrap();
    assert_eq!(one.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s1"]);
    assert_eq!(store.list_sagas(false, None, 1).await.unwrap().len(), 1);

    // A saga saved mid-flight is what a restart resumes.
    let mut running = ok.new_saga("s3", "o3", "u3", BTreeMap::new());
    store.save(&running).await.unwrap();
    running.state = SagaState::Compensating;
    store.save(&running).await.unwrap();
    let unfinished = store.unfinished().await.unwrap();
    assert_eq!(unfinished.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s3"]);
    let resumed = ok.resume_all().await.unwrap();
    assert_eq!(resumed[0].state, SagaState::Compensated);
    assert!(store.unfinished().await.unwrap().is_empty());
}

/// Finishes cancellations as the real one does, without the other services
/// (their refund and restock are tested end to end); fails while `down`.
struct FakeFinish {
    store: OrderStore,
    down: std::sync::atomic::AtomicBool,
}

impl orders::fulfilment::FinishCancel for FakeFinish {
    fn finish_cancel<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("payments unavailable".into());
            }
            self.store
                .transition(order_id, OrderStatus::Cancelling, OrderStatus::Cancelled, Change::default())
                .await
                .map_err(|e| e.to_string())
        })
    }
}

async fn paid_orders_ship_and_deliver_from_the_outbox_at_least_once(url: String) {
    use orders::cancelling::ORDER_CANCELLING;
    use orders::fulfilment::{FulfilmentConfig, ORDER_PAID, process_due as process};
    let store = open(&url).await;
    let finish = FakeFinish { store: store.clone(), down: true.into() };
    let process_due = |store: &OrderStore, config: &FulfilmentConfig, now: i64| {
        let (store, config, finish) = (store.clone(), config.clone(), &finish);
        async move { process(&store, &config, finish, now).await }
    };
    let config = FulfilmentConfig { ship_after_ms: 0, deliver_after_ms: 60_000, ..Default::default() };
    for id in ["o1", "o2"] {
        store.create(&order(id, "alice", 1)).await.unwrap();
        let paid = Change { event: Some((ORDER_PAID, "{}", config.ship_after_ms)), ..Default::default() };
        store.transition(id, OrderStatus::Reserved, OrderStatus::Paid, paid).await.unwrap();
    }
    // o2 is cancelled before it ships: its paid event is settled without
    // shipping it, and its cancellation waits until it can be finished.
    let cancelling = Change { event: Some((ORDER_CANCELLING, "{}", 0)), ..Default::default() };
    store.transition("o2", OrderStatus::Paid, OrderStatus::Cancelling, cancelling).await.unwrap();
    let now = kit::time::now_millis() + 1;
    assert_eq!(process_due(&store, &config, now).await.unwrap(), 2, "o1 shipped, o2's paid event settled");
    assert_eq!(store.get("o1").await.unwrap().status, OrderStatus::Shipped);
    assert_eq!(store.get("o2").await.unwrap().status, OrderStatus::Cancelling, "its refund could not be done yet");
    finish.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let retried = kit::time::now_millis() + 1_500;
    assert_eq!(process_due(&store, &config, retried).await.unwrap(), 1, "the cancellation, retried");
    assert_eq!(store.get("o2").await.unwrap().status, OrderStatus::Cancelled);
    assert_eq!(process_due(&store, &config, retried).await.unwrap(), 0, "delivery is not due yet");
    // Due a minute after the shipping pass (which ran after `now`).
    let later = kit::time::now_millis() + config.deliver_after_ms + 1_000;
    assert_eq!(process_due(&store, &config, later).await.unwrap(), 1);
    assert_eq!(store.get("o1").await.unwrap().status, OrderStatus::Delivered);
    assert_eq!(process_due(&store, &config, later).await.unwrap(), 0, "each event once");

    // A crash after the change but before the event was marked: the replay
    // finds the order moved on and only settles the event.
    store.create(&order("o3", "alice", 2)).await.unwrap();
    let paid = Change { event: Some((ORDER_PAID, "{}", 0)), ..Default::default() };
    store.transition("o3", OrderStatus::Reserved, OrderStatus::Paid, paid).await.unwrap();
    store.transition("o3", OrderStatus::Paid, OrderStatus::Shipped, Change::default()).await.unwrap();
    assert_eq!(process_due(&store, &config, later).await.unwrap(), 1);
    assert_eq!(store.get("o3").await.unwrap().status, OrderStatus::Shipped);
    assert_eq!(process_due(&store, &config, later).await.unwrap(), 0);
}

kit::backend_tests!(
    paid_orders_ship_and_deliver_from_the_outbox_at_least_once,
    orders_keep_their_price_snapshot_and_page_newest_first,
    transitions_are_conditional_and_write_their_event_atomically,
    sagas_persist_and_the_stuck_ones_are_listed,
);
