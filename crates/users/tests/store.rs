//! The store contract, run against SQLite and PostgreSQL alike.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;

use kit::db::{Db, DbOptions};
use kit_core::error::DomainError;
use users::domain::{self, Address, ProfileChanges};
use users::store::{StoreError, UserStore};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn open(url: &str) -> UserStore {
    UserStore::new(Db::open(url, &DbOptions::default(), &MIGRATOR).await.expect("open database"))
}

fn registration(email: &str) -> domain::Registration {
    domain::register(email, "password1", "Ada Lovelace", Address::default()).unwrap()
}

async fn create_get_and_unique_email(url: String) {
    let store = open(&url).await;
    let user = store.create(&registration("Ada@Example.com"), "$hash", 10).await.unwrap();
    assert_eq!(user.email, "ada@example.com");
    assert!(user.active);
    assert_eq!(store.get(&user.id).await.unwrap(), Some(user.clone()));
    assert!(store.get("nobody").await.unwrap().is_none());
    let dup = store.create(&registration("ADA@example.com "), "$hash", 11).await;
    assert!(matches!(dup, Err(StoreError::Domain(DomainError::AlreadyExists(_)))), "{dup:?}");
    let (found, hash) = store.credentials("ada@example.com").await.unwrap().unwrap();
    assert_eq!((found.id, hash.as_str()), (user.id, "$hash"));
    assert!(store.credentials("eve@example.com").await.unwrap().is_none());
}

async fn updates_apply_only_given_fields(url: String) {
    let store = open(&url).await;
    let user = store.create(&registration("a@example.com"), "$hash", 10).await.unwrap();
    let address = Address {
        line1: "1 Main St".into(),
        city: "Springfield".into(),
        postal_code: "12345".into(),
        country_code: "US".into(),
        ..Default::default()
    };
    let changed = store
        .update(&user.id, ProfileChanges { address: Some(address.clone()), ..Default::default() }, 20)
        .await
        .unwrap();
    assert_eq!((changed.name.as_str(), &changed.address, changed.updated_at), ("Ada Lovelace", &address, 20));
    let closed =
        store.update(&user.id, ProfileChanges { active: Some(false), ..Default::default() }, 30).await.unwrap();
    assert!(!closed.active);
    assert_eq!(store.get(&user.id).await.unwrap().unwrap(), closed, "persisted");
    let missing = store.update("nobody", ProfileChanges::default(), 40).await;
    assert!(matches!(missing, Err(StoreError::Domain(DomainError::NotFound(_)))), "{missing:?}");
}

async fn concurrent_registrations_of_one_email_make_one_account(url: String) {
    let store = Arc::new(open(&url).await);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create(&registration("race@example.com"), "$h", i).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::Domain(DomainError::AlreadyExists(_))) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(created, 1);
}

kit::backend_tests!(
    create_get_and_unique_email,
    updates_apply_only_given_fields,
    concurrent_registrations_of_one_email_make_one_account,
);
