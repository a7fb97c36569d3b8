//! What the registry and its clients say to each other, shared by both
//! sides: instances and their health (`wire`), and the traffic policy that
//! splits a service's calls between versions (`traffic`).
pub mod traffic;
pub mod wire;
