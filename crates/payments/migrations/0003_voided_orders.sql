-- Orders voided by VoidOrderPayments (the order saga's compensation). A charge
-- for a voided order is refused before it starts, and one that was already
-- running when the void came is refunded as it completes: a void can reach
-- Payments before a charge whose caller died (its handler runs on).
CREATE TABLE voided_orders (
    order_id   TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
