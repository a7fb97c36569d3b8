-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Times are epoch
-- milliseconds, money is integer minor units. Nothing here is ever deleted.
CREATE TABLE payments (
    id              TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    -- PENDING, AUTHORIZED, PROCESSING, COMPLETED, FAILED, REFUNDING, REFUNDED
    status          TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    currency_code   TEXT NOT NULL,
    refunded_minor  BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    card_brand      TEXT NOT NULL,
    card_last4      TEXT NOT NULL,
    authorization_id TEXT,
    failure_code    TEXT,
    failure_message TEXT,
    retryable       BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX payments_order ON payments (order_id);
-- Money is taken at most once per order, whoever asks and however often.
CREATE UNIQUE INDEX payments_one_charge_per_order ON payments (order_id)
    WHERE status IN ('COMPLETED', 'REFUNDING', 'REFUNDED');

-- Every step of every payment, in order.
CREATE TABLE payment_attempts (
    id         TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    step       TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX payment_attempts_payment ON payment_attempts (payment_id, created_at);

CREATE TABLE refunds (
    id           TEXT PRIMARY KEY,
    payment_id   TEXT NOT NULL REFERENCES payments (id),
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    reason       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE INDEX refunds_payment ON refunds (payment_id, created_at);
