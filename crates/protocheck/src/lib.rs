//! The contract check: two proto trees (the one on main, the one proposed)
//! compiled with protox into descriptor sets and compared with buf's
//! breaking-change rules for wire and JSON compatibility — deleted messages,
//! fields, enum values, services and methods; a field's number, name, JSON
//! name, type, cardinality or oneof changed; a method's request, response or
//! streaming changed; reserved numbers and names dropped. A field or enum
//! value may be deleted only once its number and name are reserved.
//!
//! `protocheck --old DIR --new DIR [--package shopfast.products.v1]` is the
//! command (`src/main.rs`); `scripts/pipeline.sh` runs it per service.
pub mod index;
mod report;
mod rules;
mod tree;

#[cfg(test)]
mod tests;

use prost_types::FileDescriptorSet;

pub use index::{Index, Loc};
pub use report::{Breaking, Rule, Tree};
pub use rules::{Scope, check};
pub use tree::{Error, compile_dir, compile_sources};

/// The breaking changes from `old` to `new` within `scope`.
pub fn compare(old: &FileDescriptorSet, new: &FileDescriptorSet, scope: &Scope) -> Vec<Breaking> {
    check(&Index::build(old), &Index::build(new), scope)
}
