-- The outbox is relayed to a message queue: `published_at` is when the relay
-- handed an event to the broker, `handled_at` when its consumer's change was
-- made (in the same transaction), `republished` how often it was published
-- again because the broker lost it.
ALTER TABLE outbox ADD COLUMN handled_at BIGINT;
ALTER TABLE outbox ADD COLUMN republished BIGINT NOT NULL DEFAULT 0;
-- Before the queue, the worker in this process handled what it published.
UPDATE outbox SET handled_at = published_at WHERE published_at IS NOT NULL;
CREATE INDEX outbox_unhandled ON outbox (handled_at, published_at);
