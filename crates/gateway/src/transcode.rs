//! JSON/HTTP ⇄ protobuf, by the proto3 JSON mapping, on dynamic messages.
use base64::Engine;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
    Value,
};

use crate::routes::{BodyTarget, Route, field_path};

/// A request that cannot be turned into the method's input: 400, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    pub message: String,
    /// A JSON pointer (`/product/price/minorUnits`) or parameter name.
    pub pointer: Option<String>,
}

impl BadRequest {
    fn new(message: impl Into<String>, pointer: Option<String>) -> Self {
        Self { message: message.into(), pointer }
    }
}

/// Parses one textual value (path variable or query parameter) for `field`.
fn scalar(field: &FieldDescriptor, text: &str, name: &str) -> Result<Value, BadRequest> {
    let bad = |what: &str| BadRequest::new(format!("{name}: {text:?} is not {what}"), Some(name.to_string()));
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_string()),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| bad("true or false"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| bad("a 32-bit integer"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| bad("a 64-bit integer"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| bad("an unsigned 32-bit integer"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| bad("an unsigned 64-bit integer"))?),
        Kind::Float => Value::F32(text.parse().map_err(|_| bad("a number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| bad("a number"))?),
        Kind::Bytes => Value::Bytes(
            base64::engine::general_purpose::URL_SAFE
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
                .map_err(|_| bad("base64"))?
                .into(),
        ),
        Kind::Enum(e) => match e.get_value_by_name(text).or_else(|| text.parse().ok().and_then(|n| e.get_value(n))) {
            Some(v) => Value::EnumNumber(v.number()),
            None => {
                let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                return Err(bad(&format!("one of {}", names.join(", "))));
            }
        },
        Kind::Message(_) => {
            return Err(BadRequest::new(
                format!("{name} is a message; send it in the JSON body"),
                Some(name.to_string()),
            ));
        }
    })
}

/// Sets `path` in `message` from text; repeated fields accumulate.
fn set_text(message: &mut DynamicMessage, path: &str, text: &str) -> Result<(), BadRequest> {
    let Some(fields) = field_path(&message.descriptor(), path) else {
        return Err(BadRequest::new(format!("unknown parameter {path}"), Some(path.to_string())));
    };
    let mut target = message;
    for field in &fields[..fields.len() - 1] {
        let Value::Message(next) = target.get_field_mut(field) else {
            return Err(BadRequest::new(format!("{path} cannot be set here"), Some(path.to_string())));
        };
        target = next;
    }
    let last = &fields[fields.len() - 1];
    if last.is_map() {
        return Err(BadRequest::new(format!("{path} is a map; send it in the JSON body"), Some(path.to_string())));
    }
    let value = scalar(last, text, path)?;
    if last.is_list() {
        if let Value::List(items) = target.get_field_mut(last) {
            items.push(value);
        }
    } else {
        target.set_field(last, value);
    }
    Ok(())
}

/// Parses a JSON document as `desc`, naming the offending field on error.
fn parse_json(desc: MessageDescriptor, body: &[u8], prefix: &str) -> Result<DynamicMessage, BadRequest> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let parsed = DynamicMessage::deserialize_with_options(
        desc,
        serde_path_to_error::Deserializer::new(&mut json, &mut track),
        &options,
    )
    .and_then(|m| json.end().map(|()| m));
    parsed.map_err(|err| {
        let path = track.path().to_string();
        let pointer = if path == "." || path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}/{}", path.replace('.', "/"))
        };
        let pointer = if pointer.is_empty() { "/".to_string() } else { pointer };
        BadRequest::new(format!("invalid JSON body at {pointer}: {err}"), Some(pointer))
    })
}

/// Builds the method's input from path bindings, the query string and the body.
pub fn request_message(
    route: &Route,
    bindings: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, BadRequest> {
    let mut message = match &route.body {
        BodyTarget::Whole if !body.is_empty() => parse_json(route.input.clone(), body, "")?,
        BodyTarget::Field(field) if !body.is_empty() => {
            let mut message = DynamicMessage::new(route.input.clone());
            let descriptor = route.input.get_field_by_name(field);
            let Some((field_desc, Kind::Message(kind))) = descriptor.map(|f| (f.clone(), f.kind())) else {
                return Err(BadRequest::new(format!("body field {field} is not a message"), None));
            };
            let value = parse_json(kind, body, &format!("/{}", field_desc.json_name()))?;
            message.set_field(&field_desc, Value::Message(value));
            message
        }
        BodyTarget::None if !body.is_empty() => {
            return Err(BadRequest::new("this endpoint takes no request body", None));
        }
        _ => DynamicMessage::new(route.input.clone()),
    };
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        if route.body == BodyTarget::Whole {
            return Err(BadRequest::new(
                "this endpoint takes its parameters in the JSON body, not the query string",
                None,
            ));
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (query_text(key)?, query_text(value)?);
            if bindings.iter().any(|(bound, _)| *bound == key) {
                return Err(BadRequest::new(format!("{key} is set by the path"), Some(key)));
            }
            set_text(&mut message, &key, &value)?;
        }
    }
    for (path, value) in bindings {
        set_text(&mut message, path, value)?;
    }
    Ok(message)
}

/// One percent-encoded query component (`+` is a space), which must decode
/// to UTF-8: proto strings cannot hold anything else, and a lossy decode
/// would silently search for something the client did not send.
fn query_text(component: &str) -> Result<String, BadRequest> {
    let spaced = component.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().map(|text| text.into_owned()).map_err(|_| {
        BadRequest::new(format!("query parameter {component:?} is not valid UTF-8 once percent-decoded"), None)
    })
}

/// Reads a string field (for ownership checks); `None` if absent or empty.
pub fn string_field(message: &DynamicMessage, path: &str) -> Option<String> {
    let fields = field_path(&message.descriptor(), path)?;
    let mut current = std::borrow::Cow::Borrowed(message);
    for field in &fields[..fields.len() - 1] {
        let Value::Message(next) = current.get_field(field).into_owned() else { return None };
        current = std::borrow::Cow::Owned(next);
    }
    current.get_field(&fields[fields.len() - 1]).as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// Sets a string field by path (to fill in the caller's id).
pub fn set_string_field(message: &mut DynamicMessage, path: &str, value: &str) -> Result<(), BadRequest> {
    set_text(message, path, value)
}

/// A response that cannot be written as JSON.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    #[error("decoding the response failed: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("writing the response as JSON failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// The encoded response `bytes` of type `desc` as proto3 JSON, unpopulated
/// fields included so clients see every field: straight from the wire when
/// [`wire_json`](crate::wire_json) covers the message, through a
/// `DynamicMessage` otherwise (same output).
pub fn response_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, BadResponse> {
    let mut out = Vec::with_capacity(64 + bytes.len() * 2);
    if crate::wire_json::write_message(desc, bytes, &mut out).is_ok() {
        return Ok(out);
    }
    let message = DynamicMessage::decode(desc.clone(), bytes)?;
    Ok(dynamic_json(&message)?)
}

/// A message as proto3 JSON, unpopulated fields included.
pub fn dynamic_json(message: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    message.serialize_with_options(&mut serializer, &SerializeOptions::new().skip_default_fields(false))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Matched, build, find};
    use std::sync::Arc;

    fn routes() -> Vec<Arc<Route>> {
        let pool = prost_reflect::DescriptorPool::decode(contracts::FILE_DESCRIPTOR_SET).unwrap();
        build(&pool, crate::policy::declared).unwrap()
    }

    fn transcode(method: http::Method, path_and_query: &str, body: &str) -> Result<serde_json::Value, BadRequest> {
        let routes = routes();
        let (path, query) = path_and_query.split_once('?').map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let Matched::Route(route, bindings) = find(&routes, &method, path) else { panic!("no route for {path}") };
        let message = request_message(route, &bindings, query, body.as_bytes())?;
        Ok(serde_json::from_slice(&dynamic_json(&message).unwrap()).unwrap())
    }

    #[test]
    fn query_parameters_fill_fields_by_either_name() {
        let m = transcode(
            http::Method::GET,
            "/v1/products?pageSize=5&in_stock_only=true&sort=SORT_ORDER_PRICE_ASC&minPriceMinor=100",
            "",
        )
        .unwrap();
        assert_eq!(
            (m["pageSize"].clone(), m["inStockOnly"].clone(), m["sort"].clone(), m["minPriceMinor"].clone()),
            (5.into(), true.into(), "SORT_ORDER_PRICE_ASC".into(), "100".into())
        );
        let by_number = transcode(http::Method::GET, "/v1/products?sort=2", "").unwrap();
        assert_eq!(by_number["sort"], "SORT_ORDER_PRICE_ASC");
    }

    #[test]
    fn query_text_is_percent_decoded_utf8_or_refused() {
        let m = transcode(http::Method::GET, "/v1/products?query=caf%C3%A9+au+lait&pageSize=2", "").unwrap();
        assert_eq!(m["query"], "café au lait");
        for bad in ["/v1/products?query=%FF", "/v1/products?query=%C3", "/v1/products?%FF=1"] {
            let err = transcode(http::Method::GET, bad, "").unwrap_err();
            assert!(err.message.contains("not valid UTF-8"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn path_variables_win_over_the_body() {
        let m = transcode(http::Method::PATCH, "/v1/users/u-1", r#"{"userId":"u-2","name":"N"}"#).unwrap();
        assert_eq!((m["userId"].clone(), m["name"].clone()), ("u-1".into(), "N".into()));
        let r = transcode(
            http::Method::POST,
            "/v1/products",
            r#"{"sku":"A","price":{"currencyCode":"USD","minorUnits":5}}"#,
        )
        .unwrap();
        assert_eq!(r["product"]["price"]["minorUnits"], "5", "body: product maps the body into that field");
    }

    #[test]
    fn garbage_is_pointed_at() {
        let err = transcode(http::Method::POST, "/v1/products", r#"{"price":{"minorUnits":"lots"}}"#).unwrap_err();
        assert_eq!(err.pointer.as_deref(), Some("/product/price/minorUnits"), "{err}");
        let err = transcode(http::Method::GET, "/v1/products?pageSize=9999999999", "").unwrap_err();
        assert_eq!(err.pointer.as_deref(), Some("pageSize"));
        let err = transcode(http::Method::GET, "/v1/products?nope=1", "").unwrap_err();
        assert!(err.message.contains("unknown parameter"), "{err}");
        let err = transcode(http::Method::GET, "/v1/products/p-1", "{}").unwrap_err();
        assert!(err.message.contains("no request body"), "{err}");
        let err = transcode(http::Method::POST, "/v1/users", r#"{"email":"a"} trailing"#).unwrap_err();
        assert!(err.message.contains("invalid JSON"), "{err}");
        let err = transcode(http::Method::POST, "/v1/auth/login?email=x", "{}").unwrap_err();
        assert!(err.message.contains("JSON body"), "{err}");
    }
}
