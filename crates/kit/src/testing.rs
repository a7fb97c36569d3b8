//! Throwaway databases for tests: a SQLite file in a temp dir, or a uniquely
//! named PostgreSQL database on the local server.
//!
//! PostgreSQL tests skip (with a loud message) when no server answers, except
//! when `CI=true`: then they fail, so a missing server can never pass CI.
use std::future::Future;

use sqlx::migrate::MigrateDatabase;

use crate::db::Backend;

/// Where the PostgreSQL tests connect; override with `SHOPFAST_TEST_PG_URL`.
pub fn postgres_admin_url() -> String {
    std::env::var("SHOPFAST_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub fn running_in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let url = crate::db::sqlite_file_url(&dir.path().join("test.db"));
        Self { url, backend: Backend::Sqlite, _dir: Some(dir) }
    }

    /// A fresh PostgreSQL database, or `None` (skip) when the server is down
    /// outside CI.
    pub async fn postgres() -> Option<Self> {
        sqlx::any::install_default_drivers();
        let admin = postgres_admin_url();
        let reachable = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            <sqlx::AnyConnection as sqlx::Connection>::connect(&admin),
        )
        .await;
        match reachable {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return skip_or_fail(&format!("{err}")),
            Err(_) => return skip_or_fail("connect timed out"),
        }
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
        let name = format!("shopfast_test_{}", uuid::Uuid::now_v7().simple());
        let url = format!("{base}/{name}");
        sqlx::Any::create_database(&url).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
        Some(Self { url, backend: Backend::Postgres, _dir: None })
    }

    pub async fn of(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// Drops a PostgreSQL database (a SQLite temp dir goes with the value).
    pub async fn cleanup(self) {
        if self.backend == Backend::Postgres
            && let Err(err) = sqlx::Any::force_drop_database(&self.url).await
        {
            eprintln!("warning: could not drop test database {}: {err}", self.url);
        }
    }
}

fn skip_or_fail(why: &str) -> Option<TestDb> {
    if running_in_ci() {
        panic!("PostgreSQL is required when CI=true but is unreachable at {}: {why}", postgres_admin_url());
    }
    eprintln!(
        "SKIPPED: PostgreSQL unreachable at {} ({why}); set CI=true to make this a failure",
        postgres_admin_url()
    );
    None
}

/// Runs one test case against a fresh database of `backend`.
pub async fn run_on<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = TestDb::of(backend).await else { return };
    case(db.url.clone()).await;
    db.cleanup().await;
}

/// Generates `sqlite::<case>` and `postgres::<case>` tests for each
/// `async fn <case>(database_url: String)` in scope.
#[macro_export]
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    $crate::testing::run_on($crate::db::Backend::Sqlite, super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    $crate::testing::run_on($crate::db::Backend::Postgres, super::$case).await;
                }
            )*
        }
    };
}

/// The token secret of services under test (there is no built-in one).
pub const TEST_TOKEN_SECRET: &str = "shopfast-test-token-secret-0123456789abcdef";

/// [`TEST_TOKEN_SECRET`] as config takes it.
pub fn test_token_secret() -> Option<crate::config::Secret> {
    Some(crate::config::Secret::new(TEST_TOKEN_SECRET))
}

/// Settings for a service under test: ephemeral ports on loopback, the given
/// database, a short shutdown grace.
pub fn service_common(database_url: &str) -> crate::config::ServiceCommon {
    let mut common = crate::config::ServiceCommon::with_ports(0, 0);
    common.database_url = Some(database_url.to_string());
    common.shutdown_grace_ms = 2_000;
    // In-process services under test talk plain text; mutual TLS is tested
    // on its own (and `shopfast up` runs with it).
    common.tls = kit_tls::TlsConfig::insecure();
    common
}

/// Asserts a gRPC result failed with `code`, returning the message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code) -> String {
    match result {
        Err(status) if status.code() == code => status.message().to_string(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// Like [`expect_code`], and the refusal names `reason` (`kit_core::reason`).
pub fn expect_refusal<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    reason: kit_core::reason::Reason,
) -> String {
    match result {
        Err(status) if status.code() == code && kit_resilience::signals::reason(&status) == Some(reason) => {
            status.message().to_string()
        }
        other => panic!("expected {code:?} for {reason}, got {other:?}"),
    }
}
