//! The orders store on SQLite and PostgreSQL: orders with price snapshots,
//! conditional transitions with their outbox events, paging, and the saga
//! store driven by the real orchestrator.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kit::db::{Db, DbOptions};
use kit_core::error::DomainError;
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

    let now = kit_core::time::now_millis();
    let due = store.due_events("order.paid", now + 1, 10).await.unwrap();
    assert_eq!(due.len(), 1, "one event, from the one transition that happened");
    assert_eq!((due[0].order_id.as_str(), due[0].kind.as_str()), ("o1", "order.paid"));
    store.retry_later(&due[0].id, 60_000).await.unwrap();
    assert!(store.due_events("order.paid", now + 1, 10).await.unwrap().is_empty(), "postponed");
    let later = store.due_events("order.paid", now + 120_000, 10).await.unwrap();
    assert_eq!(later[0].attempts, 1);
    store.mark_published(&later[0].id).await.unwrap();
    assert!(store.due_events("order.paid", now + 120_000, 10).await.unwrap().is_empty(), "published once");
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

async fn cancellations_are_finished_from_the_outbox_until_they_succeed(url: String) {
    use orders::events::ORDER_CANCELLING;
    use orders::events::ORDER_PAID;
    use orders::fulfilment::{FulfilmentConfig, process_due as process};
    let store = open(&url).await;
    let finish = FakeFinish { store: store.clone(), down: true.into() };
    let process_due = |store: &OrderStore, config: &FulfilmentConfig, now: i64| {
        let (store, config, finish) = (store.clone(), config.clone(), &finish);
        async move { process(&store, &config, finish, now).await }
    };
    let config = FulfilmentConfig::default();
    store.create(&order("o2", "alice", 1)).await.unwrap();
    let paid = Change { event: Some((ORDER_PAID, "{}", 0)), ..Default::default() };
    store.transition("o2", OrderStatus::Reserved, OrderStatus::Paid, paid).await.unwrap();
    let cancelling = Change { event: Some((ORDER_CANCELLING, "{}", 0)), ..Default::default() };
    store.transition("o2", OrderStatus::Paid, OrderStatus::Cancelling, cancelling).await.unwrap();
    let now = kit_core::time::now_millis() + 1;
    assert_eq!(process_due(&store, &config, now).await.unwrap(), 0, "its refund could not be done yet");
    assert_eq!(store.get("o2").await.unwrap().status, OrderStatus::Cancelling);
    finish.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let retried = kit_core::time::now_millis() + 1_500;
    assert_eq!(process_due(&store, &config, retried).await.unwrap(), 1, "the cancellation, retried");
    assert_eq!(store.get("o2").await.unwrap().status, OrderStatus::Cancelled);
    assert_eq!(process_due(&store, &config, retried).await.unwrap(), 0, "each once");
    // The paid event is the queue's, not this worker's.
    assert_eq!(store.due_events(ORDER_PAID, retried, 10).await.unwrap().len(), 1);
}

/// The outbox's clock counts milliseconds, and the relay republishes what
/// was published strictly before its check: a check in the publish's own
/// millisecond sees nothing older. Waits for the next one.
async fn a_millisecond_later() {
    let now = kit_core::time::now_millis();
    while kit_core::time::now_millis() == now {
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
}

/// A store holding `ids` as PAID orders, each with its `order.paid` event due.
async fn paid_orders(url: &str, ids: &[&str]) -> OrderStore {
    let store = open(url).await;
    for id in ids {
        store.create(&order(id, "alice", 1)).await.unwrap();
        let paid = Change { event: Some((orders::events::ORDER_PAID, "{}", 0)), ..Default::default() };
        store.transition(id, OrderStatus::Reserved, OrderStatus::Paid, paid).await.unwrap();
    }
    store
}

/// What the fulfilment group's consumer "c" takes from stream "s" (claiming after a minute).
fn receive() -> queue::Receive<'static> {
    queue::Receive {
        stream: "s",
        group: "fulfilment",
        consumer: "c",
        max: 10,
        block: Duration::ZERO,
        claim_idle: Duration::from_secs(60),
    }
}

/// The relay against the embedded broker (the real one, in process): due
/// events published once, a replayed step harmless, and what a restarted
/// broker lost published again.
async fn the_relay_publishes_once_and_again_what_the_broker_lost(url: String) {
    use orders::events::ORDER_PAID;
    use orders::relay::{Relay, RelayConfig};
    use queue::Broker;
    let store = paid_orders(&url, &["r1", "r2"]).await;
    let broker = Arc::new(queue::memory::Embedded::new(1_000));
    let config = RelayConfig { republish_grace_ms: 0, ..Default::default() };
    let relay = Relay { store: store.clone(), broker: broker.clone(), stream: "s".into(), config: config.clone() };
    let mut epoch = None;
    relay.publish_due().await.unwrap();
    relay.publish_due().await.unwrap();
    let got = broker.receive(receive()).await.unwrap();
    assert_eq!(got.len(), 2, "each due event published once: {got:?}");
    assert_eq!(got[0].message.kind, ORDER_PAID);
    // r2's event cannot move r1 (nor be closed by r1's step): refused, nothing changed.
    let wrong = Change { handles: Some(&got[1].message.event_id), ..Default::default() };
    let refused = store.transition(&got[0].message.key, OrderStatus::Paid, OrderStatus::Shipped, wrong).await;
    assert!(matches!(refused, Err(StoreError::Domain(DomainError::Invalid(_)))), "{refused:?}");
    assert_eq!(store.get(&got[0].message.key).await.unwrap().status, OrderStatus::Paid);
    store.mark_handled(&got[0].message.key, &got[1].message.event_id).await.unwrap();
    // r1 is handled (its step made, the event marked in the same transaction).
    let handles = Change { handles: Some(&got[0].message.event_id), ..Default::default() };
    store.transition(&got[0].message.key, OrderStatus::Paid, OrderStatus::Shipped, handles).await.unwrap();
    broker.ack("s", "fulfilment", &[got[0].id.clone(), got[1].id.clone()]).await.unwrap();
    // Nothing pending and nothing to deliver while r2's event is unhandled:
    // it was lost (acknowledged without its step, here) and goes out again.
    a_millisecond_later().await;
    relay.check(&mut epoch).await.unwrap();
    let again = broker.receive(receive()).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.event_id, got[1].message.event_id);

    // The broker restarts and forgets everything: a new epoch, and r2 again.
    let restarted = Arc::new(queue::memory::Embedded::new(1_000));
    let relay = Relay { store: store.clone(), broker: restarted.clone(), stream: "s".into(), config };
    a_millisecond_later().await;
    relay.check(&mut epoch).await.unwrap();
    let after = restarted.receive(receive()).await.unwrap();
    assert_eq!(after.iter().map(|d| d.message.key.as_str()).collect::<Vec<_>>(), ["r2"]);
    store.mark_handled(&after[0].message.key, &after[0].message.event_id).await.unwrap();
    restarted.ack("s", "fulfilment", &[after[0].id.clone()]).await.unwrap();
    relay.check(&mut epoch).await.unwrap();
    assert!(restarted.receive(receive()).await.unwrap().is_empty(), "handled events stay handled");
}

/// While the queue is busy (something pending), an event lost on the way
/// (acknowledged without its step: dead-lettered, say) goes out again once
/// it stayed unhandled for `republish_after_ms` — not before.
async fn the_relay_publishes_again_what_stayed_unhandled_while_the_queue_is_busy(url: String) {
    use orders::relay::{Relay, RelayConfig};
    use queue::Broker;
    let store = paid_orders(&url, &["b1", "b2"]).await;
    let broker = Arc::new(queue::memory::Embedded::new(1_000));
    let relay = |republish_after_ms| Relay {
        store: store.clone(),
        broker: broker.clone(),
        stream: "s".into(),
        config: RelayConfig { republish_grace_ms: 0, republish_after_ms, ..Default::default() },
    };
    let mut epoch = None;
    relay(60_000).publish_due().await.unwrap();
    let got = broker.receive(receive()).await.unwrap();
    assert_eq!(got.len(), 2);
    let lost = got.iter().find(|d| d.message.key == "b1").unwrap();
    broker.ack("s", "fulfilment", std::slice::from_ref(&lost.id)).await.unwrap();
    // b2 still pending: busy. Not overdue yet under the default: nothing goes out.
    relay(60_000).check(&mut epoch).await.unwrap();
    assert!(broker.receive(receive()).await.unwrap().is_empty(), "nothing overdue yet");
    // Overdue (after 0 ms here): b1 again, and b2's copy is harmless.
    a_millisecond_later().await;
    relay(0).check(&mut epoch).await.unwrap();
    let again = broker.receive(receive()).await.unwrap();
    let keys: Vec<&str> = again.iter().map(|d| d.message.key.as_str()).collect();
    assert!(keys.contains(&"b1"), "{keys:?}");
    assert_eq!(
        RelayConfig { republish_after_ms: 1, ..Default::default() }.validate().unwrap_err(),
        "relay.republish_after_ms must be at least relay.republish_grace_ms"
    );
}

kit::backend_tests!(
    cancellations_are_finished_from_the_outbox_until_they_succeed,
    the_relay_publishes_once_and_again_what_the_broker_lost,
    the_relay_publishes_again_what_stayed_unhandled_while_the_queue_is_busy,
    orders_keep_their_price_snapshot_and_page_newest_first,
    transitions_are_conditional_and_write_their_event_atomically,
    sagas_persist_and_the_stuck_ones_are_listed,
);
