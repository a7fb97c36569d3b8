//! Spans and log records in the console's own database (SQLite by default),
//! with retention. Portable SQL over sqlx `Any`.
use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use kit::db::Db;

use crate::model::{Call, LogRecord, SpanRecord, TraceQuery, TraceSummary};

pub type Result<T, E = sqlx::Error> = std::result::Result<T, E>;

/// Who called a root span from outside the traced system.
pub const OUTSIDE: &str = "clients";
/// The node messages pass through between a producer and its consumers (the
/// embedded `queue` service, or Redis Streams).
pub const QUEUE: &str = "queue";

#[derive(Clone, Debug)]
pub struct TraceStore {
    db: Db,
}

const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, service, name, kind, start_ns, end_ns, error, \
     status_message, order_id, user_id, attributes";

/// The `attributes` column: the JSON object `json_of` wrote.
fn attributes_of(row: &AnyRow) -> Result<BTreeMap<String, String>> {
    let text: String = row.try_get("attributes")?;
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

fn span_from_row(row: &AnyRow) -> Result<SpanRecord> {
    Ok(SpanRecord {
        trace_id: row.try_get("trace_id")?,
        span_id: row.try_get("span_id")?,
        parent_span_id: row.try_get("parent_span_id")?,
        service: row.try_get("service")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        start_ns: row.try_get("start_ns")?,
        end_ns: row.try_get("end_ns")?,
        error: row.try_get::<i64, _>("error")? != 0,
        status_message: row.try_get("status_message")?,
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        attributes: attributes_of(row)?,
    })
}

fn log_from_row(row: &AnyRow) -> Result<LogRecord> {
    Ok(LogRecord {
        trace_id: row.try_get("trace_id")?,
        span_id: row.try_get("span_id")?,
        service: row.try_get("service")?,
        time_ns: row.try_get("time_ns")?,
        severity: row.try_get("severity")?,
        body: row.try_get("body")?,
        attributes: attributes_of(row)?,
    })
}

fn json_of(attributes: &BTreeMap<String, String>) -> String {
    serde_json::to_string(attributes).unwrap_or_else(|_| "{}".into())
}

impl TraceStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Stores spans in one transaction; a span received twice (an exporter's
    /// retry) is kept once.
    pub async fn insert_spans(&self, spans: &[SpanRecord]) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for s in spans {
            sqlx::query(
                "INSERT INTO spans (trace_id, span_id, parent_span_id, service, name, kind, start_ns, end_ns, error, \
                 status_message, order_id, user_id, attributes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (trace_id, span_id) DO NOTHING",
            )
            .bind(&s.trace_id)
            .bind(&s.span_id)
            .bind(&s.parent_span_id)
            .bind(&s.service)
            .bind(&s.name)
            .bind(&s.kind)
            .bind(s.start_ns)
            .bind(s.end_ns)
            .bind(i64::from(s.error))
            .bind(&s.status_message)
            .bind(&s.order_id)
            .bind(&s.user_id)
            .bind(json_of(&s.attributes))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    pub async fn insert_logs(&self, logs: &[LogRecord]) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for l in logs {
            sqlx::query(
                "INSERT INTO logs (trace_id, span_id, service, time_ns, severity, body, attributes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&l.trace_id)
            .bind(&l.span_id)
            .bind(&l.service)
            .bind(l.time_ns)
            .bind(&l.severity)
            .bind(&l.body)
            .bind(json_of(&l.attributes))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Traces with a span matching every filter, started since `since_ns`,
    /// newest first.
    pub async fn search(&self, query: &TraceQuery, since_ns: i64) -> Result<Vec<TraceSummary>> {
        let min_duration_ns = query.min_duration_ms.map(|ms| (ms * 1e6) as i64).unwrap_or(0);
        let rows = sqlx::query(
            "SELECT trace_id, MIN(start_ns) AS first_ns, MAX(end_ns) AS last_ns, COUNT(*) AS spans, \
             SUM(error) AS errors FROM spans \
             WHERE trace_id IN (SELECT trace_id FROM spans WHERE start_ns >= $1 \
                 AND ($2 = '' OR trace_id = $2) AND ($3 = '' OR order_id = $3) \
                 AND ($4 = '' OR service = $4) AND ($5 = 0 OR error = 1)) \
             GROUP BY trace_id HAVING MAX(end_ns) - MIN(start_ns) >= $6 \
             ORDER BY first_ns DESC LIMIT $7",
        )
        .bind(since_ns)
        .bind(query.trace_id.as_deref().unwrap_or(""))
        .bind(query.order_id.as_deref().unwrap_or(""))
        .bind(query.service.as_deref().unwrap_or(""))
        .bind(i64::from(query.errors_only))
        .bind(min_duration_ns)
        .bind(i64::from(query.limit))
        .fetch_all(self.db.pool())
        .await?;
        let mut summaries = Vec::with_capacity(rows.len());
        for row in rows {
            let trace_id: String = row.try_get("trace_id")?;
            let first_ns: i64 = row.try_get("first_ns")?;
            let last_ns: i64 = row.try_get("last_ns")?;
            let members = sqlx::query("SELECT service, name FROM spans WHERE trace_id = $1 ORDER BY start_ns, span_id")
                .bind(&trace_id)
                .fetch_all(self.db.pool())
                .await?;
            let mut services: Vec<String> = Vec::new();
            for member in &members {
                let service: String = member.try_get("service")?;
                if !services.contains(&service) {
                    services.push(service);
                }
            }
            let (root_service, root_name) = match members.first() {
                Some(first) => (first.try_get("service")?, first.try_get("name")?),
                None => (String::new(), String::new()),
            };
            summaries.push(TraceSummary {
                trace_id,
                root_service,
                root_name,
                start_ns: first_ns,
                duration_ms: (last_ns - first_ns) as f64 / 1e6,
                spans: row.try_get("spans")?,
                errors: row.try_get("errors")?,
                services,
            });
        }
        Ok(summaries)
    }

    pub async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>> {
        let sql = format!("SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id = $1 ORDER BY start_ns");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(trace_id).fetch_all(self.db.pool()).await?;
        rows.iter().map(span_from_row).collect()
    }

    pub async fn logs_of_trace(&self, trace_id: &str) -> Result<Vec<LogRecord>> {
        let rows = sqlx::query(
            "SELECT trace_id, span_id, service, time_ns, severity, body, attributes FROM logs \
             WHERE trace_id = $1 ORDER BY time_ns",
        )
        .bind(trace_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(log_from_row).collect()
    }

    /// Every call from one service to another since `since_ns` (a span whose
    /// parent is in another service), plus server spans called from outside
    /// (their parent is not in the store) as calls from [`OUTSIDE`]. The
    /// latency is the caller's view when the parent is a client span.
    pub async fn calls_since(&self, since_ns: i64) -> Result<Vec<Call>> {
        let rows = sqlx::query(
            "SELECT p.service AS caller, c.service AS callee, p.kind AS parent_kind, c.kind AS child_kind, \
             p.end_ns - p.start_ns AS parent_ns, c.end_ns - c.start_ns AS child_ns, \
             c.start_ns - p.start_ns AS waited_ns, \
             CASE WHEN c.error = 1 OR (p.kind = 'client' AND p.error = 1) THEN 1 ELSE 0 END AS failed \
             FROM spans c JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id \
             WHERE c.start_ns >= $1 AND p.service <> c.service",
        )
        .bind(since_ns)
        .fetch_all(self.db.pool())
        .await?;
        let mut calls = Vec::with_capacity(rows.len());
        for row in rows {
            let parent_kind: String = row.try_get("parent_kind")?;
            // A message through the queue: the producer's service to the
            // queue, the queue to the consumer's (the consumer's span
            // continues the producer's), timed from publish to handled.
            if parent_kind == "producer" && row.try_get::<String, _>("child_kind")? == "consumer" {
                let waited: i64 = row.try_get("waited_ns")?;
                let handled: i64 = row.try_get("child_ns")?;
                let error = row.try_get::<i64, _>("failed")? != 0;
                let caller: String = row.try_get("caller")?;
                let callee: String = row.try_get("callee")?;
                calls.push(Call { caller, callee: QUEUE.to_string(), duration_ns: waited.max(0), error: false });
                calls.push(Call { caller: QUEUE.to_string(), callee, duration_ns: handled, error });
                continue;
            }
            let duration_ns: i64 =
                if parent_kind == "client" { row.try_get("parent_ns")? } else { row.try_get("child_ns")? };
            calls.push(Call {
                caller: row.try_get("caller")?,
                callee: row.try_get("callee")?,
                duration_ns,
                error: row.try_get::<i64, _>("failed")? != 0,
            });
        }
        let entries = sqlx::query(
            "SELECT c.service AS callee, c.end_ns - c.start_ns AS child_ns, c.error AS failed FROM spans c \
             WHERE c.start_ns >= $1 AND c.kind = 'server' AND NOT EXISTS \
             (SELECT 1 FROM spans p WHERE p.trace_id = c.trace_id AND p.span_id = c.parent_span_id)",
        )
        .bind(since_ns)
        .fetch_all(self.db.pool())
        .await?;
        for row in entries {
            calls.push(Call {
                caller: OUTSIDE.to_string(),
                callee: row.try_get("callee")?,
                duration_ns: row.try_get("child_ns")?,
                error: row.try_get::<i64, _>("failed")? != 0,
            });
        }
        Ok(calls)
    }

    /// Deletes what is older than `before_ns`, then the oldest spans beyond
    /// `max_spans`. How many spans and logs went.
    pub async fn prune(&self, before_ns: i64, max_spans: i64) -> Result<(u64, u64)> {
        let mut tx = self.db.begin_write().await?;
        let spans = sqlx::query("DELETE FROM spans WHERE start_ns < $1").bind(before_ns).execute(&mut *tx).await?;
        let logs = sqlx::query("DELETE FROM logs WHERE time_ns < $1").bind(before_ns).execute(&mut *tx).await?;
        let over = sqlx::query(
            "DELETE FROM spans WHERE start_ns < \
             (SELECT start_ns FROM spans ORDER BY start_ns DESC LIMIT 1 OFFSET $1)",
        )
        .bind(max_spans)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((spans.rows_affected() + over.rows_affected(), logs.rows_affected()))
    }
}
