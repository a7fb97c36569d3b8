//! A descriptor set flattened into what the rules compare: every message,
//! enum and service by its fully qualified name (nested ones included), each
//! with the file and line it was declared at. Elements are matched by name
//! across the two trees, not by file, so moving a message to another file of
//! the same package is not a change (buf's PACKAGE category).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

// Field numbers of FileDescriptorProto / DescriptorProto / EnumDescriptorProto /
// ServiceDescriptorProto, as they appear in SourceCodeInfo location paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const FILE_EXTENSION: i32 = 7;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const MESSAGE_EXTENSION: i32 = 6;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

/// Where an element was declared: the file's import name and a 1-based line
/// (absent when the descriptor carried no source info).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loc {
    pub file: String,
    pub line: Option<u32>,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    /// Every package a file declares, even one holding only extensions.
    pub packages: BTreeSet<String>,
    pub messages: BTreeMap<String, Message>,
    pub enums: BTreeMap<String, Enum>,
    pub services: BTreeMap<String, Service>,
    /// Extensions by full name (`shopfast.options.v1.callers`): custom
    /// options are read by number from the options' wire bytes.
    pub extensions: BTreeMap<String, Extension>,
}

#[derive(Debug)]
pub struct Extension {
    pub package: String,
    /// The extended message, e.g. `google.protobuf.MethodOptions`.
    pub extendee: String,
    pub field: Field,
}

#[derive(Debug)]
pub struct Message {
    pub package: String,
    pub loc: Loc,
    /// The synthetic `XxxEntry` message of a map field: judged through the
    /// field's `map<K, V>` type instead, so a change is reported once.
    pub map_entry: bool,
    pub fields: BTreeMap<i32, Field>,
    /// Half-open `[start, end)` ranges.
    pub reserved_numbers: Vec<(i64, i64)>,
    pub reserved_names: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub json_name: String,
    pub number: i32,
    pub ty: TypeRef,
    pub cardinality: Cardinality,
    /// The label as written (`repeated`, `optional`, `required` or nothing),
    /// only for showing the declaration.
    pub label: &'static str,
    /// The real oneof the field belongs to (not the synthetic one of a proto3 `optional`).
    pub oneof: Option<String>,
    pub loc: Loc,
}

impl fmt::Display for Field {
    /// The declaration as it would be written: `optional int64 min_price_minor = 3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(oneof) = &self.oneof {
            write!(f, "oneof {oneof} {{ ")?;
        }
        if !self.label.is_empty() {
            write!(f, "{} ", self.label)?;
        }
        write!(f, "{} {} = {}", self.ty.name, self.name, self.number)?;
        if self.oneof.is_some() {
            f.write_str(" }")?;
        }
        Ok(())
    }
}

/// A field's type: its kind and the name shown for it (`int64`,
/// `shopfast.common.v1.Money`, `map<string, int64>`). Two types are the same
/// when both are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRef {
    pub kind: Type,
    pub name: String,
}

/// What a field holds per message, for compatibility. A proto3 message field
/// tracks presence whether or not it is written `optional`, so both are
/// `Explicit`; a proto3 scalar without `optional` is `Implicit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cardinality {
    Implicit,
    Explicit,
    Required,
    Repeated,
}

impl fmt::Display for Cardinality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cardinality::Implicit => "singular (implicit presence)",
            Cardinality::Explicit => "optional (explicit presence)",
            Cardinality::Required => "required",
            Cardinality::Repeated => "repeated",
        })
    }
}

#[derive(Debug)]
pub struct Enum {
    pub package: String,
    pub loc: Loc,
    pub values: Vec<EnumValue>,
    /// Half-open `[start, end)` ranges (the descriptor's are inclusive).
    pub reserved_numbers: Vec<(i64, i64)>,
    pub reserved_names: BTreeSet<String>,
}

#[derive(Debug)]
pub struct EnumValue {
    pub name: String,
    pub number: i32,
    pub loc: Loc,
}

#[derive(Debug)]
pub struct Service {
    pub package: String,
    pub loc: Loc,
    pub methods: BTreeMap<String, Method>,
}

#[derive(Debug)]
pub struct Method {
    pub name: String,
    pub input: String,
    pub output: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
    pub loc: Loc,
}

impl fmt::Display for Method {
    /// `rpc Get(GetRequest) returns (stream Item)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stream = |yes: bool| if yes { "stream " } else { "" };
        write!(
            f,
            "rpc {}({}{}) returns ({}{})",
            self.name,
            stream(self.client_streaming),
            self.input,
            stream(self.server_streaming),
            self.output
        )
    }
}

/// One file's context while its elements are walked.
struct FileCtx<'a> {
    name: &'a str,
    package: &'a str,
    proto3: bool,
    lines: HashMap<&'a [i32], u32>,
}

impl FileCtx<'_> {
    fn loc(&self, path: &[i32]) -> Loc {
        Loc { file: self.name.to_string(), line: self.lines.get(path).copied() }
    }
}

impl Index {
    pub fn build(set: &FileDescriptorSet) -> Index {
        let mut index = Index::default();
        for file in &set.file {
            index.add_file(file);
        }
        index.name_map_types();
        index
    }

    fn add_file(&mut self, file: &FileDescriptorProto) {
        let lines = file
            .source_code_info
            .iter()
            .flat_map(|info| &info.location)
            .filter_map(|l| Some((l.path.as_slice(), u32::try_from(*l.span.first()?).ok()? + 1)))
            .collect();
        let ctx = FileCtx { name: file.name(), package: file.package(), proto3: file.syntax() == "proto3", lines };
        self.packages.insert(file.package().to_string());
        for (i, extension) in file.extension.iter().enumerate() {
            self.add_extension(&ctx, file.package(), extension, vec![FILE_EXTENSION, index_i32(i)]);
        }
        for (i, message) in file.message_type.iter().enumerate() {
            self.add_message(&ctx, file.package(), message, vec![FILE_MESSAGE, index_i32(i)]);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            self.add_enum(&ctx, file.package(), e, vec![FILE_ENUM, index_i32(i)]);
        }
        for (i, service) in file.service.iter().enumerate() {
            let path = [FILE_SERVICE, index_i32(i)];
            let methods = service
                .method
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    let method = Method {
                        name: m.name().to_string(),
                        input: type_name(m.input_type()),
                        output: type_name(m.output_type()),
                        client_streaming: m.client_streaming(),
                        server_streaming: m.server_streaming(),
                        loc: ctx.loc(&[FILE_SERVICE, index_i32(i), SERVICE_METHOD, index_i32(j)]),
                    };
                    (method.name.clone(), method)
                })
                .collect();
            let service_entry = Service { package: ctx.package.to_string(), loc: ctx.loc(&path), methods };
            self.services.insert(qualify(file.package(), service.name()), service_entry);
        }
    }

    fn add_message(&mut self, ctx: &FileCtx, scope: &str, message: &DescriptorProto, path: Vec<i32>) {
        let full_name = qualify(scope, message.name());
        let fields = message
            .field
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let mut field_path = path.clone();
                field_path.extend([MESSAGE_FIELD, index_i32(i)]);
                let field = make_field(ctx, field, Some(message), &field_path);
                (field.number, field)
            })
            .collect();
        let entry = Message {
            package: ctx.package.to_string(),
            loc: ctx.loc(&path),
            map_entry: message.options.as_ref().is_some_and(|o| o.map_entry()),
            fields,
            reserved_numbers: message
                .reserved_range
                .iter()
                .map(|r| (i64::from(r.start()), i64::from(r.end())))
                .collect(),
            reserved_names: message.reserved_name.iter().cloned().collect(),
        };
        self.messages.insert(full_name.clone(), entry);
        for (i, nested) in message.nested_type.iter().enumerate() {
            let mut nested_path = path.clone();
            nested_path.extend([MESSAGE_NESTED, index_i32(i)]);
            self.add_message(ctx, &full_name, nested, nested_path);
        }
        for (i, e) in message.enum_type.iter().enumerate() {
            let mut enum_path = path.clone();
            enum_path.extend([MESSAGE_ENUM, index_i32(i)]);
            self.add_enum(ctx, &full_name, e, enum_path);
        }
        for (i, extension) in message.extension.iter().enumerate() {
            let mut extension_path = path.clone();
            extension_path.extend([MESSAGE_EXTENSION, index_i32(i)]);
            self.add_extension(ctx, &full_name, extension, extension_path);
        }
    }

    fn add_extension(&mut self, ctx: &FileCtx, scope: &str, field: &FieldDescriptorProto, path: Vec<i32>) {
        let entry = Extension {
            package: ctx.package.to_string(),
            extendee: type_name(field.extendee()),
            field: make_field(ctx, field, None, &path),
        };
        self.extensions.insert(qualify(scope, field.name()), entry);
    }

    fn add_enum(&mut self, ctx: &FileCtx, scope: &str, e: &EnumDescriptorProto, path: Vec<i32>) {
        let values = e
            .value
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut value_path = path.clone();
                value_path.extend([ENUM_VALUE, index_i32(i)]);
                EnumValue { name: v.name().to_string(), number: v.number(), loc: ctx.loc(&value_path) }
            })
            .collect();
        let entry = Enum {
            package: ctx.package.to_string(),
            loc: ctx.loc(&path),
            values,
            reserved_numbers: e.reserved_range.iter().map(|r| (i64::from(r.start()), i64::from(r.end()) + 1)).collect(),
            reserved_names: e.reserved_name.iter().cloned().collect(),
        };
        self.enums.insert(qualify(scope, e.name()), entry);
    }

    /// A map field is a repeated field of its synthetic entry message; naming
    /// its type `map<K, V>` makes a change of K or V a change of the field's
    /// type, where the entry's name alone would not show it.
    fn name_map_types(&mut self) {
        let entries: HashMap<String, String> = self
            .messages
            .iter()
            .filter(|(_, m)| m.map_entry)
            .filter_map(|(name, m)| {
                let key = &m.fields.get(&1)?.ty.name;
                let value = &m.fields.get(&2)?.ty.name;
                Some((name.clone(), format!("map<{key}, {value}>")))
            })
            .collect();
        for field in self.messages.values_mut().flat_map(|m| m.fields.values_mut()) {
            if field.cardinality == Cardinality::Repeated
                && let Some(map) = entries.get(&field.ty.name)
            {
                field.ty.name = map.clone();
                field.label = "";
            }
        }
    }
}

/// A field as compared: `message` is its containing message (for its oneof),
/// absent for an extension.
fn make_field(ctx: &FileCtx, field: &FieldDescriptorProto, message: Option<&DescriptorProto>, path: &[i32]) -> Field {
    let real_oneof = field.oneof_index.filter(|_| !field.proto3_optional());
    let oneof = real_oneof
        .zip(message)
        .and_then(|(o, m)| m.oneof_decl.get(usize::try_from(o).ok()?))
        .map(|o| o.name().to_string());
    let kind = field.r#type();
    let cardinality = match field.label() {
        Label::Repeated => Cardinality::Repeated,
        Label::Required => Cardinality::Required,
        Label::Optional if ctx.proto3 && !field.proto3_optional() && !is_message(kind) => Cardinality::Implicit,
        Label::Optional => Cardinality::Explicit,
    };
    let label = match field.label() {
        Label::Repeated => "repeated",
        Label::Required => "required",
        Label::Optional if !ctx.proto3 || field.proto3_optional() => "optional",
        Label::Optional => "",
    };
    Field {
        name: field.name().to_string(),
        json_name: field.json_name.clone().unwrap_or_else(|| default_json_name(field.name())),
        number: field.number(),
        ty: TypeRef { kind, name: scalar_name(kind).map_or_else(|| type_name(field.type_name()), str::to_string) },
        cardinality,
        label,
        oneof,
        loc: ctx.loc(path),
    }
}

/// Whether `[number, number + 1)` lies inside one of the half-open ranges.
pub fn reserved(ranges: &[(i64, i64)], number: i64) -> bool {
    ranges.iter().any(|&(start, end)| start <= number && number < end)
}

/// The parts of `[start, end)` that none of `ranges` covers, as half-open ranges.
pub fn uncovered(ranges: &[(i64, i64)], (start, end): (i64, i64)) -> Vec<(i64, i64)> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut gaps = Vec::new();
    let mut at = start;
    for (s, e) in sorted {
        if at >= end {
            break;
        }
        if e <= at {
            continue;
        }
        if s > at {
            gaps.push((at, s.min(end)));
        }
        at = at.max(e);
    }
    if at < end {
        gaps.push((at, end));
    }
    gaps
}

fn is_message(kind: Type) -> bool {
    matches!(kind, Type::Message | Type::Group)
}

fn scalar_name(kind: Type) -> Option<&'static str> {
    Some(match kind {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => return None,
    })
}

/// protoc's default JSON name: underscores dropped, the next letter upper-cased.
fn default_json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Resolved type names are fully qualified with a leading dot; shown without it.
fn type_name(name: &str) -> String {
    name.strip_prefix('.').unwrap_or(name).to_string()
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() { name.to_string() } else { format!("{scope}.{name}") }
}

/// Descriptor list indexes in source paths are i32; a file with more than
/// i32::MAX elements cannot be compiled, so this saturates only in theory.
fn index_i32(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_finds_the_gaps_of_a_range() {
        assert_eq!(uncovered(&[(1, 3), (5, 10)], (1, 10)), vec![(3, 5)]);
        assert_eq!(uncovered(&[(1, 10)], (2, 4)), vec![]);
        assert_eq!(uncovered(&[], (2, 4)), vec![(2, 4)]);
        assert_eq!(uncovered(&[(3, 4), (2, 3)], (1, 6)), vec![(1, 2), (4, 6)]);
    }

    #[test]
    fn default_json_names_follow_protoc() {
        assert_eq!(default_json_name("min_price_minor"), "minPriceMinor");
        assert_eq!(default_json_name("id"), "id");
    }
}
