//! OrderService over real sockets with a real registry and real Users,
//! Products and Payments services (in process, SQLite): orders paid, refused,
//! cancelled with a refund, fulfilled from the outbox; idempotent creation;
//! ownership; garbage.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use contracts::orders::v1 as pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::users::v1 as users_pb;
use kit::testing::{TestDb, expect_code, expect_refusal, service_common};
use kit_core::reason::Reason;
use tonic::Code;
use tonic::transport::Channel;

struct Stack {
    orders: OrderServiceClient<Channel>,
    products: products_pb::product_service_client::ProductServiceClient<Channel>,
    payments: contracts::payments::v1::payment_service_client::PaymentServiceClient<Channel>,
    user_id: String,
    _services: Vec<kit::server::RunningService>,
    _registry: registry::RunningRegistry,
    _dbs: Vec<TestDb>,
}

/// How the stack differs from the defaults.
struct Options {
    answer_within_ms: u64,
    unavailable_budget_ms: u64,
    /// Start Products later (`start_products`), not with the rest.
    products_later: bool,
    /// From PAID to SHIPPED by the fulfilment worker.
    ship_after_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self { answer_within_ms: 500, unavailable_budget_ms: 120_000, products_later: false, ship_after_ms: 100 }
    }
}

async fn stack() -> Stack {
    stack_with(Options::default()).await
}

fn products_config(db: &TestDb, registry: &registry::RunningRegistry) -> products::ProductsConfig {
    let mut common = service_common(&db.url);
    common.registry_url = Some(registry.url());
    products::ProductsConfig { common, ..Default::default() }
}

async fn stack_with(options: Options) -> Stack {
    let shutdown = kit::shutdown::CancellationToken::new();
    let registry = registry::start(
        registry::RegistryConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: kit_tls::TlsConfig::insecure(),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let dbs: Vec<TestDb> = (0..4).map(|_| TestDb::sqlite()).collect();
    let common = |i: usize| {
        let mut common = service_common(&dbs[i].url);
        common.registry_url = Some(registry.url());
        common
    };
    let users = users::start(
        users::UsersConfig { common: common(0), token_secret: kit::testing::test_token_secret(), ..Default::default() },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut payments_config = payments::PaymentsConfig {
        common: common(2),
        card_key: Some(kit::config::Secret::new("dGVzdCBjYXJkIGtleSwgMzIgYnl0ZXMgbG9uZyEhISE=")),
        ..Default::default()
    };
    // The slow test card takes longer than Orders waits before answering 202.
    payments_config.processor.slow_ms = 1_500;
    let payments = payments::start(payments_config, shutdown.clone()).await.unwrap();
    let mut services = vec![users, payments];
    let products_addr = if options.products_later {
        None
    } else {
        let products = products::start(products_config(&dbs[1], &registry), shutdown.clone()).await.unwrap();
        let url = products.grpc_url();
        services.push(products);
        Some(url)
    };
    // Registration happens once each is ready: wait until the registry lists
    // every service started so far (polling, at most 10 s).
    let client = kit_client::discovery::RegistryClient::new(&registry.url());
    let started: &[&str] =
        if options.products_later { &["users", "payments"] } else { &["users", "payments", "products"] };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for name in started {
        loop {
            let listed = client.lookup(name, &Default::default(), None, Duration::ZERO).await;
            if listed.is_ok_and(|list| !list.instances.is_empty()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name} never registered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut config = orders::OrdersConfig { common: common(3), ..Default::default() };
    config.fulfilment.ship_after_ms = options.ship_after_ms;
    config.fulfilment.deliver_after_ms = 100;
    config.fulfilment.poll_ms = 20;
    config.answer_within_ms = options.answer_within_ms;
    config.unavailable_budget_ms = options.unavailable_budget_ms;
    let queue_service =
        queue::service::start(queue::QueueServiceConfig { common: common(0), ..Default::default() }, shutdown.clone())
            .await
            .unwrap();
    let orders_service = orders::start(config, shutdown.clone()).await.unwrap();
    let worker = fulfilment::FulfilmentWorkerConfig {
        common: common(0),
        block_ms: 200,
        call_timeout_ms: 1_000,
        claim_idle_ms: 2_000,
        ..Default::default()
    };
    let worker = fulfilment::start(worker, shutdown).await.unwrap();

    let mut users_client =
        users_pb::user_service_client::UserServiceClient::connect(services[0].grpc_url()).await.unwrap();
    let user = users_client
        .create_user(users_pb::CreateUserRequest {
            email: "orders@example.com".into(),
            password: "orders are fun 1".into(),
            name: "Orderer".into(),
            address: None,
        })
        .await
        .unwrap()
        .into_inner();
    // Without Products yet, the client connects when it is first used.
    let products_endpoint = products_addr.unwrap_or_else(|| "http://127.0.0.1:9".into());
    let products_channel = Channel::from_shared(products_endpoint).unwrap().connect_lazy();
    services.push(queue_service);
    services.push(worker);
    services.push(orders_service);
    Stack {
        orders: OrderServiceClient::connect(services.last().unwrap().grpc_url()).await.unwrap(),
        products: products_pb::product_service_client::ProductServiceClient::new(products_channel),
        payments: contracts::payments::v1::payment_service_client::PaymentServiceClient::connect(
            services[1].grpc_url(),
        )
        .await
        .unwrap(),
        user_id: user.id,
        _services: services,
        _registry: registry,
        _dbs: dbs,
    }
}

fn as_user<T>(user: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-user-id", user.parse().unwrap());
    request
}

fn create(product_id: &str, quantity: i64, card: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        user_id: String::new(),
        items: vec![pb::OrderItemRequest { product_id: product_id.into(), quantity }],
        shipping_address: Some(contracts::common::v1::Address {
            line1: "1 Main St".into(),
            city: "Springfield".into(),
            country_code: "US".into(),
            ..Default::default()
        }),
        payment_method: Some(pb::PaymentMethod {
            card_number: card.into(),
            expiry_month: 12,
            expiry_year: 2040,
            cvc: "123".into(),
        }),
        currency_code: "USD".into(),
    }
}

impl Stack {
    /// Products, started now (it registers; Orders finds it through the registry).
    async fn start_products(&mut self) {
        let products =
            products::start(products_config(&self._dbs[1], &self._registry), kit::shutdown::CancellationToken::new())
                .await
                .unwrap();
        self.products =
            products_pb::product_service_client::ProductServiceClient::connect(products.grpc_url()).await.unwrap();
        self._services.push(products);
    }

    async fn product_id(&mut self) -> String {
        let page = self
            .products
            .search_products(products_pb::SearchProductsRequest {
                page_size: 50,
                in_stock_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        page.products.into_iter().find(|p| p.available >= 20).unwrap().id
    }

    /// (stock, reserved, sold) of a product.
    async fn stock(&mut self, id: &str) -> (i64, i64, i64) {
        let request = products_pb::GetProductRequest { product_id: id.into() };
        let p = self.products.get_product(request).await.unwrap().into_inner();
        (p.stock, p.reserved, p.sold)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_paid_refused_cancelled_and_fulfilled() {
    let mut s = stack().await;
    let product = s.product_id().await;
    let me = s.user_id.clone();

    let paid = s.orders.create_order(as_user(&me, create(&product, 2, "4242424242424242"))).await.unwrap().into_inner();
    assert_eq!(paid.status, pb::OrderStatus::Paid as i32, "{paid:?}");
    assert_eq!(paid.user_id, me);
    assert!(!paid.payment_id.is_empty());
    assert_eq!(paid.items[0].quantity, 2);
    assert_eq!(paid.shipping_address.as_ref().unwrap().city, "Springfield");
    let total = paid.total.as_ref().unwrap().minor_units;
    let parts =
        [&paid.subtotal, &paid.tax, &paid.shipping].iter().map(|m| m.as_ref().unwrap().minor_units).sum::<i64>();
    assert_eq!(total, parts);

    // Fulfilment ships and delivers it from the outbox.
    let mut delivered = false;
    for _ in 0..100 {
        let got = s.orders.get_order(as_user(&me, pb::GetOrderRequest { order_id: paid.id.clone() })).await.unwrap();
        if got.get_ref().status == pb::OrderStatus::Delivered as i32 {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "delivered within 5 s");

    // A declined card: refused with the reason, the order recorded as CANCELLED.
    let refused = s.orders.create_order(as_user(&me, create(&product, 1, "4000000000009995"))).await;
    let message = expect_refusal(refused, Code::FailedPrecondition, Reason::CardDeclined);
    assert!(message.contains("insufficient_funds"), "the message names the decline code: {message}");
    let cancelled = s
        .orders
        .list_orders(as_user(
            &me,
            pb::ListOrdersRequest { status: pb::OrderStatus::Cancelled as i32, ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.orders.len(), 1);
    assert!(cancelled.orders[0].failure_reason.contains("insufficient_funds"));

    // The sagas, for operators: the paid one completed, the declined one
    // compensated with every completed step undone; none needs a person.
    let saga_of = |order_id: String| pb::ListSagasRequest { order_id, ..Default::default() };
    let mut orders = s.orders.clone();
    let completed = orders.list_sagas(saga_of(paid.id.clone())).await.unwrap().into_inner().sagas;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].state, "COMPLETED");
    assert!(completed[0].steps.iter().all(|step| step.status == "SUCCEEDED"), "{completed:?}");
    let declined = orders.list_sagas(saga_of(cancelled.orders[0].id.clone())).await.unwrap().into_inner().sagas;
    assert_eq!(declined[0].state, "COMPENSATED");
    let statuses: Vec<&str> = declined[0].steps.iter().map(|step| step.status.as_str()).collect();
    assert_eq!(statuses, ["COMPENSATED", "COMPENSATED", "COMPENSATED", "FAILED", "PENDING"]);
    assert!(declined[0].failure.contains("insufficient_funds"));
    let stuck = pb::ListSagasRequest { needs_intervention: true, ..Default::default() };
    assert!(orders.list_sagas(stuck).await.unwrap().into_inner().sagas.is_empty());
    let all = orders.list_sagas(pb::ListSagasRequest::default()).await.unwrap().into_inner().sagas;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, declined[0].id, "latest first");
    for bad in [
        pb::ListSagasRequest { page_size: -1, ..Default::default() },
        pb::ListSagasRequest { order_id: "x".repeat(201), ..Default::default() },
    ] {
        expect_code(orders.list_sagas(bad).await, Code::InvalidArgument);
    }

    // Cancel a paid order: refunded, its units back in stock and out of
    // sold, CANCELLED; a second cancel is refused.
    let before = s.stock(&product).await;
    let second =
        s.orders.create_order(as_user(&me, create(&product, 2, "4242424242424242"))).await.unwrap().into_inner();
    let (stock, reserved, sold) = s.stock(&product).await;
    assert_eq!((stock, reserved, sold), (before.0 - 2, before.1, before.2 + 2), "sold");
    let cancel = pb::CancelOrderRequest { order_id: second.id.clone(), reason: "changed my mind".into() };
    let done = s.orders.cancel_order(as_user(&me, cancel.clone())).await.unwrap().into_inner();
    assert_eq!(done.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(s.stock(&product).await, before, "cancelling put the units back");
    expect_code(s.orders.cancel_order(as_user(&me, cancel)).await, Code::FailedPrecondition);
    assert_eq!(s.stock(&product).await, before, "and only once");

    // Others cannot see or act on my orders.
    let other = "someone-else";
    expect_code(
        s.orders.get_order(as_user(other, pb::GetOrderRequest { order_id: paid.id.clone() })).await,
        Code::NotFound,
    );
    let theirs = pb::ListOrdersRequest { user_id: me.clone(), ..Default::default() };
    expect_code(s.orders.list_orders(as_user(other, theirs)).await, Code::PermissionDenied);
    let all = s.orders.list_orders(as_user(&me, pb::ListOrdersRequest::default())).await.unwrap().into_inner();
    assert_eq!(all.orders.len(), 3);

    // Fulfilment transitions are checked.
    let third =
        s.orders.create_order(as_user(&me, create(&product, 1, "4242424242424242"))).await.unwrap().into_inner();
    let update =
        |status: pb::OrderStatus| pb::UpdateOrderStatusRequest { order_id: third.id.clone(), status: status as i32 };
    expect_code(s.orders.update_order_status(update(pb::OrderStatus::Delivered)).await, Code::FailedPrecondition);
    expect_code(s.orders.update_order_status(update(pb::OrderStatus::Cancelled)).await, Code::InvalidArgument);
    expect_code(s.orders.update_order_status(update(pb::OrderStatus::Cancelling)).await, Code::InvalidArgument);

    // AdvanceFulfilment (the worker's step): garbage refused, nothing moved;
    // a replay of a step already made answers `applied: false`.
    let advance = |order_id: &str, event_id: &str, to: i32| pb::AdvanceFulfilmentRequest {
        order_id: order_id.into(),
        event_id: event_id.into(),
        to,
    };
    let shipped = pb::OrderStatus::Shipped as i32;
    expect_code(s.orders.advance_fulfilment(advance("", "e", shipped)).await, Code::InvalidArgument);
    expect_code(s.orders.advance_fulfilment(advance(&paid.id, "", shipped)).await, Code::InvalidArgument);
    expect_code(s.orders.advance_fulfilment(advance(&paid.id, "e", 999)).await, Code::InvalidArgument);
    for to in [pb::OrderStatus::Cancelled, pb::OrderStatus::Paid, pb::OrderStatus::Unspecified] {
        expect_code(s.orders.advance_fulfilment(advance(&paid.id, "e", to as i32)).await, Code::InvalidArgument);
    }
    expect_code(s.orders.advance_fulfilment(advance("no-such-order", "e", shipped)).await, Code::NotFound);
    let replay =
        s.orders.advance_fulfilment(advance(&paid.id, "a-replayed-event", shipped)).await.unwrap().into_inner();
    assert!(!replay.applied, "the first order was delivered long ago: {replay:?}");
    assert_eq!(replay.order.unwrap().status, pb::OrderStatus::Delivered as i32, "and stays delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_answered_promptly_created_or_accepted_and_a_bad_card_changes_nothing() {
    let mut s = stack().await;
    let product = s.product_id().await;
    let me = s.user_id.clone();

    // Done in time: 201, with where the order is.
    let paid = s.orders.create_order(as_user(&me, create(&product, 1, "4242424242424242"))).await.unwrap();
    assert_eq!(paid.metadata().get("x-http-code").unwrap(), "201");
    let location = format!("/v1/orders/{}", paid.get_ref().id);
    assert_eq!(paid.metadata().get("location").unwrap().to_str().unwrap(), location);

    // A slow processor (1.5 s) outlasts the answer window (0.5 s): 202, the
    // order pending at its Location, and the saga goes on to pay it.
    let started = std::time::Instant::now();
    let accepted = s.orders.create_order(as_user(&me, create(&product, 1, "4000000000000077"))).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1_200), "answered in {:?}", started.elapsed());
    assert_eq!(accepted.metadata().get("x-http-code").unwrap(), "202");
    let pending = accepted.into_inner();
    assert_eq!(pending.status, pb::OrderStatus::Pending as i32, "{pending:?}");
    assert_eq!(pending.items[0].product_id, product);
    let mut status = pending.status;
    for _ in 0..100 {
        let got = s.orders.get_order(as_user(&me, pb::GetOrderRequest { order_id: pending.id.clone() })).await;
        status = got.unwrap().into_inner().status;
        if status == pb::OrderStatus::Paid as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, pb::OrderStatus::Paid as i32, "paid after the processor answered");
    // Someone else cannot see it while it is pending either.
    expect_code(
        s.orders.get_order(as_user("someone-else", pb::GetOrderRequest { order_id: pending.id.clone() })).await,
        Code::NotFound,
    );

    // A malformed card is refused before anything happens: no saga, no
    // reservation, no order.
    let stock_before = s.stock(&product).await;
    let sagas_before = s.orders.list_sagas(pb::ListSagasRequest::default()).await.unwrap().into_inner().sagas.len();
    for number in ["4242424242424241", "not a card", ""] {
        let refused = s.orders.create_order(as_user(&me, create(&product, 1, number))).await;
        let message = expect_code(refused, Code::InvalidArgument);
        assert!(message.contains("card"), "{message}");
    }
    let mut expired_cvc = create(&product, 1, "4242424242424242");
    expired_cvc.payment_method.as_mut().unwrap().cvc = "x".into();
    expect_code(s.orders.create_order(as_user(&me, expired_cvc)).await, Code::InvalidArgument);
    assert_eq!(s.stock(&product).await, stock_before, "nothing reserved");
    let sagas = s.orders.list_sagas(pb::ListSagasRequest::default()).await.unwrap().into_inner().sagas;
    assert_eq!(sagas.len(), sagas_before, "no saga started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_makes_one_order_and_garbage_is_refused() {
    let mut s = stack().await;
    let product = s.product_id().await;
    let me = s.user_id.clone();
    let attempts = (0..10).map(|_| {
        let mut client = s.orders.clone();
        let mut request = as_user(&me, create(&product, 1, "4242424242424242"));
        request.metadata_mut().insert("idempotency-key", "order-once".parse().unwrap());
        async move { client.create_order(request).await }
    });
    let mut ids = std::collections::BTreeSet::new();
    for result in futures::future::join_all(attempts).await {
        match result {
            Ok(order) => {
                ids.insert(order.into_inner().id);
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(ids.len() <= 1);
    let all = s.orders.list_orders(as_user(&me, pb::ListOrdersRequest::default())).await.unwrap().into_inner();
    assert_eq!(all.orders.len(), 1, "one order for one key");

    let good = create(&product, 1, "4242424242424242");
    for bad in [
        pb::CreateOrderRequest { items: vec![], ..good.clone() },
        pb::CreateOrderRequest {
            items: vec![pb::OrderItemRequest { product_id: product.clone(), quantity: 0 }],
            ..good.clone()
        },
        pb::CreateOrderRequest {
            items: vec![pb::OrderItemRequest { product_id: String::new(), quantity: 1 }],
            ..good.clone()
        },
        pb::CreateOrderRequest { payment_method: None, ..good.clone() },
        pb::CreateOrderRequest { currency_code: "dollars".into(), ..good.clone() },
    ] {
        expect_code(s.orders.create_order(as_user(&me, bad)).await, Code::InvalidArgument);
    }
    // No user at all.
    expect_code(s.orders.create_order(tonic::Request::new(good.clone())).await, Code::InvalidArgument);
    // An unknown product: refused by the saga, nothing charged.
    let unknown = create("00000000-0000-7000-8000-000000000000", 1, "4242424242424242");
    expect_code(s.orders.create_order(as_user(&me, unknown)).await, Code::FailedPrecondition);
    expect_code(
        s.orders.get_order(as_user(&me, pb::GetOrderRequest { order_id: String::new() })).await,
        Code::InvalidArgument,
    );
    expect_code(
        s.orders.get_order(as_user(&me, pb::GetOrderRequest { order_id: "nope".into() })).await,
        Code::NotFound,
    );
    let bad_status = pb::ListOrdersRequest { status: 99, ..Default::default() };
    expect_code(s.orders.list_orders(as_user(&me, bad_status)).await, Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platforms_own_trouble_is_a_503_that_frees_the_key_never_a_stored_refusal() {
    // Products is not there yet; a step waits 0.8 s for it, then the order is given up.
    let options =
        Options { answer_within_ms: 5_000, unavailable_budget_ms: 800, products_later: true, ..Default::default() };
    let mut s = stack_with(options).await;
    let me = s.user_id.clone();
    // The catalog's first product is known by its seeded id only once Products runs; use a made-up
    // id now (the reservation never gets that far) and the same request after.
    let request = || {
        let mut request = as_user(&me, create("00000000-0000-7000-8000-00000000000a", 1, "4242424242424242"));
        request.metadata_mut().insert("idempotency-key", "while-products-is-away".parse().unwrap());
        request
    };
    let first = s.orders.create_order(request()).await.unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    assert!(first.metadata().get(kit_resilience::signals::RETRY_AFTER_MS).is_some(), "a Retry-After hint");
    // Asked again while Products is still away: the same answer, not a replayed refusal.
    let again = s.orders.create_order(request()).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");

    // Products comes back: the same key places the order now (the made-up
    // product is unknown: a refusal for the order's own reason this time).
    s.start_products().await;
    let started = std::time::Instant::now();
    let last = loop {
        match s.orders.create_order(request()).await {
            Err(status) if status.code() == Code::Unavailable && started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other,
        }
    };
    let message = expect_code(last, Code::FailedPrecondition);
    assert!(message.contains("not found"), "{message}");

    // And a real product under a new key goes through.
    let product = s.product_id().await;
    let mut good = as_user(&me, create(&product, 1, "4242424242424242"));
    good.metadata_mut().insert("idempotency-key", "after-products-is-back".parse().unwrap());
    let paid = s.orders.create_order(good).await.unwrap();
    assert_eq!(paid.metadata().get("x-http-code").unwrap(), "201");
    // No saga needed a person: the compensations waited for Products.
    let stuck = pb::ListSagasRequest { needs_intervention: true, ..Default::default() };
    assert!(s.orders.list_sagas(stuck).await.unwrap().into_inner().sagas.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_races_shipping_and_exactly_one_wins_with_money_and_stock_to_match() {
    // Only the racers move the orders: the fulfilment worker waits a minute.
    let mut s = stack_with(Options { ship_after_ms: 60_000, ..Default::default() }).await;
    let product = s.product_id().await;
    let me = s.user_id.clone();
    let before = s.stock(&product).await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        let order = s.orders.create_order(as_user(&me, create(&product, 1, "4242424242424242"))).await.unwrap();
        ids.push(order.into_inner().id);
    }
    // Each paid order is cancelled and shipped at the same moment.
    let races = ids.iter().map(|id| {
        let (mut cancel_client, mut ship_client) = (s.orders.clone(), s.orders.clone());
        let cancel = as_user(&me, pb::CancelOrderRequest { order_id: id.clone(), reason: "race".into() });
        let ship = pb::UpdateOrderStatusRequest { order_id: id.clone(), status: pb::OrderStatus::Shipped as i32 };
        async move {
            let (cancelled, shipped) =
                tokio::join!(cancel_client.cancel_order(cancel), ship_client.update_order_status(ship));
            (cancelled.is_ok(), shipped.is_ok())
        }
    });
    let outcomes = futures::future::join_all(races).await;
    for (id, (cancelled, shipped)) in ids.iter().zip(&outcomes) {
        assert!(cancelled ^ shipped, "order {id}: exactly one of cancel ({cancelled}) and ship ({shipped}) wins");
    }
    // Settled: every cancelled order is refunded and restocked, every shipped one neither.
    use contracts::payments::v1 as payments_pb;
    let mut cancelled_count = 0;
    for id in &ids {
        let order = s.orders.get_order(as_user(&me, pb::GetOrderRequest { order_id: id.clone() })).await.unwrap();
        let order = order.into_inner();
        let status = order.status;
        let payment = payments_pb::GetPaymentRequest { payment_id: order.payment_id.clone() };
        let payment = s.payments.get_payment(payment).await.unwrap().into_inner();
        let expected = if status == pb::OrderStatus::Cancelled as i32 {
            payments_pb::PaymentStatus::Refunded
        } else {
            payments_pb::PaymentStatus::Completed
        };
        assert_eq!(payment.status, expected as i32, "order {id} ({status}): payment {payment:?}");
        if status == pb::OrderStatus::Cancelled as i32 {
            cancelled_count += 1;
        } else {
            assert!(
                [pb::OrderStatus::Shipped as i32, pb::OrderStatus::Delivered as i32].contains(&status),
                "order {id} is {status}"
            );
        }
    }
    let (stock, reserved, sold) = s.stock(&product).await;
    let shipped_count = ids.len() as i64 - cancelled_count;
    assert_eq!((stock, reserved, sold), (before.0 - shipped_count, before.1, before.2 + shipped_count));
}
