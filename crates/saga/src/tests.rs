//! The engine with fake steps and an in-memory store: forward, retries,
//! compensation order, failures during compensation, and recovery from a
//! crash at every save point.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct MemoryStore {
    sagas: Mutex<HashMap<String, SagaRecord>>,
    saves: Mutex<u32>,
    /// Fail every save after this many: the process "dies".
    crash_after: Mutex<Option<u32>>,
}

impl SagaStore for MemoryStore {
    fn save<'a>(&'a self, saga: &'a SagaRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut saves = self.saves.lock().unwrap();
            if self.crash_after.lock().unwrap().is_some_and(|n| *saves >= n) {
                return Err(StoreError("crashed".into()));
            }
            *saves += 1;
            self.sagas.lock().unwrap().insert(saga.id.clone(), saga.clone());
            Ok(())
        })
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<SagaRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self.sagas.lock().unwrap().values().filter(|s| !s.state.is_terminal()).cloned().collect())
        })
    }
}

type Log = Arc<Mutex<Vec<String>>>;

struct FakeStep {
    name: &'static str,
    runs: Mutex<VecDeque<Result<(), StepError>>>,
    undos: Mutex<VecDeque<Result<(), StepError>>>,
    log: Log,
    /// Distinct idempotency keys that took effect, by key.
    effects: Mutex<HashMap<String, u32>>,
    after_pivot: bool,
}

impl FakeStep {
    fn new(name: &'static str, log: &Log) -> Self {
        Self {
            name,
            runs: Default::default(),
            undos: Default::default(),
            log: log.clone(),
            effects: Default::default(),
            after_pivot: false,
        }
    }

    fn after_pivot(mut self) -> Self {
        self.after_pivot = true;
        self
    }

    fn runs(self, script: Vec<Result<(), StepError>>) -> Self {
        *self.runs.lock().unwrap() = script.into();
        self
    }

    fn undos(self, script: Vec<Result<(), StepError>>) -> Self {
        *self.undos.lock().unwrap() = script.into();
        self
    }
}

impl Step for FakeStep {
    fn name(&self) -> &'static str {
        self.name
    }

    fn after_pivot(&self) -> bool {
        self.after_pivot
    }

    fn run<'a>(&'a self, _saga: &'a SagaRecord, key: &'a str) -> BoxFuture<'a, Result<Output, StepError>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!("run {}", self.name));
            let result = self.runs.lock().unwrap().pop_front().unwrap_or(Ok(()));
            result.map(|()| {
                *self.effects.lock().unwrap().entry(key.to_string()).or_default() += 1;
                BTreeMap::from([(format!("{}_done", self.name), key.to_string())])
            })
        })
    }

    fn compensate<'a>(&'a self, _saga: &'a SagaRecord, _key: &'a str) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!("undo {}", self.name));
            self.undos.lock().unwrap().pop_front().unwrap_or(Ok(()))
        })
    }
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        give_up_after: Duration::from_millis(300),
    }
}

fn orchestrator(steps: Vec<Arc<FakeStep>>, store: Arc<MemoryStore>) -> Orchestrator {
    let steps: Vec<Arc<dyn Step>> = steps.into_iter().map(|s| s as Arc<dyn Step>).collect();
    Orchestrator::new(steps, store, fast(), fast())
}

fn statuses(saga: &SagaRecord) -> Vec<StepStatus> {
    saga.steps.iter().map(|s| s.status).collect()
}

fn transient(text: &str) -> Result<(), StepError> {
    Err(StepError::Transient(text.into()))
}

fn permanent(text: &str) -> Result<(), StepError> {
    Err(StepError::Permanent(text.into()))
}

fn unavailable(text: &str) -> Result<(), StepError> {
    Err(StepError::Unavailable(text.into()))
}

#[tokio::test]
async fn all_steps_succeed_in_order_with_context_and_brief_keys() {
    let log = Log::default();
    let steps = vec![Arc::new(FakeStep::new("a", &log)), Arc::new(FakeStep::new("b", &log))];
    let store = Arc::new(MemoryStore::default());
    let o = orchestrator(steps, store.clone());
    let saga = o.run(o.new_saga("s1", "o1", "u1", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Completed);
    assert_eq!(statuses(&saga), [StepStatus::Succeeded, StepStatus::Succeeded]);
    assert_eq!(*log.lock().unwrap(), ["run a", "run b"]);
    assert_eq!(saga.context["a_done"], "saga:s1:a:o1");
    assert_eq!(saga.compensation_key("b"), "saga:s1:compensate:b:o1");
    assert_eq!(store.sagas.lock().unwrap()["s1"], saga, "the final state is persisted");
}

#[tokio::test]
async fn transient_failures_are_retried_and_a_permanent_one_compensates_in_reverse() {
    let log = Log::default();
    let steps = vec![
        Arc::new(FakeStep::new("a", &log)),
        Arc::new(FakeStep::new("b", &log).runs(vec![transient("blip")])),
        Arc::new(FakeStep::new("c", &log).runs(vec![permanent("declined")])),
        Arc::new(FakeStep::new("d", &log)),
    ];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s2", "o2", "u2", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Compensated);
    assert_eq!(
        *log.lock().unwrap(),
        ["run a", "run b", "run b", "run c", "undo b", "undo a"],
        "c failed for good and took no effect: not undone; d never ran"
    );
    assert_eq!(saga.step("b").unwrap().attempts, 2);
    assert_eq!(
        statuses(&saga),
        [StepStatus::Compensated, StepStatus::Compensated, StepStatus::Failed, StepStatus::Pending]
    );
    assert_eq!(saga.failure.as_deref(), Some("c: declined"));
    assert!(!saga.manual_intervention);
}

#[tokio::test]
async fn a_step_that_kept_failing_transiently_is_undone_too() {
    let log = Log::default();
    let steps = vec![
        Arc::new(FakeStep::new("a", &log)),
        Arc::new(FakeStep::new("b", &log).runs(vec![transient("t1"), transient("t2"), transient("t3")])),
    ];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s3", "o3", "u3", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Compensated);
    // A timeout may have reserved stock after all: release it.
    assert_eq!(*log.lock().unwrap(), ["run a", "run b", "run b", "run b", "undo b", "undo a"]);
}

#[tokio::test]
async fn a_step_after_the_pivot_is_retried_past_max_attempts_but_not_past_a_permanent_failure() {
    let log = Log::default();
    let blips = (0..7).map(|i| transient(&format!("blip {i}"))).collect();
    let steps =
        vec![Arc::new(FakeStep::new("pay", &log)), Arc::new(FakeStep::new("confirm", &log).after_pivot().runs(blips))];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s8", "o8", "u8", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Completed, "7 transient failures > max_attempts 3, and still done");
    assert_eq!(saga.step("confirm").unwrap().attempts, 8);

    let steps = vec![
        Arc::new(FakeStep::new("pay", &log)),
        Arc::new(FakeStep::new("confirm", &log).after_pivot().runs(vec![transient("blip"), permanent("expired")])),
    ];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s9", "o9", "u9", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Compensated);
    assert_eq!(saga.failure.as_deref(), Some("confirm: expired"));
}

#[tokio::test]
async fn a_permanent_failure_after_an_attempt_that_may_have_taken_effect_is_undone() {
    // A timeout (the charge may have happened), then a refusal: undo it.
    let log = Log::default();
    let steps = vec![
        Arc::new(FakeStep::new("a", &log)),
        Arc::new(FakeStep::new("pay", &log).runs(vec![transient("timeout"), permanent("details lost")])),
    ];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s10", "o10", "u10", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Compensated);
    assert_eq!(*log.lock().unwrap(), ["run a", "run pay", "run pay", "undo pay", "undo a"]);

    // Resumed after a crash cut the step short (still `Running`): a permanent
    // failure on the re-run does not prove the first run did nothing.
    let log = Log::default();
    let steps = vec![
        Arc::new(FakeStep::new("a", &log)),
        Arc::new(FakeStep::new("pay", &log).runs(vec![permanent("details lost")])),
    ];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let mut interrupted = o.new_saga("s11", "o11", "u11", BTreeMap::new());
    interrupted.steps[0].status = StepStatus::Succeeded;
    interrupted.completed.push("a".into());
    interrupted.steps[1].status = StepStatus::Running;
    interrupted.steps[1].attempts = 1;
    let saga = o.run(interrupted).await.unwrap();
    assert_eq!(saga.state, SagaState::Compensated);
    assert_eq!(*log.lock().unwrap(), ["run pay", "undo pay", "undo a"]);
}

#[tokio::test]
async fn compensation_never_stops_at_the_first_failure_and_never_gives_up_on_one_that_may_pass() {
    let log = Log::default();
    let steps = vec![
        Arc::new(FakeStep::new("a", &log)),
        // Three failures use up a pass (max_attempts 3); the next pass succeeds.
        Arc::new(FakeStep::new("b", &log).undos(vec![transient("x"), unavailable("y"), transient("z")])),
        Arc::new(FakeStep::new("c", &log).undos(vec![transient("once")])),
        Arc::new(FakeStep::new("d", &log).runs(vec![permanent("no")])),
    ];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s4", "o4", "u4", BTreeMap::new())).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["run a", "run b", "run c", "run d", "undo c", "undo c", "undo b", "undo b", "undo b", "undo a", "undo b"]
    );
    assert_eq!(saga.state, SagaState::Compensated);
    assert!(!saga.manual_intervention, "a short outage needs no person");
    assert_eq!(
        statuses(&saga),
        [StepStatus::Compensated, StepStatus::Compensated, StepStatus::Compensated, StepStatus::Failed]
    );
    assert_eq!(saga.step("b").unwrap().compensation_attempts, 4);
}

#[tokio::test]
async fn only_a_compensation_refused_for_good_asks_for_a_person_and_the_others_still_run() {
    let log = Log::default();
    let steps = vec![
        Arc::new(FakeStep::new("a", &log)),
        Arc::new(FakeStep::new("b", &log).undos(vec![permanent("cannot undo")])),
        Arc::new(FakeStep::new("c", &log).runs(vec![permanent("no")])),
    ];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s6", "o6", "u6", BTreeMap::new())).await.unwrap();
    assert_eq!(*log.lock().unwrap(), ["run a", "run b", "run c", "undo b", "undo a"]);
    assert_eq!(saga.state, SagaState::Failed);
    assert!(saga.manual_intervention);
    assert_eq!(statuses(&saga), [StepStatus::Compensated, StepStatus::CompensationFailed, StepStatus::Failed]);
    assert_eq!(saga.step("b").unwrap().error.as_deref(), Some("cannot undo"));
}

#[tokio::test]
async fn an_unavailable_service_is_retried_for_a_time_budget_not_an_attempt_count() {
    // Five failures > max_attempts 3, within the 300 ms budget: done.
    let log = Log::default();
    let flaky = FakeStep::new("b", &log).runs(vec![unavailable("restarting"); 5]);
    let steps = vec![Arc::new(FakeStep::new("a", &log)), Arc::new(flaky)];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s7", "o7", "u7", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Completed);
    assert_eq!(saga.step("b").unwrap().attempts, 6);

    // Down for longer than the budget: compensated, and marked retryable
    // (the request may pass if made again), unlike a refusal.
    let log = Log::default();
    let down = FakeStep::new("b", &log).runs(vec![unavailable("down"); 100_000]);
    let steps = vec![Arc::new(FakeStep::new("a", &log)), Arc::new(down)];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let started = std::time::Instant::now();
    let saga = o.run(o.new_saga("s8", "o8", "u8", BTreeMap::new())).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(290), "tried for the whole budget: {:?}", started.elapsed());
    assert_eq!(saga.state, SagaState::Compensated);
    assert!(saga.failure_retryable);
    assert_eq!(saga.failure.as_deref(), Some("b: down"));

    // A transient (business) failure gets max_attempts, and is not retryable.
    let log = Log::default();
    let processor =
        || Err(StepError::Transient(StepFailure::with_reason("processor error", Some("PAYMENT_PROCESSING_FAILED"))));
    let declined = FakeStep::new("b", &log).runs(vec![processor(), processor(), processor()]);
    let steps = vec![Arc::new(FakeStep::new("a", &log)), Arc::new(declined)];
    let o = orchestrator(steps, Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("s9", "o9", "u9", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Compensated);
    assert_eq!(saga.step("b").unwrap().attempts, 3);
    assert!(!saga.failure_retryable);
    assert_eq!(saga.failure_reason.as_deref(), Some("PAYMENT_PROCESSING_FAILED"), "the last failure's reason is kept");
    assert_eq!(saga.failure.as_deref(), Some("b: gave up after 3 attempts: processor error"));
}

#[tokio::test]
async fn a_refusal_keeps_its_reason_and_a_reasonless_one_has_none() {
    let log = Log::default();
    let out_of_stock = StepFailure::with_reason("FailedPrecondition: insufficient stock", Some("INSUFFICIENT_STOCK"));
    let refusing = FakeStep::new("b", &log).runs(vec![Err(StepError::Permanent(out_of_stock))]);
    let o =
        orchestrator(vec![Arc::new(FakeStep::new("a", &log)), Arc::new(refusing)], Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("r1", "o1", "u1", BTreeMap::new())).await.unwrap();
    assert_eq!(saga.state, SagaState::Compensated);
    assert_eq!(saga.failure_reason.as_deref(), Some("INSUFFICIENT_STOCK"));
    // Stored and read back: the record keeps it (and an old record without it reads as None).
    let json = serde_json::to_value(&saga).unwrap();
    assert_eq!(json["failure_reason"], "INSUFFICIENT_STOCK");
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("failure_reason");
    assert_eq!(serde_json::from_value::<SagaRecord>(old).unwrap().failure_reason, None);

    let log = Log::default();
    let plain = FakeStep::new("b", &log).runs(vec![permanent("no")]);
    let o = orchestrator(vec![Arc::new(FakeStep::new("a", &log)), Arc::new(plain)], Arc::new(MemoryStore::default()));
    let saga = o.run(o.new_saga("r2", "o2", "u2", BTreeMap::new())).await.unwrap();
    assert_eq!((saga.state, saga.failure_reason), (SagaState::Compensated, None));
}

/// Kills the "process" at every save point in turn, resumes with a fresh
/// orchestrator on the same store, and checks the saga ends the same way with
/// every step's effect applied once per idempotency key.
#[tokio::test]
async fn a_crash_at_any_point_resumes_to_the_same_end() {
    for (failing, expected) in [(None, SagaState::Completed), (Some("c"), SagaState::Compensated)] {
        let mut crash_point = 1;
        loop {
            let log = Log::default();
            let make = || -> Vec<Arc<FakeStep>> {
                ["a", "b", "c"]
                    .into_iter()
                    .map(|n| {
                        let step = FakeStep::new(n, &log);
                        Arc::new(if Some(n) == failing { step.runs(vec![permanent("no"); 10]) } else { step })
                    })
                    .collect()
            };
            let steps = make();
            let store = Arc::new(MemoryStore::default());
            *store.crash_after.lock().unwrap() = Some(crash_point);
            let o = orchestrator(steps.clone(), store.clone());
            let first = o.run(o.new_saga("s5", "o5", "u5", BTreeMap::new())).await;
            if let Ok(saga) = first {
                assert_eq!(saga.state, expected);
                break; // no save point left to crash at
            }
            // Restart: same steps (their effects persist, like other services' databases).
            *store.crash_after.lock().unwrap() = None;
            let o = orchestrator(steps.clone(), store.clone());
            let resumed = o.resume_all().await.unwrap();
            let saga = match resumed.as_slice() {
                [saga] => saga.clone(),
                [] => panic!("crash point {crash_point}: nothing to resume"),
                more => panic!("{} sagas", more.len()),
            };
            assert_eq!(saga.state, expected, "crash point {crash_point}");
            for step in &steps {
                for (key, count) in step.effects.lock().unwrap().iter() {
                    assert!(*count <= 2, "crash point {crash_point}: {key} ran {count} times");
                }
                let keys = step.effects.lock().unwrap().len();
                assert!(keys <= 1, "one idempotency key per step, got {keys}");
            }
            assert!(o.resume_all().await.unwrap().is_empty(), "terminal after resuming");
            crash_point += 1;
        }
        assert!(crash_point > 5, "crashed at several points ({crash_point})");
    }
}
