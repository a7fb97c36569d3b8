//! One consumer of the fulfilment group: receive, handle each delivery
//! through Orders, acknowledge; and the queue's gauges.
use std::sync::Arc;
use std::time::{Duration, Instant};

use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use kit::shutdown::CancellationToken;
use queue::grpc::Channel;
use queue::{Broker, Delivery, Receive};
use tonic::Code;

/// The order events fulfilment answers, and the status each moves its order to.
pub fn target(kind: &str) -> Option<orders_pb::OrderStatus> {
    match kind {
        "order.paid" => Some(orders_pb::OrderStatus::Shipped),
        "order.shipped" => Some(orders_pb::OrderStatus::Delivered),
        _ => None,
    }
}

pub struct Settings {
    pub stream: String,
    pub group: String,
    pub batch: usize,
    pub block: Duration,
    pub claim_idle: Duration,
    pub max_deliveries: u32,
    pub call_timeout: Duration,
    /// Simulated work per event.
    pub work: Duration,
}

/// Kept between a handling's end and the moment another consumer may claim its entry.
const CLAIM_MARGIN: Duration = Duration::from_secs(1);
/// A call with less time than this is not started.
const MIN_CALL: Duration = Duration::from_millis(250);

impl Settings {
    /// The deadline of the call for an entry whose batch was received
    /// `elapsed` ago: what remains before the entry can be claimed by another
    /// consumer (less the simulated work and a margin), at most
    /// `call_timeout`; `None` when too little remains to start.
    pub fn deadline_after(&self, elapsed: Duration) -> Option<Duration> {
        let left = self.claim_idle.checked_sub(elapsed + self.work + CLAIM_MARGIN)?;
        (left >= MIN_CALL).then(|| left.min(self.call_timeout))
    }
}

pub struct Consumer {
    pub name: String,
    pub broker: Arc<dyn Broker>,
    pub orders: OrderServiceClient<Channel>,
    pub settings: Arc<Settings>,
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The order moved.
    Applied,
    /// It had moved already (a redelivery, a republished event) or was cancelled.
    Replayed,
    /// Not handled now (Orders unreachable): left pending, redelivered after the idle time.
    Retry(String),
    /// Will never be handled: to the dead letters.
    Dead(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Replayed => "replayed",
            Outcome::Retry(_) => "retry",
            Outcome::Dead(_) => "dead_letter",
        }
    }
}

/// How an answer from Orders is taken: the request's own fault is final, the platform's is retried.
pub fn classify(result: Result<bool, tonic::Status>) -> Outcome {
    match result {
        Ok(true) => Outcome::Applied,
        Ok(false) => Outcome::Replayed,
        Err(status) => match status.code() {
            Code::InvalidArgument | Code::NotFound | Code::PermissionDenied | Code::Unauthenticated => {
                Outcome::Dead(format!("Orders refused it: {:?}: {}", status.code(), status.message()))
            }
            code => Outcome::Retry(format!("{code:?}: {}", status.message())),
        },
    }
}

impl Consumer {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            let request = Receive {
                stream: &self.settings.stream,
                group: &self.settings.group,
                consumer: &self.name,
                max: self.settings.batch,
                block: self.settings.block,
                claim_idle: self.settings.claim_idle,
            };
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = self.broker.receive(request) => received,
            };
            match received {
                Ok(deliveries) => {
                    if failing {
                        failing = false;
                        tracing::info!(consumer = %self.name, "the queue answers again");
                    }
                    // A delivery started is finished before stopping: no
                    // half-handled event waits for the idle time.
                    let received = Instant::now();
                    for delivery in deliveries {
                        let Some(deadline) = self.settings.deadline_after(received.elapsed()) else {
                            // Claimable by another consumer before this one could finish:
                            // left pending for that claim, never handled by two at once.
                            tracing::debug!(consumer = %self.name, "batch outlasted the claim time; the rest is left");
                            break;
                        };
                        self.handle(delivery, deadline).await;
                    }
                }
                Err(err) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(consumer = %self.name, error = %err, "receiving from the queue failed; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    async fn handle(&self, delivery: Delivery, deadline: Duration) {
        let started = Instant::now();
        let message = &delivery.message;
        let span = tracing::info_span!(
            "consume",
            otel.name = %format_args!("process {}", message.kind),
            otel.kind = "consumer",
            messaging.system = "shopfast",
            messaging.destination.name = %self.settings.stream,
            messaging.consumer.group.name = %self.settings.group,
            messaging.message.id = %delivery.id,
            messaging.message.delivery_count = delivery.deliveries,
            order_id = %message.key,
            event_id = %message.event_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        kit_telemetry::otel::continue_stored(&span, &message.traceparent);
        let group = self.settings.group.clone();
        if delivery.deliveries > 1 {
            metrics::counter!("queue_redeliveries_total", "group" => group.clone()).increment(1);
        }
        let outcome = tracing::Instrument::instrument(self.outcome(&delivery, deadline), span.clone()).await;
        let settled = match &outcome {
            Outcome::Applied | Outcome::Replayed => self
                .broker
                .ack(&self.settings.stream, &self.settings.group, std::slice::from_ref(&delivery.id))
                .await
                .map(|_| ()),
            Outcome::Dead(reason) => {
                span.in_scope(|| tracing::warn!(reason = %reason, "event moved to the dead letters"));
                metrics::counter!("queue_dead_letters_total", "group" => group.clone()).increment(1);
                self.broker.dead_letter(&self.settings.stream, &self.settings.group, &delivery, reason).await
            }
            Outcome::Retry(reason) => {
                span.in_scope(|| tracing::warn!(reason = %reason, "event not handled now; it will be delivered again"));
                Ok(())
            }
        };
        if let Err(err) = settled {
            // Unacknowledged: delivered again after the idle time, and answered as a replay.
            span.in_scope(|| tracing::warn!(error = %err, "acknowledging failed"));
        }
        let kind = message.kind.clone();
        metrics::counter!("queue_processed_total", "group" => group.clone(), "kind" => kind.clone(), "outcome" => outcome.label())
            .increment(1);
        metrics::histogram!("queue_processing_duration_seconds", "group" => group.clone(), "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        if matches!(outcome, Outcome::Applied | Outcome::Replayed) && message.published_at_ms > 0 {
            let waited = (kit_core::time::now_millis() - message.published_at_ms).max(0) as f64 / 1e3;
            metrics::histogram!("queue_end_to_end_seconds", "group" => group).record(waited);
        }
    }

    async fn outcome(&self, delivery: &Delivery, deadline: Duration) -> Outcome {
        let message = &delivery.message;
        if delivery.deliveries > self.settings.max_deliveries {
            return Outcome::Dead(format!("delivered {} times without being handled", delivery.deliveries - 1));
        }
        let Some(to) = target(&message.kind) else {
            return Outcome::Dead(format!("fulfilment does not handle {:?} events", message.kind));
        };
        if !self.settings.work.is_zero() {
            tokio::time::sleep(self.settings.work).await;
        }
        let mut request = tonic::Request::new(orders_pb::AdvanceFulfilmentRequest {
            order_id: message.key.clone(),
            event_id: message.event_id.clone(),
            to: to as i32,
        });
        request.set_timeout(deadline);
        let result = self.orders.clone().advance_fulfilment(request).await.map(|r| r.into_inner().applied);
        classify(result)
    }
}

/// The queue's depth, lag and pending entries as gauges, until `shutdown`.
pub async fn report_queue(
    broker: Arc<dyn Broker>,
    settings: Arc<Settings>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(stats) = broker.stats(&settings.stream, &settings.group).await else { continue };
        let stream = settings.stream.clone();
        let labels = [("stream", stream.clone()), ("group", settings.group.clone())];
        metrics::gauge!("queue_depth", "stream" => stream.clone()).set(stats.length as f64);
        metrics::gauge!("queue_dead_letter_depth", "stream" => stream).set(stats.dead_letters as f64);
        metrics::gauge!("queue_pending", &labels).set(stats.pending as f64);
        metrics::gauge!("queue_lag_messages", &labels).set(stats.lag as f64);
        metrics::gauge!("queue_lag_seconds", &labels).set(stats.lag_ms as f64 / 1e3);
        metrics::gauge!("queue_consumers", &labels).set(f64::from(stats.consumers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requests_own_trouble_is_final_the_platforms_is_retried() {
        assert_eq!(classify(Ok(true)), Outcome::Applied);
        assert_eq!(classify(Ok(false)), Outcome::Replayed);
        assert!(matches!(classify(Err(tonic::Status::not_found("no order"))), Outcome::Dead(_)));
        assert!(matches!(classify(Err(tonic::Status::invalid_argument("x"))), Outcome::Dead(_)));
        assert!(matches!(classify(Err(tonic::Status::unavailable("restarting"))), Outcome::Retry(_)));
        assert!(matches!(classify(Err(tonic::Status::deadline_exceeded("slow"))), Outcome::Retry(_)));
    }

    #[test]
    fn a_batch_never_outlasts_the_claim_time() {
        let settings = Settings {
            stream: "s".into(),
            group: "g".into(),
            batch: 16,
            block: Duration::from_secs(2),
            claim_idle: Duration::from_secs(15),
            max_deliveries: 5,
            call_timeout: Duration::from_secs(5),
            work: Duration::from_secs(2),
        };
        assert_eq!(settings.deadline_after(Duration::ZERO), Some(Duration::from_secs(5)));
        // 15 − 9 − 2 − 1 = 3 s left before another consumer may claim it.
        assert_eq!(settings.deadline_after(Duration::from_secs(9)), Some(Duration::from_secs(3)));
        assert_eq!(settings.deadline_after(Duration::from_millis(11_900)), None);
        assert_eq!(settings.deadline_after(Duration::from_secs(60)), None);
    }

    #[test]
    fn paid_ships_shipped_delivers_anything_else_is_not_ours() {
        assert_eq!(target("order.paid"), Some(orders_pb::OrderStatus::Shipped));
        assert_eq!(target("order.shipped"), Some(orders_pb::OrderStatus::Delivered));
        assert_eq!(target("order.cancelling"), None);
        assert_eq!(target(""), None);
    }
}
