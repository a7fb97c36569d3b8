//! Every ProductService method over a real socket, happy paths and garbage.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use contracts::common::v1::Money;
use contracts::products::v1 as pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use kit::testing::{TestDb, expect_code, expect_refusal, service_common};
use kit_core::reason::Reason;
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    client: ProductServiceClient<Channel>,
    service: kit::server::RunningService,
    _db: TestDb,
}

async fn start_with(config: impl FnOnce(&mut products::ProductsConfig)) -> Harness {
    let db = TestDb::sqlite();
    let mut cfg = products::ProductsConfig { common: service_common(&db.url), ..Default::default() };
    config(&mut cfg);
    let service = products::start(cfg, kit::shutdown::CancellationToken::new()).await.expect("start products");
    let client = ProductServiceClient::connect(service.grpc_url()).await.expect("connect");
    Harness { client, service, _db: db }
}

async fn start() -> Harness {
    start_with(|_| {}).await
}

fn new_product(sku: &str, stock: i64) -> pb::Product {
    pb::Product {
        sku: sku.into(),
        name: format!("Test {sku}"),
        category: "test".into(),
        price: Some(Money { currency_code: "USD".into(), minor_units: 1_250 }),
        stock,
        ..Default::default()
    }
}

async fn create(client: &mut ProductServiceClient<Channel>, sku: &str, stock: i64) -> pb::Product {
    client
        .create_product(pb::CreateProductRequest { product: Some(new_product(sku, stock)) })
        .await
        .unwrap()
        .into_inner()
}

fn items(list: &[(&str, i64)]) -> Vec<pb::LineItem> {
    list.iter().map(|(id, q)| pb::LineItem { product_id: id.to_string(), quantity: *q }).collect()
}

#[tokio::test]
async fn seeded_catalog_search_and_pagination() {
    let mut h = start().await;
    let first = h
        .client
        .search_products(pb::SearchProductsRequest { page_size: 7, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(first.total_size >= 50, "seeded: {}", first.total_size);
    assert_eq!(first.products.len(), 7);

    // Walking every page visits every product exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client
            .search_products(pb::SearchProductsRequest {
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.products.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!((seen.len() as i64, total as i64), (first.total_size, first.total_size));

    let huge = h
        .client
        .search_products(pb::SearchProductsRequest { page_size: i32::MAX, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(huge.products.len() <= 100, "huge pages are clamped");

    let books = h
        .client
        .search_products(pb::SearchProductsRequest { category: "Books".into(), page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(books.total_size, 10);
    assert!(books.products.iter().all(|p| p.category == "books"));

    let cheap_first = h
        .client
        .search_products(pb::SearchProductsRequest {
            sort: pb::SortOrder::PriceAsc as i32,
            in_stock_only: true,
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let prices: Vec<i64> = cheap_first.products.iter().map(|p| p.price.as_ref().unwrap().minor_units).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]));
    assert!(cheap_first.products.iter().all(|p| p.available > 0));

    let text = h
        .client
        .search_products(pb::SearchProductsRequest { query: "rust programming".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(text.total_size, 1);
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn search_garbage_is_refused() {
    let mut h = start().await;
    let bad = [
        pb::SearchProductsRequest { page_size: -1, ..Default::default() },
        pb::SearchProductsRequest { page_token: "not-a-token".into(), ..Default::default() },
        pb::SearchProductsRequest { min_price_minor: Some(500), max_price_minor: Some(100), ..Default::default() },
        pb::SearchProductsRequest { min_price_minor: Some(-5), ..Default::default() },
        pb::SearchProductsRequest { sort: 99, ..Default::default() },
        pb::SearchProductsRequest { query: "q".repeat(1_000), ..Default::default() },
    ];
    for request in bad {
        expect_code(h.client.search_products(request.clone()).await, Code::InvalidArgument);
    }
    // A token from one query is refused for another.
    let page = h
        .client
        .search_products(pb::SearchProductsRequest { page_size: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    expect_code(
        h.client
            .search_products(pb::SearchProductsRequest {
                category: "books".into(),
                page_token: page.next_page_token,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn get_create_and_batch_get() {
    let mut h = start_with(|c| c.seed = false).await;
    let created = create(&mut h.client, "t-1", 5).await;
    assert_eq!((created.sku.as_str(), created.available, created.active), ("T-1", 5, true));
    let fetched =
        h.client.get_product(pb::GetProductRequest { product_id: created.id.clone() }).await.unwrap().into_inner();
    assert_eq!(fetched, created);
    expect_code(h.client.get_product(pb::GetProductRequest { product_id: "nope".into() }).await, Code::NotFound);
    expect_code(h.client.get_product(pb::GetProductRequest { product_id: String::new() }).await, Code::InvalidArgument);

    let batch = h
        .client
        .get_products(pb::GetProductsRequest { product_ids: vec![created.id.clone(), "missing".into()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((batch.products.len(), batch.missing_ids), (1, vec!["missing".to_string()]));
    let too_many: Vec<String> = (0..101).map(|i| format!("id-{i}")).collect();
    expect_code(h.client.get_products(pb::GetProductsRequest { product_ids: too_many }).await, Code::InvalidArgument);
    expect_code(
        h.client.get_products(pb::GetProductsRequest { product_ids: vec![String::new()] }).await,
        Code::InvalidArgument,
    );

    expect_code(
        h.client.create_product(pb::CreateProductRequest { product: Some(new_product("T-1", 1)) }).await,
        Code::AlreadyExists,
    );
    let garbage = [
        None,
        Some(pb::Product { price: None, ..new_product("T-2", 1) }),
        Some(new_product("T-3", -1)),
        Some(new_product("", 1)),
        Some(new_product("bad sku!", 1)),
        Some(pb::Product {
            price: Some(Money { currency_code: "usd1".into(), minor_units: 5 }),
            ..new_product("T-4", 1)
        }),
        Some(pb::Product {
            price: Some(Money { currency_code: "USD".into(), minor_units: -5 }),
            ..new_product("T-5", 1)
        }),
        Some(pb::Product { name: String::new(), ..new_product("T-6", 1) }),
    ];
    for product in garbage {
        expect_code(h.client.create_product(pb::CreateProductRequest { product }).await, Code::InvalidArgument);
    }
    let listed = h.client.search_products(pb::SearchProductsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.total_size, 1, "nothing half-written");
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn availability_reserve_release_commit() {
    let mut h = start_with(|c| c.seed = false).await;
    let a = create(&mut h.client, "A", 5).await;
    let b = create(&mut h.client, "B", 1).await;

    let check = h
        .client
        .check_availability(pb::CheckAvailabilityRequest { items: items(&[(&a.id, 5), (&b.id, 2), ("ghost", 1)]) })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.all_available);
    let by_id = |id: &str| check.items.iter().find(|i| i.product_id == id).unwrap().clone();
    assert!(by_id(&a.id).sufficient);
    assert!(!by_id(&b.id).sufficient && by_id(&b.id).found);
    assert!(!by_id("ghost").found);

    let reservation = h
        .client
        .reserve_inventory(pb::ReserveInventoryRequest {
            order_id: "o-1".into(),
            items: items(&[(&a.id, 2), (&b.id, 1)]),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reservation.state, pb::ReservationState::Active as i32);
    let replay = h
        .client
        .reserve_inventory(pb::ReserveInventoryRequest {
            order_id: "o-1".into(),
            items: items(&[(&b.id, 1), (&a.id, 2)]),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, reservation, "same items in another order are the same request");
    expect_code(
        h.client
            .reserve_inventory(pb::ReserveInventoryRequest {
                order_id: "o-1".into(),
                items: items(&[(&a.id, 3)]),
                ttl_seconds: 0,
            })
            .await,
        Code::AlreadyExists,
    );
    let short = expect_refusal(
        h.client
            .reserve_inventory(pb::ReserveInventoryRequest {
                order_id: "o-2".into(),
                items: items(&[(&a.id, 1), (&b.id, 1)]),
                ttl_seconds: 0,
            })
            .await,
        Code::FailedPrecondition,
        Reason::InsufficientStock,
    );
    assert!(short.contains(&a.id) || short.contains(&b.id), "the message names the product: {short}");
    expect_code(
        h.client
            .reserve_inventory(pb::ReserveInventoryRequest {
                order_id: "o-3".into(),
                items: items(&[("ghost", 1)]),
                ttl_seconds: 0,
            })
            .await,
        Code::NotFound,
    );
    let garbage = [
        pb::ReserveInventoryRequest { order_id: String::new(), items: items(&[(&a.id, 1)]), ttl_seconds: 0 },
        pb::ReserveInventoryRequest { order_id: "o-4".into(), items: vec![], ttl_seconds: 0 },
        pb::ReserveInventoryRequest { order_id: "o-4".into(), items: items(&[(&a.id, -1)]), ttl_seconds: 0 },
        pb::ReserveInventoryRequest { order_id: "o-4".into(), items: items(&[(&a.id, 0)]), ttl_seconds: 0 },
        pb::ReserveInventoryRequest { order_id: "o-4".into(), items: items(&[(&a.id, i64::MAX)]), ttl_seconds: 0 },
        pb::ReserveInventoryRequest { order_id: "o-4".into(), items: items(&[(&a.id, 1)]), ttl_seconds: -1 },
        pb::ReserveInventoryRequest { order_id: "o".repeat(500), items: items(&[(&a.id, 1)]), ttl_seconds: 0 },
    ];
    for request in garbage {
        expect_code(h.client.reserve_inventory(request).await, Code::InvalidArgument);
    }
    let a_now = h.client.get_product(pb::GetProductRequest { product_id: a.id.clone() }).await.unwrap().into_inner();
    assert_eq!((a_now.reserved, a_now.available), (2, 3), "failed calls changed nothing");

    let got =
        h.client.get_reservation(pb::GetReservationRequest { order_id: "o-1".into() }).await.unwrap().into_inner();
    assert_eq!(got.items.len(), 2);
    expect_code(h.client.get_reservation(pb::GetReservationRequest { order_id: "o-404".into() }).await, Code::NotFound);
    expect_code(
        h.client.get_reservation(pb::GetReservationRequest { order_id: String::new() }).await,
        Code::InvalidArgument,
    );

    let committed =
        h.client.commit_inventory(pb::CommitInventoryRequest { order_id: "o-1".into() }).await.unwrap().into_inner();
    assert_eq!(committed.state, pb::ReservationState::Committed as i32);
    h.client.commit_inventory(pb::CommitInventoryRequest { order_id: "o-1".into() }).await.unwrap();
    let a_sold = h.client.get_product(pb::GetProductRequest { product_id: a.id.clone() }).await.unwrap().into_inner();
    assert_eq!((a_sold.stock, a_sold.reserved, a_sold.sold), (3, 0, 2));
    expect_code(
        h.client.release_inventory(pb::ReleaseInventoryRequest { order_id: "o-1".into() }).await,
        Code::FailedPrecondition,
    );
    expect_code(
        h.client.commit_inventory(pb::CommitInventoryRequest { order_id: "o-404".into() }).await,
        Code::NotFound,
    );
    expect_code(
        h.client.commit_inventory(pb::CommitInventoryRequest { order_id: String::new() }).await,
        Code::InvalidArgument,
    );

    h.client
        .reserve_inventory(pb::ReserveInventoryRequest {
            order_id: "o-5".into(),
            items: items(&[(&a.id, 3)]),
            ttl_seconds: 0,
        })
        .await
        .unwrap();
    for _ in 0..2 {
        let released = h
            .client
            .release_inventory(pb::ReleaseInventoryRequest { order_id: "o-5".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(released.state, pb::ReservationState::Released as i32);
    }
    let a_back = h.client.get_product(pb::GetProductRequest { product_id: a.id.clone() }).await.unwrap().into_inner();
    assert_eq!((a_back.stock, a_back.reserved), (3, 0));
    expect_code(
        h.client.commit_inventory(pb::CommitInventoryRequest { order_id: "o-5".into() }).await,
        Code::FailedPrecondition,
    );
    expect_code(
        h.client.release_inventory(pb::ReleaseInventoryRequest { order_id: String::new() }).await,
        Code::InvalidArgument,
    );

    let garbage_checks = [vec![], items(&[(&a.id, -2)]), items(&[("", 1)])];
    for list in garbage_checks {
        expect_code(
            h.client.check_availability(pb::CheckAvailabilityRequest { items: list }).await,
            Code::InvalidArgument,
        );
    }
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn reservations_expire_through_the_reaper() {
    let mut h = start_with(|c| {
        c.seed = false;
        c.reaper_interval_ms = 50;
    })
    .await;
    let a = create(&mut h.client, "A", 4).await;
    h.client
        .reserve_inventory(pb::ReserveInventoryRequest {
            order_id: "o-exp".into(),
            items: items(&[(&a.id, 3)]),
            ttl_seconds: 1,
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = h
            .client
            .get_reservation(pb::GetReservationRequest { order_id: "o-exp".into() })
            .await
            .unwrap()
            .into_inner();
        if r.state == pb::ReservationState::Expired as i32 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "reservation did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = h.client.get_product(pb::GetProductRequest { product_id: a.id }).await.unwrap().into_inner();
    assert_eq!((p.reserved, p.available), (0, 4));
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn bad_config_is_refused() {
    let db = TestDb::sqlite();
    let config =
        products::ProductsConfig { common: service_common(&db.url), reservation_ttl_secs: 0, ..Default::default() };
    let err = products::start(config, kit::shutdown::CancellationToken::new()).await.err().expect("refused");
    assert!(err.to_string().contains("reservation_ttl_secs"), "{err}");
}

/// Every read path (GetProduct, GetProducts, a search page) shows a stock
/// move on the very next read, through the cache: a reservation, its
/// release, a sale, a restock, an expiry.
async fn stock_moves_are_visible_on_the_next_read(mut h: Harness) {
    let product = create(&mut h.client, "CACHE-1", 10).await;
    let id = product.id.clone();
    let read = |client: ProductServiceClient<Channel>, id: String| async move {
        let mut client = client;
        let one = client.get_product(pb::GetProductRequest { product_id: id.clone() }).await.unwrap().into_inner();
        let batch =
            client.get_products(pb::GetProductsRequest { product_ids: vec![id.clone()] }).await.unwrap().into_inner();
        let page = client
            .search_products(pb::SearchProductsRequest { query: "CACHE-1".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let found = page.products.iter().find(|p| p.id == id).map(|p| p.available);
        (one.available, batch.products[0].available, found)
    };
    // Warm every cache entry, twice (the second read is a hit).
    read(h.client.clone(), id.clone()).await;
    assert_eq!(read(h.client.clone(), id.clone()).await, (10, 10, Some(10)));
    let reserve = |order: &str, quantity: i64, ttl_seconds: i64| pb::ReserveInventoryRequest {
        order_id: order.into(),
        items: items(&[(&id, quantity)]),
        ttl_seconds,
    };
    h.client.reserve_inventory(reserve("cache-o1", 3, 0)).await.unwrap();
    assert_eq!(read(h.client.clone(), id.clone()).await, (7, 7, Some(7)), "reserved");
    h.client.release_inventory(pb::ReleaseInventoryRequest { order_id: "cache-o1".into() }).await.unwrap();
    assert_eq!(read(h.client.clone(), id.clone()).await, (10, 10, Some(10)), "released");
    h.client.reserve_inventory(reserve("cache-o2", 4, 0)).await.unwrap();
    h.client.commit_inventory(pb::CommitInventoryRequest { order_id: "cache-o2".into() }).await.unwrap();
    assert_eq!(read(h.client.clone(), id.clone()).await, (6, 6, Some(6)), "sold");
    h.client.restock_inventory(pb::RestockInventoryRequest { order_id: "cache-o2".into() }).await.unwrap();
    assert_eq!(read(h.client.clone(), id.clone()).await, (10, 10, Some(10)), "restocked");
    h.client.reserve_inventory(reserve("cache-o3", 2, 1)).await.unwrap();
    assert_eq!(read(h.client.clone(), id.clone()).await, (8, 8, Some(8)));
    // The reaper expires it (1 s): visible at once, not a TTL later.
    let started = std::time::Instant::now();
    while read(h.client.clone(), id.clone()).await != (10, 10, Some(10)) {
        assert!(started.elapsed() < Duration::from_secs(5), "expiry not visible");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = reqwest_metrics(&h).await;
    assert!(metrics.contains(r#"cache_requests_total{cache="products",result="hit"}"#), "hits counted");
}

async fn reqwest_metrics(h: &Harness) -> String {
    let url = format!("http://{}/metrics", h.service.admin_addr);
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn stock_moves_are_visible_on_the_next_read_through_the_in_process_cache() {
    // A long TTL: only invalidation can make the test pass.
    let h = start_with(|c| {
        c.cache.ttl_ms = 600_000;
        c.reaper_interval_ms = 100;
    })
    .await;
    stock_moves_are_visible_on_the_next_read(h).await;
}

#[tokio::test]
async fn stock_moves_are_visible_on_the_next_read_through_the_redis_cache() {
    let url = std::env::var("SHOPFAST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if std::net::TcpStream::connect(url.trim_start_matches("redis://").split('/').next().unwrap_or_default()).is_err() {
        assert!(!kit::testing::running_in_ci(), "Redis is required in CI at {url}");
        eprintln!("SKIPPED: no Redis at {url}");
        return;
    }
    let h = start_with(|c| {
        c.cache.ttl_ms = 600_000;
        c.cache.redis_url = Some(kit::config::Secret::new(url));
        c.reaper_interval_ms = 100;
    })
    .await;
    stock_moves_are_visible_on_the_next_read(h).await;
}
