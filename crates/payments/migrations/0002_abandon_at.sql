-- When a payment still in flight (PENDING, AUTHORIZED, PROCESSING, REFUNDING)
-- has certainly been abandoned: the deadline of the call working on it plus a
-- grace (the server drops a call at its deadline). A crash or a spent
-- deadline leaves such payments behind; recovery settles them.
ALTER TABLE payments ADD COLUMN abandon_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX payments_in_flight ON payments (status, abandon_at);
