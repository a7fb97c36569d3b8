//! Protobuf wire bytes → proto3 JSON, straight from the descriptor: what the
//! gateway does with every response. Decoding into a `DynamicMessage` first
//! (a map of boxed values per message) and serializing that took a tenth of
//! the gateway's CPU per request; this reads each field once and writes it.
//!
//! It writes what prost-reflect writes with `skip_default_fields(false)`:
//! every field without presence (its default when absent), fields with
//! presence only when set, 64-bit integers as strings, enums by name, bytes
//! as base64, non-finite floats as "NaN"/"Infinity", `Timestamp` as RFC 3339,
//! unknown fields left out. It covers what response messages are made of —
//! scalars, enums, nested and repeated messages, packed and unpacked repeated
//! scalars, `google.protobuf.Timestamp` — and answers [`Unsupported`] for the
//! rest: maps, other well-known types, groups, a oneof with several members
//! on the wire, a singular message sent more than once (it must be merged),
//! and malformed input. The caller then takes the `DynamicMessage` path,
//! which serializes the rare case, or reports the malformed one.
use prost::Message;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde::Serializer;

/// This message is left to the general (DynamicMessage) path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

type Result<T> = std::result::Result<T, Unsupported>;

/// One field occurrence as it is on the wire.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// Writes `bytes`, an encoded `desc`, as proto3 JSON to `out`. On
/// `Unsupported`, `out` may hold a partial document: the caller discards it.
pub fn write_message(desc: &MessageDescriptor, bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
    if desc.full_name() == "google.protobuf.Timestamp" {
        return write_timestamp(bytes, out);
    }
    if desc.full_name().starts_with("google.protobuf.") {
        return Err(Unsupported);
    }
    let occurrences = occurrences(bytes)?;
    let present = |number: u32| {
        let start = occurrences.partition_point(|(n, _)| *n < number);
        let end = occurrences.partition_point(|(n, _)| *n <= number);
        &occurrences[start..end]
    };
    for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
        // The last member on the wire wins; prost-reflect keeps that one only.
        if oneof.fields().filter(|f| !present(f.number()).is_empty()).count() > 1 {
            return Err(Unsupported);
        }
    }
    out.push(b'{');
    let mut first = true;
    for field in desc.fields() {
        let values = present(field.number());
        if values.is_empty() && field.supports_presence() {
            continue;
        }
        if field.is_map() {
            return Err(Unsupported);
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, field.json_name());
        out.push(b':');
        let kind = field.kind();
        if field.is_list() {
            write_list(&kind, values, out)?;
        } else {
            match values {
                [] => write_default(&field, &kind, out),
                [.., (_, last)] => {
                    if matches!(kind, Kind::Message(_)) && values.len() > 1 {
                        return Err(Unsupported);
                    }
                    write_value(&kind, *last, out)?;
                }
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// Every field occurrence, sorted by field number (stable: wire order kept
/// within a field, so the last one wins and lists keep their order).
fn occurrences(mut buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>> {
    let mut found = Vec::with_capacity(16);
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let number = u32::try_from(key >> 3).map_err(|_| Unsupported)?;
        if number == 0 {
            return Err(Unsupported);
        }
        let raw = match key & 7 {
            0 => Raw::Varint(read_varint(&mut buf)?),
            1 => Raw::Fixed64(u64::from_le_bytes(take(&mut buf, 8)?.try_into().map_err(|_| Unsupported)?)),
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).map_err(|_| Unsupported)?;
                Raw::Bytes(take(&mut buf, len)?)
            }
            5 => Raw::Fixed32(u32::from_le_bytes(take(&mut buf, 4)?.try_into().map_err(|_| Unsupported)?)),
            // Groups (3, 4) are proto2 only; 6 and 7 are not wire types.
            _ => return Err(Unsupported),
        };
        found.push((number, raw));
    }
    found.sort_by_key(|(number, _)| *number);
    Ok(found)
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8]> {
    if buf.len() < len {
        return Err(Unsupported);
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn read_varint(buf: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(Unsupported)?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Unsupported)
}

fn write_list(kind: &Kind, values: &[(u32, Raw<'_>)], out: &mut Vec<u8>) -> Result<()> {
    out.push(b'[');
    let mut first = true;
    let mut element = |raw: Raw<'_>, out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_value(kind, raw, out)
    };
    for (_, raw) in values {
        match (*raw, packed_width(kind)) {
            // A packed run of scalars: one length-delimited occurrence.
            (Raw::Bytes(mut packed), Some(width)) => {
                while !packed.is_empty() {
                    let raw = match width {
                        Width::Varint => Raw::Varint(read_varint(&mut packed)?),
                        Width::Fixed32 => {
                            Raw::Fixed32(u32::from_le_bytes(take(&mut packed, 4)?.try_into().map_err(|_| Unsupported)?))
                        }
                        Width::Fixed64 => {
                            Raw::Fixed64(u64::from_le_bytes(take(&mut packed, 8)?.try_into().map_err(|_| Unsupported)?))
                        }
                    };
                    element(raw, out)?;
                }
            }
            (raw, _) => element(raw, out)?,
        }
    }
    out.push(b']');
    Ok(())
}

enum Width {
    Varint,
    Fixed32,
    Fixed64,
}

/// How a scalar of this kind is laid out when packed; `None` if it cannot be.
fn packed_width(kind: &Kind) -> Option<Width> {
    Some(match kind {
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => Width::Varint,
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => Width::Fixed32,
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => Width::Fixed64,
        Kind::String | Kind::Bytes | Kind::Message(_) => return None,
    })
}

fn write_value(kind: &Kind, raw: Raw<'_>, out: &mut Vec<u8>) -> Result<()> {
    let mut json = serde_json::Serializer::new(&mut *out);
    let written = match (kind, raw) {
        (Kind::Double, Raw::Fixed64(bits)) => {
            let value = f64::from_bits(bits);
            return write_float(value, out, |json| json.serialize_f64(value));
        }
        (Kind::Float, Raw::Fixed32(bits)) => {
            // Written as an f32 (shortest form of the f32, not of its f64 widening).
            let value = f32::from_bits(bits);
            return write_float(value.into(), out, |json| json.serialize_f32(value));
        }
        // Truncation is what the wire format specifies for 32-bit varints.
        (Kind::Int32, Raw::Varint(v)) => json.serialize_i32(v as i32),
        (Kind::Uint32, Raw::Varint(v)) => json.serialize_u32(v as u32),
        (Kind::Sint32, Raw::Varint(v)) => json.serialize_i32(zigzag32(v as u32)),
        (Kind::Fixed32, Raw::Fixed32(v)) => json.serialize_u32(v),
        (Kind::Sfixed32, Raw::Fixed32(v)) => json.serialize_i32(v as i32),
        (Kind::Bool, Raw::Varint(v)) => json.serialize_bool(v != 0),
        // 64-bit integers are strings in proto3 JSON (JavaScript numbers are doubles).
        (Kind::Int64, Raw::Varint(v)) => return write_quoted(itoa::Buffer::new().format(v as i64), out),
        (Kind::Uint64, Raw::Varint(v)) => return write_quoted(itoa::Buffer::new().format(v), out),
        (Kind::Sint64, Raw::Varint(v)) => return write_quoted(itoa::Buffer::new().format(zigzag64(v)), out),
        (Kind::Fixed64, Raw::Fixed64(v)) => return write_quoted(itoa::Buffer::new().format(v), out),
        (Kind::Sfixed64, Raw::Fixed64(v)) => return write_quoted(itoa::Buffer::new().format(v as i64), out),
        (Kind::Enum(desc), Raw::Varint(v)) => {
            let number = v as i32;
            if desc.full_name() == "google.protobuf.NullValue" {
                json.serialize_unit()
            } else {
                match desc.get_value(number) {
                    Some(value) => json.serialize_str(value.name()),
                    None => json.serialize_i32(number),
                }
            }
        }
        (Kind::String, Raw::Bytes(bytes)) => json.serialize_str(std::str::from_utf8(bytes).map_err(|_| Unsupported)?),
        (Kind::Bytes, Raw::Bytes(bytes)) => {
            json.collect_str(&base64::display::Base64Display::new(bytes, &base64::engine::general_purpose::STANDARD))
        }
        (Kind::Message(desc), Raw::Bytes(bytes)) => return write_message(desc, bytes, out),
        // A wire type that does not fit the field: malformed for this schema.
        _ => return Err(Unsupported),
    };
    written.map_err(|_| Unsupported)
}

/// The default of an absent field without presence.
fn write_default(field: &FieldDescriptor, kind: &Kind, out: &mut Vec<u8>) {
    match kind {
        Kind::String | Kind::Bytes => out.extend_from_slice(b"\"\""),
        Kind::Bool => out.extend_from_slice(b"false"),
        Kind::Int64 | Kind::Uint64 | Kind::Sint64 | Kind::Fixed64 | Kind::Sfixed64 => out.extend_from_slice(b"\"0\""),
        Kind::Double | Kind::Float => out.extend_from_slice(b"0.0"),
        Kind::Enum(desc) => {
            let value = desc.default_value();
            if desc.full_name() == "google.protobuf.NullValue" {
                out.extend_from_slice(b"null");
            } else {
                write_str(out, value.name());
            }
        }
        // Singular messages always have presence; kept total for the type.
        Kind::Message(_) => {
            tracing::debug!(field = field.full_name(), "message field without presence");
            out.extend_from_slice(b"{}");
        }
        Kind::Int32 | Kind::Uint32 | Kind::Sint32 | Kind::Fixed32 | Kind::Sfixed32 => out.push(b'0'),
    }
}

/// A number as a JSON string (digits and '-' need no escaping).
fn write_quoted(digits: &str, out: &mut Vec<u8>) -> Result<()> {
    out.push(b'"');
    out.extend_from_slice(digits.as_bytes());
    out.push(b'"');
    Ok(())
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::Serializer::new(&mut *out).serialize_str(text);
}

/// A float: a JSON number when finite, else the string proto3 JSON names it by.
fn write_float(
    value: f64,
    out: &mut Vec<u8>,
    finite: impl FnOnce(&mut serde_json::Serializer<&mut Vec<u8>>) -> serde_json::Result<()>,
) -> Result<()> {
    if value.is_finite() {
        return finite(&mut serde_json::Serializer::new(out)).map_err(|_| Unsupported);
    }
    let name = if value.is_nan() {
        "NaN"
    } else if value > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    };
    write_str(out, name);
    Ok(())
}

fn zigzag32(n: u32) -> i32 {
    ((n >> 1) as i32) ^ -((n & 1) as i32)
}

fn zigzag64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// RFC 3339 with 0, 3, 6 or 9 fractional digits, as prost-types prints it;
/// out-of-range values are left to the general path (which refuses them).
fn write_timestamp(bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range proto3 JSON allows.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    let timestamp = prost_types::Timestamp::decode(bytes).map_err(|_| Unsupported)?;
    if !RANGE.contains(&timestamp.seconds) || !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(Unsupported);
    }
    out.push(b'"');
    write_rfc3339(timestamp.seconds, timestamp.nanos, out);
    out.push(b'"');
    Ok(())
}

/// A time in range as prost-types' `Display` writes it (the general path's
/// output), without the formatting machinery: records carry timestamps, and
/// their `Display` was a fifth of the JSON writing.
fn write_rfc3339(seconds: i64, nanos: i32, out: &mut Vec<u8>) {
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    for (value, width, after) in [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (of_day / 3600, 2, b':'),
        (of_day / 60 % 60, 2, b':'),
        (of_day % 60, 2, b'.'),
    ] {
        push_padded(out, value, width);
        out.push(after);
    }
    let nanos = i64::from(nanos);
    if nanos == 0 {
        out.pop();
    } else if nanos % 1_000_000 == 0 {
        push_padded(out, nanos / 1_000_000, 3);
    } else if nanos % 1_000 == 0 {
        push_padded(out, nanos / 1_000, 6);
    } else {
        push_padded(out, nanos, 9);
    }
    out.push(b'Z');
}

/// `value` (not negative) in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut Vec<u8>, value: i64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(value);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(text.len())));
    out.extend_from_slice(text.as_bytes());
}

/// (year, month, day) of a day counted from 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_prost_types_displays_them() {
        let mut rng = rand::rng();
        let mut cases: Vec<(i64, i32)> = vec![
            (-62_135_596_800, 0),
            (253_402_300_799, 999_999_999),
            (0, 0),
            (-1, 1),
            (951_782_400, 1_000_000), // 2000-02-29
            (951_868_800, 1_000),     // 2000-03-01
            (4_107_542_400, 10),      // 2100-03-01 (2100 is no leap year)
            (1_764_000_000, 123_456_789),
        ];
        for _ in 0..20_000 {
            let seconds = rng.random_range(-62_135_596_800..=253_402_300_799);
            let nanos = match rng.random_range(0..4) {
                0 => 0,
                1 => rng.random_range(0..1000) * 1_000_000,
                2 => rng.random_range(0..1_000_000) * 1_000,
                _ => rng.random_range(0..1_000_000_000),
            };
            cases.push((seconds, nanos));
        }
        for (seconds, nanos) in cases {
            let mut ours = Vec::new();
            write_rfc3339(seconds, nanos, &mut ours);
            let theirs = prost_types::Timestamp { seconds, nanos }.to_string();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{seconds} s {nanos} ns");
        }
    }
    use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(contracts::FILE_DESCRIPTOR_SET).unwrap()
    }

    /// What prost-reflect writes for the same bytes (the reference).
    fn reference(desc: &MessageDescriptor, bytes: &[u8]) -> serde_json::Value {
        let message = DynamicMessage::decode(desc.clone(), bytes).unwrap();
        let mut out = Vec::new();
        message
            .serialize_with_options(
                &mut serde_json::Serializer::new(&mut out),
                &SerializeOptions::new().skip_default_fields(false),
            )
            .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn ours(desc: &MessageDescriptor, bytes: &[u8]) -> Result<serde_json::Value> {
        let mut out = Vec::new();
        write_message(desc, bytes, &mut out)?;
        Ok(serde_json::from_slice(&out).expect("our output is JSON"))
    }

    fn random_scalar(kind: &Kind, rng: &mut StdRng) -> Value {
        let extreme = rng.random_bool(0.2);
        match kind {
            Kind::Double => {
                Value::F64(*[0.5, -1e300, f64::NAN, f64::INFINITY, 3.0].get(rng.random_range(0..5)).unwrap_or(&0.0))
            }
            Kind::Float => Value::F32(if extreme { f32::NEG_INFINITY } else { rng.random::<f32>() * 1e6 }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(if extreme { i32::MIN } else { rng.random() }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(if extreme { i64::MIN } else { rng.random() }),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.random()),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(if extreme { u64::MAX } else { rng.random() }),
            Kind::Bool => Value::Bool(rng.random()),
            Kind::String => Value::String(
                ["", "plain", "quote \" and \\ slash", "ünïcödé ✓", "tab\tnew\nline\u{1}"][rng.random_range(0..5)]
                    .to_string(),
            ),
            Kind::Bytes => Value::Bytes((0..rng.random_range(0..9)).map(|_| rng.random::<u8>()).collect()),
            Kind::Enum(e) => {
                // Sometimes a number the enum does not name (written as a number).
                let values: Vec<i32> = e.values().map(|v| v.number()).collect();
                Value::EnumNumber(if extreme { 999 } else { values[rng.random_range(0..values.len())] })
            }
            Kind::Message(_) => unreachable!(),
        }
    }

    fn random_message(desc: &MessageDescriptor, rng: &mut StdRng, depth: u32) -> DynamicMessage {
        let mut message = DynamicMessage::new(desc.clone());
        if desc.full_name() == "google.protobuf.Timestamp" {
            message.set_field_by_name("seconds", Value::I64(rng.random_range(-62_135_596_800..253_402_300_799)));
            let nanos = [0, 1_000_000, 120_000, 7, 999_999_999][rng.random_range(0..5)];
            message.set_field_by_name("nanos", Value::I32(nanos));
            return message;
        }
        for field in desc.fields() {
            if rng.random_bool(0.3) {
                continue;
            }
            let kind = field.kind();
            let one = |rng: &mut StdRng| match &kind {
                Kind::Message(inner) if depth < 3 => Some(Value::Message(random_message(inner, rng, depth + 1))),
                Kind::Message(_) => None,
                scalar => Some(random_scalar(scalar, rng)),
            };
            if field.is_list() {
                let items: Vec<Value> = (0..rng.random_range(0..4)).filter_map(|_| one(rng)).collect();
                message.set_field(&field, Value::List(items));
            } else if let Some(value) = one(rng) {
                message.set_field(&field, value);
            }
        }
        message
    }

    #[test]
    fn every_message_of_the_contracts_reads_as_prost_reflect_writes_it() {
        let pool = pool();
        let mut rng = StdRng::seed_from_u64(7);
        let mut checked = 0;
        for desc in pool.all_messages().filter(|m| m.package_name().starts_with("shopfast.")) {
            for _ in 0..40 {
                let bytes = random_message(&desc, &mut rng, 0).encode_to_vec();
                assert_eq!(ours(&desc, &bytes), Ok(reference(&desc, &bytes)), "{}", desc.full_name());
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn unpacked_repeats_interleaved_fields_and_unknown_fields_read_as_prost_reflect_reads_them() {
        let pool = pool();
        let desc = pool.get_message_by_name("shopfast.products.v1.GetProductsResponse").unwrap();
        // missing_ids (2) twice around products (1), then an unknown field 9.
        let mut bytes = vec![0x12, 1, b'a'];
        bytes.extend([0x0a, 0]);
        bytes.extend([0x12, 1, b'b']);
        bytes.extend([0x48, 5]);
        let json = ours(&desc, &bytes).unwrap();
        assert_eq!(json, reference(&desc, &bytes));
        assert_eq!(json["missingIds"], serde_json::json!(["a", "b"]));
        // A singular scalar sent twice: the last one wins.
        let product = pool.get_message_by_name("shopfast.products.v1.Product").unwrap();
        let twice = [0x70, 1, 0x70, 0];
        assert_eq!(ours(&product, &twice).unwrap(), reference(&product, &twice));
        assert_eq!(ours(&product, &twice).unwrap()["active"], false);
    }

    #[test]
    fn malformed_bytes_and_shapes_left_to_the_general_path_are_unsupported() {
        let pool = pool();
        let desc = pool.get_message_by_name("shopfast.products.v1.GetProductsResponse").unwrap();
        for bad in
            [&[0x12, 5, b'a'][..], &[0x12][..], &[0x0a, 1, 0xff][..], &[0x10, 1][..], &[0x00, 1][..], &[0x0b][..]]
        {
            assert_eq!(ours(&desc, bad), Err(Unsupported), "{bad:?}");
        }
        // Invalid UTF-8 in a string.
        assert_eq!(ours(&desc, &[0x12, 1, 0xff]), Err(Unsupported));
        // A singular message twice must be merged: the general path does that.
        let product = pool.get_message_by_name("shopfast.products.v1.Product").unwrap();
        assert_eq!(ours(&product, &[0x4a, 0, 0x4a, 0]), Err(Unsupported));
        assert!(ours(&product, &[0x4a, 0]).is_ok(), "once is fine");
        // Well-known types other than Timestamp (descriptor.proto comes with the annotations).
        let options = pool.get_message_by_name("google.protobuf.MethodOptions").unwrap();
        assert_eq!(ours(&options, &[]), Err(Unsupported));
    }
}
