//! Persistence for the catalog and reservations. Portable SQL over sqlx `Any`.
//!
//! Overselling is impossible by construction: a reservation moves stock with a
//! conditional update (`… WHERE stock - reserved >= $qty`), never a
//! read-then-write, inside one transaction per reservation so that every item
//! is reserved or none is.
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::domain::{
    self, Dimensions, DomainError, NewProduct, Product, Reservation, ReservationState, SearchFilter, Sort,
};
use kit::db::Db;
use kit_core::pagination::Page;
use kit_core::reason::Reason;

pub use kit::error::StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const PRODUCT_COLUMNS: &str = "id, sku, name, description, category, price_minor, currency_code, image_url, \
     weight_grams, length_mm, width_mm, height_mm, stock, reserved, sold, active, created_at, updated_at";

fn product_from_row(row: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        category: row.try_get("category")?,
        price_minor: row.try_get("price_minor")?,
        currency_code: row.try_get("currency_code")?,
        image_url: row.try_get("image_url")?,
        weight_grams: row.try_get("weight_grams")?,
        dimensions: Dimensions {
            length_mm: row.try_get("length_mm")?,
            width_mm: row.try_get("width_mm")?,
            height_mm: row.try_get("height_mm")?,
        },
        stock: row.try_get("stock")?,
        reserved: row.try_get("reserved")?,
        sold: row.try_get("sold")?,
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A value bound into dynamically built SQL.
enum Bind {
    Text(String),
    Int(i64),
}

#[derive(Clone, Debug)]
pub struct ProductStore {
    db: Db,
}

/// Per-item availability, as CheckAvailability reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    pub product_id: String,
    pub requested: i64,
    /// None when the product does not exist.
    pub available: Option<i64>,
}

impl ProductStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn create(&self, product: NewProduct, now: i64) -> Result<Product> {
        let product = product.validate()?;
        let id = uuid::Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO products (id, sku, name, description, category, price_minor, currency_code, image_url, \
             weight_grams, length_mm, width_mm, height_mm, stock, reserved, sold, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, 0, 1, $14, $14) \
             ON CONFLICT (sku) DO NOTHING",
        )
        .bind(&id)
        .bind(&product.sku)
        .bind(&product.name)
        .bind(&product.description)
        .bind(&product.category)
        .bind(product.price_minor)
        .bind(&product.currency_code)
        .bind(&product.image_url)
        .bind(product.weight_grams)
        .bind(product.dimensions.length_mm)
        .bind(product.dimensions.width_mm)
        .bind(product.dimensions.height_mm)
        .bind(product.stock)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(DomainError::AlreadyExists(format!("a product with sku {} already exists", product.sku)).into());
        }
        self.get(&id).await?.ok_or_else(|| sqlx::Error::RowNotFound.into())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Product>> {
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(self.db.pool()).await?;
        Ok(row.as_ref().map(product_from_row).transpose()?)
    }

    /// The products among `ids` that exist, in the order asked.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Product>> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(product) = self.get(id).await? {
                found.push(product);
            }
        }
        Ok(found)
    }

    pub async fn count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM products").fetch_one(self.db.pool()).await?.try_get("n")?)
    }

    /// Active products matching `filter`, one page of them, plus the total count.
    pub async fn search(&self, filter: &SearchFilter, page: Page) -> Result<(Vec<Product>, i64)> {
        let mut clauses = vec!["active = 1".to_string()];
        let mut binds = Vec::new();
        let mut bind = |value: Bind| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if !filter.query.is_empty() {
            let p = bind(Bind::Text(domain::contains_pattern(&filter.query)));
            clauses.push(format!(
                "(LOWER(name) LIKE {p} ESCAPE '\\' OR LOWER(description) LIKE {p} ESCAPE '\\' OR LOWER(sku) LIKE {p} ESCAPE '\\')"
            ));
        }
        if !filter.category.is_empty() {
            clauses.push(format!("category = {}", bind(Bind::Text(filter.category.clone()))));
        }
        if let Some(min) = filter.min_price_minor {
            clauses.push(format!("price_minor >= {}", bind(Bind::Int(min))));
        }
        if let Some(max) = filter.max_price_minor {
            clauses.push(format!("price_minor <= {}", bind(Bind::Int(max))));
        }
        if filter.in_stock_only {
            clauses.push("stock - reserved > 0".to_string());
        }
        let order = match filter.sort {
            Sort::Name => "name ASC, id ASC",
            Sort::PriceAsc => "price_minor ASC, id ASC",
            Sort::PriceDesc => "price_minor DESC, id ASC",
            Sort::Newest => "created_at DESC, id DESC",
        };
        let limit = bind(Bind::Int(page.limit));
        let offset = bind(Bind::Int(page.offset));
        let filter_sql = clauses.join(" AND ");
        let page_sql = format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE {filter_sql} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
        );
        let count_sql = format!("SELECT COUNT(*) AS n FROM products WHERE {filter_sql}");

        let mut page_query = sqlx::query(AssertSqlSafe(page_sql));
        let mut count_query = sqlx::query(AssertSqlSafe(count_sql));
        let filter_binds = binds.len() - 2;
        for (i, value) in binds.iter().enumerate() {
            page_query = match value {
                Bind::Text(s) => page_query.bind(s.clone()),
                Bind::Int(n) => page_query.bind(*n),
            };
            if i < filter_binds {
                count_query = match value {
                    Bind::Text(s) => count_query.bind(s.clone()),
                    Bind::Int(n) => count_query.bind(*n),
                };
            }
        }
        let rows = page_query.fetch_all(self.db.pool()).await?;
        let total: i64 = count_query.fetch_one(self.db.pool()).await?.try_get("n")?;
        let products = rows.iter().map(product_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok((products, total))
    }

    pub async fn check_availability(&self, items: &[(String, i64)]) -> Result<Vec<Availability>> {
        let items = domain::normalize_items(items)?;
        let mut report = Vec::with_capacity(items.len());
        for (product_id, requested) in items {
            let available =
                sqlx::query("SELECT stock - reserved AS available FROM products WHERE id = $1 AND active = 1")
                    .bind(&product_id)
                    .fetch_optional(self.db.pool())
                    .await?
                    .map(|row| row.try_get::<i64, _>("available"))
                    .transpose()?;
            report.push(Availability { product_id, requested, available });
        }
        Ok(report)
    }

    /// Reserves every item for `order_id` until `now + ttl_ms`, or nothing.
    /// Repeating the same request returns the existing reservation unchanged.
    pub async fn reserve(&self, order_id: &str, items: &[(String, i64)], ttl_ms: i64, now: i64) -> Result<Reservation> {
        domain::validate_id("order_id", order_id)?;
        let items = domain::normalize_items(items)?;
        let mut tx = self.db.begin_write().await?;
        // The reservation row goes first: it is the idempotency guard, and on
        // SQLite a write as the first statement queues on the write lock.
        let created = sqlx::query(
            "INSERT INTO reservations (order_id, state, expires_at, created_at, updated_at) \
             VALUES ($1, 'ACTIVE', $2, $3, $3) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if created.rows_affected() == 0 {
            let existing = load_reservation(&mut tx, order_id).await?.ok_or(sqlx::Error::RowNotFound)?;
            tx.rollback().await?;
            domain::replay_reservation(&existing, &items)?;
            return Ok(existing);
        }
        for (product_id, quantity) in &items {
            let moved = sqlx::query(
                "UPDATE products SET reserved = reserved + $1, updated_at = $2 \
                 WHERE id = $3 AND active = 1 AND stock - reserved >= $1",
            )
            .bind(*quantity)
            .bind(now)
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 0 {
                let why = shortage_reason(&mut tx, product_id, *quantity).await?;
                tx.rollback().await?;
                return Err(why.into());
            }
            sqlx::query("INSERT INTO reservation_items (order_id, product_id, quantity) VALUES ($1, $2, $3)")
                .bind(order_id)
                .bind(product_id)
                .bind(*quantity)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        metrics::counter!("inventory_reservations_total", "outcome" => "reserved").increment(1);
        Ok(Reservation {
            order_id: order_id.to_string(),
            state: ReservationState::Active,
            items,
            expires_at: now + ttl_ms,
            created_at: now,
            updated_at: now,
        })
    }

    /// Releases an active reservation. Idempotent: releasing again returns the
    /// released reservation; releasing an unknown order records a released
    /// tombstone so a reservation arriving later is refused, not leaked.
    pub async fn release(&self, order_id: &str, now: i64) -> Result<Reservation> {
        domain::validate_id("order_id", order_id)?;
        self.finish(order_id, ReservationState::Released, now, true).await
    }

    /// Puts a committed sale back into stock. Idempotent.
    pub async fn restock(&self, order_id: &str, now: i64) -> Result<Reservation> {
        domain::validate_id("order_id", order_id)?;
        self.finish(order_id, ReservationState::Restocked, now, false).await
    }

    /// Turns an active reservation into a sale. Idempotent.
    pub async fn commit(&self, order_id: &str, now: i64) -> Result<Reservation> {
        domain::validate_id("order_id", order_id)?;
        self.finish(order_id, ReservationState::Committed, now, false).await
    }

    pub async fn get_reservation(&self, order_id: &str) -> Result<Option<Reservation>> {
        domain::validate_id("order_id", order_id)?;
        let mut conn = self.db.pool().acquire().await?;
        Ok(load_reservation(&mut conn, order_id).await?)
    }

    /// Expires up to `limit` active reservations past their deadline; returns how many.
    pub async fn expire_due(&self, now: i64, limit: i64) -> Result<usize> {
        Ok(self.expire_due_reservations(now, limit).await?.len())
    }

    /// Expires up to `limit` active reservations past their deadline; returns them.
    pub async fn expire_due_reservations(&self, now: i64, limit: i64) -> Result<Vec<Reservation>> {
        let due: Vec<String> = sqlx::query(
            "SELECT order_id FROM reservations WHERE state = 'ACTIVE' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|row| row.try_get("order_id"))
        .collect::<Result<_, _>>()?;
        let mut expired = Vec::new();
        for order_id in due {
            match self.finish(&order_id, ReservationState::Expired, now, false).await {
                Ok(reservation) => expired.push(reservation),
                // Released or committed since we looked: nothing to do.
                Err(StoreError::Domain(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(expired)
    }

    /// Moves a reservation to `to` from the state it comes from (ACTIVE, or
    /// COMMITTED for a restock) and applies its stock effect, in one
    /// transaction. The conditional state update is the lock: of two racing
    /// finishes, exactly one sees a row change.
    async fn finish(
        &self,
        order_id: &str,
        to: ReservationState,
        now: i64,
        tombstone_unknown: bool,
    ) -> Result<Reservation> {
        // On PostgreSQL a reservation committed by a concurrent ReserveInventory
        // right after our conditional update looked can show up as ACTIVE in the
        // follow-up read; try again, it will match this time.
        for _ in 0..3 {
            if let Some(done) = self.try_finish(order_id, to, now, tombstone_unknown).await? {
                return Ok(done);
            }
        }
        Err(DomainError::FailedPrecondition(format!(
            "reservation for order {order_id} is changing concurrently; retry"
        ))
        .into())
    }

    async fn try_finish(
        &self,
        order_id: &str,
        to: ReservationState,
        now: i64,
        tombstone_unknown: bool,
    ) -> Result<Option<Reservation>> {
        let mut tx = self.db.begin_write().await?;
        let changed =
            sqlx::query("UPDATE reservations SET state = $1, updated_at = $2 WHERE order_id = $3 AND state = $4")
                .bind(to.as_str())
                .bind(now)
                .bind(order_id)
                .bind(to.comes_from().as_str())
                .execute(&mut *tx)
                .await?;
        if changed.rows_affected() == 1 {
            let reservation = load_reservation(&mut tx, order_id).await?.ok_or(sqlx::Error::RowNotFound)?;
            let (stock, reserved, sold) = to.stock_effect();
            for (product_id, quantity) in &reservation.items {
                sqlx::query(
                    "UPDATE products SET stock = stock + $1, reserved = reserved + $2, sold = sold + $3, updated_at = $4 \
                     WHERE id = $5",
                )
                .bind(stock * quantity)
                .bind(reserved * quantity)
                .bind(sold * quantity)
                .bind(now)
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            metrics::counter!("inventory_reservations_total", "outcome" => to.as_str().to_ascii_lowercase())
                .increment(1);
            return Ok(Some(reservation));
        }
        let existing = match load_reservation(&mut tx, order_id).await? {
            Some(existing) => existing,
            None if tombstone_unknown => {
                let inserted = sqlx::query(
                    "INSERT INTO reservations (order_id, state, expires_at, created_at, updated_at) \
                     VALUES ($1, 'RELEASED', $2, $2, $2) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                if inserted.rows_affected() == 0 {
                    // A reservation appeared concurrently: finish that one instead.
                    return Ok(None);
                }
                return Ok(Some(Reservation {
                    order_id: order_id.to_string(),
                    state: ReservationState::Released,
                    items: Vec::new(),
                    expires_at: now,
                    created_at: now,
                    updated_at: now,
                }));
            }
            None => {
                tx.rollback().await?;
                return Err(DomainError::NotFound(format!("no reservation for order {order_id}")).into());
            }
        };
        tx.rollback().await?;
        // Already in the target state: a repeat, which changes nothing.
        if existing.state == to || (to == ReservationState::Released && existing.state == ReservationState::Expired) {
            return Ok(Some(existing));
        }
        domain::check_finish(order_id, existing.state, to)?;
        // ACTIVE after all: raced with the reservation's creation.
        Ok(None)
    }

    /// Loads seed products when the catalog is empty (first start). Safe to run
    /// from several replicas at once: SKUs are unique and inserts skip conflicts.
    pub async fn seed_if_empty(&self, products: Vec<NewProduct>, now: i64) -> Result<usize> {
        if self.count().await? > 0 {
            return Ok(0);
        }
        let mut added = 0;
        for product in products {
            match self.create(product, now).await {
                Ok(_) => added += 1,
                Err(StoreError::Domain(DomainError::AlreadyExists(_))) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(added)
    }
}

async fn load_reservation(conn: &mut sqlx::AnyConnection, order_id: &str) -> Result<Option<Reservation>, sqlx::Error> {
    let Some(row) =
        sqlx::query("SELECT order_id, state, expires_at, created_at, updated_at FROM reservations WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    let state_text: String = row.try_get("state")?;
    let state = ReservationState::parse(&state_text)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown reservation state {state_text:?}").into()))?;
    let items =
        sqlx::query("SELECT product_id, quantity FROM reservation_items WHERE order_id = $1 ORDER BY product_id")
            .bind(order_id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("product_id")?, r.try_get("quantity")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(Reservation {
        order_id: row.try_get("order_id")?,
        state,
        items,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

/// Why a conditional reserve touched no row: unknown, inactive, or short.
async fn shortage_reason(
    tx: &mut Transaction<'static, Any>,
    product_id: &str,
    quantity: i64,
) -> Result<DomainError, sqlx::Error> {
    let row = sqlx::query("SELECT stock - reserved AS available, active FROM products WHERE id = $1")
        .bind(product_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(match row {
        None => DomainError::NotFound(format!("product {product_id} not found")),
        Some(row) if row.try_get::<i64, _>("active")? == 0 => {
            DomainError::refused(Reason::NotForSale, format!("product {product_id} is not for sale"))
        }
        Some(row) => DomainError::refused(
            Reason::InsufficientStock,
            format!(
                "insufficient stock for product {product_id}: requested {quantity}, available {}",
                row.try_get::<i64, _>("available")?
            ),
        ),
    })
}
