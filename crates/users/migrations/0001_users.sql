-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Times are epoch
-- milliseconds; flags are 0/1 BIGINTs.
CREATE TABLE users (
    id                   TEXT PRIMARY KEY,
    -- Stored lower-cased and trimmed, so uniqueness is case-insensitive.
    email                TEXT NOT NULL UNIQUE,
    -- argon2id PHC string.
    password_hash        TEXT NOT NULL,
    name                 TEXT NOT NULL,
    address_line1        TEXT NOT NULL DEFAULT '',
    address_line2        TEXT NOT NULL DEFAULT '',
    address_city         TEXT NOT NULL DEFAULT '',
    address_region       TEXT NOT NULL DEFAULT '',
    address_postal_code  TEXT NOT NULL DEFAULT '',
    address_country_code TEXT NOT NULL DEFAULT '',
    active               BIGINT NOT NULL DEFAULT 1,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
