//! One breaking change, as reported: where, which rule (buf's names, so a
//! reader who knows buf knows what each means), what changed, old against new.
use std::fmt;

use crate::index::Loc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    MessageNoDelete,
    FieldNoDelete,
    FieldSameNumber,
    FieldSameName,
    FieldSameJsonName,
    FieldSameType,
    FieldSameCardinality,
    FieldSameOneof,
    ReservedMessageNoDelete,
    EnumNoDelete,
    EnumValueNoDelete,
    EnumValueSameNumber,
    EnumValueSameName,
    ReservedEnumNoDelete,
    ServiceNoDelete,
    RpcNoDelete,
    RpcSameRequestType,
    RpcSameResponseType,
    RpcSameClientStreaming,
    RpcSameServerStreaming,
    ExtensionNoDelete,
    ExtensionSameExtendee,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MessageNoDelete => "MESSAGE_NO_DELETE",
            Rule::FieldNoDelete => "FIELD_NO_DELETE",
            Rule::FieldSameNumber => "FIELD_SAME_NUMBER",
            Rule::FieldSameName => "FIELD_SAME_NAME",
            Rule::FieldSameJsonName => "FIELD_SAME_JSON_NAME",
            Rule::FieldSameType => "FIELD_SAME_TYPE",
            Rule::FieldSameCardinality => "FIELD_SAME_CARDINALITY",
            Rule::FieldSameOneof => "FIELD_SAME_ONEOF",
            Rule::ReservedMessageNoDelete => "RESERVED_MESSAGE_NO_DELETE",
            Rule::EnumNoDelete => "ENUM_NO_DELETE",
            Rule::EnumValueNoDelete => "ENUM_VALUE_NO_DELETE",
            Rule::EnumValueSameNumber => "ENUM_VALUE_SAME_NUMBER",
            Rule::EnumValueSameName => "ENUM_VALUE_SAME_NAME",
            Rule::ReservedEnumNoDelete => "RESERVED_ENUM_NO_DELETE",
            Rule::ServiceNoDelete => "SERVICE_NO_DELETE",
            Rule::RpcNoDelete => "RPC_NO_DELETE",
            Rule::RpcSameRequestType => "RPC_SAME_REQUEST_TYPE",
            Rule::RpcSameResponseType => "RPC_SAME_RESPONSE_TYPE",
            Rule::RpcSameClientStreaming => "RPC_SAME_CLIENT_STREAMING",
            Rule::RpcSameServerStreaming => "RPC_SAME_SERVER_STREAMING",
            Rule::ExtensionNoDelete => "EXTENSION_NO_DELETE",
            Rule::ExtensionSameExtendee => "EXTENSION_SAME_EXTENDEE",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tree {
    Old,
    New,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    pub rule: Rule,
    /// In the new tree where the element (or, once deleted, its parent) is;
    /// in the old tree for what has no parent left.
    pub loc: Loc,
    pub tree: Tree,
    /// The enclosing element: `message shopfast.products.v1.Product`.
    pub element: String,
    /// What happened to it: `field 6 "price" was deleted`.
    pub what: String,
    pub old: String,
    pub new: String,
    /// How to make the change compatible, where there is a way.
    pub fix: Option<String>,
}

impl Breaking {
    /// An element that is gone, with no compatible way to delete it.
    pub fn deleted(rule: Rule, (loc, tree): (Loc, Tree), element: String, what: String, old: String) -> Self {
        Self { rule, loc, tree, element, what, old, new: "(deleted)".to_string(), fix: None }
    }
}

impl fmt::Display for Breaking {
    /// ```text
    /// shopfast/products/v1/products.proto:66: FIELD_NO_DELETE: message shopfast.products.v1.Product: field 6 "price" was deleted
    ///     old: shopfast.common.v1.Money price = 6
    ///     new: (deleted; neither the number nor the name is reserved)
    ///     fix: keep `reserved 6; reserved "price";` in the message
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tree = match self.tree {
            Tree::Old => " (old tree)",
            Tree::New => "",
        };
        writeln!(f, "{}{tree}: {}: {}: {}", self.loc, self.rule, self.element, self.what)?;
        writeln!(f, "    old: {}", self.old)?;
        write!(f, "    new: {}", self.new)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}
