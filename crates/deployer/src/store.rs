//! Rollouts on disk (SQLite by default, PostgreSQL too): written after every
//! step, so a controller killed at any point resumes from the last one.
use sqlx::Row;

use kit::db::{Db, DbError};

use crate::model::{Phase, Rollout};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("deploy store: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("deploy store holds a rollout it cannot read: {0}")]
    Corrupt(String),
    /// Another rollout of the service is still going (the unique index).
    #[error("{0}")]
    Busy(String),
    /// The rollout moved on meanwhile (a rollback from the API, say).
    #[error("rollout {0} changed meanwhile")]
    Moved(String),
}

#[derive(Clone)]
pub struct RolloutStore {
    db: Db,
}

fn encode(rollout: &Rollout) -> Result<String, StoreError> {
    serde_json::to_string(rollout).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(text: &str) -> Result<Rollout, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl RolloutStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let db = Db::open(url, &kit::db::DbOptions::default(), &MIGRATOR).await?;
        Ok(Self { db })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Stores a new rollout; `Busy` if the service has an active one.
    pub async fn create(&self, rollout: &Rollout) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO rollouts (id, service, phase, active, state, created_ms, updated_ms) \
             VALUES ($1, $2, $3, 1, $4, $5, $6)",
        )
        .bind(&rollout.id)
        .bind(&rollout.service)
        .bind(rollout.phase.name())
        .bind(encode(rollout)?)
        .bind(rollout.created_ms)
        .bind(rollout.updated_ms)
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Busy(format!("{} is already being deployed", rollout.service)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a rollout that is still in phase `expected`; `Moved` if it
    /// is not (someone else moved it first).
    pub async fn save(&self, rollout: &Rollout, expected: Phase) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE rollouts SET phase = $1, active = $2, state = $3, updated_ms = $4 WHERE id = $5 AND phase = $6",
        )
        .bind(rollout.phase.name())
        .bind(i32::from(!rollout.phase.is_over()))
        .bind(encode(rollout)?)
        .bind(rollout.updated_ms)
        .bind(&rollout.id)
        .bind(expected.name())
        .execute(self.db.pool())
        .await?;
        if updated.rows_affected() == 1 { Ok(()) } else { Err(StoreError::Moved(rollout.id.clone())) }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let row =
            sqlx::query("SELECT state FROM rollouts WHERE id = $1").bind(id).fetch_optional(self.db.pool()).await?;
        row.map(|r| decode(&r.get::<String, _>(0))).transpose()
    }

    /// The service's active rollout, if any.
    pub async fn active(&self, service: &str) -> Result<Option<Rollout>, StoreError> {
        let row = sqlx::query("SELECT state FROM rollouts WHERE service = $1 AND active = 1")
            .bind(service)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| decode(&r.get::<String, _>(0))).transpose()
    }

    /// Every active rollout: what a (re)started controller resumes.
    pub async fn all_active(&self) -> Result<Vec<Rollout>, StoreError> {
        let rows = sqlx::query("SELECT state FROM rollouts WHERE active = 1 ORDER BY created_ms")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| decode(&r.get::<String, _>(0))).collect()
    }

    /// The newest rollouts, of one service or all, newest first.
    pub async fn recent(&self, service: Option<&str>, limit: i64) -> Result<Vec<Rollout>, StoreError> {
        let rows = match service {
            Some(service) => {
                sqlx::query("SELECT state FROM rollouts WHERE service = $1 ORDER BY created_ms DESC LIMIT $2")
                    .bind(service)
                    .bind(limit)
                    .fetch_all(self.db.pool())
                    .await?
            }
            None => {
                sqlx::query("SELECT state FROM rollouts ORDER BY created_ms DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(self.db.pool())
                    .await?
            }
        };
        rows.iter().map(|r| decode(&r.get::<String, _>(0))).collect()
    }

    /// Keeps the newest `keep` finished rollouts per service: the table's bound.
    pub async fn prune(&self, keep: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM rollouts WHERE active = 0 AND id NOT IN (\
               SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY service ORDER BY created_ms DESC) AS n \
                               FROM rollouts WHERE active = 0) ranked WHERE n <= $1)",
        )
        .bind(keep)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected())
    }
}
