//! Where the registry keeps instances and its audit log. Two backends pass the
//! same contract tests: `MemoryStore` (default, one registry process) and
//! `EtcdStore` (several registry processes sharing etcd).
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::model::{AuditEntry, Instance};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry storage unavailable: {0}")]
    Unavailable(String),
    #[error("registry storage returned bad data: {0}")]
    Corrupt(String),
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
    /// A number that grows with every change to the instances.
    async fn revision(&self) -> Result<u64, StoreError>;
    /// Waits until the revision exceeds `after` or `timeout` passes; returns
    /// the revision then.
    async fn wait_for_change(&self, after: u64, timeout: Duration) -> Result<u64, StoreError>;
}

/// Kept in memory; the audit log keeps the newest `AUDIT_CAPACITY` entries.
pub struct MemoryStore {
    state: Mutex<MemoryState>,
    revision: watch::Sender<u64>,
}

const AUDIT_CAPACITY: usize = 10_000;

#[derive(Default)]
struct MemoryState {
    instances: BTreeMap<String, Instance>,
    audit: VecDeque<AuditEntry>,
    next_seq: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self { state: Mutex::new(MemoryState::default()), revision: watch::Sender::new(0) }
    }
}

impl MemoryStore {
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

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(*self.revision.borrow())
    }

    async fn wait_for_change(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r > after)).await;
        Ok(*rx.borrow())
    }
}
