//! The Orders service's rules and persistence: the order state machine,
//! pricing in minor units, orders and their line items, the saga store the
//! order saga persists through, and the transactional outbox.
//!
//! `fulfilment` ships and delivers paid orders from the outbox; `steps` are
//! the order saga's five steps over gRPC. (The gRPC API builds on these.)
pub mod domain;
pub mod fulfilment;
pub mod steps;
pub mod store;
