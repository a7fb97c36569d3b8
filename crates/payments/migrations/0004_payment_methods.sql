-- Cards kept for a later charge, under a token: the number and expiry sealed
-- with the service's card key (ChaCha20-Poly1305, the token as associated
-- data, so a sealed card cannot be moved under another token). The CVC is
-- checked when the card is tokenized and never stored. Rows expire and are
-- swept.
CREATE TABLE payment_methods (
    token       TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    card_brand  TEXT NOT NULL,
    card_last4  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX payment_methods_expiry ON payment_methods (expires_at);
