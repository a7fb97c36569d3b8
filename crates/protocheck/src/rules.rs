//! The breaking-change rules, old index against new. What may change freely:
//! adding messages, fields, enum values, services and methods; comments;
//! options; moving an element to another file of its package. A field or
//! enum value may be deleted only once its number and its name are reserved,
//! so neither can come back with another meaning (the number on the wire, the
//! name in JSON — the gateway speaks JSON).
use std::collections::BTreeSet;

use crate::index::{Enum, Field, Index, Loc, Message, reserved, uncovered};
use crate::report::{Breaking, Rule, Tree};

/// The packages whose elements are judged; the others may change at will.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    Packages(BTreeSet<String>),
}

impl Scope {
    fn includes(&self, package: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Packages(packages) => packages.contains(package),
        }
    }
}

/// Every breaking change from `old` to `new` within `scope`, by file and line.
pub fn check(old: &Index, new: &Index, scope: &Scope) -> Vec<Breaking> {
    let mut out = Vec::new();
    messages(old, new, scope, &mut out);
    enums(old, new, scope, &mut out);
    services(old, new, scope, &mut out);
    extensions(old, new, scope, &mut out);
    out.sort_by(|a, b| (a.tree, &a.loc, a.rule).cmp(&(b.tree, &b.loc, b.rule)));
    out
}

/// Where to report a deleted element: its parent message in the new tree if
/// that is still there, else where the element was in the old one.
fn deleted_at(new: &Index, full_name: &str, package: &str, old_loc: &Loc) -> (String, Loc, Tree) {
    let parent = full_name.rsplit_once('.').map_or("", |(parent, _)| parent);
    match new.messages.get(parent) {
        Some(message) => (format!("message {parent}"), message.loc.clone(), Tree::New),
        None => (format!("package {package}"), old_loc.clone(), Tree::Old),
    }
}

fn short_name(full_name: &str) -> &str {
    full_name.rsplit_once('.').map_or(full_name, |(_, name)| name)
}

fn messages(old: &Index, new: &Index, scope: &Scope, out: &mut Vec<Breaking>) {
    for (name, om) in &old.messages {
        if !scope.includes(&om.package) || om.map_entry {
            continue;
        }
        let Some(nm) = new.messages.get(name) else {
            let (element, loc, tree) = deleted_at(new, name, &om.package, &om.loc);
            out.push(Breaking::deleted(
                Rule::MessageNoDelete,
                (loc, tree),
                element,
                format!("message {} was deleted", short_name(name)),
                format!("message {name} (declared at {})", om.loc),
            ));
            continue;
        };
        let element = format!("message {name}");
        for (number, of) in &om.fields {
            match nm.fields.get(number) {
                Some(nf) => changed_field(&element, of, nf, out),
                None => deleted_field(&element, nm, of, out),
            }
        }
        reserved_kept(Rule::ReservedMessageNoDelete, &element, om, nm, out);
    }
}

/// Extensions are matched by full name. Custom options (the contracts'
/// `callers`, `identity_asserters`) are read by extension number, so the
/// number, type and cardinality stay.
fn extensions(old: &Index, new: &Index, scope: &Scope, out: &mut Vec<Breaking>) {
    for (name, oe) in &old.extensions {
        if !scope.includes(&oe.package) {
            continue;
        }
        let element = format!("extension {name}");
        let Some(ne) = new.extensions.get(name) else {
            out.push(Breaking::deleted(
                Rule::ExtensionNoDelete,
                (oe.field.loc.clone(), Tree::Old),
                format!("package {}", oe.package),
                format!("extension {} of {} was deleted", short_name(name), oe.extendee),
                format!("extend {} {{ {} }}", oe.extendee, oe.field),
            ));
            continue;
        };
        if oe.extendee != ne.extendee {
            out.push(Breaking {
                rule: Rule::ExtensionSameExtendee,
                loc: ne.field.loc.clone(),
                tree: Tree::New,
                element: element.clone(),
                what: format!("now extends {} instead of {}", ne.extendee, oe.extendee),
                old: format!("extend {} {{ {} }}", oe.extendee, oe.field),
                new: format!("extend {} {{ {} }}", ne.extendee, ne.field),
                fix: None,
            });
        }
        if oe.field.number != ne.field.number {
            out.push(Breaking {
                rule: Rule::FieldSameNumber,
                loc: ne.field.loc.clone(),
                tree: Tree::New,
                element: element.clone(),
                what: format!("changed number from {} to {}", oe.field.number, ne.field.number),
                old: oe.field.to_string(),
                new: ne.field.to_string(),
                fix: None,
            });
        }
        changed_field(&element, &oe.field, &ne.field, out);
    }
}

fn changed_field(element: &str, of: &Field, nf: &Field, out: &mut Vec<Breaking>) {
    let mut push = |rule, what: String| {
        out.push(Breaking {
            rule,
            loc: nf.loc.clone(),
            tree: Tree::New,
            element: element.to_string(),
            what,
            old: of.to_string(),
            new: nf.to_string(),
            fix: None,
        })
    };
    let number = of.number;
    if of.name != nf.name {
        push(Rule::FieldSameName, format!("field {number} changed name from \"{}\" to \"{}\"", of.name, nf.name));
    } else if of.json_name != nf.json_name {
        // A different name already changes the JSON name; said once.
        push(
            Rule::FieldSameJsonName,
            format!(
                "field {number} \"{}\" changed JSON name from \"{}\" to \"{}\"",
                of.name, of.json_name, nf.json_name
            ),
        );
    }
    if of.ty != nf.ty {
        push(
            Rule::FieldSameType,
            format!("field {number} \"{}\" changed type from {} to {}", of.name, of.ty.name, nf.ty.name),
        );
    }
    if of.cardinality != nf.cardinality {
        push(
            Rule::FieldSameCardinality,
            format!("field {number} \"{}\" changed from {} to {}", of.name, of.cardinality, nf.cardinality),
        );
    }
    if of.oneof != nf.oneof {
        let side = |o: &Option<String>| o.as_ref().map_or_else(|| "no oneof".to_string(), |o| format!("oneof {o}"));
        push(
            Rule::FieldSameOneof,
            format!("field {number} \"{}\" moved from {} to {}", of.name, side(&of.oneof), side(&nf.oneof)),
        );
    }
}

fn deleted_field(element: &str, nm: &Message, of: &Field, out: &mut Vec<Breaking>) {
    // The same name under another number is a renumbering, not a deletion.
    if let Some(nf) = nm.fields.values().find(|f| f.name == of.name) {
        out.push(Breaking {
            rule: Rule::FieldSameNumber,
            loc: nf.loc.clone(),
            tree: Tree::New,
            element: element.to_string(),
            what: format!("field \"{}\" changed number from {} to {}", of.name, of.number, nf.number),
            old: of.to_string(),
            new: nf.to_string(),
            fix: Some(format!("keep number {} for \"{}\"; a new number needs a new field", of.number, of.name)),
        });
        return;
    }
    let number_reserved = reserved(&nm.reserved_numbers, i64::from(of.number));
    let name_reserved = nm.reserved_names.contains(&of.name);
    if number_reserved && name_reserved {
        return;
    }
    let (state, fix) = match (number_reserved, name_reserved) {
        (false, false) => (
            "neither its number nor its name is reserved",
            format!("reserved {}; reserved \"{}\";", of.number, of.name),
        ),
        (true, false) => ("its number is reserved but not its name", format!("reserved \"{}\";", of.name)),
        _ => ("its name is reserved but not its number", format!("reserved {};", of.number)),
    };
    out.push(Breaking {
        rule: Rule::FieldNoDelete,
        loc: nm.loc.clone(),
        tree: Tree::New,
        element: element.to_string(),
        what: format!("field {} \"{}\" was deleted", of.number, of.name),
        old: format!("{of} (at {})", of.loc),
        new: format!("(deleted; {state})"),
        fix: Some(format!("add `{fix}` to the message, so neither comes back with another meaning")),
    });
}

/// What messages and enums share for the reserved rule: reserved numbers and
/// names, and which member now uses a number or a name.
trait Reserves {
    fn loc(&self) -> &Loc;
    fn reserved_numbers(&self) -> &[(i64, i64)];
    fn reserved_names(&self) -> &BTreeSet<String>;
    fn number_user(&self, number: i64) -> Option<String>;
    fn name_user(&self, name: &str) -> Option<i64>;
}

impl Reserves for Message {
    fn loc(&self) -> &Loc {
        &self.loc
    }
    fn reserved_numbers(&self) -> &[(i64, i64)] {
        &self.reserved_numbers
    }
    fn reserved_names(&self) -> &BTreeSet<String> {
        &self.reserved_names
    }
    fn number_user(&self, number: i64) -> Option<String> {
        self.fields.get(&i32::try_from(number).ok()?).map(|f| f.name.clone())
    }
    fn name_user(&self, name: &str) -> Option<i64> {
        self.fields.values().find(|f| f.name == name).map(|f| i64::from(f.number))
    }
}

impl Reserves for Enum {
    fn loc(&self) -> &Loc {
        &self.loc
    }
    fn reserved_numbers(&self) -> &[(i64, i64)] {
        &self.reserved_numbers
    }
    fn reserved_names(&self) -> &BTreeSet<String> {
        &self.reserved_names
    }
    fn number_user(&self, number: i64) -> Option<String> {
        self.values.iter().find(|v| i64::from(v.number) == number).map(|v| v.name.clone())
    }
    fn name_user(&self, name: &str) -> Option<i64> {
        self.values.iter().find(|v| v.name == name).map(|v| i64::from(v.number))
    }
}

/// Reserved numbers and names stay reserved: dropping one lets a deleted
/// field's number or name come back with another meaning.
fn reserved_kept(rule: Rule, element: &str, old: &impl Reserves, new: &impl Reserves, out: &mut Vec<Breaking>) {
    let loc = new.loc();
    for &range in old.reserved_numbers() {
        for (start, end) in uncovered(new.reserved_numbers(), range) {
            let shown = if end - start == 1 { format!("{start}") } else { format!("{start} to {}", end - 1) };
            let users: Vec<String> = (start..end.min(start + 1000))
                .filter_map(|n| new.number_user(n).map(|u| format!("{n} \"{u}\"")))
                .collect();
            let now = if users.is_empty() {
                "(no longer reserved)".to_string()
            } else {
                format!("(no longer reserved, and reused by {})", users.join(", "))
            };
            out.push(Breaking {
                rule,
                loc: loc.clone(),
                tree: Tree::New,
                element: element.to_string(),
                what: format!("reserved number(s) {shown} no longer reserved"),
                old: format!("reserved {shown};"),
                new: now,
                fix: Some(format!("keep `reserved {shown};`")),
            });
        }
    }
    for name in old.reserved_names().difference(new.reserved_names()) {
        let now = match new.name_user(name) {
            Some(number) => format!("(no longer reserved, and reused by {number} \"{name}\")"),
            None => "(no longer reserved)".to_string(),
        };
        out.push(Breaking {
            rule,
            loc: loc.clone(),
            tree: Tree::New,
            element: element.to_string(),
            what: format!("reserved name \"{name}\" no longer reserved"),
            old: format!("reserved \"{name}\";"),
            new: now,
            fix: Some(format!("keep `reserved \"{name}\";`")),
        });
    }
}

fn enums(old: &Index, new: &Index, scope: &Scope, out: &mut Vec<Breaking>) {
    for (name, oe) in &old.enums {
        if !scope.includes(&oe.package) {
            continue;
        }
        let Some(ne) = new.enums.get(name) else {
            let (element, loc, tree) = deleted_at(new, name, &oe.package, &oe.loc);
            out.push(Breaking::deleted(
                Rule::EnumNoDelete,
                (loc, tree),
                element,
                format!("enum {} was deleted", short_name(name)),
                format!("enum {name} (declared at {})", oe.loc),
            ));
            continue;
        };
        let element = format!("enum {name}");
        enum_values(&element, oe, ne, out);
        reserved_kept(Rule::ReservedEnumNoDelete, &element, oe, ne, out);
    }
}

/// Values are matched by number; with `allow_alias` a number has several
/// names and each old one must stay.
fn enum_values(element: &str, oe: &Enum, ne: &Enum, out: &mut Vec<Breaking>) {
    for ov in &oe.values {
        let at_number: Vec<_> = ne.values.iter().filter(|v| v.number == ov.number).collect();
        if let Some(first) = at_number.first() {
            if at_number.iter().all(|v| v.name != ov.name) {
                let names: Vec<&str> = at_number.iter().map(|v| v.name.as_str()).collect();
                out.push(Breaking {
                    rule: Rule::EnumValueSameName,
                    loc: first.loc.clone(),
                    tree: Tree::New,
                    element: element.to_string(),
                    what: format!("value {} changed name from {} to {}", ov.number, ov.name, names.join(", ")),
                    old: format!("{} = {}", ov.name, ov.number),
                    new: format!("{} = {}", names.join(", "), ov.number),
                    fix: None,
                });
            }
            continue;
        }
        if let Some(nv) = ne.values.iter().find(|v| v.name == ov.name) {
            out.push(Breaking {
                rule: Rule::EnumValueSameNumber,
                loc: nv.loc.clone(),
                tree: Tree::New,
                element: element.to_string(),
                what: format!("value {} changed number from {} to {}", ov.name, ov.number, nv.number),
                old: format!("{} = {}", ov.name, ov.number),
                new: format!("{} = {}", nv.name, nv.number),
                fix: None,
            });
            continue;
        }
        let number_reserved = reserved(&ne.reserved_numbers, i64::from(ov.number));
        let name_reserved = ne.reserved_names.contains(&ov.name);
        if number_reserved && name_reserved {
            continue;
        }
        let mut fix = Vec::new();
        if !number_reserved {
            fix.push(format!("reserved {};", ov.number));
        }
        if !name_reserved {
            fix.push(format!("reserved \"{}\";", ov.name));
        }
        out.push(Breaking {
            rule: Rule::EnumValueNoDelete,
            loc: ne.loc.clone(),
            tree: Tree::New,
            element: element.to_string(),
            what: format!("value {} {} was deleted", ov.number, ov.name),
            old: format!("{} = {} (at {})", ov.name, ov.number, ov.loc),
            new: "(deleted)".to_string(),
            fix: Some(format!("add `{}` to the enum", fix.join(" "))),
        });
    }
}

fn services(old: &Index, new: &Index, scope: &Scope, out: &mut Vec<Breaking>) {
    for (name, os) in &old.services {
        if !scope.includes(&os.package) {
            continue;
        }
        let Some(ns) = new.services.get(name) else {
            out.push(Breaking::deleted(
                Rule::ServiceNoDelete,
                (os.loc.clone(), Tree::Old),
                format!("package {}", os.package),
                format!("service {} was deleted", short_name(name)),
                format!("service {name} ({} methods)", os.methods.len()),
            ));
            continue;
        };
        let element = format!("service {name}");
        for (method, om) in &os.methods {
            let Some(nm) = ns.methods.get(method) else {
                out.push(Breaking::deleted(
                    Rule::RpcNoDelete,
                    (ns.loc.clone(), Tree::New),
                    element.clone(),
                    format!("method {method} was deleted"),
                    format!("{om} (at {})", om.loc),
                ));
                continue;
            };
            let mut push = |rule, what: String| {
                out.push(Breaking {
                    rule,
                    loc: nm.loc.clone(),
                    tree: Tree::New,
                    element: element.clone(),
                    what,
                    old: om.to_string(),
                    new: nm.to_string(),
                    fix: None,
                })
            };
            if om.input != nm.input {
                push(
                    Rule::RpcSameRequestType,
                    format!("{method} changed request type from {} to {}", om.input, nm.input),
                );
            }
            if om.output != nm.output {
                push(
                    Rule::RpcSameResponseType,
                    format!("{method} changed response type from {} to {}", om.output, nm.output),
                );
            }
            let streaming = |yes: bool| if yes { "streaming" } else { "unary" };
            if om.client_streaming != nm.client_streaming {
                push(
                    Rule::RpcSameClientStreaming,
                    format!(
                        "{method} changed its request from {} to {}",
                        streaming(om.client_streaming),
                        streaming(nm.client_streaming)
                    ),
                );
            }
            if om.server_streaming != nm.server_streaming {
                push(
                    Rule::RpcSameServerStreaming,
                    format!(
                        "{method} changed its response from {} to {}",
                        streaming(om.server_streaming),
                        streaming(nm.server_streaming)
                    ),
                );
            }
        }
    }
}
