//! Keeping an instance registered: register once ready, heartbeat with jitter,
//! register again whenever the registry forgets us (restart, expiry), and
//! deregister on shutdown before draining.
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{Beat, RegistryClient};
use registry_wire::wire::{HeartbeatRequest, RegisterRequest};

/// A running registration; `deregister` ends it.
pub struct Registration {
    client: RegistryClient,
    id: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Registration {
    /// Starts registering `request` (its id is fixed here, so every
    /// re-registration keeps it) in the background.
    pub fn start(client: RegistryClient, mut request: RegisterRequest) -> Self {
        let id = request.id.clone().unwrap_or_else(|| format!("{}-{}", request.name, uuid::Uuid::now_v7().simple()));
        request.id = Some(id.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_registered(client.clone(), request, stop.clone()));
        Self { client, id, stop, task }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops heartbeating and removes the instance from the registry, so
    /// clients stop routing to it before it drains.
    pub async fn deregister(self, timeout: Duration) {
        self.stop.cancel();
        let _ = self.task.await;
        match self.client.deregister(&self.id, timeout).await {
            Ok(()) => tracing::info!(instance_id = %self.id, "deregistered"),
            Err(err) => {
                tracing::warn!(instance_id = %self.id, error = %err, "deregistration failed; the registry will expire us")
            }
        }
    }
}

fn jittered(base: Duration, low: f64, high: f64) -> Duration {
    base.mul_f64(rand::rng().random_range(low..high))
}

async fn keep_registered(client: RegistryClient, request: RegisterRequest, stop: CancellationToken) {
    let id = request.id.clone().unwrap_or_default();
    let mut registered = false;
    let mut interval = Duration::from_secs(15);
    let mut registry_was_down = false;
    loop {
        let next = if !registered {
            match client.register(&request).await {
                Ok(reply) => {
                    registered = true;
                    interval = Duration::from_millis(reply.heartbeat_interval_ms.max(10));
                    tracing::info!(instance_id = %id, registry = client.base_url(), "registered");
                    metrics::counter!("discovery_registrations_total").increment(1);
                    // Heartbeats come a little early, never late, so a
                    // registry restart is noticed within one interval.
                    jittered(interval, 0.8, 1.0)
                }
                Err(err) => {
                    tracing::warn!(instance_id = %id, error = %err, "registration failed; retrying");
                    jittered(interval.min(Duration::from_secs(2)) / 2, 0.5, 1.0)
                }
            }
        } else {
            match client.heartbeat(&id, &HeartbeatRequest::default()).await {
                Ok(Beat::Alive) => {
                    if registry_was_down {
                        tracing::info!(instance_id = %id, "registry reachable again");
                        registry_was_down = false;
                    }
                    jittered(interval, 0.8, 1.0)
                }
                Ok(Beat::Unknown) => {
                    tracing::warn!(instance_id = %id, "registry forgot this instance; registering again");
                    registered = false;
                    Duration::ZERO
                }
                Err(err) => {
                    if !registry_was_down {
                        tracing::warn!(instance_id = %id, error = %err, "heartbeat failed; registry unreachable");
                        registry_was_down = true;
                    }
                    metrics::counter!("discovery_heartbeat_failures_total").increment(1);
                    // Retry sooner than a full interval so a restarted
                    // registry sees us again quickly.
                    jittered(interval.min(Duration::from_secs(2)) / 2, 0.5, 1.0)
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}
