-- The trace (W3C traceparent) of the change an event announces, so handling
-- the event continues it.
ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
