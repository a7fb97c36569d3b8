//! What the console keeps and answers with: spans and log records as received,
//! trace summaries, the dependency map's edges. Pure data and the pure
//! computations over it (waterfall order, edge statistics, percentiles).
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

/// One span, as exported by a service over OTLP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub service: String,
    pub name: String,
    /// server, client, internal, producer, consumer.
    pub kind: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub error: bool,
    pub status_message: String,
    /// From the span's `order_id` / `user_id` attributes, for search.
    pub order_id: String,
    pub user_id: String,
    pub attributes: BTreeMap<String, String>,
}

impl SpanRecord {
    pub fn duration_ns(&self) -> i64 {
        (self.end_ns - self.start_ns).max(0)
    }
}

/// One log record, as exported by a service over OTLP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogRecord {
    pub trace_id: String,
    pub span_id: String,
    pub service: String,
    pub time_ns: i64,
    pub severity: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
}

/// A trace in a search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The first span: `service` and `name`.
    pub root_service: String,
    pub root_name: String,
    pub start_ns: i64,
    pub duration_ms: f64,
    pub spans: i64,
    pub errors: i64,
    pub services: Vec<String>,
}

/// What to look for in the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceQuery {
    pub trace_id: Option<String>,
    pub order_id: Option<String>,
    pub service: Option<String>,
    pub errors_only: bool,
    pub min_duration_ms: Option<f64>,
    pub limit: u32,
}

/// A span in a waterfall: its depth under the trace's root(s).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaterfallRow {
    pub depth: usize,
    #[serde(flatten)]
    pub span: SpanRecord,
}

/// The spans of one trace in waterfall order: each span followed by its
/// children (by start time), depth first. A span whose parent is not in the
/// trace (the caller's span, or one not received) starts a tree of its own.
pub fn waterfall(mut spans: Vec<SpanRecord>) -> Vec<WaterfallRow> {
    spans.sort_by(|a, b| a.start_ns.cmp(&b.start_ns).then_with(|| a.span_id.cmp(&b.span_id)));
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (index, span) in spans.iter().enumerate() {
        if span.parent_span_id.is_empty() || !ids.contains(span.parent_span_id.as_str()) {
            roots.push(index);
        } else {
            children.entry(span.parent_span_id.as_str()).or_default().push(index);
        }
    }
    let mut order = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    let mut seen = HashSet::new();
    while let Some((index, depth)) = stack.pop() {
        if !seen.insert(index) {
            continue; // a cycle in bad data: show each span once
        }
        order.push((index, depth));
        if let Some(kids) = children.get(spans[index].span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    // Spans only reachable through a cycle.
    for index in 0..spans.len() {
        if !seen.contains(&index) {
            order.push((index, 0));
        }
    }
    let mut slots: Vec<Option<SpanRecord>> = spans.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(index, depth)| slots[index].take().map(|span| WaterfallRow { depth, span }))
        .collect()
}

/// One call from a parent span in one service to a child span in another.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub caller: String,
    pub callee: String,
    pub duration_ns: i64,
    pub error: bool,
}

/// An edge of the dependency map over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub caller: String,
    pub callee: String,
    pub calls: u64,
    pub per_second: f64,
    pub errors: u64,
    pub error_ratio: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// Calls grouped into edges with volume, error rate and latency.
pub fn edges(calls: Vec<Call>, window_secs: f64) -> Vec<Edge> {
    let mut grouped: BTreeMap<(String, String), (u64, Vec<f64>)> = BTreeMap::new();
    for call in calls {
        let entry = grouped.entry((call.caller, call.callee)).or_default();
        entry.0 += u64::from(call.error);
        entry.1.push(call.duration_ns as f64 / 1e6);
    }
    grouped
        .into_iter()
        .map(|((caller, callee), (errors, mut durations))| {
            durations.sort_by(f64::total_cmp);
            let calls = durations.len() as u64;
            Edge {
                caller,
                callee,
                calls,
                per_second: if window_secs > 0.0 { calls as f64 / window_secs } else { 0.0 },
                errors,
                error_ratio: if calls > 0 { errors as f64 / calls as f64 } else { 0.0 },
                p50_ms: percentile(&durations, 0.50),
                p95_ms: percentile(&durations, 0.95),
            }
        })
        .collect()
}

/// The nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start: i64) -> SpanRecord {
        SpanRecord {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            service: "s".into(),
            name: id.into(),
            kind: "server".into(),
            start_ns: start,
            end_ns: start + 10,
            error: false,
            status_message: String::new(),
            order_id: String::new(),
            user_id: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn a_waterfall_lists_each_span_under_its_parent_in_start_order() {
        // root → a (t=2) → a1; root → b (t=1); orphan (parent not received).
        let spans = vec![
            span("a1", "a", 3),
            span("a", "root", 2),
            span("root", "caller", 0),
            span("b", "root", 1),
            span("orphan", "missing", 5),
        ];
        let rows: Vec<(String, usize)> = waterfall(spans).into_iter().map(|r| (r.span.span_id, r.depth)).collect();
        let expected = [("root", 0), ("b", 1), ("a", 1), ("a1", 2), ("orphan", 0)];
        assert_eq!(rows, expected.iter().map(|(id, d)| (id.to_string(), *d)).collect::<Vec<_>>());
    }

    #[test]
    fn a_cycle_in_bad_data_still_shows_every_span_once() {
        let rows = waterfall(vec![span("x", "y", 0), span("y", "x", 1)]);
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn edges_count_calls_errors_and_latency_per_caller_and_callee() {
        let call = |caller: &str, callee: &str, ms: i64, error: bool| Call {
            caller: caller.into(),
            callee: callee.into(),
            duration_ns: ms * 1_000_000,
            error,
        };
        let mut calls: Vec<Call> = (1..=20).map(|ms| call("orders", "payments", ms, ms == 20)).collect();
        calls.push(call("gateway", "orders", 50, false));
        let edges = edges(calls, 10.0);
        assert_eq!(edges.len(), 2);
        let payments = &edges[1];
        assert_eq!((payments.caller.as_str(), payments.callee.as_str()), ("orders", "payments"));
        assert_eq!(payments.calls, 20);
        assert_eq!(payments.errors, 1);
        assert!((payments.error_ratio - 0.05).abs() < 1e-9);
        assert!((payments.per_second - 2.0).abs() < 1e-9);
        assert_eq!(payments.p50_ms, 10.0);
        assert_eq!(payments.p95_ms, 19.0);
    }

    #[test]
    fn percentiles_of_nothing_are_zero() {
        assert_eq!(percentile(&[], 0.95), 0.0);
        assert_eq!(percentile(&[3.0], 0.5), 3.0);
    }
}
