//! The controller: one task per active rollout, moving it phase by phase.
//! Each phase is a step that can be run again: the rollout is saved after
//! every step, and a controller that died resumes each active rollout at
//! its phase (instances are started under the rollout's key, policies are
//! set whole, windows end at saved times).
//!
//! The registry's traffic policy does the routing; the controller only
//! changes it: blue pinned at 100 % before green exists, green reachable by
//! override only while it is tested, then all at once to green, and back.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kit::shutdown::CancellationToken;
use tokio::sync::Notify;

use kit_core::error::DomainError;
use kit_core::time::now_millis;
use registry_wire::wire::InstanceInfo;

use crate::model::{
    CanaryConfig, CanaryState, Cause, DeployRequest, Phase, Red, Rollout, SmokeLatency, Strategy, Verdict, judge,
};
use crate::platform::{Registry, StartInstances, Supervisor, SupervisorError, running_versions};
use crate::smoke::Smoke;
use crate::store::{RolloutStore, StoreError};

mod canary;
pub use canary::CanaryCommand;

/// How often a waiting phase looks again.
const TICK: Duration = Duration::from_millis(500);
/// How long green may be missing from the registry (or not answer) in the
/// window before that counts as a regression: a registry restart takes a
/// heartbeat or two to be whole again.
const GREEN_MISSING_GRACE_MS: i64 = 10_000;
/// Finished rollouts kept per service.
const KEEP_FINISHED: i64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The platform (registry) could not be asked.
    #[error("{0}")]
    Unavailable(String),
}

/// What one step of a phase came to.
enum Step {
    /// The rollout changed: save it, go on at once.
    Moved(Rollout),
    /// Nothing to do yet: look again after this long (saving any progress).
    Wait(Duration, Option<Rollout>),
}

pub struct Controller {
    store: RolloutStore,
    registry: Registry,
    supervisor: Option<Supervisor>,
    smoke: Smoke,
    /// Each service's canary settings (the TOML config's `[deployer.canary.<service>]`).
    canary_settings: BTreeMap<String, CanaryConfig>,
    /// Wakes a rollout's task early (a rollback asked for).
    pokes: Mutex<HashMap<String, Arc<Notify>>>,
    /// One writer at a time per rollout: its task, or a request from the API.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    shutdown: CancellationToken,
}

/// `12 ms`, or `unknown` without latency samples.
fn p95_text(p95_ms: Option<f64>) -> String {
    p95_ms.map_or_else(|| "unknown".into(), |ms| format!("{ms:.0} ms"))
}

fn event(rollout: &Rollout, event: &'static str) {
    let (service, strategy) = (rollout.service.clone(), rollout.strategy.name());
    metrics::counter!("deploy_events_total", "service" => service, "strategy" => strategy, "event" => event)
        .increment(1);
}

impl Controller {
    pub fn new(
        store: RolloutStore,
        registry: Registry,
        supervisor: Option<Supervisor>,
        smoke: Smoke,
        canary_settings: BTreeMap<String, CanaryConfig>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            supervisor,
            smoke,
            canary_settings,
            pokes: Mutex::default(),
            locks: Mutex::default(),
            shutdown,
        })
    }

    pub fn store(&self) -> &RolloutStore {
        &self.store
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }

    fn poke_of(&self, id: &str) -> Arc<Notify> {
        let mut pokes = self.pokes.lock().unwrap_or_else(|e| e.into_inner());
        pokes.entry(id.to_string()).or_default().clone()
    }

    /// Resumes every active rollout (after a start or a crash).
    pub async fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let active = self.store.all_active().await?;
        for rollout in &active {
            tracing::info!(rollout = %rollout.id, service = %rollout.service, phase = rollout.phase.name(), "resuming rollout");
            let mut resumed = rollout.clone();
            resumed.record(
                now_millis(),
                "resumed",
                format!("the controller restarted; going on at {}", rollout.phase.name()),
            );
            if let Err(err) = self.store.save(&resumed, rollout.phase).await {
                tracing::warn!(rollout = %rollout.id, error = %err, "could not record the resumption");
            }
            self.spawn(rollout.id.clone());
        }
        metrics::gauge!("deploy_rollouts_active").set(active.len() as f64);
        Ok(active.len())
    }

    fn spawn(self: &Arc<Self>, id: String) {
        let this = self.clone();
        tokio::spawn(async move { this.drive(id).await });
    }

    /// Starts a rollout: checked, its blue found, stored (one per service).
    pub async fn create(self: &Arc<Self>, request: DeployRequest) -> Result<Rollout, ControlError> {
        request.check()?;
        let instances = self.registry.instances(&request.service).await.map_err(ControlError::Unavailable)?;
        if instances.is_empty() {
            return Err(DomainError::NotFound(format!("no instance of {} is registered", request.service)).into());
        }
        let blue = self.blue_of(&request, &instances).await?;
        if request.start_instances == Some(true) && self.supervisor.is_none() {
            return Err(
                DomainError::invalid("no supervisor is configured to start instances; start them yourself").into()
            );
        }
        let canary = match request.strategy {
            Strategy::Canary => {
                let settings = self.canary_settings.get(&request.service).cloned().unwrap_or_default();
                let config = settings.patched(request.canary.as_ref())?;
                config.check()?;
                Some(CanaryState::new(config))
            }
            Strategy::BlueGreen => None,
        };
        let id = format!("{}-{}", request.service, uuid::Uuid::now_v7().simple());
        let now = now_millis();
        let mut rollout = Rollout::new(id, request, blue, self.supervisor.is_some(), now);
        rollout.canary = canary;
        let how = if rollout.start_instances { "starting" } else { "waiting for" };
        let steps = rollout.canary.as_ref().map_or_else(String::new, |c| {
            let weights: Vec<String> = c.config.steps.iter().map(|s| format!("{} %", s.weight)).collect();
            format!(" (steps {})", weights.join(" → "))
        });
        rollout.record(
            now,
            "created",
            format!(
                "{} of {} from {} to {}{steps}: {how} {} instance(s)",
                rollout.strategy.name(),
                rollout.service,
                rollout.blue,
                rollout.green,
                rollout.replicas
            ),
        );
        self.store.create(&rollout).await?;
        event(&rollout, "started");
        tracing::info!(rollout = %rollout.id, service = %rollout.service, blue = %rollout.blue, green = %rollout.green, "rollout started");
        self.spawn(rollout.id.clone());
        Ok(rollout)
    }

    /// The version green replaces: the one the policy sends all traffic to,
    /// or (no policy) the one the service runs.
    async fn blue_of(&self, request: &DeployRequest, instances: &[InstanceInfo]) -> Result<String, ControlError> {
        let policy = self.registry.policy(&request.service).await.map_err(ControlError::Unavailable)?;
        let serving: Vec<String> = match &policy {
            Some(policy) => policy.weights.iter().filter(|(_, w)| **w > 0).map(|(v, _)| v.clone()).collect(),
            None => running_versions(instances).into_iter().collect(),
        };
        let already = serving.contains(&request.version);
        let serving: Vec<String> = serving.into_iter().filter(|v| *v != request.version).collect();
        match serving.as_slice() {
            [blue] => Ok(blue.clone()),
            [] if already => Err(DomainError::FailedPrecondition(format!(
                "{} already serves all traffic from {}",
                request.service, request.version
            ))
            .into()),
            [] => {
                Err(DomainError::FailedPrecondition(format!("{} has no serving version to replace", request.service))
                    .into())
            }
            many => Err(DomainError::FailedPrecondition(format!(
                "{} serves {} at once; a deploy replaces one version (finish or roll back the other first)",
                request.service,
                many.join(" and ")
            ))
            .into()),
        }
    }

    /// The service's rollout in progress, read again under its lock (the
    /// guard keeps its task from moving it meanwhile).
    async fn active_locked(&self, service: &str) -> Result<(Rollout, tokio::sync::OwnedMutexGuard<()>), ControlError> {
        let Some(found) = self.store.active(service).await? else {
            return Err(DomainError::FailedPrecondition(format!("no rollout of {service} is in progress")).into());
        };
        let held = self.lock_of(&found.id).lock_owned().await;
        match self.store.get(&found.id).await? {
            Some(rollout) => Ok((rollout, held)),
            None => Err(DomainError::NotFound(found.id).into()),
        }
    }

    /// Back to blue at once (after the switch: a rollback), or an abort
    /// (before it: green never had users).
    pub async fn roll_back(&self, service: &str, reason: &str) -> Result<Rollout, ControlError> {
        let (mut rollout, _held) = self.active_locked(service).await?;
        let expected = rollout.phase;
        let now = now_millis();
        let why = format!("requested: {reason}");
        match rollout.phase {
            Phase::RollingBack | Phase::Aborting => return Ok(rollout),
            Phase::Finishing | Phase::Succeeded | Phase::RolledBack | Phase::Aborted => {
                return Err(DomainError::FailedPrecondition(format!(
                    "{} is already {}; blue {} is being stopped — deploy it again instead",
                    rollout.id,
                    rollout.phase.name(),
                    rollout.blue
                ))
                .into());
            }
            phase if phase.switched() => {
                // The switch back happens now, in this request.
                let weights = rollout.weights_all_on(&rollout.blue);
                let reason_text = format!("rollout {}: rollback ({reason})", rollout.id);
                self.registry
                    .route(service, weights, &[&rollout.blue, &rollout.green], reason_text)
                    .await
                    .map_err(ControlError::Unavailable)?;
                rollout.record(now, "switched back to blue", why.clone());
                rollout.reason = Some(format!("rolled back on request: {reason}"));
                rollout.cause = Some(Cause::Requested);
                rollout.enter(Phase::RollingBack, now, why);
                event(&rollout, "rolled_back");
            }
            _ => {
                rollout.reason = Some(format!("aborted on request: {reason}"));
                rollout.cause = Some(Cause::Requested);
                rollout.enter(Phase::Aborting, now, why);
                event(&rollout, "aborted");
            }
        }
        self.store.save(&rollout, expected).await?;
        self.poke_of(&rollout.id).notify_one();
        Ok(rollout)
    }

    /// Runs a rollout to its end, one step at a time.
    async fn drive(self: Arc<Self>, id: String) {
        let poke = self.poke_of(&id);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let lock = self.lock_of(&id);
            let held = lock.lock().await;
            let rollout = match self.store.get(&id).await {
                Ok(Some(rollout)) if !rollout.phase.is_over() => rollout,
                Ok(_) => break,
                Err(err) => {
                    drop(held);
                    tracing::warn!(rollout = %id, error = %err, "cannot read the rollout; retrying");
                    self.pause(&poke, Duration::from_secs(1)).await;
                    continue;
                }
            };
            let expected = rollout.phase;
            let (next, wait) = match self.step(rollout).await {
                Step::Moved(next) => (Some(next), None),
                Step::Wait(after, progress) => (progress, Some(after)),
            };
            if let Some(next) = next {
                if let Err(err) = self.store.save(&next, expected).await {
                    tracing::warn!(rollout = %id, error = %err, "could not save the rollout's step; it runs again");
                }
                if next.phase.is_over() {
                    let outcome = next.phase.name();
                    tracing::info!(rollout = %id, service = %next.service, outcome, reason = ?next.reason, "rollout over");
                }
            }
            drop(held);
            if let Some(after) = wait {
                self.pause(&poke, after).await;
            }
        }
        if let Ok(active) = self.store.all_active().await {
            metrics::gauge!("deploy_rollouts_active").set(active.len() as f64);
        }
        let _ = self.store.prune(KEEP_FINISHED).await;
        self.pokes.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    async fn pause(&self, poke: &Notify, after: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            _ = poke.notified() => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    async fn step(&self, rollout: Rollout) -> Step {
        match rollout.phase {
            Phase::Starting => self.start_green(rollout).await,
            Phase::Validating => self.validate_green(rollout).await,
            Phase::Smoke => self.smoke_green(rollout).await,
            Phase::Switching => self.switch(rollout).await,
            Phase::Progressing => self.progress(rollout).await,
            Phase::Watching => self.watch(rollout).await,
            Phase::Standby => self.standby(rollout),
            Phase::Finishing => self.retire(rollout, true).await,
            Phase::RollingBack | Phase::Aborting => self.retire(rollout, false).await,
            Phase::Succeeded | Phase::RolledBack | Phase::Aborted => Step::Wait(TICK, None),
        }
    }

    /// Records a trouble once (the same one again is not news) and waits.
    fn trouble(mut rollout: Rollout, what: &str, detail: String) -> Step {
        let repeated = rollout.steps.last().is_some_and(|s| s.event == what && s.detail == detail);
        if repeated {
            return Step::Wait(Duration::from_secs(1), None);
        }
        tracing::warn!(rollout = %rollout.id, what, %detail, "rollout waiting");
        rollout.record(now_millis(), what, detail);
        Step::Wait(Duration::from_secs(1), Some(rollout))
    }

    /// Sets the policy: all on `on`, with `overridable` reachable by name.
    async fn route(&self, rollout: &Rollout, on: &str, overridable: &[&str], why: &str) -> Result<(), String> {
        let mut weights = rollout.weights_all_on(on);
        weights.retain(|version, weight| *weight > 0 || overridable.contains(&version.as_str()));
        let reason = format!("rollout {}: {why}", rollout.id);
        self.registry.route(&rollout.service, weights, overridable, reason).await.map(|_| ())
    }

    async fn green_instances(&self, rollout: &Rollout) -> Result<Vec<InstanceInfo>, String> {
        let all = self.registry.instances(&rollout.service).await?;
        Ok(all.into_iter().filter(|i| i.version == rollout.green).collect())
    }

    async fn instances_at(&self, rollout: &Rollout, version: &str) -> Result<Vec<InstanceInfo>, String> {
        let all = self.registry.instances(&rollout.service).await?;
        Ok(all.into_iter().filter(|i| i.version == version && i.health.routable()).collect())
    }

    /// Pins blue at 100 % (so green gets nothing when it registers), then
    /// starts green (or waits for whoever starts it).
    async fn start_green(&self, mut rollout: Rollout) -> Step {
        let green_known = match self.green_instances(&rollout).await {
            Ok(green) => !green.is_empty(),
            Err(err) => return Self::trouble(rollout, "registry unreachable", err),
        };
        let overridable: Vec<&str> =
            if green_known { vec![&rollout.blue, &rollout.green] } else { vec![&rollout.blue] };
        if let Err(err) =
            self.route(&rollout, &rollout.blue.clone(), &overridable, "blue pinned before green starts").await
        {
            return Self::trouble(rollout, "cannot pin blue", err);
        }
        let now = now_millis();
        rollout.record(now, "pinned blue", format!("{} at 100 %", rollout.blue));
        if rollout.start_instances {
            let Some(supervisor) = &self.supervisor else {
                rollout.reason = Some("no supervisor to start green".into());
                rollout.cause = Some(Cause::StartFailed);
                rollout.enter(Phase::Aborting, now, "no supervisor configured");
                return Step::Moved(rollout);
            };
            let start = StartInstances {
                service: rollout.service.clone(),
                version: rollout.green.clone(),
                track: "green".into(),
                replicas: rollout.replicas,
                binary: rollout.binary.clone(),
                args: rollout.args.clone(),
                key: rollout.id.clone(),
            };
            match supervisor.start(&start).await {
                Ok(labels) => rollout.record(now, "started green", labels.join(", ")),
                Err(SupervisorError::Refused(err)) => {
                    rollout.reason = Some(format!("green could not be started: {err}"));
                    rollout.cause = Some(Cause::StartFailed);
                    rollout.enter(Phase::Aborting, now, err);
                    event(&rollout, "aborted");
                    return Step::Moved(rollout);
                }
                Err(err) => return Self::trouble(rollout, "cannot start green", err.to_string()),
            }
        }
        rollout.enter(
            Phase::Validating,
            now,
            format!("waiting for {} green instance(s) to be ready", rollout.replicas),
        );
        Step::Moved(rollout)
    }

    /// Green registered, routable and ready; then reachable by override.
    async fn validate_green(&self, mut rollout: Rollout) -> Step {
        let now = now_millis();
        let green = match self.green_instances(&rollout).await {
            Ok(green) => green,
            Err(err) => return Self::trouble(rollout, "registry unreachable", err),
        };
        let routable: Vec<&InstanceInfo> = green.iter().filter(|i| i.health.routable()).collect();
        let mut ready = 0;
        for instance in &routable {
            ready += usize::from(self.registry.ready(instance).await);
        }
        if ready < rollout.replicas as usize {
            if now - rollout.phase_since_ms > rollout.analysis.ready_timeout_ms as i64 {
                let why = format!(
                    "green did not become ready within {} s: {} registered, {} routable, {ready} ready of {}",
                    rollout.analysis.ready_timeout_ms / 1000,
                    green.len(),
                    routable.len(),
                    rollout.replicas
                );
                rollout.reason = Some(why.clone());
                rollout.cause = Some(Cause::NotReady);
                rollout.enter(Phase::Aborting, now, why);
                event(&rollout, "aborted");
                return Step::Moved(rollout);
            }
            return Step::Wait(TICK, None);
        }
        if rollout.canary.is_some() {
            rollout.record(now, "green ready", format!("{ready} instance(s) ready"));
            return self.begin_step(rollout, 0).await;
        }
        let both = [rollout.blue.as_str(), rollout.green.as_str()];
        if let Err(err) =
            self.route(&rollout, &rollout.blue.clone(), &both, "green ready; reachable by override only").await
        {
            return Self::trouble(rollout, "cannot open green to overrides", err);
        }
        rollout.record(now, "green ready", format!("{ready} instance(s) ready; weight 0, reachable by override"));
        rollout.enter(Phase::Smoke, now, "smoke suite against green");
        Step::Moved(rollout)
    }

    /// The smoke suite on green, green's latency against blue's; blue's
    /// baseline starts here.
    async fn smoke_green(&self, mut rollout: Rollout) -> Step {
        let blue = match self.instances_at(&rollout, &rollout.blue.clone()).await {
            Ok(blue) => blue,
            Err(err) => return Self::trouble(rollout, "registry unreachable", err),
        };
        rollout.blue_mark = self.registry.totals(&blue.iter().collect::<Vec<_>>()).await;
        let green = match self.instances_at(&rollout, &rollout.green.clone()).await {
            Ok(green) => green,
            Err(err) => return Self::trouble(rollout, "registry unreachable", err),
        };
        let green_refs: Vec<&InstanceInfo> = green.iter().collect();
        let before = self.registry.totals(&green_refs).await.unwrap_or_default();
        let passed = match self.smoke.run(&rollout.service, &rollout.green, &rollout.id).await {
            Ok(passed) => passed,
            Err(failure) => {
                return self.abort(rollout, Cause::ValidationFailed, format!("smoke test failed on green: {failure}"));
            }
        };
        let after = self.registry.totals(&green_refs).await.unwrap_or_default();
        let served = after.since(&before).requests;
        if served < 1.0 {
            let why = "the smoke suite did not reach green (no request served there)";
            return self.abort(rollout, Cause::ValidationFailed, why.into());
        }
        let now = now_millis();
        rollout.record(
            now,
            "smoke passed",
            format!("{}; {served} request(s) served by green", passed.steps.join(", ")),
        );
        let reads = rollout.analysis.smoke_reads;
        let (service, green_version, blue_version) =
            (rollout.service.clone(), rollout.green.clone(), rollout.blue.clone());
        let green_p95 = self.smoke.read_p95(&service, &green_version, reads, &passed.session).await;
        let blue_p95 = self.smoke.read_p95(&service, &blue_version, reads, &passed.session).await;
        match (green_p95, blue_p95) {
            (Ok(green_ms), Ok(blue_ms)) => {
                rollout.smoke_latency = Some(SmokeLatency { green_p95_ms: green_ms, blue_p95_ms: blue_ms });
                let allowed = blue_ms * (1.0 + rollout.analysis.smoke_latency_tolerance) + 5.0;
                let detail = format!("p95 of {reads} reads: green {green_ms:.1} ms, blue {blue_ms:.1} ms");
                if green_ms > allowed {
                    if rollout.analysis.abort_on_slow_smoke {
                        return self.abort(
                            rollout,
                            Cause::ValidationFailed,
                            format!("green is slower than blue: {detail}"),
                        );
                    }
                    rollout.record(
                        now,
                        "warning: green slower than blue",
                        format!("{detail} (allowed {allowed:.1} ms)"),
                    );
                } else {
                    rollout.record(now, "latency compared", detail);
                }
            }
            (Err(err), _) => {
                return self.abort(rollout, Cause::ValidationFailed, format!("latency probe failed on green: {err}"));
            }
            (_, Err(err)) => rollout.record(now, "warning: blue's latency not measured", err),
        }
        rollout.enter(Phase::Switching, now, "green passed; switching all traffic");
        Step::Moved(rollout)
    }

    fn abort(&self, mut rollout: Rollout, cause: Cause, why: String) -> Step {
        tracing::warn!(rollout = %rollout.id, %why, "rollout aborted");
        event(&rollout, "aborted");
        rollout.reason = Some(why.clone());
        rollout.cause = Some(cause);
        rollout.enter(Phase::Aborting, now_millis(), why);
        Step::Moved(rollout)
    }

    /// Blue's baseline closes; green's counters are marked; all traffic to green.
    async fn switch(&self, mut rollout: Rollout) -> Step {
        let (blue, green) = match (
            self.instances_at(&rollout, &rollout.blue.clone()).await,
            self.instances_at(&rollout, &rollout.green.clone()).await,
        ) {
            (Ok(blue), Ok(green)) => (blue, green),
            (Err(err), _) | (_, Err(err)) => return Self::trouble(rollout, "registry unreachable", err),
        };
        if green.is_empty() {
            return self.abort(rollout, Cause::NotReady, "no routable green instance left before the switch".into());
        }
        let blue_now = self.registry.totals(&blue.iter().collect::<Vec<_>>()).await;
        if let (Some(now), Some(mark)) = (&blue_now, &rollout.blue_mark) {
            rollout.baseline = Some(Red::of(&now.since(mark)));
        }
        rollout.green_mark = self.registry.totals(&green.iter().collect::<Vec<_>>()).await;
        let both = [rollout.blue.as_str(), rollout.green.as_str()];
        if let Err(err) = self.route(&rollout, &rollout.green.clone(), &both, "switch to green").await {
            return Self::trouble(rollout, "cannot switch", err);
        }
        let now = now_millis();
        event(&rollout, "switched");
        let baseline = rollout.baseline.as_ref().map_or_else(
            || "no baseline from blue".to_string(),
            |b| {
                format!(
                    "blue's baseline: {} requests, {:.2} % errors, p95 {}",
                    b.requests,
                    b.error_rate() * 100.0,
                    p95_text(b.p95_ms)
                )
            },
        );
        rollout.record(now, "switched to green", format!("{} at 100 %; {baseline}", rollout.green));
        rollout.watch_until_ms = Some(now + rollout.analysis.watch_ms as i64);
        rollout.enter(Phase::Watching, now, format!("watching green for {} s", rollout.analysis.watch_ms / 1000));
        Step::Moved(rollout)
    }

    /// The post-switch window: a regression sends everything back to blue at once.
    async fn watch(&self, mut rollout: Rollout) -> Step {
        let green = match self.instances_at(&rollout, &rollout.green.clone()).await {
            Ok(green) => green,
            Err(err) => return Self::trouble(rollout, "registry unreachable", err),
        };
        let now = now_millis();
        let totals = self.registry.totals(&green.iter().collect::<Vec<_>>()).await;
        // Green missing for a moment is not yet a regression: a registry
        // that restarted lists instances again only as they heartbeat.
        let missing_for = match &totals {
            None => now - *rollout.green_missing_since_ms.get_or_insert(now),
            Some(_) => {
                rollout.green_missing_since_ms = None;
                0
            }
        };
        let verdict = match (&totals, &rollout.green_mark) {
            (None, _) if missing_for < GREEN_MISSING_GRACE_MS => {
                Verdict::Inconclusive("no green instance listed or answering yet".into())
            }
            (None, _) => Verdict::Regressed(format!(
                "no green instance has answered for {} s (all gone or unreachable)",
                missing_for / 1_000
            )),
            (Some(totals), Some(mark)) => {
                let observed = Red::of(&totals.since(mark));
                let verdict = judge(&observed, rollout.baseline.as_ref(), &rollout.analysis);
                rollout.observed = Some(observed);
                verdict
            }
            (Some(totals), None) => {
                rollout.green_mark = Some(totals.clone());
                Verdict::Inconclusive("marking green's counters".into())
            }
        };
        if let Verdict::Regressed(why) = verdict {
            let both = [rollout.blue.as_str(), rollout.green.as_str()];
            if let Err(err) = self.route(&rollout, &rollout.blue.clone(), &both, "rollback: green regressed").await {
                return Self::trouble(rollout, "cannot roll back", err);
            }
            event(&rollout, "rolled_back");
            tracing::warn!(rollout = %rollout.id, %why, "green regressed; rolled back");
            rollout.record(now, "switched back to blue", why.clone());
            rollout.reason = Some(format!("rolled back automatically: {why}"));
            rollout.cause = Some(Cause::Regressed);
            rollout.enter(Phase::RollingBack, now, why);
            return Step::Moved(rollout);
        }
        if now < rollout.watch_until_ms.unwrap_or(0) {
            rollout.updated_ms = now;
            return Step::Wait(Duration::from_secs(1), Some(rollout));
        }
        let detail = match (&verdict, &rollout.observed) {
            (Verdict::Inconclusive(why), _) => format!("inconclusive, kept: {why}"),
            (_, Some(o)) => {
                format!("{} requests, {:.2} % errors, p95 {}", o.requests, o.error_rate() * 100.0, p95_text(o.p95_ms))
            }
            _ => String::new(),
        };
        rollout.record(now, "window passed", detail);
        rollout.standby_until_ms = Some(now + rollout.analysis.standby_ms as i64);
        rollout.enter(
            Phase::Standby,
            now,
            format!("blue {} kept for {} s", rollout.blue, rollout.analysis.standby_ms / 1000),
        );
        Step::Moved(rollout)
    }

    fn standby(&self, mut rollout: Rollout) -> Step {
        let now = now_millis();
        let until = rollout.standby_until_ms.unwrap_or(0);
        if now < until {
            return Step::Wait(Duration::from_millis((until - now).clamp(10, 1_000) as u64), None);
        }
        rollout.enter(Phase::Finishing, now, format!("retiring blue {}", rollout.blue));
        Step::Moved(rollout)
    }

    /// Retires one side: blue after a success (`succeeded`), green after a
    /// rollback or an abort. The policy first, then the instances.
    async fn retire(&self, mut rollout: Rollout, succeeded: bool) -> Step {
        let (keep, retire) = if succeeded {
            (rollout.green.clone(), rollout.blue.clone())
        } else {
            (rollout.blue.clone(), rollout.green.clone())
        };
        if let Err(err) = self.route(&rollout, &keep, &[keep.as_str()], &format!("{retire} retired")).await {
            return Self::trouble(rollout, "cannot update the policy", err);
        }
        let now = now_millis();
        let stopped = match (&self.supervisor, rollout.start_instances || succeeded) {
            (Some(supervisor), true) => {
                supervisor.stop(&rollout.service, &retire).await.map(|l| l.join(", ")).map_err(|e| e.to_string())
            }
            _ => match self.instances_at(&rollout, &retire).await {
                Ok(instances) => self.registry.drain(&instances).await.map(|()| format!("{} drained", instances.len())),
                Err(err) => Err(err),
            },
        };
        match stopped {
            Ok(what) => rollout.record(now, format!("stopped {retire}"), what),
            Err(err) => return Self::trouble(rollout, "cannot stop instances", err),
        }
        let (phase, outcome) = match rollout.phase {
            Phase::Finishing => (Phase::Succeeded, format!("{keep} serves all traffic; {retire} retired")),
            Phase::RollingBack => (Phase::RolledBack, format!("{keep} serves all traffic again")),
            _ => (Phase::Aborted, format!("{keep} kept serving; {retire} never had user traffic")),
        };
        if phase == Phase::Succeeded {
            event(&rollout, "succeeded");
            rollout.reason = Some(outcome.clone());
        }
        rollout.enter(phase, now, outcome);
        Step::Moved(rollout)
    }

    /// The newest rollouts (one service's, or all).
    pub async fn recent(&self, service: Option<&str>, limit: i64) -> Result<Vec<Rollout>, ControlError> {
        Ok(self.store.recent(service, limit).await?)
    }

    /// Weights of the live policy of each service, for the status views.
    pub async fn weights(&self, service: &str) -> Option<BTreeMap<String, u32>> {
        self.registry.policy(service).await.ok().flatten().map(|p| p.weights)
    }
}
