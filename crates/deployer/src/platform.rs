//! What the controller works with: the registry (instances, policies), the
//! supervisor that starts and stops instances (`shopfast up`'s control API,
//! when there is one), and the instances' own admin endpoints (readiness,
//! metrics).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kit_client::discovery::RegistryClient;
use kit_core::red::Totals;
use registry_wire::traffic::{PolicyChange, Sticky, TrafficPolicy};
use registry_wire::wire::InstanceInfo;

use crate::analysis::Side;
use crate::canary_state::Marks;
use crate::evidence;

/// What the supervisor is asked to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartInstances {
    pub service: String,
    pub version: String,
    pub track: String,
    pub replicas: u32,
    #[serde(default)]
    pub binary: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Asked again with the same key, it starts nothing more.
    pub key: String,
}

/// Why the supervisor did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// It answered 4xx: the request itself is wrong (an unknown service or
    /// binary); asking again will not help.
    #[error("supervisor refused: {0}")]
    Refused(String),
    /// It could not be reached, or failed (5xx): worth another try.
    #[error("{0}")]
    Trouble(String),
}

/// The supervisor's control API (mutual TLS; it proves the operator's identity).
#[derive(Clone)]
pub struct Supervisor {
    base: String,
    http: reqwest::Client,
}

impl Supervisor {
    pub fn new(base: &str, tls: Option<&Arc<kit_tls::Tls>>) -> Result<Self, String> {
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(2));
        let builder = match tls {
            Some(tls) => {
                builder.tls_backend_preconfigured(tls.client_config_for(kit_tls::OPERATOR).map_err(|e| e.to_string())?)
            }
            None => builder,
        };
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(Self { base: base.trim_end_matches('/').to_string(), http })
    }

    async fn answer(response: reqwest::Response) -> Result<serde_json::Value, SupervisorError> {
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let said = || format!("supervisor answered {status}: {body}");
        match status {
            _ if status.is_success() => Ok(body),
            // A timeout or "too many" is the moment's trouble, not the request's.
            reqwest::StatusCode::REQUEST_TIMEOUT | reqwest::StatusCode::TOO_MANY_REQUESTS => {
                Err(SupervisorError::Trouble(said()))
            }
            _ if status.is_client_error() => Err(SupervisorError::Refused(said())),
            _ => Err(SupervisorError::Trouble(said())),
        }
    }

    /// Starts instances; the labels it started (or had started for this key).
    pub async fn start(&self, request: &StartInstances) -> Result<Vec<String>, SupervisorError> {
        let response = self
            .http
            .post(format!("{}/v1/instances", self.base))
            .json(request)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| SupervisorError::Trouble(format!("supervisor unreachable: {e}")))?;
        let body = Self::answer(response).await?;
        Ok(labels(&body["started"]))
    }

    /// Stops every instance of `service` at `version` (each drains first).
    pub async fn stop(&self, service: &str, version: &str) -> Result<Vec<String>, SupervisorError> {
        let response = self
            .http
            .delete(format!("{}/v1/instances", self.base))
            .query(&[("service", service), ("version", version)])
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| SupervisorError::Trouble(format!("supervisor unreachable: {e}")))?;
        let body = Self::answer(response).await?;
        Ok(labels(&body["stopped"]))
    }
}

fn labels(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(|v| v["label"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The registry, as the deploy controller uses it.
#[derive(Clone)]
pub struct Registry {
    pub client: RegistryClient,
    http: reqwest::Client,
}

impl Registry {
    pub fn new(client: RegistryClient) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap_or_default();
        Self { client, http }
    }

    /// Every instance of `service`, routable or not.
    pub async fn instances(&self, service: &str) -> Result<Vec<InstanceInfo>, String> {
        let all = self.client.all_instances().await.map_err(|e| e.to_string())?;
        Ok(all.instances.into_iter().filter(|i| i.name == service).collect())
    }

    pub async fn policy(&self, service: &str) -> Result<Option<TrafficPolicy>, String> {
        self.client.policy(service).await.map_err(|e| e.to_string())
    }

    /// Sets `weights`; `overridable` may be asked for by name.
    pub async fn route(
        &self,
        service: &str,
        weights: BTreeMap<String, u32>,
        overridable: &[&str],
        reason: String,
    ) -> Result<TrafficPolicy, String> {
        let change = PolicyChange {
            weights,
            sticky: Sticky::User,
            overridable: Some(overridable.iter().map(|v| v.to_string()).collect()),
            reason,
            if_index: None,
        };
        self.client.set_policy(service, &change).await.map_err(|e| e.to_string())
    }

    /// Takes instances out of routing (for instances someone else runs).
    pub async fn drain(&self, instances: &[InstanceInfo]) -> Result<(), String> {
        for instance in instances {
            self.client.drain(&instance.id).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Whether an instance says it is ready (its dependencies reachable).
    pub async fn ready(&self, instance: &InstanceInfo) -> bool {
        if instance.admin_address.is_empty() {
            return false;
        }
        let url = format!("http://{}/health/ready", instance.admin_address);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// The RED totals of `instances`, summed; `None` if none could be read.
    pub async fn totals(&self, instances: &[&InstanceInfo]) -> Option<Totals> {
        let scrapes = instances.iter().map(|instance| async move {
            let url = format!("http://{}/metrics", instance.admin_address);
            let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
            kit_core::red::read_exposition(&instance.name, &text).map(|e| e.totals)
        });
        let read: Vec<Totals> = futures::future::join_all(scrapes).await.into_iter().flatten().collect();
        if read.is_empty() {
            return None;
        }
        let mut sum = Totals::default();
        for totals in &read {
            sum.add(totals);
        }
        Some(sum)
    }
}

/// Both sides of a canary now, and how many canary instances answered.
pub struct Sides {
    pub marks: Marks,
    pub canary_instances: usize,
}

impl Registry {
    /// Each version's figures now: its instances' server counters, and what
    /// every caller (the gateway and the other services' instances) counted
    /// for calls to `service` that version answered.
    pub async fn sides(&self, service: &str, canary: &str, stable: &str) -> Result<Sides, String> {
        let all = self.client.all_instances().await.map_err(|e| e.to_string())?.instances;
        let scrapes = all.iter().filter(|i| !i.admin_address.is_empty()).map(|instance| async move {
            let url = format!("http://{}/metrics", instance.admin_address);
            let text = async { self.http.get(url).send().await.ok()?.text().await.ok() }.await;
            (instance, text)
        });
        let read = futures::future::join_all(scrapes).await;
        let (mut canary_sides, mut stable_sides) = (Vec::new(), Vec::new());
        let mut marks = Marks::default();
        for (instance, text) in &read {
            let Some(text) = text else { continue };
            if instance.name == service {
                let side = evidence::read_server(text);
                match instance.version.as_str() {
                    v if v == canary => canary_sides.extend(side),
                    v if v == stable => stable_sides.extend(side),
                    _ => {}
                }
            } else {
                let calls = evidence::read_calls(text, service);
                if let Some(totals) = calls.get(canary) {
                    marks.canary.calls.add(totals);
                }
                if let Some(totals) = calls.get(stable) {
                    marks.stable.calls.add(totals);
                }
            }
        }
        let canary_instances = canary_sides.len();
        let (canary_calls, stable_calls) = (marks.canary.calls.clone(), marks.stable.calls.clone());
        marks.canary = Side { calls: canary_calls, ..evidence::sum(canary_sides) };
        marks.stable = Side { calls: stable_calls, ..evidence::sum(stable_sides) };
        Ok(Sides { marks, canary_instances })
    }
}

/// The versions a service runs now, by instances: routable ones.
pub fn running_versions(instances: &[InstanceInfo]) -> std::collections::BTreeSet<String> {
    instances.iter().filter(|i| i.health.routable()).map(|i| i.version.clone()).collect()
}
