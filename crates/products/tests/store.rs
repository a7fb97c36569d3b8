//! The store contract, run against SQLite and PostgreSQL alike.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;

use kit::db::{Db, DbOptions};
use kit_core::error::DomainError;
use kit_core::pagination::Page;
use kit_core::reason::Reason;
use products::domain::{Dimensions, NewProduct, ReservationState, SearchFilter, Sort};
use products::store::{ProductStore, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
const MIN: i64 = 60_000;

async fn open(url: &str) -> ProductStore {
    let options = DbOptions { max_connections: 20, ..DbOptions::default() };
    ProductStore::new(Db::open(url, &options, &MIGRATOR).await.expect("open database"))
}

fn product(sku: &str, stock: i64, price: i64) -> NewProduct {
    NewProduct {
        sku: sku.into(),
        name: format!("Product {sku}"),
        description: "test item".into(),
        category: "test".into(),
        price_minor: price,
        currency_code: "USD".into(),
        image_url: String::new(),
        weight_grams: 10,
        dimensions: Dimensions { length_mm: 1, width_mm: 1, height_mm: 1 },
        stock,
    }
}

fn domain_err(result: Result<impl std::fmt::Debug, StoreError>) -> DomainError {
    match result {
        Err(StoreError::Domain(e)) => e,
        other => panic!("expected a domain error, got {other:?}"),
    }
}

async fn create_get_and_unique_sku(url: String) {
    let store = open(&url).await;
    let created = store.create(product("sku-1", 5, 100), 1).await.unwrap();
    assert_eq!(created.sku, "SKU-1");
    assert_eq!(store.get(&created.id).await.unwrap(), Some(created.clone()));
    assert!(store.get("missing").await.unwrap().is_none());
    let dup = domain_err(store.create(product("SKU-1", 1, 1), 2).await);
    assert!(matches!(dup, DomainError::AlreadyExists(_)), "{dup:?}");
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn search_filters_sorts_and_pages(url: String) {
    let store = open(&url).await;
    for i in 0..25 {
        let mut p = product(&format!("S-{i:02}"), if i % 5 == 0 { 0 } else { 3 }, 100 * (i + 1));
        p.category = if i % 2 == 0 { "even".into() } else { "odd".into() };
        p.name = format!("Widget {i:02}");
        store.create(p, i).await.unwrap();
    }
    let all = SearchFilter::default();
    let (first, total) = store.search(&all, Page { offset: 0, limit: 10 }).await.unwrap();
    assert_eq!((first.len(), total), (10, 25));
    assert_eq!(first[0].name, "Widget 00");
    let (last, _) = store.search(&all, Page { offset: 20, limit: 10 }).await.unwrap();
    assert_eq!(last.len(), 5);

    let even = SearchFilter { category: "even".into(), ..Default::default() };
    assert_eq!(store.search(&even, Page { offset: 0, limit: 100 }).await.unwrap().1, 13);

    let priced = SearchFilter {
        min_price_minor: Some(500),
        max_price_minor: Some(900),
        sort: Sort::PriceDesc,
        ..Default::default()
    };
    let (hits, n) = store.search(&priced, Page { offset: 0, limit: 100 }).await.unwrap();
    assert_eq!(n, 5);
    assert_eq!(hits.iter().map(|p| p.price_minor).collect::<Vec<_>>(), vec![900, 800, 700, 600, 500]);

    let in_stock = SearchFilter { in_stock_only: true, ..Default::default() };
    assert_eq!(store.search(&in_stock, Page { offset: 0, limit: 100 }).await.unwrap().1, 20);

    let text = SearchFilter { query: "widget 1".into(), ..Default::default() };
    assert_eq!(store.search(&text, Page { offset: 0, limit: 100 }).await.unwrap().1, 10);
    // LIKE wildcards in the query are literal.
    let wildcard = SearchFilter { query: "%".into(), ..Default::default() };
    assert_eq!(store.search(&wildcard, Page { offset: 0, limit: 100 }).await.unwrap().1, 0);
}

async fn reserve_is_all_or_nothing(url: String) {
    let store = open(&url).await;
    let a = store.create(product("A", 5, 100), 0).await.unwrap();
    let b = store.create(product("B", 1, 100), 0).await.unwrap();
    let err = domain_err(store.reserve("o1", &[(a.id.clone(), 2), (b.id.clone(), 2)], MIN, 10).await);
    assert_eq!(err.reason(), Some(kit_core::reason::Reason::InsufficientStock), "{err:?}");
    let a_after = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(a_after.reserved, 0, "the first item was rolled back");
    assert!(store.get_reservation("o1").await.unwrap().is_none(), "no half-written reservation");

    let unknown = domain_err(store.reserve("o2", &[(a.id.clone(), 1), ("nope".into(), 1)], MIN, 10).await);
    assert!(matches!(unknown, DomainError::NotFound(_)), "{unknown:?}");
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().reserved, 0);

    let r = store.reserve("o3", &[(a.id.clone(), 2), (b.id.clone(), 1)], MIN, 10).await.unwrap();
    assert_eq!(r.state, ReservationState::Active);
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().available(), 3);
    assert_eq!(store.get(&b.id).await.unwrap().unwrap().available(), 0);
}

async fn reserve_and_release_are_idempotent(url: String) {
    let store = open(&url).await;
    let a = store.create(product("A", 10, 100), 0).await.unwrap();
    let items = vec![(a.id.clone(), 3)];
    let first = store.reserve("o1", &items, MIN, 10).await.unwrap();
    let again = store.reserve("o1", &items, MIN, 20).await.unwrap();
    assert_eq!(first, again, "a replay returns the original reservation");
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().reserved, 3, "a replay reserves nothing more");

    let different = domain_err(store.reserve("o1", &[(a.id.clone(), 4)], MIN, 30).await);
    assert!(matches!(different, DomainError::AlreadyExists(_)), "{different:?}");

    let released = store.release("o1", 40).await.unwrap();
    assert_eq!(released.state, ReservationState::Released);
    let twice = store.release("o1", 50).await.unwrap();
    assert_eq!(twice.state, ReservationState::Released);
    let p = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!((p.stock, p.reserved), (10, 0), "releasing twice does not over-release");

    let late = domain_err(store.reserve("o1", &items, MIN, 60).await);
    assert!(matches!(late, DomainError::FailedPrecondition(_)), "{late:?}");

    // Released before it was ever reserved: the late reservation is refused.
    let tomb = store.release("ghost", 70).await.unwrap();
    assert_eq!((tomb.state, tomb.items.len()), (ReservationState::Released, 0));
    let ghost = domain_err(store.reserve("ghost", &items, MIN, 80).await);
    assert!(matches!(ghost, DomainError::FailedPrecondition(_)), "{ghost:?}");
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().reserved, 0);
}

async fn commit_sells_once(url: String) {
    let store = open(&url).await;
    let a = store.create(product("A", 10, 100), 0).await.unwrap();
    store.reserve("o1", &[(a.id.clone(), 4)], MIN, 10).await.unwrap();
    store.commit("o1", 20).await.unwrap();
    let again = store.commit("o1", 30).await.unwrap();
    assert_eq!(again.state, ReservationState::Committed);
    let p = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!((p.stock, p.reserved, p.sold), (6, 0, 4));
    let release = domain_err(store.release("o1", 40).await);
    assert!(matches!(release, DomainError::FailedPrecondition(_)), "{release:?}");
    let missing = domain_err(store.commit("never", 50).await);
    assert!(matches!(missing, DomainError::NotFound(_)), "{missing:?}");
    store.reserve("o2", &[(a.id.clone(), 1)], MIN, 60).await.unwrap();
    store.release("o2", 70).await.unwrap();
    let late_commit = domain_err(store.commit("o2", 80).await);
    assert!(matches!(late_commit, DomainError::FailedPrecondition(_)), "{late_commit:?}");
}

async fn a_restock_puts_a_sale_back_once(url: String) {
    let store = open(&url).await;
    let a = store.create(product("A", 10, 100), 0).await.unwrap();
    store.reserve("o1", &[(a.id.clone(), 3)], MIN, 10).await.unwrap();
    // Only a committed sale can be put back.
    let early = domain_err(store.restock("o1", 15).await);
    assert!(matches!(early, DomainError::FailedPrecondition(_)), "{early:?}");
    store.commit("o1", 20).await.unwrap();
    let p = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!((p.stock, p.reserved, p.sold), (7, 0, 3));
    for at in [30, 40] {
        let restocked = store.restock("o1", at).await.unwrap();
        assert_eq!(restocked.state, ReservationState::Restocked);
        let p = store.get(&a.id).await.unwrap().unwrap();
        assert_eq!((p.stock, p.reserved, p.sold), (10, 0, 0), "the units are back, once");
    }
    let missing = domain_err(store.restock("never", 50).await);
    assert!(matches!(missing, DomainError::NotFound(_)), "{missing:?}");
    assert!(store.commit("o1", 60).await.is_err(), "a restocked sale is not sold again");
}

async fn expiry_releases_stock(url: String) {
    let store = open(&url).await;
    let a = store.create(product("A", 5, 100), 0).await.unwrap();
    store.reserve("short", &[(a.id.clone(), 2)], 1_000, 10_000).await.unwrap();
    store.reserve("long", &[(a.id.clone(), 1)], 100_000, 10_000).await.unwrap();
    assert_eq!(store.expire_due(10_999, 100).await.unwrap(), 0, "not due yet");
    assert_eq!(store.expire_due(11_000, 100).await.unwrap(), 1);
    let p = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!((p.stock, p.reserved), (5, 1));
    assert_eq!(store.get_reservation("short").await.unwrap().unwrap().state, ReservationState::Expired);
    // An expired reservation cannot be committed, and releasing it is a no-op.
    assert!(store.commit("short", 12_000).await.is_err());
    assert_eq!(store.release("short", 12_000).await.unwrap().state, ReservationState::Expired);
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().reserved, 1);
}

/// 200 concurrent single-unit reservations against stock 50: exactly 50 win.
async fn concurrent_reservations_never_oversell(url: String) {
    let store = Arc::new(open(&url).await);
    let a = store.create(product("HOT", 50, 100), 0).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let id = a.id.clone();
            tokio::spawn(async move { store.reserve(&format!("order-{i}"), &[(id, 1)], MIN, 10).await })
        })
        .collect();
    let mut won = 0;
    let mut short = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Domain(DomainError::Refused { reason: Reason::InsufficientStock, .. })) => short += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((won, short), (50, 150));
    let p = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!((p.stock, p.reserved, p.available()), (50, 50, 0));

    // Release half concurrently (each twice) and commit the rest: counters add up.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let order = format!("order-{i}");
                if i % 2 == 0 {
                    let _ = store.release(&order, 20).await;
                    let _ = store.release(&order, 21).await;
                } else {
                    let _ = store.commit(&order, 20).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let p = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(p.reserved, 0);
    assert_eq!(p.stock + p.sold, 50, "stock + sold is conserved");
}

async fn seeding_happens_once(url: String) {
    let store = open(&url).await;
    let added = store.seed_if_empty(products::seed::products(), 0).await.unwrap();
    assert!(added >= 50);
    assert_eq!(store.seed_if_empty(products::seed::products(), 0).await.unwrap(), 0);
    assert_eq!(store.count().await.unwrap(), added as i64);
}

kit::backend_tests!(
    create_get_and_unique_sku,
    search_filters_sorts_and_pages,
    reserve_is_all_or_nothing,
    reserve_and_release_are_idempotent,
    commit_sells_once,
    a_restock_puts_a_sale_back_once,
    expiry_releases_stock,
    concurrent_reservations_never_oversell,
    seeding_happens_once,
);
