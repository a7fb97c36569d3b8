//! Where the registry keeps instances and its audit log. Two backends pass the
//! same contract tests: `MemoryStore` (default, one registry process) and
//! `EtcdStore` (several registry processes sharing etcd).
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use registry_wire::traffic::TrafficPolicy;
use tokio::sync::watch;

use crate::model::{AuditEntry, Instance};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry storage unavailable: {0}")]
    Unavailable(String),
    #[error("registry storage returned bad data: {0}")]
    Corrupt(String),
    /// A compare-and-set write found another value.
    #[error("{0}")]
    Conflict(String),
}

/// An audit event before the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at_ms: i64,
    pub event: &'static str,
    pub instance_id: String,
    pub name: String,
    pub detail: String,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates or replaces an instance. `ttl_hint` is how long it may live
    /// without another put (the etcd backend attaches a lease of that length).
    async fn put(&self, instance: &Instance, ttl_hint: Duration) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Instance>, StoreError>;
    async fn remove(&self, id: &str) -> Result<Option<Instance>, StoreError>;
    async fn list(&self) -> Result<Vec<Instance>, StoreError>;
    async fn record(&self, event: AuditEvent) -> Result<(), StoreError>;
    /// Audit entries with `seq > after`, oldest first, at most `limit`.
    async fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Stores `policy` (its `index` is set to the write's revision and
    /// returned). With `if_index`, only if the current policy's index is
    /// that (0: only if there is none); `Conflict` otherwise.
    async fn put_policy(&self, policy: &TrafficPolicy, if_index: Option<u64>) -> Result<TrafficPolicy, StoreError>;
    async fn get_policy(&self, service: &str) -> Result<Option<TrafficPolicy>, StoreError>;
    async fn remove_policy(&self, service: &str) -> Result<Option<TrafficPolicy>, StoreError>;
    async fn list_policies(&self) -> Result<Vec<TrafficPolicy>, StoreError>;
    /// A number that grows with every change to the instances and policies.
    async fn revision(&self) -> Result<u64, StoreError>;
    /// Waits until the revision exceeds `after` or `timeout` passes; returns
    /// the revision then.
    async fn wait_for_change(&self, after: u64, timeout: Duration) -> Result<u64, StoreError>;
}

/// Kept in memory; the audit log keeps the newest `AUDIT_CAPACITY` entries.
/// Instances come back by themselves after a restart (they register again);
/// policies do not, so they may be kept in a file (`with_policy_file`).
pub struct MemoryStore {
    state: Mutex<MemoryState>,
    revision: watch::Sender<u64>,
    policy_file: Option<PathBuf>,
}

const AUDIT_CAPACITY: usize = 10_000;

#[derive(Default)]
struct MemoryState {
    instances: BTreeMap<String, Instance>,
    policies: BTreeMap<String, TrafficPolicy>,
    audit: VecDeque<AuditEntry>,
    next_seq: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self { state: Mutex::new(MemoryState::default()), revision: watch::Sender::new(0), policy_file: None }
    }
}

impl MemoryStore {
    /// Policies kept in `path` (JSON, replaced whole on every change) and
    /// loaded from it now: a restarted registry serves the policies it had,
    /// and its index continues after theirs (clients see it move forward).
    pub fn with_policy_file(path: PathBuf) -> Result<Self, StoreError> {
        let policies: Vec<TrafficPolicy> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("policy file {}: {e}", path.display())))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(StoreError::Unavailable(format!("policy file {}: {err}", path.display()))),
        };
        let last_index = policies.iter().map(|p| p.index).max().unwrap_or(0);
        let state = MemoryState {
            policies: policies.into_iter().map(|p| (p.service.clone(), p)).collect(),
            ..MemoryState::default()
        };
        Ok(Self { state: Mutex::new(state), revision: watch::Sender::new(last_index), policy_file: Some(path) })
    }

    /// Writes the policies to the file (a new file renamed over the old:
    /// never half written).
    fn save_policies(&self, policies: &[TrafficPolicy]) -> Result<(), StoreError> {
        let Some(path) = &self.policy_file else { return Ok(()) };
        let text = serde_json::to_vec_pretty(policies).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| StoreError::Unavailable(format!("policy file {}: {e}", path.display())))
    }

    /// Applies a policy change under the lock, bumps the revision and saves.
    fn change_policies<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, TrafficPolicy>, u64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.state.lock().map_err(|_| StoreError::Unavailable("state lock poisoned".into()))?;
        let mut policies = state.policies.clone();
        // The next revision is taken, not computed: instance writes bump it
        // too, without this lock. Watchers woken now wait for the lock, so
        // they read the change.
        let next = *self.revision.borrow() + 1;
        let result = change(&mut policies, next)?;
        let list: Vec<TrafficPolicy> = policies.values().cloned().collect();
        self.save_policies(&list)?;
        state.policies = policies;
        self.revision.send_modify(|r| *r = (*r + 1).max(next));
        Ok(result)
    }
    fn with_state<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, StoreError> {
        let mut state = self.state.lock().map_err(|_| StoreError::Unavailable("state lock poisoned".into()))?;
        Ok(f(&mut state))
    }

    fn bump(&self) {
        self.revision.send_modify(|r| *r += 1);
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn put(&self, instance: &Instance, _ttl_hint: Duration) -> Result<(), StoreError> {
        self.with_state(|s| s.instances.insert(instance.id.clone(), instance.clone()))?;
        self.bump();
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        self.with_state(|s| s.instances.get(id).cloned())
    }

    async fn remove(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        let removed = self.with_state(|s| s.instances.remove(id))?;
        if removed.is_some() {
            self.bump();
        }
        Ok(removed)
    }

    async fn list(&self) -> Result<Vec<Instance>, StoreError> {
        self.with_state(|s| s.instances.values().cloned().collect())
    }

    async fn record(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.with_state(|s| {
            s.next_seq += 1;
            s.audit.push_back(AuditEntry {
                seq: s.next_seq,
                at_ms: event.at_ms,
                event: event.event.to_string(),
                instance_id: event.instance_id,
                name: event.name,
                detail: event.detail,
            });
            if s.audit.len() > AUDIT_CAPACITY {
                s.audit.pop_front();
            }
        })
    }

    async fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_state(|s| s.audit.iter().filter(|e| e.seq > after).take(limit).cloned().collect())
    }

    async fn put_policy(&self, policy: &TrafficPolicy, if_index: Option<u64>) -> Result<TrafficPolicy, StoreError> {
        self.change_policies(|policies, next| {
            let current = policies.get(&policy.service).map_or(0, |p| p.index);
            if let Some(expected) = if_index
                && expected != current
            {
                return Err(StoreError::Conflict(format!(
                    "the policy of {} is at index {current}, not {expected}",
                    policy.service
                )));
            }
            let stored = TrafficPolicy { index: next, ..policy.clone() };
            policies.insert(policy.service.clone(), stored.clone());
            Ok(stored)
        })
    }

    async fn get_policy(&self, service: &str) -> Result<Option<TrafficPolicy>, StoreError> {
        self.with_state(|s| s.policies.get(service).cloned())
    }

    async fn remove_policy(&self, service: &str) -> Result<Option<TrafficPolicy>, StoreError> {
        if self.with_state(|s| !s.policies.contains_key(service))? {
            return Ok(None);
        }
        self.change_policies(|policies, _| Ok(policies.remove(service)))
    }

    async fn list_policies(&self) -> Result<Vec<TrafficPolicy>, StoreError> {
        self.with_state(|s| s.policies.values().cloned().collect())
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(*self.revision.borrow())
    }

    async fn wait_for_change(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r > after)).await;
        Ok(*rx.borrow())
    }
}
