//! What the registry stores and says, and the rules for valid registrations.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use kit_core::error::DomainError;

pub use registry_wire::wire::{Health, HeartbeatRequest, RegisterRequest, RegisterResponse};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    /// Where its gRPC server listens, `host:port`.
    pub address: String,
    /// Where its admin HTTP listens (`/health/ready`, `/metrics`), `host:port`.
    pub admin_address: String,
    pub health: Health,
    /// The build it runs; traffic policies route by it.
    #[serde(default = "unknown_version")]
    pub version: String,
    /// Its deployment track: stable, blue, green, canary, …
    #[serde(default = "default_track")]
    pub track: String,
    /// Free-form labels: zone, replica, restarts, …
    pub metadata: BTreeMap<String, String>,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
    /// Set while draining: when it started and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_reason: Option<String>,
}

fn unknown_version() -> String {
    registry_wire::wire::UNKNOWN_VERSION.to_string()
}

fn default_track() -> String {
    registry_wire::wire::DEFAULT_TRACK.to_string()
}

impl Instance {
    pub fn matches(&self, filter: &BTreeMap<String, String>) -> bool {
        filter.iter().all(|(k, v)| self.metadata.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: i64,
    /// registered, reregistered, deregistered, draining, removed, health, revived, probe_kept
    pub event: String,
    pub instance_id: String,
    pub name: String,
    pub detail: String,
}

/// One service in the overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: usize,
    pub routable: usize,
    /// Routable instances by version.
    #[serde(default)]
    pub versions: BTreeMap<String, usize>,
    /// Its traffic policy's weights, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, u32>>,
}

/// Whether `name` may name a service: 1-64 of a-z, 0-9 and '-'.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host.len() <= 253
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// Checks a registration: name, id, addresses, metadata and initial health.
pub fn validate_registration(request: &RegisterRequest) -> Result<(), DomainError> {
    if !valid_service_name(&request.name) {
        return Err(DomainError::invalid("name must be 1-64 characters of a-z, 0-9 and '-'"));
    }
    if !request.version.is_empty() && !registry_wire::traffic::valid_version(&request.version) {
        return Err(DomainError::invalid("version must be 1-64 of [A-Za-z0-9._+-]"));
    }
    if !request.track.is_empty() && !registry_wire::traffic::valid_track(&request.track) {
        return Err(DomainError::invalid("track must be 1-32 of [a-z0-9-]"));
    }
    if let Some(id) = &request.id
        && (id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) || id.contains('/'))
    {
        return Err(DomainError::invalid("id must be 1-128 printable characters without '/'"));
    }
    if !valid_host_port(&request.address) {
        return Err(DomainError::invalid("address must be host:port"));
    }
    if !request.admin_address.is_empty() && !valid_host_port(&request.admin_address) {
        return Err(DomainError::invalid("admin_address must be host:port"));
    }
    if request.metadata.len() > 32 {
        return Err(DomainError::invalid("at most 32 metadata entries"));
    }
    for (key, value) in &request.metadata {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !key_ok || value.len() > 256 {
            return Err(DomainError::invalid(format!(
                "metadata key {key:?} must be 1-63 of [A-Za-z0-9_.-] and values at most 256 bytes"
            )));
        }
    }
    if request.health == Some(Health::Draining) {
        return Err(DomainError::invalid("register as healthy, degraded or unhealthy; drain with /drain"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> RegisterRequest {
        RegisterRequest { name: "products".into(), address: "127.0.0.1:9002".into(), ..Default::default() }
    }

    #[test]
    fn registrations_are_validated() {
        assert!(validate_registration(&ok()).is_ok());
        let bad = [
            RegisterRequest { name: String::new(), ..ok() },
            RegisterRequest { name: "Products".into(), ..ok() },
            RegisterRequest { address: "nowhere".into(), ..ok() },
            RegisterRequest { address: "host:0".into(), ..ok() },
            RegisterRequest { address: "host:99999".into(), ..ok() },
            RegisterRequest { admin_address: ":80".into(), ..ok() },
            RegisterRequest { id: Some("a/b".into()), ..ok() },
            RegisterRequest { id: Some(String::new()), ..ok() },
            RegisterRequest { metadata: [("bad key".to_string(), "v".to_string())].into(), ..ok() },
            RegisterRequest { health: Some(Health::Draining), ..ok() },
            RegisterRequest { version: "v 2".into(), ..ok() },
            RegisterRequest { version: "x".repeat(65), ..ok() },
            RegisterRequest { track: "Blue".into(), ..ok() },
        ];
        for request in bad {
            assert!(validate_registration(&request).is_err(), "{request:?}");
        }
    }

    #[test]
    fn metadata_filters_match_all_pairs() {
        let instance = Instance {
            id: "i".into(),
            name: "p".into(),
            address: "a:1".into(),
            admin_address: String::new(),
            health: Health::Healthy,
            version: "v2".into(),
            track: "stable".into(),
            metadata: [("version".to_string(), "v2".to_string()), ("zone".to_string(), "a".to_string())].into(),
            registered_at_ms: 0,
            last_seen_ms: 0,
            draining_since_ms: None,
            drain_reason: None,
        };
        assert!(instance.matches(&BTreeMap::new()));
        assert!(instance.matches(&[("version".to_string(), "v2".to_string())].into()));
        assert!(!instance.matches(&[("version".to_string(), "v1".to_string())].into()));
    }
}
