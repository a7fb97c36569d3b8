-- Monthly quota usage per client, so a gateway restart does not reset it.
CREATE TABLE quota_usage (
    client TEXT NOT NULL,
    -- YYYY-MM (UTC)
    month  TEXT NOT NULL,
    used   BIGINT NOT NULL,
    PRIMARY KEY (client, month)
);
