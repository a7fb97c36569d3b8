//! `google.api.http` path templates: parsing and matching.
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ] ;
//! Segment  = "*" | "**" | LITERAL | "{" FieldPath [ "=" Segments ] "}" ;
//! ```
//! A variable binds one segment (`{id}`, `{id=*}`) or the rest of the path
//! (`{name=**}`); `Verb` is the custom-method suffix (`/v1/products:batchGet`).
use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A variable (or anonymous `*`) that takes one segment.
    One(Option<String>),
    /// A variable (or anonymous `**`) that takes the rest; only last.
    Rest(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    verb: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad path template {template:?}: {why}")]
pub struct TemplateError {
    template: String,
    why: &'static str,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let fail = |why| TemplateError { template: template.to_string(), why };
        let rest = template.strip_prefix('/').ok_or_else(|| fail("must start with '/'"))?;
        // The verb is after the last ':' outside braces.
        let (path, verb) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('}') && !rest[i..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        let mut segments = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let end = inner.find('}').ok_or_else(|| fail("unclosed '{'"))?;
                let body = &inner[..end];
                let (field, pattern) = body.split_once('=').unwrap_or((body, "*"));
                if field.is_empty() {
                    return Err(fail("empty variable name"));
                }
                let field = Some(field.to_string());
                segments.push(match pattern {
                    "*" => Segment::One(field),
                    "**" => Segment::Rest(field),
                    _ => return Err(fail("only {x}, {x=*} and {x=**} variables are supported")),
                });
                chars = &inner[end + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let literal = &chars[..end];
                segments.push(match literal {
                    "" => return Err(fail("empty segment")),
                    "*" => Segment::One(None),
                    "**" => Segment::Rest(None),
                    l if l.contains(['{', '}']) => return Err(fail("braces inside a literal")),
                    l => Segment::Literal(l.to_string()),
                });
                chars = &chars[end..];
            }
            chars = match chars.strip_prefix('/') {
                Some("") => return Err(fail("trailing '/'")),
                Some(next) => next,
                None if chars.is_empty() => chars,
                None => return Err(fail("a variable must fill a whole segment")),
            };
        }
        if segments.iter().rev().skip(1).any(|s| matches!(s, Segment::Rest(_))) {
            return Err(fail("'**' must be last"));
        }
        Ok(Self { segments, verb })
    }

    /// Field paths of the variables, in order.
    pub fn variables(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::One(Some(f)) | Segment::Rest(Some(f)) => Some(f.as_str()),
                _ => None,
            })
            .collect()
    }

    /// More literal segments first, so `/v1/users:me` beats `/v1/users/{id}`.
    pub fn specificity(&self) -> (usize, bool, usize) {
        let literals = self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
        (literals, self.verb.is_some(), self.segments.len())
    }

    /// The OpenAPI form: `/v1/users/{user_id}:validate`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            out.push('/');
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::One(Some(f)) | Segment::Rest(Some(f)) => out.push_str(&format!("{{{f}}}")),
                Segment::One(None) => out.push('*'),
                Segment::Rest(None) => out.push_str("**"),
            }
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// The variable bindings if `path` (no query string) matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            rest = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        let mut bindings = Vec::new();
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    i += 1;
                }
                Segment::One(field) => {
                    let part = parts.get(i).filter(|p| !p.is_empty())?;
                    if let Some(field) = field {
                        bindings.push((field.clone(), decode(part)?));
                    }
                    i += 1;
                }
                Segment::Rest(field) => {
                    if i >= parts.len() {
                        return None;
                    }
                    if let Some(field) = field {
                        let joined: Option<Vec<String>> = parts[i..].iter().map(|p| decode(p)).collect();
                        bindings.push((field.clone(), joined?.join("/")));
                    }
                    i = parts.len();
                }
            }
        }
        (i == parts.len()).then_some(bindings)
    }
}

fn decode(part: &str) -> Option<String> {
    percent_decode_str(part).decode_utf8().ok().map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template).unwrap().matches(path)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn literals_variables_and_verbs() {
        assert_eq!(bind("/v1/users", "/v1/users"), Some(vec![]));
        assert_eq!(bind("/v1/users/{user_id}", "/v1/users/42"), Some(pairs(&[("user_id", "42")])));
        assert_eq!(bind("/v1/users/{user_id}:validate", "/v1/users/42:validate"), Some(pairs(&[("user_id", "42")])));
        assert_eq!(bind("/v1/users/{user_id}:validate", "/v1/users/42"), None);
        assert_eq!(bind("/v1/users/{user_id}", "/v1/users/42:validate"), Some(pairs(&[("user_id", "42:validate")])));
        assert_eq!(bind("/v1/products:batchGet", "/v1/products:batchGet"), Some(vec![]));
        assert_eq!(bind("/v1/products:batchGet", "/v1/products"), None);
        assert_eq!(bind("/v1/users/{user_id}", "/v1/users/"), None, "empty variable");
        assert_eq!(bind("/v1/users/{user_id}", "/v1/users/1/2"), None);
        assert_eq!(bind("/v1/users/{id}", "/v1/users/a%20b"), Some(pairs(&[("id", "a b")])));
        assert_eq!(bind("/v1/users/{id}", "/v1/users/%FF"), None, "invalid UTF-8 does not match");
        assert_eq!(bind("/v1/files/{name=**}", "/v1/files/a/b/c"), Some(pairs(&[("name", "a/b/c")])));
        assert_eq!(bind("/v1/*/x", "/v1/any/x"), Some(vec![]));
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["v1/users", "/v1/{", "/v1/{}", "/v1/x{y}", "/v1/{a=b/c}", "/v1/**/x", "/v1//x", "/v1/x/"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specificity_and_openapi_form() {
        let me = PathTemplate::parse("/v1/users:me").unwrap();
        let id = PathTemplate::parse("/v1/users/{id}").unwrap();
        assert!(me.specificity() > id.specificity());
        assert_eq!(
            PathTemplate::parse("/v1/users/{user_id}:validate").unwrap().openapi_path(),
            "/v1/users/{user_id}:validate"
        );
        assert_eq!(id.variables(), vec!["id"]);
    }
}
