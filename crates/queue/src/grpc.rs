//! The embedded broker over gRPC: `QueueApi` serves a `memory::Streams`
//! (`shopfast.queue.v1.QueueService`), `GrpcBroker` is the `Broker` its
//! producers and consumers hold.
use std::sync::Arc;
use std::time::Duration;

use contracts::queue::v1 as pb;
use contracts::queue::v1::queue_service_client::QueueServiceClient;
use futures::future::BoxFuture;
use tonic::{Code, Request, Response, Status};

use crate::memory::Embedded;
use crate::{Broker, Delivery, Message, Published, QueueError, Receive, Stats};

pub use kit_client::channel::{Channel, channel};

fn to_pb(message: &Message) -> pb::Message {
    pb::Message {
        key: message.key.clone(),
        kind: message.kind.clone(),
        payload: message.payload.clone(),
        event_id: message.event_id.clone(),
        traceparent: message.traceparent.clone(),
        published_at_ms: message.published_at_ms,
    }
}

fn from_pb(message: pb::Message) -> Message {
    Message {
        key: message.key,
        kind: message.kind,
        payload: message.payload,
        event_id: message.event_id,
        traceparent: message.traceparent,
        published_at_ms: message.published_at_ms,
    }
}

fn delivery_to_pb(delivery: Delivery) -> pb::Delivery {
    pb::Delivery { id: delivery.id, message: Some(to_pb(&delivery.message)), deliveries: delivery.deliveries }
}

fn delivery_from_pb(delivery: pb::Delivery) -> Delivery {
    Delivery {
        id: delivery.id,
        message: delivery.message.map(from_pb).unwrap_or_default(),
        deliveries: delivery.deliveries,
    }
}

/// Limits of the gRPC surface, checked before the broker sees a request:
/// what any caller sends is refused with the field named, never capped
/// silently.
mod checks {
    use super::pb;
    use tonic::Status;

    const MAX_NAME: usize = 128;
    const MAX_FIELD: usize = 256;
    pub const MAX_PAYLOAD: usize = 64 * 1024;
    const MAX_BLOCK_MS: u32 = 10_000;
    const MAX_IDS: usize = crate::memory::MAX_BATCH;
    const MAX_REASON: usize = 1_000;

    pub fn name(what: &str, name: &str) -> Result<(), Status> {
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Status::invalid_argument(format!("{what} must be 1 to {MAX_NAME} characters without spaces")));
        }
        Ok(())
    }

    pub fn stream_and_group(stream: &str, group: &str) -> Result<(), Status> {
        name("stream", stream)?;
        name("group", group)
    }

    pub fn message(m: &pb::Message) -> Result<(), Status> {
        for (what, value) in [("key", &m.key), ("kind", &m.kind), ("event_id", &m.event_id)] {
            if value.is_empty() || value.len() > MAX_FIELD {
                return Err(Status::invalid_argument(format!("message {what} must be 1 to {MAX_FIELD} bytes")));
            }
        }
        if m.payload.len() > MAX_PAYLOAD || m.traceparent.len() > MAX_FIELD {
            return Err(Status::invalid_argument(format!(
                "message payload at most {MAX_PAYLOAD} bytes, traceparent at most {MAX_FIELD}"
            )));
        }
        Ok(())
    }

    pub fn receive(r: &pb::ReceiveRequest) -> Result<(), Status> {
        stream_and_group(&r.stream, &r.group)?;
        name("consumer", &r.consumer)?;
        if r.block_ms > MAX_BLOCK_MS {
            return Err(Status::invalid_argument(format!("block_ms must be at most {MAX_BLOCK_MS}")));
        }
        Ok(())
    }

    pub fn ids(ids: &[String]) -> Result<(), Status> {
        if ids.len() > MAX_IDS || ids.iter().any(|id| id.is_empty() || id.len() > MAX_NAME) {
            return Err(Status::invalid_argument(format!("1 to {MAX_IDS} entry ids of 1 to {MAX_NAME} bytes")));
        }
        Ok(())
    }

    pub fn reason(reason: &str) -> Result<(), Status> {
        if reason.len() > MAX_REASON {
            return Err(Status::invalid_argument(format!("reason must be at most {MAX_REASON} bytes")));
        }
        Ok(())
    }
}

/// The embedded broker's gRPC face.
#[derive(Clone)]
pub struct QueueApi {
    broker: Arc<Embedded>,
}

impl QueueApi {
    pub fn new(broker: Arc<Embedded>) -> Self {
        Self { broker }
    }
}

fn status(err: QueueError) -> Status {
    match err {
        QueueError::Refused(message) => Status::invalid_argument(message),
        QueueError::Unavailable(message) => Status::resource_exhausted(message),
        QueueError::Protocol(message) => Status::internal(message),
    }
}

#[tonic::async_trait]
impl pb::queue_service_server::QueueService for QueueApi {
    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        let request = request.into_inner();
        checks::name("stream", &request.stream)?;
        request.messages.iter().try_for_each(checks::message)?;
        let messages: Vec<Message> = request.messages.into_iter().map(from_pb).collect();
        let published = self.broker.publish(&request.stream, &messages).await.map_err(status)?;
        Ok(Response::new(pb::PublishResponse { ids: published.ids, epoch: published.epoch }))
    }

    async fn receive(&self, request: Request<pb::ReceiveRequest>) -> Result<Response<pb::ReceiveResponse>, Status> {
        let r = request.into_inner();
        checks::receive(&r)?;
        let receive = Receive {
            stream: &r.stream,
            group: &r.group,
            consumer: &r.consumer,
            max: r.max as usize,
            block: Duration::from_millis(u64::from(r.block_ms)),
            claim_idle: Duration::from_millis(u64::from(r.claim_idle_ms)),
        };
        let got = self.broker.receive(receive).await.map_err(status)?;
        let mut response =
            Response::new(pb::ReceiveResponse { deliveries: got.into_iter().map(delivery_to_pb).collect() });
        response.extensions_mut().insert(kit_telemetry::grpc_telemetry::LongPoll);
        Ok(response)
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let r = request.into_inner();
        checks::stream_and_group(&r.stream, &r.group)?;
        checks::ids(&r.ids)?;
        let acknowledged = self.broker.ack(&r.stream, &r.group, &r.ids).await.map_err(status)?;
        Ok(Response::new(pb::AckResponse { acknowledged: acknowledged as u32 }))
    }

    async fn dead_letter(&self, request: Request<pb::DeadLetterRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let r = request.into_inner();
        checks::stream_and_group(&r.stream, &r.group)?;
        checks::reason(&r.reason)?;
        if let Some(message) = r.delivery.as_ref().and_then(|d| d.message.as_ref()) {
            checks::message(message)?;
        }
        let delivery =
            r.delivery.map(delivery_from_pb).ok_or_else(|| Status::invalid_argument("delivery is required"))?;
        self.broker.dead_letter(&r.stream, &r.group, &delivery, &r.reason).await.map_err(status)?;
        Ok(Response::new(pb::AckResponse { acknowledged: 1 }))
    }

    async fn stats(&self, request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let r = request.into_inner();
        checks::stream_and_group(&r.stream, &r.group)?;
        let stats = self.broker.stats(&r.stream, &r.group).await.map_err(status)?;
        Ok(Response::new(pb::StatsResponse {
            epoch: stats.epoch,
            length: stats.length,
            pending: stats.pending,
            lag: stats.lag,
            lag_ms: stats.lag_ms,
            dead_letters: stats.dead_letters,
            consumers: stats.consumers,
        }))
    }
}

/// The embedded broker, as a producer or consumer holds it.
pub struct GrpcBroker {
    client: QueueServiceClient<Channel>,
    timeout: Duration,
}

impl GrpcBroker {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self { client: QueueServiceClient::new(channel), timeout }
    }

    /// Every call to the broker is plumbing: no trace of its own (the
    /// producer's and consumer's spans are the message's story).
    fn request<T>(&self, message: T, extra: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout + extra);
        request
            .metadata_mut()
            .insert(kit_telemetry::grpc_telemetry::UNTRACED, tonic::metadata::MetadataValue::from_static("1"));
        request
    }
}

fn queue_error(status: Status) -> QueueError {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled | Code::Unknown => {
            QueueError::Unavailable(status.message().to_string())
        }
        _ => QueueError::Refused(format!("{:?}: {}", status.code(), status.message())),
    }
}

impl Broker for GrpcBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn publish<'a>(&'a self, stream: &'a str, messages: &'a [Message]) -> BoxFuture<'a, Result<Published, QueueError>> {
        Box::pin(async move {
            let request = pb::PublishRequest { stream: stream.into(), messages: messages.iter().map(to_pb).collect() };
            let reply = self
                .client
                .clone()
                .publish(self.request(request, Duration::ZERO))
                .await
                .map_err(queue_error)?
                .into_inner();
            Ok(Published { ids: reply.ids, epoch: reply.epoch })
        })
    }

    fn receive<'a>(&'a self, r: Receive<'a>) -> BoxFuture<'a, Result<Vec<Delivery>, QueueError>> {
        Box::pin(async move {
            let request = pb::ReceiveRequest {
                stream: r.stream.into(),
                group: r.group.into(),
                consumer: r.consumer.into(),
                max: r.max.min(u32::MAX as usize) as u32,
                block_ms: r.block.as_millis().min(u128::from(u32::MAX)) as u32,
                claim_idle_ms: r.claim_idle.as_millis().min(u128::from(u32::MAX)) as u32,
            };
            let reply =
                self.client.clone().receive(self.request(request, r.block)).await.map_err(queue_error)?.into_inner();
            Ok(reply.deliveries.into_iter().map(delivery_from_pb).collect())
        })
    }

    fn ack<'a>(&'a self, stream: &'a str, group: &'a str, ids: &'a [String]) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(async move {
            let request = pb::AckRequest { stream: stream.into(), group: group.into(), ids: ids.to_vec() };
            let reply = self.client.clone().ack(self.request(request, Duration::ZERO)).await.map_err(queue_error)?;
            Ok(u64::from(reply.into_inner().acknowledged))
        })
    }

    fn dead_letter<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let request = pb::DeadLetterRequest {
                stream: stream.into(),
                group: group.into(),
                delivery: Some(delivery_to_pb(delivery.clone())),
                reason: reason.into(),
            };
            self.client.clone().dead_letter(self.request(request, Duration::ZERO)).await.map_err(queue_error)?;
            Ok(())
        })
    }

    fn stats<'a>(&'a self, stream: &'a str, group: &'a str) -> BoxFuture<'a, Result<Stats, QueueError>> {
        Box::pin(async move {
            let request = pb::StatsRequest { stream: stream.into(), group: group.into() };
            let s = self
                .client
                .clone()
                .stats(self.request(request, Duration::ZERO))
                .await
                .map_err(queue_error)?
                .into_inner();
            Ok(Stats {
                epoch: s.epoch,
                length: s.length,
                pending: s.pending,
                lag: s.lag,
                lag_ms: s.lag_ms,
                dead_letters: s.dead_letters,
                consumers: s.consumers,
            })
        })
    }
}
