-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Times are epoch
-- milliseconds, money is integer minor units in the order's currency.
CREATE TABLE orders (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    -- CREATED, RESERVED, PAID, SHIPPED, DELIVERED, CANCELLED, RETURNED
    status           TEXT NOT NULL,
    currency_code    TEXT NOT NULL,
    subtotal_minor   BIGINT NOT NULL CHECK (subtotal_minor >= 0),
    tax_minor        BIGINT NOT NULL CHECK (tax_minor >= 0),
    shipping_minor   BIGINT NOT NULL CHECK (shipping_minor >= 0),
    total_minor      BIGINT NOT NULL CHECK (total_minor >= 0),
    -- JSON snapshot of the shipping address at order time
    shipping_address TEXT NOT NULL,
    saga_id          TEXT NOT NULL,
    payment_id       TEXT,
    failure_reason   TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE INDEX orders_user ON orders (user_id, created_at, id);

CREATE TABLE order_items (
    order_id         TEXT NOT NULL REFERENCES orders (id),
    product_id       TEXT NOT NULL,
    sku              TEXT NOT NULL,
    name             TEXT NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, product_id)
);

-- The order saga, as the orchestrator last saved it (record is JSON).
CREATE TABLE sagas (
    id                  TEXT PRIMARY KEY,
    order_id            TEXT NOT NULL,
    state               TEXT NOT NULL,
    manual_intervention BIGINT NOT NULL,
    record              TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE INDEX sagas_state ON sagas (state);

-- Transactional outbox: written in the same transaction as the change it
-- announces; a worker publishes (acts on) it afterwards, at least once.
CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    available_at BIGINT NOT NULL,
    published_at BIGINT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL
);

CREATE INDEX outbox_due ON outbox (published_at, available_at);
