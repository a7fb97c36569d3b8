//! The kinds of the outbox events an order's steps write, in one leaf module
//! so the steps that write them and the workers that handle them need not
//! know each other.

/// The order is paid: fulfilment may start (relayed to the queue).
pub const ORDER_PAID: &str = "order.paid";
/// The order shipped (relayed to the queue).
pub const ORDER_SHIPPED: &str = "order.shipped";
/// The events the relay publishes to the queue.
pub const RELAYED: &[&str] = &[ORDER_PAID, ORDER_SHIPPED];
/// A paid order's cancellation: its refund and restock are due.
pub const ORDER_CANCELLING: &str = "order.cancelling";
