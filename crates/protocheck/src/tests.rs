//! The rules over small protos compiled in memory: one file in package
//! `shop.v1` before and after, plus a second package for the scope tests.
use std::collections::BTreeSet;

use crate::{Breaking, Rule, Scope, Tree, compare, compile_sources};

const FILE: &str = "shop/v1/shop.proto";

fn proto(body: &str) -> String {
    format!("syntax = \"proto3\";\npackage shop.v1;\n{body}\n")
}

fn breaking(old: &str, new: &str) -> Vec<Breaking> {
    let (old, new) = (proto(old), proto(new));
    let old = compile_sources([(FILE, old.as_str())]).unwrap();
    let new = compile_sources([(FILE, new.as_str())]).unwrap();
    compare(&old, &new, &Scope::All)
}

fn rules(old: &str, new: &str) -> Vec<Rule> {
    breaking(old, new).iter().map(|b| b.rule).collect()
}

const PRODUCT: &str = "message Product {\n  string id = 1;\n  string name = 2;\n  int64 price_minor = 3;\n}";

#[test]
fn the_same_tree_and_additions_break_nothing() {
    assert_eq!(rules(PRODUCT, PRODUCT), []);
    let added = "message Product {\n  string id = 1;\n  string name = 2;\n  int64 price_minor = 3;\n  \
                 repeated string tags = 4;\n}\nmessage Other {}\nenum E { E_UNSPECIFIED = 0; }\n\
                 service S { rpc Get(Product) returns (Product); }";
    assert_eq!(rules(PRODUCT, added), []);
}

#[test]
fn a_deleted_field_names_the_file_message_field_and_the_fix() {
    let new = "message Product {\n  string id = 1;\n  string name = 2;\n}";
    let found = breaking(PRODUCT, new);
    assert_eq!(found.len(), 1, "{found:?}");
    let b = &found[0];
    assert_eq!(b.rule, Rule::FieldNoDelete);
    assert_eq!(b.tree, Tree::New);
    assert_eq!(b.loc.file, FILE);
    assert_eq!(b.loc.line, Some(3), "the message's line in the new file");
    let shown = b.to_string();
    assert_eq!(
        shown,
        "shop/v1/shop.proto:3: FIELD_NO_DELETE: message shop.v1.Product: field 3 \"price_minor\" was deleted\n    \
         old: int64 price_minor = 3 (at shop/v1/shop.proto:6)\n    \
         new: (deleted; neither its number nor its name is reserved)\n    \
         fix: add `reserved 3; reserved \"price_minor\";` to the message, so neither comes back with another meaning"
    );
}

#[test]
fn a_field_may_go_once_its_number_and_name_are_reserved() {
    let both = "message Product {\n  reserved 3;\n  reserved \"price_minor\";\n  string id = 1;\n  string name = 2;\n}";
    assert_eq!(rules(PRODUCT, both), []);
    let range =
        "message Product {\n  reserved 3 to 5;\n  reserved \"price_minor\";\n  string id = 1;\n  string name = 2;\n}";
    assert_eq!(rules(PRODUCT, range), []);

    let number_only = "message Product {\n  reserved 3;\n  string id = 1;\n  string name = 2;\n}";
    let found = breaking(PRODUCT, number_only);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldNoDelete]);
    assert!(found[0].new.contains("its number is reserved but not its name"), "{}", found[0]);

    let name_only = "message Product {\n  reserved \"price_minor\";\n  string id = 1;\n  string name = 2;\n}";
    let found = breaking(PRODUCT, name_only);
    assert!(found[0].new.contains("its name is reserved but not its number"), "{}", found[0]);
}

#[test]
fn a_field_keeps_its_number_name_type_and_cardinality() {
    let renamed = "message Product {\n  string id = 1;\n  string title = 2;\n  int64 price_minor = 3;\n}";
    let found = breaking(PRODUCT, renamed);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldSameName], "one report, not JSON too");
    assert_eq!(found[0].what, "field 2 changed name from \"name\" to \"title\"");
    assert_eq!((found[0].old.as_str(), found[0].new.as_str()), ("string name = 2", "string title = 2"));

    let retyped = "message Product {\n  string id = 1;\n  string name = 2;\n  string price_minor = 3;\n}";
    let found = breaking(PRODUCT, retyped);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldSameType]);
    assert_eq!(found[0].what, "field 3 \"price_minor\" changed type from int64 to string");

    let renumbered = "message Product {\n  string id = 1;\n  string name = 2;\n  int64 price_minor = 4;\n}";
    let found = breaking(PRODUCT, renumbered);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldSameNumber]);
    assert_eq!(found[0].what, "field \"price_minor\" changed number from 3 to 4");

    let repeated = "message Product {\n  string id = 1;\n  repeated string name = 2;\n  int64 price_minor = 3;\n}";
    assert_eq!(rules(PRODUCT, repeated), [Rule::FieldSameCardinality]);

    let optional = "message Product {\n  string id = 1;\n  string name = 2;\n  optional int64 price_minor = 3;\n}";
    let found = breaking(PRODUCT, optional);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldSameCardinality]);
    assert_eq!(
        found[0].what,
        "field 3 \"price_minor\" changed from singular (implicit presence) to optional (explicit presence)"
    );

    let json =
        "message Product {\n  string id = 1;\n  string name = 2 [json_name = \"title\"];\n  int64 price_minor = 3;\n}";
    assert_eq!(rules(PRODUCT, json), [Rule::FieldSameJsonName]);
}

#[test]
fn optional_on_a_message_field_changes_nothing() {
    let plain = "message M {}\nmessage P { M m = 1; }";
    let optional = "message M {}\nmessage P { optional M m = 1; }";
    assert_eq!(rules(plain, optional), []);
}

#[test]
fn fields_stay_in_or_out_of_their_oneof() {
    let old = "message P { oneof choice { string a = 1; int64 b = 2; } }";
    let new = "message P { oneof choice { string a = 1; } int64 b = 2; }";
    let found = breaking(old, new);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldSameOneof]);
    assert_eq!(found[0].what, "field 2 \"b\" moved from oneof choice to no oneof");
}

#[test]
fn a_map_value_change_is_a_field_type_change_reported_once() {
    let old = "message P { map<string, int64> counts = 1; }";
    let new = "message P { map<string, string> counts = 1; }";
    let found = breaking(old, new);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldSameType]);
    assert_eq!(found[0].what, "field 1 \"counts\" changed type from map<string, int64> to map<string, string>");
}

#[test]
fn deleted_messages_enums_and_nested_ones_are_reported() {
    let old = "message A { message Inner {} enum Kind { KIND_UNSPECIFIED = 0; } }\nmessage B {}\nenum E { E_UNSPECIFIED = 0; }";
    let new = "message A {}";
    let found = breaking(old, new);
    let mut got: Vec<(Rule, String)> = found.iter().map(|b| (b.rule, format!("{}: {}", b.element, b.what))).collect();
    got.sort();
    assert_eq!(
        got,
        [
            (Rule::MessageNoDelete, "message shop.v1.A: message Inner was deleted".to_string()),
            (Rule::MessageNoDelete, "package shop.v1: message B was deleted".to_string()),
            (Rule::EnumNoDelete, "message shop.v1.A: enum Kind was deleted".to_string()),
            (Rule::EnumNoDelete, "package shop.v1: enum E was deleted".to_string()),
        ]
    );
    let top = found.iter().find(|b| b.what == "message B was deleted").unwrap();
    assert_eq!(top.tree, Tree::Old, "no parent left in the new tree: the old location");
}

const STATE: &str = "enum State {\n  STATE_UNSPECIFIED = 0;\n  STATE_ACTIVE = 1;\n  STATE_DONE = 2;\n}";

#[test]
fn enum_values_are_kept_or_reserved() {
    let deleted = "enum State {\n  STATE_UNSPECIFIED = 0;\n  STATE_ACTIVE = 1;\n}";
    let found = breaking(STATE, deleted);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::EnumValueNoDelete]);
    assert_eq!(found[0].what, "value 2 STATE_DONE was deleted");
    assert_eq!(found[0].fix.as_deref(), Some("add `reserved 2; reserved \"STATE_DONE\";` to the enum"));

    let reserved =
        "enum State {\n  reserved 2;\n  reserved \"STATE_DONE\";\n  STATE_UNSPECIFIED = 0;\n  STATE_ACTIVE = 1;\n}";
    assert_eq!(rules(STATE, reserved), []);

    let renamed = "enum State {\n  STATE_UNSPECIFIED = 0;\n  STATE_ACTIVE = 1;\n  STATE_FINISHED = 2;\n}";
    assert_eq!(rules(STATE, renamed), [Rule::EnumValueSameName]);

    let renumbered = "enum State {\n  STATE_UNSPECIFIED = 0;\n  STATE_ACTIVE = 1;\n  STATE_DONE = 3;\n}";
    assert_eq!(rules(STATE, renumbered), [Rule::EnumValueSameNumber]);

    let alias = "enum State {\n  option allow_alias = true;\n  STATE_UNSPECIFIED = 0;\n  STATE_ACTIVE = 1;\n  \
                 STATE_DONE = 2;\n  STATE_FINISHED = 2;\n}";
    assert_eq!(rules(STATE, alias), [], "an alias added beside the old name");
}

#[test]
fn reserved_numbers_and_names_stay_reserved() {
    let old = "message P {\n  reserved 2 to 4;\n  reserved \"gone\";\n  string id = 1;\n}";
    let new = "message P {\n  reserved 2;\n  string id = 1;\n  string gone = 3;\n}";
    let found = breaking(old, new);
    let whats: Vec<(&str, &str)> = found.iter().map(|b| (b.what.as_str(), b.new.as_str())).collect();
    assert_eq!(
        whats,
        [
            ("reserved number(s) 3 to 4 no longer reserved", "(no longer reserved, and reused by 3 \"gone\")"),
            ("reserved name \"gone\" no longer reserved", "(no longer reserved, and reused by 3 \"gone\")"),
        ]
    );
    assert!(found.iter().all(|b| b.rule == Rule::ReservedMessageNoDelete));

    let enum_old = "enum E {\n  reserved 5 to max;\n  E_UNSPECIFIED = 0;\n}";
    let enum_new = "enum E {\n  reserved 5 to 9;\n  E_UNSPECIFIED = 0;\n}";
    assert_eq!(rules(enum_old, enum_new), [Rule::ReservedEnumNoDelete]);
    assert_eq!(rules(enum_old, enum_old), [], "an inclusive `to max` range compares equal to itself");
}

const SERVICE: &str =
    "message Req {}\nmessage Res {}\nservice S {\n  rpc Get(Req) returns (Res);\n  rpc List(Req) returns (Res);\n}";

#[test]
fn services_and_methods_keep_their_shape() {
    let no_service = "message Req {}\nmessage Res {}";
    let found = breaking(SERVICE, no_service);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::ServiceNoDelete]);
    assert_eq!(
        found[0].to_string().lines().next(),
        Some("shop/v1/shop.proto:5 (old tree): SERVICE_NO_DELETE: package shop.v1: service S was deleted")
    );

    let no_method = "message Req {}\nmessage Res {}\nservice S {\n  rpc Get(Req) returns (Res);\n}";
    let found = breaking(SERVICE, no_method);
    assert_eq!(found.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::RpcNoDelete]);
    assert_eq!(found[0].old, "rpc List(shop.v1.Req) returns (shop.v1.Res) (at shop/v1/shop.proto:7)");

    let types = "message Req {}\nmessage Res {}\nmessage Other {}\nservice S {\n  rpc Get(Other) returns (Res);\n  \
                 rpc List(Req) returns (Other);\n}";
    assert_eq!(rules(SERVICE, types), [Rule::RpcSameRequestType, Rule::RpcSameResponseType]);

    let streaming = "message Req {}\nmessage Res {}\nservice S {\n  rpc Get(stream Req) returns (Res);\n  \
                     rpc List(Req) returns (stream Res);\n}";
    let found = breaking(SERVICE, streaming);
    let whats: Vec<&str> = found.iter().map(|b| b.what.as_str()).collect();
    assert_eq!(
        whats,
        ["Get changed its request from unary to streaming", "List changed its response from unary to streaming"]
    );
}

#[test]
fn moving_a_message_to_another_file_of_its_package_is_not_a_change() {
    let old = compile_sources([(FILE, "syntax = \"proto3\"; package shop.v1; message A { string id = 1; }")]).unwrap();
    let new = compile_sources([
        (FILE, "syntax = \"proto3\"; package shop.v1; import \"shop/v1/a.proto\"; message B { A a = 1; }"),
        ("shop/v1/a.proto", "syntax = \"proto3\"; package shop.v1; message A { string id = 1; }"),
    ])
    .unwrap();
    assert_eq!(compare(&old, &new, &Scope::All), []);
}

#[test]
fn the_scope_limits_the_check_to_its_packages() {
    let other = "other/v1/other.proto";
    let old = compile_sources([
        (FILE, "syntax = \"proto3\"; package shop.v1; message A { string id = 1; }"),
        (other, "syntax = \"proto3\"; package other.v1; message O { string id = 1; }"),
    ])
    .unwrap();
    let new = compile_sources([
        (FILE, "syntax = \"proto3\"; package shop.v1; message A { string id = 1; }"),
        (other, "syntax = \"proto3\"; package other.v1; message O {}"),
    ])
    .unwrap();
    let only = |p: &str| Scope::Packages(BTreeSet::from([p.to_string()]));
    assert_eq!(compare(&old, &new, &only("shop.v1")), []);
    assert_eq!(compare(&old, &new, &only("other.v1")).len(), 1);
    assert_eq!(compare(&old, &new, &Scope::All).len(), 1);
}

#[test]
fn a_type_from_another_package_is_compared_by_its_full_name() {
    let money_a = "syntax = \"proto3\"; package common.v1; message Money { int64 minor = 1; }";
    let money_b = "syntax = \"proto3\"; package common.v2; message Money { int64 minor = 1; }";
    let shop = |pkg: &str| {
        format!("syntax = \"proto3\"; package shop.v1; import \"common.proto\"; message P {{ {pkg}.Money price = 1; }}")
    };
    let (old_shop, new_shop) = (shop("common.v1"), shop("common.v2"));
    let old = compile_sources([(FILE, old_shop.as_str()), ("common.proto", money_a)]).unwrap();
    let new = compile_sources([(FILE, new_shop.as_str()), ("common.proto", money_b)]).unwrap();
    let found = compare(&old, &new, &Scope::Packages(BTreeSet::from(["shop.v1".to_string()])));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].what, "field 1 \"price\" changed type from common.v1.Money to common.v2.Money");
}

#[test]
fn custom_options_keep_their_extension_number_and_type() {
    let options = |body: &str| {
        format!("syntax = \"proto3\"; package shop.v1; import \"google/protobuf/descriptor.proto\";\n{body}")
    };
    let old = options(
        "message Callers { repeated string allow = 1; }\nextend google.protobuf.MethodOptions { Callers callers = 51001; }",
    );
    let compile = |src: &str| compile_sources([(FILE, src)]).unwrap();
    let check = |new: &str| compare(&compile(&old), &compile(&options(new)), &Scope::All);

    assert_eq!(
        check(
            "message Callers { repeated string allow = 1; }\nextend google.protobuf.MethodOptions { Callers callers = 51001; }"
        ),
        []
    );
    let renumbered = check(
        "message Callers { repeated string allow = 1; }\nextend google.protobuf.MethodOptions { Callers callers = 51009; }",
    );
    assert_eq!(renumbered.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::FieldSameNumber]);
    assert_eq!(renumbered[0].element, "extension shop.v1.callers");
    let moved = check(
        "message Callers { repeated string allow = 1; }\nextend google.protobuf.ServiceOptions { Callers callers = 51001; }",
    );
    assert_eq!(moved.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::ExtensionSameExtendee]);
    let deleted = check("message Callers { repeated string allow = 1; }");
    assert_eq!(deleted.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::ExtensionNoDelete]);
    assert_eq!(deleted[0].what, "extension callers of google.protobuf.MethodOptions was deleted");
}

#[test]
fn a_package_of_extensions_only_is_still_a_package() {
    let set = compile_sources([(
        "opts.proto",
        "syntax = \"proto3\"; package opts.v1; import \"google/protobuf/descriptor.proto\";\n\
         extend google.protobuf.FileOptions { string owner = 50001; }",
    )])
    .unwrap();
    assert!(crate::Index::build(&set).packages.contains("opts.v1"));
}
