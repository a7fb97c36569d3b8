//! W3C trace context (`traceparent`) parsing and id generation, so every request
//! span and log line carries a trace id that follows the caller's.
use rand::Rng;

/// The ids a request runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: String,
    pub span_id: String,
    /// The caller's span, when a valid `traceparent` came in.
    pub parent_span_id: Option<String>,
}

impl TraceIds {
    /// Continues the trace of a `traceparent` header value, or starts a new one
    /// when it is absent or invalid (as the spec requires: never fail the request).
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        let mut rng = rand::rng();
        let span_id = random_hex(&mut rng, 8);
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent)) => Self { trace_id, span_id, parent_span_id: Some(parent) },
            None => Self { trace_id: random_hex(&mut rng, 16), span_id, parent_span_id: None },
        }
    }
}

fn random_hex(rng: &mut impl Rng, bytes: usize) -> String {
    loop {
        // All-zero ids are invalid in W3C trace context.
        let value = rng.random::<u128>() >> (128 - 8 * bytes);
        if value != 0 {
            return format!("{value:0width$x}", width = 2 * bytes);
        }
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; later versions may
/// append fields after the flags.
fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_hex(version, 2) || version == "ff" || !is_hex(trace_id, 32) || !is_hex(parent_id, 16) || !is_hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace_id.to_string(), parent_id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_parent() {
        let ids = TraceIds::continue_or_start(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(ids.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(ids.span_id.len(), 16);
        assert_ne!(ids.span_id, "00f067aa0ba902b7");
    }

    #[test]
    fn starts_a_new_trace_on_garbage() {
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let ids = TraceIds::continue_or_start(Some(bad));
            assert_eq!(ids.parent_span_id, None, "{bad:?} was accepted");
            assert_eq!(ids.trace_id.len(), 32);
        }
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let ids = TraceIds::continue_or_start(Some(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future",
        ));
        assert_eq!(ids.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
