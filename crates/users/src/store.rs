//! Persistence for accounts. Portable SQL over sqlx `Any`.
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::domain::{Address, DomainError, ProfileChanges, Registration, User};
use kit::db::Db;

pub use kit::error::StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const USER_COLUMNS: &str = "id, email, name, address_line1, address_line2, address_city, address_region, \
     address_postal_code, address_country_code, active, created_at, updated_at";

fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        address: Address {
            line1: row.try_get("address_line1")?,
            line2: row.try_get("address_line2")?,
            city: row.try_get("address_city")?,
            region: row.try_get("address_region")?,
            postal_code: row.try_get("address_postal_code")?,
            country_code: row.try_get("address_country_code")?,
        },
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[derive(Clone, Debug)]
pub struct UserStore {
    db: Db,
}

impl UserStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a validated registration; ALREADY_EXISTS when the email is taken.
    pub async fn create(&self, registration: &Registration, password_hash: &str, now: i64) -> Result<User> {
        let id = uuid::Uuid::now_v7().to_string();
        let a = &registration.address;
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, password_hash, name, address_line1, address_line2, address_city, \
             address_region, address_postal_code, address_country_code, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11) ON CONFLICT (email) DO NOTHING",
        )
        .bind(&id)
        .bind(&registration.email)
        .bind(password_hash)
        .bind(&registration.name)
        .bind(&a.line1)
        .bind(&a.line2)
        .bind(&a.city)
        .bind(&a.region)
        .bind(&a.postal_code)
        .bind(&a.country_code)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(DomainError::AlreadyExists("an account with this email already exists".into()).into());
        }
        self.get(&id).await?.ok_or_else(|| sqlx::Error::RowNotFound.into())
    }

    pub async fn get(&self, id: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(self.db.pool()).await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    /// The user and their password hash, by normalised email.
    pub async fn credentials(&self, email: &str) -> Result<Option<(User, String)>> {
        let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(email).fetch_optional(self.db.pool()).await? else {
            return Ok(None);
        };
        Ok(Some((user_from_row(&row)?, row.try_get("password_hash")?)))
    }

    /// Applies validated changes; NOT_FOUND for an unknown id.
    pub async fn update(&self, id: &str, changes: ProfileChanges, now: i64) -> Result<User> {
        let mut tx = self.db.begin_write().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1{}", self.db.lock_rows());
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? else {
            return Err(DomainError::NotFound(format!("user {id} not found")).into());
        };
        let user = changes.apply(user_from_row(&row)?, now);
        let a = &user.address;
        sqlx::query(
            "UPDATE users SET name = $1, address_line1 = $2, address_line2 = $3, address_city = $4, \
             address_region = $5, address_postal_code = $6, address_country_code = $7, active = $8, updated_at = $9 \
             WHERE id = $10",
        )
        .bind(&user.name)
        .bind(&a.line1)
        .bind(&a.line2)
        .bind(&a.city)
        .bind(&a.region)
        .bind(&a.postal_code)
        .bind(&a.country_code)
        .bind(i64::from(user.active))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(user)
    }
}
