//! Blue and green share one database during a blue-green deploy, so schema
//! changes follow expand/contract: green's release only *expands* (here a
//! nullable column), blue keeps writing while green migrates, and blue can
//! still restart on the expanded schema it does not know. Run against SQLite
//! and PostgreSQL alike.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kit::db::{Db, DbOptions};
use products::domain::{Dimensions, NewProduct};
use products::store::ProductStore;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Blue's migrations: the ones this build ships.
static BLUE: Migrator = sqlx::migrate!("./migrations");

/// Green's release: blue's migrations and one that only expands.
const EXPAND: &str = "ALTER TABLE products ADD COLUMN gift_wrap_note TEXT NULL";

fn green_migrator() -> Migrator {
    let mut migrations: Vec<Migration> = BLUE.iter().cloned().collect();
    let next = migrations.iter().map(|m| m.version).max().unwrap_or(0) + 1;
    migrations.push(Migration::new(
        next,
        Cow::Borrowed("expand: gift wrap note"),
        MigrationType::Simple,
        sqlx::SqlStr::from_static(EXPAND),
        false,
    ));
    Migrator::with_migrations(migrations)
}

fn product(sku: String) -> NewProduct {
    NewProduct {
        sku,
        name: "Blue's product".into(),
        description: "written by the old version".into(),
        category: "test".into(),
        price_minor: 100,
        currency_code: "USD".into(),
        image_url: String::new(),
        weight_grams: 10,
        dimensions: Dimensions { length_mm: 1, width_mm: 1, height_mm: 1 },
        stock: 5,
    }
}

async fn green_adds_a_nullable_column_while_blue_keeps_writing(url: String) {
    let options = DbOptions { max_connections: 4, ..DbOptions::default() };
    let blue = ProductStore::new(Db::open(&url, &options, &BLUE).await.unwrap());
    // Blue writes (new products, reservations) without pause...
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (blue, stop, written) = (blue.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) || n < 20 {
                n += 1;
                let now = kit_core::time::now_millis();
                let created = blue.create(product(format!("BLUE-{n}")), now).await.unwrap();
                blue.reserve(&format!("order-{n}"), &[(created.id.clone(), 1)], 60_000, now).await.unwrap();
                written.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while written.load(Ordering::SeqCst) < 5 {
        tokio::task::yield_now().await;
    }
    // ... while green starts on the same database and expands it.
    let green_db = Db::open(&url, &options, &green_migrator()).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let total = written.load(Ordering::SeqCst);
    assert!(total >= 20, "blue kept writing: {total}");

    // Green uses its column; blue's rows simply have none.
    sqlx::query("UPDATE products SET gift_wrap_note = $1 WHERE sku = $2")
        .bind("with a bow")
        .bind("BLUE-1")
        .execute(green_db.pool())
        .await
        .unwrap();
    let notes: Vec<Option<String>> = sqlx::query_scalar("SELECT gift_wrap_note FROM products WHERE sku LIKE 'BLUE-%'")
        .fetch_all(green_db.pool())
        .await
        .unwrap();
    assert_eq!(notes.len(), total);
    assert_eq!(notes.iter().filter(|n| n.is_some()).count(), 1);

    // Blue restarts (say, after a rollback) on the expanded schema: it does
    // not know green's migration, and starts anyway — and keeps working,
    // reading rows green wrote.
    let blue_again = ProductStore::new(Db::open(&url, &options, &BLUE).await.unwrap());
    let first =
        blue_again.search(&Default::default(), kit_core::pagination::Page { offset: 0, limit: 50 }).await.unwrap();
    assert!(first.1 >= total as i64);
    let now = kit_core::time::now_millis();
    let after = blue_again.create(product("BLUE-after-restart".into()), now).await.unwrap();
    blue_again.reserve("order-after-restart", &[(after.id, 1)], 60_000, now).await.unwrap();

    // A migration both know must still be the same: blue refuses a database
    // whose copy of one of its own migrations was changed.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1")
        .bind(vec![0u8; 48])
        .execute(green_db.pool())
        .await
        .unwrap();
    assert!(Db::open(&url, &options, &BLUE).await.is_err(), "a changed migration is refused");
}

kit::backend_tests!(green_adds_a_nullable_column_while_blue_keeps_writing);
