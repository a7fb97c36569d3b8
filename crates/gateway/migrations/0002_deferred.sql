-- Writes accepted while their backend was unavailable (the `queue` fallback),
-- delivered by the gateway once the backend is back. Rows are kept after
-- delivery or failure, as a record.
CREATE TABLE deferred_calls (
    id            TEXT PRIMARY KEY,
    backend       TEXT NOT NULL,
    grpc_path     TEXT NOT NULL,
    -- base64 of the protobuf request (one column type for SQLite and PostgreSQL)
    message       TEXT NOT NULL,
    -- JSON object of the gRPC metadata to send: user, client, idempotency key
    metadata      TEXT NOT NULL,
    -- pending | delivered | failed
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    last_error    TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX deferred_calls_pending ON deferred_calls (state, created_at_ms);
