//! One database per service, reached through sqlx's `Any` driver so the same
//! queries (`$N` placeholders, portable SQL) and the same migrations run on
//! SQLite (default: a file per service) and PostgreSQL (a database per service).
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::{Any, AnyPool, Executor, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database url {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(DbError::UnsupportedUrl(url.to_string()))
        }
    }
}

/// The SQLite URL for a database file, created on first connect.
pub fn sqlite_file_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

#[derive(Debug, Clone)]
pub struct DbOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout: Duration::from_secs(10) }
    }
}

/// A service's database: the pool plus which backend it is, for the few places
/// where SQL must differ (how a write transaction starts).
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects, creating the database (SQLite file or PostgreSQL database) if it
    /// does not exist yet, then runs `migrator`.
    pub async fn open(url: &str, options: &DbOptions, migrator: &Migrator) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        match backend {
            Backend::Sqlite => ensure_sqlite_dir(url)?,
            Backend::Postgres => ensure_postgres_database(url).await?,
        }
        let connect = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; busy_timeout makes
                        // writers queue instead of failing with SQLITE_BUSY.
                        conn.execute(sqlx::raw_sql(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 30000; \
                             PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                        ))
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect)
            .await?;
        run_migrations(&pool, backend, migrator).await?;
        Ok(Self { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`): a deferred transaction that reads and then
    /// writes can fail with SQLITE_BUSY without waiting, which concurrent
    /// reservations would hit constantly.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// The row-lock suffix for a `SELECT` that precedes an update of the same
    /// rows in a write transaction: `FOR UPDATE` on PostgreSQL; nothing on
    /// SQLite, where `begin_write` already holds the database write lock.
    pub fn lock_rows(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.pool.execute("SELECT 1").await.map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs the migrations. Replicas sharing one SQLite file may race to apply the
/// same migration (SQLite has no migration lock, PostgreSQL takes an advisory
/// one); the loser sees "already exists", so it retries and then finds the
/// migration applied.
///
/// Migrations the database has and this build does not know are accepted:
/// blue and green share a database, and the old version must keep running —
/// and restart — on a schema the new one expanded (see ARCHITECTURE.md,
/// expand/contract). A migration both know must still match byte for byte.
async fn run_migrations(pool: &AnyPool, backend: Backend, migrator: &Migrator) -> Result<(), DbError> {
    let mut tolerant = Migrator::with_migrations(migrator.iter().cloned().collect());
    tolerant.set_ignore_missing(true);
    let migrator = &tolerant;
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(err) if backend == Backend::Sqlite && attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %err, attempt, "migration raced with another process; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

fn ensure_sqlite_dir(url: &str) -> Result<(), DbError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DbError::DataDir { path: dir.display().to_string(), source })?;
    }
    Ok(())
}

async fn ensure_postgres_database(url: &str) -> Result<(), DbError> {
    if Any::database_exists(url).await? {
        return Ok(());
    }
    if let Err(err) = Any::create_database(url).await {
        // Another replica may have created it between the check and here.
        if !Any::database_exists(url).await? {
            return Err(err.into());
        }
    }
    Ok(())
}
