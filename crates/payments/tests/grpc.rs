//! PaymentService over a real socket, on SQLite and PostgreSQL: every test
//! card's behaviour, idempotent replays, one charge per order, refunds, and
//! garbage input.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use contracts::common::v1::Money;
use contracts::payments::v1 as pb;
use contracts::payments::v1::payment_service_client::PaymentServiceClient;
use kit::db::{Db, DbOptions};
use kit::testing::{expect_code, service_common};
use payments::domain::Status;
use payments::store::PaymentStore;
use tonic::Code;
use tonic::transport::Channel;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

struct Harness {
    client: PaymentServiceClient<Channel>,
    store: PaymentStore,
    _service: kit::server::RunningService,
}

/// The test's card key (32 bytes, base64): Payments has no built-in one.
const CARD_KEY: &str = "dGVzdCBjYXJkIGtleSwgMzIgYnl0ZXMgbG9uZyEhISE=";

async fn start(url: &str) -> Harness {
    let mut config = payments::PaymentsConfig {
        common: service_common(url),
        card_key: Some(kit::config::Secret::new(CARD_KEY)),
        ..Default::default()
    };
    config.processor.timeout_ms = 50;
    config.processor.slow_ms = 50;
    let service = payments::start(config, kit::shutdown::CancellationToken::new()).await.expect("start payments");
    let client = PaymentServiceClient::connect(service.grpc_url()).await.unwrap();
    // The service migrated the database; the test reads it directly.
    let store = PaymentStore::new(Db::open(url, &DbOptions::default(), &MIGRATOR).await.unwrap());
    Harness { client, store, _service: service }
}

fn usd(minor_units: i64) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), minor_units })
}

fn card(number: &str) -> Option<pb::Card> {
    Some(pb::Card { number: number.into(), expiry_month: 12, expiry_year: 2040, cvc: "123".into() })
}

fn pay(order: &str, number: &str, amount: i64) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order.into(),
        user_id: "user-1".into(),
        amount: usd(amount),
        card: card(number),
        payment_method_token: String::new(),
    }
}

fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

async fn statuses(store: &PaymentStore, order: &str) -> Vec<Status> {
    store.for_order(order).await.unwrap().iter().map(|p| p.status).collect()
}

async fn an_approved_card_is_charged_once_with_every_step_recorded(url: String) {
    let mut h = start(&url).await;
    let paid = h.client.process_payment(pay("order-1", "4242424242424242", 1_999)).await.unwrap().into_inner();
    assert_eq!(paid.status, pb::PaymentStatus::Completed as i32);
    assert_eq!((paid.card_brand.as_str(), paid.card_last4.as_str()), ("visa", "4242"));
    assert_eq!(paid.amount, usd(1_999));
    let steps = h.store.attempts(&paid.id).await.unwrap();
    let steps: Vec<(&str, &str)> = steps.iter().map(|(s, o)| (s.as_str(), o.as_str())).collect();
    assert_eq!(steps, [("create", "ok"), ("authorize", "ok"), ("capture", "ok")]);
    // A second charge for the same order, even with another key, charges
    // nothing: the order's payment is the answer (a retry whose first answer
    // was lost); another amount is refused.
    let again = h.client.process_payment(keyed(pay("order-1", "5555555555554444", 1_999), "other-key")).await;
    assert_eq!(again.unwrap().into_inner().id, paid.id, "the same payment");
    let other = h.client.process_payment(keyed(pay("order-1", "5555555555554444", 2_500), "third-key")).await;
    expect_code(other, Code::AlreadyExists);
    let statuses = statuses(&h.store, "order-1").await;
    assert_eq!(statuses.iter().filter(|s| **s == Status::Completed).count(), 1, "{statuses:?}");
    let got = h.client.get_payment(pb::GetPaymentRequest { payment_id: paid.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, paid);
}

async fn declines_are_permanent_and_errors_are_retryable(url: String) {
    let mut h = start(&url).await;
    for (order, number, code) in [
        ("o-funds", "4000000000009995", "insufficient_funds"),
        ("o-expired", "4000000000000069", "expired_card"),
        ("o-declined", "4000000000000002", "card_declined"),
    ] {
        let message = expect_code(h.client.process_payment(pay(order, number, 500)).await, Code::FailedPrecondition);
        assert!(message.contains(code), "{message}");
        let [payment] = h.store.for_order(order).await.unwrap().try_into().unwrap();
        assert_eq!(payment.status, Status::Failed);
        assert_eq!((payment.failure_code.as_deref(), payment.retryable), (Some(code), false));
    }
    // A card whose expiry date has passed is declined the same way.
    let mut old = pay("o-old", "4242424242424242", 500);
    old.card.as_mut().unwrap().expiry_year = 2020;
    expect_code(h.client.process_payment(old).await, Code::FailedPrecondition);

    for (order, number, code) in [
        ("o-transient", "4000000000000119", "processing_error"),
        ("o-timeout", "4000000000000127", "processor_timeout"),
    ] {
        let failed = h.client.process_payment(keyed(pay(order, number, 500), order)).await.unwrap_err();
        assert_eq!(failed.code(), Code::Unavailable);
        assert!(
            kit_resilience::signals::is_request_cause(failed.metadata()),
            "the processor's trouble with one card is marked as the request's own (callers' breakers skip it)"
        );
        // The same key again is a new attempt, not a replay of the failure.
        expect_code(h.client.process_payment(keyed(pay(order, number, 500), order)).await, Code::Unavailable);
        let payments = h.store.for_order(order).await.unwrap();
        assert_eq!(payments.len(), 2, "each attempt is recorded");
        for payment in payments {
            assert_eq!(
                (payment.status, payment.failure_code.as_deref(), payment.retryable),
                (Status::Failed, Some(code), true)
            );
        }
    }
    let slow = h.client.process_payment(pay("o-slow", "4000000000000077", 500)).await.unwrap().into_inner();
    assert_eq!(slow.status, pb::PaymentStatus::Completed as i32);
}

async fn a_replayed_request_returns_the_original_and_never_charges_again(url: String) {
    let h = start(&url).await;
    let attempts = (0..20).map(|_| {
        let mut client = h.client.clone();
        async move { client.process_payment(keyed(pay("order-idem", "4242424242424242", 700), "pay-once")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let mut ids = std::collections::BTreeSet::new();
    for result in results {
        match result {
            Ok(payment) => {
                ids.insert(payment.into_inner().id);
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "in progress: {status:?}"),
        }
    }
    assert!(ids.len() <= 1, "{ids:?}");
    let mut client = h.client.clone();
    let replay = client.process_payment(keyed(pay("order-idem", "4242424242424242", 700), "pay-once")).await.unwrap();
    assert!(ids.is_empty() || ids.contains(&replay.get_ref().id));
    let payments = h.store.for_order("order-idem").await.unwrap();
    assert_eq!(payments.len(), 1, "one attempt, one charge");
    assert_eq!(payments[0].status, Status::Completed);
    // The same key for another amount is refused.
    let other = client.process_payment(keyed(pay("order-idem", "4242424242424242", 701), "pay-once")).await;
    expect_code(other, Code::InvalidArgument);
}

async fn refunds_partial_then_full_and_no_further(url: String) {
    let mut h = start(&url).await;
    let paid = h.client.process_payment(pay("order-r", "4242424242424242", 1_000)).await.unwrap().into_inner();
    let refund = |amount: Option<i64>| pb::RefundPaymentRequest {
        payment_id: paid.id.clone(),
        amount: amount.and_then(usd),
        reason: "customer asked".into(),
    };
    let part = h.client.refund_payment(refund(Some(300))).await.unwrap().into_inner();
    assert_eq!((part.status, part.refunded.clone()), (pb::PaymentStatus::Completed as i32, usd(300)));
    expect_code(h.client.refund_payment(refund(Some(701))).await, Code::FailedPrecondition);
    let rest = h.client.refund_payment(refund(None)).await.unwrap().into_inner();
    assert_eq!((rest.status, rest.refunded.clone()), (pb::PaymentStatus::Refunded as i32, usd(1_000)));
    assert_eq!(rest.refunds.len(), 2);
    assert_eq!(rest.refunds[1].amount, usd(700));
    expect_code(h.client.refund_payment(refund(None)).await, Code::FailedPrecondition);
    // Wrong currency, unknown payment, a failed payment.
    let euros = pb::RefundPaymentRequest {
        payment_id: paid.id.clone(),
        amount: Some(Money { currency_code: "EUR".into(), minor_units: 1 }),
        reason: String::new(),
    };
    expect_code(h.client.refund_payment(euros).await, Code::InvalidArgument);
    let unknown = pb::RefundPaymentRequest { payment_id: "nope".into(), ..Default::default() };
    expect_code(h.client.refund_payment(unknown).await, Code::NotFound);
    expect_code(h.client.process_payment(pay("order-f", "4000000000009995", 100)).await, Code::FailedPrecondition);
    let failed = h.store.for_order("order-f").await.unwrap().remove(0);
    let refund_failed = pb::RefundPaymentRequest { payment_id: failed.id, ..Default::default() };
    expect_code(h.client.refund_payment(refund_failed).await, Code::FailedPrecondition);
}

async fn garbage_is_refused_and_nothing_is_recorded(url: String) {
    let mut h = start(&url).await;
    let good = pay("order-g", "4242424242424242", 100);
    let cases: Vec<pb::ProcessPaymentRequest> = vec![
        pb::ProcessPaymentRequest::default(),
        pb::ProcessPaymentRequest { order_id: String::new(), ..good.clone() },
        pb::ProcessPaymentRequest { user_id: " ".into(), ..good.clone() },
        pb::ProcessPaymentRequest { amount: None, ..good.clone() },
        pb::ProcessPaymentRequest { amount: usd(0), ..good.clone() },
        pb::ProcessPaymentRequest { amount: usd(-100), ..good.clone() },
        pb::ProcessPaymentRequest {
            amount: Some(Money { currency_code: "dollars".into(), minor_units: 1 }),
            ..good.clone()
        },
        pb::ProcessPaymentRequest { card: None, ..good.clone() },
        pb::ProcessPaymentRequest { card: card("4242424242424241"), ..good.clone() },
        pb::ProcessPaymentRequest { card: card("not a card"), ..good.clone() },
        pb::ProcessPaymentRequest { order_id: "x".repeat(201), ..good.clone() },
    ];
    for case in cases {
        expect_code(h.client.process_payment(case.clone()).await, Code::InvalidArgument);
    }
    assert!(h.store.for_order("order-g").await.unwrap().is_empty(), "nothing half-written");
    expect_code(h.client.get_payment(pb::GetPaymentRequest { payment_id: String::new() }).await, Code::InvalidArgument);
    expect_code(h.client.get_payment(pb::GetPaymentRequest { payment_id: "missing".into() }).await, Code::NotFound);

    let validate = |number: &str, year: i32| pb::ValidatePaymentMethodRequest {
        card: Some(pb::Card { number: number.into(), expiry_month: 6, expiry_year: year, cvc: "123".into() }),
    };
    let ok = h.client.validate_payment_method(validate("5555555555554444", 2040)).await.unwrap().into_inner();
    assert!(ok.valid);
    assert_eq!((ok.card_brand.as_str(), ok.card_last4.as_str()), ("mastercard", "4444"));
    let expired = h.client.validate_payment_method(validate("5555555555554444", 2020)).await.unwrap().into_inner();
    assert!(!expired.valid && expired.reason.contains("expired"));
    let bad = h.client.validate_payment_method(validate("1234", 2040)).await.unwrap().into_inner();
    assert!(!bad.valid && bad.reason.contains("12 to 19 digits"), "{bad:?}");
    let missing = h.client.validate_payment_method(pb::ValidatePaymentMethodRequest { card: None }).await;
    expect_code(missing, Code::InvalidArgument);
}

fn void(order: &str) -> pb::VoidOrderPaymentsRequest {
    pb::VoidOrderPaymentsRequest { order_id: order.into(), reason: "order not completed".into() }
}

/// A payment as a crashed call leaves it: `status`, its call gone (or not) by
/// `abandon_at`. Until it reaches `status` it is not yet abandoned, or the
/// service's recovery pass could settle it half-built.
async fn left_in_flight(store: &PaymentStore, order: &str, status: Status, abandon_at: i64) -> String {
    use payments::store::{Change, NewPayment};
    let building = kit_core::time::now_millis() + 60_000;
    let new = NewPayment {
        order_id: order,
        user_id: "user-1",
        amount_minor: 500,
        currency_code: "USD",
        card_brand: "visa",
        card_last4: "4242",
        abandon_at: if status == Status::Pending { abandon_at } else { building },
    };
    let id = store.create(&new).await.unwrap().id;
    let last = |to: Status| if to == status { Some(abandon_at) } else { None };
    if status != Status::Pending {
        let held =
            Change { authorization_id: Some("auth_test"), abandon_at: last(Status::Authorized), ..Default::default() };
        store.transition(&id, Status::Pending, Status::Authorized, held).await.unwrap();
    }
    if status == Status::Processing {
        let capturing = Change { abandon_at: last(Status::Processing), ..Default::default() };
        store.transition(&id, Status::Authorized, Status::Processing, capturing).await.unwrap();
    }
    id
}

async fn void_leaves_an_order_with_nothing_taken_or_held(url: String) {
    let mut h = start(&url).await;
    let now = kit_core::time::now_millis();
    // Taken: refunded in full, once however often asked.
    let paid = h.client.process_payment(pay("order-v1", "4242424242424242", 1_000)).await.unwrap().into_inner();
    for _ in 0..2 {
        let voided = h.client.void_order_payments(void("order-v1")).await.unwrap().into_inner();
        assert_eq!(voided.payments.len(), 1);
        assert_eq!(voided.payments[0].status, pb::PaymentStatus::Refunded as i32);
        assert_eq!(voided.payments[0].refunded, usd(1_000));
        assert_eq!(voided.payments[0].refunds.len(), 1, "refunded once");
    }
    assert_eq!(h.store.get(&paid.id).await.unwrap().refunded_minor, 1_000);

    // A call still working on a payment: not now.
    let busy = left_in_flight(&h.store, "order-v2", Status::Pending, now + 60_000).await;
    expect_code(h.client.void_order_payments(void("order-v2")).await, Code::Aborted);
    assert_eq!(h.store.get(&busy).await.unwrap().status, Status::Pending, "left to its call");

    // A hold a crash left behind: reversed, the payment FAILED.
    let held = left_in_flight(&h.store, "order-v3", Status::Authorized, now - 1).await;
    let voided = h.client.void_order_payments(void("order-v3")).await.unwrap().into_inner();
    assert_eq!(voided.payments[0].status, pb::PaymentStatus::Failed as i32);
    assert_eq!(voided.payments[0].failure_code, "interrupted");
    let steps = h.store.attempts(&held).await.unwrap();
    assert_eq!(steps.last().map(|(s, o)| (s.as_str(), o.as_str())), Some(("reverse", "ok")));

    // An order with no payment: nothing to do — and no charge for it later
    // (the void reached Payments before a charge whose caller died).
    let none = h.client.void_order_payments(void("order-none")).await.unwrap().into_inner();
    assert!(none.payments.is_empty());
    let late = h.client.process_payment(pay("order-none", "4242424242424242", 900)).await;
    assert!(expect_code(late, Code::FailedPrecondition).contains("voided"));
    assert!(h.store.for_order("order-none").await.unwrap().is_empty(), "nothing recorded");

    // A charge running when the void comes: the void waits (ABORTED), and the
    // charge refunds itself as it completes.
    let mut charging = h.client.clone();
    let running = tokio::spawn(async move { charging.process_payment(pay("order-v4", "4000000000000077", 800)).await });
    let started = std::time::Instant::now();
    while h.store.for_order("order-v4").await.unwrap().is_empty() {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the charge never started");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    expect_code(h.client.void_order_payments(void("order-v4")).await, Code::Aborted);
    assert!(expect_code(running.await.unwrap(), Code::FailedPrecondition).contains("voided"));
    assert_eq!(statuses(&h.store, "order-v4").await, [Status::Refunded]);
    let voided = h.client.void_order_payments(void("order-v4")).await.unwrap().into_inner();
    assert_eq!(voided.payments[0].refunded, usd(800), "refunded once, in full");

    // Garbage.
    expect_code(h.client.void_order_payments(void("")).await, Code::InvalidArgument);
    let long = pb::VoidOrderPaymentsRequest { order_id: "order-v1".into(), reason: "x".repeat(501) };
    expect_code(h.client.void_order_payments(long).await, Code::InvalidArgument);
}

async fn recovery_settles_payments_whose_call_died_or_ran_out_of_time(url: String) {
    let mut h = start(&url).await;
    let now = kit_core::time::now_millis();
    let capturing = left_in_flight(&h.store, "order-r1", Status::Processing, now - 1).await;
    // A charge that completed after its order was voided, whose process died
    // before it could refund itself: recovery refunds it.
    let kept = h.client.process_payment(pay("order-r3", "4242424242424242", 600)).await.unwrap().into_inner();
    h.store.void_order("order-r3", "voided while the charge ran").await.unwrap();
    // A real call cut off by its deadline: tonic drops the handler while the
    // processor hangs (the timeout card, 50 ms here), the payment stays PENDING.
    let mut request = tonic::Request::new(pay("order-r2", "4000000000000127", 700));
    request.set_timeout(std::time::Duration::from_millis(20));
    // (tonic reports its own timeout as CANCELLED "Timeout expired").
    let code = h.client.process_payment(request).await.map(|_| ()).unwrap_err().code();
    assert!(matches!(code, Code::Cancelled | Code::DeadlineExceeded), "{code:?}");
    // The recovery pass runs every second; the cut-off call's payment is due a second after its deadline.
    let started = std::time::Instant::now();
    loop {
        let settled = h.store.get(&capturing).await.unwrap().status == Status::Failed
            && statuses(&h.store, "order-r2").await == [Status::Failed]
            && h.store.get(&kept.id).await.unwrap().status == Status::Refunded;
        if settled {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "not settled: {:?}",
            statuses(&h.store, "order-r2").await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cut_off = &h.store.for_order("order-r2").await.unwrap()[0];
    assert_eq!(cut_off.failure_code.as_deref(), Some("interrupted"));
    assert!(cut_off.retryable, "nothing was held: paying again is fine");
    // A new attempt for the order goes through.
    let paid = h.client.process_payment(pay("order-r2", "4242424242424242", 700)).await.unwrap().into_inner();
    assert_eq!(paid.status, pb::PaymentStatus::Completed as i32);
}

async fn a_tokenized_card_is_charged_by_its_token_only_for_its_user(url: String) {
    let mut h = start(&url).await;
    let tokenize =
        |user: &str, number: &str| pb::CreatePaymentMethodRequest { user_id: user.into(), card: card(number) };
    let method = h.client.create_payment_method(tokenize("user-1", "4242424242424242")).await.unwrap().into_inner();
    assert!(method.token.starts_with("pm_"), "{}", method.token);
    assert_eq!((method.card_brand.as_str(), method.card_last4.as_str()), ("visa", "4242"));
    // At rest the number is sealed.
    let sealed = h.store.method(&method.token, kit_core::time::now_millis()).await.unwrap().unwrap().sealed;
    assert!(!sealed.contains("4242424242424242"));

    let by_token = |order: &str, user: &str, token: &str| pb::ProcessPaymentRequest {
        order_id: order.into(),
        user_id: user.into(),
        amount: usd(1_250),
        card: None,
        payment_method_token: token.into(),
    };
    let paid = h.client.process_payment(by_token("o-token", "user-1", &method.token)).await.unwrap().into_inner();
    assert_eq!(paid.status, pb::PaymentStatus::Completed as i32);
    assert_eq!(paid.card_last4, "4242");
    // Another user's token, an unknown one: not chargeable, nothing recorded.
    for (user, token) in [("user-2", method.token.as_str()), ("user-1", "pm_nonexistent")] {
        let refused = h.client.process_payment(by_token("o-other", user, token)).await;
        let message = expect_code(refused, Code::FailedPrecondition);
        assert!(message.contains("unknown or expired"), "{message}");
    }
    assert!(h.store.for_order("o-other").await.unwrap().is_empty());
    // A declining card tokenizes fine and declines when charged.
    let declining = h.client.create_payment_method(tokenize("user-1", "4000000000000002")).await.unwrap().into_inner();
    expect_code(
        h.client.process_payment(by_token("o-decl", "user-1", &declining.token)).await,
        Code::FailedPrecondition,
    );
    // Garbage: a malformed card, no card, no user, neither card nor token.
    for bad in [
        tokenize("user-1", "4242424242424241"),
        pb::CreatePaymentMethodRequest { user_id: "user-1".into(), card: None },
        tokenize("", "4242424242424242"),
        pb::CreatePaymentMethodRequest {
            user_id: "user-1".into(),
            card: Some(pb::Card {
                number: "4242424242424242".into(),
                expiry_month: 13,
                expiry_year: 2040,
                cvc: "1".into(),
            }),
        },
    ] {
        expect_code(h.client.create_payment_method(bad).await, Code::InvalidArgument);
    }
    expect_code(h.client.process_payment(by_token("o-none", "user-1", "")).await, Code::InvalidArgument);
    // Expired methods are swept.
    assert_eq!(h.store.sweep_methods(kit_core::time::now_millis()).await.unwrap(), 0);
    assert_eq!(h.store.sweep_methods(i64::MAX).await.unwrap(), 2);
    expect_code(h.client.process_payment(by_token("o-late", "user-1", &method.token)).await, Code::FailedPrecondition);
}

#[tokio::test]
async fn payments_refuses_to_start_without_a_card_key_or_with_a_bad_one() {
    for key in [None, Some("too short"), Some("AAAA")] {
        let url = kit::db::sqlite_file_url(&tempfile::tempdir().unwrap().path().join("p.db"));
        let config = payments::PaymentsConfig {
            common: service_common(&url),
            card_key: key.map(kit::config::Secret::new),
            ..Default::default()
        };
        let err = payments::start(config, kit::shutdown::CancellationToken::new()).await.err().expect("refused");
        assert!(err.to_string().contains("card_key"), "{err}");
    }
}

kit::backend_tests!(
    a_tokenized_card_is_charged_by_its_token_only_for_its_user,
    void_leaves_an_order_with_nothing_taken_or_held,
    recovery_settles_payments_whose_call_died_or_ran_out_of_time,
    an_approved_card_is_charged_once_with_every_step_recorded,
    declines_are_permanent_and_errors_are_retryable,
    a_replayed_request_returns_the_original_and_never_charges_again,
    refunds_partial_then_full_and_no_further,
    garbage_is_refused_and_nothing_is_recorded,
);
