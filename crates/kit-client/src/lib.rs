//! How one process calls another: discovery through the registry
//! (`discovery`), the power-of-two-choices balancer with outlier ejection
//! (`balance`) over HTTP/2 connections (`h2_client`, `coalesce`), the guard
//! every call goes through (`guard`: deadline, bulkhead, breaker), call
//! routing by version (`routing`) and a tonic channel over all of it
//! (`channel`).
pub mod balance;
pub mod channel;
pub mod coalesce;
pub mod discovery;
pub mod guard;
pub mod h2_client;
pub mod routing;
