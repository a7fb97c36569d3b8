//! W3C trace context (Level 2): `traceparent` and `tracestate` parsing as the
//! spec's processing model asks (an invalid `traceparent` starts a new trace,
//! an invalid `tracestate` is dropped whole), and id generation for when
//! spans are off, so every request span and log line carries a trace id that
//! follows the caller's.
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
            Some(parent) => Self { trace_id: parent.trace_id, span_id, parent_span_id: Some(parent.parent_id) },
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

/// The sampled flag of `trace-flags`.
pub const FLAG_SAMPLED: u8 = 0x01;
/// Level 2: the right-most 7 bytes of the trace id are random.
pub const FLAG_RANDOM: u8 = 0x02;

/// A valid `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: u8,
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, with optional
/// whitespace around it; a later version may append `-…` fields after the
/// flags (and is read as version 00). Version `ff`, upper case, all-zero ids
/// are invalid.
pub fn parse_traceparent(value: &str) -> Option<Traceparent> {
    let value = value.trim_matches([' ', '\t']);
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
    Some(Traceparent {
        trace_id: trace_id.to_string(),
        parent_id: parent_id.to_string(),
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

/// The `traceparent` of a request's header values: exactly one valid one
/// (two are as bad as a malformed one: which would be the parent?).
pub fn traceparent_of(values: &[&str]) -> Option<Traceparent> {
    match values {
        [one] => parse_traceparent(one),
        _ => None,
    }
}

/// The most list members a `tracestate` may carry.
pub const TRACESTATE_MAX_MEMBERS: usize = 32;

/// The `tracestate` of a request's header values (several headers are one
/// comma-separated list), as (key, value) pairs in order, by the Level 2
/// grammar; `None` when any member is malformed or there are more than 32 —
/// the whole header is then dropped, as the spec asks. Empty members are
/// skipped; of a repeated key the first is kept (the spec lets a vendor
/// discard duplicates).
pub fn parse_tracestate(values: &[&str]) -> Option<Vec<(String, String)>> {
    let mut members: Vec<(String, String)> = Vec::new();
    let mut count = 0;
    for member in values.iter().flat_map(|v| v.split(',')) {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        count += 1;
        let (key, value) = member.split_once('=')?;
        if !valid_key(key) || !valid_value(value) {
            return None;
        }
        if !members.iter().any(|(k, _)| k == key) {
            members.push((key.to_string(), value.to_string()));
        }
    }
    (count <= TRACESTATE_MAX_MEMBERS).then_some(members)
}

/// `(lcalpha / DIGIT) 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@")`.
fn valid_key(key: &str) -> bool {
    (1..=256).contains(&key.len())
        && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b))
}

/// Printable ASCII without `,` and `=`, at most 256, not ending in a space.
fn valid_value(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && value.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ')
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

    #[test]
    fn flags_are_kept_and_whitespace_around_is_allowed() {
        let parent = parse_traceparent("\t 00-12345678901234567890123456789012-1234567890123456-03 ").unwrap();
        assert_eq!(parent.flags, FLAG_SAMPLED | FLAG_RANDOM);
        assert_eq!(traceparent_of(&["00-12345678901234567890123456789012-1234567890123456-01"; 2]), None, "duplicated");
        assert_eq!(traceparent_of(&[]), None);
    }

    #[test]
    fn tracestate_lists_are_joined_and_checked_whole() {
        let joined =
            parse_tracestate(&["foo=1,bar=2", "", " rojo=1 ,\tcongo=2", "t@vendor=x y,foo=3,1a@@b=z"]).unwrap();
        let keys: Vec<&str> = joined.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["foo", "bar", "rojo", "congo", "t@vendor", "1a@@b"], "the first of a repeated key is kept");
        assert_eq!((joined[0].1.as_str(), joined[4].1.as_str()), ("1", "x y"));
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tracestate(&[&members.join(",")]).is_some(), "32 members are fine");
        let too_many = format!("{},k32=v", members.join(","));
        for bad in ["Foo=1", "foo", "foo=", "foo=a,b=", "@foo=1,bar=2", "_foo=1", "foo=a=b", "foo=\u{7f}", &too_many] {
            assert_eq!(parse_tracestate(&[bad]), None, "{bad:?}");
        }
        assert_eq!(parse_tracestate(&[&format!("{}=1", "k".repeat(257))]), None, "key too long");
        assert!(parse_tracestate(&[&format!("{}=1", "k".repeat(256))]).is_some());
        assert!(parse_tracestate(&[&format!("{}@{}=1", "t".repeat(241), "v".repeat(14))]).is_some());
    }
}
