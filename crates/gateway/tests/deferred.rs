//! The `queue` fallback's store on SQLite and PostgreSQL: calls kept in order
//! per backend, settled once, retried up to the limit, bounded (also under a
//! concurrent burst), pruned a day after they settle, and a corrupt row named.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;

use gateway::deferred::{DeferredQueue, Delivery, MAX_DELIVERY_ATTEMPTS, QueueError};
use kit::db::{Db, DbOptions};

async fn queue(url: &str, bound: usize) -> DeferredQueue {
    let db = Db::open(url, &DbOptions::default(), &gateway::MIGRATOR).await.unwrap();
    DeferredQueue::new(db, bound)
}

fn state(status: Option<(String, i64, Option<String>)>) -> (String, i64, Option<String>) {
    status.unwrap()
}

async fn calls_are_delivered_in_order_and_settled_once(url: String) {
    let queue = queue(&url, 10).await;
    let metadata = BTreeMap::from([("idempotency-key".to_string(), "order-1".to_string())]);
    let first = queue.push("orders", "/shopfast.orders.v1.OrderService/CreateOrder", &[1, 2, 0, 255], &metadata).await;
    let first = first.unwrap();
    let second = queue.push("orders", "/shopfast.orders.v1.OrderService/CancelOrder", &[], &BTreeMap::new()).await;
    let second = second.unwrap();
    queue.push("payments", "/shopfast.payments.v1.PaymentService/Refund", &[9], &BTreeMap::new()).await.unwrap();

    let pending = queue.pending("orders", 10).await.unwrap();
    assert_eq!(pending.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [first.as_str(), second.as_str()]);
    assert_eq!((pending[0].message.as_slice(), &pending[0].metadata), (&[1u8, 2, 0, 255][..], &metadata));
    assert_eq!(queue.pending("orders", 1).await.unwrap().len(), 1, "the limit holds");

    queue.settle(&pending[0], Delivery::Delivered).await.unwrap();
    assert_eq!(state(queue.status(&first).await.unwrap()), ("delivered".into(), 1, None));
    // A second settlement of a settled call (a stale copy) changes nothing.
    queue.settle(&pending[0], Delivery::Rejected("late".into())).await.unwrap();
    assert_eq!(state(queue.status(&first).await.unwrap()).0, "delivered");

    queue.settle(&pending[1], Delivery::Retry("orders unavailable".into())).await.unwrap();
    let retried = queue.pending("orders", 10).await.unwrap();
    assert_eq!((retried.len(), retried[0].attempts), (1, 1));
    assert_eq!(state(queue.status(&second).await.unwrap()).2.as_deref(), Some("orders unavailable"));
    queue.settle(&retried[0], Delivery::Rejected("INVALID_ARGUMENT: no such order".into())).await.unwrap();
    assert_eq!(state(queue.status(&second).await.unwrap()).0, "failed");
    assert!(queue.pending("orders", 10).await.unwrap().is_empty());
    assert_eq!(queue.status("no-such-id").await.unwrap(), None);
}

async fn retries_end_in_failure_at_the_limit(url: String) {
    let queue = queue(&url, 10).await;
    let id = queue.push("orders", "/p.S/M", &[1], &BTreeMap::new()).await.unwrap();
    for attempt in 1..=MAX_DELIVERY_ATTEMPTS {
        let call = queue.pending("orders", 1).await.unwrap().remove(0);
        assert_eq!(call.attempts, attempt - 1);
        queue.settle(&call, Delivery::Retry("still down".into())).await.unwrap();
    }
    assert_eq!(
        state(queue.status(&id).await.unwrap()),
        ("failed".into(), MAX_DELIVERY_ATTEMPTS, Some("still down".into()))
    );
    assert!(queue.pending("orders", 1).await.unwrap().is_empty());
}

async fn a_full_queue_refuses_without_a_partial_write(url: String) {
    let queue = queue(&url, 2).await;
    for _ in 0..2 {
        queue.push("orders", "/p.S/M", &[1], &BTreeMap::new()).await.unwrap();
    }
    let refused = queue.push("orders", "/p.S/M", &[1], &BTreeMap::new()).await;
    assert!(matches!(refused, Err(QueueError::Full(2))), "{refused:?}");
    assert_eq!(queue.pending("orders", 10).await.unwrap().len(), 2, "nothing half-written");
    // A settled call frees its place.
    let call = queue.pending("orders", 1).await.unwrap().remove(0);
    queue.settle(&call, Delivery::Delivered).await.unwrap();
    queue.push("orders", "/p.S/M", &[1], &BTreeMap::new()).await.unwrap();
}

async fn a_concurrent_burst_never_exceeds_the_bound(url: String) {
    let queue = queue(&url, 5).await;
    let pushes = (0..20).map(|_| {
        let queue = queue.clone();
        tokio::spawn(async move { queue.push("orders", "/p.S/M", &[1], &BTreeMap::new()).await })
    });
    let results = futures::future::join_all(pushes).await;
    let accepted = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let pending = queue.pending("orders", 100).await.unwrap().len();
    assert_eq!((accepted, pending), (5, 5), "{results:?}");
}

async fn settled_calls_are_pruned_after_a_day(url: String) {
    let queue = queue(&url, 10).await;
    let id = queue.push("orders", "/p.S/M", &[1], &BTreeMap::new()).await.unwrap();
    let kept = queue.push("orders", "/p.S/M", &[2], &BTreeMap::new()).await.unwrap();
    let call = queue.pending("orders", 1).await.unwrap().remove(0);
    queue.settle(&call, Delivery::Delivered).await.unwrap();
    let now = kit_core::time::now_millis();
    assert_eq!(queue.prune(now).await.unwrap(), 0, "kept a day for `status`");
    assert_eq!(queue.prune(now + 25 * 3_600_000).await.unwrap(), 1);
    assert_eq!(queue.status(&id).await.unwrap(), None);
    assert_eq!(state(queue.status(&kept).await.unwrap()).0, "pending", "pending calls are never pruned");
}

async fn a_corrupt_row_is_named_not_delivered(url: String) {
    let db = Db::open(&url, &DbOptions::default(), &gateway::MIGRATOR).await.unwrap();
    sqlx::query(
        "INSERT INTO deferred_calls (id, backend, grpc_path, message, metadata, state, attempts, created_at_ms, updated_at_ms) \
         VALUES ('broken-1', 'orders', '/p.S/M', '%%% not base64', '{}', 'pending', 0, 1, 1)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let queue = DeferredQueue::new(db, 10);
    match queue.pending("orders", 10).await {
        Err(QueueError::Corrupt(id, _)) => assert_eq!(id, "broken-1"),
        other => panic!("{other:?}"),
    }
}

kit::backend_tests!(
    calls_are_delivered_in_order_and_settled_once,
    retries_end_in_failure_at_the_limit,
    a_full_queue_refuses_without_a_partial_write,
    a_concurrent_burst_never_exceeds_the_bound,
    settled_calls_are_pruned_after_a_day,
    a_corrupt_row_is_named_not_delivered,
);
