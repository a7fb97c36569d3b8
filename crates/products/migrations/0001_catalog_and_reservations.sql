-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Times are epoch
-- milliseconds, money is integer minor units, flags are 0/1 BIGINTs.
CREATE TABLE products (
    id            TEXT PRIMARY KEY,
    sku           TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    category      TEXT NOT NULL,
    price_minor   BIGINT NOT NULL CHECK (price_minor >= 0),
    currency_code TEXT NOT NULL,
    image_url     TEXT NOT NULL,
    weight_grams  BIGINT NOT NULL CHECK (weight_grams >= 0),
    length_mm     BIGINT NOT NULL CHECK (length_mm >= 0),
    width_mm      BIGINT NOT NULL CHECK (width_mm >= 0),
    height_mm     BIGINT NOT NULL CHECK (height_mm >= 0),
    -- Units on hand, reserved ones included. Invariant: 0 <= reserved <= stock.
    stock         BIGINT NOT NULL CHECK (stock >= 0),
    reserved      BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= stock),
    sold          BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0),
    active        BIGINT NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX products_category ON products (category);
CREATE INDEX products_price ON products (price_minor);
CREATE INDEX products_created ON products (created_at);

-- One reservation per order id. state: ACTIVE, COMMITTED, RELEASED, EXPIRED.
CREATE TABLE reservations (
    order_id   TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX reservations_due ON reservations (state, expires_at);

CREATE TABLE reservation_items (
    order_id   TEXT NOT NULL REFERENCES reservations (order_id),
    product_id TEXT NOT NULL REFERENCES products (id),
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
