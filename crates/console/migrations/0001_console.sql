-- Spans and log records received over OTLP; times in nanoseconds since the
-- epoch (as OTLP sends them), ids as lower-case hex.
CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL DEFAULT '',
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_ns BIGINT NOT NULL,
    end_ns BIGINT NOT NULL,
    error BIGINT NOT NULL DEFAULT 0,
    status_message TEXT NOT NULL DEFAULT '',
    order_id TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_by_start ON spans (start_ns);
CREATE INDEX spans_by_order ON spans (order_id) WHERE order_id <> '';
CREATE INDEX spans_by_parent ON spans (trace_id, parent_span_id);

CREATE TABLE logs (
    trace_id TEXT NOT NULL DEFAULT '',
    span_id TEXT NOT NULL DEFAULT '',
    service TEXT NOT NULL,
    time_ns BIGINT NOT NULL,
    severity TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX logs_by_trace ON logs (trace_id) WHERE trace_id <> '';
CREATE INDEX logs_by_time ON logs (time_ns);
