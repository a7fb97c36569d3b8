//! The route table, built from the `google.api.http` annotations in the
//! descriptor set — no route is written by hand.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value};
use serde::{Deserialize, Serialize};

use crate::template::PathTemplate;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone (rate limited as their API key's tier, or anonymous).
    Public,
    /// A signed-in user (`Authorization: Bearer <token>`).
    User,
    /// An API key marked `admin`.
    Admin,
    /// Not exposed by the gateway (service-to-service only).
    Internal,
}

/// Per-route behaviour: declared in the protos (`policy::declared`), config overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePolicy {
    pub access: Access,
    pub timeout_ms: u64,
    /// Attempts for idempotent calls (GET, or with an Idempotency-Key); 1 = no retry.
    pub attempts: u32,
    /// A request field that must equal the signed-in user's id; filled in from
    /// the token when the client leaves it empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_field: Option<String>,
    /// What the method answers besides 200 (the backend's `x-http-code`, see
    /// `kit::reply`): 201 when it creates, 202 when the work goes on.
    #[serde(default, skip_serializing_if = "Replies::is_plain")]
    pub replies: Replies,
}

/// The success statuses a route may answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replies {
    /// 200 only.
    #[default]
    Plain,
    /// 201 with the created resource's Location, or 202 with a Location to
    /// poll while the work goes on (the async request-reply pattern).
    CreatedOrAccepted,
    /// 200, or 202 with a Location to poll while the work goes on.
    OkOrAccepted,
}

impl Replies {
    pub fn is_plain(&self) -> bool {
        *self == Replies::Plain
    }

    /// The statuses it documents and passes on from the backend's hint.
    pub fn allows(self, status: http::StatusCode) -> bool {
        match self {
            Replies::Plain => status == http::StatusCode::OK,
            Replies::CreatedOrAccepted => matches!(status.as_u16(), 201 | 202),
            Replies::OkOrAccepted => matches!(status.as_u16(), 200 | 202),
        }
    }
}

/// Where the request body goes (`body` of the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyTarget {
    /// No body; every non-path field may come from the query string.
    None,
    /// The whole request message.
    Whole,
    /// One (message) field of the request.
    Field(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    /// `GET /v1/users/{user_id}`: the metrics label, made once per route.
    pub label: &'static str,
    pub http_method: http::Method,
    pub template: PathTemplate,
    /// `/shopfast.users.v1.UserService/GetUser`
    pub grpc_path: String,
    /// The same, parsed once for the calls' URIs.
    pub grpc_uri: http::uri::PathAndQuery,
    /// `shopfast.users.v1.UserService.GetUser`
    pub method_name: String,
    /// The registry name of the backend: `users`.
    pub backend: String,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    pub body: BodyTarget,
    pub policy: RoutePolicy,
}

impl Route {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.policy.timeout_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("{method}: {why}")]
    Rule { method: String, why: String },
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
}

/// `shopfast.users.v1.UserService` → `users`.
pub fn backend_name(service_full_name: &str) -> String {
    service_full_name.split('.').nth(1).unwrap_or(service_full_name).to_string()
}

/// Every annotated method of every shopfast service, most specific first.
/// `policy_for` gives each method its policy (`policy::resolve`).
pub fn build(
    pool: &DescriptorPool,
    policy_for: impl Fn(&MethodDescriptor) -> RoutePolicy,
) -> Result<Vec<Arc<Route>>, RouteError> {
    let Some(http_ext) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for service in pool.services().filter(|s| s.full_name().starts_with("shopfast.")) {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http_ext) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http_ext).into_owned() else { continue };
            let policy = policy_for(&method);
            if policy.access == Access::Internal {
                continue;
            }
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(extra)) = rule.get_field_by_name("additional_bindings").map(|v| v.into_owned()) {
                rules.extend(extra.into_iter().filter_map(|v| match v {
                    Value::Message(m) => Some(m),
                    _ => None,
                }));
            }
            for rule in rules {
                routes.push(Arc::new(route_from_rule(&method, &rule, policy.clone())?));
            }
        }
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));
    Ok(routes)
}

fn text(rule: &prost_reflect::DynamicMessage, field: &str) -> String {
    rule.get_field_by_name(field).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn route_from_rule(
    method: &MethodDescriptor,
    rule: &prost_reflect::DynamicMessage,
    policy: RoutePolicy,
) -> Result<Route, RouteError> {
    let fail = |why: String| RouteError::Rule { method: method.full_name().to_string(), why };
    let (http_method, path) = [
        ("get", http::Method::GET),
        ("put", http::Method::PUT),
        ("post", http::Method::POST),
        ("delete", http::Method::DELETE),
        ("patch", http::Method::PATCH),
    ]
    .into_iter()
    .find_map(|(field, m)| {
        let p = text(rule, field);
        (!p.is_empty()).then_some((m, p))
    })
    .ok_or_else(|| fail("no supported HTTP pattern (get/put/post/delete/patch)".into()))?;
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(fail("streaming methods are not transcoded".into()));
    }
    let template = PathTemplate::parse(&path)?;
    let input = method.input();
    for variable in template.variables() {
        if field_path(&input, variable).is_none() {
            return Err(fail(format!("path variable {variable} is not a field of {}", input.full_name())));
        }
    }
    let body = match text(rule, "body").as_str() {
        "" => BodyTarget::None,
        "*" => BodyTarget::Whole,
        field => {
            input.get_field_by_name(field).ok_or_else(|| fail(format!("body field {field} does not exist")))?;
            BodyTarget::Field(field.to_string())
        }
    };
    let service = method.parent_service();
    // Routes are built once at start-up, so leaking their labels is bounded;
    // it keeps the per-request metrics free of allocation.
    let label: &'static str = Box::leak(format!("{http_method} {path}").into_boxed_str());
    let grpc_path = format!("/{}/{}", service.full_name(), method.name());
    let grpc_uri = http::uri::PathAndQuery::try_from(grpc_path.as_str())
        .map_err(|e| fail(format!("{grpc_path} is not a URI path: {e}")))?;
    Ok(Route {
        label,
        http_method,
        template,
        grpc_path,
        grpc_uri,
        method_name: method.full_name().to_string(),
        backend: backend_name(service.full_name()),
        input,
        output: method.output(),
        body,
        policy,
    })
}

/// The outcome of matching a request against the table.
pub enum Matched<'a> {
    Route(&'a Arc<Route>, Vec<(String, String)>),
    /// The path exists, but not for this method.
    WrongMethod(Vec<http::Method>),
    NotFound,
}

pub fn find<'a>(routes: &'a [Arc<Route>], method: &http::Method, path: &str) -> Matched<'a> {
    // Only the most specific templates that match the path count: for
    // `/v1/orders/42:cancel` that is the `:cancel` route, not `/v1/orders/{id}`
    // with id "42:cancel" — so the answer and the Allow header agree.
    let mut best = None;
    let mut allowed = Vec::new();
    for route in routes {
        let specificity = route.template.specificity();
        if best.is_some_and(|b| b != specificity) {
            break;
        }
        if let Some(bindings) = route.template.matches(path) {
            best = Some(specificity);
            if route.http_method == *method {
                return Matched::Route(route, bindings);
            }
            if !allowed.contains(&route.http_method) {
                allowed.push(route.http_method.clone());
            }
        }
    }
    if allowed.is_empty() { Matched::NotFound } else { Matched::WrongMethod(allowed) }
}

/// Routes grouped for OpenAPI: path → method → route.
pub fn by_path(routes: &[Arc<Route>]) -> BTreeMap<String, Vec<Arc<Route>>> {
    let mut grouped: BTreeMap<String, Vec<Arc<Route>>> = BTreeMap::new();
    for route in routes {
        grouped.entry(route.template.openapi_path()).or_default().push(route.clone());
    }
    grouped
}

/// The fields along `a.b.c`, by proto or JSON name.
pub fn field_path(desc: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut fields = Vec::new();
    let mut current = desc.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = current.get_field_by_name(part).or_else(|| current.get_field_by_json_name(part))?;
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                _ => return None,
            }
        }
        fields.push(field);
    }
    Some(fields)
}
