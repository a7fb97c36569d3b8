//! The registry's rules over any `Store`: registration, heartbeats, draining,
//! expiry with a last-chance readiness probe, and the audit trail. Time comes
//! in as an argument so tests drive it.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kit_core::error::DomainError;
use registry_wire::traffic::{PolicyChange, TrafficPolicy};
use registry_wire::wire::{DEFAULT_TRACK, UNKNOWN_VERSION};

use crate::model::{
    Health, Instance, RegisterRequest, RegisterResponse, ServiceSummary, valid_service_name, validate_registration,
};
use crate::store::{AuditEvent, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    /// How often instances are told to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Silence after which an instance is probed and, failing that, drained.
    pub ttl_ms: u64,
    /// How long a draining instance stays listed (not routable) before removal.
    pub drain_grace_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self { heartbeat_interval_ms: 15_000, ttl_ms: 45_000, drain_grace_ms: 30_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A policy in one line, for the audit log: `v1=90 v2=10 sticky=user by operator: why`.
fn describe(policy: &TrafficPolicy) -> String {
    let weights: Vec<String> = policy.weights.iter().map(|(v, w)| format!("{v}={w}")).collect();
    let sticky = serde_json::to_value(policy.sticky).ok().and_then(|v| v.as_str().map(str::to_string));
    let mut text = format!("{} sticky={} by {}", weights.join(" "), sticky.unwrap_or_default(), policy.updated_by);
    if !policy.reason.is_empty() {
        text.push_str(": ");
        text.push_str(&policy.reason);
    }
    text
}

/// The live policy as gauges, `traffic_policy_weight{service,version}`;
/// versions of `before` no longer in it drop to 0 rather than linger at
/// their last weight (a gauge cannot be deleted through the facade).
fn export_weights(service: &str, before: Option<&TrafficPolicy>, now: Option<&TrafficPolicy>) {
    let gauge = |version: &str| metrics::gauge!("traffic_policy_weight", "service" => service.to_string(), "version" => version.to_string());
    for version in before.iter().flat_map(|p| p.weights.keys()) {
        if now.is_none_or(|p| !p.weights.contains_key(version)) {
            gauge(version).set(0.0);
        }
    }
    for (version, weight) in now.iter().flat_map(|p| p.weights.iter()) {
        gauge(version).set(f64::from(*weight));
    }
}

/// Asks an instance's `/health/ready` once before it is expired.
#[async_trait::async_trait]
pub trait Prober: Send + Sync + 'static {
    async fn ready(&self, admin_address: &str) -> bool;
}

/// The HTTP prober used in production.
pub struct HttpProber {
    http: reqwest::Client,
}

impl HttpProber {
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
        Self { http }
    }
}

#[async_trait::async_trait]
impl Prober for HttpProber {
    async fn ready(&self, admin_address: &str) -> bool {
        if admin_address.is_empty() {
            return false;
        }
        let url = format!("http://{admin_address}/health/ready");
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }
}

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    prober: Arc<dyn Prober>,
    timing: Timing,
    /// Writes need the identity of the service they concern (mutual TLS).
    secured: bool,
    /// Until then (ms since the epoch) a freshly started registry without
    /// durable storage is still hearing from the instances that were
    /// registered before it started: its lookups say so (`warming`), and
    /// clients add what they knew to what it says rather than dropping it.
    warm_until_ms: i64,
    /// Blocking queries parked right now (`registry_watchers`).
    watchers: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a parked blocking query for as long as it waits (dropped when it
/// is answered or its client goes away).
struct Watching(Arc<std::sync::atomic::AtomicUsize>);

impl Watching {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        let now = count.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        metrics::gauge!("registry_watchers").set(now as f64);
        Self(count.clone())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) - 1;
        metrics::gauge!("registry_watchers").set(now as f64);
    }
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, prober: Arc<dyn Prober>, timing: Timing) -> Self {
        Self { store, prober, timing, secured: false, warm_until_ms: 0, watchers: Default::default() }
    }

    /// Waits until the registry's revision passes `after` or `timeout` ends
    /// (a blocking query); the revision then.
    pub async fn wait_for_change(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let _watching = Watching::new(&self.watchers);
        self.store.wait_for_change(after, timeout).await
    }

    /// How many blocking queries are parked right now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Started at `now` without durable storage: instances come back within
    /// a heartbeat interval (they register again when their heartbeat is
    /// refused), and lookups answer `warming` until then.
    pub fn warming_from(mut self, now: i64) -> Self {
        self.warm_until_ms = now + self.timing.heartbeat_interval_ms as i64 + 1_000;
        self
    }

    /// How long it is still warming up, if it is.
    pub fn warming(&self, now: i64) -> Option<Duration> {
        let left = self.warm_until_ms - now;
        (left > 0).then(|| Duration::from_millis(left as u64))
    }

    /// Registrations and changes accepted only from the service's own identity.
    pub fn requiring_identities(mut self) -> Self {
        self.secured = true;
        self
    }

    pub fn secured(&self) -> bool {
        self.secured
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The longest an instance may go without a write before storage may drop it.
    fn lease(&self) -> Duration {
        Duration::from_millis(2 * (self.timing.ttl_ms + self.timing.drain_grace_ms))
    }

    async fn audit(
        &self,
        now: i64,
        event: &'static str,
        instance: &Instance,
        detail: impl Into<String>,
    ) -> Result<(), StoreError> {
        let detail = detail.into();
        tracing::info!(event, instance_id = %instance.id, service = %instance.name, address = %instance.address, detail = %detail, "registry change");
        metrics::counter!("registry_changes_total", "event" => event).increment(1);
        self.store
            .record(AuditEvent {
                at_ms: now,
                event,
                instance_id: instance.id.clone(),
                name: instance.name.clone(),
                detail,
            })
            .await
    }

    pub async fn register(&self, request: RegisterRequest, now: i64) -> Result<RegisterResponse, RegistryError> {
        validate_registration(&request)?;
        let id = request.id.clone().unwrap_or_else(|| format!("{}-{}", request.name, uuid::Uuid::now_v7().simple()));
        let previous = self.store.get(&id).await?;
        if let Some(previous) = &previous
            && previous.name != request.name
        {
            return Err(
                DomainError::AlreadyExists(format!("instance id {id} belongs to service {}", previous.name)).into()
            );
        }
        let instance = Instance {
            id: id.clone(),
            name: request.name,
            address: request.address,
            admin_address: request.admin_address,
            health: request.health.unwrap_or(Health::Healthy),
            version: Some(request.version).filter(|v| !v.is_empty()).unwrap_or_else(|| UNKNOWN_VERSION.into()),
            track: Some(request.track).filter(|t| !t.is_empty()).unwrap_or_else(|| DEFAULT_TRACK.into()),
            metadata: request.metadata,
            registered_at_ms: now,
            last_seen_ms: now,
            draining_since_ms: None,
            drain_reason: None,
        };
        self.store.put(&instance, self.lease()).await?;
        let event = if previous.is_some() { "reregistered" } else { "registered" };
        let detail = format!("address {} version {} track {}", instance.address, instance.version, instance.track);
        self.audit(now, event, &instance, detail).await?;
        Ok(RegisterResponse {
            id,
            heartbeat_interval_ms: self.timing.heartbeat_interval_ms,
            ttl_ms: self.timing.ttl_ms,
        })
    }

    /// NOT_FOUND tells the instance to register again (e.g. after a registry restart).
    pub async fn heartbeat(&self, id: &str, health: Option<Health>, now: i64) -> Result<Instance, RegistryError> {
        let Some(mut instance) = self.store.get(id).await? else {
            return Err(DomainError::NotFound(format!("instance {id} is not registered")).into());
        };
        if health == Some(Health::Draining) {
            return Err(DomainError::invalid("drain with POST /v1/instances/{id}/drain").into());
        }
        instance.last_seen_ms = now;
        let revived = instance.drain_reason.as_deref() == Some("heartbeat timeout");
        if revived {
            instance.health = Health::Healthy;
            instance.draining_since_ms = None;
            instance.drain_reason = None;
        }
        let changed_health = match health {
            Some(h) if instance.health != Health::Draining && h != instance.health => {
                let from = instance.health;
                instance.health = h;
                Some(from)
            }
            _ => None,
        };
        self.store.put(&instance, self.lease()).await?;
        if revived {
            self.audit(now, "revived", &instance, "heartbeats resumed while draining").await?;
        }
        if let Some(from) = changed_health {
            self.audit(now, "health", &instance, format!("{from:?} -> {:?}", instance.health).to_lowercase()).await?;
        }
        Ok(instance)
    }

    pub async fn deregister(&self, id: &str, now: i64) -> Result<Instance, RegistryError> {
        match self.store.remove(id).await? {
            Some(instance) => {
                self.audit(now, "deregistered", &instance, "explicit deregistration").await?;
                Ok(instance)
            }
            None => Err(DomainError::NotFound(format!("instance {id} is not registered")).into()),
        }
    }

    /// Stops routing to an instance; it is removed after the drain grace.
    pub async fn drain(&self, id: &str, reason: &str, now: i64) -> Result<Instance, RegistryError> {
        let Some(mut instance) = self.store.get(id).await? else {
            return Err(DomainError::NotFound(format!("instance {id} is not registered")).into());
        };
        if instance.health != Health::Draining {
            instance.health = Health::Draining;
            instance.draining_since_ms = Some(now);
            instance.drain_reason = Some(reason.to_string());
            self.store.put(&instance, self.lease()).await?;
            self.audit(now, "draining", &instance, reason).await?;
        }
        Ok(instance)
    }

    /// Routable instances of `name` whose metadata has every `filter` pair.
    pub async fn lookup(
        &self,
        name: &str,
        filter: &BTreeMap<String, String>,
        all: bool,
    ) -> Result<Vec<Instance>, RegistryError> {
        Ok(self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|i| i.name == name && (all || i.health.routable()) && i.matches(filter))
            .collect())
    }

    pub async fn services(&self) -> Result<Vec<ServiceSummary>, RegistryError> {
        let mut summary: BTreeMap<String, ServiceSummary> = BTreeMap::new();
        for instance in self.store.list().await? {
            let entry = summary.entry(instance.name.clone()).or_insert_with(|| ServiceSummary {
                name: instance.name.clone(),
                instances: 0,
                routable: 0,
                versions: BTreeMap::new(),
                weights: None,
            });
            entry.instances += 1;
            if instance.health.routable() {
                entry.routable += 1;
                *entry.versions.entry(instance.version.clone()).or_default() += 1;
            }
        }
        for policy in self.store.list_policies().await? {
            if let Some(entry) = summary.get_mut(&policy.service) {
                entry.weights = Some(policy.weights);
            }
        }
        Ok(summary.into_values().collect())
    }

    /// Sets a service's traffic policy: checked against the versions its
    /// instances registered (any health: a version at weight 0 may be all
    /// draining), audited, and delivered with the next lookups.
    pub async fn set_policy(
        &self,
        service: &str,
        change: PolicyChange,
        by: &str,
        now: i64,
    ) -> Result<TrafficPolicy, RegistryError> {
        if !valid_service_name(service) {
            return Err(DomainError::invalid("service must be 1-64 characters of a-z, 0-9 and '-'").into());
        }
        let registered: std::collections::BTreeSet<String> =
            self.store.list().await?.into_iter().filter(|i| i.name == service).map(|i| i.version).collect();
        if registered.is_empty() {
            return Err(DomainError::NotFound(format!("no instance of service {service} is registered")).into());
        }
        let overridable = registry_wire::traffic::validate(&change, &registered)?;
        let policy = TrafficPolicy {
            service: service.to_string(),
            weights: change.weights,
            sticky: change.sticky,
            overridable,
            index: 0,
            updated_at_ms: now,
            updated_by: by.to_string(),
            reason: change.reason,
        };
        let before = self.store.get_policy(service).await?;
        let stored = self.store.put_policy(&policy, change.if_index).await?;
        self.audit_policy(now, "policy", &stored, describe(&stored)).await?;
        export_weights(service, before.as_ref(), Some(&stored));
        Ok(stored)
    }

    /// Removes a service's policy: every routable instance alike again.
    pub async fn remove_policy(&self, service: &str, by: &str, now: i64) -> Result<TrafficPolicy, RegistryError> {
        let Some(removed) = self.store.remove_policy(service).await? else {
            return Err(DomainError::NotFound(format!("service {service} has no traffic policy")).into());
        };
        self.audit_policy(now, "policy_removed", &removed, format!("by {by}")).await?;
        export_weights(service, Some(&removed), None);
        Ok(removed)
    }

    async fn audit_policy(
        &self,
        now: i64,
        event: &'static str,
        policy: &TrafficPolicy,
        detail: String,
    ) -> Result<(), StoreError> {
        tracing::info!(event, service = %policy.service, index = policy.index, detail = %detail, "traffic policy change");
        metrics::counter!("registry_changes_total", "event" => event).increment(1);
        self.store
            .record(AuditEvent { at_ms: now, event, instance_id: String::new(), name: policy.service.clone(), detail })
            .await
    }

    /// One pass of expiry: silent instances are probed once and drained if
    /// not ready; draining instances past the grace are removed.
    pub async fn sweep(&self, now: i64) -> Result<(), RegistryError> {
        let ttl = self.timing.ttl_ms as i64;
        let grace = self.timing.drain_grace_ms as i64;
        for instance in self.store.list().await? {
            match instance.draining_since_ms {
                Some(since) if now - since >= grace => {
                    if let Some(removed) = self.store.remove(&instance.id).await? {
                        self.audit(now, "removed", &removed, format!("drained for {} ms", now - since)).await?;
                    }
                }
                Some(_) => {}
                None if now - instance.last_seen_ms >= ttl => {
                    if self.prober.ready(&instance.admin_address).await {
                        let mut kept = instance;
                        kept.last_seen_ms = now;
                        self.store.put(&kept, self.lease()).await?;
                        self.audit(now, "probe_kept", &kept, "missed heartbeats but /health/ready answered").await?;
                    } else {
                        self.drain(&instance.id, "heartbeat timeout", now).await?;
                    }
                }
                None => {}
            }
        }
        let instances = self.store.list().await?;
        let routable = instances.iter().filter(|i| i.health.routable()).count();
        metrics::gauge!("registry_instances", "state" => "routable").set(routable as f64);
        metrics::gauge!("registry_instances", "state" => "other").set((instances.len() - routable) as f64);
        Ok(())
    }
}
