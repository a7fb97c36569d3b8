//! An OpenAPI 3.0 document generated from the same descriptors and route table
//! the gateway serves, so it cannot drift from what the gateway does.
use std::collections::BTreeMap;
use std::sync::Arc;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::routes::{Access, BodyTarget, Replies, Route, by_path};

const TIMESTAMP: &str = "google.protobuf.Timestamp";

fn schema_name(desc: &MessageDescriptor) -> String {
    desc.full_name().replace('.', "_")
}

/// The JSON schema of one field's value (not counting repetition).
fn scalar_schema(field: &FieldDescriptor, needed: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    match field.kind() {
        Kind::String => json!({ "type": "string" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64 })
        }
        // proto3 JSON writes 64-bit integers as strings (and reads either).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
        }
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" }),
        Kind::Float | Kind::Double => json!({ "type": "number" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte" }),
        // Written as names; read as names or numbers (proto3 JSON).
        Kind::Enum(e) => json!({ "anyOf": [
            { "type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>() },
            { "type": "integer", "enum": e.values().map(|v| v.number()).collect::<Vec<_>>() }
        ] }),
        Kind::Message(m) if m.full_name() == TIMESTAMP => json!({ "type": "string", "format": "date-time" }),
        Kind::Message(m) => {
            let name = schema_name(&m);
            needed.entry(name.clone()).or_insert(m);
            json!({ "$ref": format!("#/components/schemas/{name}") })
        }
    }
}

fn field_schema(field: &FieldDescriptor, needed: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { return json!({ "type": "object" }) };
        let value = entry.map_entry_value_field();
        return json!({ "type": "object", "additionalProperties": scalar_schema(&value, needed) });
    }
    let item = scalar_schema(field, needed);
    if field.is_list() { json!({ "type": "array", "items": item }) } else { item }
}

/// proto3 JSON reads `null` as "unset" for any field, and the gateway refuses
/// unknown fields: the schema says both.
fn message_schema(desc: &MessageDescriptor, needed: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    let mut properties = Map::new();
    for field in desc.fields() {
        let mut schema = field_schema(&field, needed);
        if schema.get("$ref").is_some() {
            schema = json!({ "allOf": [schema] });
        }
        if let Some(object) = schema.as_object_mut() {
            object.insert("nullable".into(), true.into());
        }
        properties.insert(field.json_name().to_string(), schema);
    }
    json!({ "type": "object", "properties": properties, "additionalProperties": false })
}

fn security(access: Access) -> Value {
    match access {
        Access::User => json!([{ "bearer": [] }]),
        Access::Admin => json!([{ "apiKey": [] }]),
        _ => json!([{}, { "apiKey": [] }]),
    }
}

fn operation(route: &Route, needed: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    let path_vars = route.template.variables();
    let mut parameters = Vec::new();
    for variable in &path_vars {
        let schema = crate::routes::field_path(&route.input, variable)
            .and_then(|f| f.last().cloned())
            .map(|f| field_schema(&f, needed))
            .unwrap_or_else(|| json!({ "type": "string" }));
        parameters.push(json!({ "name": variable, "in": "path", "required": true, "schema": schema }));
    }
    if route.body == BodyTarget::None {
        for field in route.input.fields() {
            let scalar = !matches!(field.kind(), Kind::Message(_)) && !field.is_map();
            if scalar && !path_vars.contains(&field.name()) {
                parameters.push(json!({ "name": field.json_name(), "in": "query", "required": false, "schema": field_schema(&field, needed) }));
            }
        }
    }
    // Writes take an Idempotency-Key (the gateway passes it on; the services keep the answer).
    if route.http_method != http::Method::GET {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Makes a retry return the first answer instead of acting twice (24 h).",
            "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$" }
        }));
    }
    let request_body = match &route.body {
        BodyTarget::None => None,
        BodyTarget::Whole => Some(message_schema(&route.input, needed)),
        BodyTarget::Field(name) => route.input.get_field_by_name(name).map(|f| field_schema(&f, needed)),
    };
    let name = route.method_name.rsplit('.').take(2).collect::<Vec<_>>();
    let mut op = json!({
        "operationId": format!("{}_{}", name.get(1).unwrap_or(&""), name.first().unwrap_or(&"")),
        "summary": route.method_name,
        "tags": [route.backend],
        "parameters": parameters,
        "security": security(route.policy.access),
        "responses": responses(route, needed),
    });
    if let (Some(schema), Some(object)) = (request_body, op.as_object_mut()) {
        object.insert(
            "requestBody".into(),
            json!({ "required": false, "content": { "application/json": { "schema": schema } } }),
        );
    }
    op
}

/// The route's success statuses (see `RoutePolicy::replies`) and errors.
fn responses(route: &Route, needed: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    let content = json!({ "application/json": { "schema": scalar_ref(&route.output, needed) } });
    let location = |what: &str| json!({ "Location": { "description": what, "schema": { "type": "string" } } });
    let ok = json!({ "description": "OK", "content": content });
    let created = json!({
        "description": "Created: the work is done; the result, and where it lives.",
        "headers": location("Where the created resource can be read."),
        "content": content,
    });
    let accepted = json!({
        "description": "Accepted: the work goes on (the async request-reply pattern). The body is the \
                        resource as it stands (status PENDING, or CANCELLING); poll the Location until it \
                        is final. A retry with the same Idempotency-Key answers how it stands then.",
        "headers": location("Where to poll for the outcome."),
        "content": content,
    });
    let error_body = json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } });
    let error = json!({ "description": "An error (503 comes with Retry-After)", "content": error_body });
    let mut responses = match route.policy.replies {
        Replies::Plain => json!({ "200": ok, "default": error }),
        Replies::CreatedOrAccepted => json!({ "201": created, "202": accepted, "default": error }),
        Replies::OkOrAccepted => json!({ "200": ok, "202": accepted, "default": error }),
    };
    if route.http_method != http::Method::GET
        && let Some(object) = responses.as_object_mut()
    {
        object.insert(
            "409".into(),
            json!({ "description": "Conflict: the resource's state forbids the request, or a request with this \
                                    Idempotency-Key is still in progress (retry shortly)", "content": error_body }),
        );
        object.insert(
            "422".into(),
            json!({ "description": "This Idempotency-Key was used with a different request", "content": error_body }),
        );
    }
    responses
}

fn scalar_ref(desc: &MessageDescriptor, needed: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    let name = schema_name(desc);
    needed.entry(name.clone()).or_insert_with(|| desc.clone());
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

pub fn document(routes: &[Arc<Route>]) -> Value {
    let mut needed = BTreeMap::new();
    let mut paths = Map::new();
    for (path, routes) in by_path(routes) {
        let mut item = Map::new();
        for route in routes {
            item.insert(route.http_method.as_str().to_ascii_lowercase(), operation(&route, &mut needed));
        }
        paths.insert(path, Value::Object(item));
    }
    let mut schemas = Map::new();
    let mut done = std::collections::BTreeSet::new();
    while let Some((name, desc)) = needed.iter().find(|(n, _)| !done.contains(*n)).map(|(n, d)| (n.clone(), d.clone()))
    {
        let schema = message_schema(&desc, &mut needed);
        schemas.insert(name.clone(), schema);
        done.insert(name);
    }
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["code", "message", "trace_id"],
            "properties": {
                "code": { "type": "string", "description": "The gRPC status name, e.g. NOT_FOUND; METHOD_NOT_ALLOWED for a method the path does not take (405)" },
                "message": { "type": "string" },
                "trace_id": { "type": "string" },
                "field": { "type": "string", "description": "JSON pointer or parameter at fault, for 400s" },
                "reason": {
                    "type": "string",
                    "enum": kit_core::reason::Reason::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    "description": "Which refusal this is, for programs to branch on (the message is for people and may change): e.g. INSUFFICIENT_STOCK, CARD_DECLINED, CIRCUIT_OPEN, RATE_LIMITED. Absent when the code says all there is."
                }
            }
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": { "title": "shopfast API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Generated from the gRPC contracts' google.api.http annotations." },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
            }
        }
    })
}
