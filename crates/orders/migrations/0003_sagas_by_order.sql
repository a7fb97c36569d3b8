-- An order being placed is looked up by its order id before its order row
-- exists (GET /v1/orders/{id} while the saga runs): through its saga.
CREATE INDEX sagas_order ON sagas (order_id, created_at);
