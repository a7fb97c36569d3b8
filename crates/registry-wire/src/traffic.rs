//! Traffic policy: which versions of a service receive which share of its
//! requests, what keeps a caller on one version, and which versions may be
//! asked for by name. The registry owns and validates policies; every client's
//! balancer applies them (`balance`). Pure: no I/O here.
//!
//! A version is picked by a stable hash of the request's sticky key (the user,
//! else the API client, else nothing: random) into the weights, laid end to
//! end in version order. One user keeps one version while the weights stand;
//! when they change, only the users whose point the boundary crossed move
//! (with two versions, raising the new one's weight only ever moves users to it).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use kit_core::error::DomainError;

/// Request metadata asking for a version by name (smoke tests before any user
/// traffic): `v2` (every service that has a version `v2`) or
/// `products=v2,orders=v7` (those services only).
/// What an instance that gives no version is recorded as.
pub const UNKNOWN_VERSION: &str = "unknown";
/// The track of an instance that gives none.
pub const DEFAULT_TRACK: &str = "stable";

pub const VERSION_OVERRIDE: &str = "x-shopfast-version";
/// Response metadata: the version of the instance that answered.
pub const SERVED_VERSION: &str = "x-shopfast-served-version";
/// Request metadata naming the signed-in user and the API client (asserted by
/// the gateway; see `access`).
pub const USER_ID: &str = "x-user-id";
pub const CLIENT_ID: &str = "x-client-id";

/// Weights are whole percents; a point on the line is one of 10,000.
const POINTS: u64 = 10_000;
const POINTS_PER_PERCENT: u32 = 100;
/// At most this many versions in one policy.
pub const MAX_VERSIONS: usize = 16;

/// What keeps a caller on one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// The user when the request carries one, else the API client, else random.
    #[default]
    User,
    /// The API client, else random.
    Client,
    /// Every request drawn at random (exact shares).
    None,
}

/// A change of policy as an operator (or the deploy controller) sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// Version → percent of requests; every version named, the sum 100.
    pub weights: BTreeMap<String, u32>,
    #[serde(default)]
    pub sticky: Sticky,
    /// Versions that may be asked for by name (`x-shopfast-version`);
    /// default: every version in `weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridable: Option<Vec<String>>,
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: String,
    /// Compare-and-set: applied only if the current policy's index is this
    /// (0: only if there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_index: Option<u64>,
}

/// A service's policy as the registry keeps it and clients receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    pub service: String,
    pub weights: BTreeMap<String, u32>,
    #[serde(default)]
    pub sticky: Sticky,
    #[serde(default)]
    pub overridable: Vec<String>,
    /// The registry index of the write that made it.
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub updated_at_ms: i64,
    #[serde(default)]
    pub updated_by: String,
    #[serde(default)]
    pub reason: String,
}

/// Whether `text` may name a version: 1-64 of `[A-Za-z0-9._+-]`.
pub fn valid_version(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// Whether `text` may name a track (`blue`, `canary`): 1-32 of `[a-z0-9-]`.
pub fn valid_track(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The version an instance registers: the configured one, checked, else
/// the build's own.
pub fn configured_version(configured: Option<&str>) -> Result<String, String> {
    match configured {
        None => Ok(kit_core::build::version().to_string()),
        Some(v) if valid_version(v) => Ok(v.to_string()),
        Some(v) => Err(format!("version {v:?} must be 1-64 of [A-Za-z0-9._+-]")),
    }
}

/// The track an instance registers: the configured one, checked, else `stable`.
pub fn configured_track(configured: Option<&str>) -> Result<String, String> {
    match configured {
        None => Ok(DEFAULT_TRACK.to_string()),
        Some(t) if valid_track(t) => Ok(t.to_string()),
        Some(t) => Err(format!("track {t:?} must be 1-32 of [a-z0-9-]")),
    }
}

/// Checks a change against the versions the service has registered; returns
/// the versions that may be overridden (sorted, no repeats).
pub fn validate(change: &PolicyChange, registered: &BTreeSet<String>) -> Result<Vec<String>, DomainError> {
    if change.weights.is_empty() {
        return Err(DomainError::invalid("weights must name at least one version"));
    }
    if change.weights.len() > MAX_VERSIONS {
        return Err(DomainError::invalid(format!("at most {MAX_VERSIONS} versions in a policy")));
    }
    if change.reason.len() > 256 {
        return Err(DomainError::invalid("reason must be at most 256 bytes"));
    }
    let mut total: u64 = 0;
    for (version, weight) in &change.weights {
        if !valid_version(version) {
            return Err(DomainError::invalid(format!("version {version:?} must be 1-64 of [A-Za-z0-9._+-]")));
        }
        if *weight > 100 {
            return Err(DomainError::invalid(format!("weight of {version} is {weight}; weights are percents, 0-100")));
        }
        total += u64::from(*weight);
    }
    if total != 100 {
        return Err(DomainError::invalid(format!("weights must sum to 100, not {total}")));
    }
    let overridable: BTreeSet<String> = match &change.overridable {
        Some(list) => list.iter().cloned().collect(),
        None => change.weights.keys().cloned().collect(),
    };
    if overridable.len() > MAX_VERSIONS {
        return Err(DomainError::invalid(format!("at most {MAX_VERSIONS} overridable versions")));
    }
    for version in change.weights.keys().chain(overridable.iter()) {
        if !valid_version(version) {
            return Err(DomainError::invalid(format!("version {version:?} must be 1-64 of [A-Za-z0-9._+-]")));
        }
        if !registered.contains(version) {
            let known: Vec<&str> = registered.iter().map(String::as_str).collect();
            return Err(DomainError::invalid(format!(
                "no instance of version {version} is registered (registered: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
    }
    Ok(overridable.into_iter().collect())
}

/// A stable 64-bit hash (FNV-1a, then MurmurHash3's finaliser to spread
/// short keys): the same in every process and every build, which Rust's
/// `DefaultHasher` does not promise.
pub fn stable_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// A policy made ready for picking, per request, without allocating.
#[derive(Debug)]
pub struct Router {
    policy: TrafficPolicy,
    /// Versions in order, each with the end (exclusive) of its span of points.
    spans: Vec<(Arc<str>, u32)>,
}

/// How a request asks for a version by name, for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override<'a> {
    None,
    /// `service=version`: that version or nothing.
    Named(&'a str),
    /// A bare `version`: that version where the service has it.
    IfKnown(&'a str),
}

/// Reads `x-shopfast-version` for `service`; anything unreadable is no override.
pub fn override_for<'a>(header: Option<&'a str>, service: &str) -> Override<'a> {
    let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else { return Override::None };
    if !header.contains('=') {
        return if valid_version(header) { Override::IfKnown(header) } else { Override::None };
    }
    for pair in header.split(',') {
        if let Some((name, version)) = pair.split_once('=')
            && name.trim() == service
            && valid_version(version.trim())
        {
            return Override::Named(version.trim());
        }
    }
    Override::None
}

/// Checks a whole `x-shopfast-version` value (at the edge: a clear 400 rather
/// than an override silently ignored).
pub fn valid_override(header: &str) -> bool {
    let header = header.trim();
    if !header.contains('=') {
        return valid_version(header);
    }
    header.len() <= 512
        && header.split(',').all(|pair| {
            pair.split_once('=').is_some_and(|(name, version)| {
                let name = name.trim();
                !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && valid_version(version.trim())
            })
        })
}

impl Router {
    pub fn new(policy: TrafficPolicy) -> Self {
        let mut end = 0u32;
        let spans = policy
            .weights
            .iter()
            .map(|(version, weight)| {
                end += weight * POINTS_PER_PERCENT;
                (Arc::<str>::from(version.as_str()), end)
            })
            .collect();
        Self { policy, spans }
    }

    pub fn policy(&self) -> &TrafficPolicy {
        &self.policy
    }

    pub fn index(&self) -> u64 {
        self.policy.index
    }

    /// The key that keeps this request on one version, if the policy wants one.
    pub fn sticky_key<'a>(&self, user: Option<&'a str>, client: Option<&'a str>) -> Option<&'a str> {
        match self.policy.sticky {
            Sticky::User => user.or(client),
            Sticky::Client => client,
            Sticky::None => None,
        }
    }

    /// The point of a request: its key's, else `random`'s.
    pub fn point(key: Option<&str>, random: u64) -> u32 {
        (key.map_or(random, stable_hash) % POINTS) as u32
    }

    /// The version whose span holds `point`.
    pub fn choose(&self, point: u32) -> Option<&Arc<str>> {
        self.spans.iter().find(|(_, end)| point < *end).map(|(version, _)| version)
    }

    /// When the chosen version cannot serve: one of the others with weight
    /// whose instances can (`serves`), picked in proportion to the weights
    /// by the same point, so a user's fallback is stable too.
    pub fn fallback(&self, point: u32, serves: impl Fn(&str) -> bool) -> Option<&Arc<str>> {
        let alive: Vec<(&Arc<str>, u32)> =
            self.weights().filter(|(version, weight)| *weight > 0 && serves(version)).collect();
        let total: u32 = alive.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut at = (u64::from(point) * u64::from(total) / POINTS) as u32;
        for (version, weight) in alive {
            if at < weight {
                return Some(version);
            }
            at -= weight;
        }
        None
    }

    fn weights(&self) -> impl Iterator<Item = (&Arc<str>, u32)> {
        let mut start = 0;
        self.spans.iter().map(move |(version, end)| {
            let weight = (end - start) / POINTS_PER_PERCENT;
            start = *end;
            (version, weight)
        })
    }

    /// Whether the policy names `version` at all.
    pub fn knows(&self, version: &str) -> bool {
        self.policy.weights.contains_key(version) || self.may_override(version)
    }

    pub fn may_override(&self, version: &str) -> bool {
        self.policy.overridable.iter().any(|v| v == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(versions: &[&str]) -> BTreeSet<String> {
        versions.iter().map(|v| v.to_string()).collect()
    }

    fn change(weights: &[(&str, u32)]) -> PolicyChange {
        PolicyChange {
            weights: weights.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
            sticky: Sticky::User,
            overridable: None,
            reason: String::new(),
            if_index: None,
        }
    }

    fn router(weights: &[(&str, u32)], sticky: Sticky) -> Router {
        let change = change(weights);
        Router::new(TrafficPolicy {
            service: "products".into(),
            weights: change.weights.clone(),
            sticky,
            overridable: change.weights.keys().cloned().collect(),
            index: 1,
            updated_at_ms: 0,
            updated_by: String::new(),
            reason: String::new(),
        })
    }

    #[test]
    fn policies_are_validated_against_the_registered_versions() {
        let known = registered(&["v1", "v2"]);
        assert_eq!(validate(&change(&[("v1", 90), ("v2", 10)]), &known).unwrap(), vec!["v1", "v2"]);
        assert!(validate(&change(&[("v1", 100), ("v2", 0)]), &known).is_ok(), "weight 0 is allowed");
        for (bad, why) in [
            (change(&[]), "at least one"),
            (change(&[("v1", 90), ("v2", 9)]), "sum to 100, not 99"),
            (change(&[("v1", 101)]), "0-100"),
            (change(&[("v1", 50), ("v3", 50)]), "no instance of version v3"),
            (change(&[("bad version", 100)]), "must be 1-64"),
            (PolicyChange { overridable: Some(vec!["v9".into()]), ..change(&[("v1", 100)]) }, "v9"),
            (PolicyChange { reason: "x".repeat(300), ..change(&[("v1", 100)]) }, "reason"),
        ] {
            let err = validate(&bad, &known).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Fixed values: a change here would move every user to another version.
        assert_eq!(stable_hash(""), stable_hash(""));
        assert_eq!(stable_hash("user-1") % 10_000, stable_hash("user-1") % 10_000);
        assert_ne!(stable_hash("user-1"), stable_hash("user-2"));
        assert_eq!(stable_hash("a"), 9_413_272_369_427_828_315, "FNV-1a (0xaf63dc4c8601ec8c) + fmix64 of \"a\"");
    }

    #[test]
    fn keyed_points_split_users_by_the_weights_and_keep_them() {
        let split = router(&[("v1", 25), ("v2", 75)], Sticky::User);
        let mut on_v1 = 0;
        for user in 0..10_000 {
            let key = format!("user-{user}");
            let version = split.choose(Router::point(Some(&key), rand::random())).unwrap();
            assert_eq!(version, split.choose(Router::point(Some(&key), rand::random())).unwrap(), "sticky");
            on_v1 += usize::from(&**version == "v1");
        }
        assert!((2_300..=2_700).contains(&on_v1), "{on_v1} of 10,000 on the 25 % version");
    }

    #[test]
    fn raising_the_new_versions_weight_only_moves_users_to_it() {
        let before = router(&[("v1", 90), ("v2", 10)], Sticky::User);
        let after = router(&[("v1", 50), ("v2", 50)], Sticky::User);
        for user in 0..5_000 {
            let point = Router::point(Some(&format!("u{user}")), 0);
            if &**before.choose(point).unwrap() == "v2" {
                assert_eq!(&**after.choose(point).unwrap(), "v2");
            }
        }
    }

    #[test]
    fn fallback_spreads_by_the_remaining_weights() {
        let three = router(&[("a", 50), ("b", 30), ("c", 20)], Sticky::None);
        let mut counts = BTreeMap::new();
        for point in 0..10_000 {
            let version = three.fallback(point, |v| v != "a").unwrap();
            *counts.entry(version.to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("b"), Some(&6_000));
        assert_eq!(counts.get("c"), Some(&4_000));
        assert!(three.fallback(5, |_| false).is_none());
        let zero = router(&[("a", 100), ("b", 0)], Sticky::None);
        assert!(zero.fallback(5, |v| v == "b").is_none(), "weight 0 is no fallback");
    }

    #[test]
    fn sticky_keys_follow_the_policy() {
        assert_eq!(router(&[("a", 100)], Sticky::User).sticky_key(Some("u"), Some("c")), Some("u"));
        assert_eq!(router(&[("a", 100)], Sticky::User).sticky_key(None, Some("c")), Some("c"));
        assert_eq!(router(&[("a", 100)], Sticky::Client).sticky_key(Some("u"), Some("c")), Some("c"));
        assert_eq!(router(&[("a", 100)], Sticky::None).sticky_key(Some("u"), Some("c")), None);
    }

    #[test]
    fn overrides_are_read_per_service() {
        assert_eq!(override_for(Some("v2"), "products"), Override::IfKnown("v2"));
        assert_eq!(override_for(Some("products=v2,orders=v3"), "orders"), Override::Named("v3"));
        assert_eq!(override_for(Some("orders=v3"), "products"), Override::None);
        assert_eq!(override_for(Some("bad value!"), "products"), Override::None);
        assert_eq!(override_for(None, "products"), Override::None);
        assert!(valid_override("v2") && valid_override("products=v2, orders=1.2.3+abc"));
        for bad in ["", "v 2", "products=", "=v2", "Products=v2", "products=v2,", "a=b=c"] {
            assert!(!valid_override(bad), "{bad:?}");
        }
    }
}
