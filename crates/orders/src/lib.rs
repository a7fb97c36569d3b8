//! The Orders service's rules and persistence: the order state machine,
//! pricing in minor units, orders and their line items, the saga store the
//! order saga persists through, and the transactional outbox.
//!
//! (The gRPC API, the saga's steps and the fulfilment worker build on these.)
pub mod domain;
pub mod store;
