//! The registry's JSON wire types, shared by the registry (server) and the
//! discovery client.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    /// Serving, but worse than usual; still returned by lookups.
    Degraded,
    /// Reported by the instance itself; not returned by lookups.
    Unhealthy,
    /// Leaving: not returned by lookups, removed after the drain grace.
    Draining,
}

impl Health {
    pub fn routable(self) -> bool {
        matches!(self, Health::Healthy | Health::Degraded)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Keep the same id across re-registrations; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// Where the gRPC server listens, `host:port`.
    pub address: String,
    /// Where admin HTTP listens (`/health/ready`, `/metrics`), `host:port`.
    #[serde(default)]
    pub admin_address: String,
    /// The build it runs (`0.1.0+1a2b3c4d5e6f`, or as deployed: `v2`);
    /// traffic policies route by it. Empty: the registry records `unknown`.
    #[serde(default)]
    pub version: String,
    /// Its deployment track (`stable`, `blue`, `green`, `canary`); empty: `stable`.
    #[serde(default)]
    pub track: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Option<Health>,
}

pub use crate::traffic::{DEFAULT_TRACK, UNKNOWN_VERSION};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub id: String,
    pub heartbeat_interval_ms: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub health: Option<Health>,
}

/// What a client needs to know of an instance (the registry sends more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub admin_address: String,
    pub health: Health,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub track: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub registered_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    pub index: u64,
    pub instances: Vec<InstanceInfo>,
    /// The service's traffic policy (a service lookup only); none: every
    /// routable instance alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::traffic::TrafficPolicy>,
    /// The registry started moments ago without durable storage: instances
    /// registered before are still coming back. What it lists is a part.
    #[serde(default)]
    pub warming: bool,
}
