//! The Orders service's rules and persistence: the order state machine,
//! pricing in minor units, orders and their line items, the saga store the
//! order saga persists through, and the transactional outbox.
//!
//! `fulfilment` ships and delivers paid orders from the outbox. (The gRPC API
//! and the saga's steps build on these.)
pub mod domain;
pub mod fulfilment;
pub mod store;
