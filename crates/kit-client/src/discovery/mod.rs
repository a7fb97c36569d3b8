//! Service discovery: register this instance, and resolve others into
//! load-balanced gRPC clients that follow the registry as it changes.
//!
//! Each resolved service has a background watcher that long-polls the
//! registry (blocking queries) and updates its `Balancer` at once on change.
//! When the registry is unreachable the last known instances keep serving
//! (stale cache), which the logs and `discovery_registry_reachable` say. The
//! service's traffic policy comes with its instances, in the same answers, so
//! a change reaches every client as fast as an instance change does, and an
//! unreachable registry leaves clients on the last policy they saw.
pub mod client;
pub mod registration;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use client::{DiscoveryError, RegistryClient};
pub use registration::Registration;
use registry_wire::wire::InstanceList;

use crate::balance::Balancer;

const WATCH_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Discovery {
    client: RegistryClient,
    /// Our identity, for the registry and the instances (mutual TLS).
    tls: Option<Arc<kit_tls::Tls>>,
    balancers: Arc<Mutex<HashMap<String, Balancer>>>,
    shutdown: CancellationToken,
}

impl Discovery {
    /// Watchers stop when `shutdown` is cancelled. With `tls`, the registry
    /// and every instance are reached over mutual TLS.
    pub fn new(registry_url: &str, tls: Option<Arc<kit_tls::Tls>>, shutdown: CancellationToken) -> Self {
        let client = RegistryClient::with_tls(registry_url, tls.clone());
        Self { client, tls, balancers: Arc::default(), shutdown }
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// A balancer over the routable instances of `name` (whose metadata has
    /// every `filter` pair), kept current in the background. The first call
    /// per service waits for one lookup (up to 2 s) so it starts populated.
    pub async fn balancer(&self, name: &str, filter: BTreeMap<String, String>) -> Balancer {
        let key = format!("{name}?{filter:?}");
        if let Some(existing) = self.balancers.lock().ok().and_then(|b| b.get(&key).cloned()) {
            return existing;
        }
        let balancer = Balancer::with_tls(name, self.tls.clone());
        let first =
            match tokio::time::timeout(Duration::from_secs(2), self.client.lookup(name, &filter, None, WATCH_WAIT))
                .await
            {
                Ok(Ok(list)) => {
                    balancer.update(&list.instances);
                    balancer.set_policy(list.policy.clone());
                    Some(list)
                }
                Ok(Err(err)) => {
                    tracing::warn!(service = name, error = %err, "first lookup failed; will keep trying");
                    None
                }
                Err(_) => None,
            };
        if let Ok(mut balancers) = self.balancers.lock() {
            if let Some(raced) = balancers.get(&key) {
                return raced.clone();
            }
            balancers.insert(key, balancer.clone());
        }
        tokio::spawn(watch(
            self.client.clone(),
            name.to_string(),
            filter,
            balancer.clone(),
            first,
            self.shutdown.clone(),
        ));
        balancer
    }
}

/// What a client knows of a service: the registry's answer, or while the
/// registry warms up after a restart, that answer with what was known before
/// (instances it has not heard from again yet, the policy it had).
fn known(mut list: InstanceList, before: Option<&InstanceList>) -> InstanceList {
    if let (true, Some(before)) = (list.warming, before) {
        for instance in &before.instances {
            if !list.instances.iter().any(|i| i.id == instance.id) {
                list.instances.push(instance.clone());
            }
        }
        if list.policy.is_none() {
            list.policy = before.policy.clone();
        }
    }
    list
}

async fn watch(
    client: RegistryClient,
    name: String,
    filter: BTreeMap<String, String>,
    balancer: Balancer,
    mut last: Option<InstanceList>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let index = last.as_ref().map_or(0, |l| l.index);
        let lookup = client.lookup(&name, &filter, Some(index), WATCH_WAIT);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = lookup => result,
        };
        match result {
            Ok(list) => {
                if failures > 0 {
                    tracing::info!(service = %name, "registry reachable again; cache refreshed");
                }
                failures = 0;
                metrics::gauge!("discovery_registry_reachable", "service" => name.clone()).set(1.0);
                let list = known(list, last.as_ref());
                balancer.update(&list.instances);
                balancer.set_policy(list.policy.clone());
                last = Some(list);
            }
            Err(err) => {
                if failures == 0 {
                    tracing::warn!(service = %name, error = %err, instances = balancer.instances().len(), "registry unreachable; serving the cached instances");
                }
                failures += 1;
                metrics::gauge!("discovery_registry_reachable", "service" => name.clone()).set(0.0);
                metrics::counter!("discovery_lookup_failures_total", "service" => name.clone()).increment(1);
                let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(4)));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}
