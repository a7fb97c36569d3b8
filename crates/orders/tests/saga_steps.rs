//! The order saga's steps against real Users, Products and Payments services
//! (in process, over real sockets, SQLite): a paid order, a declined card, an
//! out-of-stock order and an unknown user — and what each leaves behind.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use contracts::payments::v1 as payments_pb;
use contracts::products::v1 as products_pb;
use contracts::users::v1 as users_pb;
use kit::db::{Db, DbOptions};
use kit::testing::{TestDb, service_common};
use orders::domain::{OrderStatus, Pricing};
use orders::steps::{Channel, Deps, initial_context, steps};
use orders::store::OrderStore;
use saga::{Orchestrator, RetryPolicy, SagaState};

static ORDERS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The test's card key for Payments (it has no built-in one).
const CARD_KEY: &str = "dGVzdCBjYXJkIGtleSwgMzIgYnl0ZXMgbG9uZyEhISE=";

struct World {
    orchestrator: Orchestrator,
    store: OrderStore,
    payments: payments_pb::payment_service_client::PaymentServiceClient<tonic::transport::Channel>,
    products: products_pb::product_service_client::ProductServiceClient<tonic::transport::Channel>,
    payments_db: String,
    user_id: String,
    _services: Vec<kit::server::RunningService>,
    _dbs: Vec<TestDb>,
}

async fn channel(url: String) -> Channel {
    orders::steps::channel(tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap())
}

async fn world() -> World {
    let shutdown = kit::shutdown::CancellationToken::new();
    let dbs: Vec<TestDb> = (0..4).map(|_| TestDb::sqlite()).collect();
    let users = users::start(
        users::UsersConfig {
            common: service_common(&dbs[0].url),
            token_secret: kit::testing::test_token_secret(),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let products = products::start(
        products::ProductsConfig { common: service_common(&dbs[1].url), ..Default::default() },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let payments = payments::start(
        payments::PaymentsConfig {
            common: service_common(&dbs[2].url),
            card_key: Some(kit::config::Secret::new(CARD_KEY)),
            ..Default::default()
        },
        shutdown,
    )
    .await
    .unwrap();
    let mut users_client = users_pb::user_service_client::UserServiceClient::connect(users.grpc_url()).await.unwrap();
    let user = users_client
        .create_user(users_pb::CreateUserRequest {
            email: "saga@example.com".into(),
            password: "a long saga password 1".into(),
            name: "Saga".into(),
            address: None,
        })
        .await
        .unwrap()
        .into_inner();
    let store = OrderStore::new(Db::open(&dbs[3].url, &DbOptions::default(), &ORDERS).await.unwrap());
    let deps = Arc::new(Deps {
        users: users_pb::user_service_client::UserServiceClient::new(channel(users.grpc_url()).await),
        products: products_pb::product_service_client::ProductServiceClient::new(channel(products.grpc_url()).await),
        payments: payments_pb::payment_service_client::PaymentServiceClient::new(channel(payments.grpc_url()).await),
        store: store.clone(),
        pricing: Pricing::default(),
        call_timeout: Duration::from_secs(5),
        ship_after_ms: 0,
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        give_up_after: Duration::from_secs(2),
    };
    let orchestrator = Orchestrator::new(steps(deps), Arc::new(store.clone()), policy, policy);
    let products_client =
        products_pb::product_service_client::ProductServiceClient::connect(products.grpc_url()).await.unwrap();
    let payments_client =
        payments_pb::payment_service_client::PaymentServiceClient::connect(payments.grpc_url()).await.unwrap();
    World {
        orchestrator,
        store,
        payments: payments_client,
        products: products_client,
        payments_db: dbs[2].url.clone(),
        user_id: user.id,
        _services: vec![users, products, payments],
        _dbs: dbs,
    }
}

fn card(number: &str) -> payments_pb::Card {
    payments_pb::Card { number: number.into(), expiry_month: 12, expiry_year: 2040, cvc: "123".into() }
}

impl World {
    async fn product(&mut self, min_stock: i64) -> products_pb::Product {
        let page = self
            .products
            .search_products(products_pb::SearchProductsRequest { page_size: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        page.products.into_iter().find(|p| p.available >= min_stock).unwrap()
    }

    async fn stock(&mut self, id: &str) -> (i64, i64, i64) {
        let p = self
            .products
            .get_product(products_pb::GetProductRequest { product_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        (p.stock, p.reserved, p.sold)
    }

    async fn order(&self, saga_id: &str, user: &str, items: Vec<(String, i64)>, number: &str) -> saga::SagaRecord {
        let order_id = format!("order-{saga_id}");
        // The card is tokenized first (for the user it will be charged for); the saga keeps the token.
        let request = payments_pb::CreatePaymentMethodRequest { user_id: user.into(), card: Some(card(number)) };
        let token = self.payments.clone().create_payment_method(request).await.unwrap().into_inner().token;
        let context = initial_context(&items, "USD", None, &token);
        let saga = self.orchestrator.new_saga(saga_id, &order_id, user, context);
        self.orchestrator.run(saga).await.unwrap()
    }

    /// Completed payments for an order, read from the Payments database.
    async fn completed_payments(&self, order_id: &str) -> i64 {
        self.payments_in(order_id, "COMPLETED").await
    }

    /// An order's payments in `status`, read from the Payments database.
    async fn payments_in(&self, order_id: &str, status: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.payments_db).await.unwrap();
        let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM payments WHERE order_id = $1 AND status = $2")
            .bind(order_id)
            .bind(status)
            .fetch_one(&pool)
            .await
            .unwrap();
        row.0
    }

    async fn new_product(&mut self, sku: &str, stock: i64) -> products_pb::Product {
        let product = products_pb::Product {
            sku: sku.into(),
            name: format!("Scarce {sku}"),
            category: "test".into(),
            price: Some(contracts::common::v1::Money { currency_code: "USD".into(), minor_units: 1_000 }),
            stock,
            active: true,
            ..Default::default()
        };
        self.products
            .create_product(products_pb::CreateProductRequest { product: Some(product) })
            .await
            .unwrap()
            .into_inner()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_saga_pays_or_undoes_everything() {
    let mut w = world().await;
    let product = w.product(10).await;
    let before = w.stock(&product.id).await;
    let user = w.user_id.clone();

    // Paid: stock sold, one completed payment, order PAID with its outbox event.
    let paid = w.order("s-paid", &user, vec![(product.id.clone(), 2)], "4242424242424242").await;
    assert_eq!(paid.state, SagaState::Completed, "{paid:?}");
    let order = w.store.get("order-s-paid").await.unwrap();
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.payment_id.as_deref(), paid.context.get("payment_id").map(String::as_str));
    assert_eq!(order.lines[0].unit_price_minor, product.price.clone().unwrap().minor_units, "price snapshot");
    assert_eq!(w.stock(&product.id).await, (before.0 - 2, before.1, before.2 + 2));
    assert_eq!(w.completed_payments("order-s-paid").await, 1);
    assert_eq!(w.store.due_events("order.paid", kit_core::time::now_millis() + 1, 10).await.unwrap().len(), 1);

    // Declined: inventory back exactly, order CANCELLED, nothing charged, every compensation recorded.
    let before = w.stock(&product.id).await;
    let declined = w.order("s-declined", &user, vec![(product.id.clone(), 3)], "4000000000009995").await;
    assert_eq!(declined.state, SagaState::Compensated, "{declined:?}");
    assert!(declined.failure.as_deref().unwrap().contains("insufficient_funds"), "{:?}", declined.failure);
    let compensated: Vec<&str> =
        declined.steps.iter().filter(|s| s.status == saga::StepStatus::Compensated).map(|s| s.name.as_str()).collect();
    assert_eq!(compensated, ["validate_user", "reserve_inventory", "create_order"], "every completed step undone");
    assert_eq!(declined.step("process_payment").unwrap().status, saga::StepStatus::Failed);
    assert_eq!(w.stock(&product.id).await, before);
    assert_eq!(w.store.get("order-s-declined").await.unwrap().status, OrderStatus::Cancelled);
    assert_eq!(w.completed_payments("order-s-declined").await, 0);

    // Out of stock: refused at the reservation, before any payment.
    let scarce = w.new_product("SCARCE-1", 1).await;
    let out = w.order("s-out", &user, vec![(scarce.id.clone(), 2)], "4242424242424242").await;
    assert_eq!(out.state, SagaState::Compensated, "{out:?}");
    assert_eq!(out.step("reserve_inventory").unwrap().status, saga::StepStatus::Failed);
    assert_eq!(out.step("process_payment").unwrap().status, saga::StepStatus::Pending, "never charged");
    assert!(w.store.get("order-s-out").await.is_err(), "no order recorded");
    assert_eq!(w.stock(&scarce.id).await, (1, 0, 0));

    // Charged, then the reservation lapsed while the (slow) payment ran: the
    // confirmation fails for good, and the money goes back.
    let before = w.stock(&product.id).await;
    let mut products = w.products.clone();
    let payments_db = w.payments_db.clone();
    let lapse = tokio::spawn(async move {
        // While the payment runs: its row is PENDING at the slow processor (1.5 s).
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&payments_db).await.unwrap();
        let started = std::time::Instant::now();
        loop {
            let (running,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM payments WHERE order_id = $1 AND status = 'PENDING'")
                    .bind("order-s-lapsed")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if running > 0 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the lapsed order's payment never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let release = products_pb::ReleaseInventoryRequest { order_id: "order-s-lapsed".into() };
        products.release_inventory(release).await.unwrap();
    });
    let lapsed = w.order("s-lapsed", &user, vec![(product.id.clone(), 1)], "4000000000000077").await;
    lapse.await.unwrap();
    assert_eq!(lapsed.state, SagaState::Compensated, "{lapsed:?}");
    assert!(lapsed.failure.as_deref().unwrap().starts_with("confirm_order"), "{:?}", lapsed.failure);
    assert_eq!(lapsed.step("process_payment").unwrap().status, saga::StepStatus::Compensated);
    assert_eq!(w.completed_payments("order-s-lapsed").await, 0, "refunded");
    assert_eq!(w.payments_in("order-s-lapsed", "REFUNDED").await, 1);
    assert_eq!(w.store.get("order-s-lapsed").await.unwrap().status, OrderStatus::Cancelled);
    assert_eq!(w.stock(&product.id).await, before);

    // Unknown user: rejected at once, nothing to clean.
    let nobody = w.order("s-nobody", "no-such-user", vec![(product.id.clone(), 1)], "4242424242424242").await;
    assert_eq!(nobody.state, SagaState::Compensated);
    assert_eq!(nobody.step("validate_user").unwrap().status, saga::StepStatus::Failed);
    assert!(nobody.completed.is_empty(), "nothing to undo");
    assert_eq!(w.stock(&product.id).await, before);
}
